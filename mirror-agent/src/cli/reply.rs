//! The agent's answer: its status and body, its RequestId and, when it is one, its error.

use std::fmt;

use serde_json::Value;

/// An HTTP answer as received.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    status: u16,
    pub(super) body: Vec<u8>,
    pub(super) json: Option<Value>,
}

/// An error answer of the API, in whichever envelope it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiFailure {
    pub(super) code: String,
    message: String,
    request_id: Option<String>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}: {}", self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (RequestId {id})")?;
        }
        Ok(())
    }
}

pub(super) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Reply {
    pub(super) fn new(status: u16, body: Vec<u8>) -> Reply {
        let json = serde_json::from_slice(&body).ok();
        Reply { status, body, json }
    }

    pub(super) fn request_id(&self) -> Option<String> {
        let j = self.json.as_ref()?;
        str_field(j, "RequestId")
            .or_else(|| {
                j.get("ResponseMetadata")
                    .and_then(|m| str_field(m, "RequestId"))
            })
            .or_else(|| str_field(j, "request_id"))
            .map(str::to_string)
    }

    /// The API's error, if the answer is one. Besides Alibaba's flat envelope, the Volcengine
    /// and Huawei shapes are understood because `call` can ask for them.
    pub(super) fn failure(&self) -> Option<ApiFailure> {
        let request_id = self.request_id();
        let j = self.json.as_ref();
        let (code, message) = j
            .and_then(|j| {
                let volc = j
                    .get("ResponseMetadata")
                    .and_then(|m| m.get("Error"))
                    .filter(|e| e.is_object());
                if let Some(e) = volc {
                    return Some((str_field(e, "Code")?, str_field(e, "Message").unwrap_or("")));
                }
                if let Some(code) = str_field(j, "Code") {
                    return Some((code, str_field(j, "Message").unwrap_or("")));
                }
                str_field(j, "error_code").map(|c| (c, str_field(j, "error_msg").unwrap_or("")))
            })
            .map(|(c, m)| (c.to_string(), m.to_string()))
            .unwrap_or_default();
        let ok = (200..300).contains(&self.status);
        if ok && code.is_empty() {
            return None;
        }
        if code.is_empty() {
            // Not one of the API's errors (a proxy, a wrong endpoint): show what came back.
            let text = String::from_utf8_lossy(&self.body);
            let first = text.lines().next().unwrap_or("").trim();
            let snippet: String = first.chars().take(200).collect();
            return Some(ApiFailure {
                code: format!("HTTP {}", self.status),
                message: if snippet.is_empty() {
                    "empty answer".to_string()
                } else {
                    snippet
                },
                request_id,
            });
        }
        Some(ApiFailure {
            code,
            message,
            request_id,
        })
    }
}
