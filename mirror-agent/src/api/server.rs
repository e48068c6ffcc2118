//! HTTP transport: one handler for both styles, on a Unix socket (mode 0600) and optionally
//! on TCP, where a bearer token is required unless the address is loopback.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use tracing::{info, warn};

use super::{
    ApiError,
    auth::{AuthError, Authenticator, Cloud, Request as AuthRequest},
    render, rest,
    rpc::Params,
};
use crate::service::Service;

#[derive(Clone)]
struct Ctx {
    svc: Arc<Service>,
    /// What this listener requires: access-key signatures and/or a bearer token. `None` on
    /// the Unix socket, whose file mode is the control.
    auth: Option<Arc<Authenticator>>,
}

pub fn router(svc: Arc<Service>, auth: Option<Arc<Authenticator>>) -> Router {
    Router::new().fallback(handle).with_state(Ctx { svc, auth })
}

fn respond(status: u16, content_type: &'static str, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An error before the request's envelope is known: Alibaba's JSON, the default.
fn plain_error(ctx: &Ctx, err: &ApiError) -> Response {
    let r = render::render_err(
        &render::Envelope::Alibaba { xml: false },
        "",
        &super::request_id(),
        &ctx.svc.region,
        err,
    );
    respond(r.status, r.content_type, r.body)
}

/// A refused request, answered as the cloud it speaks would answer it.
fn auth_error(ctx: &Ctx, req: &AuthRequest<'_>, e: &AuthError) -> Response {
    let cloud = req.cloud();
    let err = e.to_api_error(cloud);
    match cloud {
        Cloud::Huawei => {
            let body = serde_json::json!({
                "error_code": err.code,
                "error_msg": err.message,
                "request_id": super::request_id().to_lowercase().replace('-', ""),
            });
            respond(err.status, "application/json", body.to_string())
        }
        Cloud::Volcengine => {
            let params =
                Params::parse(req.query, req.header("content-type"), req.body).unwrap_or_default();
            let action = params.get("Action").unwrap_or_default().to_string();
            let env = render::envelope(&params);
            let env = match env {
                render::Envelope::Volcengine { .. } => env,
                _ => render::Envelope::Volcengine {
                    version: "2020-04-01".into(),
                },
            };
            let r = render::render_err(&env, &action, &super::request_id(), &ctx.svc.region, &err);
            respond(r.status, r.content_type, r.body)
        }
        Cloud::Alibaba => plain_error(ctx, &err),
    }
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(auth) = &ctx.auth {
        let req = AuthRequest {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: &headers,
            body: &body,
        };
        if let Err(e) = auth.check(&req, crate::records::now_unix()) {
            // The key id may be logged; a secret is never part of the error.
            info!(error = %e, path = uri.path(), "API request refused");
            ctx.svc
                .metrics
                .observe_api("", "auth", std::time::Duration::ZERO);
            return auth_error(&ctx, &req, &e);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let path = uri.path();
    if path.starts_with("/v3/") {
        let (status, body) = rest::handle(&ctx.svc, &method, path, uri.query(), &body).await;
        return respond(status, "application/json", body);
    }
    if path != "/" && !path.is_empty() {
        let err = ApiError::new(404, "NotFound", format!("No API at {path}."));
        return plain_error(&ctx, &err);
    }
    if method != Method::GET && method != Method::POST {
        let err = ApiError::new(405, "MethodNotAllowed", "Use GET or POST.");
        return plain_error(&ctx, &err);
    }
    let params = match Params::parse(uri.query(), content_type, &body) {
        Ok(p) => p,
        Err(e) => {
            return plain_error(&ctx, &e);
        }
    };
    let mut params = params;
    // The Tea SDK (ACS3) names the action and version in headers, not parameters.
    for (header, key) in [("x-acs-action", "Action"), ("x-acs-version", "Version")] {
        if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
            params.set_default(key, v);
        }
    }
    let env = render::envelope(&params);
    let action = params.get("Action").unwrap_or_default().to_string();
    let (canonical, reshape) = match super::dialect::translate(&ctx.svc, &env, &action, &mut params)
    {
        Ok(t) => t,
        Err(e) => {
            let e = match env {
                render::Envelope::Volcengine { .. } => super::volcengine_error(e),
                _ => e,
            };
            let r = render::render_err(&env, &action, &super::request_id(), &ctx.svc.region, &e);
            return respond(r.status, r.content_type, r.body);
        }
    };
    let started = std::time::Instant::now();
    let rendered = if action.is_empty() {
        render::render_err(
            &env,
            "",
            &super::request_id(),
            &ctx.svc.region,
            &ApiError::missing("Action"),
        )
    } else {
        match super::call(&ctx.svc, &canonical, &params).await {
            Ok(a) => {
                let body = super::dialect::reshape(reshape, a.body);
                render::render_ok(&env, &action, &a.request_id, &ctx.svc.region, &body)
            }
            Err((rid, e)) => {
                let e = match env {
                    render::Envelope::Volcengine { .. } => super::volcengine_error(e),
                    _ => e,
                };
                if e.status >= 500 {
                    warn!(action, "internal error: {e}");
                }
                render::render_err(&env, &action, &rid, &ctx.svc.region, &e)
            }
        }
    };
    let code = if rendered.status == 200 {
        "200".to_string()
    } else {
        // The error code is in the body; the status is enough to bound the label.
        rendered.status.to_string()
    };
    ctx.svc
        .metrics
        .observe_api(&action, &code, started.elapsed());
    respond(rendered.status, rendered.content_type, rendered.body)
}

/// `/metrics`, `/healthz` and `/readyz` on the metrics listener. Both probes name the
/// data path's faults in their body; only those that stop mirroring make `/readyz` fail.
pub fn metrics_router(
    metrics: Arc<crate::metrics::Metrics>,
    health: Arc<crate::metrics::Health>,
) -> Router {
    use axum::routing::get;
    let readyz = Arc::clone(&health);
    Router::new()
        .route(
            "/metrics",
            get({
                let metrics = Arc::clone(&metrics);
                move || {
                    let body = metrics.render();
                    async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let body = format!("ok\n{}", health.faults_text());
                async move { body }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let (ready, why) = readyz.readiness();
                async move {
                    if ready {
                        (StatusCode::OK, why)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, why)
                    }
                }
            }),
        )
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API listener {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "--api-listen {0} is not loopback: set api_credentials (access keys the clouds' SDKs sign with) or api_token (or MIRROR_AGENT_API_TOKEN) first"
    )]
    TokenRequired(SocketAddr),
}

/// Binds the socket with mode 0600 from the start (the umask covers the window between bind
/// and chmod), replacing a stale socket of a previous run.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = tokio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    info!(socket = %path.display(), "API listening");
    Ok(listener)
}

pub async fn bind_tcp(
    addr: SocketAddr,
    auth: &Authenticator,
) -> Result<tokio::net::TcpListener, ServeError> {
    if !auth.is_enforcing() && !addr.ip().is_loopback() {
        return Err(ServeError::TokenRequired(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Tcp { addr, source })?;
    info!(%addr, ?auth, "API listening on TCP");
    Ok(listener)
}
