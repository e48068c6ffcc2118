//! API errors: the HTTP status, `Code` and `Message` of the seeds' error tables.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 with the given code; the message names the parameter.
    pub fn bad(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// `MissingParameter` (400) for a required parameter that is absent or empty.
    pub fn missing(param: &str) -> Self {
        Self::bad(
            "MissingParameter",
            format!(
                "The input parameter \"{param}\" that is mandatory for processing this request is not supplied."
            ),
        )
    }

    /// `InvalidParameter` (400) for a value that is not of the parameter's type.
    pub fn invalid(param: &str, why: impl fmt::Display) -> Self {
        Self::bad(
            "InvalidParameter",
            format!("The specified parameter \"{param}\" is not valid: {why}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::model::InvalidParam> for ApiError {
    fn from(e: crate::model::InvalidParam) -> Self {
        ApiError::bad(
            e.code,
            format!("The specified {} is malformed: {}", e.param, e.reason),
        )
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}
