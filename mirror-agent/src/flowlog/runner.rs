//! The flow-log loop: drains the kernel flow table every tick, accumulates each flow log's
//! flows over its AggregationInterval, and writes its records to its sinks. A sink that
//! fails keeps its records for the next try (bounded) and reports the error on the flow log;
//! the drain and the data path do not wait for it.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    aggregate::{self, Interval, Pending, TrafficType},
    files::{FileFormat, FileSink, FileSinkConfig},
    format::{LogFormat, NodeMeta},
    ipfix::IpfixExporter,
    record::FlowRecord,
};
use crate::datapath::FlowTables;

/// What the reconciler decided: the active flow logs and the interfaces they cover.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub logs: Vec<PlannedLog>,
    /// (interface index, source stats slot) of every flow-logged interface.
    pub slots: Vec<(u32, u32)>,
}

#[derive(Clone, Debug)]
pub struct PlannedLog {
    pub id: String,
    pub traffic: TrafficType,
    pub interval: Duration,
    pub project: String,
    pub topic: String,
    pub interfaces: BTreeMap<u32, String>,
    /// Which fields its records carry, in which order.
    pub format: LogFormat,
}

/// Records kept for a failing sink, at most (older ones are dropped and counted).
const BACKLOG_MAX: usize = 200_000;

struct LogState {
    pending: Pending,
    started: u64,
    sink: Option<FileSink>,
    /// The (project, topic) its sink writes to: a Kubernetes FlowLog can change them.
    topic: (String, String),
    backlog: Vec<FlowRecord>,
    dropped: u64,
}

pub struct Runner {
    pub tables: FlowTables,
    pub plan: Arc<RwLock<Plan>>,
    /// Errors by flow log id, shown by DescribeFlowLogs.
    pub status: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
    pub state_dir: PathBuf,
    pub format: FileFormat,
    /// The node's values for the inventory fields (account-id, vpc-id, ...).
    pub meta: NodeMeta,
    pub ipfix: Option<SocketAddr>,
    pub drop_reasons: BTreeMap<u64, String>,
    pub tick: Duration,
    pub stop: watch::Receiver<bool>,
    /// Counts completed ticks (tests and readiness wait on it).
    pub ticks: watch::Sender<u64>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix ns minus CLOCK_MONOTONIC ns now: turns `bpf_ktime_get_ns` into wall-clock time.
fn mono_to_unix_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    real - mono
}

impl Runner {
    fn set_status(&self, id: &str, errors: Vec<String>) {
        if let Ok(mut s) = self.status.write() {
            if errors.is_empty() {
                s.remove(id);
            } else {
                s.insert(id.to_string(), errors);
            }
        }
    }

    pub async fn run(mut self) {
        let mut logs: HashMap<String, LogState> = HashMap::new();
        let mut ipfix: Option<IpfixExporter> = None;
        let mut tick_no = 0u64;
        loop {
            tokio::select! {
                _ = self.stop.changed() => {}
                _ = tokio::time::sleep(self.tick) => {}
            }
            // Stopping: one last drain, and every log writes what it holds as a short
            // interval. A restart (a rolling update leaves the data path running) then loses
            // nothing: what the kernel counts from here on is the next agent's.
            let closing = *self.stop.borrow();
            let plan = self.plan.read().map(|p| p.clone()).unwrap_or_default();
            let slots: Vec<u32> = plan.slots.iter().map(|(_, s)| *s).collect();
            let now = now_unix();
            logs.retain(|id, _| plan.logs.iter().any(|l| &l.id == id));
            for log in &plan.logs {
                logs.entry(log.id.clone()).or_insert_with(|| LogState {
                    pending: Pending::default(),
                    started: now,
                    sink: None,
                    topic: (log.project.clone(), log.topic.clone()),
                    backlog: Vec::new(),
                    dropped: 0,
                });
            }
            // Straight from the kernel's batches into each flow log's interval: no copy of
            // the whole table in between.
            let tables = &mut self.tables;
            let drain_started = std::time::Instant::now();
            let mut drained_flows = 0u64;
            let skipped = tokio::task::block_in_place(|| {
                tables.drain_with(Duration::from_millis(10), &slots, |key, value| {
                    drained_flows += 1;
                    for log in plan
                        .logs
                        .iter()
                        .filter(|l| l.interfaces.contains_key(&key.ifindex))
                    {
                        if let Some(st) = logs.get_mut(&log.id) {
                            st.pending.add(*key, *value);
                        }
                    }
                })
            });
            self.metrics
                .flowlog_drain
                .observe(drain_started.elapsed().as_secs_f64());
            self.metrics.flowlog_active_flows.set(drained_flows as i64);
            self.metrics.flowlog_evicted_flows.inc_by(drained_flows);
            let skipped = match skipped {
                Ok(s) => s,
                Err(e) => {
                    warn!("draining the flow table: {e}");
                    if closing {
                        return;
                    }
                    continue;
                }
            };
            for (index, n) in skipped {
                let slot = index / mirror_ebpf::DIRECTIONS as u32;
                let Some((ifindex, _)) = plan.slots.iter().find(|(_, s)| *s == slot) else {
                    continue;
                };
                for log in plan
                    .logs
                    .iter()
                    .filter(|l| l.interfaces.contains_key(ifindex))
                {
                    if let Some(st) = logs.get_mut(&log.id) {
                        *st.pending.skipped.entry(*ifindex).or_default() += n;
                    }
                }
            }
            let offset = mono_to_unix_ns();
            for log in &plan.logs {
                let Some(st) = logs.get_mut(&log.id) else {
                    continue;
                };
                if !closing && now.saturating_sub(st.started) < log.interval.as_secs() {
                    continue;
                }
                let pending = std::mem::take(&mut st.pending);
                let records = aggregate::records(
                    pending,
                    &Interval {
                        flow_log_id: &log.id,
                        traffic: log.traffic,
                        interfaces: &log.interfaces,
                        start: st.started,
                        end: now,
                        mono_to_unix_ns: offset,
                        drop_reasons: &self.drop_reasons,
                    },
                );
                st.started = now;
                self.metrics
                    .flowlog_interval_records
                    .with_label_values(&[log.id.as_str()])
                    .set(records.len() as i64);
                self.metrics
                    .flowlog_interval_end
                    .with_label_values(&[log.id.as_str()])
                    .set(now as i64);
                for r in &records {
                    self.metrics
                        .flowlog_records
                        .with_label_values(&[log.id.as_str(), r.log_status.as_str()])
                        .inc();
                    if r.skipped_packets > 0 {
                        self.metrics
                            .flowlog_skipped_packets
                            .with_label_values(&[log.id.as_str()])
                            .inc_by(r.skipped_packets);
                    }
                }
                let mut errors = Vec::new();
                if let Some(addr) = self.ipfix {
                    if ipfix.is_none() {
                        match IpfixExporter::new(addr, 1) {
                            Ok(x) => ipfix = Some(x),
                            Err(e) => errors.push(format!("IPFIX collector {addr}: {e}")),
                        }
                    }
                    if let Some(x) = ipfix.as_mut()
                        && let Err(e) = x.send(&records)
                    {
                        self.metrics
                            .flowlog_sink_errors
                            .with_label_values(&[log.id.as_str(), "ipfix"])
                            .inc();
                        errors.push(format!("IPFIX collector {addr}: {e}"));
                    }
                }
                st.backlog.extend(records);
                if st.backlog.len() > BACKLOG_MAX {
                    let extra = st.backlog.len() - BACKLOG_MAX;
                    st.backlog.drain(..extra);
                    st.dropped += extra as u64;
                }
                if st.topic != (log.project.clone(), log.topic.clone()) {
                    st.sink = None;
                    st.topic = (log.project.clone(), log.topic.clone());
                }
                if st.sink.is_none() {
                    let dir = self
                        .state_dir
                        .join("flowlogs")
                        .join(&log.project)
                        .join(&log.topic);
                    let mut cfg = FileSinkConfig::new(dir);
                    cfg.format = self.format;
                    cfg.log_format = log.format.clone();
                    cfg.meta = self.meta.clone();
                    match FileSink::open(cfg) {
                        Ok(s) => st.sink = Some(s),
                        Err(e) => errors.push(format!("file sink: {e}")),
                    }
                }
                if let Some(sink) = st.sink.as_mut()
                    && let Err(e) = sink.set_log_format(log.format.clone())
                {
                    errors.push(format!("file sink: {e}"));
                }
                if let Some(sink) = st.sink.as_mut() {
                    match sink.write(&st.backlog) {
                        Ok(()) => {
                            st.backlog.clear();
                            let written = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64());
                            self.metrics
                                .flowlog_interval_delay
                                .observe((written - now as f64).max(0.0));
                        }
                        Err(e) => {
                            self.metrics
                                .flowlog_sink_errors
                                .with_label_values(&[log.id.as_str(), "file"])
                                .inc();
                            errors.push(format!(
                                "file sink: {e}{}; {} records kept for retry",
                                if e.is_disk_full() { " (disk full)" } else { "" },
                                st.backlog.len()
                            ));
                        }
                    }
                }
                if st.dropped > 0 {
                    errors.push(format!(
                        "{} records dropped while the sink was failing",
                        st.dropped
                    ));
                }
                debug!(flow_log = %log.id, errors = errors.len(), "interval written");
                self.set_status(&log.id, errors);
            }
            tick_no += 1;
            self.ticks.send_replace(tick_no);
            if closing {
                return;
            }
        }
    }
}
