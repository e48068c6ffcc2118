//! The RPC actions: validation, the store transaction, and the answer's fields. The REST style
//! translates its requests into the same actions.
//!
//! Every mutating action runs under one lock, so a check (priority unique, quota, source not
//! yet associated) and the write it guards are atomic. Error codes are Alibaba's; the
//! Volcengine envelope maps the ones it spells differently (`dialect_error`).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{ApiError, rpc::Params};
use crate::{
    model::{self, RuleSpec},
    records::{
        FilterRecord, Origin, RuleRecord, SessionRecord, SessionState, Tag, TargetRecord, new_id,
        now_rfc3339,
    },
    service::Service,
    store::{Batch, Kind, Snapshot},
};

/// What a successful action answers, and the session change it started (for ClientToken
/// "in progress" and for the reconciler).
pub struct Outcome {
    pub body: Value,
    pub session: Option<(String, u64)>,
}

impl Outcome {
    fn empty() -> Self {
        Outcome {
            body: json!({}),
            session: None,
        }
    }
    fn body(body: Value) -> Self {
        Outcome {
            body,
            session: None,
        }
    }
}

pub const MUTATING: &[&str] = &[
    "CreateTrafficMirrorFilter",
    "DeleteTrafficMirrorFilter",
    "UpdateTrafficMirrorFilterAttribute",
    "CreateTrafficMirrorFilterRules",
    "DeleteTrafficMirrorFilterRules",
    "UpdateTrafficMirrorFilterRuleAttribute",
    "CreateTrafficMirrorTarget",
    "DeleteTrafficMirrorTarget",
    "UpdateTrafficMirrorTargetAttribute",
    "CreateTrafficMirrorSession",
    "UpdateTrafficMirrorSessionAttribute",
    "DeleteTrafficMirrorSession",
    "AddSourcesToTrafficMirrorSession",
    "RemoveSourcesFromTrafficMirrorSession",
];

pub const READING: &[&str] = &[
    "ListTrafficMirrorFilters",
    "ListTrafficMirrorTargets",
    "ListTrafficMirrorSessions",
    // Alibaba's account-level switches: on a node the features are always on.
    "GetTrafficMirrorServiceStatus",
    "OpenTrafficMirrorService",
    "GetFlowLogServiceStatus",
    "OpenFlowLogService",
];

pub fn is_known(action: &str) -> bool {
    is_mutating(action) || is_reading(action)
}

pub fn is_mutating(action: &str) -> bool {
    MUTATING.contains(&action)
        || super::flowlogs::MUTATING.contains(&action)
        || super::receivers::MUTATING.contains(&action)
}

pub fn is_reading(action: &str) -> bool {
    READING.contains(&action)
        || super::flowlogs::READING.contains(&action)
        || super::receivers::READING.contains(&action)
}

/// Runs a mutating action under the service's write lock. With `dry_run`, everything is
/// checked and nothing is written.
pub async fn mutate(
    svc: &Service,
    action: &str,
    p: &Params,
    dry_run: bool,
) -> Result<(Outcome, Batch), ApiError> {
    let snap = svc.snapshot()?;
    check_not_kubernetes(&snap, p)?;
    let mut batch = Batch::default();
    let out = match action {
        "CreateTrafficMirrorFilter" => create_filter(svc, &snap, p, &mut batch)?,
        "DeleteTrafficMirrorFilter" => delete_filter(&snap, p, &mut batch)?,
        "UpdateTrafficMirrorFilterAttribute" => update_filter(&snap, p, &mut batch)?,
        "CreateTrafficMirrorFilterRules" => create_rules(svc, &snap, p, &mut batch)?,
        "DeleteTrafficMirrorFilterRules" => delete_rules(&snap, p, &mut batch)?,
        "UpdateTrafficMirrorFilterRuleAttribute" => update_rule(svc, &snap, p, &mut batch)?,
        "CreateTrafficMirrorTarget" => create_target(svc, p, &mut batch)?,
        "DeleteTrafficMirrorTarget" => delete_target(&snap, p, &mut batch)?,
        "UpdateTrafficMirrorTargetAttribute" => update_target(&snap, p, &mut batch)?,
        "CreateTrafficMirrorSession" => create_session(svc, &snap, p, &mut batch)?,
        "UpdateTrafficMirrorSessionAttribute" => update_session(svc, &snap, p, &mut batch)?,
        "DeleteTrafficMirrorSession" => delete_session(&snap, p, &mut batch)?,
        "AddSourcesToTrafficMirrorSession" => add_sources(svc, &snap, p, &mut batch)?,
        "RemoveSourcesFromTrafficMirrorSession" => remove_sources(&snap, p, &mut batch)?,
        other if super::flowlogs::MUTATING.contains(&other) => {
            super::flowlogs::mutate(svc, &snap, other, p, &mut batch)?
        }
        other if super::receivers::MUTATING.contains(&other) => {
            super::receivers::mutate(svc, &snap, other, p, &mut batch)?
        }
        other => return Err(unknown_action(other)),
    };
    if dry_run {
        return Err(ApiError::bad(
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    Ok((out, batch))
}

pub fn read(svc: &Service, action: &str, p: &Params) -> Result<Value, ApiError> {
    let snap = svc.snapshot()?;
    match action {
        "ListTrafficMirrorFilters" => list_filters(&snap, p),
        "ListTrafficMirrorTargets" => list_targets(&snap, p),
        "ListTrafficMirrorSessions" => list_sessions(svc, &snap, p),
        "GetTrafficMirrorServiceStatus" | "GetFlowLogServiceStatus" => Ok(json!({"Enabled": true})),
        "OpenTrafficMirrorService" | "OpenFlowLogService" => Ok(json!({})),
        "DescribeFlowLogs" => super::flowlogs::describe(svc, &snap, p),
        "ListTrafficMirrorReceivers" => super::receivers::list(svc, &snap, p),
        other => Err(unknown_action(other)),
    }
}

pub fn unknown_action(action: &str) -> ApiError {
    ApiError::new(
        404,
        "InvalidAction.NotFound",
        format!("Specified api \"{action}\" is not found, please check your url and method."),
    )
}

// ---- shared checks -----------------------------------------------------------------------

pub(super) fn check_name(param: &str, v: Option<&str>) -> Result<String, ApiError> {
    let Some(v) = v else {
        return Ok(String::new());
    };
    let n = v.chars().count();
    if n == 0
        || n > 128
        || v.starts_with("http://")
        || v.starts_with("https://")
        || v.chars().any(|c| c.is_control())
    {
        return Err(ApiError::bad(
            "InvalidName.Malformed",
            format!(
                "The specified name is malformed. Ensure the maximum length of name is 128. ({param})"
            ),
        ));
    }
    Ok(v.to_string())
}

pub(super) fn check_description(param: &str, v: Option<&str>) -> Result<String, ApiError> {
    let Some(v) = v else {
        return Ok(String::new());
    };
    if v.chars().count() > 255
        || v.contains(['<', '>'])
        || v.starts_with("http://")
        || v.starts_with("https://")
    {
        return Err(ApiError::bad(
            "InvalidDescription.Malformed",
            format!(
                "The specified description is malformed. Ensure the maximum length of description is 255 and it contains no '<' or '>'. ({param})"
            ),
        ));
    }
    Ok(v.to_string())
}

pub(super) fn tags(p: &Params) -> Result<Vec<Tag>, ApiError> {
    Ok(p.tags()?
        .into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect())
}

/// Objects from Kubernetes are the cluster's: changed here, the node controller would
/// rewrite them at its next plan, so the API refuses to change them (`kubectl` changes them).
fn check_not_kubernetes(snap: &Snapshot, p: &Params) -> Result<(), ApiError> {
    use crate::records::Origin;
    let kubernetes = |origin: Option<Origin>| origin == Some(Origin::Kubernetes);
    let named = |key: &str| p.get(key).map(str::to_string);
    let hit = [
        named("TrafficMirrorSessionId").filter(|id| kubernetes(snap.session(id).map(|s| s.origin))),
        named("TrafficMirrorFilterId").filter(|id| kubernetes(snap.filter(id).map(|f| f.origin))),
        named("TrafficMirrorTargetId").filter(|id| kubernetes(snap.target(id).map(|t| t.origin))),
        named("TrafficMirrorReceiverId")
            .filter(|id| kubernetes(snap.receiver(id).map(|r| r.origin))),
    ]
    .into_iter()
    .flatten()
    .next();
    match hit {
        Some(id) => Err(ApiError::bad(
            "OperationDenied.KubernetesObject",
            format!("{id} comes from Kubernetes custom resources and is read-only here"),
        )),
        None => Ok(()),
    }
}

fn filter_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorFilter",
        format!("The specified resource of traffic mirror filter is not found: {id}"),
    )
}

fn session_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorSession",
        format!("The specified resource of traffic mirror session is not found: {id}"),
    )
}

fn target_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorTarget",
        format!("The specified resource of traffic mirror target is not found: {id}"),
    )
}

fn rule_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorFilterRule",
        format!("The specified resource of traffic mirror filter rule is not found: {id}"),
    )
}

/// Modifying and Deleting sessions take no other change until they settle (the seeds' "you
/// cannot repeatedly call … within a period of time").
fn check_settled(s: &SessionRecord) -> Result<(), ApiError> {
    match s.state {
        SessionState::Modifying | SessionState::Deleting => Err(ApiError::bad(
            "IncorrectStatus.TrafficMirrorSession",
            format!(
                "The status of traffic mirror session is incorrect: {} is {}.",
                s.id,
                s.state.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

fn check_rule_quota(svc: &Service, f: &FilterRecord) -> Result<(), ApiError> {
    for dir in ["ingress", "egress"] {
        let n = f.rules.iter().filter(|r| r.direction == dir).count();
        if n > svc.rule_quota {
            return Err(ApiError::bad(
                "QuotaExceeded.TrafficMirrorFilterRule",
                format!(
                    "The quota of {} {dir} rules per traffic mirror filter is exceeded.",
                    svc.rule_quota
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for r in f.rules.iter().filter(|r| r.direction == dir) {
            if !seen.insert(r.priority) {
                return Err(ApiError::new(
                    409,
                    "InvalidTrafficMirrorFilterRulePriority.Conflict",
                    format!(
                        "The specified priority {} conflicts with another {dir} rule of filter {}.",
                        r.priority, f.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `IngressRules.N.*` / `EgressRules.N.*` into validated rules with new ids.
fn rules_from(p: &Params) -> Result<Vec<RuleRecord>, ApiError> {
    let mut out = Vec::new();
    for (list, direction) in [("IngressRules", "ingress"), ("EgressRules", "egress")] {
        for (i, r) in p.objects(list)?.iter().enumerate() {
            let param = |f: &str| format!("{list}.{}.{f}", i + 1);
            let priority = r
                .int("Priority", "InvalidPriority.Malformed")?
                .ok_or_else(|| ApiError::missing(&param("Priority")))?;
            let action = r
                .required("Action")
                .map_err(|_| ApiError::missing(&param("Action")))?;
            let id = new_id("tmr");
            let spec = RuleSpec {
                id: &id,
                direction,
                priority,
                action,
                protocol: r.str_opt("Protocol").unwrap_or("ALL"),
                ip_version: r.str_opt("IpVersion"),
                source_cidr: r.str_opt("SourceCidrBlock"),
                destination_cidr: r.str_opt("DestinationCidrBlock"),
                source_ports: r.str_opt("SourcePortRange"),
                destination_ports: r.str_opt("DestinationPortRange"),
            };
            out.push(RuleRecord::from_spec(&spec)?);
        }
    }
    Ok(out)
}

fn rule_ids_body(rules: &[RuleRecord]) -> Value {
    let ids = |dir: &str| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| r.direction == dir)
            .map(|r| json!({"InstanceId": r.id}))
            .collect()
    };
    json!({"IngressRules": ids("ingress"), "EgressRules": ids("egress")})
}

/// Sessions that use a filter get re-applied when it changes: mark them Modifying.
fn touch_sessions_of_filter(
    snap: &Snapshot,
    filter_id: &str,
    batch: &mut Batch,
) -> Result<(), ApiError> {
    for s in snap.sessions.iter().filter(|s| s.filter_id == filter_id) {
        if s.state == SessionState::Deleting {
            continue;
        }
        let mut s = s.clone();
        s.generation += 1;
        if s.state == SessionState::Created {
            s.state = SessionState::Modifying;
        }
        batch.put_session(&s)?;
    }
    Ok(())
}

pub(super) fn page<T>(items: Vec<T>, p: &Params) -> Result<(Vec<T>, Value), ApiError> {
    let max = p
        .int("MaxResults", "InvalidParameter.MaxResults")?
        .unwrap_or(20);
    if !(1..=100).contains(&max) {
        return Err(ApiError::bad(
            "InvalidParameter.MaxResults",
            "The specified MaxResults is invalid: 1-100.",
        ));
    }
    let start: usize = match p.str_opt("NextToken") {
        Some(t) => t.parse().map_err(|_| {
            ApiError::bad(
                "InvalidNextToken.Malformed",
                "The specified NextToken is malformed.",
            )
        })?,
        None => 0,
    };
    let total = items.len();
    let end = (start + max as usize).min(total);
    let next = if end < total {
        Value::String(end.to_string())
    } else {
        Value::String(String::new())
    };
    let items: Vec<T> = items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    Ok((
        items,
        json!({"TotalCount": total, "MaxResults": max, "NextToken": next}),
    ))
}

pub(super) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

// ---- filters --------------------------------------------------------------------------

fn create_filter(
    svc: &Service,
    _snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let name = check_name("TrafficMirrorFilterName", p.get("TrafficMirrorFilterName"))?;
    let description = check_description(
        "TrafficMirrorFilterDescription",
        p.get("TrafficMirrorFilterDescription")
            .or(p.get("Description")),
    )?;
    let tags = tags(p)?;
    let rules = rules_from(p)?;
    let now = now_rfc3339();
    let f = FilterRecord {
        id: new_id("tmf"),
        name,
        description,
        tags,
        rules,
        origin: Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    };
    check_rule_quota(svc, &f)?;
    batch.put_filter(&f)?;
    let body = merge(
        json!({"TrafficMirrorFilterId": f.id}),
        rule_ids_body(&f.rules),
    );
    Ok(Outcome::body(body))
}

fn delete_filter(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorFilterId")?;
    snap.filter(id).ok_or_else(|| filter_not_found(id))?;
    if let Some(s) = snap.sessions.iter().find(|s| s.filter_id == id) {
        return Err(ApiError::bad(
            "DependencyViolation.TrafficMirrorFilter",
            format!(
                "The traffic mirror filter is used by traffic mirror session {}.",
                s.id
            ),
        ));
    }
    batch.delete(Kind::Filter, id);
    Ok(Outcome::empty())
}

fn update_filter(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorFilterId")?;
    let mut f = snap.filter(id).ok_or_else(|| filter_not_found(id))?.clone();
    if let Some(n) = p.get("TrafficMirrorFilterName") {
        f.name = check_name("TrafficMirrorFilterName", Some(n))?;
    }
    if let Some(d) = p
        .get("TrafficMirrorFilterDescription")
        .or(p.get("Description"))
    {
        f.description = check_description("TrafficMirrorFilterDescription", Some(d))?;
    }
    f.updated_at = now_rfc3339();
    batch.put_filter(&f)?;
    Ok(Outcome::empty())
}

fn create_rules(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorFilterId")?;
    let mut f = snap.filter(id).ok_or_else(|| filter_not_found(id))?.clone();
    let rules = rules_from(p)?;
    if rules.is_empty() {
        return Err(ApiError::missing("IngressRules.N or EgressRules.N"));
    }
    f.rules.extend(rules.iter().cloned());
    check_rule_quota(svc, &f)?;
    f.updated_at = now_rfc3339();
    batch.put_filter(&f)?;
    touch_sessions_of_filter(snap, id, batch)?;
    let body = merge(
        json!({"TrafficMirrorFilterId": f.id}),
        rule_ids_body(&rules),
    );
    Ok(Outcome::body(body))
}

fn delete_rules(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorFilterId")?;
    let mut f = snap.filter(id).ok_or_else(|| filter_not_found(id))?.clone();
    let ids = p.list("TrafficMirrorFilterRuleIds")?;
    if ids.is_empty() {
        return Err(ApiError::missing("TrafficMirrorFilterRuleIds.N"));
    }
    for rid in &ids {
        if !f.rules.iter().any(|r| &r.id == rid) {
            return Err(rule_not_found(rid));
        }
    }
    f.rules.retain(|r| !ids.contains(&r.id));
    f.updated_at = now_rfc3339();
    batch.put_filter(&f)?;
    touch_sessions_of_filter(snap, id, batch)?;
    Ok(Outcome::empty())
}

fn update_rule(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let rid = p.required("TrafficMirrorFilterRuleId")?;
    let f = snap
        .filters
        .iter()
        .find(|f| f.rules.iter().any(|r| r.id == rid))
        .ok_or_else(|| rule_not_found(rid))?;
    let mut f = f.clone();
    let Some(rule) = f.rules.iter_mut().find(|r| r.id == rid) else {
        return Err(rule_not_found(rid));
    };
    let priority = match p.int("Priority", "InvalidPriority.Malformed")? {
        Some(v) => v,
        None => i64::from(rule.priority),
    };
    // `Action` is the RPC action's name here; the rule's action is `RuleAction`.
    let action = p.str_opt("RuleAction").unwrap_or(&rule.action).to_string();
    let protocol = p.str_opt("Protocol").unwrap_or(&rule.protocol).to_string();
    let ip_version = p
        .str_opt("IpVersion")
        .unwrap_or(&rule.ip_version)
        .to_string();
    let src = p
        .str_opt("SourceCidrBlock")
        .unwrap_or(&rule.source_cidr)
        .to_string();
    let dst = p
        .str_opt("DestinationCidrBlock")
        .unwrap_or(&rule.destination_cidr)
        .to_string();
    let sp = p
        .str_opt("SourcePortRange")
        .unwrap_or(&rule.source_ports)
        .to_string();
    let dp = p
        .str_opt("DestinationPortRange")
        .unwrap_or(&rule.destination_ports)
        .to_string();
    let updated = RuleRecord::from_spec(&RuleSpec {
        id: rid,
        direction: &rule.direction.clone(),
        priority,
        action: &action,
        protocol: &protocol,
        ip_version: Some(&ip_version),
        source_cidr: Some(&src),
        destination_cidr: Some(&dst),
        source_ports: Some(&sp),
        destination_ports: Some(&dp),
    })?;
    *rule = updated;
    check_rule_quota(svc, &f)?;
    f.updated_at = now_rfc3339();
    batch.put_filter(&f)?;
    touch_sessions_of_filter(snap, &f.id, batch)?;
    Ok(Outcome::empty())
}

fn list_filters(snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
    let ids = p.list("TrafficMirrorFilterIds")?;
    let name = p.str_opt("TrafficMirrorFilterName");
    let mut items: Vec<&FilterRecord> = snap
        .filters
        .iter()
        .filter(|f| ids.is_empty() || ids.contains(&f.id))
        .filter(|f| name.is_none_or(|n| f.name == n))
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let (items, meta) = page(items, p)?;
    let list: Vec<Value> = items.iter().map(|f| f.alibaba()).collect();
    Ok(merge(json!({"TrafficMirrorFilters": list}), meta))
}

// ---- targets --------------------------------------------------------------------------

fn create_target(svc: &Service, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
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
pub(super) fn alias_address(svc: &Service, id: &str) -> Option<std::net::IpAddr> {
    svc.aliases.get(id)?.parse().ok()
}

/// Alibaba names the target of a session by the ENI or SLB itself (`TrafficMirrorTargetId`
/// = `eni-…`/`lb-…`, `TrafficMirrorTargetType`); such an id becomes a target object the first
/// time a session uses it, at the address (or local interface) its alias names.
fn target_from_alias(svc: &Service, p: &Params, id: &str) -> Result<TargetRecord, ApiError> {
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

fn update_target(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
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

fn delete_target(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
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

fn list_targets(snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
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

// ---- sessions -------------------------------------------------------------------------

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

fn create_session(
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
    let materialized;
    let target = match snap.target(target_id) {
        Some(t) => t,
        None if target_id.starts_with("tmt-") => return Err(target_not_found(target_id)),
        None => {
            materialized = target_from_alias(svc, p, target_id)?;
            batch.put_target(&materialized)?;
            &materialized
        }
    };
    check_source_quota(svc, sources.len())?;
    for s in &sources {
        check_source(svc, Some(target), s)?;
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
                .is_some_and(|v| v.starts_with(super::render::VOLCENGINE_VERSION))
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
    Ok(Outcome {
        body: json!({"TrafficMirrorSessionId": id}),
        session: Some((id, 1)),
    })
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

fn update_session(
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
        let materialized;
        let target = match snap.target(t) {
            Some(target) => target,
            None if t.starts_with("tmt-") => return Err(target_not_found(t)),
            None => {
                materialized = target_from_alias(svc, p, t)?;
                batch.put_target(&materialized)?;
                &materialized
            }
        };
        for src in &s.sources {
            check_source(svc, Some(target), src)?;
        }
        s.target_id = t.to_string();
    }
    batch.put_session(&s)?;
    Ok(Outcome {
        body: json!({}),
        session: Some((s.id.clone(), s.generation)),
    })
}

fn delete_session(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
    let mut s = cur.clone();
    s.generation += 1;
    s.state = SessionState::Deleting;
    s.updated_at = now_rfc3339();
    batch.put_session(&s)?;
    Ok(Outcome {
        body: json!({}),
        session: Some((s.id.clone(), s.generation)),
    })
}

fn add_sources(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let sources = sources_param(p)?;
    if sources.is_empty() {
        return Err(ApiError::missing("TrafficMirrorSourceIds.N"));
    }
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
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
    check_sessions_per_source(snap, id, &sources)?;
    let mut s = begin_change(cur);
    s.sources.extend(sources);
    batch.put_session(&s)?;
    Ok(Outcome {
        body: json!({}),
        session: Some((s.id.clone(), s.generation)),
    })
}

fn remove_sources(snap: &Snapshot, p: &Params, batch: &mut Batch) -> Result<Outcome, ApiError> {
    let id = p.required("TrafficMirrorSessionId")?;
    let sources = sources_param(p)?;
    if sources.is_empty() {
        return Err(ApiError::missing("TrafficMirrorSourceIds.N"));
    }
    let cur = snap.session(id).ok_or_else(|| session_not_found(id))?;
    check_settled(cur)?;
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
    batch.put_session(&s)?;
    Ok(Outcome {
        body: json!({}),
        session: Some((s.id.clone(), s.generation)),
    })
}

pub fn target_type(snap: &Snapshot, s: &SessionRecord) -> String {
    snap.target(&s.target_id)
        .map_or("NetworkInterface".to_string(), |t| t.instance_type.clone())
}

fn list_sessions(svc: &Service, snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
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
