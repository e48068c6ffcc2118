//! Agent memory for one aggregation interval of `n` distinct flows: the flow-log runner's own
//! code (`Runner::run`, closing the interval as on SIGTERM: one drain of the kernel table, the
//! records streamed to JSON Lines files in batches), against the runner before the streaming
//! (the whole interval merged into a map, then all its records, then one write), kept here as
//! the peer.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use mirror_agent::{
    datapath::{Datapath, FlowTables, TcAttachMode},
    flowlog::{
        aggregate::{self, Interval, Pending, TrafficType},
        files::{FileFormat, FileSink, FileSinkConfig},
        format::{LogFormat, NodeMeta},
        runner::{BATCH, Plan, PlannedLog, Runner},
    },
    metrics::Metrics,
};
use mirror_tests::netns::in_netns;

use crate::drain::{fill, rss_kib};

const GOAL_MIB: f64 = 64.0;

/// One way of closing the interval.
pub struct Row {
    pub approach: &'static str,
    pub ms: f64,
    pub records: u64,
    /// RSS when the interval starts closing (the table full, nothing drained), KiB.
    pub start_kib: u64,
    /// Peak RSS while it closes, KiB.
    pub peak_kib: u64,
}

pub struct IntervalRss {
    pub n: u32,
    pub rows: Vec<Row>,
    /// Whether the kernel let us restart VmHWM before each row (else peaks are of the whole
    /// process so far).
    pub peak_reset: bool,
}

/// Restarts VmHWM from the current RSS (`5` to clear_refs, Linux >= 4.0), so each row's peak
/// is its own; freed heap is first handed back so that a row does not start on the previous
/// row's leftovers.
fn fresh_peak() -> bool {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Lines in the files under `dir` (one record each).
fn lines_under(dir: &Path) -> u64 {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += lines_under(&p);
        } else if let Ok(bytes) = std::fs::read(&p) {
            n += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    n
}

fn interfaces() -> BTreeMap<u32, String> {
    BTreeMap::from([(2, "bx0".to_string())])
}

/// The runner before the streaming: drained into the interval's map, records made of the
/// whole map, written with one write.
fn whole_interval(flows: &mut FlowTables, n: u32, dir: &Path) -> Row {
    fill(flows, n);
    let mut sink = FileSink::open(FileSinkConfig::new(dir)).expect("file sink");
    fresh_peak();
    let (start_kib, _) = rss_kib();
    let started = Instant::now();
    let mut pending = Pending::default();
    flows
        .drain_with(Duration::from_millis(10), &[], |k, v| pending.add(*k, *v))
        .expect("drain");
    let interfaces = interfaces();
    let reasons = BTreeMap::new();
    let records = aggregate::records(
        pending,
        &Interval {
            flow_log_id: "fl-bench",
            traffic: TrafficType::All,
            interfaces: &interfaces,
            start: 0,
            end: u64::MAX,
            mono_to_unix_ns: 0,
            drop_reasons: &reasons,
        },
    );
    sink.write(&records).expect("writing records");
    drop(records);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let (_, peak_kib) = rss_kib();
    Row {
        approach: "whole interval in memory (the runner before; peer)",
        ms,
        records: lines_under(dir),
        start_kib,
        peak_kib,
    }
}

/// The agent's runner: the interval closed by `Runner::run` as on SIGTERM.
fn streamed(rt: &tokio::runtime::Runtime, flows: FlowTables, n: u32, dir: &Path) -> Row {
    let mut flows = flows;
    fill(&mut flows, n);
    let plan = Plan {
        logs: vec![PlannedLog {
            id: "fl-bench".to_string(),
            traffic: TrafficType::All,
            interval: Duration::from_secs(600),
            project: "p".to_string(),
            topic: "t".to_string(),
            interfaces: interfaces(),
            format: LogFormat::default(),
        }],
        slots: Vec::new(),
    };
    // Stopping from the start: the first tick drains and closes the interval, then returns.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    stop_tx.send_replace(true);
    let (ticks, _) = tokio::sync::watch::channel(0);
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(RwLock::new(BTreeMap::new()));
    let runner = Runner {
        tables: flows,
        plan: Arc::new(RwLock::new(plan)),
        status: Arc::clone(&status),
        state_dir: dir.to_path_buf(),
        format: FileFormat::JsonLines,
        meta: NodeMeta::default(),
        ipfix: None,
        drop_reasons: BTreeMap::new(),
        tick: Duration::from_millis(100),
        stop,
        ticks,
        metrics: Arc::clone(&metrics),
    };
    fresh_peak();
    let (start_kib, _) = rss_kib();
    let started = Instant::now();
    rt.block_on(async { tokio::spawn(runner.run()).await })
        .expect("runner task");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let (_, peak_kib) = rss_kib();
    let errors = status.read().map(|s| s.clone()).unwrap_or_default();
    assert!(errors.is_empty(), "flow log errors: {errors:?}");
    let records = lines_under(dir);
    assert_eq!(
        metrics
            .flowlog_interval_records
            .with_label_values(&["fl-bench"])
            .get(),
        records as i64,
        "the interval's record count"
    );
    Row {
        approach: "streamed (the agent's runner)",
        ms,
        records,
        start_kib,
        peak_kib,
    }
}

pub fn run(n: u32) -> IntervalRss {
    let ns = mirror_tests::topology::quiet_netns("bi", &[("bi0", "bi1", "198.18.205.1/24")]);
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("ivl"));
    let (rows, peak_reset) = in_netns(&ns, || {
        // Multi-threaded: the runner drains inside `block_in_place`.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Loading the data path opens rtnetlink on the runtime.
        let _in_rt = rt.enter();
        let (_dp, mut flows) =
            Datapath::new(TcAttachMode::Auto, n + 1024).expect("loading programs");
        let peak_reset = fresh_peak();
        let old = whole_interval(&mut flows, n, &dir.join("old"));
        let new = streamed(&rt, flows, n, &dir.join("new"));
        (vec![old, new], peak_reset)
    });
    let _ = std::fs::remove_dir_all(&dir);
    drop(ns);
    IntervalRss {
        n,
        rows,
        peak_reset,
    }
}

impl IntervalRss {
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    pub fn markdown(&self, quick: bool) -> String {
        let n = self.n;
        let mib = |k: u64| k as f64 / 1024.0;
        let mut out = format!(
            "\n### Flow-log interval memory\n\nOne aggregation interval with {n} distinct flows \
             in the kernel table (filled from userspace as in the drain above), closed into \
             JSON Lines files. \"Streamed\" is the agent's `Runner::run` closing the interval \
             as on SIGTERM: the kernel aggregated the interval, one drain, records written in \
             batches of {BATCH} (one fdatasync each). The peer is the runner before: every \
             drain merged into the interval's map, the records of the whole map, one write. \
             Peak RSS is VmHWM of the bench process (which also holds the loaded data path), \
             {}. Goal: agent RSS <= {GOAL_MIB:.0} MB with 1 M distinct flows per interval.\n\n\
             | approach | flows | records written | time (ms) | RSS at start (MiB) | peak RSS (MiB) | peak - start (MiB) | against the goal |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
            if self.peak_reset {
                "restarted (clear_refs) just before each row"
            } else {
                "not restartable here: each peak includes the rows before"
            }
        );
        for r in &self.rows {
            let peak = mib(r.peak_kib);
            out += &format!(
                "| {} | {n} | {} | {:.0} | {:.1} | {peak:.1} | {:.1} | {} |\n",
                r.approach,
                r.records,
                r.ms,
                mib(r.start_kib),
                peak - mib(r.start_kib),
                if quick || n < 1_000_000 {
                    "quick run: not comparable"
                } else if peak <= GOAL_MIB {
                    "goal met"
                } else {
                    "goal missed"
                }
            );
        }
        out
    }
}
