//! Drives the data path toward the store: on every change (API, config reload, interface
//! appearing or disappearing) it reads one snapshot, resolves sources to interfaces, applies
//! it, and settles session states (Creating/Modifying → Created, Deleting → gone), recording
//! what could not be applied on each session.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::{
    config::Objects,
    datapath::{ApplyReport, Datapath, receive::Receiver},
    flowlog::{
        aggregate::TrafficType,
        runner::{Plan, PlannedLog},
    },
    links::{self, Link},
    model::{Filter, Session, Target},
    records::{FlowLogState, SessionState, now_rfc3339},
    service::Service,
    store::{Batch, Kind, Snapshot},
};

/// Snapshot → the data path's objects, and the per-session problems found on the way.
pub fn desired(
    snap: &Snapshot,
    aliases: &BTreeMap<String, String>,
    links_now: &[Link],
) -> (Objects, BTreeMap<String, Vec<String>>) {
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut objects = Objects::default();
    for t in &snap.targets {
        let ip = match (&t.destination_ip, &t.instance_id) {
            (Some(ip), _) => ip.parse::<IpAddr>().ok(),
            (None, Some(iface)) => links::resolve(iface, aliases, links_now)
                .and_then(|name| links::interface_address(&name)),
            (None, None) => None,
        };
        match ip {
            Some(destination_ip) => objects.targets.push(Target {
                id: t.id.clone(),
                destination_ip,
                destination_port: t.destination_port,
            }),
            None => {
                for s in snap.sessions.iter().filter(|s| s.target_id == t.id) {
                    problems.entry(s.id.clone()).or_default().push(format!(
                        "target {} has no usable address (interface {:?} missing or without address)",
                        t.id, t.instance_id
                    ));
                }
            }
        }
    }
    for f in &snap.filters {
        let mut rules = Vec::new();
        for r in &f.rules {
            match r.to_model() {
                Ok(rule) => rules.push(rule),
                // Stored rules were validated; a failure here means a bug, not bad input.
                Err(e) => warn!(filter = %f.id, rule = %r.id, "stored rule no longer valid: {e}"),
            }
        }
        objects.filters.push(Filter {
            id: f.id.clone(),
            rules,
        });
    }
    for f in &snap.flow_logs {
        if f.state == FlowLogState::Deleting || !f.wanted_active {
            continue;
        }
        let names = crate::api::flowlogs::interfaces(f, aliases, links_now);
        if names.is_empty() && f.resource_type == "eni" {
            problems
                .entry(f.id.clone())
                .or_default()
                .push(format!("resource {}: interface not found", f.resource_id));
        }
        for spec in crate::api::flowlogs::missing_interfaces(f, aliases, links_now) {
            problems
                .entry(f.id.clone())
                .or_default()
                .push(format!("interface {spec}: interface not found"));
        }
        for n in names {
            if !objects.flow_interfaces.contains(&n) {
                objects.flow_interfaces.push(n);
            }
        }
    }
    for s in &snap.sessions {
        if s.state == SessionState::Deleting {
            continue;
        }
        let mut sources = Vec::new();
        for spec in &s.sources {
            let names = links::expand(spec, aliases, links_now);
            if names.is_empty() && !links::is_glob(spec) {
                problems
                    .entry(s.id.clone())
                    .or_default()
                    .push(format!("source {spec}: interface not found"));
            }
            for n in names {
                if !sources.contains(&n) {
                    sources.push(n);
                }
            }
        }
        objects.sessions.push(Session {
            id: s.id.clone(),
            priority: s.priority,
            vni: s.vni,
            packet_length: s.packet_length,
            enabled: s.enabled,
            filter_id: s.filter_id.clone(),
            target_id: s.target_id.clone(),
            sources,
            budget: s.budget,
        });
    }
    for r in &snap.receivers {
        if r.state == SessionState::Deleting {
            continue;
        }
        match links::resolve(&r.interface, aliases, links_now) {
            Some(interface) => objects.receivers.push(Receiver {
                id: r.id.clone(),
                interface,
                port: r.destination_port,
                vnis: r.vnis.clone(),
            }),
            None => problems
                .entry(r.id.clone())
                .or_default()
                .push(format!("receiving interface {}: not found", r.interface)),
        }
    }
    (objects, problems)
}

/// Label sets exported last time, to drop the series of objects that are gone.
#[derive(Default)]
struct Exported {
    sessions: Vec<String>,
    sources: Vec<String>,
    rules: Vec<(String, String)>,
    /// (receiver, XDP mode, VNIs).
    receivers: Vec<(String, String, Vec<u32>)>,
}

pub struct Reconciler {
    pub svc: Arc<Service>,
    pub datapath: Datapath,
    pub wake: Arc<Notify>,
    pub link_events: Option<mpsc::UnboundedReceiver<()>>,
    pub netlink: rtnetlink::Handle,
    pub links: Arc<RwLock<Vec<Link>>>,
    /// Holds every pass back by this long (a test and demo aid: makes Modifying observable).
    pub delay: Duration,
    /// Numbers passes as they start (before their snapshot).
    pub started: Arc<std::sync::atomic::AtomicU64>,
    /// The number of the last completed pass: a change committed when `started` was N is
    /// applied once this reaches N + 1.
    pub passes: tokio::sync::watch::Sender<u64>,
    /// The flow logs the flow-log runner collects, updated after each pass.
    pub plan: Arc<RwLock<Plan>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set to true to stop; `run` then hands the data path back.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Reconciler {
    async fn refresh_links(&self) {
        match links::dump(&self.netlink).await {
            Ok(l) => {
                if let Ok(mut cache) = self.links.write() {
                    *cache = l;
                }
            }
            Err(e) => warn!("listing interfaces: {e}"),
        }
    }

    /// One pass: snapshot, apply, settle.
    pub async fn pass(&mut self) -> Result<ApplyReport, String> {
        let started = Instant::now();
        self.refresh_links().await;
        let snap = self.svc.snapshot().map_err(|e| e.to_string())?;
        let links_now = self.links.read().map(|l| l.clone()).unwrap_or_default();
        let (objects, mut problems) = desired(&snap, &self.svc.aliases, &links_now);
        let report = self
            .datapath
            .apply(&objects)
            .await
            .map_err(|e| e.to_string())?;
        for (id, errs) in &report.errors {
            problems
                .entry(id.clone())
                .or_default()
                .extend(errs.iter().cloned());
        }
        self.publish_plan(&snap, &links_now);
        if let Ok(mut paths) = self.svc.copy_paths.write() {
            *paths = self.datapath.copy_paths().clone();
        }
        self.settle(&snap, &problems).await?;
        debug!(elapsed = ?started.elapsed(), "reconciled");
        Ok(report)
    }

    /// Kernel counters → metrics; series of objects that went away are dropped.
    fn publish_counters(&self, exported: &mut Exported) {
        let m = &self.metrics;
        let c = self.datapath.counters();
        let dirs = ["ingress", "egress"];
        let mut sessions = Vec::new();
        let mut skipped = BTreeMap::new();
        for (id, stats) in &c.sessions {
            let skips = crate::datapath::skipped_packets(stats);
            for (d, per_reason) in dirs.iter().zip(&skips) {
                for (reason, n) in crate::datapath::SKIP_REASONS_SHOWN.iter().zip(per_reason) {
                    m.set_total(&m.session_skipped, "sk", &[id, d, reason], *n);
                }
            }
            skipped.insert(id.clone(), skips);
            for (d, s) in dirs.iter().zip(stats) {
                let l = [id.as_str(), d];
                m.set_total(&m.session_packets, "sp", &l, s.packets);
                m.set_total(&m.session_bytes, "sb", &l, s.bytes);
                m.set_total(&m.session_copies, "sc", &l, s.copies);
                m.set_total(&m.session_truncated, "st", &l, s.truncated);
                m.set_total(&m.session_segmented, "sg", &l, s.segmented);
                for (reason, n) in mirror_ebpf::ERR_REASON_NAMES.iter().zip(s.errors) {
                    m.set_total(&m.session_errors, "se", &[id, d, reason], n);
                }
            }
            sessions.push(id.clone());
        }
        for gone in exported.sessions.iter().filter(|s| !sessions.contains(s)) {
            for d in dirs {
                let l = [gone.as_str(), d];
                m.forget(&m.session_packets, "sp", &l);
                m.forget(&m.session_bytes, "sb", &l);
                m.forget(&m.session_copies, "sc", &l);
                m.forget(&m.session_truncated, "st", &l);
                m.forget(&m.session_segmented, "sg", &l);
                for reason in mirror_ebpf::ERR_REASON_NAMES {
                    m.forget(&m.session_errors, "se", &[gone, d, reason]);
                }
                for reason in crate::datapath::SKIP_REASONS_SHOWN {
                    m.forget(&m.session_skipped, "sk", &[gone, d, reason]);
                }
            }
        }
        for gone in exported.sessions.iter().filter(|s| !sessions.contains(s)) {
            for mode in ["fast", "tunnel"] {
                let _ = m.session_copy_path.remove_label_values(&[gone, mode]);
            }
        }
        for (id, path) in self.datapath.copy_paths() {
            for mode in ["fast", "tunnel"] {
                m.session_copy_path
                    .with_label_values(&[id.as_str(), mode])
                    .set(i64::from(path.mode == mode));
            }
        }
        exported.sessions = sessions;
        if let Ok(mut live) = self.svc.skipped.write() {
            *live = skipped;
        }
        let mut sources = Vec::new();
        for (name, stats) in &c.sources {
            for (d, s) in dirs.iter().zip(stats) {
                let l = [name.as_str(), d];
                m.set_total(&m.source_packets, "op", &l, s.packets);
                m.set_total(&m.source_bytes, "ob", &l, s.bytes);
                m.set_total(&m.source_mirrored, "om", &l, s.mirrored);
                m.set_total(&m.source_not_ip, "on", &l, s.not_ip);
                m.set_total(&m.source_malformed, "ox", &l, s.malformed);
            }
            m.source_attached.with_label_values(&[name]).set(1);
            sources.push(name.clone());
        }
        for gone in exported.sources.iter().filter(|s| !sources.contains(s)) {
            m.source_attached.with_label_values(&[gone]).set(0);
            for d in dirs {
                let l = [gone.as_str(), d];
                m.forget(&m.source_packets, "op", &l);
                m.forget(&m.source_bytes, "ob", &l);
                m.forget(&m.source_mirrored, "om", &l);
                m.forget(&m.source_not_ip, "on", &l);
                m.forget(&m.source_malformed, "ox", &l);
            }
        }
        exported.sources = sources;
        let mut rules = Vec::new();
        for (filter, rule, hits) in &c.rules {
            m.set_total(&m.rule_hits, "rh", &[filter, rule], *hits);
            rules.push((filter.clone(), rule.clone()));
        }
        for (f, r) in exported.rules.iter().filter(|x| !rules.contains(x)) {
            m.forget(&m.rule_hits, "rh", &[f, r]);
        }
        exported.rules = rules;
        let receivers = self.datapath.receive.status();
        m.publish_receivers(&receivers, &mut exported.receivers);
        if let Ok(mut live) = self.svc.receiver_status.write() {
            *live = receivers;
        }
        for (prog, ns, runs) in &c.programs {
            m.set_total_seconds(&m.bpf_run_time, "bt", &[prog], *ns);
            m.set_total(&m.bpf_runs, "br", &[prog], *runs);
        }
    }

    fn publish_plan(&self, snap: &Snapshot, links_now: &[Link]) {
        let mut plan = Plan {
            logs: Vec::new(),
            slots: self.datapath.flow_log_slots(),
        };
        for f in &snap.flow_logs {
            if f.state == FlowLogState::Deleting || !f.wanted_active {
                continue;
            }
            let names = crate::api::flowlogs::interfaces(f, &self.svc.aliases, links_now);
            let interfaces = names
                .into_iter()
                .filter_map(|n| {
                    links_now
                        .iter()
                        .find(|l| l.name == n)
                        .map(|l| (l.index, l.name.clone()))
                })
                .collect();
            plan.logs.push(PlannedLog {
                id: f.id.clone(),
                traffic: TrafficType::parse(&f.traffic_type),
                interval: Duration::from_secs(f.interval_secs()),
                project: f.log_project.clone(),
                topic: f.log_topic.clone(),
                interfaces,
                format: crate::flowlog::format::LogFormat::from_stored(f.log_format.as_deref())
                    // Validated by the API before it was stored.
                    .unwrap_or_default(),
            });
        }
        if let Ok(mut p) = self.plan.write() {
            *p = plan;
        }
    }

    /// Marks what this pass applied: only sessions whose generation is still the one the
    /// pass read (a change that arrived meanwhile waits for the next pass).
    async fn settle(
        &self,
        applied: &Snapshot,
        problems: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), String> {
        let _guard = self.svc.write_lock.lock().await;
        let now = self.svc.snapshot().map_err(|e| e.to_string())?;
        let mut batch = Batch::default();
        for s in &now.sessions {
            let Some(was) = applied.session(&s.id) else {
                continue;
            };
            if was.generation != s.generation {
                continue;
            }
            if s.state == SessionState::Deleting {
                batch.delete(Kind::Session, &s.id);
                info!(session = %s.id, "deleted");
                continue;
            }
            let errors = problems.get(&s.id).cloned().unwrap_or_default();
            if s.state != SessionState::Created || s.errors != errors {
                let mut s = s.clone();
                if s.state != SessionState::Created {
                    info!(session = %s.id, from = s.state.as_str(), "created");
                }
                s.state = SessionState::Created;
                s.errors = errors;
                s.updated_at = now_rfc3339();
                batch.put_session(&s).map_err(|e| e.to_string())?;
            }
        }
        for r in &now.receivers {
            let Some(was) = applied.receiver(&r.id) else {
                continue;
            };
            if was.generation != r.generation {
                continue;
            }
            if r.state == SessionState::Deleting {
                batch.delete(Kind::Receiver, &r.id);
                info!(receiver = %r.id, "deleted");
                continue;
            }
            let errors = problems.get(&r.id).cloned().unwrap_or_default();
            if r.state != SessionState::Created || r.errors != errors {
                let mut r = r.clone();
                r.state = SessionState::Created;
                r.errors = errors;
                r.updated_at = now_rfc3339();
                batch.put_receiver(&r).map_err(|e| e.to_string())?;
            }
        }
        for f in &now.flow_logs {
            let Some(was) = applied.flow_log(&f.id) else {
                continue;
            };
            if was.generation != f.generation {
                continue;
            }
            if f.state == FlowLogState::Deleting {
                batch.delete(Kind::FlowLog, &f.id);
                info!(flow_log = %f.id, "deleted");
                continue;
            }
            let state = if f.wanted_active {
                FlowLogState::Active
            } else {
                FlowLogState::Inactive
            };
            let errors = problems.get(&f.id).cloned().unwrap_or_default();
            if f.state != state || f.errors != errors {
                let mut f = f.clone();
                f.state = state;
                f.errors = errors;
                f.updated_at = now_rfc3339();
                batch.put_flow_log(&f).map_err(|e| e.to_string())?;
            }
        }
        self.svc.store.commit(batch).map_err(|e| e.to_string())
    }

    pub async fn run(mut self) -> Datapath {
        let mut exported = Exported::default();
        loop {
            if *self.stop.borrow() {
                return self.datapath;
            }
            let n = self
                .started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            let timer = Instant::now();
            match self.pass().await {
                Ok(_) => {}
                Err(e) => {
                    self.metrics.reconcile_failures.inc();
                    warn!("reconcile failed: {e}");
                }
            }
            self.metrics
                .reconcile_duration
                .observe(timer.elapsed().as_secs_f64());
            self.publish_counters(&mut exported);
            self.passes.send_replace(n);
            // Counters are read every second between passes.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let woke = loop {
                tokio::select! {
                    _ = tick.tick() => {
                        self.publish_counters(&mut exported);
                        // A route or neighbour toward a target changed: rewrite the outer
                        // headers (or move to and from the tunnel device) now.
                        if self.datapath.next_hops_changed().await {
                            break true;
                        }
                    }
                    _ = self.wake.notified() => break true,
                    _ = self.stop.changed() => break false,
                    ev = async {
                        match self.link_events.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if ev.is_none() {
                            self.link_events = None;
                        }
                        break true;
                    }
                }
            };
            if !woke {
                continue;
            }
            // Coalesce a burst (a pod's veth pair appears as several events) into one pass.
            tokio::time::sleep(Duration::from_millis(20).max(self.delay)).await;
            if let Some(rx) = self.link_events.as_mut() {
                while rx.try_recv().is_ok() {}
            }
        }
    }
}
