//! A node's plan as declared objects of origin `kubernetes`: the same records, the same
//! validation and the same store path (`declared::sync_as`) as the config file's objects, so
//! the reconciler applies them like any other and a restart or an API-server outage keeps
//! them (they are in the store until the next plan replaces them).
//!
//! Each planned session is validated on its own with its filter and target (the config's
//! `FileConfig::objects`), so one bad object is reported and dropped instead of blocking
//! every other: a TrafficMirrorSession with both interfaces and pods becomes two node
//! sessions of one priority, which a single file would refuse.
//!
//! Flow logs (the config file has none) go through CreateFlowLog's checks (name, interval,
//! LogFormat, project and topic names, a topic no other live flow log writes to), each on its
//! own, and are written in the same transaction as the rest of the plan.

use crate::{
    api::{ApiError, flowlogs},
    config::{FileConfig, FilterConfig, ReceiverConfig, RuleConfig, SessionConfig, TargetConfig},
    declared::{self, DeclareError},
    records::{FlowLogRecord, FlowLogState, Origin},
    store::{Snapshot, Store},
};

use super::{
    crd::{FilterRule, RuleAction, TrafficType},
    plan::{
        NodePlan, PlannedFilter, PlannedFlowLog, PlannedReceiver, PlannedSession, PlannedTarget,
    },
};

fn rule(r: &FilterRule) -> RuleConfig {
    RuleConfig {
        id: None,
        priority: i64::from(r.priority),
        action: match r.action {
            RuleAction::Accept => "accept",
            RuleAction::Drop => "drop",
        }
        .into(),
        protocol: r.protocol.clone(),
        ip_version: r.ip_version.clone(),
        source_cidr_block: r.source_cidr_block.clone(),
        destination_cidr_block: r.destination_cidr_block.clone(),
        source_port_range: r.source_port_range.clone(),
        destination_port_range: r.destination_port_range.clone(),
    }
}

fn filter(f: &PlannedFilter) -> FilterConfig {
    FilterConfig {
        id: f.id.clone(),
        ingress_rules: f.ingress_rules.iter().map(rule).collect(),
        egress_rules: f.egress_rules.iter().map(rule).collect(),
    }
}

fn target(t: &PlannedTarget) -> Result<TargetConfig, String> {
    Ok(TargetConfig {
        id: t.id.clone(),
        destination_ip: t
            .destination_ip
            .parse()
            .map_err(|_| format!("target {}: {} is not an IP address", t.id, t.destination_ip))?,
        destination_port: t.destination_port,
    })
}

fn session(s: &PlannedSession) -> SessionConfig {
    SessionConfig {
        id: s.id.clone(),
        priority: i64::from(s.priority),
        virtual_network_id: i64::from(s.virtual_network_id),
        packet_length: s.packet_length.map(i64::from),
        enabled: s.enabled,
        filter_id: s.filter_id.clone(),
        target_id: s.target_id.clone(),
        sources: s.sources.iter().map(|r| r.interface.clone()).collect(),
        // The schema bounds these far below i64::MAX; saturate rather than wrap regardless.
        max_packets_per_second: s
            .budget
            .max_packets_per_second
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
        max_bits_per_second: s
            .budget
            .max_bits_per_second
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
        sample_one_in: s.budget.sample_one_in.map(i64::from),
        sample_mode: Some(s.budget.sample_mode.as_str().to_string()),
    }
}

fn receiver(r: &PlannedReceiver) -> ReceiverConfig {
    ReceiverConfig {
        id: r.id.clone(),
        interface: r.interface.clone(),
        destination_port: r.destination_port.map(i64::from),
        virtual_network_ids: r
            .virtual_network_ids
            .iter()
            .map(|v| i64::from(*v))
            .collect(),
    }
}

/// The plan's objects as a config file would declare them, and the sessions dropped as
/// invalid (session id, reason). `rule_quota` is the node's; a session's pods are not held
/// to the API's source quota (a selector picks as many pods as the node runs).
pub fn declared(plan: &NodePlan, rule_quota: usize) -> (FileConfig, Vec<(String, String)>) {
    let mut out = FileConfig::default();
    let mut problems = Vec::new();
    for s in &plan.sessions {
        let Some(f) = plan.filters.iter().find(|f| f.id == s.filter_id) else {
            problems.push((s.id.clone(), format!("filter {} not planned", s.filter_id)));
            continue;
        };
        let Some(t) = plan.targets.iter().find(|t| t.id == s.target_id) else {
            problems.push((s.id.clone(), format!("target {} not planned", s.target_id)));
            continue;
        };
        let t = match target(t) {
            Ok(t) => t,
            Err(e) => {
                problems.push((s.id.clone(), e));
                continue;
            }
        };
        let alone = FileConfig {
            rule_quota: Some(rule_quota),
            source_quota: Some(usize::MAX),
            targets: vec![t],
            filters: vec![filter(f)],
            sessions: vec![session(s)],
            ..Default::default()
        };
        if let Err(e) = alone.objects() {
            problems.push((s.id.clone(), e.to_string()));
            continue;
        }
        let FileConfig {
            targets,
            filters,
            sessions,
            ..
        } = alone;
        for t in targets {
            if !out.targets.iter().any(|o| o.id == t.id) {
                out.targets.push(t);
            }
        }
        for f in filters {
            if !out.filters.iter().any(|o| o.id == f.id) {
                out.filters.push(f);
            }
        }
        out.sessions.extend(sessions);
    }
    out.receivers = plan.receivers.iter().map(receiver).collect();
    (out, problems)
}

/// A planned flow log as the store keeps it; state, generation and times are the store's
/// (`declared::sync_with_flow_logs`).
fn flow_log(f: &PlannedFlowLog) -> Result<FlowLogRecord, ApiError> {
    let interfaces: Vec<String> = f.interfaces.iter().map(|i| i.interface.clone()).collect();
    Ok(FlowLogRecord {
        id: f.id.clone(),
        description: String::new(),
        name: flowlogs::name(Some(&f.name))?,
        resource_type: if f.node { "node" } else { "interfaces" }.into(),
        // What DescribeFlowLogs shows as ResourceId: the interfaces it was given.
        resource_id: if f.node && interfaces.is_empty() {
            "node".into()
        } else {
            interfaces.join(",")
        },
        interfaces,
        traffic_type: match f.traffic_type {
            TrafficType::All => "All",
            TrafficType::Allow => "Allow",
            TrafficType::Drop => "Drop",
        }
        .into(),
        log_project: flowlogs::log_name("logProjectName", &f.log_project_name)?,
        log_topic: flowlogs::log_name("logTopicName", &f.log_topic_name)?,
        aggregation_interval: flowlogs::check_interval(i64::from(f.aggregation_interval))?,
        interval_seconds: None,
        log_format: match &f.log_format {
            Some(v) => flowlogs::check_log_format(v)?,
            None => None,
        },
        state: FlowLogState::Creating,
        wanted_active: true,
        generation: 1,
        errors: Vec::new(),
        tags: Vec::new(),
        origin: Origin::Kubernetes,
        created_at: String::new(),
        updated_at: String::new(),
    })
}

/// The plan's flow logs as the node declares them, and those dropped as invalid (flow log
/// id, reason). `snap` is the store now: a topic another origin's live flow log writes to is
/// refused, as CreateFlowLog refuses it; of two planned flow logs on one topic the first (by
/// id) is kept.
pub fn flow_logs(plan: &NodePlan, snap: &Snapshot) -> (Vec<FlowLogRecord>, Vec<(String, String)>) {
    let mut out: Vec<FlowLogRecord> = Vec::new();
    let mut problems = Vec::new();
    for f in &plan.flow_logs {
        let checked = flow_log(f).and_then(|d| {
            flowlogs::check_topic_free(snap, &d.log_project, &d.log_topic, |o| {
                o.origin != Origin::Kubernetes
            })?;
            if let Some(first) = out
                .iter()
                .find(|o| o.log_project == d.log_project && o.log_topic == d.log_topic)
            {
                return Err(ApiError::bad(
                    "InvalidParameter.TLSTopicExisted",
                    format!("The specified topic name is already {}'s.", first.id),
                ));
            }
            Ok(d)
        });
        match checked {
            Ok(d) => out.push(d),
            Err(e) => problems.push((f.id.clone(), format!("{}: {}", e.code, e.message))),
        }
    }
    (out, problems)
}

/// Writes the node's objects of origin `kubernetes` (replacing the last plan's). The caller
/// holds the service's write lock and wakes the reconciler.
pub fn write(
    store: &Store,
    objects: &FileConfig,
    flow_logs: &[FlowLogRecord],
) -> Result<usize, DeclareError> {
    declared::sync_with_flow_logs(store, objects, flow_logs, Origin::Kubernetes)
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, RwLock},
    };

    use super::*;
    use crate::{
        api::{actions, rpc::Params},
        kubernetes::{
            crd::ResolvedSource,
            plan::{PlannedFilter, PlannedFlowLog, PlannedSession, PlannedTarget},
        },
        records::SessionState,
        service::Service,
    };

    pub(crate) struct TempStore(std::path::PathBuf);
    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    /// A service over `store` with the default quotas, no aliases and no links.
    pub(crate) fn service(store: Store) -> Service {
        Service::new(
            store,
            10,
            10,
            BTreeMap::new(),
            "local".into(),
            Arc::new(RwLock::new(Vec::new())),
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    pub(crate) fn temp_store() -> (Store, TempStore) {
        let dir = std::env::temp_dir().join(format!("mirror-k8s-apply-{}", uuid::Uuid::new_v4()));
        (Store::open(&dir).unwrap(), TempStore(dir))
    }

    fn accept_443() -> FilterRule {
        serde_json::from_value(serde_json::json!({
            "priority": 1, "action": "accept", "protocol": "TCP", "destinationPortRange": "443/443"
        }))
        .unwrap()
    }

    fn session(id: &str, filter: &str, sources: &[(&str, Option<&str>)]) -> PlannedSession {
        PlannedSession {
            id: id.into(),
            name: "payments".into(),
            priority: 1,
            virtual_network_id: 100,
            packet_length: Some(256),
            enabled: true,
            filter_id: filter.into(),
            target_id: "tmt-k8s-ids".into(),
            sources: resolved(sources),
            errors: Vec::new(),
            budget: crate::model::Budget {
                max_packets_per_second: Some(10_000),
                sample_one_in: Some(100),
                sample_mode: crate::model::SampleMode::Flow,
                ..Default::default()
            },
        }
    }

    /// The payments session of docs/kubernetes.md: node interfaces and pods, one priority.
    fn payments() -> NodePlan {
        NodePlan {
            filters: vec![
                PlannedFilter {
                    id: "tmf-k8s-tls".into(),
                    ingress_rules: vec![accept_443()],
                    egress_rules: vec![],
                },
                PlannedFilter {
                    id: "tmf-k8s-tls-pods".into(),
                    ingress_rules: vec![],
                    egress_rules: vec![accept_443()],
                },
            ],
            targets: vec![PlannedTarget {
                id: "tmt-k8s-ids".into(),
                destination_ip: "10.20.0.15".into(),
                destination_port: None,
            }],
            sessions: vec![
                session("tms-k8s-payments", "tmf-k8s-tls", &[("eth0", None)]),
                session(
                    "tms-k8s-payments-pods",
                    "tmf-k8s-tls-pods",
                    &[("cali1", Some("shop/pay-1")), ("cali2", Some("shop/pay-2"))],
                ),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_becomes_kubernetes_objects_and_replaces_the_last() {
        let (store, _dir) = temp_store();
        let (objects, problems) = declared(&payments(), 10);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(write(&store, &objects, &[]).unwrap(), 5);
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.sessions.len(), 2);
        assert!(snap.sessions.iter().all(|s| s.origin == Origin::Kubernetes));
        assert!(snap.filters.iter().all(|f| f.origin == Origin::Kubernetes));
        let pods = snap.session("tms-k8s-payments-pods").unwrap();
        assert_eq!(pods.sources, ["cali1", "cali2"]);
        // The resource's budget and sampling reach the session.
        assert_eq!(pods.budget.max_packets_per_second, Some(10_000));
        assert_eq!(pods.budget.sample_one_in, Some(100));
        assert_eq!(pods.budget.sample_mode, crate::model::SampleMode::Flow);
        // The same plan again changes nothing (no re-apply, no store write).
        assert_eq!(write(&store, &objects, &[]).unwrap(), 0);
        // The config file's objects are another origin: an empty file leaves these alone.
        declared::sync(&store, &FileConfig::default()).unwrap();
        assert_eq!(store.snapshot().unwrap().sessions.len(), 2);
        // An empty plan deletes them (sessions through Deleting, as the reconciler wants).
        let (empty, _) = declared(&NodePlan::default(), 10);
        write(&store, &empty, &[]).unwrap();
        let snap = store.snapshot().unwrap();
        assert!(
            snap.sessions
                .iter()
                .all(|s| s.state == SessionState::Deleting)
        );
        assert!(snap.filters.is_empty() && snap.targets.is_empty());
    }

    #[test]
    fn an_invalid_session_is_dropped_with_its_reason_and_the_others_applied() {
        let mut plan = payments();
        let mut bad = plan.filters[0].clone();
        bad.id = "tmf-k8s-bad".into();
        bad.ingress_rules[0].source_cidr_block = Some("10.0.0.0/99".into());
        plan.filters.push(bad);
        let mut s = session("tms-k8s-other", "tmf-k8s-bad", &[("eth1", None)]);
        s.name = "other".into();
        plan.sessions.push(s);
        let (objects, problems) = declared(&plan, 10);
        assert_eq!(objects.sessions.len(), 2);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "tms-k8s-other");
        assert!(!objects.filters.iter().any(|f| f.id == "tmf-k8s-bad"));
    }

    #[tokio::test]
    async fn kubernetes_objects_are_listed_with_their_origin_and_read_only() {
        let (store, _dir) = temp_store();
        let (objects, _) = declared(&payments(), 10);
        write(&store, &objects, &[]).unwrap();
        let svc = service(store);
        let params = |q: &str| Params::parse(Some(q), None, b"").unwrap();
        let list = actions::read(&svc, "ListTrafficMirrorSessions", &params("")).unwrap();
        let text = list.to_string();
        assert!(text.contains(r#""Origin":"kubernetes""#), "{text}");
        let cases = &[
            (
                "DeleteTrafficMirrorSession",
                "TrafficMirrorSessionId=tms-k8s-payments",
            ),
            (
                "UpdateTrafficMirrorFilterAttribute",
                "TrafficMirrorFilterId=tmf-k8s-tls&TrafficMirrorFilterName=x",
            ),
            (
                "DeleteTrafficMirrorTarget",
                "TrafficMirrorTargetId=tmt-k8s-ids",
            ),
        ];
        assert_read_only(&svc, cases).await;
    }

    /// Each (action, query) is refused as a change of a Kubernetes object.
    async fn assert_read_only(svc: &Service, cases: &[(&str, &str)]) {
        for (action, q) in cases {
            let p = Params::parse(Some(q), None, b"").unwrap();
            let err = actions::mutate(svc, action, &p, false)
                .await
                .err()
                .unwrap_or_else(|| panic!("{action} was allowed"));
            assert_eq!(err.code, "OperationDenied.KubernetesObject", "{action}");
        }
    }

    /// (interface, pod) pairs as the planner resolves them.
    fn resolved(pairs: &[(&str, Option<&str>)]) -> Vec<ResolvedSource> {
        pairs
            .iter()
            .map(|(i, p)| ResolvedSource {
                interface: (*i).into(),
                pod: p.map(str::to_string),
            })
            .collect()
    }

    fn planned_flow_log(name: &str, interfaces: &[(&str, Option<&str>)]) -> PlannedFlowLog {
        PlannedFlowLog {
            id: crate::kubernetes::plan::flow_log_id(name),
            name: name.into(),
            node: false,
            interfaces: resolved(interfaces),
            errors: Vec::new(),
            traffic_type: TrafficType::All,
            aggregation_interval: 1,
            log_format: None,
            log_project_name: "flows".into(),
            log_topic_name: name.into(),
        }
    }

    #[test]
    fn flow_logs_get_the_apis_checks_each_on_its_own() {
        // An API flow log writing to flows/taken.
        let api_topic = {
            let mut f = flow_log(&planned_flow_log("taken", &[("lo", None)])).unwrap();
            f.id = "fl-api".into();
            f.origin = Origin::Api;
            f
        };
        type Tweak = fn(&mut PlannedFlowLog);
        let cases: &[(&str, Tweak, Option<&str>)] = &[
            ("valid", |_| {}, None),
            (
                "an interval the API refuses (the schema allows 1-10)",
                |f| f.aggregation_interval = 3,
                Some("InvalidParameter.FlowLogAggregationInterval"),
            ),
            (
                "a LogFormat with an unknown field",
                |f| f.log_format = Some("${srcaddr} ${no-such-field}".into()),
                Some("InvalidParameter.LogFormat"),
            ),
            (
                "a name longer than the API's 128",
                |f| f.name = "n".repeat(129),
                Some("InvalidName.Malformed"),
            ),
            (
                "a topic an API flow log writes to",
                |f| f.log_topic_name = "taken".into(),
                Some("InvalidParameter.TLSTopicExisted"),
            ),
            (
                "a topic another planned flow log took first",
                |f| f.log_topic_name = "first".into(),
                Some("already fl-k8s-first's"),
            ),
        ];
        let snap = crate::store::Snapshot {
            flow_logs: vec![api_topic],
            ..Default::default()
        };
        for (name, tweak, want) in cases {
            let mut f = planned_flow_log("shop", &[("eth0", None), ("cali1", Some("shop/a"))]);
            tweak(&mut f);
            let plan = NodePlan {
                flow_logs: vec![planned_flow_log("first", &[("lo", None)]), f],
                ..Default::default()
            };
            let (declared, problems) = flow_logs(&plan, &snap);
            // The other flow log applies whatever happens to this one.
            assert_eq!(declared[0].id, "fl-k8s-first", "{name}");
            match want {
                None => {
                    assert!(problems.is_empty(), "{name}: {problems:?}");
                    let d = &declared[1];
                    assert_eq!(
                        (d.resource_type.as_str(), d.interfaces.as_slice()),
                        ("interfaces", &["eth0".to_string(), "cali1".to_string()][..]),
                        "{name}"
                    );
                    assert_eq!(d.origin, Origin::Kubernetes);
                }
                Some(want) => {
                    assert_eq!(declared.len(), 1, "{name}");
                    assert_eq!(problems.len(), 1, "{name}: {problems:?}");
                    assert_eq!(problems[0].0, "fl-k8s-shop", "{name}");
                    assert!(problems[0].1.contains(want), "{name}: {problems:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn flow_logs_are_written_changed_removed_and_read_only() {
        use crate::records::FlowLogState;
        let (store, _dir) = temp_store();
        let write_plan = |flow_logs: Vec<PlannedFlowLog>| {
            let plan = NodePlan {
                flow_logs,
                ..Default::default()
            };
            let snap = store.snapshot().unwrap();
            let (declared, problems) = self::flow_logs(&plan, &snap);
            assert!(problems.is_empty(), "{problems:?}");
            write(&store, &FileConfig::default(), &declared).unwrap()
        };
        let stored = || {
            store
                .snapshot()
                .unwrap()
                .flow_log("fl-k8s-shop")
                .cloned()
                .unwrap()
        };
        let shop = planned_flow_log("shop", &[("eth0", None), ("cali1", Some("shop/a"))]);
        assert_eq!(write_plan(vec![shop.clone()]), 1);
        let f = stored();
        assert_eq!(
            (f.origin, f.state, f.generation, f.wanted_active),
            (Origin::Kubernetes, FlowLogState::Creating, 1, true)
        );
        assert_eq!(f.resource_id, "eth0,cali1");
        // The same plan writes nothing; the reconciler's state and errors are kept.
        let mut active = f.clone();
        active.state = FlowLogState::Active;
        active.errors = vec!["interface eth0: interface not found".into()];
        let mut b = crate::store::Batch::default();
        b.put_flow_log(&active).unwrap();
        store.commit(b).unwrap();
        assert_eq!(write_plan(vec![shop.clone()]), 0);
        // A pod moves: the interfaces change, a new generation, still Active.
        let mut moved = shop.clone();
        moved.interfaces.pop();
        assert_eq!(write_plan(vec![moved]), 1);
        let f = stored();
        assert_eq!((f.state, f.generation), (FlowLogState::Active, 2));
        assert_eq!(f.interfaces, ["eth0"]);
        // Through the node's API: listed with its origin, refused to change.
        let svc = service(store.clone());
        let params = |q: &str| Params::parse(Some(q), None, b"").unwrap();
        let list = actions::read(&svc, "DescribeFlowLogs", &params("")).unwrap();
        assert!(
            list.to_string().contains(r#""Origin":"kubernetes""#),
            "{list}"
        );
        let q = "FlowLogId=fl-k8s-shop";
        assert_read_only(
            &svc,
            &[
                ("DeleteFlowLog", q),
                ("DeactiveFlowLog", q),
                ("ModifyFlowLogAttribute", q),
            ],
        )
        .await;
        // Gone from the plan: Deleting, which the reconciler stops and removes.
        assert_eq!(write_plan(vec![]), 1);
        let f = stored();
        assert_eq!((f.state, f.generation), (FlowLogState::Deleting, 3));
        // Back before the reconciler removed it: Creating again.
        assert_eq!(write_plan(vec![shop]), 1);
        let f = stored();
        assert_eq!((f.state, f.generation), (FlowLogState::Creating, 4));
    }

    #[test]
    fn flow_logs_status_says_state_interfaces_and_every_error() {
        use std::collections::BTreeMap;

        use crate::kubernetes::status::node_status;
        let (store, _dir) = temp_store();
        let mut shop = planned_flow_log("shop", &[("cali1", Some("shop/a"))]);
        shop.errors = vec!["pod shop/b: no neighbour entry for 10.244.1.9 on cni0 yet".into()];
        let mut bad = planned_flow_log("bad", &[]);
        bad.aggregation_interval = 3;
        let mut plan = NodePlan {
            flow_logs: vec![bad, shop],
            problems: vec![("FlowLog/selector".into(), "unknown operator".into())],
            ..Default::default()
        };
        let (declared, dropped) = flow_logs(&plan, &store.snapshot().unwrap());
        plan.problems.extend(dropped);
        write(&store, &FileConfig::default(), &declared).unwrap();
        let live = BTreeMap::from([(
            "fl-k8s-shop".to_string(),
            vec!["file sink: disk full".to_string()],
        )]);
        let st = node_status(
            &plan,
            &store.snapshot().unwrap(),
            &BTreeMap::new(),
            &live,
            true,
        );
        let got: Vec<(&str, &str, usize, Vec<&str>)> = st
            .flow_logs
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.state.as_str(),
                    f.interfaces.len(),
                    f.errors.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "bad",
                    "NotApplied",
                    0,
                    vec![
                        "InvalidParameter.FlowLogAggregationInterval: The specified aggregation interval is invalid: 1, 5 or 10 (minutes)."
                    ]
                ),
                ("selector", "NotApplied", 0, vec!["unknown operator"]),
                (
                    "shop",
                    "Creating",
                    1,
                    vec![
                        "pod shop/b: no neighbour entry for 10.244.1.9 on cni0 yet",
                        "file sink: disk full"
                    ]
                ),
            ]
        );
    }
}
