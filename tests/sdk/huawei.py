"""Huawei Cloud's SDK (huaweicloudsdkvpc v3): SDK-HMAC-SHA256 signatures (`X-Sdk-Date`),
REST paths under /v3/{project_id}/vpc/. Only the endpoint differs from the SDK's
documentation."""
import datetime

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkvpc.v3 import VpcClient
from huaweicloudsdkvpc.v3 import model as h

from common import *  # noqa: F403

PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
client = Checked(VpcClient.new_builder()
                 .with_credentials(BasicCredentials(AK, SK, PROJECT))
                 .with_endpoints([f"http://{ENDPOINT}"])
                 .build())


def session(sid):
    return client.show_traffic_mirror_session(
        h.ShowTrafficMirrorSessionRequest(traffic_mirror_session_id=sid)).traffic_mirror_session


def setup():
    r = client.create_traffic_mirror_filter(h.CreateTrafficMirrorFilterRequest(
        body=h.CreateTrafficMirrorFilterRequestBody(traffic_mirror_filter=h.CreateTrafficMirrorFilterOption(
            name=f"{NAME}-filter", description="made by huaweicloudsdkvpc"))))
    fid = typed(r.traffic_mirror_filter.id, str, "traffic_mirror_filter.id")
    ok("CreateTrafficMirrorFilter", fid)
    rule = lambda direction, action, protocol, prio: client.create_traffic_mirror_filter_rule(  # noqa: E731
        h.CreateTrafficMirrorFilterRuleRequest(body=h.CreateTrafficMirrorFilterRuleRequestBody(
            traffic_mirror_filter_rule=h.CreateTrafficMirrorFilterRuleOption(
                traffic_mirror_filter_id=fid, direction=direction, protocol=protocol,
                ethertype="IPv4", source_cidr_block="0.0.0.0/0", destination_cidr_block="0.0.0.0/0",
                action=action, priority=prio)))).traffic_mirror_filter_rule
    ingress = rule("ingress", "accept", "all", 1)
    typed(ingress.priority, int, "priority")
    typed(ingress.created_at, datetime.datetime, "created_at")
    egress = rule("egress", "reject", "tcp", 1)
    ok("CreateTrafficMirrorFilterRule", ingress.id)
    client.update_traffic_mirror_filter_rule(h.UpdateTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_rule_id=egress.id,
        body=h.UpdateTrafficMirrorFilterRuleRequestBody(
            traffic_mirror_filter_rule=h.UpdateTrafficMirrorFilterRuleOption(priority=7, action="accept"))))
    ok("UpdateTrafficMirrorFilterRule")
    r = client.show_traffic_mirror_filter_rule(h.ShowTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_rule_id=egress.id)).traffic_mirror_filter_rule
    expect(r.priority == 7 and r.action == "accept", f"rule {r}")
    ok("ShowTrafficMirrorFilterRule")
    rules = client.list_traffic_mirror_filter_rules(h.ListTrafficMirrorFilterRulesRequest(
        traffic_mirror_filter_id=fid)).traffic_mirror_filter_rules
    expect({x.id for x in rules} >= {ingress.id, egress.id}, f"rules {rules}")
    ok("ListTrafficMirrorFilterRules")
    client.delete_traffic_mirror_filter_rule(h.DeleteTrafficMirrorFilterRuleRequest(
        traffic_mirror_filter_rule_id=egress.id))
    ok("DeleteTrafficMirrorFilterRule")
    client.update_traffic_mirror_filter(h.UpdateTrafficMirrorFilterRequest(
        traffic_mirror_filter_id=fid, body=h.UpdateTrafficMirrorFilterRequestBody(
            traffic_mirror_filter=h.UpdateTrafficMirrorFilterOption(name=f"{NAME}-filter-2"))))
    ok("UpdateTrafficMirrorFilter")
    f = client.show_traffic_mirror_filter(h.ShowTrafficMirrorFilterRequest(
        traffic_mirror_filter_id=fid)).traffic_mirror_filter
    expect(f.name == f"{NAME}-filter-2" and len(f.ingress_rules) == 1 and not f.egress_rules, f"filter {f}")
    ok("ShowTrafficMirrorFilter")
    fs = client.list_traffic_mirror_filters(h.ListTrafficMirrorFiltersRequest(id=fid)).traffic_mirror_filters
    expect([x.id for x in fs] == [fid], f"filters {fs}")
    ok("ListTrafficMirrorFilters")

    # Huawei's target is an ENI (port) or ELB; the agent's config aliases it.
    r = client.create_traffic_mirror_session(h.CreateTrafficMirrorSessionRequest(
        body=h.CreateTrafficMirrorSessionRequestBody(traffic_mirror_session=h.CreateTrafficMirrorSessionOption(
            name=f"{NAME}-session", traffic_mirror_filter_id=fid, traffic_mirror_sources=[SOURCE2],
            traffic_mirror_target_id=TARGET_ENI, traffic_mirror_target_type="eni",
            virtual_network_id=str(VNI), packet_length="96", priority=PRIORITY, enabled="true"))))
    s = r.traffic_mirror_session
    sid = typed(s.id, str, "id")
    typed(s.virtual_network_id, int, "virtual_network_id")
    typed(s.enabled, bool, "enabled")
    ok("CreateTrafficMirrorSession", sid)
    client.add_sources_to_traffic_mirror_session(h.AddSourcesToTrafficMirrorSessionRequest(
        traffic_mirror_session_id=sid, body=h.AddSourcesToTrafficMirrorSessionRequestBody(
            traffic_mirror_session=h.TrafficMirrorSourcesOption(traffic_mirror_sources=[SOURCE]))))
    ok("AddSourcesToTrafficMirrorSession")
    wait_for(lambda: sorted(session(sid).traffic_mirror_sources), lambda x: x == sorted([SOURCE, SOURCE2]), "sources")
    removed = lambda: client.remove_sources_from_traffic_mirror_session(  # noqa: E731
        h.RemoveSourcesFromTrafficMirrorSessionRequest(
            traffic_mirror_session_id=sid, body=h.RemoveSourcesFromTrafficMirrorSessionRequestBody(
                traffic_mirror_session=h.TrafficMirrorSourcesOption(traffic_mirror_sources=[SOURCE2]))))
    # A session still applying the last change answers IncorrectStatus: the SDK's caller retries.
    wait_for(lambda: try_call(removed), lambda done: done, "RemoveSources accepted")
    ok("RemoveSourcesFromTrafficMirrorSession")
    update = lambda: client.update_traffic_mirror_session(h.UpdateTrafficMirrorSessionRequest(  # noqa: E731
        traffic_mirror_session_id=sid, body=h.UpdateTrafficMirrorSessionRequestBody(
            traffic_mirror_session=h.UpdateTrafficMirrorSessionOption(description="updated"))))
    wait_for(lambda: try_call(update), lambda done: done, "Update accepted")
    ok("UpdateTrafficMirrorSession")
    s = wait_for(lambda: session(sid), lambda s: s.description == "updated", "updated")
    expect(s.traffic_mirror_sources == [SOURCE], f"session {s}")
    ok("ShowTrafficMirrorSession")
    ss = client.list_traffic_mirror_sessions(h.ListTrafficMirrorSessionsRequest(id=sid)).traffic_mirror_sessions
    expect([x.id for x in ss] == [sid], f"sessions {ss}")
    typed(ss[0].priority, int, "priority")
    ok("ListTrafficMirrorSessions")
    e = expect_error(lambda: session("tms-none"), "ResourceNotFound.TrafficMirrorSession",
                     "ShowTrafficMirrorSession(unknown)")
    expect(getattr(e, "status_code", None) == 404, f"404: {e}")
    save({"session": sid, "filter": fid})
    print(f"KEEP {sid} {VNI}")


def try_call(fn):
    try:
        fn()
        return True
    except Exception as e:
        if "IncorrectStatus" in str(e):
            return False
        raise


def teardown():
    st = load()
    client.delete_traffic_mirror_session(h.DeleteTrafficMirrorSessionRequest(
        traffic_mirror_session_id=st["session"]))
    ok("DeleteTrafficMirrorSession")
    wait_for(lambda: client.list_traffic_mirror_sessions(h.ListTrafficMirrorSessionsRequest(
        id=st["session"])).traffic_mirror_sessions, lambda s: not s, "session gone")
    client.delete_traffic_mirror_filter(h.DeleteTrafficMirrorFilterRequest(
        traffic_mirror_filter_id=st["filter"]))
    ok("DeleteTrafficMirrorFilter")


setup() if PHASE == "setup" else teardown()
