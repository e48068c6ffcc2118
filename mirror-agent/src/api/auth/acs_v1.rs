//! Alibaba Cloud RPC signature v1 (HMAC-SHA1): what `aliyun-python-sdk-core` and the Tea
//! SDK's `SignatureVersion=1.0` mode send. The signature, key id, nonce and timestamp are
//! parameters; every parameter of the query and the form body is signed.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha1::Sha1;

use super::{AuthError, Claim, Request, parse_iso8601, pct};

/// The string to sign: `METHOD&%2F&` + the encoded, sorted, encoded-again parameters.
pub fn string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> =
        params.iter().filter(|(k, _)| k != "Signature").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}&{}&{}", pct("/"), pct(&canonical))
}

/// Base64 of HMAC-SHA1 keyed with the secret and `&`.
pub fn sign(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    match Hmac::<Sha1>::new_from_slice(key.as_bytes()) {
        Ok(mut m) => {
            m.update(string_to_sign.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
        }
        // HMAC takes any key length: unreachable, and an empty signature never matches.
        Err(_) => String::new(),
    }
}

pub fn claim(req: &Request<'_>) -> Result<Claim, AuthError> {
    let mut params = req.query_pairs();
    params.extend(req.form_pairs());
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| AuthError::Malformed(format!("{name} is missing")))
    };
    let given = get("Signature")?;
    let access_key_id = get("AccessKeyId")?;
    let nonce = get("SignatureNonce")?;
    let timestamp_text = get("Timestamp")?;
    if let Ok(m) = get("SignatureMethod")
        && m != "HMAC-SHA1"
    {
        return Err(AuthError::Malformed(format!(
            "SignatureMethod {m} is not supported (HMAC-SHA1)"
        )));
    }
    let timestamp = parse_iso8601(&timestamp_text)?;
    let sts = string_to_sign(req.method, &params);
    Ok(Claim {
        access_key_id,
        timestamp,
        timestamp_text,
        nonce: Some(nonce),
        expected: Box::new(move |secret| sign(secret, &sts)),
        given,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Authenticator, DEFAULT_WINDOW, Secret, vectors::*};
    use super::*;

    const QUERY: &str = "Action=ListTrafficMirrorSessions&Version=2016-04-28&Name=a%20b&Timestamp=2026-01-02T03%3A04%3A05Z&SignatureMethod=HMAC-SHA1&SignatureType=&SignatureVersion=1.0&SignatureNonce=nonce-2&AccessKeyId=testid&Format=JSON&Signature=ZtpAspjlnQzhaCoaIUhVFr4l6NA%3D";

    fn req<'a>(h: &'a axum::http::HeaderMap, query: &'a str) -> Request<'a> {
        Request {
            method: "POST",
            path: "/",
            query: Some(query),
            headers: h,
            body: b"Priority=1",
        }
    }

    #[test]
    fn classic_sdk_vector() {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let r = req(&h, QUERY);
        let mut params = r.query_pairs();
        params.extend(r.form_pairs());
        assert_eq!(
            string_to_sign("POST", &params),
            "POST&%2F&AccessKeyId%3Dtestid%26Action%3DListTrafficMirrorSessions%26Format%3DJSON%26Name%3Da%2520b%26Priority%3D1%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3Dnonce-2%26SignatureType%3D%26SignatureVersion%3D1.0%26Timestamp%3D2026-01-02T03%253A04%253A05Z%26Version%3D2016-04-28"
        );
        let c = claim(&r).expect("claim");
        assert_eq!((c.expected)(SK), "ZtpAspjlnQzhaCoaIUhVFr4l6NA=");
        assert_eq!(c.given, "ZtpAspjlnQzhaCoaIUhVFr4l6NA=");
        assert_eq!(c.nonce.as_deref(), Some("nonce-2"));
    }

    #[test]
    fn authenticator_outcomes() {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let now = parse_iso8601("2026-01-02T03:04:05Z").expect("time");
        let auth = |sk: &str| {
            Authenticator::new([(AK.to_string(), Secret::new(sk))], None, DEFAULT_WINDOW)
        };
        let good = auth(SK);
        assert_eq!(good.check(&req(&h, QUERY), now), Ok(()));
        assert_eq!(good.check(&req(&h, QUERY), now), Err(AuthError::NonceUsed));
        assert_eq!(
            auth(SK).check(&req(&h, QUERY), now + 16 * 60),
            Err(AuthError::Expired("2026-01-02T03:04:05Z".into()))
        );
        assert_eq!(
            auth("wrong").check(&req(&h, QUERY), now),
            Err(AuthError::BadSignature)
        );
        let other = Authenticator::new([("x".to_string(), Secret::new(SK))], None, DEFAULT_WINDOW);
        assert_eq!(
            other.check(&req(&h, QUERY), now),
            Err(AuthError::UnknownKey(AK.into()))
        );
        // A changed body parameter breaks the signature.
        let mut tampered = req(&h, QUERY);
        tampered.body = b"Priority=2";
        assert_eq!(auth(SK).check(&tampered, now), Err(AuthError::BadSignature));
        let unsigned = req(&h, "Action=ListTrafficMirrorSessions");
        assert_eq!(auth(SK).check(&unsigned, now), Err(AuthError::Missing));
    }
}
