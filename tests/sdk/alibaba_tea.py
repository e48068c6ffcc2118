"""Alibaba Cloud's current SDK (alibabacloud-vpc20160428 on alibabacloud-tea-openapi):
ACS3-HMAC-SHA256 signatures, the action in x-acs-action, parameters in query and form body.
Only the endpoint and protocol differ from the SDK's documentation."""
from alibabacloud_tea_openapi.utils_models import Config
from alibabacloud_vpc20160428.client import Client
from alibabacloud_vpc20160428 import models as m

from common import *  # noqa: F403

client = Checked(Client(Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINT,
                               protocol="http", region_id="cn-hangzhou")))
REGION = "cn-hangzhou"


def session(sid):
    r = client.list_traffic_mirror_sessions(
        m.ListTrafficMirrorSessionsRequest(region_id=REGION, traffic_mirror_session_ids=[sid]))
    return r.body.traffic_mirror_sessions


def settled(sid):
    return wait_for(lambda: session(sid),
                    lambda s: s and s[0].traffic_mirror_session_status == "Created",
                    f"{sid} Created")[0]


def setup():
    r = client.get_traffic_mirror_service_status(m.GetTrafficMirrorServiceStatusRequest(region_id=REGION))
    expect(typed(r.body.enabled, bool, "Enabled"), "service enabled")
    ok("GetTrafficMirrorServiceStatus")
    client.open_traffic_mirror_service(m.OpenTrafficMirrorServiceRequest())
    ok("OpenTrafficMirrorService")

    r = client.create_traffic_mirror_filter(m.CreateTrafficMirrorFilterRequest(
        region_id=REGION, traffic_mirror_filter_name=f"{NAME}-filter",
        traffic_mirror_filter_description="made by the Tea SDK",
        ingress_rules=[m.CreateTrafficMirrorFilterRequestIngressRules(
            action="accept", priority=1, protocol="ALL", source_cidr_block="0.0.0.0/0",
            destination_cidr_block="0.0.0.0/0")]))
    fid = typed(r.body.traffic_mirror_filter_id, str, "TrafficMirrorFilterId")
    ok("CreateTrafficMirrorFilter", fid)

    r = client.create_traffic_mirror_filter_rules(m.CreateTrafficMirrorFilterRulesRequest(
        region_id=REGION, traffic_mirror_filter_id=fid,
        egress_rules=[m.CreateTrafficMirrorFilterRulesRequestEgressRules(
            action="drop", priority=1, protocol="TCP", source_cidr_block="10.0.0.0/8",
            destination_cidr_block="0.0.0.0/0", source_port_range="1/200",
            destination_port_range="80/80")]))
    egress = r.body.egress_rules[0].instance_id
    ok("CreateTrafficMirrorFilterRules", egress)

    client.update_traffic_mirror_filter_rule_attribute(m.UpdateTrafficMirrorFilterRuleAttributeRequest(
        region_id=REGION, traffic_mirror_filter_rule_id=egress, priority=2, rule_action="accept"))
    ok("UpdateTrafficMirrorFilterRuleAttribute")
    client.update_traffic_mirror_filter_attribute(m.UpdateTrafficMirrorFilterAttributeRequest(
        region_id=REGION, traffic_mirror_filter_id=fid, traffic_mirror_filter_name=f"{NAME}-filter-2"))
    ok("UpdateTrafficMirrorFilterAttribute")

    r = client.list_traffic_mirror_filters(m.ListTrafficMirrorFiltersRequest(
        region_id=REGION, traffic_mirror_filter_ids=[fid]))
    f = r.body.traffic_mirror_filters[0]
    expect(f.traffic_mirror_filter_name == f"{NAME}-filter-2", "filter renamed")
    rule = f.egress_rules[0]
    typed(rule.priority, int, "EgressRules.Priority")
    expect(rule.priority == 2 and rule.action == "accept", f"rule updated: {rule.to_map()}")
    typed(f.ingress_rules[0].traffic_mirror_filter_rule_id, str, "IngressRules.TrafficMirrorFilterRuleId")
    ok("ListTrafficMirrorFilters")

    client.delete_traffic_mirror_filter_rules(m.DeleteTrafficMirrorFilterRulesRequest(
        region_id=REGION, traffic_mirror_filter_id=fid, traffic_mirror_filter_rule_ids=[egress]))
    ok("DeleteTrafficMirrorFilterRules")

    # Alibaba's target is the collector's ENI itself; the agent's config aliases it.
    r = client.create_traffic_mirror_session(m.CreateTrafficMirrorSessionRequest(
        region_id=REGION, traffic_mirror_session_name=f"{NAME}-session", priority=PRIORITY,
        virtual_network_id=VNI, packet_length=128, enabled=True, traffic_mirror_filter_id=fid,
        traffic_mirror_target_id=TARGET_ENI, traffic_mirror_target_type="NetworkInterface",
        traffic_mirror_source_ids=[SOURCE2]))
    sid = typed(r.body.traffic_mirror_session_id, str, "TrafficMirrorSessionId")
    ok("CreateTrafficMirrorSession", sid)

    expect_error(lambda: client.create_traffic_mirror_session(m.CreateTrafficMirrorSessionRequest(
        region_id=REGION, priority=PRIORITY + 1, traffic_mirror_filter_id=fid,
        traffic_mirror_target_id="lb-unknown", traffic_mirror_target_type="SLB",
        traffic_mirror_source_ids=[SOURCE2])), "ResourceNotFound.TrafficMirrorTarget",
        "CreateTrafficMirrorSession(unaliased lb-)")

    s = settled(sid)
    typed(s.priority, int, "Priority")
    typed(s.virtual_network_id, int, "VirtualNetworkId")
    typed(s.enabled, bool, "Enabled")
    expect(s.traffic_mirror_target_id == TARGET_ENI, f"target {s.traffic_mirror_target_id}")
    ok("ListTrafficMirrorSessions")

    client.add_sources_to_traffic_mirror_session(m.AddSourcesToTrafficMirrorSessionRequest(
        region_id=REGION, traffic_mirror_session_id=sid, traffic_mirror_source_ids=[SOURCE]))
    ok("AddSourcesToTrafficMirrorSession")
    settled(sid)
    client.remove_sources_from_traffic_mirror_session(m.RemoveSourcesFromTrafficMirrorSessionRequest(
        region_id=REGION, traffic_mirror_session_id=sid, traffic_mirror_source_ids=[SOURCE2]))
    ok("RemoveSourcesFromTrafficMirrorSession")
    settled(sid)
    client.update_traffic_mirror_session_attribute(m.UpdateTrafficMirrorSessionAttributeRequest(
        region_id=REGION, traffic_mirror_session_id=sid, traffic_mirror_session_name=f"{NAME}-s2"))
    ok("UpdateTrafficMirrorSessionAttribute")
    s = settled(sid)
    expect(s.traffic_mirror_source_ids == [SOURCE], f"sources {s.traffic_mirror_source_ids}")

    r = client.get_flow_log_service_status(m.GetFlowLogServiceStatusRequest(region_id=REGION))
    typed(r.body.enabled, bool, "Enabled")
    ok("GetFlowLogServiceStatus")
    client.open_flow_log_service(m.OpenFlowLogServiceRequest())
    ok("OpenFlowLogService")
    r = client.create_flow_log(m.CreateFlowLogRequest(
        region_id=REGION, flow_log_name=f"{NAME}-fl", resource_type="NetworkInterface",
        resource_id=SOURCE2, traffic_type="All", project_name=f"{NAME}-project",
        log_store_name=f"{NAME}-store", aggregation_interval=1))
    fl = typed(r.body.flow_log_id, str, "FlowLogId")
    ok("CreateFlowLog", fl)
    r = client.describe_flow_logs(m.DescribeFlowLogsRequest(region_id=REGION, flow_log_id=fl))
    got = r.body.flow_logs.flow_log[0]
    expect(got.project_name == f"{NAME}-project" and got.log_store_name == f"{NAME}-store",
           f"flow log {got.to_map()}")
    expect(got.resource_type == "NetworkInterface", f"resource type {got.resource_type}")
    ok("DescribeFlowLogs")
    wait_active = lambda want: wait_for(  # noqa: E731
        lambda: client.describe_flow_logs(m.DescribeFlowLogsRequest(region_id=REGION, flow_log_id=fl)).body.flow_logs.flow_log[0].status,
        lambda st: st == want, f"flow log {want}")
    wait_active("Active")
    client.modify_flow_log_attribute(m.ModifyFlowLogAttributeRequest(
        region_id=REGION, flow_log_id=fl, description="renamed"))
    ok("ModifyFlowLogAttribute")
    wait_active("Active")
    client.deactive_flow_log(m.DeactiveFlowLogRequest(region_id=REGION, flow_log_id=fl))
    ok("DeactiveFlowLog")
    wait_active("Inactive")
    client.active_flow_log(m.ActiveFlowLogRequest(region_id=REGION, flow_log_id=fl))
    ok("ActiveFlowLog")
    wait_active("Active")
    client.delete_flow_log(m.DeleteFlowLogRequest(region_id=REGION, flow_log_id=fl))
    ok("DeleteFlowLog")
    save({"session": sid, "filter": fid})
    print(f"KEEP {sid} {VNI}")


def teardown():
    st = load()
    client.delete_traffic_mirror_session(m.DeleteTrafficMirrorSessionRequest(
        region_id=REGION, traffic_mirror_session_id=st["session"]))
    ok("DeleteTrafficMirrorSession")
    wait_for(lambda: session(st["session"]), lambda s: not s, "session gone")
    client.delete_traffic_mirror_filter(m.DeleteTrafficMirrorFilterRequest(
        region_id=REGION, traffic_mirror_filter_id=st["filter"]))
    ok("DeleteTrafficMirrorFilter")


setup() if PHASE == "setup" else teardown()
