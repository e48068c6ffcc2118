//! Huawei Cloud SDK-HMAC-SHA256 (`huaweicloudsdkcore.signer.Signer`): `Authorization:
//! SDK-HMAC-SHA256 Access=AK, SignedHeaders=…, Signature=hex` and `X-Sdk-Date`. It has no
//! nonce: the timestamp window is its replay bound.

use super::{
    AuthError, AuthFields, Claim, Request, canonical_headers, hmac_sha256, parse_basic, pct,
    sha256_hex,
};

pub const ALGORITHM: &str = "SDK-HMAC-SHA256";

/// Each path segment decoded and encoded again, with a trailing `/`.
pub fn canonical_uri(path: &str) -> String {
    let segments: Vec<String> = path
        .split('/')
        .map(|s| {
            let decoded: String = percent_decode(s);
            pct(&decoded)
        })
        .collect();
    let mut uri = segments.join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    uri
}

fn percent_decode(s: &str) -> String {
    // A path segment has no `+` meaning space, so guard it from the form decoder.
    let guarded = s.replace('+', "%2B");
    form_urlencoded::parse(format!("x={guarded}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Pairs sorted as decoded, then encoded.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn string_to_sign(
    method: &str,
    uri: &str,
    query: &str,
    headers: &str,
    signed_headers: &str,
    payload_hash: &str,
    date: &str,
) -> String {
    let canonical = format!(
        "{}\n{uri}\n{query}\n{headers}\n{signed_headers}\n{payload_hash}",
        method.to_uppercase()
    );
    format!("{ALGORITHM}\n{date}\n{}", sha256_hex(canonical.as_bytes()))
}

pub fn sign(secret: &str, string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()))
}

pub fn claim(req: &Request<'_>) -> Result<Claim, AuthError> {
    let fields = AuthFields::of(req, ALGORITHM);
    let field = |name: &str| fields.get(name);
    let access_key_id = field("Access")?;
    let signed_headers = field("SignedHeaders")?;
    let given = field("Signature")?;
    let date = req
        .header("x-sdk-date")
        .ok_or_else(|| AuthError::Malformed("header X-Sdk-Date is missing".into()))?
        .to_string();
    if !signed_headers.split(';').any(|h| h == "x-sdk-date") {
        return Err(AuthError::Malformed("x-sdk-date is not signed".into()));
    }
    let payload_hash = if req.body.is_empty() {
        sha256_hex(b"")
    } else {
        let hash = sha256_hex(req.body);
        match req.header("x-sdk-content-sha256") {
            // The SDK leaves non-JSON bodies unsigned; the agent's bodies are JSON, and an
            // unsigned one could be swapped in flight.
            Some(h) if !h.eq_ignore_ascii_case(&hash) => {
                return Err(AuthError::Malformed(
                    "the body must be signed (no UNSIGNED-PAYLOAD)".into(),
                ));
            }
            _ => hash,
        }
    };
    let timestamp = parse_basic(&date)?;
    let sts = string_to_sign(
        req.method,
        &canonical_uri(req.path),
        &canonical_query(&req.query_pairs()),
        &canonical_headers(req, &signed_headers, false),
        &signed_headers,
        &payload_hash,
        &date,
    );
    Ok(Claim {
        access_key_id,
        timestamp,
        timestamp_text: date,
        nonce: None,
        expected: Box::new(move |secret| sign(secret, &sts)),
        given,
    })
}

#[cfg(test)]
mod tests {
    use super::super::vectors::*;
    use super::*;

    #[test]
    fn huawei_sdk_vector() {
        let h = headers(&[
            ("content-type", "application/json;charset=UTF-8"),
            ("x-sdk-date", "20260102T030405Z"),
            ("x-project-id", "proj"),
            ("host", "127.0.0.1:18080"),
            (
                "authorization",
                "SDK-HMAC-SHA256 Access=testid, SignedHeaders=content-type;host;x-project-id;x-sdk-date, Signature=8b563421aa97fac5ed93182302fb5e0d3a7f5ac411b358166b576bd91873fabb",
            ),
        ]);
        let r = Request {
            method: "PUT",
            path: "/v3/proj/vpc/traffic-mirror-sessions/tms-1",
            query: Some("limit=10&marker=a%20b"),
            headers: &h,
            body: br#"{"traffic_mirror_session": {"name": "x"}}"#,
        };
        let c = claim(&r).expect("claim");
        assert_eq!(c.access_key_id, AK);
        assert_eq!(
            (c.expected)(SK),
            "8b563421aa97fac5ed93182302fb5e0d3a7f5ac411b358166b576bd91873fabb"
        );
        assert_eq!(canonical_uri("/v3/a%20b/x"), "/v3/a%20b/x/");
    }
}
