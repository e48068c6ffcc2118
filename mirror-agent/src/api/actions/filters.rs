//! Filter and filter-rule actions.

use serde_json::{Value, json};

use super::{
    Outcome,
    checks::{
        check_description, check_name, check_rule_quota, filter_not_found, merge, page,
        rule_ids_body, rule_not_found, rules_from, tags,
    },
};
use crate::{
    api::{ApiError, rpc::Params},
    model::RuleSpec,
    records::{FilterRecord, Origin, RuleRecord, new_id, now_rfc3339},
    service::Service,
    store::{Batch, Kind, Snapshot},
};

pub(super) fn create_filter(
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

pub(super) fn delete_filter(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
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

pub(super) fn update_filter(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
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

pub(super) fn create_rules(
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
    batch.touch_sessions_of_filter(snap, id)?;
    let body = merge(
        json!({"TrafficMirrorFilterId": f.id}),
        rule_ids_body(&rules),
    );
    Ok(Outcome::body(body))
}

pub(super) fn delete_rules(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
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
    batch.touch_sessions_of_filter(snap, id)?;
    Ok(Outcome::empty())
}

pub(super) fn update_rule(
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
    // Parameters not given keep the rule's value.
    let given = |param: &str, current: &str| p.str_opt(param).unwrap_or(current).to_string();
    // `Action` is the RPC action's name here; the rule's action is `RuleAction`.
    let action = given("RuleAction", &rule.action);
    let protocol = given("Protocol", &rule.protocol);
    let ip_version = given("IpVersion", &rule.ip_version);
    let src = given("SourceCidrBlock", &rule.source_cidr);
    let dst = given("DestinationCidrBlock", &rule.destination_cidr);
    let sp = given("SourcePortRange", &rule.source_ports);
    let dp = given("DestinationPortRange", &rule.destination_ports);
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
    batch.touch_sessions_of_filter(snap, &f.id)?;
    Ok(Outcome::empty())
}

pub(super) fn list_filters(snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
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
