//! The node's `MirrorNodeState`: one object per node, named after it, owned by its Node (so
//! it goes with the node), written by server-side apply (field manager `mirror-agent`) and
//! only when its content changes, never per packet; counters stay in Prometheus.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{
    crd::{GROUP, MirrorNodeState, NodeFlowLogState, NodeSessionState, NodeStateStatus, VERSION},
    plan::NodePlan,
};
use crate::{datapath::CopyPath, store::Snapshot};

pub const FIELD_MANAGER: &str = "mirror-agent";

/// What the node reports: per TrafficMirrorSession the resolved sources (pod → interface) of
/// its node sessions, the store's state (the worst of them), the copy path and the errors
/// (the planner's, the validation's and the reconciler's); sessions selected but not applied
/// are `NotApplied` with the reason. Per FlowLog: its interfaces (pod → interface), the
/// store's state and the errors (the planner's, the validation's, the reconciler's and the
/// sinks' `live` ones).
pub fn node_status(
    plan: &NodePlan,
    snap: &Snapshot,
    copy_paths: &BTreeMap<String, CopyPath>,
    live: &BTreeMap<String, Vec<String>>,
    connected: bool,
) -> NodeStateStatus {
    let mut by_name: BTreeMap<String, NodeSessionState> = BTreeMap::new();
    for p in &plan.sessions {
        let e = by_name
            .entry(p.name.clone())
            .or_insert_with(|| NodeSessionState {
                name: p.name.clone(),
                state: "Created".into(),
                ..Default::default()
            });
        e.sources.extend(p.sources.iter().cloned());
        e.errors.extend(p.errors.iter().cloned());
        match snap.session(&p.id) {
            Some(rec) => {
                if rec.state.as_str() != "Created" {
                    e.state = rec.state.as_str().into();
                }
                e.errors.extend(rec.errors.iter().cloned());
            }
            None => e.state = "NotApplied".into(),
        }
        if let Some(c) = copy_paths.get(&p.id)
            && !e.copy_path.split(',').any(|m| m == c.mode)
        {
            if !e.copy_path.is_empty() {
                e.copy_path.push(',');
            }
            e.copy_path.push_str(c.mode);
        }
        for (what, why) in &plan.problems {
            if what == &p.id {
                e.state = "NotApplied".into();
                e.errors.push(why.clone());
            }
        }
    }
    for (what, why) in &plan.problems {
        if let Some(name) = what.strip_prefix("TrafficMirrorSession/") {
            let e = by_name
                .entry(name.to_string())
                .or_insert_with(|| NodeSessionState {
                    name: name.to_string(),
                    ..Default::default()
                });
            e.state = "NotApplied".into();
            e.errors.push(why.clone());
        }
    }
    let sessions = by_name
        .into_values()
        .map(|mut s| {
            s.sources.sort();
            s.sources.dedup();
            s.errors.dedup();
            s
        })
        .collect();
    NodeStateStatus {
        sessions,
        flow_logs: flow_logs(plan, snap, live),
        connected,
    }
}

fn flow_logs(
    plan: &NodePlan,
    snap: &Snapshot,
    live: &BTreeMap<String, Vec<String>>,
) -> Vec<NodeFlowLogState> {
    let mut by_name: BTreeMap<String, NodeFlowLogState> = BTreeMap::new();
    for p in &plan.flow_logs {
        let mut e = NodeFlowLogState {
            name: p.name.clone(),
            state: "NotApplied".into(),
            interfaces: p.interfaces.clone(),
            errors: p.errors.clone(),
        };
        let dropped: Vec<&String> = plan
            .problems
            .iter()
            .filter(|(what, _)| what == &p.id)
            .map(|(_, why)| why)
            .collect();
        match snap.flow_log(&p.id) {
            Some(rec) if dropped.is_empty() => {
                e.state = rec.state.as_str().into();
                e.errors.extend(rec.errors.iter().cloned());
                e.errors
                    .extend(live.get(&p.id).into_iter().flatten().cloned());
            }
            _ => e.errors.extend(dropped.into_iter().cloned()),
        }
        by_name.insert(p.name.clone(), e);
    }
    // FlowLogs the planner could not plan (a bad selector).
    let unplanned = plan
        .problems
        .iter()
        .filter_map(|(what, why)| Some((what.strip_prefix("FlowLog/")?, why)));
    for (name, why) in unplanned {
        by_name
            .entry(name.to_string())
            .or_insert_with(|| NodeFlowLogState {
                name: name.to_string(),
                state: "NotApplied".into(),
                ..Default::default()
            })
            .errors
            .push(why.clone());
    }
    by_name
        .into_values()
        .map(|mut f| {
            f.errors.dedup();
            f
        })
        .collect()
}

/// The server-side apply body of the object itself: its spec and its owner, the Node.
pub fn object_patch(node: &Node) -> Value {
    let name = node.metadata.name.clone().unwrap_or_default();
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "MirrorNodeState",
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": name,
                "uid": node.metadata.uid.clone().unwrap_or_default(),
            }],
        },
        "spec": {"nodeName": name},
    })
}

/// The server-side apply body of a `kind` object's status subresource: only the status, so
/// the field manager owns nothing else.
pub fn status_patch(kind: &str, name: &str, status: &impl serde::Serialize) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": name},
        "status": status,
    })
}

/// Writes the node's MirrorNodeState when it differs from what was last written.
pub struct StatusWriter {
    api: Api<MirrorNodeState>,
    node: String,
    /// The Node uid the object was applied with (a re-created Node gets a new owner).
    owner: Option<String>,
    last: Option<NodeStateStatus>,
}

#[derive(Debug, thiserror::Error)]
#[error("writing MirrorNodeState {name}: {source}")]
pub struct StatusError {
    name: String,
    source: kube::Error,
}

impl StatusWriter {
    pub fn new(client: Client, node: &str) -> StatusWriter {
        StatusWriter {
            api: Api::all(client),
            node: node.to_string(),
            owner: None,
            last: None,
        }
    }

    /// Applies the object (once per Node uid) and its status (when changed). Returns whether
    /// anything was sent. A failure is retried at the next call.
    pub async fn write(
        &mut self,
        node: &Node,
        status: NodeStateStatus,
    ) -> Result<bool, StatusError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let name = self.node.clone();
        let err = |source| StatusError {
            name: name.clone(),
            source,
        };
        let mut sent = false;
        if self.owner.is_none() || self.owner != node.metadata.uid {
            self.api
                .patch(&self.node, &params, &Patch::Apply(object_patch(node)))
                .await
                .map_err(err)?;
            self.owner = node.metadata.uid.clone();
            // A new object has no status yet.
            self.last = None;
            sent = true;
        }
        if self.last.as_ref() != Some(&status) {
            self.api
                .patch_status(
                    &self.node,
                    &params,
                    &Patch::Apply(status_patch("MirrorNodeState", &self.node, &status)),
                )
                .await
                .map_err(err)?;
            self.last = Some(status);
            sent = true;
        }
        Ok(sent)
    }
}
