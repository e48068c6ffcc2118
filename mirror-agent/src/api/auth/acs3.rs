//! Alibaba Cloud ACS3-HMAC-SHA256, the signature of the current Tea SDKs
//! (`alibabacloud-tea-openapi`): `Authorization: ACS3-HMAC-SHA256 Credential=AK,
//! SignedHeaders=…,Signature=hex`, with `x-acs-date`, `x-acs-signature-nonce` and
//! `x-acs-content-sha256` among the signed headers.

use super::{
    AuthError, AuthFields, Claim, Request, canonical_headers, hmac_sha256, parse_iso8601, pct,
    sha256_hex,
};

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// The query as the SDK canonicalizes it: keys sorted and as they are, values encoded.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The string to sign from the canonical request's parts.
pub fn string_to_sign(
    method: &str,
    path: &str,
    query: &str,
    headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    let canonical =
        format!("{method}\n{path}\n{query}\n{headers}\n{signed_headers}\n{payload_hash}");
    format!("{ALGORITHM}\n{}", sha256_hex(canonical.as_bytes()))
}

pub fn sign(secret: &str, string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()))
}

/// What a client signs: the request's parts, its key, its time and nonce.
pub struct Signing<'a> {
    pub method: &'a str,
    pub query: &'a [(String, String)],
    /// Every header to sign except the `x-acs-content-sha256` this adds, lower-case names.
    pub headers: &'a [(&'a str, String)],
    pub body: &'a [u8],
    pub access_key_id: &'a str,
    pub secret: &'a str,
}

/// Signs a request as the Tea SDK does (the CLI uses it): the headers to add,
/// `x-acs-content-sha256` and `Authorization`.
pub fn sign_request(s: &Signing<'_>) -> Vec<(String, String)> {
    let payload_hash = sha256_hex(s.body);
    let mut headers: Vec<(String, String)> = s
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.push(("x-acs-content-sha256".into(), payload_hash.clone()));
    headers.sort();
    let canonical: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let sts = string_to_sign(
        s.method,
        "/",
        &canonical_query(s.query),
        &canonical,
        &signed,
        &payload_hash,
    );
    let signature = sign(s.secret, &sts);
    vec![
        ("x-acs-content-sha256".into(), payload_hash),
        (
            "authorization".into(),
            format!(
                "{ALGORITHM} Credential={},SignedHeaders={signed},Signature={signature}",
                s.access_key_id
            ),
        ),
    ]
}

pub fn claim(req: &Request<'_>) -> Result<Claim, AuthError> {
    let fields = AuthFields::of(req, ALGORITHM);
    let field = |name: &str| fields.get(name);
    let access_key_id = field("Credential")?;
    let signed_headers = field("SignedHeaders")?;
    let given = field("Signature")?;
    let header = |name: &str| {
        req.header(name)
            .map(str::to_string)
            .ok_or_else(|| AuthError::Malformed(format!("header {name} is missing")))
    };
    let timestamp_text = header("x-acs-date")?;
    let nonce = header("x-acs-signature-nonce")?;
    let payload_hash = header("x-acs-content-sha256")?;
    for required in [
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ] {
        if !signed_headers.split(';').any(|h| h == required) {
            return Err(AuthError::Malformed(format!("{required} is not signed")));
        }
    }
    // The body is what the declared hash covers, or the signature covers nothing.
    if !payload_hash.eq_ignore_ascii_case(&sha256_hex(req.body)) {
        return Err(AuthError::BadSignature);
    }
    let timestamp = parse_iso8601(&timestamp_text)?;
    let sts = string_to_sign(
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        &canonical_query(&req.query_pairs()),
        &canonical_headers(req, &signed_headers, true),
        &signed_headers,
        &payload_hash,
    );
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
    use super::super::vectors::*;
    use super::*;

    const BODY: &[u8] = b"TrafficMirrorFilterId=tmf-1&Priority=1";

    #[test]
    fn tea_sdk_vector() {
        let hash = sha256_hex(BODY);
        let h = headers(&[
            ("host", "127.0.0.1:18080"),
            ("x-acs-version", "2016-04-28"),
            ("x-acs-action", "CreateTrafficMirrorSession"),
            ("x-acs-date", "2026-01-02T03:04:05Z"),
            ("x-acs-signature-nonce", "nonce-1"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-acs-content-sha256", &hash),
            ("user-agent", "not signed"),
            (
                "authorization",
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=content-type;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=018fb60887f4666590fb2f93162f1da8d20cb4e8b5bebd97d439d60a912e11e4",
            ),
        ]);
        let r = Request {
            method: "POST",
            path: "/",
            query: Some("RegionId=cn-hangzhou&Name=a%20b%2A~"),
            headers: &h,
            body: BODY,
        };
        let c = claim(&r).expect("claim");
        assert_eq!(c.access_key_id, AK);
        assert_eq!(c.nonce.as_deref(), Some("nonce-1"));
        assert_eq!(
            (c.expected)(SK),
            "018fb60887f4666590fb2f93162f1da8d20cb4e8b5bebd97d439d60a912e11e4"
        );
        assert_eq!((c.expected)(SK), c.given);
        // The client side signs what the server side accepts.
        let query = vec![(
            "Action".to_string(),
            "ListTrafficMirrorSessions".to_string(),
        )];
        let base = [
            ("host", "127.0.0.1:18080".to_string()),
            ("x-acs-date", "2026-01-02T03:04:05Z".to_string()),
            ("x-acs-signature-nonce", "n-2".to_string()),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let added = sign_request(&Signing {
            method: "POST",
            query: &query,
            headers: &base,
            body: BODY,
            access_key_id: AK,
            secret: SK,
        });
        let mut all: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend(added.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let h2 = headers(&all);
        let signed = Request {
            method: "POST",
            path: "/",
            query: Some("Action=ListTrafficMirrorSessions"),
            headers: &h2,
            body: BODY,
        };
        let c2 = claim(&signed).expect("claim");
        assert_eq!((c2.expected)(SK), c2.given);
        // A body other than the hashed one is refused before any key is tried.
        let other = Request { body: b"x=1", ..r };
        assert!(matches!(claim(&other), Err(AuthError::BadSignature)));
    }
}
