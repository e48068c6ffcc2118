"""Volcengine's SDK (volcenginesdkvpc from volcengine-python-sdk): HMAC-SHA256 signatures
(`X-Date`, `X-Content-Sha256`), its own API family (Describe*, Modify*Attributes, one rule
per call with `Policy` and `TrafficDirection`). Only the host and scheme differ from the
SDK's documentation."""
import volcenginesdkcore
import volcenginesdkvpc as v

from common import *  # noqa: F403

conf = volcenginesdkcore.Configuration()
conf.ak, conf.sk, conf.region = AK, SK, "cn-beijing"
conf.host, conf.scheme = ENDPOINT, "http"
api = Checked(v.VPCApi(volcenginesdkcore.ApiClient(conf)))


def session(sid):
    return api.describe_traffic_mirror_sessions(
        v.DescribeTrafficMirrorSessionsRequest(traffic_mirror_session_ids=[sid])).traffic_mirror_sessions


def settled(sid):
    return wait_for(lambda: session(sid), lambda s: s and s[0].status == "Available",
                    f"{sid} Available")[0]


def flow_log(fl):
    return api.describe_flow_logs(v.DescribeFlowLogsRequest(flow_log_ids=[fl])).flow_logs[0]


def setup():
    r = api.create_traffic_mirror_filter(v.CreateTrafficMirrorFilterRequest(
        traffic_mirror_filter_name=f"{NAME}-filter", description="made by volcenginesdkvpc"))
    fid = typed(r.traffic_mirror_filter_id, str, "TrafficMirrorFilterId")
    ok("CreateTrafficMirrorFilter", fid)
    r = api.create_traffic_mirror_filter_rule(v.CreateTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_id=fid, traffic_direction="ingress", priority=1, policy="accept",
        protocol="all", source_cidr_block="0.0.0.0/0", destination_cidr_block="0.0.0.0/0",
        source_port_range="-1/-1", destination_port_range="-1/-1"))
    ingress = typed(r.traffic_mirror_filter_rule_id, str, "TrafficMirrorFilterRuleId")
    ok("CreateTrafficMirrorFilterRule", ingress)
    r = api.create_traffic_mirror_filter_rule(v.CreateTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_id=fid, traffic_direction="egress", priority=1, policy="reject",
        protocol="tcp", source_cidr_block="10.0.0.0/8", destination_cidr_block="0.0.0.0/0",
        source_port_range="1/200", destination_port_range="80/80"))
    egress = r.traffic_mirror_filter_rule_id
    api.modify_traffic_mirror_filter_rule_attributes(v.ModifyTrafficMirrorFilterRuleAttributesRequest(
        traffic_mirror_filter_rule_id=egress, priority=5, policy="accept"))
    ok("ModifyTrafficMirrorFilterRuleAttributes")
    api.modify_traffic_mirror_filter_attributes(v.ModifyTrafficMirrorFilterAttributesRequest(
        traffic_mirror_filter_id=fid, traffic_mirror_filter_name=f"{NAME}-filter-2"))
    ok("ModifyTrafficMirrorFilterAttributes")
    f = api.describe_traffic_mirror_filters(v.DescribeTrafficMirrorFiltersRequest(
        traffic_mirror_filter_ids=[fid])).traffic_mirror_filters[0]
    expect(f.traffic_mirror_filter_name == f"{NAME}-filter-2", "filter renamed")
    rule = f.egress_filter_rules[0]
    expect(typed(rule.priority, int, "Priority") == 5 and rule.policy == "accept",
           f"rule {rule.to_dict()}")
    typed(f.ingress_filter_rules[0].traffic_direction, str, "TrafficDirection")
    ok("DescribeTrafficMirrorFilters")
    api.delete_traffic_mirror_filter_rule(v.DeleteTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_rule_id=egress))
    ok("DeleteTrafficMirrorFilterRule")

    # Volcengine's target is an ENI or CLB instance; the agent's config aliases it.
    r = api.create_traffic_mirror_target(v.CreateTrafficMirrorTargetRequest(
        instance_type="NetworkInterface", instance_id=TARGET_ENI,
        traffic_mirror_target_name=f"{NAME}-target"))
    tid = typed(r.traffic_mirror_target_id, str, "TrafficMirrorTargetId")
    ok("CreateTrafficMirrorTarget", tid)
    api.modify_traffic_mirror_target_attributes(v.ModifyTrafficMirrorTargetAttributesRequest(
        traffic_mirror_target_id=tid, description="collector"))
    ok("ModifyTrafficMirrorTargetAttributes")
    t = api.describe_traffic_mirror_targets(v.DescribeTrafficMirrorTargetsRequest(
        traffic_mirror_target_ids=[tid])).traffic_mirror_targets[0]
    expect(t.description == "collector" and t.instance_id == TARGET_ENI, f"target {t.to_dict()}")
    typed(t.created_at, str, "CreatedAt")
    ok("DescribeTrafficMirrorTargets")

    r = api.create_traffic_mirror_session(v.CreateTrafficMirrorSessionRequest(
        traffic_mirror_session_name=f"{NAME}-session", network_interface_id=SOURCE,
        traffic_mirror_filter_id=fid, traffic_mirror_target_id=tid, priority=PRIORITY,
        virtual_network_id=VNI, packet_length=200))
    sid = typed(r.traffic_mirror_session_id, str, "TrafficMirrorSessionId")
    ok("CreateTrafficMirrorSession", sid)
    s = settled(sid)
    typed(s.virtual_network_id, int, "VirtualNetworkId")
    typed(s.created_at, str, "CreatedAt")
    ok("DescribeTrafficMirrorSessions")
    api.modify_traffic_mirror_session_attributes(v.ModifyTrafficMirrorSessionAttributesRequest(
        traffic_mirror_session_id=sid, packet_length=128, description="modified"))
    ok("ModifyTrafficMirrorSessionAttributes")
    s = settled(sid)
    expect(s.packet_length == 128 and s.description == "modified", f"session {s.to_dict()}")

    r = api.create_flow_log(v.CreateFlowLogRequest(
        flow_log_name=f"{NAME}-fl", resource_type="eni", resource_id=SOURCE2, traffic_type="All",
        log_project_name=f"{NAME}-project", log_topic_name=f"{NAME}-topic", aggregation_interval=1))
    fl = typed(r.flow_log_id, str, "FlowLogId")
    ok("CreateFlowLog", fl)
    expect(flow_log(fl).log_topic_id == f"{NAME}-topic", "flow log topic")
    ok("DescribeFlowLogs")
    wait_for(lambda: flow_log(fl).status, lambda st: st == "Active", "Active")
    api.modify_flow_log_attribute(v.ModifyFlowLogAttributeRequest(flow_log_id=fl, description="x"))
    ok("ModifyFlowLogAttribute")
    wait_for(lambda: flow_log(fl).status, lambda st: st == "Active", "Active")
    api.deactive_flow_log(v.DeactiveFlowLogRequest(flow_log_id=fl))
    ok("DeactiveFlowLog")
    wait_for(lambda: flow_log(fl).status, lambda st: st == "Inactive", "Inactive")
    api.active_flow_log(v.ActiveFlowLogRequest(flow_log_id=fl))
    ok("ActiveFlowLog")
    wait_for(lambda: flow_log(fl).status, lambda st: st == "Active", "Active")
    api.delete_flow_log(v.DeleteFlowLogRequest(flow_log_id=fl))
    ok("DeleteFlowLog")
    expect_error(lambda: api.delete_traffic_mirror_session(v.DeleteTrafficMirrorSessionRequest(
        traffic_mirror_session_id="tms-none")), "InvalidTrafficMirrorSession.NotFound",
        "DeleteTrafficMirrorSession(unknown)")
    save({"session": sid, "filter": fid, "target": tid})
    print(f"KEEP {sid} {VNI}")


def teardown():
    st = load()
    api.delete_traffic_mirror_session(v.DeleteTrafficMirrorSessionRequest(
        traffic_mirror_session_id=st["session"]))
    ok("DeleteTrafficMirrorSession")
    wait_for(lambda: session(st["session"]), lambda s: not s, "session gone")
    api.delete_traffic_mirror_target(v.DeleteTrafficMirrorTargetRequest(
        traffic_mirror_target_id=st["target"]))
    ok("DeleteTrafficMirrorTarget")
    api.delete_traffic_mirror_filter(v.DeleteTrafficMirrorFilterRequest(
        traffic_mirror_filter_id=st["filter"]))
    ok("DeleteTrafficMirrorFilter")


setup() if PHASE == "setup" else teardown()
