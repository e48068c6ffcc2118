//! How a request reaches the agent: the Unix socket or a TCP endpoint chosen from flags and
//! environment, the request with its token or signature, and the HTTP exchange.

use std::{ffi::OsString, fmt, path::PathBuf, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;

use super::{ClientArgs, error::UsageError, params::Params, reply::Reply};

pub(super) const ENV_SOCKET: &str = "MIRROR_AGENT_API_SOCKET";
pub(super) const ENV_ENDPOINT: &str = "MIRROR_AGENT_API_ENDPOINT";
pub(super) const ENV_TOKEN: &str = "MIRROR_AGENT_API_TOKEN";
pub(super) const ENV_ACCESS_KEY_ID: &str = "MIRROR_AGENT_ACCESS_KEY_ID";
/// Only from the environment: a command line is visible to every user.
pub(super) const ENV_ACCESS_KEY_SECRET: &str = "MIRROR_AGENT_ACCESS_KEY_SECRET";

/// Generous because a mutation returns only once the data path has been reconciled; the
/// limit only exists so a wedged agent cannot hang scripts forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the agent is reached, after flags and environment are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transport {
    Unix(PathBuf),
    Tcp {
        /// `host:port`, as given (the port defaults to 80).
        authority: String,
        token: Option<String>,
        /// Signs every request when set.
        key: Option<AccessKey>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccessKey {
    id: String,
    secret: crate::api::auth::Secret,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Unix(path) => write!(f, "socket {}", path.display()),
            Transport::Tcp { authority, .. } => write!(f, "endpoint http://{authority}"),
        }
    }
}

/// Flags win over the environment; an endpoint (flag, else environment) wins over a socket
/// from the environment but not over a `--socket` flag.
pub(super) fn transport(
    args: &ClientArgs,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Transport, UsageError> {
    let env_string = |name: &'static str| -> Result<Option<String>, UsageError> {
        env(name)
            .map(|v| v.into_string().map_err(|_| UsageError::NotUtf8 { name }))
            .transpose()
    };
    let endpoint = match (&args.endpoint, &args.socket) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(_)) => None,
        (None, None) => env_string(ENV_ENDPOINT)?,
    };
    if let Some(endpoint) = endpoint {
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => env_string(ENV_TOKEN)?,
        };
        let id = match &args.access_key_id {
            Some(id) => Some(id.clone()),
            None => env_string(ENV_ACCESS_KEY_ID)?,
        };
        let key = match id {
            Some(id) => {
                let secret = env_string(ENV_ACCESS_KEY_SECRET)?
                    .ok_or_else(|| UsageError::MissingSecret { id: id.clone() })?;
                Some(AccessKey {
                    id,
                    secret: crate::api::auth::Secret::new(secret),
                })
            }
            None => None,
        };
        return Ok(Transport::Tcp {
            authority: parse_endpoint(&endpoint)?,
            token,
            key,
        });
    }
    let socket = args
        .socket
        .clone()
        .or_else(|| env(ENV_SOCKET).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_API_SOCKET));
    Ok(Transport::Unix(socket))
}

/// `http://host[:port][/]` to `host:port`. Only plain HTTP: TLS belongs in a proxy in front
/// of the agent, and the agent itself serves none.
fn parse_endpoint(endpoint: &str) -> Result<String, UsageError> {
    let bad = |why: &'static str| UsageError::Endpoint {
        endpoint: endpoint.to_string(),
        why,
    };
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad("only http is supported"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("paths, queries and user names are not supported"));
    }
    let port = if let Some(bracketed) = authority.strip_prefix('[') {
        let (_, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after ']'"))?,
            ),
        }
    } else {
        match authority.split_once(':') {
            Some(("", _)) => return Err(bad("no host")),
            Some((_, port)) => Some(port),
            None => None,
        }
    };
    match port {
        Some(p) => {
            p.parse::<u16>().map_err(|_| bad("bad port"))?;
            Ok(authority.to_string())
        }
        None => Ok(format!("{authority}:80")),
    }
}

/// Failures before the API could answer: exit code 2.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransportError {
    #[error("cannot connect to the agent's {target}: {source}{hint}")]
    Connect {
        target: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("talking to the agent's {target}: {detail}")]
    Exchange { target: String, detail: String },
    #[error("the agent's {target} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { target: String },
    #[error("the {name} header cannot carry the access key")]
    SignatureHeader { name: String },
    #[error("the token has characters an HTTP header cannot carry")]
    TokenHeader,
    #[error("building the request: {0}")]
    Build(#[source] hyper::http::Error),
    #[error("formatting the time: {0}")]
    Time(#[source] time::error::Format),
}

fn connect_error(t: &Transport, source: std::io::Error) -> TransportError {
    let hint = match (t, source.kind()) {
        (Transport::Unix(_), std::io::ErrorKind::NotFound) => {
            " (is the agent running? --socket or MIRROR_AGENT_API_SOCKET choose another socket)"
        }
        (Transport::Unix(_), std::io::ErrorKind::PermissionDenied) => {
            " (the socket is mode 0600: run as the agent's user, usually root)"
        }
        (_, std::io::ErrorKind::ConnectionRefused) => " (is the agent running?)",
        _ => "",
    };
    TransportError::Connect {
        target: t.to_string(),
        source,
        hint,
    }
}

pub(super) fn form(params: &Params) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.0.iter())
        .finish()
}

fn request_uri(action: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .finish();
    format!("/?{query}")
}

fn build_request(
    t: &Transport,
    action: &str,
    params: &Params,
) -> Result<Request<Full<Bytes>>, TransportError> {
    let (host, token, key) = match t {
        Transport::Unix(_) => ("mirror-agent", None, None),
        // The endpoint's own authority, so a reverse proxy in front of the agent can route.
        Transport::Tcp {
            authority,
            token,
            key,
        } => (authority.as_str(), token.as_deref(), key.as_ref()),
    };
    let body = form(params);
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(request_uri(action))
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(key) = key {
        for (name, value) in signed_headers(host, action, &body, key)? {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| TransportError::SignatureHeader { name: name.clone() })?;
            value.set_sensitive(name == "authorization");
            builder = builder.header(name, value);
        }
    }
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| TransportError::TokenHeader)?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(TransportError::Build)
}

/// The headers of Alibaba's ACS3-HMAC-SHA256 signature, as its Tea SDK sends them: the
/// action, a fresh nonce, the time, the body's hash and the Authorization. No
/// `x-acs-version`: naming Alibaba's VPC version would ask for its nested answer shapes,
/// and the CLI reads the agent's own.
fn signed_headers(
    host: &str,
    action: &str,
    body: &str,
    key: &AccessKey,
) -> Result<Vec<(String, String)>, TransportError> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .map_err(TransportError::Time)?;
    let base = [
        ("host", host.to_string()),
        ("x-acs-action", action.to_string()),
        ("x-acs-date", date),
        (
            "x-acs-signature-nonce",
            uuid::Uuid::new_v4().simple().to_string(),
        ),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
    ];
    let query = vec![("Action".to_string(), action.to_string())];
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| *k != "host" && *k != "content-type")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    out.extend(crate::api::auth::acs3::sign_request(
        &crate::api::auth::acs3::Signing {
            method: "POST",
            query: &query,
            headers: &base,
            body: body.as_bytes(),
            access_key_id: &key.id,
            secret: key.secret.expose(),
        },
    ));
    Ok(out)
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Reply, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // The connection's own error, if any, also fails send_request, which reports it.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply::new(status, body.to_vec()))
}

pub(super) async fn send(
    t: &Transport,
    action: &str,
    params: &Params,
) -> Result<Reply, TransportError> {
    let request = build_request(t, action, params)?;
    let target = t.to_string();
    let attempt = async {
        let result = match t {
            Transport::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| connect_error(t, e))?;
                exchange(TokioIo::new(stream), request).await
            }
            Transport::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| connect_error(t, e))?;
                exchange(TokioIo::new(stream), request).await
            }
        };
        result.map_err(|e| TransportError::Exchange {
            target: target.clone(),
            detail: e.to_string(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| TransportError::Timeout {
            target: target.clone(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::{TestCli, no_env, parse};
    use clap::Parser as _;
    #[test]
    fn transport_resolution() {
        let cli = parse(&["session", "list"]);
        assert_eq!(
            transport(&cli.args, &no_env).unwrap(),
            Transport::Unix(PathBuf::from("/run/mirror-agent/api.sock"))
        );
        let env = |name: &str| match name {
            ENV_SOCKET => Some(OsString::from("/tmp/env.sock")),
            ENV_ENDPOINT => Some(OsString::from("http://127.0.0.1:8080/")),
            ENV_TOKEN => Some(OsString::from("secret")),
            _ => None,
        };
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Tcp {
                authority: "127.0.0.1:8080".into(),
                token: Some("secret".into()),
                key: None,
            }
        );
        // A --socket flag beats an endpoint from the environment.
        let cli = parse(&["--socket", "/tmp/x.sock", "session", "list"]);
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Unix(PathBuf::from("/tmp/x.sock"))
        );
        let cli = parse(&[
            "session",
            "list",
            "--endpoint",
            "http://[::1]",
            "--token",
            "t",
        ]);
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Tcp {
                authority: "[::1]:80".into(),
                token: Some("t".into()),
                key: None,
            }
        );
        assert!(
            TestCli::try_parse_from([
                "m",
                "--socket",
                "a",
                "--endpoint",
                "http://h:1",
                "session",
                "list"
            ])
            .is_err()
        );
        for bad in [
            "https://h:1",
            "h:1",
            "http://",
            "http://h:port",
            "http://h:1/api",
            "http://u@h:1",
            "http://[::1",
            "http://:80",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_endpoint("HTTP://agent.local").unwrap(),
            "agent.local:80"
        );
    }

    #[test]
    fn token_header_only_over_tcp() {
        let params = Params::default();
        let tcp = Transport::Tcp {
            authority: "127.0.0.1:8080".into(),
            token: Some("s3cret".into()),
            key: None,
        };
        let req = build_request(&tcp, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.uri(), "/?Action=ListTrafficMirrorTargets");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer s3cret");
        let unix = Transport::Unix("/x".into());
        let req = build_request(&unix, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.headers()[HOST], "mirror-agent");
        assert!(req.headers().get(AUTHORIZATION).is_none());
        let bad = Transport::Tcp {
            authority: "h:1".into(),
            token: Some("a\nb".into()),
            key: None,
        };
        assert!(build_request(&bad, "X", &params).is_err());
    }

    #[test]
    fn access_key_signs_like_alibabas_sdk() {
        use crate::api::auth::{Authenticator, DEFAULT_WINDOW, Request as AuthRequest, Secret};
        let env = |name: &str| match name {
            ENV_ACCESS_KEY_SECRET => Some(OsString::from("cli-secret")),
            _ => None,
        };
        let cli = parse(&[
            "--endpoint",
            "http://127.0.0.1:8080",
            "--access-key-id",
            "cli-key",
            "target",
            "list",
        ]);
        let t = transport(&cli.args, &env).unwrap();
        assert!(!format!("{t:?}").contains("cli-secret"), "{t:?}");
        let mut params = Params::default();
        params.0.push(("MaxResults".into(), "5".into()));
        let req = build_request(&t, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.headers()["x-acs-action"], "ListTrafficMirrorTargets");
        let auth = Authenticator::new(
            [("cli-key".to_string(), Secret::new("cli-secret"))],
            None,
            DEFAULT_WINDOW,
        );
        // The body is form(params), which the signature covers.
        assert_eq!(form(&params), "MaxResults=5");
        let (parts, _) = req.into_parts();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let r = AuthRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body: b"MaxResults=5",
        };
        assert_eq!(auth.check(&r, now), Ok(()));
        // Without the secret in the environment the CLI says where it belongs.
        let none = |_: &str| None;
        let e = transport(&cli.args, &none).unwrap_err();
        assert!(e.to_string().contains(ENV_ACCESS_KEY_SECRET), "{e}");
    }
}
