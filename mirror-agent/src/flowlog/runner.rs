//! The flow-log loop. The kernel aggregates each flow over the interval: the runner wakes
//! every tick (`flow_drain_ms`) but drains the kernel flow table only when a flow log's
//! AggregationInterval has ended (or when the agent stops), and streams the drained flows
//! into that flow log's records and sinks in batches of [`BATCH`], so an interval is never
//! held in memory as a whole, whatever its number of flows.
//!
//! A drain empties the whole table, for every flow log at once: the flows of a flow log whose
//! interval has not ended yet (another interval length, or another start, on the interfaces
//! drained) are merged into its [`Pending`] until its own end. That case holds those flows in
//! memory (about 100 bytes per distinct flow), as every interval did before the streaming.
//!
//! A sink that fails keeps its records for the next try (bounded) and reports the error on
//! the flow log; the drain and the data path do not wait for it.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use mirror_ebpf::{FlowKey, FlowValue};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    aggregate::{self, Interval, IntervalRecords, Pending, TrafficType, Twins},
    files::{FileFormat, FileSink, FileSinkConfig, SinkError},
    format::{LogFormat, NodeMeta},
    ipfix::IpfixExporter,
    record::FlowRecord,
};
use crate::{datapath::FlowTables, metrics::Metrics};

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

/// Ticks without flow logs on which the table is still drained: at start (an earlier agent's
/// strays) and after the last flow log went (packets counted while its interfaces stopped).
const STRAY_DRAINS: u32 = 3;

/// Records kept for a failing sink, at most (older ones are dropped and counted).
const BACKLOG_MAX: usize = 200_000;

/// Records per sink write: one fdatasync (and one IPFIX burst) covers this many, while the
/// batch and its encoded lines stay at a few MB however many flows the interval has.
pub const BATCH: usize = 16_384;

struct LogState {
    /// Flows drained while the interval had not ended (see the module comment).
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
    pub metrics: Arc<Metrics>,
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

/// A flow log whose interval ends at this drain.
struct Closing<'a> {
    records: IntervalRecords<'a>,
    /// Its flows come from its `pending` (merged with this drain's) rather than straight
    /// from the drain: an earlier drain happened within its interval.
    merged: bool,
    writer: Writer<'a>,
}

/// A closing interval's records on their way to the sinks, and how the sinks fared.
struct Writer<'a> {
    id: &'a str,
    batch: Vec<FlowRecord>,
    /// Records of the interval so far (OK, NODATA and SKIPDATA).
    total: u64,
    errors: Vec<String>,
    /// The file sink is open and has not failed in this interval: later batches of a failed
    /// interval go to the backlog without another try.
    file_ok: bool,
    file_error: Option<SinkError>,
    ipfix_ok: bool,
}

/// What every flow log's batches go through.
struct Out<'r> {
    ipfix: &'r mut Option<IpfixExporter>,
    ipfix_addr: Option<SocketAddr>,
    metrics: &'r Metrics,
}

impl Writer<'_> {
    fn push(&mut self, st: &mut LogState, out: &mut Out<'_>, r: FlowRecord) {
        self.batch.push(r);
        if self.batch.len() >= BATCH {
            self.flush(st, out);
        }
    }

    /// Writes the batch to the sinks: IPFIX, then the file (after the backlog of a failed
    /// earlier try, to keep the order).
    fn flush(&mut self, st: &mut LogState, out: &mut Out<'_>) {
        if self.batch.is_empty() {
            return;
        }
        let id = self.id;
        self.total += self.batch.len() as u64;
        // Counted per batch: a metric lookup per record would cost more than the record.
        let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut skipped = 0;
        for r in &self.batch {
            *by_status.entry(r.log_status.as_str()).or_default() += 1;
            skipped += r.skipped_packets;
        }
        for (status, n) in by_status {
            out.metrics
                .flowlog_records
                .with_label_values(&[id, status])
                .inc_by(n);
        }
        if skipped > 0 {
            out.metrics
                .flowlog_skipped_packets
                .with_label_values(&[id])
                .inc_by(skipped);
        }
        if let Some(addr) = out.ipfix_addr
            && self.ipfix_ok
        {
            if out.ipfix.is_none() {
                match IpfixExporter::new(addr, 1) {
                    Ok(x) => *out.ipfix = Some(x),
                    Err(e) => {
                        self.errors.push(format!("IPFIX collector {addr}: {e}"));
                        self.ipfix_ok = false;
                    }
                }
            }
            if let Some(x) = out.ipfix.as_mut()
                && let Err(e) = x.send(&self.batch)
            {
                out.metrics
                    .flowlog_sink_errors
                    .with_label_values(&[id, "ipfix"])
                    .inc();
                self.errors.push(format!("IPFIX collector {addr}: {e}"));
                // The rest of the interval would fail the same way: try again next interval.
                self.ipfix_ok = false;
            }
        }
        if self.file_ok
            && let Some(sink) = st.sink.as_mut()
        {
            let written = if st.backlog.is_empty() {
                Ok(())
            } else {
                sink.write(&st.backlog).map(|()| st.backlog.clear())
            }
            .and_then(|()| sink.write(&self.batch));
            match written {
                Ok(()) => {
                    self.batch.clear();
                    return;
                }
                Err(e) => {
                    out.metrics
                        .flowlog_sink_errors
                        .with_label_values(&[id, "file"])
                        .inc();
                    self.file_ok = false;
                    self.file_error = Some(e);
                }
            }
        }
        st.backlog.append(&mut self.batch);
        if st.backlog.len() > BACKLOG_MAX {
            let extra = st.backlog.len() - BACKLOG_MAX;
            st.backlog.drain(..extra);
            st.dropped += extra as u64;
        }
    }
}

/// A flow log during one tick: its state, and its interval if it ends now.
struct Active<'a> {
    log: &'a PlannedLog,
    st: &'a mut LogState,
    closing: Option<Closing<'a>>,
}

/// One drained flow to the flow logs covering its interface: straight into the records of
/// those whose interval ends now, into the pending flows of the others.
fn route(
    active: &mut [Active<'_>],
    twins: &mut Twins,
    out: &mut Out<'_>,
    key: &FlowKey,
    value: &FlowValue,
) {
    // Settled once for every flow log that streams it: `Twins` consumes the REJECT twin.
    let mut settled: Option<Option<FlowValue>> = None;
    for a in active
        .iter_mut()
        .filter(|a| a.log.interfaces.contains_key(&key.ifindex))
    {
        match a.closing.as_mut() {
            Some(c) if !c.merged => {
                let v = *settled.get_or_insert_with(|| twins.settle(key, value));
                if let Some(v) = v
                    && let Some(r) = c.records.record(key, &v)
                {
                    c.writer.push(a.st, out, r);
                }
            }
            _ => a.st.pending.add(*key, *value),
        }
    }
}

fn set_status(status: &RwLock<BTreeMap<String, Vec<String>>>, id: &str, errors: Vec<String>) {
    if let Ok(mut s) = status.write() {
        if errors.is_empty() {
            s.remove(id);
        } else {
            s.insert(id.to_string(), errors);
        }
    }
}

impl Runner {
    pub async fn run(mut self) {
        let mut logs: HashMap<String, LogState> = HashMap::new();
        let mut ipfix: Option<IpfixExporter> = None;
        let mut tick_no = 0u64;
        // Drains left for the strays of flow logs that are gone (see below).
        let mut stray_drains = STRAY_DRAINS;
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
            let any_due = closing
                || plan.logs.iter().any(|log| {
                    logs.get(&log.id)
                        .is_some_and(|st| now.saturating_sub(st.started) >= log.interval.as_secs())
                });
            // Without flow logs the table holds only strays (a deleted flow log's last
            // packets, or an earlier agent's): drained for a few ticks once the last flow log
            // is gone (packets in flight when its interfaces stopped counting), then left
            // alone. Every drain walks the tables' buckets and the CPUs' caches, which on an
            // idle node took about 2 % of a core for nothing (perf, wire bench).
            let strays = plan.logs.is_empty() && stray_drains > 0;
            if !plan.logs.is_empty() {
                stray_drains = STRAY_DRAINS;
            }
            if any_due || strays {
                let cx = Context {
                    status: &self.status,
                    state_dir: &self.state_dir,
                    format: self.format,
                    meta: &self.meta,
                    ipfix: self.ipfix,
                    drop_reasons: &self.drop_reasons,
                    metrics: &self.metrics,
                };
                let slots: Vec<u32> = plan.slots.iter().map(|(_, s)| *s).collect();
                let tables = &mut self.tables;
                let drained = tokio::task::block_in_place(|| {
                    close_intervals(&cx, &plan, &mut logs, &mut ipfix, now, closing, |f| {
                        tables.drain_with(Duration::from_millis(10), &slots, f)
                    })
                });
                if !drained {
                    if closing {
                        return;
                    }
                    continue;
                }
                // Only a drain that happened counts: a failed one is tried again next tick.
                if strays {
                    stray_drains -= 1;
                }
            }
            tick_no += 1;
            self.ticks.send_replace(tick_no);
            if closing {
                return;
            }
        }
    }
}

/// What closing an interval needs of the runner besides the kernel table.
struct Context<'r> {
    status: &'r RwLock<BTreeMap<String, Vec<String>>>,
    state_dir: &'r Path,
    format: FileFormat,
    meta: &'r NodeMeta,
    ipfix: Option<SocketAddr>,
    drop_reasons: &'r BTreeMap<u64, String>,
    metrics: &'r Metrics,
}

/// The flow source of one drain: hands every flow to the callback, REJECT flows before
/// ACCEPT flows and each key once (`FlowTables::drain_with`'s contract), and returns the
/// SKIPDATA counts by stats index.
type Drain<'f> = &'f mut dyn FnMut(&FlowKey, &FlowValue);

/// Drains the kernel table (`drain`) and closes the intervals that end `now` (all of them
/// when `closing`), streaming their records to the sinks. False when the drain failed before
/// reading anything: the intervals stay open for the next tick.
fn close_intervals<E: std::fmt::Display>(
    cx: &Context<'_>,
    plan: &Plan,
    logs: &mut HashMap<String, LogState>,
    ipfix: &mut Option<IpfixExporter>,
    now: u64,
    closing: bool,
    drain: impl FnOnce(Drain<'_>) -> Result<Vec<(u32, u64)>, E>,
) -> bool {
    let offset = mono_to_unix_ns();
    let mut active: Vec<Active<'_>> = Vec::new();
    for (id, st) in logs.iter_mut() {
        let Some(log) = plan.logs.iter().find(|l| &l.id == id) else {
            continue;
        };
        let ends = closing || now.saturating_sub(st.started) >= log.interval.as_secs();
        let closing = ends.then(|| {
            let mut errors = Vec::new();
            open_sink(st, log, cx, &mut errors);
            Closing {
                records: IntervalRecords::new(Interval {
                    flow_log_id: &log.id,
                    traffic: log.traffic,
                    interfaces: &log.interfaces,
                    start: st.started,
                    end: now,
                    mono_to_unix_ns: offset,
                    drop_reasons: cx.drop_reasons,
                }),
                merged: !st.pending.flows.is_empty(),
                writer: Writer {
                    id: &log.id,
                    batch: Vec::new(),
                    total: 0,
                    errors,
                    file_ok: st.sink.is_some(),
                    file_error: None,
                    ipfix_ok: true,
                },
            }
        });
        active.push(Active { log, st, closing });
    }
    let metrics = cx.metrics;
    let mut out = Out {
        ipfix,
        ipfix_addr: cx.ipfix,
        metrics,
    };
    // Straight from the kernel's batches into the records: no copy of the table.
    let mut twins = Twins::default();
    let drain_started = std::time::Instant::now();
    let mut drained_flows = 0u64;
    let skipped = drain(&mut |key, value| {
        drained_flows += 1;
        route(&mut active, &mut twins, &mut out, key, value);
    });
    metrics
        .flowlog_drain
        .observe(drain_started.elapsed().as_secs_f64());
    metrics.flowlog_active_flows.set(drained_flows as i64);
    metrics.flowlog_evicted_flows.inc_by(drained_flows);
    if twins.late_rejects > 0 {
        warn!(
            late = twins.late_rejects,
            "the drain yielded REJECT flows after ACCEPT flows: their packets may also be in ACCEPT records"
        );
    }
    drop(twins);
    let (skipped, drain_error) = match skipped {
        Ok(s) => (s, None),
        Err(e) => {
            warn!("draining the flow table: {e}");
            if drained_flows == 0 {
                return false;
            }
            // Records of what was read may be written already: close with them, and say
            // that the interval may lack flows (those left in the table go to the next one).
            (
                Vec::new(),
                Some(format!(
                    "draining the flow table: {e}; the interval may lack flows"
                )),
            )
        }
    };
    for (index, n) in skipped {
        let slot = index / mirror_ebpf::DIRECTIONS as u32;
        let Some((ifindex, _)) = plan.slots.iter().find(|(_, s)| *s == slot) else {
            continue;
        };
        for a in active
            .iter_mut()
            .filter(|a| a.log.interfaces.contains_key(ifindex))
        {
            *a.st.pending.skipped.entry(*ifindex).or_default() += n;
        }
    }
    for a in &mut active {
        let Some(Closing {
            mut records,
            merged,
            mut writer,
        }) = a.closing.take()
        else {
            continue;
        };
        let st = &mut *a.st;
        let pending = std::mem::take(&mut st.pending);
        if merged {
            aggregate::stream_pending(&pending, &mut records, |r| writer.push(st, &mut out, r));
        }
        for r in records.finish(&pending.skipped) {
            writer.push(st, &mut out, r);
        }
        drop(pending);
        writer.flush(st, &mut out);
        st.started = now;
        let id = a.log.id.as_str();
        metrics
            .flowlog_interval_records
            .with_label_values(&[id])
            .set(writer.total as i64);
        metrics
            .flowlog_interval_end
            .with_label_values(&[id])
            .set(now as i64);
        let mut errors = writer.errors;
        errors.extend(drain_error.clone());
        match writer.file_error {
            Some(e) => errors.push(format!(
                "file sink: {e}{}; {} records kept for retry",
                if e.is_disk_full() { " (disk full)" } else { "" },
                st.backlog.len()
            )),
            None if writer.file_ok => {
                let written = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics
                    .flowlog_interval_delay
                    .observe((written - now as f64).max(0.0));
            }
            None => {}
        }
        if st.dropped > 0 {
            errors.push(format!(
                "{} records dropped while the sink was failing",
                st.dropped
            ));
        }
        debug!(flow_log = %id, records = writer.total, errors = errors.len(), "interval written");
        set_status(cx.status, id, errors);
    }
    true
}

/// Opens (or reopens, after a topic change) the flow log's file sink and applies its
/// LogFormat, before the interval's first batch.
fn open_sink(st: &mut LogState, log: &PlannedLog, cx: &Context<'_>, errors: &mut Vec<String>) {
    if st.topic != (log.project.clone(), log.topic.clone()) {
        st.sink = None;
        st.topic = (log.project.clone(), log.topic.clone());
    }
    if st.sink.is_none() {
        let dir = cx
            .state_dir
            .join("flowlogs")
            .join(&log.project)
            .join(&log.topic);
        let mut cfg = FileSinkConfig::new(dir);
        cfg.format = cx.format;
        cfg.log_format = log.format.clone();
        cfg.meta = cx.meta.clone();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_ebpf::{FLOW_ACCEPT, FLOW_REJECT};
    use serde_json::Value as Json;

    /// Distinct ACCEPT flows of the synthetic interval: several batches' worth.
    const N: u32 = 100_000;
    /// The first DROPPED of them lost packets to a drop (a REJECT twin)...
    const DROPPED: u32 = 1_000;
    /// ...and the first EMPTIED of those lost every packet (no ACCEPT record left).
    const EMPTIED: u32 = 10;
    const NOW: u64 = 1_700_000_600;

    struct TempDir(PathBuf);

    /// What an interval's processing needs around it: a state directory removed afterwards,
    /// metrics and the flow logs' status.
    struct Fixture {
        dir: TempDir,
        metrics: Metrics,
        status: RwLock<BTreeMap<String, Vec<String>>>,
        drop_reasons: BTreeMap<u64, String>,
        meta: NodeMeta,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            Fixture {
                dir: TempDir(std::env::temp_dir().join(format!(
                    "{name}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ))),
                metrics: Metrics::new(),
                status: RwLock::new(BTreeMap::new()),
                drop_reasons: BTreeMap::new(),
                meta: NodeMeta::default(),
            }
        }

        fn cx(&self) -> Context<'_> {
            Context {
                status: &self.status,
                state_dir: &self.dir.0,
                format: FileFormat::JsonLines,
                meta: &self.meta,
                ipfix: None,
                drop_reasons: &self.drop_reasons,
                metrics: &self.metrics,
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(i: u32, action: u8) -> FlowKey {
        FlowKey {
            ifindex: 2,
            direction: 0,
            ip_version: 4,
            protocol: 17,
            action,
            src: [
                u32::from_ne_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            dst: [u32::from_ne_bytes([10, 255, 0, 1]), 0, 0, 0],
            src_port: 1000,
            dst_port: 53,
        }
    }

    fn val(packets: u64) -> FlowValue {
        FlowValue {
            packets,
            bytes: packets * 100,
            first_ns: 1,
            last_ns: 2,
            tcp_flags: 0,
            drop_reason: 0,
        }
    }

    /// The kernel table as `drain_with` yields it: every REJECT flow first, each key once.
    fn kernel() -> Vec<(FlowKey, FlowValue)> {
        let mut flows: Vec<(FlowKey, FlowValue)> = (0..DROPPED)
            .map(|i| (key(i, FLOW_REJECT), val(if i < EMPTIED { 3 } else { 1 })))
            .collect();
        // A drop without an ACCEPT twin (dropped before TC saw it).
        flows.push((key(N + 1, FLOW_REJECT), val(1)));
        flows.extend((0..N).map(|i| (key(i, FLOW_ACCEPT), val(3))));
        flows
    }

    fn log(id: &str, interval: u64, interfaces: &[(u32, &str)]) -> PlannedLog {
        PlannedLog {
            id: id.to_string(),
            traffic: TrafficType::All,
            interval: Duration::from_secs(interval),
            project: "p".to_string(),
            topic: id.to_string(),
            interfaces: interfaces
                .iter()
                .map(|(i, n)| (*i, n.to_string()))
                .collect(),
            format: LogFormat::parse(
                "${interface-id} ${srcaddr} ${packets} ${bytes} ${action} ${log-status} ${skipped-packets}",
            )
            .unwrap_or_default(),
        }
    }

    fn state(started: u64, log: &PlannedLog) -> LogState {
        LogState {
            pending: Pending::default(),
            started,
            sink: None,
            topic: (log.project.clone(), log.topic.clone()),
            backlog: Vec::new(),
            dropped: 0,
        }
    }

    fn lines(dir: &Path, topic: &str) -> Vec<Json> {
        let text = std::fs::read_to_string(
            dir.join("flowlogs")
                .join("p")
                .join(topic)
                .join("current.jsonl"),
        )
        .unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Json::Null))
            .collect()
    }

    /// (records, packets) of the lines with this interface, action and status.
    fn sum(lines: &[Json], interface: &str, action: Option<&str>, status: &str) -> (u64, u64) {
        let matching = lines.iter().filter(|l| {
            l["interface-id"] == interface
                && l["log-status"] == status
                && action.is_none_or(|a| l["action"] == a)
        });
        matching.fold((0, 0), |(n, p), l| {
            (n + 1, p + l["packets"].as_u64().unwrap_or(0))
        })
    }

    /// eth0's flows of [`kernel`] once the drops are off their ACCEPT twins.
    fn check_eth0(lines: &[Json]) {
        let dropped_packets = u64::from(DROPPED - EMPTIED) + 3 * u64::from(EMPTIED);
        assert_eq!(
            sum(lines, "eth0", Some("ACCEPT"), "OK"),
            (u64::from(N - EMPTIED), 3 * u64::from(N) - dropped_packets),
            "ACCEPT flows less their REJECT twins; emptied ones gone"
        );
        assert_eq!(
            sum(lines, "eth0", Some("REJECT"), "OK"),
            (u64::from(DROPPED) + 1, dropped_packets + 1),
            "every REJECT flow as it was"
        );
    }

    #[test]
    fn streams_an_interval_of_100k_flows_in_batches() {
        let fx = Fixture::new("flowlog-runner");
        let (dir, metrics, status) = (&fx.dir, &fx.metrics, &fx.status);
        let cx = fx.cx();
        // fl-a's interval ends now; fl-b (eth0 too, a longer interval) is in the middle of
        // its own, so it merges the drain into its pending flows.
        let a = log("fl-a", 60, &[(2, "eth0"), (3, "eth1"), (4, "eth2")]);
        let b = log("fl-b", 600, &[(2, "eth0")]);
        let plan = Plan {
            logs: vec![a.clone(), b.clone()],
            slots: vec![(2, 0), (3, 5), (4, 6)],
        };
        let mut logs = HashMap::from([
            (a.id.clone(), state(NOW - 60, &a)),
            (b.id.clone(), state(NOW - 30, &b)),
        ]);
        let flows = kernel();
        let mut ipfix = None;
        let drained = close_intervals(&cx, &plan, &mut logs, &mut ipfix, NOW, false, |f| {
            for (k, v) in &flows {
                f(k, v);
            }
            // eth1 (stats slot 5, ingress) lost 7 packets to a full table.
            Ok::<_, std::convert::Infallible>(vec![(5 * 2, 7)])
        });
        assert!(drained);
        let got = lines(&dir.0, "fl-a");
        check_eth0(&got);
        assert_eq!(
            sum(&got, "eth1", None, "SKIPDATA"),
            (1, 0),
            "eth1: SKIPDATA"
        );
        assert!(
            got.iter()
                .any(|l| l["interface-id"] == "eth1" && l["skipped-packets"] == 7),
            "the lost packets are counted"
        );
        assert_eq!(sum(&got, "eth2", None, "NODATA"), (1, 0), "eth2: NODATA");
        let total = u64::from(N - EMPTIED + DROPPED + 1) + 2;
        assert_eq!(got.len() as u64, total, "one record per flow, nothing else");
        assert_eq!(
            metrics
                .flowlog_interval_records
                .with_label_values(&["fl-a"])
                .get(),
            total as i64
        );
        assert_eq!(metrics.flowlog_active_flows.get(), flows.len() as i64);
        let st = &logs["fl-a"];
        assert_eq!(st.started, NOW);
        assert!(st.pending.is_empty() && st.backlog.is_empty());
        assert!(status.read().map(|s| s.is_empty()).unwrap_or(false));

        // fl-b wrote nothing yet: its flows wait in its pending, as drained.
        assert!(lines(&dir.0, "fl-b").is_empty());
        assert_eq!(logs["fl-b"].pending.flows.len(), flows.len());
        assert_eq!(logs["fl-b"].started, NOW - 30);

        // The agent stops: one more (empty) drain closes both.
        let drained = close_intervals(&cx, &plan, &mut logs, &mut ipfix, NOW + 5, true, |_| {
            Ok::<_, std::convert::Infallible>(Vec::new())
        });
        assert!(drained);
        let b_lines = lines(&dir.0, "fl-b");
        check_eth0(&b_lines);
        assert_eq!(b_lines.len() as u64, u64::from(N - EMPTIED + DROPPED + 1));
        let a_lines = lines(&dir.0, "fl-a");
        assert_eq!(
            a_lines.len() as u64,
            total + 3,
            "fl-a's short last interval: NODATA on each interface"
        );
        assert!(logs.values().all(|st| st.pending.is_empty()));
    }

    #[test]
    fn a_failed_drain_leaves_the_interval_open_unless_it_read_flows() {
        let fx = Fixture::new("flowlog-runner-fail");
        let (dir, status) = (&fx.dir, &fx.status);
        let cx = fx.cx();
        let a = log("fl-a", 60, &[(2, "eth0")]);
        let plan = Plan {
            logs: vec![a.clone()],
            slots: vec![(2, 0)],
        };
        let mut logs = HashMap::from([(a.id.clone(), state(NOW - 60, &a))]);
        let drained = close_intervals(&cx, &plan, &mut logs, &mut None, NOW, false, |_| {
            Err("no such map")
        });
        assert!(!drained);
        assert_eq!(logs["fl-a"].started, NOW - 60, "still open");
        assert!(
            lines(&dir.0, "fl-a").is_empty(),
            "no NODATA for a failed drain"
        );

        // Failing after some flows: those are written, the interval closes, the flow log says
        // it may lack flows.
        let drained = close_intervals(&cx, &plan, &mut logs, &mut None, NOW, false, |f| {
            for i in 0..3 {
                f(&key(i, FLOW_ACCEPT), &val(1));
            }
            Err("EIO")
        });
        assert!(drained);
        assert_eq!(logs["fl-a"].started, NOW);
        assert_eq!(lines(&dir.0, "fl-a").len(), 3);
        let errors = status.read().map(|s| s.clone()).unwrap_or_default();
        assert!(
            errors["fl-a"].iter().any(|e| e.contains("may lack flows")),
            "{errors:?}"
        );
    }
}
