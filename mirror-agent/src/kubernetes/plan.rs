//! What one node makes of the cluster's mirror resources: a pure function from (resources,
//! pods, namespaces, the node, its links) to the node's own objects, so that every rule of
//! selection is unit-tested without an API server or a kernel.
//!
//! Selection: an object with a `nodeSelector` applies where the node's labels match it (no
//! selector: every node). A session's `podSelector` picks this node's pods (spec.nodeName),
//! Running and Ready, not being deleted and not on the host network, in namespaces matching
//! `namespaceSelector` (absent: all). Each pod becomes its host-side interface (the veth the
//! pod's IP is routed to, or the bridge port behind which its MAC is: `hostnet`).
//!
//! Directions: a session's rules are written from its source's point of view. For a node
//! interface that is the kernel's view. A pod's host-side veth sees the pod's egress as its
//! ingress, so the pods of a session get a session of their own (`<id>-pods`) whose filter
//! (`<filter>-pods`) has the ingress and egress rules swapped: an ingress rule still matches
//! what the pod receives.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::ResourceExt as _;

use super::{
    crd::{
        FilterRule, FlowLog, Labels, ResolvedSource, TrafficMirrorFilter, TrafficMirrorReceiver,
        TrafficMirrorSession, TrafficMirrorTarget, TrafficType,
    },
    hostnet::HostNet,
    selector::{self, SelectorError},
};

/// Everything the planner reads.
pub struct World<'a> {
    pub node: Option<&'a Node>,
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    pub filters: &'a [TrafficMirrorFilter],
    pub targets: &'a [TrafficMirrorTarget],
    pub sessions: &'a [TrafficMirrorSession],
    pub receivers: &'a [TrafficMirrorReceiver],
    pub flow_logs: &'a [FlowLog],
    /// The host's routes, neighbours and bridge FDBs: pod IP → host interface.
    pub host: &'a HostNet,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub filters: Vec<PlannedFilter>,
    pub targets: Vec<PlannedTarget>,
    pub sessions: Vec<PlannedSession>,
    pub receivers: Vec<PlannedReceiver>,
    pub flow_logs: Vec<PlannedFlowLog>,
    /// Objects this node selected but cannot apply, as (kind/name, reason).
    pub problems: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFilter {
    pub id: String,
    pub ingress_rules: Vec<FilterRule>,
    pub egress_rules: Vec<FilterRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTarget {
    pub id: String,
    pub destination_ip: String,
    pub destination_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSession {
    pub id: String,
    /// The TrafficMirrorSession it comes from.
    pub name: String,
    pub priority: u32,
    pub virtual_network_id: u32,
    pub packet_length: Option<u32>,
    pub budget: crate::model::Budget,
    pub enabled: bool,
    pub filter_id: String,
    pub target_id: String,
    /// Interface names, aliases or globs (node interfaces) or resolved pod interfaces.
    pub sources: Vec<ResolvedSource>,
    /// Selected pods that have no interface here yet.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedReceiver {
    pub id: String,
    pub interface: String,
    pub destination_port: Option<u16>,
    pub virtual_network_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFlowLog {
    pub id: String,
    /// The FlowLog it comes from.
    pub name: String,
    /// Every non-loopback interface of the node.
    pub node: bool,
    pub interfaces: Vec<ResolvedSource>,
    /// Selected pods that have no interface here yet (the flow log applies without them).
    pub errors: Vec<String>,
    pub traffic_type: TrafficType,
    pub aggregation_interval: u32,
    pub log_format: Option<String>,
    pub log_project_name: String,
    pub log_topic_name: String,
}

pub fn session_id(name: &str) -> String {
    format!("tms-k8s-{name}")
}
pub fn filter_id(name: &str) -> String {
    format!("tmf-k8s-{name}")
}
pub fn target_id(name: &str) -> String {
    format!("tmt-k8s-{name}")
}
pub fn receiver_id(name: &str) -> String {
    format!("tmrcv-k8s-{name}")
}
pub fn flow_log_id(name: &str) -> String {
    format!("fl-k8s-{name}")
}

const PODS: &str = "-pods";

fn node_selected(w: &World, sel: Option<&LabelSelector>) -> Result<bool, SelectorError> {
    let Some(sel) = sel else {
        return Ok(true);
    };
    let empty = Labels::new();
    let labels = w
        .node
        .and_then(|n| n.metadata.labels.as_ref())
        .unwrap_or(&empty);
    selector::matches(sel, labels)
}

fn pod_ready(p: &Pod) -> bool {
    let Some(status) = &p.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// This node's pods matching the selectors, as their host interfaces (sorted by pod), and an
/// error for each selected pod whose IP has no interface here.
fn pods(
    w: &World,
    pod_sel: &LabelSelector,
    ns_sel: Option<&LabelSelector>,
) -> Result<(Vec<ResolvedSource>, Vec<String>), SelectorError> {
    let node_name = w.node.map(|n| n.name_any()).unwrap_or_default();
    let empty = Labels::new();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for p in w.pods {
        let spec = p.spec.as_ref();
        if spec.and_then(|s| s.node_name.as_deref()) != Some(node_name.as_str())
            || p.metadata.deletion_timestamp.is_some()
            || spec.and_then(|s| s.host_network) == Some(true)
            || !pod_ready(p)
        {
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        if let Some(ns_sel) = ns_sel {
            let Some(n) = w.namespaces.iter().find(|n| n.name_any() == ns) else {
                continue;
            };
            if !selector::matches(ns_sel, n.metadata.labels.as_ref().unwrap_or(&empty))? {
                continue;
            }
        }
        if !selector::matches(pod_sel, p.metadata.labels.as_ref().unwrap_or(&empty))? {
            continue;
        }
        let pod = format!("{ns}/{}", p.name_any());
        let ips: Vec<IpAddr> = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        match w.host.interface_of(&ips) {
            Ok(interface) => found.push(ResolvedSource {
                interface,
                pod: Some(pod),
            }),
            Err(why) => errors.push(format!("pod {pod}: {why}")),
        }
    }
    found.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok((found, errors))
}

fn swapped(f: &PlannedFilter) -> PlannedFilter {
    PlannedFilter {
        id: format!("{}{PODS}", f.id),
        ingress_rules: f.egress_rules.clone(),
        egress_rules: f.ingress_rules.clone(),
    }
}

pub fn plan(w: &World) -> NodePlan {
    let mut out = NodePlan::default();
    let mut filters: BTreeMap<String, PlannedFilter> = BTreeMap::new();
    let mut targets: BTreeMap<String, PlannedTarget> = BTreeMap::new();
    let mut sessions: Vec<&TrafficMirrorSession> = w.sessions.iter().collect();
    sessions.sort_by_key(|s| s.name_any());
    for s in sessions {
        let name = s.name_any();
        let what = format!("TrafficMirrorSession/{name}");
        match node_selected(w, s.spec.node_selector.as_ref()) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                out.problems.push((what, e.to_string()));
                continue;
            }
        }
        let Some(filter) = w.filters.iter().find(|f| f.name_any() == s.spec.filter_ref) else {
            out.problems.push((
                what,
                format!("TrafficMirrorFilter {} not found", s.spec.filter_ref),
            ));
            continue;
        };
        let Some(target) = w.targets.iter().find(|t| t.name_any() == s.spec.target_ref) else {
            out.problems.push((
                what,
                format!("TrafficMirrorTarget {} not found", s.spec.target_ref),
            ));
            continue;
        };
        let src = &s.spec.sources;
        let selected = match &src.pod_selector {
            Some(sel) => match pods(w, sel, src.namespace_selector.as_ref()) {
                Ok(found) => Some(found),
                Err(e) => {
                    out.problems.push((what, e.to_string()));
                    continue;
                }
            },
            None => None,
        };
        let planned_filter = PlannedFilter {
            id: filter_id(&filter.name_any()),
            ingress_rules: filter.spec.ingress_rules.clone(),
            egress_rules: filter.spec.egress_rules.clone(),
        };
        let tid = target_id(&target.name_any());
        targets.entry(tid.clone()).or_insert_with(|| PlannedTarget {
            id: tid.clone(),
            destination_ip: target.spec.destination_ip.clone(),
            destination_port: target.spec.destination_port,
        });
        let base = PlannedSession {
            id: session_id(&name),
            name: name.clone(),
            priority: s.spec.priority,
            virtual_network_id: s.spec.virtual_network_id,
            packet_length: s.spec.packet_length,
            budget: s.spec.budget(),
            enabled: s.spec.enabled,
            filter_id: planned_filter.id.clone(),
            target_id: tid,
            sources: Vec::new(),
            errors: Vec::new(),
        };
        if !src.interfaces.is_empty() || selected.is_none() {
            let mut interfaces = base.clone();
            interfaces.sources = src
                .interfaces
                .iter()
                .map(|i| ResolvedSource {
                    interface: i.clone(),
                    pod: None,
                })
                .collect();
            out.sessions.push(interfaces);
            filters
                .entry(planned_filter.id.clone())
                .or_insert_with(|| planned_filter.clone());
        }
        if let Some((sources, errors)) = selected {
            let f = swapped(&planned_filter);
            let mut p = base;
            p.id = format!("{}{PODS}", p.id);
            p.filter_id = f.id.clone();
            p.sources = sources;
            p.errors = errors;
            out.sessions.push(p);
            filters.entry(f.id.clone()).or_insert(f);
        }
    }
    out.filters = filters.into_values().collect();
    out.targets = targets.into_values().collect();

    for r in w.receivers {
        let what = format!("TrafficMirrorReceiver/{}", r.name_any());
        match node_selected(w, r.spec.node_selector.as_ref()) {
            Ok(true) => out.receivers.push(PlannedReceiver {
                id: receiver_id(&r.name_any()),
                interface: r.spec.interface.clone(),
                destination_port: r.spec.destination_port,
                virtual_network_ids: r.spec.virtual_network_ids.clone(),
            }),
            Ok(false) => {}
            Err(e) => out.problems.push((what, e.to_string())),
        }
    }
    out.receivers.sort_by(|a, b| a.id.cmp(&b.id));

    for f in w.flow_logs {
        let what = format!("FlowLog/{}", f.name_any());
        match node_selected(w, f.spec.node_selector.as_ref()) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                out.problems.push((what, e.to_string()));
                continue;
            }
        }
        let res = &f.spec.resource;
        let mut interfaces: Vec<ResolvedSource> = res
            .interfaces
            .iter()
            .map(|i| ResolvedSource {
                interface: i.clone(),
                pod: None,
            })
            .collect();
        let mut errors = Vec::new();
        if let Some(sel) = &res.pod_selector {
            match pods(w, sel, res.namespace_selector.as_ref()) {
                Ok((found, e)) => {
                    interfaces.extend(found);
                    errors = e;
                }
                Err(e) => {
                    out.problems.push((what, e.to_string()));
                    continue;
                }
            }
        }
        let mut seen = BTreeSet::new();
        interfaces.retain(|i| seen.insert(i.interface.clone()));
        out.flow_logs.push(PlannedFlowLog {
            id: flow_log_id(&f.name_any()),
            name: f.name_any(),
            node: res.node,
            interfaces,
            errors,
            traffic_type: f.spec.traffic_type,
            aggregation_interval: f.spec.aggregation_interval,
            log_format: f.spec.log_format.clone(),
            log_project_name: f.spec.log_project_name.clone(),
            log_topic_name: f.spec.log_topic_name.clone(),
        });
    }
    out.flow_logs.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, labels: Value) -> Node {
        obj(json!({"metadata": {"name": name, "labels": labels}}))
    }

    struct P<'a> {
        name: &'a str,
        ns: &'a str,
        node: &'a str,
        labels: Value,
        ip: &'a str,
        ready: bool,
        host_network: bool,
        deleting: bool,
    }

    fn p<'a>(name: &'a str, node: &'a str, labels: Value, ip: &'a str) -> P<'a> {
        P {
            name,
            ns: "shop",
            node,
            labels,
            ip,
            ready: true,
            host_network: false,
            deleting: false,
        }
    }

    fn pod(p: P) -> Pod {
        let mut meta = json!({"name": p.name, "namespace": p.ns, "labels": p.labels});
        if p.deleting {
            meta["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        obj(json!({
            "metadata": meta,
            "spec": {"nodeName": p.node, "hostNetwork": p.host_network, "containers": []},
            "status": {
                "phase": "Running",
                "podIPs": [{"ip": p.ip}],
                "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
            },
        }))
    }

    fn ns(name: &str, labels: Value) -> Namespace {
        obj(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn filter() -> TrafficMirrorFilter {
        obj(json!({
            "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorFilter",
            "metadata": {"name": "https"},
            "spec": {
                "ingressRules": [{"priority": 1, "action": "accept", "protocol": "TCP", "destinationPortRange": "443/443"}],
                "egressRules": [{"priority": 1, "action": "accept", "protocol": "TCP", "sourcePortRange": "443/443"}],
            },
        }))
    }

    fn target() -> TrafficMirrorTarget {
        obj(json!({
            "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorTarget",
            "metadata": {"name": "ids"},
            "spec": {"destinationIp": "10.9.0.5"},
        }))
    }

    fn session(spec: Value) -> TrafficMirrorSession {
        let mut s = json!({
            "priority": 1, "virtualNetworkId": 100, "packetLength": 256,
            "filterRef": "https", "targetRef": "ids", "sources": {},
        });
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        obj(json!({
            "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorSession",
            "metadata": {"name": "payments"}, "spec": s,
        }))
    }

    fn routes(pairs: &[(&str, &str)]) -> HostNet {
        HostNet {
            host_routes: pairs
                .iter()
                .map(|(ip, i)| (ip.parse().unwrap(), i.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// (session id, [(interface, pod)]).
    type Planned<'a> = Vec<(&'a str, Vec<(&'a str, Option<&'a str>)>)>;

    struct Case {
        name: &'static str,
        node_labels: Value,
        session: Value,
        pods: Vec<Pod>,
        /// (session id, [(interface, pod)]) planned; nothing else.
        want: Planned<'static>,
        want_errors: usize,
        want_problem: Option<&'static str>,
    }

    fn run(c: &Case, filters: &[TrafficMirrorFilter], targets: &[TrafficMirrorTarget]) -> NodePlan {
        let n = node("node-a", c.node_labels.clone());
        let namespaces = [
            ns("shop", json!({"team": "payments"})),
            ns("dev", json!({"team": "sandbox"})),
        ];
        let r = routes(&[
            ("10.1.0.2", "cali1"),
            ("10.1.0.3", "cali2"),
            ("10.1.0.4", "cali3"),
            ("fd00::7", "cali7"),
        ]);
        let sessions = [session(c.session.clone())];
        plan(&World {
            node: Some(&n),
            pods: &c.pods,
            namespaces: &namespaces,
            filters,
            targets,
            sessions: &sessions,
            receivers: &[],
            flow_logs: &[],
            host: &r,
        })
    }

    #[test]
    fn sessions_select_pods_and_nodes() {
        let pay = || json!({"app": "payments"});
        let sel = json!({"sources": {"podSelector": {"matchLabels": {"app": "payments"}}}});
        let cases = vec![
            Case {
                name: "a ready pod on this node becomes its host interface",
                node_labels: json!({}),
                session: sel.clone(),
                pods: vec![pod(p("pay-1", "node-a", pay(), "10.1.0.2"))],
                want: vec![("tms-k8s-payments-pods", vec![("cali1", Some("shop/pay-1"))])],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "pods elsewhere, not ready, being deleted, on the host network or unlabelled are not sources",
                node_labels: json!({}),
                session: sel.clone(),
                pods: vec![
                    pod(p("other-node", "node-b", pay(), "10.1.0.2")),
                    pod(P {
                        ready: false,
                        ..p("not-ready", "node-a", pay(), "10.1.0.2")
                    }),
                    pod(P {
                        deleting: true,
                        ..p("deleting", "node-a", pay(), "10.1.0.2")
                    }),
                    pod(P {
                        host_network: true,
                        ..p("hostnet", "node-a", pay(), "10.1.0.2")
                    }),
                    pod(p("web", "node-a", json!({"app": "web"}), "10.1.0.3")),
                ],
                want: vec![("tms-k8s-payments-pods", vec![])],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "namespaceSelector keeps pods of matching namespaces only; IPv6 pod IPs resolve",
                node_labels: json!({}),
                session: json!({"sources": {
                    "podSelector": {},
                    "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["payments"]}]},
                }}),
                pods: vec![
                    pod(p("a", "node-a", json!({}), "fd00::7")),
                    pod(P {
                        ns: "dev",
                        ..p("b", "node-a", json!({}), "10.1.0.3")
                    }),
                ],
                want: vec![("tms-k8s-payments-pods", vec![("cali7", Some("shop/a"))])],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "a selected pod without a routed interface is an error, not a silent miss",
                node_labels: json!({}),
                session: sel.clone(),
                pods: vec![pod(p("new", "node-a", pay(), "10.1.0.99"))],
                want: vec![("tms-k8s-payments-pods", vec![])],
                want_errors: 1,
                want_problem: None,
            },
            Case {
                name: "interfaces and pods: two node sessions",
                node_labels: json!({}),
                session: json!({"sources": {"interfaces": ["eth0", "bond*"], "podSelector": {"matchLabels": {"app": "payments"}}}}),
                pods: vec![pod(p("pay-1", "node-a", pay(), "10.1.0.2"))],
                want: vec![
                    ("tms-k8s-payments", vec![("eth0", None), ("bond*", None)]),
                    ("tms-k8s-payments-pods", vec![("cali1", Some("shop/pay-1"))]),
                ],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "nodeSelector not matching: the node has nothing to do",
                node_labels: json!({"role": "db"}),
                session: json!({"sources": {"interfaces": ["eth0"]}, "nodeSelector": {"matchLabels": {"role": "web"}}}),
                pods: vec![],
                want: vec![],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "nodeSelector matching",
                node_labels: json!({"role": "web"}),
                session: json!({"sources": {"interfaces": ["eth0"]}, "nodeSelector": {"matchLabels": {"role": "web"}}}),
                pods: vec![],
                want: vec![("tms-k8s-payments", vec![("eth0", None)])],
                want_errors: 0,
                want_problem: None,
            },
            Case {
                name: "a bad selector is a problem of the session",
                node_labels: json!({}),
                session: json!({"sources": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}),
                pods: vec![pod(p("pay-1", "node-a", pay(), "10.1.0.2"))],
                want: vec![],
                want_errors: 0,
                want_problem: Some("unknown operator"),
            },
            Case {
                name: "a missing filter is a problem, nothing is applied",
                node_labels: json!({}),
                session: json!({"filterRef": "nope", "sources": {"interfaces": ["eth0"]}}),
                pods: vec![],
                want: vec![],
                want_errors: 0,
                want_problem: Some("TrafficMirrorFilter nope not found"),
            },
            Case {
                name: "a missing target likewise",
                node_labels: json!({}),
                session: json!({"targetRef": "nope", "sources": {"interfaces": ["eth0"]}}),
                pods: vec![],
                want: vec![],
                want_errors: 0,
                want_problem: Some("TrafficMirrorTarget nope not found"),
            },
        ];
        for c in &cases {
            let plan = run(c, &[filter()], &[target()]);
            let got: Planned = plan
                .sessions
                .iter()
                .map(|s| {
                    (
                        s.id.as_str(),
                        s.sources
                            .iter()
                            .map(|r| (r.interface.as_str(), r.pod.as_deref()))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(got, c.want, "{}", c.name);
            let errors: usize = plan.sessions.iter().map(|s| s.errors.len()).sum();
            assert_eq!(errors, c.want_errors, "{}: {:?}", c.name, plan.sessions);
            assert_problem(
                &plan,
                "TrafficMirrorSession/payments",
                c.want_problem,
                c.name,
            );
            if c.want.is_empty() {
                assert!(
                    plan.filters.is_empty() && plan.targets.is_empty(),
                    "{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn pod_sessions_see_the_pods_directions() {
        let c = Case {
            name: "",
            node_labels: json!({}),
            session: json!({
                "sources": {"interfaces": ["eth0"], "podSelector": {}},
                "maxPacketsPerSecond": 20000, "sampleOneIn": 4, "sampleMode": "flow",
            }),
            pods: vec![pod(p("pay-1", "node-a", json!({}), "10.1.0.2"))],
            want: vec![],
            want_errors: 0,
            want_problem: None,
        };
        let plan = run(&c, &[filter()], &[target()]);
        let f = filter();
        let by_id: BTreeMap<&str, &PlannedFilter> =
            plan.filters.iter().map(|f| (f.id.as_str(), f)).collect();
        // The interface's session keeps the rules as written.
        assert_eq!(by_id["tmf-k8s-https"].ingress_rules, f.spec.ingress_rules);
        // The pod's host veth sees the pod's ingress as its egress.
        assert_eq!(
            by_id["tmf-k8s-https-pods"].egress_rules,
            f.spec.ingress_rules
        );
        assert_eq!(
            by_id["tmf-k8s-https-pods"].ingress_rules,
            f.spec.egress_rules
        );
        let pods = plan
            .sessions
            .iter()
            .find(|s| s.id.ends_with("-pods"))
            .unwrap();
        assert_eq!(pods.filter_id, "tmf-k8s-https-pods");
        assert_eq!(
            (
                pods.priority,
                pods.virtual_network_id,
                pods.packet_length,
                pods.enabled
            ),
            (1, 100, Some(256), true)
        );
        // Budgets and sampling go with each planned session.
        assert_eq!(pods.budget.max_packets_per_second, Some(20000));
        assert_eq!(pods.budget.sample_one_in, Some(4));
        assert_eq!(pods.budget.sample_mode, crate::model::SampleMode::Flow);
        assert_eq!(plan.targets.len(), 1);
        assert_eq!(plan.targets[0].id, "tmt-k8s-ids");
    }

    #[test]
    fn pods_moving_nodes_and_relabelled_pods_follow() {
        let sel = json!({"sources": {"podSelector": {"matchLabels": {"app": "payments"}}}});
        let sources = |pods: Vec<Pod>| {
            let c = Case {
                name: "",
                node_labels: json!({}),
                session: sel.clone(),
                pods,
                want: vec![],
                want_errors: 0,
                want_problem: None,
            };
            run(&c, &[filter()], &[target()]).sessions[0].sources.len()
        };
        let pay = json!({"app": "payments"});
        assert_eq!(
            sources(vec![pod(p("x", "node-a", pay.clone(), "10.1.0.2"))]),
            1
        );
        // Rescheduled to another node: gone from this one.
        assert_eq!(
            sources(vec![pod(p("x", "node-b", pay.clone(), "10.1.0.2"))]),
            0
        );
        // Relabelled: dropped.
        assert_eq!(
            sources(vec![pod(p(
                "x",
                "node-a",
                json!({"app": "other"}),
                "10.1.0.2"
            ))]),
            0
        );
    }

    #[test]
    fn receivers_and_flow_logs_by_node_and_pods() {
        let n = node("node-a", json!({"ids": "yes"}));
        let receivers: Vec<TrafficMirrorReceiver> = vec![
            obj(
                json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorReceiver",
                "metadata": {"name": "here"},
                "spec": {"interface": "eth1", "virtualNetworkIds": [100], "nodeSelector": {"matchLabels": {"ids": "yes"}}}}),
            ),
            obj(
                json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorReceiver",
                "metadata": {"name": "elsewhere"},
                "spec": {"interface": "eth1", "virtualNetworkIds": [100], "nodeSelector": {"matchLabels": {"ids": "no"}}}}),
            ),
        ];
        let flow_logs: Vec<FlowLog> = vec![obj(json!({
            "apiVersion": "mirror-agent.io/v1alpha1", "kind": "FlowLog",
            "metadata": {"name": "shop"},
            "spec": {
                "resource": {"interfaces": ["cali1", "eth0"], "podSelector": {}},
                "trafficType": "All", "aggregationInterval": 1,
                "logProjectName": "flows", "logTopicName": "shop",
            },
        }))];
        let pods = vec![
            pod(p("a", "node-a", json!({}), "10.1.0.2")),
            pod(p("b", "node-a", json!({}), "10.1.0.3")),
        ];
        let r = routes(&[("10.1.0.2", "cali1"), ("10.1.0.3", "cali2")]);
        let plan = plan(&World {
            node: Some(&n),
            pods: &pods,
            namespaces: &[],
            filters: &[],
            targets: &[],
            sessions: &[],
            receivers: &receivers,
            flow_logs: &flow_logs,
            host: &r,
        });
        assert_eq!(
            plan.receivers
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["tmrcv-k8s-here"]
        );
        assert_eq!(plan.flow_logs.len(), 1);
        let fl = &plan.flow_logs[0];
        assert_eq!(fl.id, "fl-k8s-shop");
        // cali1 named and selected once; cali2 by its pod.
        assert_eq!(
            fl.interfaces
                .iter()
                .map(|i| (i.interface.as_str(), i.pod.as_deref()))
                .collect::<Vec<_>>(),
            [("cali1", None), ("eth0", None), ("cali2", Some("shop/b"))]
        );
    }

    /// A flannel-like node: pods on cni0 (neighbour + FDB) next to a routed pod.
    fn bridged() -> HostNet {
        use super::super::hostnet::{FdbEntry, Neighbour};
        HostNet {
            bridge_subnets: vec![("10.244.1.0/24".parse().unwrap(), "cni0".into())],
            neighbours: vec![Neighbour {
                ip: "10.244.1.5".parse().unwrap(),
                device: "cni0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
            }],
            fdb: vec![FdbEntry {
                mac: "0a:58:0a:f4:01:05".into(),
                bridge: "cni0".into(),
                port: "veth1a2b".into(),
            }],
            ..routes(&[("10.1.0.2", "cali1")])
        }
    }

    /// (interface, pod) pairs.
    type Resolved = Vec<(&'static str, Option<&'static str>)>;

    #[test]
    fn flow_logs_cover_the_node_its_interfaces_and_its_pods() {
        struct FlCase {
            name: &'static str,
            resource: Value,
            node_selector: Value,
            pods: Vec<Pod>,
            /// None: not planned.
            want: Option<(bool, Resolved)>,
            want_errors: Vec<&'static str>,
            want_problem: Option<&'static str>,
        }
        let pay = || json!({"app": "payments"});
        let sel = json!({"matchLabels": {"app": "payments"}});
        let cases = vec![
            FlCase {
                name: "the whole node",
                resource: json!({"node": true}),
                node_selector: Value::Null,
                pods: vec![],
                want: Some((true, vec![])),
                want_errors: vec![],
                want_problem: None,
            },
            FlCase {
                name: "interfaces, a routed pod and a bridged pod",
                resource: json!({"interfaces": ["eth0"], "podSelector": sel}),
                node_selector: Value::Null,
                pods: vec![
                    pod(p("a", "node-a", pay(), "10.1.0.2")),
                    pod(p("b", "node-a", pay(), "10.244.1.5")),
                ],
                want: Some((
                    false,
                    vec![
                        ("eth0", None),
                        ("cali1", Some("shop/a")),
                        ("veth1a2b", Some("shop/b")),
                    ],
                )),
                want_errors: vec![],
                want_problem: None,
            },
            FlCase {
                name: "a bridged pod the host has not talked to yet is an error of the flow log, which still applies",
                resource: json!({"interfaces": ["eth0"], "podSelector": sel}),
                node_selector: Value::Null,
                pods: vec![pod(p("c", "node-a", pay(), "10.244.1.9"))],
                want: Some((false, vec![("eth0", None)])),
                want_errors: vec!["pod shop/c: no neighbour entry for 10.244.1.9 on cni0 yet"],
                want_problem: None,
            },
            FlCase {
                name: "nodeSelector not matching: not this node's",
                resource: json!({"node": true}),
                node_selector: json!({"matchLabels": {"role": "db"}}),
                pods: vec![],
                want: None,
                want_errors: vec![],
                want_problem: None,
            },
            FlCase {
                name: "a bad selector is a problem of the FlowLog, not planned",
                resource: json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
                node_selector: Value::Null,
                pods: vec![pod(p("a", "node-a", pay(), "10.1.0.2"))],
                want: None,
                want_errors: vec![],
                want_problem: Some("unknown operator"),
            },
        ];
        let n = node("node-a", json!({"role": "web"}));
        let host = bridged();
        for c in &cases {
            let mut spec = json!({
                "resource": c.resource, "trafficType": "Allow", "aggregationInterval": 5,
                "logFormat": "${srcaddr} ${dstaddr}",
                "logProjectName": "flows", "logTopicName": "shop",
            });
            if !c.node_selector.is_null() {
                spec["nodeSelector"] = c.node_selector.clone();
            }
            let fl: FlowLog = obj(json!({
                "apiVersion": "mirror-agent.io/v1alpha1", "kind": "FlowLog",
                "metadata": {"name": "shop"}, "spec": spec,
            }));
            let plan = plan(&World {
                node: Some(&n),
                pods: &c.pods,
                namespaces: &[],
                filters: &[],
                targets: &[],
                sessions: &[],
                receivers: &[],
                flow_logs: std::slice::from_ref(&fl),
                host: &host,
            });
            let got = plan.flow_logs.first().map(|f| {
                (
                    f.node,
                    f.interfaces
                        .iter()
                        .map(|i| (i.interface.as_str(), i.pod.as_deref()))
                        .collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, c.want, "{}", c.name);
            if let Some(f) = plan.flow_logs.first() {
                assert_eq!(f.errors, c.want_errors, "{}", c.name);
                assert_eq!(
                    (
                        f.id.as_str(),
                        f.name.as_str(),
                        f.traffic_type,
                        f.aggregation_interval
                    ),
                    ("fl-k8s-shop", "shop", TrafficType::Allow, 5),
                    "{}",
                    c.name
                );
                assert_eq!(f.log_format.as_deref(), Some("${srcaddr} ${dstaddr}"));
            }
            assert_problem(&plan, "FlowLog/shop", c.want_problem, c.name);
        }
    }

    /// No problem, or one of `what` whose reason contains `want`.
    fn assert_problem(plan: &NodePlan, what: &str, want: Option<&str>, case: &str) {
        match want {
            None => assert!(plan.problems.is_empty(), "{case}: {:?}", plan.problems),
            Some(p) => assert!(
                plan.problems
                    .iter()
                    .any(|(w, why)| w == what && why.contains(p)),
                "{case}: {:?}",
                plan.problems
            ),
        }
    }
}
