//! REST style as in the Huawei seed: `/v3/{project_id}/vpc/traffic-mirror-…`. Requests are
//! translated into the RPC actions (same validation, store and reconciler); answers use
//! Huawei's object shapes.

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{ApiError, actions::Action, rpc::Params};
use crate::{records::FilterRecord, service::Service, store::Snapshot};

/// (status, JSON body).
pub async fn handle(
    svc: &Service,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let request_id = super::request_id();
    match route(svc, method, path, query, body).await {
        Ok((status, mut v)) => {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("request_id".into(), json!(request_id));
            }
            if status == 204 {
                return (204, String::new());
            }
            (status, v.to_string())
        }
        Err(e) => {
            // The resource named in the path does not exist: REST says 404 (the RPC style,
            // Alibaba's, says 400 for the same code). A missing resource the body refers to
            // stays a 400.
            let status = if Some(e.code.as_str()) == path_resource_code(path) {
                404
            } else {
                e.status
            };
            (
                status,
                json!({"error_code": e.code, "error_msg": e.message, "request_id": request_id})
                    .to_string(),
            )
        }
    }
}

/// The not-found code of the resource a path names by id (`…/collection/{id}[/verb]`).
fn path_resource_code(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.len() < 5 {
        return None;
    }
    match segs[3] {
        "traffic-mirror-sessions" => Some("ResourceNotFound.TrafficMirrorSession"),
        "traffic-mirror-filters" => Some("ResourceNotFound.TrafficMirrorFilter"),
        "traffic-mirror-filter-rules" => Some("ResourceNotFound.TrafficMirrorFilterRule"),
        _ => None,
    }
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        404,
        "APIGW.0101",
        format!("The API does not exist or has not been published: {path}"),
    )
}

async fn route(
    svc: &Service,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // v3 / {project_id} / vpc / collection [/ id [/ verb]]
    let (project, rest) = match segs.as_slice() {
        ["v3", project, "vpc", rest @ ..] if !rest.is_empty() => (*project, rest),
        _ => return Err(not_found_path(path)),
    };
    match (method.as_str(), rest) {
        ("GET", ["traffic-mirror-sessions"]) => list_sessions(svc, project, query),
        ("GET", ["traffic-mirror-sessions", id]) => show_session(svc, project, id),
        ("POST", ["traffic-mirror-sessions"]) => {
            let o = object(body, "traffic_mirror_session")?;
            let p = session_params(&o, None)?;
            let a = run(svc, Action::CreateTrafficMirrorSession, p).await?;
            let id = a["TrafficMirrorSessionId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (_, v) = show_session(svc, project, &id)?;
            Ok((201, v))
        }
        ("PUT", ["traffic-mirror-sessions", id]) => {
            let o = object(body, "traffic_mirror_session")?;
            let p = session_params(&o, Some(id))?;
            run(svc, Action::UpdateTrafficMirrorSessionAttribute, p).await?;
            show_session(svc, project, id)
        }
        ("DELETE", ["traffic-mirror-sessions", id]) => {
            run(
                svc,
                Action::DeleteTrafficMirrorSession,
                params([("TrafficMirrorSessionId", id.to_string())]),
            )
            .await?;
            Ok((204, json!({})))
        }
        (
            "PUT" | "POST",
            [
                "traffic-mirror-sessions",
                id,
                verb @ ("add-sources" | "remove-sources"),
            ],
        ) => {
            let o = object(body, "traffic_mirror_session")?;
            let sources = string_list(&o, "traffic_mirror_sources")?;
            let mut pairs = vec![("TrafficMirrorSessionId".to_string(), id.to_string())];
            for (i, s) in sources.iter().enumerate() {
                pairs.push((format!("TrafficMirrorSourceIds.{}", i + 1), s.clone()));
            }
            let action = if *verb == "add-sources" {
                Action::AddSourcesToTrafficMirrorSession
            } else {
                Action::RemoveSourcesFromTrafficMirrorSession
            };
            run(svc, action, Params::from_pairs(pairs)).await?;
            show_session(svc, project, id)
        }
        ("GET", ["traffic-mirror-filters"]) => {
            let snap = svc.snapshot()?;
            let list: Vec<Value> = snap.filters.iter().map(|f| f.huawei(project)).collect();
            Ok((200, json!({"traffic_mirror_filters": list})))
        }
        ("GET", ["traffic-mirror-filters", id]) => show_filter(svc, project, id),
        ("POST", ["traffic-mirror-filters"]) => {
            let o = object(body, "traffic_mirror_filter")?;
            let mut pairs = Vec::new();
            opt_str(&o, "name", "TrafficMirrorFilterName", &mut pairs)?;
            opt_str(
                &o,
                "description",
                "TrafficMirrorFilterDescription",
                &mut pairs,
            )?;
            let a = run(
                svc,
                Action::CreateTrafficMirrorFilter,
                Params::from_pairs(pairs),
            )
            .await?;
            let id = a["TrafficMirrorFilterId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (_, v) = show_filter(svc, project, &id)?;
            Ok((201, v))
        }
        ("PUT", ["traffic-mirror-filters", id]) => {
            let o = object(body, "traffic_mirror_filter")?;
            let mut pairs = vec![("TrafficMirrorFilterId".to_string(), id.to_string())];
            opt_str(&o, "name", "TrafficMirrorFilterName", &mut pairs)?;
            opt_str(
                &o,
                "description",
                "TrafficMirrorFilterDescription",
                &mut pairs,
            )?;
            run(
                svc,
                Action::UpdateTrafficMirrorFilterAttribute,
                Params::from_pairs(pairs),
            )
            .await?;
            show_filter(svc, project, id)
        }
        ("DELETE", ["traffic-mirror-filters", id]) => {
            run(
                svc,
                Action::DeleteTrafficMirrorFilter,
                params([("TrafficMirrorFilterId", id.to_string())]),
            )
            .await?;
            Ok((204, json!({})))
        }
        ("GET", ["traffic-mirror-filter-rules"]) => {
            let snap = svc.snapshot()?;
            let list: Vec<Value> = snap
                .filters
                .iter()
                .flat_map(|f| f.rules.iter().map(|r| r.huawei(f, project)))
                .collect();
            Ok((200, json!({"traffic_mirror_filter_rules": list})))
        }
        ("GET", ["traffic-mirror-filter-rules", id]) => show_rule(svc, project, id),
        ("POST", ["traffic-mirror-filter-rules"]) => {
            let o = object(body, "traffic_mirror_filter_rule")?;
            let filter_id = req_str(&o, "traffic_mirror_filter_id")?;
            let direction = req_str(&o, "direction")?;
            let list = match direction.as_str() {
                "ingress" => "IngressRules",
                "egress" => "EgressRules",
                other => {
                    return Err(ApiError::bad(
                        "InvalidTrafficDirection.Malformed",
                        format!("direction {other:?} is not ingress or egress"),
                    ));
                }
            };
            let mut pairs = vec![("TrafficMirrorFilterId".to_string(), filter_id)];
            rule_pairs(&o, &format!("{list}.1."), &mut pairs)?;
            let a = run(
                svc,
                Action::CreateTrafficMirrorFilterRules,
                Params::from_pairs(pairs),
            )
            .await?;
            let rid = a[list][0]["InstanceId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (_, v) = show_rule(svc, project, &rid)?;
            Ok((201, v))
        }
        ("PUT", ["traffic-mirror-filter-rules", id]) => {
            let o = object(body, "traffic_mirror_filter_rule")?;
            let mut pairs = vec![("TrafficMirrorFilterRuleId".to_string(), id.to_string())];
            rule_pairs(&o, "", &mut pairs)?;
            // UpdateTrafficMirrorFilterRuleAttribute names the action RuleAction.
            for (k, _) in pairs.iter_mut() {
                if k == "Action" {
                    *k = "RuleAction".to_string();
                }
            }
            run(
                svc,
                Action::UpdateTrafficMirrorFilterRuleAttribute,
                Params::from_pairs(pairs),
            )
            .await?;
            show_rule(svc, project, id)
        }
        ("DELETE", ["traffic-mirror-filter-rules", id]) => {
            let snap = svc.snapshot()?;
            let f = filter_of_rule(&snap, id)?;
            run(
                svc,
                Action::DeleteTrafficMirrorFilterRules,
                params([
                    ("TrafficMirrorFilterId", f.id.clone()),
                    ("TrafficMirrorFilterRuleIds.1", id.to_string()),
                ]),
            )
            .await?;
            Ok((204, json!({})))
        }
        _ => Err(not_found_path(path)),
    }
}

async fn run(svc: &Service, action: Action, p: Params) -> Result<Value, ApiError> {
    super::call(svc, action.name(), &p)
        .await
        .map(|a| a.body)
        .map_err(|(_, e)| e)
}

fn params<const N: usize>(pairs: [(&str, String); N]) -> Params {
    Params::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_string(), v)))
}

fn object(body: &[u8], key: &str) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            "InvalidParameter",
            format!("The request body is not JSON: {e}"),
        )
    })?;
    match v.get(key) {
        Some(Value::Object(o)) => Ok(o.clone()),
        _ => Err(ApiError::bad(
            "InvalidParameter",
            format!("The request body must be {{\"{key}\": {{…}}}}."),
        )),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn opt_str(
    o: &Map<String, Value>,
    key: &str,
    param: &str,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => {
            let s =
                scalar(v).ok_or_else(|| ApiError::invalid(key, "expected a string or number"))?;
            pairs.push((param.to_string(), s));
            Ok(())
        }
    }
}

fn req_str(o: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    o.get(key)
        .and_then(scalar)
        .ok_or_else(|| ApiError::missing(key))
}

fn string_list(o: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    match o.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| scalar(v).ok_or_else(|| ApiError::invalid(key, "expected strings")))
            .collect(),
        Some(_) => Err(ApiError::invalid(key, "expected an array")),
        None => Err(ApiError::missing(key)),
    }
}

fn session_params(o: &Map<String, Value>, id: Option<&str>) -> Result<Params, ApiError> {
    let mut pairs = Vec::new();
    if let Some(id) = id {
        pairs.push(("TrafficMirrorSessionId".to_string(), id.to_string()));
    }
    for (key, param) in [
        ("name", "TrafficMirrorSessionName"),
        ("description", "TrafficMirrorSessionDescription"),
        ("traffic_mirror_filter_id", "TrafficMirrorFilterId"),
        ("traffic_mirror_target_id", "TrafficMirrorTargetId"),
        ("virtual_network_id", "VirtualNetworkId"),
        ("packet_length", "PacketLength"),
        ("max_packets_per_second", "MaxPacketsPerSecond"),
        ("max_bits_per_second", "MaxBitsPerSecond"),
        ("sample_one_in", "SampleOneIn"),
        ("sample_mode", "SampleMode"),
        ("priority", "Priority"),
        ("enabled", "Enabled"),
    ] {
        opt_str(o, key, param, &mut pairs)?;
    }
    // Sources are set on create; updates change them through add-/remove-sources.
    if id.is_none() && o.contains_key("traffic_mirror_sources") {
        for (i, s) in string_list(o, "traffic_mirror_sources")?.iter().enumerate() {
            pairs.push((format!("TrafficMirrorSourceIds.{}", i + 1), s.clone()));
        }
    }
    Ok(Params::from_pairs(pairs))
}

fn rule_pairs(
    o: &Map<String, Value>,
    prefix: &str,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), ApiError> {
    for (key, param) in [
        ("priority", "Priority"),
        ("action", "Action"),
        ("protocol", "Protocol"),
        ("ethertype", "IpVersion"),
        ("source_cidr_block", "SourceCidrBlock"),
        ("destination_cidr_block", "DestinationCidrBlock"),
        ("source_port_range", "SourcePortRange"),
        ("destination_port_range", "DestinationPortRange"),
    ] {
        opt_str(o, key, &format!("{prefix}{param}"), pairs)?;
    }
    // Huawei says "reject" and lower-case protocols; the model takes both.
    Ok(())
}

fn list_sessions(
    svc: &Service,
    project: &str,
    _query: Option<&str>,
) -> Result<(u16, Value), ApiError> {
    let snap = svc.snapshot()?;
    let mut sessions: Vec<_> = snap.sessions.iter().collect();
    sessions.sort_by_key(|s| s.priority);
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| s.huawei(project, &huawei_target_type(&snap, &s.target_id)))
        .collect();
    Ok((200, json!({"traffic_mirror_sessions": list})))
}

fn huawei_target_type(snap: &Snapshot, target_id: &str) -> String {
    snap.target(target_id)
        .map_or("eni", |t| t.huawei_type())
        .to_string()
}

fn show_session(svc: &Service, project: &str, id: &str) -> Result<(u16, Value), ApiError> {
    let snap = svc.snapshot()?;
    let s = snap.session(id).ok_or_else(|| {
        ApiError::new(
            404,
            "ResourceNotFound.TrafficMirrorSession",
            format!("The specified resource of traffic mirror session is not found: {id}"),
        )
    })?;
    Ok((
        200,
        json!({"traffic_mirror_session": s.huawei(project, &huawei_target_type(&snap, &s.target_id))}),
    ))
}

fn show_filter(svc: &Service, project: &str, id: &str) -> Result<(u16, Value), ApiError> {
    let snap = svc.snapshot()?;
    let f = snap.filter(id).ok_or_else(|| {
        ApiError::new(
            404,
            "ResourceNotFound.TrafficMirrorFilter",
            format!("The specified resource of traffic mirror filter is not found: {id}"),
        )
    })?;
    Ok((200, json!({"traffic_mirror_filter": f.huawei(project)})))
}

fn filter_of_rule<'a>(snap: &'a Snapshot, id: &str) -> Result<&'a FilterRecord, ApiError> {
    snap.filters
        .iter()
        .find(|f| f.rules.iter().any(|r| r.id == id))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "ResourceNotFound.TrafficMirrorFilterRule",
                format!("The specified resource of traffic mirror filter rule is not found: {id}"),
            )
        })
}

fn show_rule(svc: &Service, project: &str, id: &str) -> Result<(u16, Value), ApiError> {
    let snap = svc.snapshot()?;
    let f = filter_of_rule(&snap, id)?;
    let r = f.rules.iter().find(|r| r.id == id).ok_or_else(|| {
        ApiError::new(
            404,
            "ResourceNotFound.TrafficMirrorFilterRule",
            format!("The specified resource of traffic mirror filter rule is not found: {id}"),
        )
    })?;
    Ok((
        200,
        json!({"traffic_mirror_filter_rule": r.huawei(f, project)}),
    ))
}
