//! Session actions: sources, priorities, VNIs, budgets and the change they start.

use std::{borrow::Cow, collections::BTreeSet};

use serde_json::{Value, json};

use super::{
    Outcome,
    checks::{
        check_description, check_name, check_settled, filter_not_found, merge, page,
        session_not_found, tags, target_not_found,
    },
    targets::target_from_alias,
};
use crate::{
    api::{ApiError, rpc::Params},
    model,
    records::{Origin, SessionRecord, SessionState, TargetRecord, new_id, now_rfc3339},
    service::Service,
    store::{Batch, Snapshot},
};

/// Checks a source as given (interface name, alias or glob); returns it unchanged.
fn check_source(svc: &Service, target: Option<&TargetRecord>, src: &str) -> Result<(), ApiError> {
    if src.is_empty() {
        return Err(ApiError::missing("TrafficMirrorSourceIds.N"));
    }
    if !svc.is_glob(src) && svc.resolve_interface(src).is_none() {
        return Err(ApiError::bad(
            "ResourceNotFound.NetworkInterface",
            format!("The specified resource of {src} is not found."),
        ));
    }
    if let Some(t) = target
        && let Some(iface) = &t.instance_id
        && (iface == src || svc.resolve_interface(iface) == svc.resolve_interface(src))
    {
        return Err(ApiError::bad(
            "OperationDenied.DuplicateRole",
            "The network interface must not be the source and the target of traffic mirror sessions at the same time.",
        ));
    }
    Ok(())
}

fn sources_param(p: &Params) -> Result<Vec<String>, ApiError> {
    let mut sources = p.list("TrafficMirrorSourceIds")?;
    if let Some(eni) = p.str_opt("NetworkInterfaceId") {
        sources.push(eni.to_string());
    }
    let mut seen = BTreeSet::new();
    for s in &sources {
        if !seen.insert(s.as_str()) {
            return Err(ApiError::bad(
                "DuplicatedParam.SourceInstanceIds",
                "The parameter of source instance IDs contains duplicate values.",
            ));
        }
    }
    Ok(sources)
}

/// Sessions per source: the data path holds 8 per interface.
fn check_sessions_per_source(
    snap: &Snapshot,
    session_id: &str,
    sources: &[String],
) -> Result<(), ApiError> {
    for src in sources {
        let n = snap
            .sessions
            .iter()
            .filter(|s| s.id != session_id && s.sources.contains(src))
            .count();
        if n + 1 > mirror_ebpf::MAX_SESSIONS_PER_SOURCE {
            return Err(ApiError::bad(
                "QuotaExceeded.NetworkInterfaceRelatedSession",
                format!(
                    "The quota of the number of traffic mirror sessions related to one network interface ({}) is exceeded for {src}.",
                    mirror_ebpf::MAX_SESSIONS_PER_SOURCE
                ),
            ));
        }
    }
    Ok(())
}

fn check_source_quota(svc: &Service, n: usize) -> Result<(), ApiError> {
    if n > svc.source_quota {
        return Err(ApiError::bad(
            "QuotaExceeded.SourceNumPerSession",
            format!(
                "The quota of the number of traffic mirror sources per session ({}) is exceeded.",
                svc.source_quota
            ),
        ));
    }
    Ok(())
}

fn check_priority_free(snap: &Snapshot, session_id: &str, priority: u16) -> Result<(), ApiError> {
    if snap
        .sessions
        .iter()
        .any(|s| s.id != session_id && s.priority == priority && s.state != SessionState::Deleting)
    {
        return Err(ApiError::new(
            409,
            "InvalidTrafficMirrorSessionPriority.Conflict",
            format!(
                "The specified priority {priority} conflicts with another in your traffic mirror session."
            ),
        ));
    }
    Ok(())
}

fn free_vni(snap: &Snapshot) -> u32 {
    let used: BTreeSet<u32> = snap.sessions.iter().map(|s| s.vni).collect();
    // Random, as the clouds do, so that VNIs of different nodes rarely collide at a shared
    // collector; retried until unused.
    loop {
        let v = (uuid::Uuid::new_v4().as_u128() % (model::VNI_MAX as u128 + 1)) as u32;
        if !used.contains(&v) {
            return v;
        }
    }
}

/// Priority, VNI, PacketLength and Enabled, each validated when given.
type SessionFields = (Option<u16>, Option<u32>, Option<u32>, Option<bool>);

fn session_fields(p: &Params) -> Result<SessionFields, ApiError> {
    let priority = p
        .int("Priority", "InvalidPriority.Malformed")?
        .map(model::check_session_priority)
        .transpose()?;
    let vni = p
        .int("VirtualNetworkId", "InvalidVirtualNetworkId.Malformed")?
        .map(model::check_vni)
        .transpose()?;
    let len = p
        .int("PacketLength", "InvalidPacketLength.Malformed")?
        .map(model::check_packet_length)
        .transpose()?;
    let enabled = p.bool("Enabled")?;
    Ok((priority, vni, len, enabled))
}

/// `budget` with this agent's budget parameters applied (absent ones keep their value).
fn budget_fields(p: &Params, budget: model::Budget) -> Result<model::Budget, ApiError> {
    Ok(budget.with(model::BudgetChange {
        max_packets_per_second: p.int(
            "MaxPacketsPerSecond",
            "InvalidMaxPacketsPerSecond.Malformed",
        )?,
        max_bits_per_second: p.int("MaxBitsPerSecond", "InvalidMaxBitsPerSecond.Malformed")?,
        sample_one_in: p.int("SampleOneIn", "InvalidSampleOneIn.Malformed")?,
        sample_mode: p.str_opt("SampleMode"),
    })?)
}

pub(super) fn create_session(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let name = check_name(
        "TrafficMirrorSessionName",
        p.get("TrafficMirrorSessionName"),
    )?;
    let description = check_description(
        "TrafficMirrorSessionDescription",
        p.get("TrafficMirrorSessionDescription")
            .or(p.get("Description")),
    )?;
    let (priority, vni, packet_length, enabled) = session_fields(p)?;
    let budget = budget_fields(p, model::Budget::default())?;
    let priority = priority.ok_or_else(|| ApiError::missing("Priority"))?;
    let filter_id = p.required("TrafficMirrorFilterId")?;
    let target_id = p.required("TrafficMirrorTargetId")?;
    let tags = tags(p)?;
    let sources = sources_param(p)?;
    if snap.filter(filter_id).is_none() {
        return Err(filter_not_found(filter_id));
    }
    let target = session_target(svc, snap, p, target_id, batch)?;
    check_source_quota(svc, sources.len())?;
    for s in &sources {
        check_source(svc, Some(&target), s)?;
    }
    if snap.sessions.len() >= mirror_ebpf::MAX_SESSIONS as usize {
        return Err(ApiError::bad(
            "QuotaExceeded.TrafficMirrorSession",
            "You've reached the limit on the number of traffic mirror sessions that you can create.",
        ));
    }
    check_priority_free(snap, "", priority)?;
    let id = new_id("tms");
    check_sessions_per_source(snap, &id, &sources)?;
    let now = now_rfc3339();
    let s = SessionRecord {
        id: id.clone(),
        name,
        description,
        priority,
        vni: vni.unwrap_or_else(|| free_vni(snap)),
        packet_length,
        budget,
        // Volcengine's sessions have no Enabled switch and mirror once created; Alibaba's and
        // Huawei's start disabled. Read from Version, which is not part of a ClientToken's
        // fingerprint, so both spellings of one request stay the same request.
        enabled: enabled.unwrap_or_else(|| {
            p.get("Version")
                .is_some_and(|v| v.starts_with(crate::api::render::VOLCENGINE_VERSION))
        }),
        filter_id: filter_id.to_string(),
        target_id: target_id.to_string(),
        sources,
        state: SessionState::Creating,
        generation: 1,
        errors: Vec::new(),
        tags,
        origin: Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    };
    batch.put_session(&s)?;
    Ok(Outcome::tracking(
        json!({"TrafficMirrorSessionId": id}),
        &id,
        1,
    ))
}

fn begin_change(s: &SessionRecord) -> SessionRecord {
    let mut s = s.clone();
    s.generation += 1;
    s.state = if s.state == SessionState::Creating {
        SessionState::Creating
    } else {
        SessionState::Modifying
    };
    s.updated_at = now_rfc3339();
    s
}

pub(super) fn update_session(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
    let mut s = begin_change(cur);
    if let Some(n) = p.get("TrafficMirrorSessionName") {
        s.name = check_name("TrafficMirrorSessionName", Some(n))?;
    }
    if let Some(d) = p
        .get("TrafficMirrorSessionDescription")
        .or(p.get("Description"))
    {
        s.description = check_description("TrafficMirrorSessionDescription", Some(d))?;
    }
    let (priority, vni, packet_length, enabled) = session_fields(p)?;
    if let Some(pr) = priority {
        check_priority_free(snap, id, pr)?;
        s.priority = pr;
    }
    if let Some(v) = vni {
        s.vni = v;
    }
    if let Some(l) = packet_length {
        s.packet_length = Some(l);
    }
    s.budget = budget_fields(p, s.budget)?;
    if let Some(e) = enabled {
        s.enabled = e;
    }
    if let Some(f) = p.str_opt("TrafficMirrorFilterId") {
        snap.filter(f).ok_or_else(|| filter_not_found(f))?;
        s.filter_id = f.to_string();
    }
    if let Some(t) = p.str_opt("TrafficMirrorTargetId") {
        let target = session_target(svc, snap, p, t, batch)?;
        for src in &s.sources {
            check_source(svc, Some(&target), src)?;
        }
        s.target_id = t.to_string();
    }
    put_change(s, batch)
}

pub(super) fn delete_session(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
    let mut s = cur.clone();
    s.generation += 1;
    s.state = SessionState::Deleting;
    s.updated_at = now_rfc3339();
    put_change(s, batch)
}

/// The target a session names: a `tmt-…` object, or the one an ENI/SLB alias stands for,
/// made now in `batch` (Alibaba names targets by the ENI or SLB itself).
fn session_target<'a>(
    svc: &Service,
    snap: &'a Snapshot,
    p: &Params,
    id: &str,
    batch: &mut Batch,
) -> Result<Cow<'a, TargetRecord>, ApiError> {
    match snap.target(id) {
        Some(t) => Ok(Cow::Borrowed(t)),
        None if id.starts_with("tmt-") => Err(target_not_found(id)),
        None => {
            let t = target_from_alias(svc, p, id)?;
            batch.put_target(&t)?;
            Ok(Cow::Owned(t))
        }
    }
}

/// The session and the sources an Add/RemoveSources request names; the session must be
/// settled (its last change applied).
fn sources_change<'a>(
    snap: &'a Snapshot,
    p: &Params,
) -> Result<(&'a SessionRecord, Vec<String>), ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let sources = sources_param(p)?;
    if sources.is_empty() {
        return Err(ApiError::missing("TrafficMirrorSourceIds.N"));
    }
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
    Ok((cur, sources))
}

/// Writes a session change; the answer names it, for ClientToken and the reconciler.
fn put_change(s: SessionRecord, batch: &mut Batch) -> Result<Outcome, ApiError> {
    batch.put_session(&s)?;
    Ok(Outcome::tracking(json!({}), &s.id, s.generation))
}

pub(super) fn add_sources(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let (cur, sources) = sources_change(snap, p)?;
    let target = snap.target(&cur.target_id);
    for src in &sources {
        if cur.sources.contains(src) {
            return Err(ApiError::bad(
                "ResourceAlreadyAssociated.TrafficMirrorSource",
                format!(
                    "The specified traffic mirror source {src} and session are already associated."
                ),
            ));
        }
        check_source(svc, target, src)?;
    }
    check_source_quota(svc, cur.sources.len() + sources.len())?;
    check_sessions_per_source(snap, &cur.id, &sources)?;
    let mut s = begin_change(cur);
    s.sources.extend(sources);
    put_change(s, batch)
}

pub(super) fn remove_sources(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let (cur, sources) = sources_change(snap, p)?;
    for src in &sources {
        if !cur.sources.contains(src) {
            return Err(ApiError::bad(
                "ResourceNotAssociated.TrafficMirrorSource",
                format!(
                    "The specified traffic mirror source {src} is not associated with the session."
                ),
            ));
        }
    }
    let mut s = begin_change(cur);
    s.sources.retain(|x| !sources.contains(x));
    put_change(s, batch)
}

pub fn target_type(snap: &Snapshot, s: &SessionRecord) -> String {
    snap.target(&s.target_id)
        .map_or("NetworkInterface".to_string(), |t| t.instance_type.clone())
}

pub(super) fn list_sessions(svc: &Service, snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
    let ids = p.list("TrafficMirrorSessionIds")?;
    let name = p.str_opt("TrafficMirrorSessionName");
    let filter = p.str_opt("TrafficMirrorFilterId");
    let target = p.str_opt("TrafficMirrorTargetId");
    let source = p.str_opt("TrafficMirrorSourceId");
    let priority = p.int("Priority", "InvalidPriority.Malformed")?;
    let vni = p.int("VirtualNetworkId", "InvalidVirtualNetworkId.Malformed")?;
    let enabled = p.bool("Enabled")?;
    let mut items: Vec<&SessionRecord> = snap
        .sessions
        .iter()
        .filter(|s| ids.is_empty() || ids.contains(&s.id))
        .filter(|s| name.is_none_or(|n| s.name == n))
        .filter(|s| filter.is_none_or(|f| s.filter_id == f))
        .filter(|s| target.is_none_or(|t| s.target_id == t))
        .filter(|s| source.is_none_or(|x| s.sources.iter().any(|y| y == x)))
        .filter(|s| priority.is_none_or(|x| i64::from(s.priority) == x))
        .filter(|s| vni.is_none_or(|x| i64::from(s.vni) == x))
        .filter(|s| enabled.is_none_or(|x| s.enabled == x))
        .collect();
    items.sort_by_key(|s| s.priority);
    let (items, meta) = page(items, p)?;
    let paths = svc.copy_paths.read().map(|p| p.clone()).unwrap_or_default();
    let skipped = svc.skipped.read().map(|s| s.clone()).unwrap_or_default();
    let list: Vec<Value> = items
        .iter()
        .map(|s| {
            let mut v = s.alibaba(&target_type(snap, s));
            // This agent's extension: which way the session's copies take, and why.
            if let (Some(obj), Some(path)) = (v.as_object_mut(), paths.get(&s.id)) {
                obj.insert("CopyPath".into(), json!(path.mode));
                obj.insert("CopyPathDetail".into(), json!(path.detail));
                obj.insert("Segmentation".into(), json!(path.segmentation));
            }
            // And what its budget, its sampling and the kernel left out, per direction.
            if let Some(obj) = v.as_object_mut() {
                let skips = skipped.get(&s.id).copied().unwrap_or_default();
                let by_dir = |d: usize| -> serde_json::Map<String, Value> {
                    crate::datapath::SKIP_REASONS_SHOWN
                        .iter()
                        .zip(skips[d])
                        .map(|(r, n)| (r.to_string(), json!(n)))
                        .collect()
                };
                obj.insert(
                    "SkippedPackets".into(),
                    json!({"Ingress": by_dir(0), "Egress": by_dir(1)}),
                );
            }
            v
        })
        .collect();
    Ok(merge(json!({"TrafficMirrorSessions": list}), meta))
}
