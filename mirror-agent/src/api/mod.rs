//! The clouds' API on the node: RPC style (Alibaba, Volcengine) and REST style (Huawei).
//! See docs/api.md.

pub mod actions;
pub mod auth;
pub mod dialect;
pub mod error;
pub mod flowlogs;
pub mod lenient;
pub mod receivers;
pub mod render;
pub mod rest;
pub mod rpc;
pub mod server;

pub use error::ApiError;
use serde_json::Value;

use crate::{
    records::{FlowLogState, SessionState, TokenRecord, now_unix},
    service::Service,
};
use rpc::Params;

/// A request id in the clouds' style (upper-case UUID).
pub fn request_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

/// How long a ClientToken's answer is kept for replay.
const TOKEN_RETENTION_SECS: i64 = 24 * 3600;

/// The answer to a successful request: the action's fields and the request id to report
/// (the first request's, when a ClientToken replays it).
pub struct Answer {
    pub request_id: String,
    pub body: Value,
}

/// Runs an RPC action: ClientToken idempotency, DryRun, the change and its commit, and a
/// wake-up for the reconciler.
pub async fn call(svc: &Service, action: &str, p: &Params) -> Result<Answer, (String, ApiError)> {
    let request_id = request_id();
    match call_inner(svc, action, p, &request_id).await {
        Ok(a) => Ok(a),
        Err(e) => Err((request_id, e)),
    }
}

async fn call_inner(
    svc: &Service,
    action: &str,
    p: &Params,
    request_id: &str,
) -> Result<Answer, ApiError> {
    if !actions::is_known(action) {
        return Err(actions::unknown_action(action));
    }
    if actions::is_reading(action) {
        return Ok(Answer {
            request_id: request_id.to_string(),
            body: actions::read(svc, action, p)?,
        });
    }
    let token = rpc::client_token(p)?;
    let dry_run = p.bool("DryRun")?.unwrap_or(false);
    let guard = svc.write_lock.lock().await;
    let token_key = token.as_ref().map(|t| format!("{action}/{t}"));
    if let Some(key) = &token_key
        && let Some(first) = svc
            .store
            .token(key)
            .map_err(|e| ApiError::internal(e.to_string()))?
    {
        if first.fingerprint != p.fingerprint() {
            return Err(ApiError::bad(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
            ));
        }
        if in_progress(svc, &first)? {
            return Err(ApiError::new(
                412,
                "IdempotentProcessing",
                "The request uses the same client token as a previous one that is still in process.",
            ));
        }
        return Ok(Answer {
            request_id: first.request_id,
            body: first.body,
        });
    }
    let (outcome, mut batch) = actions::mutate(svc, action, p, dry_run).await?;
    if let Some(key) = &token_key {
        batch
            .put_token(
                key,
                &TokenRecord {
                    fingerprint: p.fingerprint(),
                    request_id: request_id.to_string(),
                    status: 200,
                    body: outcome.body.clone(),
                    session: outcome.session.clone(),
                    created_unix: now_unix(),
                },
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    svc.store
        .commit(batch)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    drop(guard);
    if token_key.is_some() {
        // Old answers go in the background of a request that just wrote one.
        let _ = svc.store.prune_tokens(now_unix(), TOKEN_RETENTION_SECS);
    }
    svc.trigger();
    Ok(Answer {
        request_id: request_id.to_string(),
        body: outcome.body,
    })
}

/// The first request with this token started a session change that has not settled yet.
fn in_progress(svc: &Service, first: &TokenRecord) -> Result<bool, ApiError> {
    let Some((id, generation)) = &first.session else {
        return Ok(false);
    };
    let snap = svc.snapshot()?;
    if let Some(r) = snap.receiver(id) {
        return Ok(r.generation == *generation && r.state != SessionState::Created);
    }
    // Flow logs (`fl-…`) settle to Active or Inactive; sessions to Created.
    if let Some(f) = snap.flow_log(id) {
        return Ok(f.generation == *generation
            && matches!(f.state, FlowLogState::Creating | FlowLogState::Deleting));
    }
    Ok(snap
        .session(id)
        .is_some_and(|s| s.generation == *generation && s.state != SessionState::Created))
}

/// Volcengine spells some errors differently from Alibaba (seed 001 against seeds 000/002).
pub fn volcengine_error(e: ApiError) -> ApiError {
    let map = |status, code: &str| ApiError::new(status, code, e.message.clone());
    match e.code.as_str() {
        "ResourceNotFound.TrafficMirrorSession" => map(404, "InvalidTrafficMirrorSession.NotFound"),
        "ResourceNotFound.TrafficMirrorFilter" => map(404, "InvalidTrafficMirrorFilter.NotFound"),
        "ResourceNotFound.TrafficMirrorTarget" => map(404, "InvalidTrafficMirrorTarget.NotFound"),
        "ResourceNotFound.NetworkInterface" => map(404, "InvalidNetworkInterfaceId.NotFound"),
        "QuotaExceeded.NetworkInterfaceRelatedSession" => {
            map(400, "QuotaExceeded.TrafficMirrorSourceSession")
        }
        "OperationDenied.DuplicateRole" => map(400, "InvalidParameter.NetworkInterfaceId"),
        _ => e,
    }
}
