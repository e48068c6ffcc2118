//! One command's run against the agent: pages followed, the answer turned into what is
//! printed, and the exit code.

use std::{collections::HashSet, fmt};

use serde_json::Value;

use super::{
    EXIT_API_ERROR, EXIT_OK, EXIT_USAGE, MAX_PAGES, Output, Plan, Render,
    error::AnswerError,
    filters::created_rules,
    reply::{ApiFailure, Reply, str_field},
    transport::{Transport, send},
};

/// What a command printed and how it ended; collected first so paging failures do not leave
/// half a table behind.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) code: u8,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Outcome {
    pub(super) fn usage(message: impl fmt::Display) -> Outcome {
        Outcome {
            code: EXIT_USAGE,
            stderr: format!("error: {message}\n"),
            ..Outcome::default()
        }
    }
}

fn body_text(reply: &Reply) -> String {
    let mut s = String::from_utf8_lossy(&reply.body).into_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

pub(super) async fn execute(t: &Transport, plan: &Plan, output: Output) -> Outcome {
    let mut params = plan.params.clone();
    let mut items: Vec<Value> = Vec::new();
    let mut seen_tokens = HashSet::new();
    for _ in 0..MAX_PAGES {
        let reply = match send(t, &plan.action, &params).await {
            Ok(r) => r,
            Err(e) => return Outcome::usage(e),
        };
        if let Some(f) = reply.failure() {
            return failed(&reply, f, output);
        }
        if output == Output::Json {
            let mut outcome = Outcome {
                stdout: body_text(&reply),
                ..Outcome::default()
            };
            if let Some(token) = next_token(&reply) {
                outcome.stderr = format!("more results: repeat with --next-token {token}\n");
            }
            return outcome;
        }
        let Some(field) = plan.render.list_field() else {
            return rendered(t, plan.render, &reply);
        };
        let Some(page) = reply.json.as_ref().and_then(|j| j.get(field)) else {
            return Outcome::usage(AnswerError::Unexpected {
                target: t.to_string(),
                what: format!("no {field}"),
            });
        };
        items.extend(page.as_array().into_iter().flatten().cloned());
        let next = next_token(&reply);
        match next {
            Some(token) if plan.follow_pages => {
                if !seen_tokens.insert(token.clone()) {
                    return Outcome::usage(AnswerError::RepeatedToken {
                        target: t.to_string(),
                        token,
                    });
                }
                params.0.retain(|(k, _)| k != "NextToken");
                params.set("NextToken", token);
            }
            _ => {
                let mut outcome = Outcome {
                    stdout: plan.render.list(&items),
                    ..Outcome::default()
                };
                if let Some(token) = next {
                    outcome.stderr = format!("more results: repeat with --next-token {token}\n");
                }
                return outcome;
            }
        }
    }
    Outcome::usage(AnswerError::TooManyPages {
        target: t.to_string(),
    })
}

fn next_token(reply: &Reply) -> Option<String> {
    reply
        .json
        .as_ref()
        .and_then(|j| str_field(j, "NextToken"))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn failed(reply: &Reply, failure: ApiFailure, output: Output) -> Outcome {
    // Alibaba's dry-run convention: an error status whose code says "would have succeeded".
    if failure.code == "DryRunOperation" {
        let stdout = match output {
            Output::Json => body_text(reply),
            Output::Table => format!(
                "dry run ok: the request would have succeeded{}\n",
                request_id_suffix(reply)
            ),
        };
        return Outcome {
            code: EXIT_OK,
            stdout,
            stderr: String::new(),
        };
    }
    Outcome {
        code: EXIT_API_ERROR,
        stdout: match output {
            Output::Json => body_text(reply),
            Output::Table => String::new(),
        },
        stderr: format!("{failure}\n"),
    }
}

fn request_id_suffix(reply: &Reply) -> String {
    reply
        .request_id()
        .map(|id| format!(" (RequestId {id})"))
        .unwrap_or_default()
}

/// Table-mode output of a successful non-list answer.
fn rendered(t: &Transport, render: Render, reply: &Reply) -> Outcome {
    let ok_line = format!("ok{}\n", request_id_suffix(reply));
    let unexpected = |what: &str| {
        Outcome::usage(AnswerError::Unexpected {
            target: t.to_string(),
            what: what.to_string(),
        })
    };
    let Some(json) = reply.json.as_ref() else {
        if render == Render::Raw {
            // `call Format=XML …` and the like: not ours to interpret.
            return Outcome {
                stdout: body_text(reply),
                ..Outcome::default()
            };
        }
        return unexpected("not JSON");
    };
    match render {
        Render::Raw => Outcome {
            stdout: format!(
                "{}\n",
                serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())
            ),
            ..Outcome::default()
        },
        Render::Done => Outcome {
            stdout: ok_line,
            ..Outcome::default()
        },
        Render::Created(field) => match str_field(json, field) {
            Some(id) => Outcome {
                code: EXIT_OK,
                stdout: format!("{id}\n"),
                stderr: ok_line,
            },
            None => unexpected(&format!("no {field}")),
        },
        Render::FilterCreated => match str_field(json, "TrafficMirrorFilterId") {
            Some(id) => Outcome {
                code: EXIT_OK,
                stdout: format!("{id}\n{}", created_rules(json, "  ")),
                stderr: ok_line,
            },
            None => unexpected("no TrafficMirrorFilterId"),
        },
        Render::RulesCreated => Outcome {
            code: EXIT_OK,
            stdout: created_rules(json, ""),
            stderr: ok_line,
        },
        Render::Sessions
        | Render::Filters
        | Render::Targets
        | Render::FlowLogs
        | Render::Receivers => unexpected("not a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn error_formatting() {
        let body = json!({
            "RequestId": "REQ-9",
            "Code": "ResourceNotFound.TrafficMirrorSession",
            "Message": "The specified session does not exist.",
            "HostId": "mirror-agent"
        });
        let reply = Reply::new(404, body.to_string().into_bytes());
        let failure = reply.failure().unwrap();
        assert_eq!(
            failure.to_string(),
            "error: ResourceNotFound.TrafficMirrorSession: The specified session does not exist. (RequestId REQ-9)"
        );
        let outcome = failed(&reply, failure.clone(), Output::Json);
        assert_eq!(outcome.code, EXIT_API_ERROR);
        assert_eq!(outcome.stdout, format!("{body}\n"));
        let outcome = failed(&reply, failure, Output::Table);
        assert!(outcome.stdout.is_empty());

        let volc = json!({"ResponseMetadata": {"RequestId": "V-1", "Error": {"Code": "InvalidParameter", "Message": "bad"}}});
        assert_eq!(
            Reply::new(400, volc.to_string().into_bytes())
                .failure()
                .unwrap()
                .to_string(),
            "error: InvalidParameter: bad (RequestId V-1)"
        );
        let html = Reply::new(502, b"<html>Bad Gateway</html>\n".to_vec());
        assert_eq!(
            html.failure().unwrap().to_string(),
            "error: HTTP 502: <html>Bad Gateway</html>"
        );
        let ok = Reply::new(200, br#"{"RequestId":"R"}"#.to_vec());
        assert!(ok.failure().is_none());

        let dry = Reply::new(400, br#"{"RequestId":"D-1","Code":"DryRunOperation","Message":"Request validation has been passed with DryRun flag set."}"#.to_vec());
        let outcome = failed(&dry, dry.failure().unwrap(), Output::Table);
        assert_eq!(outcome.code, EXIT_OK);
        assert_eq!(
            outcome.stdout,
            "dry run ok: the request would have succeeded (RequestId D-1)\n"
        );
    }
}
