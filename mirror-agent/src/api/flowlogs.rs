//! Flow-log actions (Volcengine seed 004): CreateFlowLog, DeleteFlowLog, DescribeFlowLogs,
//! ModifyFlowLogAttribute, ActiveFlowLog, DeactiveFlowLog.

use serde_json::{Value, json};

use super::{
    ApiError,
    actions::{Action, Outcome, unknown_action},
    rpc::Params,
};
use crate::{
    flowlog::format::{DEFAULT_FORMAT, LogFormat},
    links,
    records::{FlowLogRecord, FlowLogState, Tag, new_id, now_rfc3339},
    service::Service,
    store::{Batch, Snapshot},
};

pub fn mutate(
    svc: &Service,
    snap: &Snapshot,
    action: Action,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    match action {
        Action::CreateFlowLog => create(svc, snap, p, batch),
        Action::DeleteFlowLog => change(snap, p, batch, |f| {
            f.state = FlowLogState::Deleting;
            Ok(())
        }),
        Action::ActiveFlowLog => change(snap, p, batch, |f| {
            f.wanted_active = true;
            Ok(())
        }),
        Action::DeactiveFlowLog => change(snap, p, batch, |f| {
            f.wanted_active = false;
            Ok(())
        }),
        Action::ModifyFlowLogAttribute => change(snap, p, batch, |f| {
            if let Some(n) = p.get("FlowLogName") {
                f.name = name(Some(n))?;
            }
            if let Some(d) = p.get("Description") {
                f.description = description(Some(d))?;
            }
            if let Some(i) = interval(p)? {
                f.aggregation_interval = i;
            }
            if let Some(s) = interval_seconds(p)? {
                f.interval_seconds = Some(s);
            }
            if let Some(format) = log_format(p)? {
                f.log_format = format;
            }
            Ok(())
        }),
        other => Err(unknown_action(other.name())),
    }
}

pub(crate) fn name(v: Option<&str>) -> Result<String, ApiError> {
    let v = v.unwrap_or_default();
    let n = v.chars().count();
    if n == 0 || n > 128 || v.starts_with("http://") || v.starts_with("https://") {
        return Err(ApiError::bad(
            "InvalidName.Malformed",
            "The specified name is malformed. Ensure the maximum length of name is 128.",
        ));
    }
    Ok(v.to_string())
}

fn description(v: Option<&str>) -> Result<String, ApiError> {
    let v = v.unwrap_or_default();
    if v.chars().count() > 255 || v.contains(['<', '>']) {
        return Err(ApiError::bad(
            "InvalidDescription.Malformed",
            "The specified description is malformed. Ensure the maximum length of description is 255.",
        ));
    }
    Ok(v.to_string())
}

fn interval(p: &Params) -> Result<Option<u32>, ApiError> {
    p.int(
        "AggregationInterval",
        "InvalidParameter.FlowLogAggregationInterval",
    )?
    .map(check_interval)
    .transpose()
}

/// AggregationInterval in minutes: 1, 5 or 10.
pub(crate) fn check_interval(v: i64) -> Result<u32, ApiError> {
    match v {
        1 | 5 | 10 => Ok(v as u32),
        _ => Err(ApiError::bad(
            "InvalidParameter.FlowLogAggregationInterval",
            "The specified aggregation interval is invalid: 1, 5 or 10 (minutes).",
        )),
    }
}

/// Our extension for tests and demos: the interval in seconds.
fn interval_seconds(p: &Params) -> Result<Option<u32>, ApiError> {
    match p.int(
        "AggregationIntervalSeconds",
        "InvalidParameter.FlowLogAggregationInterval",
    )? {
        None => Ok(None),
        Some(v @ 1..=600) => Ok(Some(v as u32)),
        Some(_) => Err(ApiError::bad(
            "InvalidParameter.FlowLogAggregationInterval",
            "The specified AggregationIntervalSeconds is invalid: 1-600.",
        )),
    }
}

/// AWS's `LogFormat` (our extension of the Volcengine API): `Some(None)` is AWS's default
/// format, which is also what an empty value asks for on ModifyFlowLogAttribute.
fn log_format(p: &Params) -> Result<Option<Option<String>>, ApiError> {
    p.get("LogFormat").map(check_log_format).transpose()
}

/// A LogFormat as stored: `None` for AWS's default format (or an empty value).
pub(crate) fn check_log_format(v: &str) -> Result<Option<String>, ApiError> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    let parsed = LogFormat::parse(v)
        .map_err(|e| ApiError::bad("InvalidParameter.LogFormat", e.to_string()))?;
    let text = parsed.text();
    Ok((text != DEFAULT_FORMAT).then_some(text))
}

/// Project and topic names become directories: letters, digits, `-`, `_`, `.`, 2-64 chars.
pub(crate) fn log_name(param: &str, v: &str) -> Result<String, ApiError> {
    let ok = (2..=64).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !v.starts_with('.');
    if !ok {
        return Err(ApiError::bad(
            "InvalidParameter",
            format!("The specified {param} is invalid: 2-64 letters, digits, '-', '_', '.'."),
        ));
    }
    Ok(v.to_string())
}

/// Checks that the resource exists now.
fn check_resource(svc: &Service, kind: &str, id: &str) -> Result<(), ApiError> {
    let found = match kind {
        "eni" => svc.resolve_interface(id).is_some(),
        "subnet" => id.parse::<ipnet::IpNet>().is_ok(),
        "vpc" => true,
        _ => false,
    };
    if found {
        return Ok(());
    }
    if kind == "subnet" {
        return Err(ApiError::bad(
            "InvalidParameter.FlowLogInvalidResource",
            format!("A subnet resource is a CIDR block here, such as 10.0.0.0/24: {id:?}."),
        ));
    }
    Err(ApiError::new(
        404,
        "InvalidResource.NotFound",
        format!("The specified resource {id} does not exist."),
    ))
}

fn create(
    svc: &Service,
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
) -> Result<Outcome, ApiError> {
    let name = name(Some(p.required("FlowLogName")?))?;
    let description = description(p.get("Description"))?;
    let kind = p.required("ResourceType")?.to_ascii_lowercase();
    if !matches!(kind.as_str(), "eni" | "subnet" | "vpc") {
        return Err(ApiError::bad(
            "InvalidResourceType.Malformed",
            "The specified parameter resource type is invalid: vpc, subnet or eni.",
        ));
    }
    let resource = p.required("ResourceId")?.to_string();
    let traffic = match p.required("TrafficType")?.to_ascii_lowercase().as_str() {
        "all" => "All",
        "allow" => "Allow",
        "drop" => "Drop",
        _ => {
            return Err(ApiError::bad(
                "InvalidParameter.FlowLogTrafficType",
                "The specified traffic type is invalid: All, Allow or Drop.",
            ));
        }
    };
    let project = log_name("LogProjectName", p.required("LogProjectName")?)?;
    let topic = log_name("LogTopicName", p.required("LogTopicName")?)?;
    let aggregation = interval(p)?.unwrap_or(10);
    let seconds = interval_seconds(p)?;
    let format = log_format(p)?.flatten();
    let tags: Vec<Tag> = p
        .tags()?
        .into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect();
    check_resource(svc, &kind, &resource)?;
    if snap.flow_logs.iter().any(|f| {
        f.state != FlowLogState::Deleting && f.resource_type == kind && f.resource_id == resource
    }) {
        return Err(ApiError::bad(
            "InvalidParameter.FlowLogResourceAlreadyBound",
            "The specified resource is already bound to a flow log.",
        ));
    }
    check_topic_free(snap, &project, &topic, |_| true)?;
    let now = now_rfc3339();
    let f = FlowLogRecord {
        id: new_id("fl"),
        name,
        description,
        resource_type: kind,
        resource_id: resource,
        interfaces: Vec::new(),
        traffic_type: traffic.to_string(),
        log_project: project,
        log_topic: topic,
        aggregation_interval: aggregation,
        interval_seconds: seconds,
        log_format: format,
        state: FlowLogState::Creating,
        wanted_active: true,
        generation: 1,
        errors: Vec::new(),
        tags,
        origin: crate::records::Origin::Api,
        created_at: now.clone(),
        updated_at: now,
    };
    batch.put_flow_log(&f)?;
    Ok(Outcome::tracking(
        json!({"FlowLogId": f.id}),
        &f.id,
        f.generation,
    ))
}

/// Two live flow logs never write to one topic (one directory of files). `counts` picks the
/// flow logs to compare against (the node controller leaves out its own, which it rewrites).
pub(crate) fn check_topic_free(
    snap: &Snapshot,
    project: &str,
    topic: &str,
    counts: impl Fn(&FlowLogRecord) -> bool,
) -> Result<(), ApiError> {
    if snap.flow_logs.iter().any(|f| {
        f.state != FlowLogState::Deleting
            && f.log_project == project
            && f.log_topic == topic
            && counts(f)
    }) {
        return Err(ApiError::bad(
            "InvalidParameter.TLSTopicExisted",
            "The specified topic name already exists.",
        ));
    }
    Ok(())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "InvalidFlowLog.NotFound",
        format!("The specified flow log {id} does not exist."),
    )
}

fn change(
    snap: &Snapshot,
    p: &Params,
    batch: &mut Batch,
    f: impl FnOnce(&mut FlowLogRecord) -> Result<(), ApiError>,
) -> Result<Outcome, ApiError> {
    let id = p.required("FlowLogId")?;
    let cur = snap.flow_log(id).ok_or_else(|| not_found(id))?;
    // The node controller would rewrite it at its next plan: `kubectl` changes it.
    if cur.origin == crate::records::Origin::Kubernetes {
        return Err(ApiError::bad(
            "OperationDenied.KubernetesObject",
            format!("{id} comes from Kubernetes custom resources and is read-only here"),
        ));
    }
    if matches!(cur.state, FlowLogState::Creating | FlowLogState::Deleting) {
        return Err(ApiError::new(
            409,
            "InvalidFlowLog.InvalidStatus",
            format!(
                "The flow log {id} is {} and cannot be changed now.",
                cur.state.as_str()
            ),
        ));
    }
    let mut rec = cur.clone();
    f(&mut rec)?;
    rec.generation += 1;
    rec.updated_at = now_rfc3339();
    batch.put_flow_log(&rec)?;
    Ok(Outcome::tracking(json!({}), &rec.id, rec.generation))
}

pub fn describe(svc: &Service, snap: &Snapshot, p: &Params) -> Result<Value, ApiError> {
    let live = svc
        .flow_log_status
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    let ids = p.list("FlowLogIds")?;
    let filters: Vec<(&str, Option<&str>)> = [
        "FlowLogName",
        "ResourceType",
        "ResourceId",
        "TrafficType",
        "LogProjectName",
        "LogTopicName",
        "Status",
    ]
    .iter()
    .map(|k| (*k, p.str_opt(k)))
    .collect();
    let page_number = p.int("PageNumber", "InvalidParameter")?.unwrap_or(1).max(1) as usize;
    let page_size = p
        .int("PageSize", "InvalidParameter")?
        .unwrap_or(20)
        .clamp(1, 100) as usize;
    let mut items: Vec<Value> = snap
        .flow_logs
        .iter()
        .filter(|f| ids.is_empty() || ids.contains(&f.id))
        .map(|f| {
            let mut v = f.volcengine();
            // What this node cannot record for it: the kernel gives no dropped packets.
            if let Some(why) = &svc.no_reject_records
                && !f.traffic_type.eq_ignore_ascii_case("allow")
            {
                v["Degradations"] = json!([format!("no REJECT records on this node: {why}")]);
            }
            // Sink problems are live state, not stored: merge them in.
            if let Some(errs) = live.get(&f.id) {
                let mut all = f.errors.clone();
                all.extend(errs.iter().cloned());
                v["Errors"] = json!(all);
                v["BusinessStatus"] = json!("Error");
            }
            v
        })
        .filter(|v| {
            filters.iter().all(|(k, want)| {
                want.is_none_or(|w| v[*k].as_str().is_some_and(|x| x.eq_ignore_ascii_case(w)))
            })
        })
        .collect();
    items.sort_by(|a, b| a["CreatedAt"].as_str().cmp(&b["CreatedAt"].as_str()));
    let total = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip((page_number - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(json!({
        "FlowLogs": page,
        "TotalCount": total,
        "PageNumber": page_number,
        "PageSize": page_size,
    }))
}

/// The interfaces a flow log covers now.
pub fn interfaces(
    f: &FlowLogRecord,
    svc_aliases: &std::collections::BTreeMap<String, String>,
    links_now: &[links::Link],
) -> Vec<String> {
    match f.resource_type.as_str() {
        "eni" => links::resolve(&f.resource_id, svc_aliases, links_now)
            .into_iter()
            .collect(),
        "subnet" => {
            let Ok(net) = f.resource_id.parse::<ipnet::IpNet>() else {
                return Vec::new();
            };
            links_now
                .iter()
                .filter(|l| !links::is_agent_device(&l.name))
                .filter(|l| {
                    links::interface_addresses(&l.name)
                        .iter()
                        .any(|a| net.contains(a))
                })
                .map(|l| l.name.clone())
                .collect()
        }
        "interfaces" | "node" => {
            let mut out: Vec<String> = if f.resource_type == "node" {
                all_interfaces(links_now)
            } else {
                Vec::new()
            };
            for spec in &f.interfaces {
                for n in links::expand(spec, svc_aliases, links_now) {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            out
        }
        _ => all_interfaces(links_now),
    }
}

/// A Kubernetes flow log's interfaces that match nothing now (a glob may match nothing).
pub fn missing_interfaces<'a>(
    f: &'a FlowLogRecord,
    svc_aliases: &std::collections::BTreeMap<String, String>,
    links_now: &[links::Link],
) -> impl Iterator<Item = &'a String> {
    f.interfaces.iter().filter(move |spec| {
        !links::is_glob(spec) && links::expand(spec, svc_aliases, links_now).is_empty()
    })
}

fn all_interfaces(links_now: &[links::Link]) -> Vec<String> {
    links_now
        .iter()
        .filter(|l| !links::is_agent_device(&l.name))
        .map(|l| l.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpc_flow_logs_leave_out_the_agents_own_devices() {
        let links: Vec<links::Link> = ["lo", "eth0", "mirvx4789", "mrx100", "mrx100-in", "mrxy"]
            .iter()
            .enumerate()
            .map(|(i, n)| links::Link {
                name: n.to_string(),
                index: i as u32 + 1,
                mac: None,
            })
            .collect();
        let f = FlowLogRecord {
            id: "fl-1".into(),
            name: "n".into(),
            description: String::new(),
            resource_type: "vpc".into(),
            resource_id: "vpc-1".into(),
            interfaces: Vec::new(),
            traffic_type: "All".into(),
            log_project: "p1".into(),
            log_topic: "t1".into(),
            aggregation_interval: 1,
            interval_seconds: None,
            log_format: None,
            state: FlowLogState::Active,
            wanted_active: true,
            generation: 1,
            errors: Vec::new(),
            tags: Vec::new(),
            origin: crate::records::Origin::Api,
            created_at: String::new(),
            updated_at: String::new(),
        };
        assert_eq!(
            interfaces(&f, &Default::default(), &links),
            vec!["eth0".to_string(), "mrxy".to_string()]
        );
    }
}
