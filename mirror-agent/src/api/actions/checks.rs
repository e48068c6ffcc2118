//! Checks and helpers shared by the actions of every object kind (and by flow logs and
//! receivers): names, descriptions, tags, quotas, paging.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    api::{ApiError, rpc::Params},
    model::RuleSpec,
    records::{FilterRecord, RuleRecord, SessionRecord, SessionState, Tag, new_id},
    service::Service,
    store::Snapshot,
};

pub(in crate::api) fn check_name(param: &str, v: Option<&str>) -> Result<String, ApiError> {
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

pub(in crate::api) fn check_description(param: &str, v: Option<&str>) -> Result<String, ApiError> {
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

pub(in crate::api) fn tags(p: &Params) -> Result<Vec<Tag>, ApiError> {
    Ok(p.tags()?
        .into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect())
}

/// Objects from Kubernetes are the cluster's: changed here, the node controller would
/// rewrite them at its next plan, so the API refuses to change them (`kubectl` changes them).
pub(super) fn check_not_kubernetes(snap: &Snapshot, p: &Params) -> Result<(), ApiError> {
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

pub(super) fn filter_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorFilter",
        format!("The specified resource of traffic mirror filter is not found: {id}"),
    )
}

pub(super) fn session_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorSession",
        format!("The specified resource of traffic mirror session is not found: {id}"),
    )
}

pub(super) fn target_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorTarget",
        format!("The specified resource of traffic mirror target is not found: {id}"),
    )
}

pub(super) fn rule_not_found(id: &str) -> ApiError {
    ApiError::bad(
        "ResourceNotFound.TrafficMirrorFilterRule",
        format!("The specified resource of traffic mirror filter rule is not found: {id}"),
    )
}

/// Modifying and Deleting sessions take no other change until they settle (the seeds' "you
/// cannot repeatedly call … within a period of time").
pub(super) fn check_settled(s: &SessionRecord) -> Result<(), ApiError> {
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

pub(super) fn check_rule_quota(svc: &Service, f: &FilterRecord) -> Result<(), ApiError> {
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
pub(super) fn rules_from(p: &Params) -> Result<Vec<RuleRecord>, ApiError> {
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

pub(super) fn rule_ids_body(rules: &[RuleRecord]) -> Value {
    let ids = |dir: &str| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| r.direction == dir)
            .map(|r| json!({"InstanceId": r.id}))
            .collect()
    };
    json!({"IngressRules": ids("ingress"), "EgressRules": ids("egress")})
}

pub(in crate::api) fn page<T>(items: Vec<T>, p: &Params) -> Result<(Vec<T>, Value), ApiError> {
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

pub(in crate::api) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}
