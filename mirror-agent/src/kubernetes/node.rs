//! `mirror-agent run --kubernetes`: the node controller. It watches the mirror resources
//! cluster-wide, the namespaces, its own Node and only its own node's pods (field selector
//! `spec.nodeName`), and on every change runs the planner and writes the node's share into
//! the store as objects of origin `kubernetes` (the config file's path), which the reconciler
//! applies. It then reports the node's view in its `MirrorNodeState` (status.rs).
//!
//! Losing the API server never touches the data path: the watchers keep their last objects
//! and retry with kube's default backoff (0.8 s doubling to 30 s), resume from the last
//! resource version and relist on 410 Gone; the store keeps the last plan across restarts,
//! and no plan is made until every watch has listed once, so an agent started while the API
//! server is away keeps applying what it stored. Disconnection shows in
//! `mirror_kubernetes_connected` and in the probes' bodies.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use rtnetlink::Handle;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    apply,
    crd::{
        FlowLog, TrafficMirrorFilter, TrafficMirrorReceiver, TrafficMirrorSession,
        TrafficMirrorTarget,
    },
    hostnet::{self, HostNet},
    plan::{self, NodePlan, World},
    status::StatusWriter,
};
use crate::{metrics::Health, service::Service};

/// The field selector of the node's own pods.
pub fn pods_config(node: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("spec.nodeName={node}"))
}

/// The field selector of the node's own Node object.
pub fn node_config(node: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={node}"))
}

/// What a watch stream tells the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A relist starts (before any request: says nothing about the connection).
    Relisting(&'static str),
    /// A relist delivered an object (the store is swapped at `Listed`).
    Listing(&'static str),
    /// A (re)list completed: the kind's store holds the full set.
    Listed(&'static str),
    Changed(&'static str),
    /// The list or watch failed; the watcher retries with backoff.
    Error(&'static str, String),
}

/// A watcher of `api` with kube's default backoff, feeding a reflector store.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
) -> (reflector::Store<K>, BoxStream<'static, Signal>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map(move |r| match r {
            Ok(watcher::Event::InitDone) => Signal::Listed(kind),
            Ok(watcher::Event::Init) => Signal::Relisting(kind),
            Ok(watcher::Event::InitApply(_)) => Signal::Listing(kind),
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed(kind),
            Err(e) => Signal::Error(kind, e.to_string()),
        })
        .boxed();
    (reader, stream)
}

/// A cluster-wide watch of every object of kind `K`.
pub fn watch_all<K>(
    client: &Client,
    kind: &'static str,
) -> (reflector::Store<K>, BoxStream<'static, Signal>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watch(Api::all(client.clone()), watcher::Config::default(), kind)
}

/// Every store the planner reads.
pub struct Watches {
    pub filters: reflector::Store<TrafficMirrorFilter>,
    pub targets: reflector::Store<TrafficMirrorTarget>,
    pub sessions: reflector::Store<TrafficMirrorSession>,
    pub receivers: reflector::Store<TrafficMirrorReceiver>,
    pub flow_logs: reflector::Store<FlowLog>,
    pub namespaces: reflector::Store<Namespace>,
    pub nodes: reflector::Store<Node>,
    pub pods: reflector::Store<Pod>,
    pub kinds: usize,
}

/// Starts every watch the node needs; the returned stream carries all their signals.
pub fn watches(client: &Client, node: &str) -> (Watches, BoxStream<'static, Signal>) {
    let (filters, s1) = watch_all(client, "TrafficMirrorFilter");
    let (targets, s2) = watch_all(client, "TrafficMirrorTarget");
    let (sessions, s3) = watch_all(client, "TrafficMirrorSession");
    let (receivers, s4) = watch_all(client, "TrafficMirrorReceiver");
    let (flow_logs, s5) = watch_all(client, "FlowLog");
    let (namespaces, s6) = watch_all(client, "Namespace");
    let (nodes, s7) = watch(Api::all(client.clone()), node_config(node), "Node");
    let (pods, s8) = watch(Api::all(client.clone()), pods_config(node), "Pod");
    let streams = vec![s1, s2, s3, s4, s5, s6, s7, s8];
    let w = Watches {
        filters,
        targets,
        sessions,
        receivers,
        flow_logs,
        namespaces,
        nodes,
        pods,
        kinds: streams.len(),
    };
    (w, futures::stream::select_all(streams).boxed())
}

/// The store's objects, owned.
pub(super) fn cloned<K>(s: &reflector::Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.state().iter().map(|k| (**k).clone()).collect()
}

impl Watches {
    /// The planner's output for `node` from the stores as they are now.
    pub fn plan(&self, node: &str, host: &HostNet) -> NodePlan {
        let nodes = cloned(&self.nodes);
        let pods = cloned(&self.pods);
        let namespaces = cloned(&self.namespaces);
        let filters = cloned(&self.filters);
        let targets = cloned(&self.targets);
        let sessions = cloned(&self.sessions);
        let receivers = cloned(&self.receivers);
        let flow_logs = cloned(&self.flow_logs);
        plan::plan(&World {
            node: nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(node)),
            pods: &pods,
            namespaces: &namespaces,
            filters: &filters,
            targets: &targets,
            sessions: &sessions,
            receivers: &receivers,
            flow_logs: &flow_logs,
            host,
        })
    }

    pub fn node(&self, node: &str) -> Option<Node> {
        cloned(&self.nodes)
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
    }
}

/// A copy of what a lock holds; a poisoned lock (a panicked writer) reads as empty rather
/// than stopping the node controller.
fn read_or_default<T: Clone + Default>(lock: &std::sync::RwLock<T>) -> T {
    lock.read().map(|v| v.clone()).unwrap_or_default()
}

/// Whether the API server is reachable, as the metric and the probes show it.
pub struct Connection {
    pub gauge: prometheus::IntGauge,
    pub health: Arc<Health>,
}

impl Connection {
    pub fn new(svc: &Service, health: Arc<Health>) -> prometheus::Result<Connection> {
        let gauge = prometheus::IntGauge::new(
            "mirror_kubernetes_connected",
            "1 while the node controller reaches the Kubernetes API server, 0 while it keeps \
             applying the last objects it saw.",
        )?;
        svc.metrics.register(Box::new(gauge.clone()))?;
        Ok(Connection { gauge, health })
    }

    pub fn set(&self, connected: bool, why: Option<&str>) {
        let was = self.gauge.get() == 1;
        self.gauge.set(i64::from(connected));
        let note = (!connected).then(|| {
            format!(
                "degraded: Kubernetes API server unreachable ({}); applying the last objects seen",
                why.unwrap_or("no answer")
            )
        });
        self.health.set_note("kubernetes", note);
        if was != connected {
            match why {
                Some(why) if !connected => warn!("Kubernetes API server unreachable: {why}"),
                _ if connected => info!("Kubernetes API server reached"),
                _ => {}
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.gauge.get() == 1
    }
}

pub struct NodeController {
    pub client: Client,
    pub node: String,
    pub svc: Arc<Service>,
    pub netlink: Handle,
    pub connection: Connection,
    pub rule_quota: usize,
    pub stop: watch::Receiver<bool>,
}

/// How long changes are gathered before one plan (a rollout changes many pods at once).
const SETTLE: Duration = Duration::from_millis(50);
/// Re-plan and refresh the status this often without events: pod routes appear and sessions
/// settle in the reconciler without any API event.
const TICK: Duration = Duration::from_secs(2);

impl NodeController {
    pub async fn run(mut self) {
        let (watches, mut signals) = watches(&self.client, &self.node);
        let mut status = StatusWriter::new(self.client.clone(), &self.node);
        let mut listed = BTreeSet::new();
        let mut failing: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut due: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<NodePlan> = None;
        // Unknown until the first answer; 0 meanwhile (an agent without an API server is not
        // connected).
        self.connection.set(false, Some("not reached yet"));
        loop {
            let settle = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                s = signals.next() => {
                    let Some(s) = s else { break };
                    match s {
                        Signal::Relisting(_) => {}
                        Signal::Error(kind, e) => {
                            failing.insert(kind, e.clone());
                            self.connection.set(false, Some(&e));
                        }
                        Signal::Listing(kind) | Signal::Listed(kind) | Signal::Changed(kind) => {
                            failing.remove(kind);
                            if failing.is_empty() {
                                self.connection.set(true, None);
                            }
                            if matches!(s, Signal::Listed(_)) {
                                listed.insert(kind);
                            }
                            if !matches!(s, Signal::Listing(_)) && due.is_none() {
                                due = Some(tokio::time::Instant::now() + SETTLE);
                            }
                        }
                    }
                }
                _ = settle => {
                    due = None;
                    if listed.len() == watches.kinds {
                        last = Some(self.apply(&watches).await);
                    }
                }
                _ = tick.tick() => {
                    // A watch resumed from its resource version says nothing until something
                    // changes: ask the server whether it answers again.
                    if !failing.is_empty() && self.client.apiserver_version().await.is_ok() {
                        failing.clear();
                        self.connection.set(true, None);
                    }
                    if listed.len() == watches.kinds {
                        last = Some(self.apply(&watches).await);
                    }
                }
                _ = self.stop.changed() => break,
            }
            if let (Some(plan), true) = (&last, self.connection.is_connected())
                && let Some(node) = watches.node(&self.node)
            {
                let snap = match self.svc.snapshot() {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("MirrorNodeState: reading the store: {}", e.message);
                        continue;
                    }
                };
                let copy_paths = read_or_default(&self.svc.copy_paths);
                let live = read_or_default(&self.svc.flow_log_status);
                let st = super::status::node_status(plan, &snap, &copy_paths, &live, true);
                if let Err(e) = status.write(&node, st).await {
                    warn!("MirrorNodeState: {e}");
                }
            }
        }
    }

    /// Plans from the stores, writes the objects, wakes the reconciler; the plan carries the
    /// problems of objects left out.
    async fn apply(&self, watches: &Watches) -> NodePlan {
        let links = self.svc.links.read().map(|l| l.clone()).unwrap_or_default();
        let host = hostnet::read(&self.netlink, &links).await;
        let mut plan = watches.plan(&self.node, &host);
        let (objects, dropped) = apply::declared(&plan, self.rule_quota);
        plan.problems.extend(dropped);
        let written = {
            let _guard = self.svc.write_lock.lock().await;
            // Flow logs are checked against the store under the write lock: an API flow log
            // created meanwhile cannot take the same topic unseen.
            match self.svc.store.snapshot() {
                Ok(snap) => {
                    let (flow_logs, dropped) = apply::flow_logs(&plan, &snap);
                    plan.problems.extend(dropped);
                    apply::write(&self.svc.store, &objects, &flow_logs)
                        .map(|changes| (changes, flow_logs.len()))
                }
                Err(e) => Err(e.into()),
            }
        };
        match written {
            Ok((0, _)) => {}
            Ok((changes, flow_logs)) => {
                info!(
                    changes,
                    sessions = objects.sessions.len(),
                    flow_logs,
                    "Kubernetes objects applied"
                );
                self.svc.trigger();
            }
            Err(e) => {
                warn!("Kubernetes objects not applied, keeping the last ones: {e}");
                plan.problems.push(("node".into(), e.to_string()));
            }
        }
        plan
    }
}
