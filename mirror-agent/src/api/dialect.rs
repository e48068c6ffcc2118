//! The clouds' own spellings of the same operations, mapped onto the one set of actions so
//! every SDK reaches the same store: Volcengine's `Describe*`/`Modify*Attributes` family and
//! its one-rule calls (`Policy`, `TrafficDirection`), and Alibaba's flow-log parameter names
//! (`ProjectName`/`LogStoreName`, `NetworkInterface`/`VSwitch`/`VPC`). Answers are reshaped
//! back into the fields each SDK's response model declares. Alibaba's own shapes (nested
//! flow-log lists, counts as strings) answer requests that name its VPC API version
//! (`Version=2016-04-28`, as both of its SDKs do); without a version the agent keeps its
//! flat shapes, which its CLI and existing scripts read.

use serde_json::{Map, Value, json};

use super::{ApiError, actions::Action, render::Envelope, rpc::Params};
use crate::service::Service;

/// How to turn the canonical action's answer into the one the caller's SDK expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reshape {
    None,
    VolcSessions,
    VolcFilters,
    VolcTargets,
    VolcRuleId,
    AlibabaFlowLogs,
    AlibabaCounts,
}

/// The API version Alibaba's VPC SDKs name.
pub const ALIBABA_VPC_VERSION: &str = "2016-04-28";

/// The canonical action for `action`, with `params` rewritten in place.
pub fn translate(
    svc: &Service,
    env: &Envelope,
    action: &str,
    p: &mut Params,
) -> Result<(String, Reshape), ApiError> {
    let alibaba = matches!(env, Envelope::Alibaba { .. });
    let alibaba_vpc = alibaba && p.get("Version") == Some(ALIBABA_VPC_VERSION);
    let (canonical, reshape) = match action {
        "DescribeTrafficMirrorSessions" => {
            p.rename("NetworkInterfaceId", "TrafficMirrorSourceId");
            single_name(p, "TrafficMirrorSessionNames", "TrafficMirrorSessionName");
            (
                Action::ListTrafficMirrorSessions.name(),
                Reshape::VolcSessions,
            )
        }
        "DescribeTrafficMirrorFilters" => {
            single_name(p, "TrafficMirrorFilterNames", "TrafficMirrorFilterName");
            (
                Action::ListTrafficMirrorFilters.name(),
                Reshape::VolcFilters,
            )
        }
        "DescribeTrafficMirrorTargets" => (
            Action::ListTrafficMirrorTargets.name(),
            Reshape::VolcTargets,
        ),
        "ModifyTrafficMirrorSessionAttributes" => (
            Action::UpdateTrafficMirrorSessionAttribute.name(),
            Reshape::None,
        ),
        "ModifyTrafficMirrorFilterAttributes" => (
            Action::UpdateTrafficMirrorFilterAttribute.name(),
            Reshape::None,
        ),
        "ModifyTrafficMirrorTargetAttributes" => (
            Action::UpdateTrafficMirrorTargetAttribute.name(),
            Reshape::None,
        ),
        "CreateTrafficMirrorFilterRule" => {
            let list = match p
                .str_opt("TrafficDirection")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("ingress") => "IngressRules",
                Some("egress") => "EgressRules",
                Some(other) => {
                    return Err(ApiError::bad(
                        "InvalidTrafficDirection.Malformed",
                        format!(
                            "The specified TrafficDirection {other:?} is not ingress or egress."
                        ),
                    ));
                }
                None => return Err(ApiError::missing("TrafficDirection")),
            };
            p.remove("TrafficDirection");
            // `Action` is the API action's own parameter: the policy goes straight into the rule.
            p.rename("Policy", &format!("{list}.1.Action"));
            for field in [
                "Priority",
                "Protocol",
                "SourceCidrBlock",
                "DestinationCidrBlock",
                "SourcePortRange",
                "DestinationPortRange",
            ] {
                p.rename(field, &format!("{list}.1.{field}"));
            }
            // A rule has no description of its own here.
            p.remove("Description");
            (
                Action::CreateTrafficMirrorFilterRules.name(),
                Reshape::VolcRuleId,
            )
        }
        "DeleteTrafficMirrorFilterRule" => {
            let rule = p.required("TrafficMirrorFilterRuleId")?.to_string();
            let snap = svc.snapshot()?;
            let filter = snap
                .filters
                .iter()
                .find(|f| f.rules.iter().any(|r| r.id == rule))
                .ok_or_else(|| {
                    ApiError::bad(
                        "ResourceNotFound.TrafficMirrorFilterRule",
                        format!(
                            "The specified resource of traffic mirror filter rule is not found: {rule}"
                        ),
                    )
                })?;
            p.set("TrafficMirrorFilterId", &filter.id);
            p.remove("TrafficMirrorFilterRuleId");
            p.set("TrafficMirrorFilterRuleIds.1", &rule);
            (Action::DeleteTrafficMirrorFilterRules.name(), Reshape::None)
        }
        "ModifyTrafficMirrorFilterRuleAttributes" => {
            p.rename("Policy", "RuleAction");
            // The direction of a rule is fixed when it is made.
            p.remove("TrafficDirection");
            p.remove("Description");
            (
                Action::UpdateTrafficMirrorFilterRuleAttribute.name(),
                Reshape::None,
            )
        }
        "CreateFlowLog" if alibaba => {
            alibaba_flow_log_params(p);
            (Action::CreateFlowLog.name(), Reshape::None)
        }
        "DescribeFlowLogs" if alibaba => {
            alibaba_flow_log_params(p);
            if let Some(id) = p.remove("FlowLogId") {
                p.set("FlowLogIds.1", &id);
            }
            let shape = if alibaba_vpc {
                Reshape::AlibabaFlowLogs
            } else {
                Reshape::None
            };
            (Action::DescribeFlowLogs.name(), shape)
        }
        "ListTrafficMirrorFilters" | "ListTrafficMirrorSessions" if alibaba_vpc => {
            (action, Reshape::AlibabaCounts)
        }
        other => (other, Reshape::None),
    };
    Ok((canonical.to_string(), reshape))
}

/// A one-item `Names.1` list is the single-name filter of the canonical list action.
fn single_name(p: &mut Params, list: &str, single: &str) {
    if p.get(&format!("{list}.2")).is_none() {
        p.rename(&format!("{list}.1"), single);
    }
}

fn alibaba_flow_log_params(p: &mut Params) {
    p.rename("ProjectName", "LogProjectName");
    p.rename("LogStoreName", "LogTopicName");
    if let Some(kind) = p.get("ResourceType") {
        let canonical = match kind.to_ascii_lowercase().as_str() {
            "networkinterface" => "eni",
            "vswitch" => "subnet",
            _ => "",
        };
        if !canonical.is_empty() {
            p.set("ResourceType", canonical);
        }
    }
}

fn copy(o: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = o.get(from).cloned() {
        o.insert(to.to_string(), v);
    }
}

fn each(body: &mut Value, list: &str, f: impl Fn(&mut Map<String, Value>)) {
    if let Some(items) = body.get_mut(list).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

/// Volcengine's states: `Available` where Alibaba says `Created`.
fn volc_status(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str) {
        Some("Created") | None => json!("Available"),
        Some(s) => json!(s),
    }
}

fn volc_rule(r: &mut Map<String, Value>) {
    let policy = match r.get("Action").and_then(Value::as_str) {
        Some("drop") | Some("reject") => "reject",
        _ => "accept",
    };
    r.insert("Policy".into(), json!(policy));
    r.insert("Status".into(), json!("Available"));
    r.entry("Description").or_insert(json!(""));
}

pub fn reshape(how: Reshape, mut body: Value) -> Value {
    match how {
        Reshape::None => {}
        Reshape::VolcSessions => each(&mut body, "TrafficMirrorSessions", |s| {
            copy(s, "TrafficMirrorSessionDescription", "Description");
            let status = volc_status(s.get("TrafficMirrorSessionStatus"));
            s.insert("Status".into(), status);
            copy(s, "TrafficMirrorSessionBusinessStatus", "BusinessStatus");
            copy(s, "CreationTime", "CreatedAt");
            copy(s, "UpdateTime", "UpdatedAt");
        }),
        Reshape::VolcFilters => each(&mut body, "TrafficMirrorFilters", |f| {
            copy(f, "TrafficMirrorFilterDescription", "Description");
            let status = volc_status(f.get("TrafficMirrorFilterStatus"));
            f.insert("Status".into(), status);
            copy(f, "CreationTime", "CreatedAt");
            copy(f, "CreationTime", "UpdatedAt");
            for (from, to) in [
                ("IngressRules", "IngressFilterRules"),
                ("EgressRules", "EgressFilterRules"),
            ] {
                let mut rules = f.get(from).cloned().unwrap_or_else(|| json!([]));
                if let Some(list) = rules.as_array_mut() {
                    for r in list.iter_mut().filter_map(Value::as_object_mut) {
                        volc_rule(r);
                    }
                }
                f.insert(to.into(), rules);
            }
        }),
        Reshape::VolcTargets => each(&mut body, "TrafficMirrorTargets", |t| {
            let status = volc_status(t.get("Status"));
            t.insert("Status".into(), status);
            copy(t, "CreationTime", "CreatedAt");
            copy(t, "CreationTime", "UpdatedAt");
        }),
        Reshape::VolcRuleId => {
            let id = ["IngressRules", "EgressRules"]
                .iter()
                .filter_map(|l| body.get(l)?.get(0)?.get("InstanceId").cloned())
                .next();
            body = json!({"TrafficMirrorFilterRuleId": id});
        }
        Reshape::AlibabaCounts => {
            if let Some(o) = body.as_object_mut()
                && let Some(n) = o.get("TotalCount").and_then(Value::as_i64)
            {
                // Alibaba declares the count a string.
                o.insert("TotalCount".into(), json!(n.to_string()));
            }
        }
        Reshape::AlibabaFlowLogs => {
            let mut list = body
                .get_mut("FlowLogs")
                .map(Value::take)
                .unwrap_or_else(|| json!([]));
            if let Some(items) = list.as_array_mut() {
                for f in items.iter_mut().filter_map(Value::as_object_mut) {
                    copy(f, "LogProjectName", "ProjectName");
                    copy(f, "LogTopicName", "LogStoreName");
                    copy(f, "CreatedAt", "CreationTime");
                    let kind = match f.get("ResourceType").and_then(Value::as_str) {
                        Some("eni") => Some("NetworkInterface"),
                        Some("subnet") => Some("VSwitch"),
                        Some("vpc") => Some("VPC"),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        f.insert("ResourceType".into(), json!(kind));
                    }
                }
            }
            if let Some(o) = body.as_object_mut() {
                o.insert("FlowLogs".into(), json!({"FlowLog": list}));
                o.insert("Success".into(), json!("true"));
                for k in ["TotalCount", "PageNumber", "PageSize"] {
                    // Alibaba declares these as strings.
                    if let Some(v) = o.get(k).and_then(Value::as_i64) {
                        o.insert(k.into(), json!(v.to_string()));
                    }
                }
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_answer_names_the_rule() {
        let body = json!({"IngressRules": [{"InstanceId": "tmr-1"}], "EgressRules": []});
        assert_eq!(
            reshape(Reshape::VolcRuleId, body),
            json!({"TrafficMirrorFilterRuleId": "tmr-1"})
        );
    }

    #[test]
    fn filters_gain_volcengine_rules() {
        let body = json!({"TrafficMirrorFilters": [{"TrafficMirrorFilterStatus": "Created",
            "IngressRules": [{"Action": "drop", "Priority": 1}]}]});
        let out = reshape(Reshape::VolcFilters, body);
        let f = &out["TrafficMirrorFilters"][0];
        assert_eq!(f["Status"], "Available");
        assert_eq!(f["IngressFilterRules"][0]["Policy"], "reject");
        assert_eq!(f["EgressFilterRules"], json!([]));
    }

    #[test]
    fn alibaba_flow_logs_nest() {
        let body =
            json!({"FlowLogs": [{"LogProjectName": "p", "ResourceType": "eni"}], "TotalCount": 1});
        let out = reshape(Reshape::AlibabaFlowLogs, body);
        assert_eq!(out["FlowLogs"]["FlowLog"][0]["ProjectName"], "p");
        assert_eq!(
            out["FlowLogs"]["FlowLog"][0]["ResourceType"],
            "NetworkInterface"
        );
        assert_eq!(out["TotalCount"], "1");
    }
}
