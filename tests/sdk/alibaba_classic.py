"""Alibaba Cloud's classic SDK (aliyun-python-sdk-core + aliyun-python-sdk-vpc): signature v1
(HMAC-SHA1, `Signature`/`SignatureNonce`/`Timestamp` in the query). Only the endpoint and
protocol differ from the SDK's documentation."""
import importlib
import json

from aliyunsdkcore.client import AcsClient
from alibabacloud_vpc20160428 import models as tea_models

from common import *  # noqa: F403

client = AcsClient(AK, SK, "cn-hangzhou")


def call(action, **params):
    module = importlib.import_module(f"aliyunsdkvpc.request.v20160428.{action}Request")
    req = getattr(module, f"{action}Request")()
    req.set_endpoint(ENDPOINT)
    req.set_protocol_type("http")
    for k, v in params.items():
        getattr(req, f"set_{k}")(v)
    body = json.loads(client.do_action_with_exception(req))
    typed(body.get("RequestId"), str, f"{action}.RequestId")
    # The classic SDK hands back plain JSON; Alibaba's own response model for it is the
    # current SDK's, which declares every field's type.
    check_model(getattr(tea_models, f"{action}ResponseBody")().from_map(body), action)
    return body


def session(sid):
    return call("ListTrafficMirrorSessions", TrafficMirrorSessionIdss=[sid])["TrafficMirrorSessions"]


def settled(sid):
    return wait_for(lambda: session(sid),
                    lambda s: s and s[0]["TrafficMirrorSessionStatus"] == "Created",
                    f"{sid} Created")[0]


def flow_log(fl):
    return call("DescribeFlowLogs", FlowLogId=fl)["FlowLogs"]["FlowLog"][0]


def setup():
    expect(typed(call("GetTrafficMirrorServiceStatus")["Enabled"], bool, "Enabled"), "enabled")
    ok("GetTrafficMirrorServiceStatus")
    call("OpenTrafficMirrorService")
    ok("OpenTrafficMirrorService")
    r = call("CreateTrafficMirrorFilter", TrafficMirrorFilterName=f"{NAME}-filter",
             IngressRuless=[{"Action": "accept", "Priority": 1, "Protocol": "ALL",
                             "SourceCidrBlock": "0.0.0.0/0", "DestinationCidrBlock": "0.0.0.0/0"}])
    fid = typed(r["TrafficMirrorFilterId"], str, "TrafficMirrorFilterId")
    ok("CreateTrafficMirrorFilter", fid)
    r = call("CreateTrafficMirrorFilterRules", TrafficMirrorFilterId=fid,
             EgressRuless=[{"Action": "drop", "Priority": 1, "Protocol": "UDP",
                            "SourceCidrBlock": "10.0.0.0/8", "DestinationCidrBlock": "0.0.0.0/0",
                            "SourcePortRange": "1/200", "DestinationPortRange": "53/53"}])
    egress = r["EgressRules"][0]["InstanceId"]
    ok("CreateTrafficMirrorFilterRules", egress)
    call("UpdateTrafficMirrorFilterRuleAttribute", TrafficMirrorFilterRuleId=egress, Priority=3)
    ok("UpdateTrafficMirrorFilterRuleAttribute")
    call("UpdateTrafficMirrorFilterAttribute", TrafficMirrorFilterId=fid,
         TrafficMirrorFilterDescription="classic")
    ok("UpdateTrafficMirrorFilterAttribute")
    f = call("ListTrafficMirrorFilters", TrafficMirrorFilterIdss=[fid])["TrafficMirrorFilters"][0]
    expect(typed(f["EgressRules"][0]["Priority"], int, "Priority") == 3, "rule priority updated")
    expect(f["TrafficMirrorFilterDescription"] == "classic", "description updated")
    ok("ListTrafficMirrorFilters")
    call("DeleteTrafficMirrorFilterRules", TrafficMirrorFilterId=fid, TrafficMirrorFilterRuleIdss=[egress])
    ok("DeleteTrafficMirrorFilterRules")

    r = call("CreateTrafficMirrorSession", TrafficMirrorSessionName=f"{NAME}-session",
             Priority=PRIORITY, VirtualNetworkId=VNI, PacketLength=256, Enabled=True,
             TrafficMirrorFilterId=fid, TrafficMirrorTargetId=TARGET_ENI,
             TrafficMirrorTargetType="NetworkInterface", TrafficMirrorSourceIdss=[SOURCE2])
    sid = typed(r["TrafficMirrorSessionId"], str, "TrafficMirrorSessionId")
    ok("CreateTrafficMirrorSession", sid)
    s = settled(sid)
    typed(s["VirtualNetworkId"], int, "VirtualNetworkId")
    ok("ListTrafficMirrorSessions")
    call("AddSourcesToTrafficMirrorSession", TrafficMirrorSessionId=sid, TrafficMirrorSourceIdss=[SOURCE])
    ok("AddSourcesToTrafficMirrorSession")
    settled(sid)
    call("RemoveSourcesFromTrafficMirrorSession", TrafficMirrorSessionId=sid, TrafficMirrorSourceIdss=[SOURCE2])
    ok("RemoveSourcesFromTrafficMirrorSession")
    settled(sid)
    call("UpdateTrafficMirrorSessionAttribute", TrafficMirrorSessionId=sid, PacketLength=128)
    ok("UpdateTrafficMirrorSessionAttribute")
    s = settled(sid)
    expect(s["PacketLength"] == 128 and s["TrafficMirrorSourceIds"] == [SOURCE], f"session {s}")

    typed(call("GetFlowLogServiceStatus")["Enabled"], bool, "Enabled")
    ok("GetFlowLogServiceStatus")
    call("OpenFlowLogService")
    ok("OpenFlowLogService")
    r = call("CreateFlowLog", FlowLogName=f"{NAME}-fl", ResourceType="NetworkInterface",
             ResourceId=SOURCE2, TrafficType="All", ProjectName=f"{NAME}-project",
             LogStoreName=f"{NAME}-store", AggregationInterval=1)
    fl = typed(r["FlowLogId"], str, "FlowLogId")
    ok("CreateFlowLog", fl)
    expect(flow_log(fl)["LogStoreName"] == f"{NAME}-store", "flow log store")
    ok("DescribeFlowLogs")
    wait_for(lambda: flow_log(fl)["Status"], lambda st: st == "Active", "Active")
    call("ModifyFlowLogAttribute", FlowLogId=fl, FlowLogName=f"{NAME}-fl2")
    ok("ModifyFlowLogAttribute")
    wait_for(lambda: flow_log(fl)["Status"], lambda st: st == "Active", "Active")
    call("DeactiveFlowLog", FlowLogId=fl)
    ok("DeactiveFlowLog")
    wait_for(lambda: flow_log(fl)["Status"], lambda st: st == "Inactive", "Inactive")
    call("ActiveFlowLog", FlowLogId=fl)
    ok("ActiveFlowLog")
    wait_for(lambda: flow_log(fl)["Status"], lambda st: st == "Active", "Active")
    call("DeleteFlowLog", FlowLogId=fl)
    ok("DeleteFlowLog")
    expect_error(lambda: call("DeleteTrafficMirrorSession", TrafficMirrorSessionId="tms-none"),
                 "ResourceNotFound.TrafficMirrorSession", "DeleteTrafficMirrorSession(unknown)")
    save({"session": sid, "filter": fid})
    print(f"KEEP {sid} {VNI}")


def teardown():
    st = load()
    call("DeleteTrafficMirrorSession", TrafficMirrorSessionId=st["session"])
    ok("DeleteTrafficMirrorSession")
    wait_for(lambda: session(st["session"]), lambda s: not s, "session gone")
    call("DeleteTrafficMirrorFilter", TrafficMirrorFilterId=st["filter"])
    ok("DeleteTrafficMirrorFilter")


setup() if PHASE == "setup" else teardown()
