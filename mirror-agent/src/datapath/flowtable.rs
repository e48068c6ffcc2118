//! The kernel's double-buffered flow tables, from the agent's side: flip, wait, drain.
//!
//! The programs write the buffer `FLOW_CTL[0]` names: an ACCEPT table behind a per-CPU
//! cache, and a REJECT table. `drain` flips it, waits `grace` so that programs which read the
//! old index have finished (a program runs for microseconds), then reads every entry of the
//! now idle buffer and empties it. Nothing writes the idle buffer meanwhile, so each update is
//! read exactly once: none lost, none counted twice.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use mirror_ebpf::{
    DIRECTIONS, FLOW_CACHE_SLOTS, FLOW_CTL_ACTIVE, FlowCacheSlot, FlowKey, FlowStats, FlowValue,
    map_names,
};

use super::{DatapathError, batchdrain, map_err};

/// How the kernel's flow tables are made: `entries` flows each (`flow_table_size`), and
/// whether the two ACCEPT tables are preallocated (`flow_table_prealloc`). Preallocated, a
/// table holds all its entries' memory from the start, and its drain neither frees nor walks
/// scattered allocations: 1 M flows drain in about a third of the time (BENCHMARKS.md,
/// "Flow-table drain").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTableSpec {
    pub entries: u32,
    pub prealloc: bool,
}

impl From<u32> for FlowTableSpec {
    /// `entries` flows each, allocated as they come (the default).
    fn from(entries: u32) -> Self {
        FlowTableSpec {
            entries,
            prealloc: false,
        }
    }
}

/// The flow maps that `flow_table_prealloc` preallocates: the ACCEPT tables, which hold most
/// flows. The REJECT tables stay allocated per flow (a host's drops are normally few).
pub const PREALLOC_FLOW_MAPS: [&str; 2] = [map_names::FLOWS_0, map_names::FLOWS_1];

/// The flow maps whose size `flow_table_size` sets (each holds that many flows).
pub fn sized_flow_maps(flow_table_size: u32) -> [(&'static str, u32); 4] {
    [
        (map_names::FLOWS_0, flow_table_size),
        (map_names::FLOWS_1, flow_table_size),
        (map_names::FLOW_REJECTS_0, flow_table_size),
        (map_names::FLOW_REJECTS_1, flow_table_size),
    ]
}

/// One half of the double buffer.
pub struct FlowBuffer {
    /// ACCEPT flows moved out of the CPUs' caches.
    pub accepts: HashMap<MapData, FlowKey, FlowValue>,
    /// REJECT flows (the drop tracepoint).
    pub rejects: HashMap<MapData, FlowKey, FlowValue>,
    /// The CPUs' caches of ACCEPT flows.
    pub cache: PerCpuArray<MapData, FlowCacheSlot>,
}

pub struct FlowTables {
    pub buffers: [FlowBuffer; 2],
    pub ctl: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, FlowStats>,
    /// The clock the source programs stamp flows with; `None` once `FlowClock` has it.
    pub clock: Option<Array<MapData, u64>>,
    /// Last totals of `stats`, to report what each interval skipped.
    last_skipped: StdHashMap<u32, u64>,
}

/// One drain: the flows since the previous one, and SKIPDATA counts by stats index
/// (`source stats slot * 2 + direction`).
#[derive(Debug, Default)]
pub struct Drained {
    pub flows: Vec<(FlowKey, FlowValue)>,
    pub skipped: Vec<(u32, u64)>,
}

/// Adds a partial count of a flow to another (cache slots of several CPUs, a cache slot and
/// the table entry its earlier packets moved to).
pub fn merge(into: &mut FlowValue, v: &FlowValue) {
    into.packets += v.packets;
    into.bytes += v.bytes;
    into.first_ns = into.first_ns.min(v.first_ns);
    into.last_ns = into.last_ns.max(v.last_ns);
    into.tcp_flags |= v.tcp_flags;
    if v.drop_reason != 0 {
        into.drop_reason = v.drop_reason;
    }
}

impl FlowTables {
    pub fn new(
        buffers: [FlowBuffer; 2],
        ctl: Array<MapData, u32>,
        stats: PerCpuArray<MapData, FlowStats>,
        clock: Array<MapData, u64>,
    ) -> FlowTables {
        FlowTables {
            buffers,
            ctl,
            stats,
            clock: Some(clock),
            last_skipped: StdHashMap::new(),
        }
    }

    pub fn active(&self) -> Result<u32, DatapathError> {
        self.ctl
            .get(&FLOW_CTL_ACTIVE, 0)
            .map_err(map_err(map_names::FLOW_CTL))
    }

    /// Flips the active buffer, waits out programs still writing the old one, and empties it.
    /// `stats_slots` are the source stats slots to read skip counters for.
    pub fn drain(
        &mut self,
        grace: Duration,
        stats_slots: &[u32],
    ) -> Result<Drained, DatapathError> {
        let mut flows = Vec::new();
        let skipped = self.drain_with(grace, stats_slots, |k, v| flows.push((*k, *v)))?;
        Ok(Drained { flows, skipped })
    }

    /// Like `drain`, but hands each flow to `f` as it is read, in batches, so memory stays
    /// bounded by the CPUs' caches whatever the number of flows. Each flow comes once, and
    /// every REJECT flow comes before any ACCEPT flow (so a consumer can take dropped packets
    /// off their ACCEPT twin while streaming). Returns the SKIPDATA counts.
    pub fn drain_with(
        &mut self,
        grace: Duration,
        stats_slots: &[u32],
        mut f: impl FnMut(&FlowKey, &FlowValue),
    ) -> Result<Vec<(u32, u64)>, DatapathError> {
        let old = self.active()? & 1;
        self.ctl
            .set(FLOW_CTL_ACTIVE, 1 - old, 0)
            .map_err(map_err(map_names::FLOW_CTL))?;
        std::thread::sleep(grace);
        let buffer = &mut self.buffers[old as usize];
        drain_table(&mut buffer.rejects, &mut f)?;
        // The caches hold at most FLOW_CACHE_SLOTS flows per CPU: merged here, then each
        // joins its table entry (if its earlier packets moved there) as the table streams by.
        let mut cached = take_cache(&mut buffer.cache)?;
        drain_table(
            &mut buffer.accepts,
            &mut |k: &FlowKey, v: &FlowValue| match cached.remove(k) {
                Some(c) => {
                    let mut v = *v;
                    merge(&mut v, &c);
                    f(k, &v);
                }
                None => f(k, v),
            },
        )?;
        for (k, v) in &cached {
            f(k, v);
        }
        self.skipped(stats_slots)
    }

    fn skipped(&mut self, stats_slots: &[u32]) -> Result<Vec<(u32, u64)>, DatapathError> {
        let mut skipped = Vec::new();
        for &slot in stats_slots {
            for dir in 0..DIRECTIONS as u32 {
                let index = slot * DIRECTIONS as u32 + dir;
                let total: u64 = match self.stats.get(&index, 0) {
                    Ok(values) => values.iter().map(|v| v.skipped_packets).sum(),
                    Err(e) => return Err(map_err(map_names::FLOW_STATS)(e)),
                };
                let last = self.last_skipped.insert(index, total).unwrap_or(0);
                if total > last {
                    skipped.push((index, total - last));
                }
            }
        }
        Ok(skipped)
    }
}

/// How many concurrent walks of the kernel table a drain from this thread uses: one per CPU
/// it may run on, at most four (the walk is bound by memory).
pub fn drain_walks() -> usize {
    batchdrain::walks()
}

/// How often the agent refreshes `FLOW_CLOCK`: the resolution of flow times (records carry
/// seconds).
pub const FLOW_CLOCK_PERIOD: Duration = Duration::from_millis(100);

/// Writes CLOCK_MONOTONIC into `FLOW_CLOCK` for the source programs, so that they stamp
/// flows with a load instead of a clock read per packet.
pub struct FlowClock {
    map: Array<MapData, u64>,
}

impl FlowClock {
    /// Takes the clock map from the tables (`None` if taken already).
    pub fn take(tables: &mut FlowTables) -> Option<FlowClock> {
        tables.clock.take().map(|map| FlowClock { map })
    }

    /// Writes the current time once.
    pub fn tick(&mut self) -> Result<(), DatapathError> {
        self.map
            .set(0, monotonic_ns(), 0)
            .map_err(map_err(map_names::FLOW_CLOCK))
    }

    /// Refreshes the clock every `FLOW_CLOCK_PERIOD` until `stop` turns true. It is left as
    /// it is then: the next agent takes over (until it does, flows carry the last time
    /// written, which the records clamp into their interval).
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(FLOW_CLOCK_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            match self.tick() {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!("flow clock: {e}");
                    warned = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// CLOCK_MONOTONIC in ns, the base of `bpf_ktime_get_ns` and `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads and empties an idle cache: every CPU's occupied slots, merged by flow.
/// The CPUs' cached flows, looked up once per drained table entry (a million lookups for a
/// million flows): foldhash, randomly seeded per map, instead of SipHash, which took a
/// few percent of a 1 M-flow drain. The map holds at most FLOW_CACHE_SLOTS flows per CPU, so
/// crafted keys cannot make it long.
type CachedFlows = StdHashMap<FlowKey, FlowValue, foldhash::quality::RandomState>;

fn take_cache(
    cache: &mut PerCpuArray<MapData, FlowCacheSlot>,
) -> Result<CachedFlows, DatapathError> {
    let mut flows = CachedFlows::default();
    let other = |reason: String| DatapathError::MapOther {
        name: map_names::FLOW_CACHE_0,
        reason,
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| other(format!("counting CPUs: {e}")))?;
    for index in 0..FLOW_CACHE_SLOTS {
        let slots = cache
            .get(&index, 0)
            .map_err(map_err(map_names::FLOW_CACHE_0))?;
        let mut any = false;
        for slot in slots.iter().filter(|s| s.stats != 0) {
            any = true;
            flows
                .entry(slot.key)
                .and_modify(|v| merge(v, &slot.value))
                .or_insert(slot.value);
        }
        if any {
            let empty = PerCpuValues::try_from(vec![FlowCacheSlot::EMPTY; cpus])
                .map_err(|e| other(format!("empty slots: {e}")))?;
            cache
                .set(index, empty, 0)
                .map_err(map_err(map_names::FLOW_CACHE_0))?;
        }
    }
    Ok(flows)
}

/// Reads and deletes a whole idle table, in batches where the kernel has them (walked by
/// several CPUs at once, `batchdrain`).
fn drain_table(
    table: &mut HashMap<MapData, FlowKey, FlowValue>,
    f: &mut impl FnMut(&FlowKey, &FlowValue),
) -> Result<(), DatapathError> {
    if let Err(e) = batchdrain::lookup_and_delete_all(table, batchdrain::walks(), f) {
        // Kernels without batch operations: one entry at a time.
        tracing::debug!("batch drain unavailable ({e}), draining entry by entry");
        let keys: Vec<FlowKey> = table.keys().filter_map(Result::ok).collect();
        for key in keys {
            match table.get(&key, 0) {
                Ok(v) => f(&key, &v),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("FLOWS_0/1")(e)),
            }
            match table.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("FLOWS_0/1")(e)),
            }
        }
    }
    Ok(())
}
