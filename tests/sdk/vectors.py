"""Prints signature vectors made by the real SDK signers, for the agent's unit tests
(mirror-agent/src/api/auth/*.rs). Run with the SDK virtualenv's python."""
import datetime
import types

AK, SK = "testid", "testsecret"

# Alibaba Tea SDK, ACS3-HMAC-SHA256.
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
import hashlib
body = "TrafficMirrorFilterId=tmf-1&Priority=1"
req = types.SimpleNamespace(
    pathname="/", method="POST",
    query={"RegionId": "cn-hangzhou", "Name": "a b*~"},
    headers={
        "host": "127.0.0.1:18080",
        "x-acs-version": "2016-04-28",
        "x-acs-action": "CreateTrafficMirrorSession",
        "x-acs-date": "2026-01-02T03:04:05Z",
        "x-acs-signature-nonce": "nonce-1",
        "content-type": "application/x-www-form-urlencoded",
        "x-acs-content-sha256": hashlib.sha256(body.encode()).hexdigest(),
    },
)
print("acs3", TeaUtils.get_authorization(req, "ACS3-HMAC-SHA256", req.headers["x-acs-content-sha256"], AK, SK))

# Alibaba signature v1 (classic SDK's composer).
from aliyunsdkcore.auth.composer import rpc_signature_composer as c
from aliyunsdkcore.utils import parameter_helper as h
h.get_iso_8061_date = lambda: "2026-01-02T03:04:05Z"
h.get_uuid = lambda: "nonce-2"
url, sts = c.get_signed_url({"Action": "ListTrafficMirrorSessions", "Version": "2016-04-28", "Name": "a b"}, AK, SK, "JSON", "POST", {"Priority": "1"})
print("v1url", url)
print("v1sts", sts)

# Volcengine SignerV4 at a fixed time.
import volcenginesdkcore.signv4 as v4
class FixedDT(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return datetime.datetime(2026, 1, 2, 3, 4, 5)
v4.datetime = types.SimpleNamespace(datetime=FixedDT)
headers = {"Host": "127.0.0.1:18080", "Accept": "application/json", "Content-Type": "text/plain"}
v4.SignerV4.sign("/", "GET", headers, "", [], [("Action", "DescribeTrafficMirrorSessions"), ("Version", "2020-04-01"), ("TrafficMirrorSessionIds.1", "tms-1")], AK, SK, "cn-beijing", "vpc")
print("volc", headers["Authorization"], "|", headers["X-Date"], "|", headers["X-Content-Sha256"])

# Huawei SDK-HMAC-SHA256 with a fixed X-Sdk-Date.
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkcore.sdk_request import SdkRequest
cred = types.SimpleNamespace(ak=AK, sk=SK)
r = SdkRequest(method="PUT", schema="http", host="127.0.0.1:18080",
               resource_path="/v3/proj/vpc/traffic-mirror-sessions/tms-1",
               query_params=[("limit", 10), ("marker", "a b")],
               header_params={"Content-Type": "application/json;charset=UTF-8", "X-Sdk-Date": "20260102T030405Z", "X-Project-Id": "proj"},
               body='{"traffic_mirror_session": {"name": "x"}}')
Signer(cred).sign(r)
print("huawei", r.header_params["Authorization"], "|", r.uri)
