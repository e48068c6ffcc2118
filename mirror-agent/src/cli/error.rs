//! Why a command failed before the API could answer, or could not make sense of the answer:
//! these all end with exit code 2, as `error: <message>` on stderr.

use super::{MAX_PAGES, transport::ENV_ACCESS_KEY_SECRET};

/// The command line, or the environment, cannot become a request.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("the action is empty")]
    EmptyAction,
    #[error("parameter {0:?} is not Key=Value")]
    NotKeyValue(String),
    /// Sending only the id would be a request that changes nothing, most likely a mistake.
    #[error("nothing to update: give {0}")]
    NothingToUpdate(&'static str),
    #[error("give either --destination-ip or --instance-id, not both")]
    TargetBothPlaces,
    #[error("give --destination-ip or --instance-id")]
    TargetNoPlace,
    #[error("{name} is not valid UTF-8")]
    NotUtf8 { name: &'static str },
    #[error("access key {id}: set its secret in {ENV_ACCESS_KEY_SECRET}")]
    MissingSecret { id: String },
    #[error("endpoint {endpoint:?}: {why}; expected http://host:port")]
    Endpoint { endpoint: String, why: &'static str },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The agent answered, but not as the API promises.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("unexpected answer from the agent's {target}: {what}")]
    Unexpected { target: String, what: String },
    #[error("the agent's {target} repeated NextToken {token:?}; giving up")]
    RepeatedToken { target: String, token: String },
    #[error("the agent's {target} returned more than {MAX_PAGES} pages; giving up")]
    TooManyPages { target: String },
}
