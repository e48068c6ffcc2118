//! Volcengine HMAC-SHA256 (`volcenginesdkcore.signv4`): `Authorization: HMAC-SHA256
//! Credential=AK/DATE/REGION/SERVICE/request, SignedHeaders=…, Signature=hex`, `X-Date`,
//! `X-Content-Sha256`, and a signing key derived from the secret through the credential
//! scope. It has no nonce: the timestamp window is its replay bound.

use super::{AuthError, AuthFields, Claim, Request, hmac_sha256, parse_basic, pct, sha256_hex};

pub const ALGORITHM: &str = "HMAC-SHA256";

/// The query as the SDK canonicalizes it: encoded pairs, sorted.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Signed header values as the SDK signs them: untrimmed, and `host` without a default port.
pub fn canonical_headers(req: &Request<'_>, signed: &str) -> String {
    let mut out = String::new();
    for name in signed.split(';').filter(|n| !n.is_empty()) {
        let mut value = req.header(name).unwrap_or_default().to_string();
        if name == "host"
            && let Some((h, port)) = value.split_once(':')
            && (port == "80" || port == "443")
        {
            value = h.to_string();
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub fn string_to_sign(
    method: &str,
    path: &str,
    query: &str,
    headers: &str,
    signed_headers: &str,
    payload_hash: &str,
    date: &str,
    scope: &str,
) -> String {
    let canonical =
        format!("{method}\n{path}\n{query}\n{headers}\n{signed_headers}\n{payload_hash}");
    format!(
        "{ALGORITHM}\n{date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// `scope` is `DATE/REGION/SERVICE/request`.
pub fn sign(secret: &str, scope: &str, string_to_sign: &str) -> String {
    let mut key = secret.as_bytes().to_vec();
    for part in scope.split('/') {
        key = hmac_sha256(&key, part.as_bytes());
    }
    hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()))
}

pub fn claim(req: &Request<'_>) -> Result<Claim, AuthError> {
    let fields = AuthFields::of(req, ALGORITHM);
    let field = |name: &str| fields.get(name);
    let credential = field("Credential")?;
    let signed_headers = field("SignedHeaders")?;
    let given = field("Signature")?;
    let (access_key_id, scope) = credential
        .split_once('/')
        .ok_or_else(|| AuthError::Malformed("Credential has no scope".into()))?;
    if scope.split('/').count() != 4 || !scope.ends_with("/request") {
        return Err(AuthError::Malformed(
            "Credential scope is not DATE/REGION/SERVICE/request".into(),
        ));
    }
    let date = req
        .header("x-date")
        .ok_or_else(|| AuthError::Malformed("header X-Date is missing".into()))?
        .to_string();
    if !signed_headers.split(';').any(|h| h == "x-date") {
        return Err(AuthError::Malformed("x-date is not signed".into()));
    }
    let body_hash = sha256_hex(req.body);
    if let Some(declared) = req.header("x-content-sha256")
        && !declared.eq_ignore_ascii_case(&body_hash)
    {
        return Err(AuthError::BadSignature);
    }
    let timestamp = parse_basic(&date)?;
    let sts = string_to_sign(
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        &canonical_query(&req.query_pairs()),
        &canonical_headers(req, &signed_headers),
        &signed_headers,
        &body_hash,
        &date,
        scope,
    );
    let scope = scope.to_string();
    Ok(Claim {
        access_key_id: access_key_id.to_string(),
        timestamp,
        timestamp_text: date,
        nonce: None,
        expected: Box::new(move |secret| sign(secret, &scope, &sts)),
        given,
    })
}

#[cfg(test)]
mod tests {
    use super::super::vectors::*;
    use super::*;

    #[test]
    fn volcengine_sdk_vector() {
        let h = headers(&[
            ("host", "127.0.0.1:18080"),
            ("accept", "application/json"),
            ("content-type", "text/plain"),
            ("x-date", "20260102T030405Z"),
            (
                "x-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                "authorization",
                "HMAC-SHA256 Credential=testid/20260102/cn-beijing/vpc/request, SignedHeaders=content-type;host;x-content-sha256;x-date, Signature=c4a35f63a868c6d2e33d5e53c29448068a6f048e342ad89a748e3562a44b71a5",
            ),
        ]);
        let r = Request {
            method: "GET",
            path: "/",
            query: Some(
                "Action=DescribeTrafficMirrorSessions&Version=2020-04-01&TrafficMirrorSessionIds.1=tms-1",
            ),
            headers: &h,
            body: b"",
        };
        let c = claim(&r).expect("claim");
        assert_eq!(c.access_key_id, AK);
        assert_eq!(
            (c.expected)(SK),
            "c4a35f63a868c6d2e33d5e53c29448068a6f048e342ad89a748e3562a44b71a5"
        );
        assert_eq!(c.timestamp, parse_basic("20260102T030405Z").expect("date"));
        assert!(c.nonce.is_none());
    }
}
