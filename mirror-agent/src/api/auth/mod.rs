//! Request authentication on TCP listeners, the way the clouds do it: access-key pairs from
//! the config and each cloud's own signature algorithm (one file each), a timestamp window,
//! a bounded cache of used nonces, and each cloud's own error codes.
//!
//! Which cloud a request speaks decides both the algorithm and the error envelope: the
//! `Authorization` scheme when there is one, else the request's shape (Huawei's `/v3/` paths,
//! Volcengine's `Version=2020-04-01`, Alibaba otherwise).

pub mod acs3;
pub mod acs_v1;
pub mod huawei;
pub mod volc;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use super::ApiError;

/// Default accepted distance between a request's timestamp and the agent's clock.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Nonces remembered at most; past this the oldest are forgotten first. Each is kept for
/// twice the window, after which its timestamp alone refuses a replay.
pub const NONCE_CACHE_CAPACITY: usize = 100_000;

/// An access key secret. Its `Debug` never shows it, so settings and errors can be logged.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The cloud whose conventions a request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Alibaba,
    Volcengine,
    Huawei,
}

/// Why a request is refused. Never carries a secret; a key id is not secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error("access key {0} is not known")]
    UnknownKey(String),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp {0:?} is outside the accepted window")]
    Expired(String),
    #[error("the timestamp {0:?} is not in the expected format")]
    BadTimestamp(String),
    #[error("the signature nonce was used already")]
    NonceUsed,
    #[error("a valid bearer token is required")]
    BadToken,
}

impl AuthError {
    /// The error as `cloud` reports it: code, HTTP status, message.
    pub fn to_api_error(&self, cloud: Cloud) -> ApiError {
        match cloud {
            Cloud::Alibaba => match self {
                AuthError::Missing => ApiError::new(
                    400,
                    "MissingSignature",
                    "The input parameter \"Signature\" that is mandatory for processing this request is not supplied.",
                ),
                AuthError::Malformed(why) => ApiError::new(
                    400,
                    "IncompleteSignature",
                    format!("The request signature does not conform to Aliyun standards: {why}"),
                ),
                AuthError::UnknownKey(_) => ApiError::new(
                    404,
                    "InvalidAccessKeyId.NotFound",
                    "Specified access key is not found.",
                ),
                AuthError::BadSignature => ApiError::new(
                    400,
                    "SignatureDoesNotMatch",
                    "Specified signature is not matched with our calculation.",
                ),
                AuthError::Expired(_) => ApiError::new(
                    400,
                    "InvalidTimeStamp.Expired",
                    "Specified time stamp or date value is expired.",
                ),
                AuthError::BadTimestamp(_) => ApiError::new(
                    400,
                    "InvalidTimeStamp.Format",
                    "Specified time stamp or date value is not well formatted.",
                ),
                AuthError::NonceUsed => ApiError::new(
                    400,
                    "SignatureNonceUsed",
                    "Specified signature nonce was used already.",
                ),
                AuthError::BadToken => unauthorized(),
            },
            Cloud::Volcengine => match self {
                AuthError::Missing => ApiError::new(
                    401,
                    "MissingAuthenticationToken",
                    "Request is missing Authentication Token.",
                ),
                AuthError::Malformed(why) => ApiError::new(
                    401,
                    "InvalidAuthorization",
                    format!("Invalid Authorization header, Pls check authorization header: {why}"),
                ),
                AuthError::UnknownKey(id) => ApiError::new(
                    401,
                    "InvalidAccessKey",
                    format!("The accesskey [{id}] included in the request is invalid."),
                ),
                AuthError::BadSignature => ApiError::new(
                    401,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided. Check your Secret Access Key and signing method. Consult the service documentation for details.",
                ),
                AuthError::Expired(_) | AuthError::BadTimestamp(_) => ApiError::new(
                    400,
                    "InvalidTimestamp",
                    "The signature of the request is expired.",
                ),
                // Volcengine's signature has no nonce; kept for completeness.
                AuthError::NonceUsed => ApiError::new(
                    401,
                    "SignatureDoesNotMatch",
                    "The request was already received.",
                ),
                AuthError::BadToken => unauthorized(),
            },
            Cloud::Huawei => {
                let msg = match self {
                    AuthError::Missing => "Authorization header not found".to_string(),
                    AuthError::Malformed(why) => format!("unsupported authorization: {why}"),
                    AuthError::UnknownKey(id) => {
                        format!("Get secretKey failed,ak:{id},err:ak not exist")
                    }
                    AuthError::BadSignature => "verify aksk signature fail".to_string(),
                    AuthError::Expired(d) => {
                        format!("verify aksk signature fail, X-Sdk-Date {d} expired")
                    }
                    AuthError::BadTimestamp(d) => {
                        format!("verify aksk signature fail, X-Sdk-Date {d} is malformed")
                    }
                    AuthError::NonceUsed => "verify aksk signature fail, replayed".to_string(),
                    AuthError::BadToken => "a valid bearer token is required".to_string(),
                };
                ApiError::new(
                    401,
                    "APIGW.0301",
                    format!("Incorrect IAM authentication information: {msg}"),
                )
            }
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        401,
        "Unauthorized",
        "A valid bearer token is required on this listener.",
    )
}

/// What a signature is computed over, as received.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query's pairs, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    /// The form body's pairs, decoded, when the body is a form.
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        let is_form = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Vec::new();
        }
        form_urlencoded::parse(self.body).into_owned().collect()
    }

    /// The cloud this request speaks, from its Authorization scheme or else its shape.
    pub fn cloud(&self) -> Cloud {
        let auth = self.header("authorization").unwrap_or_default();
        if auth.starts_with(huawei::ALGORITHM) || self.path.starts_with("/v3/") {
            return Cloud::Huawei;
        }
        if auth.starts_with(volc::ALGORITHM) || self.header("x-date").is_some() {
            return Cloud::Volcengine;
        }
        if auth.starts_with(acs3::ALGORITHM) {
            return Cloud::Alibaba;
        }
        let volc_version = self
            .query_pairs()
            .into_iter()
            .chain(self.form_pairs())
            .any(|(k, v)| k == "Version" && v.starts_with("2020-04-01"));
        if volc_version {
            Cloud::Volcengine
        } else {
            Cloud::Alibaba
        }
    }
}

/// A signature the request carries, found by one of the algorithms; checked against the key.
pub struct Claim {
    pub access_key_id: String,
    /// The request's time, seconds since the epoch.
    pub timestamp: i64,
    pub timestamp_text: String,
    /// Replay protection where the algorithm has a nonce.
    pub nonce: Option<String>,
    /// Computes the expected signature with a secret; compared in constant time.
    pub expected: Box<dyn Fn(&str) -> String + Send>,
    pub given: String,
}

/// Access keys and what a listener accepts.
pub struct Authenticator {
    keys: HashMap<String, Secret>,
    token: Option<Secret>,
    window: Duration,
    nonces: Mutex<NonceCache>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("token", &self.token.is_some())
            .field("window", &self.window)
            .finish()
    }
}

impl Authenticator {
    pub fn new(
        keys: impl IntoIterator<Item = (String, Secret)>,
        token: Option<Secret>,
        window: Duration,
    ) -> Authenticator {
        Authenticator {
            keys: keys.into_iter().collect(),
            token,
            window,
            nonces: Mutex::new(NonceCache::new(NONCE_CACHE_CAPACITY)),
        }
    }

    /// Whether anything is required at all (a listener with nothing configured is open).
    pub fn is_enforcing(&self) -> bool {
        !self.keys.is_empty() || self.token.is_some()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Accepts a request signed with one of the keys (or carrying the bearer token).
    pub fn check(&self, req: &Request<'_>, now_unix: i64) -> Result<(), AuthError> {
        if !self.is_enforcing() {
            return Ok(());
        }
        let auth = req.header("authorization").unwrap_or_default();
        if let Some(given) = auth.strip_prefix("Bearer ") {
            return match &self.token {
                Some(t) if constant_time_eq(given.as_bytes(), t.expose().as_bytes()) => Ok(()),
                _ => Err(AuthError::BadToken),
            };
        }
        let claim = if auth.starts_with(acs3::ALGORITHM) {
            acs3::claim(req)?
        } else if auth.starts_with(volc::ALGORITHM) {
            volc::claim(req)?
        } else if auth.starts_with(huawei::ALGORITHM) {
            huawei::claim(req)?
        } else if !auth.is_empty() {
            return Err(AuthError::Malformed(
                "unsupported Authorization scheme".into(),
            ));
        } else if req
            .query_pairs()
            .iter()
            .chain(req.form_pairs().iter())
            .any(|(k, _)| k == "Signature")
        {
            acs_v1::claim(req)?
        } else if self.keys.is_empty() {
            return Err(AuthError::BadToken);
        } else {
            return Err(AuthError::Missing);
        };
        let secret = self
            .keys
            .get(&claim.access_key_id)
            .ok_or_else(|| AuthError::UnknownKey(claim.access_key_id.clone()))?;
        let expected = (claim.expected)(secret.expose());
        if !constant_time_eq(expected.as_bytes(), claim.given.as_bytes()) {
            return Err(AuthError::BadSignature);
        }
        // The signature first: an attacker without the key learns nothing from the clock
        // check, and cannot fill the nonce cache.
        let skew = (now_unix - claim.timestamp).unsigned_abs();
        if skew > self.window.as_secs() {
            return Err(AuthError::Expired(claim.timestamp_text));
        }
        if let Some(nonce) = claim.nonce {
            let key = format!("{}\n{nonce}", claim.access_key_id);
            let fresh = self
                .nonces
                .lock()
                .map_err(|_| AuthError::NonceUsed)?
                .insert(key, Instant::now(), self.window * 2);
            if !fresh {
                return Err(AuthError::NonceUsed);
            }
        }
        Ok(())
    }
}

/// Nonces seen recently: bounded in count, forgotten after their time-to-live.
pub struct NonceCache {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    capacity: usize,
}

impl NonceCache {
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `nonce`; false when it is already there (a replay).
    pub fn insert(&mut self, nonce: String, now: Instant, ttl: Duration) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= ttl && self.order.len() < self.capacity {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.seen.get(&old) == Some(&at)
            {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&nonce) {
            return false;
        }
        self.seen.insert(nonce.clone(), now);
        self.order.push_back((now, nonce));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 3986 percent-encoding: everything but `A-Z a-z 0-9 - _ . ~`, as every SDK's signer
/// encodes (Python's `quote(s, safe='~')`).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; the error case cannot happen.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// `SignedHeaders=a;b` → the canonical header block (`name:value\n` each) as the
/// SDKs build it: names lower-case, values trimmed, repeated headers joined with `,`.
pub fn canonical_headers(req: &Request<'_>, signed: &str, sort_values: bool) -> String {
    let mut out = String::new();
    for name in signed.split(';').filter(|n| !n.is_empty()) {
        let mut values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .collect();
        if sort_values {
            values.sort();
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

/// The `key=value` fields of an `Authorization` header after its algorithm name
/// (`ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…` and its kin).
pub struct AuthFields(HashMap<String, String>);

impl AuthFields {
    pub fn of(req: &Request<'_>, algorithm: &str) -> AuthFields {
        let auth = req.header("authorization").unwrap_or_default();
        let rest = auth.strip_prefix(algorithm).unwrap_or_default();
        AuthFields(
            rest.split(',')
                .filter_map(|f| {
                    let (k, v) = f.trim().split_once('=')?;
                    Some((k.trim().to_string(), v.trim().to_string()))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Result<String, AuthError> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::Malformed(format!("{name} is missing")))
    }
}

/// `2024-01-02T03:04:05Z` (Alibaba) → Unix seconds.
pub fn parse_iso8601(s: &str) -> Result<i64, AuthError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(s, &fmt)
        .map(|t| t.assume_utc().unix_timestamp())
        .map_err(|_| AuthError::BadTimestamp(s.to_string()))
}

/// `20240102T030405Z` (Volcengine, Huawei) → Unix seconds.
pub fn parse_basic(s: &str) -> Result<i64, AuthError> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &fmt)
        .map(|t| t.assume_utc().unix_timestamp())
        .map_err(|_| AuthError::BadTimestamp(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let a = Authenticator::new([("AK".to_string(), s)], None, DEFAULT_WINDOW);
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn nonce_cache_refuses_replays_and_stays_bounded() {
        let mut c = NonceCache::new(3);
        let t = Instant::now();
        let ttl = Duration::from_secs(60);
        assert!(c.insert("a".into(), t, ttl));
        assert!(!c.insert("a".into(), t, ttl));
        for n in ["b", "c", "d", "e"] {
            assert!(c.insert(n.into(), t, ttl));
        }
        assert!(c.len() <= 3);
        // Expired entries go first.
        let later = t + Duration::from_secs(61);
        assert!(c.insert("a".into(), later, ttl));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn percent_encoding_matches_rfc3986() {
        assert_eq!(pct("a b*~/+="), "a%20b%2A~%2F%2B%3D");
        assert_eq!(pct("é"), "%C3%A9");
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_iso8601("1970-01-01T00:01:00Z"), Ok(60));
        assert_eq!(parse_basic("19700101T000100Z"), Ok(60));
        assert!(parse_basic("yesterday").is_err());
    }
}

/// Vectors made by the SDKs' own signers (tests/sdk/vectors.py prints them).
#[cfg(test)]
pub(crate) mod vectors {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};

    pub const AK: &str = "testid";
    pub const SK: &str = "testsecret";

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }
}
