//! Receiver actions (this node as a mirror target, SPEC section 1): CreateTrafficMirrorReceiver,
//! DeleteTrafficMirrorReceiver, ListTrafficMirrorReceivers. A receiver names the interface the
//! mirror traffic arrives on, its UDP port, and the VNIs whose inner frames go to capture
//! interfaces (`mrx<vni>`); see docs/api.md.

use serde_json::{Value, json};

use super::{
    ApiError,
    actions::{Action, Outcome, check_description, check_name, merge, page, tags, unknown_action},
    rpc::Params,
};
use crate::{
    datapath::receive::{ReceiverStatus, capture_name, is_capture_name},
    model::DEFAULT_VXLAN_PORT,
    records::{Origin, ReceiverRecord, SessionState, new_id, now_rfc3339},
    service::Service,
    store::{Batch, Snapshot},
};

/// VNIs one receiver serves at most (each is a veth pair).
pub const VNI_QUOTA: usize = 64;

pub fn mutate(
    svc: &Service,
    snap: &Snapshot,
    action: Action,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    match action {
        Action::CreateTrafficMirrorReceiver => create(svc, snap, p, batch),
        Action::DeleteTrafficMirrorReceiver => delete(snap, p, batch),
        other => Err(unknown_action(other.name())),
    }
}

/// VNIs as given (API or config file): 1..=VNI_QUOTA distinct values in 0..=16777215,
/// returned ascending.
pub fn check_vnis(values: &[i64]) -> Result<Vec<u32>, ApiError> {
    if values.is_empty() {
        return Err(ApiError::missing("VirtualNetworkIds.1"));
    }
    if values.len() > VNI_QUOTA {
        return Err(ApiError::bad(
            "QuotaExceeded.VirtualNetworkIds",
            format!("A receiver serves at most {VNI_QUOTA} VNIs."),
        ));
    }
    let mut out = Vec::new();
    for &v in values {
        if !(0..=16_777_215).contains(&v) {
            return Err(ApiError::bad(
                "InvalidVirtualNetworkId.Malformed",
                format!("The specified VirtualNetworkId {v} is not in 0-16777215."),
            ));
        }
        let v = v as u32;
        if out.contains(&v) {
            return Err(ApiError::bad(
                "DuplicatedParam.VirtualNetworkIds",
                format!("The VirtualNetworkId {v} is given twice."),
            ));
        }
        out.push(v);
    }
    out.sort_unstable();
    Ok(out)
}

pub fn check_port(v: Option<i64>) -> Result<u16, ApiError> {
    match v {
        None => Ok(DEFAULT_VXLAN_PORT),
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Some(_) => Err(ApiError::bad(
            "InvalidDestinationPort.Malformed",
            "The specified DestinationPort is not in 1-65535.",
        )),
    }
}

/// Another live receiver already holds this interface or one of these VNIs (capture
/// interfaces are named by VNI, so a VNI is served once per node).
pub fn check_conflicts(
    snap: &Snapshot,
    id: &str,
    interface: &str,
    vnis: &[u32],
) -> Result<(), ApiError> {
    for other in snap
        .receivers
        .iter()
        .filter(|r| r.id != id && r.state != SessionState::Deleting)
    {
        if other.interface == interface {
            return Err(ApiError::bad(
                "ResourceAlreadyAssociated.NetworkInterface",
                format!(
                    "The interface {interface} already has the receiver {}.",
                    other.id
                ),
            ));
        }
        if let Some(v) = vnis.iter().find(|v| other.vnis.contains(v)) {
            return Err(ApiError::new(
                409,
                "InvalidVirtualNetworkId.Conflict",
                format!(
                    "The VirtualNetworkId {v} is served by the receiver {}.",
                    other.id
                ),
            ));
        }
    }
    Ok(())
}

fn int_list(p: &Params, name: &str) -> Result<Vec<i64>, ApiError> {
    p.list(name)?
        .iter()
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad(
                    "InvalidVirtualNetworkId.Malformed",
                    format!("The specified VirtualNetworkId {v:?} is not a number."),
                )
            })
        })
        .collect()
}

fn create(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let name = check_name(
        "TrafficMirrorReceiverName",
        p.get("TrafficMirrorReceiverName"),
    )?;
    let description = check_description("Description", p.get("Description"))?;
    let interface = p.required("NetworkInterfaceId")?.to_string();
    let port = check_port(p.int("DestinationPort", "InvalidDestinationPort.Malformed")?)?;
    let vnis = check_vnis(&int_list(p, "VirtualNetworkIds")?)?;
    let tags = tags(p)?;
    let Some(resolved) = svc.resolve_interface(&interface) else {
        return Err(ApiError::bad(
            "ResourceNotFound.NetworkInterface",
            format!("The specified resource of {interface} is not found."),
        ));
    };
    if is_capture_name(&resolved) || crate::datapath::tunnel::is_device_name(&resolved) {
        return Err(ApiError::bad(
            "InvalidParameter.NetworkInterfaceId",
            format!(
                "The interface {resolved} is the agent's own and cannot receive mirror traffic."
            ),
        ));
    }
    check_conflicts(snap, "", &interface, &vnis)?;
    let now = now_rfc3339();
    let r = ReceiverRecord {
        id: new_id("tmrcv"),
        name,
        description,
        interface,
        destination_port: port,
        vnis,
        state: SessionState::Creating,
        generation: 1,
        errors: Vec::new(),
        tags,
        origin: Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    };
    batch.put_receiver(&r)?;
    Ok(Outcome::tracking(
        json!({"TrafficMirrorReceiverId": r.id}),
        &r.id,
        r.generation,
    ))
}

fn delete(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorReceiverId")?;
    let cur = snap.receiver(id).ok_or_else(|| {
        ApiError::bad(
            "ResourceNotFound.TrafficMirrorReceiver",
            format!("The specified resource of traffic mirror receiver is not found: {id}"),
        )
    })?;
    if cur.state != SessionState::Created {
        return Err(ApiError::bad(
            "IncorrectStatus.TrafficMirrorReceiver",
            format!(
                "The receiver {id} is {} and cannot be deleted now.",
                cur.state.as_str()
            ),
        ));
    }
    let mut rec = cur.clone();
    rec.state = SessionState::Deleting;
    rec.generation += 1;
    rec.updated_at = now_rfc3339();
    batch.put_receiver(&rec)?;
    Ok(Outcome::tracking(json!({}), &rec.id, rec.generation))
}

pub fn list(svc: &Service, snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
    let live = svc
        .receiver_status
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    let ids = p.list("TrafficMirrorReceiverIds")?;
    let interface = p.str_opt("NetworkInterfaceId");
    let mut items: Vec<&ReceiverRecord> = snap
        .receivers
        .iter()
        .filter(|r| ids.is_empty() || ids.contains(&r.id))
        .filter(|r| interface.is_none_or(|i| r.interface == i))
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let (items, meta) = page(items, p)?;
    let list: Vec<Value> = items.iter().map(|r| render(r, live.get(&r.id))).collect();
    Ok(merge(json!({"TrafficMirrorReceivers": list}), meta))
}

fn render(r: &ReceiverRecord, live: Option<&ReceiverStatus>) -> Value {
    let captures: Vec<Value> = r
        .vnis
        .iter()
        .map(|vni| {
            let s = live
                .and_then(|l| l.vnis.get(vni))
                .map(|(_, s)| *s)
                .unwrap_or_default();
            json!({
                "VirtualNetworkId": vni,
                "CaptureInterface": capture_name(*vni),
                "Frames": s.frames,
                "Bytes": s.bytes,
                "Malformed": s.malformed,
                "NoCaptureInterface": s.no_capture,
                "RedirectErrors": s.redirect_errors,
            })
        })
        .collect();
    let i = live.map(|l| l.interface).unwrap_or_default();
    json!({
        "TrafficMirrorReceiverId": r.id,
        "TrafficMirrorReceiverName": r.name,
        "Description": r.description,
        "NetworkInterfaceId": r.interface,
        "DestinationPort": r.destination_port,
        "VirtualNetworkIds": r.vnis,
        "XdpMode": live.map(|l| l.mode.clone()).unwrap_or_default(),
        "Captures": captures,
        "InterfaceCounters": {
            "Packets": i.packets,
            "NotMirrorTraffic": i.not_mirror,
            "Malformed": i.malformed,
            "UnknownVirtualNetworkId": i.unknown_vni,
        },
        "TrafficMirrorReceiverStatus": r.state.as_str(),
        "TrafficMirrorReceiverBusinessStatus": if r.errors.is_empty() { "Normal" } else { "FailedToApply" },
        "TrafficMirrorReceiverErrors": r.errors,
        "Tags": crate::records::tags_json(&r.tags),
        "CreationTime": r.created_at,
        "UpdateTime": r.updated_at,
    })
}
