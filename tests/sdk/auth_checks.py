"""Good and bad signatures of every algorithm against the agent: the right key passes; a
wrong secret, an unknown key id, an expired timestamp, a replayed nonce and no signature at
all each get the cloud's own code and HTTP status. Prints `OK <case> <code>` per case."""
import datetime
import json
import urllib.error
import urllib.request

from common import *  # noqa: F403

OLD = datetime.datetime.utcnow() - datetime.timedelta(hours=1)


def raw(path, headers=None):
    """One request outside any SDK: (status, JSON body)."""
    req = urllib.request.Request(f"http://{ENDPOINT}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def code_of(body):
    return (body.get("Code") or body.get("error_code")
            or body.get("ResponseMetadata", {}).get("Error", {}).get("Code"))


def expect_raw(case, got, status, code):
    st, body = got
    expect((st, code_of(body)) == (status, code), f"{case}: expected {status} {code}, got {st} {body}")
    ok(case, f"{status} {code}")


# ---- Alibaba signature v1, signed by the classic SDK's own composer -------------------------
from aliyunsdkcore.auth.composer import rpc_signature_composer as v1  # noqa: E402
from aliyunsdkcore.utils import parameter_helper  # noqa: E402


def v1_url(ak, sk, when=None):
    real = parameter_helper.get_iso_8061_date
    if when:
        parameter_helper.get_iso_8061_date = lambda: when.strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        url, _ = v1.get_signed_url({"Action": "ListTrafficMirrorSessions", "Version": "2016-04-28"},
                                   ak, sk, "JSON", "GET", {})
    finally:
        parameter_helper.get_iso_8061_date = real
    return url


url = v1_url(AK, SK)
expect_raw("v1 right key", raw(url), 200, None)
expect_raw("v1 replayed nonce", raw(url), 400, "SignatureNonceUsed")
expect_raw("v1 wrong secret", raw(v1_url(AK, SK + "x")), 400, "SignatureDoesNotMatch")
expect_raw("v1 unknown key", raw(v1_url("nobody", SK)), 404, "InvalidAccessKeyId.NotFound")
expect_raw("v1 expired", raw(v1_url(AK, SK, OLD)), 400, "InvalidTimeStamp.Expired")
expect_raw("alibaba unsigned", raw("/?Action=ListTrafficMirrorSessions"), 400, "MissingSignature")

# ---- Alibaba ACS3-HMAC-SHA256, the Tea SDK --------------------------------------------------
from alibabacloud_tea_openapi.utils import Utils as TeaUtils  # noqa: E402
from alibabacloud_tea_openapi.utils_models import Config  # noqa: E402
from alibabacloud_vpc20160428.client import Client  # noqa: E402
from alibabacloud_vpc20160428 import models as am  # noqa: E402


def tea(ak, sk):
    c = Client(Config(access_key_id=ak, access_key_secret=sk, endpoint=ENDPOINT, protocol="http",
                      region_id="cn-hangzhou"))
    return lambda: c.list_traffic_mirror_sessions(am.ListTrafficMirrorSessionsRequest(region_id="cn-hangzhou"))


tea(AK, SK)()
ok("acs3 right key")
expect_error(tea(AK, SK + "x"), "SignatureDoesNotMatch", "acs3 wrong secret")
expect_error(tea("nobody", SK), "InvalidAccessKeyId.NotFound", "acs3 unknown key")
real_ts, real_nonce = TeaUtils.get_timestamp, TeaUtils.get_nonce
TeaUtils.get_timestamp = staticmethod(lambda: OLD.strftime("%Y-%m-%dT%H:%M:%SZ"))
expect_error(tea(AK, SK), "InvalidTimeStamp.Expired", "acs3 expired")
TeaUtils.get_timestamp = real_ts
TeaUtils.get_nonce = staticmethod(lambda: "fixed-nonce-for-the-replay-case")
tea(AK, SK)()
expect_error(tea(AK, SK), "SignatureNonceUsed", "acs3 replayed nonce")
TeaUtils.get_nonce = real_nonce

# ---- Volcengine HMAC-SHA256 -------------------------------------------------------------------
import volcenginesdkcore  # noqa: E402
import volcenginesdkcore.signv4 as signv4  # noqa: E402
import volcenginesdkvpc as vv  # noqa: E402


def volc(ak, sk):
    conf = volcenginesdkcore.Configuration()
    conf.ak, conf.sk, conf.region, conf.host, conf.scheme = ak, sk, "cn-beijing", ENDPOINT, "http"
    api = vv.VPCApi(volcenginesdkcore.ApiClient(conf))
    return lambda: api.describe_traffic_mirror_sessions(vv.DescribeTrafficMirrorSessionsRequest())


volc(AK, SK)()
ok("volcengine right key")
expect_error(volc(AK, SK + "x"), "SignatureDoesNotMatch", "volcengine wrong secret")
expect_error(volc("nobody", SK), "InvalidAccessKey", "volcengine unknown key")


class Past(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return OLD


signv4.datetime = type("m", (), {"datetime": Past})
expect_error(volc(AK, SK), "InvalidTimestamp", "volcengine expired")
signv4.datetime = datetime
expect_raw("volcengine unsigned",
           raw("/?Action=DescribeTrafficMirrorSessions&Version=2020-04-01"), 401,
           "MissingAuthenticationToken")

# ---- Huawei SDK-HMAC-SHA256 -------------------------------------------------------------------
import huaweicloudsdkcore.signer.signer as hsigner  # noqa: E402
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkvpc.v3 import VpcClient  # noqa: E402
from huaweicloudsdkvpc.v3 import model as hm  # noqa: E402

PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


def huawei(ak, sk):
    c = (VpcClient.new_builder().with_credentials(BasicCredentials(ak, sk, PROJECT))
         .with_endpoints([f"http://{ENDPOINT}"]).build())
    return lambda: c.list_traffic_mirror_sessions(hm.ListTrafficMirrorSessionsRequest())


huawei(AK, SK)()
ok("huawei right key")
expect_error(huawei(AK, SK + "x"), "APIGW.0301", "huawei wrong secret")
e = expect_error(huawei("nobody", SK), "APIGW.0301", "huawei unknown key")
expect("ak not exist" in str(e), f"huawei unknown key says so: {e}")
hsigner.datetime = Past
expect_error(huawei(AK, SK), "APIGW.0301", "huawei expired")
hsigner.datetime = datetime.datetime
expect_raw("huawei unsigned", raw(f"/v3/{PROJECT}/vpc/traffic-mirror-sessions"), 401, "APIGW.0301")
print("DONE")
