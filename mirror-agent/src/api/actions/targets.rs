//! Target actions, and the targets Alibaba's ENI/SLB ids stand for.

use serde_json::{Value, json};

use super::{
    Outcome,
    checks::{check_description, check_name, merge, page, tags, target_not_found},
};
use crate::{
    api::{ApiError, rpc::Params},
    model,
    records::{Origin, TargetRecord, new_id, now_rfc3339},
    service::Service,
    store::{Batch, Kind, Snapshot},
};

pub(super) fn create_target(
    svc: &Service,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let name = check_name("TrafficMirrorTargetName", p.get("TrafficMirrorTargetName"))?;
    let description = check_description("Description", p.get("Description"))?;
    let instance_type = match p
        .str_opt("InstanceType")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("networkinterface") | Some("eni") => "NetworkInterface",
        Some("slb") | Some("elb") | Some("clbinstance") => "SLB",
        Some(other) => {
            return Err(ApiError::bad(
                "InvalidInstanceType.Malformed",
                format!("The specified InstanceType {other:?} is not NetworkInterface or SLB."),
            ));
        }
    };
    let mut destination_ip = p.str_opt("DestinationIp").map(str::to_string);
    let instance_id = p.str_opt("InstanceId");
    let port = p.int("DestinationPort", "InvalidDestinationPort.Malformed")?;
    let port = match port {
        None => model::DEFAULT_VXLAN_PORT,
        Some(n) if (1..=65535).contains(&n) => n as u16,
        Some(_) => {
            return Err(ApiError::bad(
                "InvalidDestinationPort.Malformed",
                "The specified DestinationPort is not in 1-65535.",
            ));
        }
    };
    match (destination_ip.as_deref(), instance_id) {
        (Some(ip), _) => {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                ApiError::bad(
                    "InvalidDestinationIp.Malformed",
                    format!("The specified DestinationIp {ip:?} is not an IP address."),
                )
            })?;
        }
        (None, Some(id)) if alias_address(svc, id).is_some() => {
            destination_ip = alias_address(svc, id).map(|ip| ip.to_string());
        }
        (None, Some(iface)) => {
            if svc.resolve_interface(iface).is_none() {
                return Err(ApiError::bad(
                    "ResourceNotFound.NetworkInterface",
                    format!("The specified resource of {iface} is not found."),
                ));
            }
        }
        (None, None) => return Err(ApiError::missing("DestinationIp")),
    }
    let now = now_rfc3339();
    let t = TargetRecord {
        id: new_id("tmt"),
        name,
        description,
        instance_type: instance_type.to_string(),
        instance_id: instance_id.map(str::to_string),
        destination_ip,
        destination_port: port,
        tags: tags(p)?,
        origin: Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    };
    batch.put_target(&t)?;
    Ok(Outcome::body(json!({"TrafficMirrorTargetId": t.id})))
}

/// An `eni-…`/`lb-…` alias from the config whose value is an address: a VXLAN endpoint that
/// is not on this node (a collector's ENI or load balancer).
fn alias_address(svc: &Service, id: &str) -> Option<std::net::IpAddr> {
    svc.aliases.get(id)?.parse().ok()
}

/// Alibaba names the target of a session by the ENI or SLB itself (`TrafficMirrorTargetId`
/// = `eni-…`/`lb-…`, `TrafficMirrorTargetType`); such an id becomes a target object the first
/// time a session uses it, at the address (or local interface) its alias names.
pub(super) fn target_from_alias(
    svc: &Service,
    p: &Params,
    id: &str,
) -> Result<TargetRecord, ApiError> {
    let kind = p
        .str_opt("TrafficMirrorTargetType")
        .map(str::to_ascii_lowercase);
    let instance_type = match kind.as_deref() {
        Some("slb") | Some("elb") | Some("clbinstance") => "SLB",
        _ if id.starts_with("lb-") => "SLB",
        _ => "NetworkInterface",
    };
    let destination_ip = match alias_address(svc, id) {
        Some(ip) => Some(ip.to_string()),
        None if svc.resolve_interface(id).is_some() => None,
        None => {
            return Err(ApiError::bad(
                "ResourceNotFound.TrafficMirrorTarget",
                format!(
                    "The specified resource of traffic mirror target is not found: {id} (no traffic mirror target has this id, and no alias in the agent's config maps it to a VXLAN endpoint address or an interface)"
                ),
            ));
        }
    };
    let now = now_rfc3339();
    Ok(TargetRecord {
        id: id.to_string(),
        name: id.to_string(),
        description: String::new(),
        instance_type: instance_type.to_string(),
        instance_id: Some(id.to_string()),
        destination_ip,
        destination_port: model::DEFAULT_VXLAN_PORT,
        tags: Vec::new(),
        origin: Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    })
}

pub(super) fn update_target(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorTargetId")?;
    let mut t = snap.target(id).ok_or_else(|| target_not_found(id))?.clone();
    if let Some(n) = p.get("TrafficMirrorTargetName") {
        t.name = check_name("TrafficMirrorTargetName", Some(n))?;
    }
    if let Some(d) = p.get("Description") {
        t.description = check_description("Description", Some(d))?;
    }
    t.updated_at = now_rfc3339();
    batch.put_target(&t)?;
    Ok(Outcome::empty())
}

pub(super) fn delete_target(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorTargetId")?;
    snap.target(id).ok_or_else(|| target_not_found(id))?;
    if let Some(s) = snap.sessions.iter().find(|s| s.target_id == id) {
        return Err(ApiError::bad(
            "DependencyViolation.TrafficMirrorTarget",
            format!(
                "The traffic mirror target is used by traffic mirror session {}.",
                s.id
            ),
        ));
    }
    batch.delete(Kind::Target, id);
    Ok(Outcome::empty())
}

pub(super) fn list_targets(snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
    let ids = p.list("TrafficMirrorTargetIds")?;
    let mut items: Vec<&TargetRecord> = snap
        .targets
        .iter()
        .filter(|t| ids.is_empty() || ids.contains(&t.id))
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let (items, meta) = page(items, p)?;
    let list: Vec<Value> = items.iter().map(|t| t.alibaba()).collect();
    Ok(merge(json!({"TrafficMirrorTargets": list}), meta))
}
