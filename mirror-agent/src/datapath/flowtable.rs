//! The kernel's double-buffered flow tables, from the agent's side: flip, wait, drain.
//!
//! The programs write the table `FLOW_CTL[0]` names. `drain` flips it, waits `grace` so that
//! programs which read the old index have finished (a program runs for microseconds), then
//! reads every entry of the now idle table and deletes it. Nothing writes the idle table
//! meanwhile, so each update is read exactly once: none lost, none counted twice.

use mirror_ebpf::map_names;
use std::time::Duration;

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray};
use mirror_ebpf::{DIRECTIONS, FLOW_CTL_ACTIVE, FlowKey, FlowStats, FlowValue};

use super::{DatapathError, map_err};

pub struct FlowTables {
    pub tables: [HashMap<MapData, FlowKey, FlowValue>; 2],
    pub ctl: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, FlowStats>,
    /// Last totals of `stats`, to report what each interval skipped.
    last_skipped: std::collections::HashMap<u32, u64>,
}

/// One drain: the flows since the previous one, and SKIPDATA counts by stats index
/// (`source stats slot * 2 + direction`).
#[derive(Debug, Default)]
pub struct Drained {
    pub flows: Vec<(FlowKey, FlowValue)>,
    pub skipped: Vec<(u32, u64)>,
}

impl FlowTables {
    pub fn new(
        tables: [HashMap<MapData, FlowKey, FlowValue>; 2],
        ctl: Array<MapData, u32>,
        stats: PerCpuArray<MapData, FlowStats>,
    ) -> FlowTables {
        FlowTables {
            tables,
            ctl,
            stats,
            last_skipped: std::collections::HashMap::new(),
        }
    }

    pub fn active(&self) -> Result<u32, DatapathError> {
        self.ctl
            .get(&FLOW_CTL_ACTIVE, 0)
            .map_err(map_err(map_names::FLOW_CTL))
    }

    /// Flips the active table, waits out programs still writing the old one, and empties it.
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
    /// bounded whatever the number of flows. Returns the SKIPDATA counts.
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
        let table = &mut self.tables[old as usize];
        if let Err(e) = lookup_and_delete_batch(table, &mut f) {
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

/// Entries per BPF_MAP_LOOKUP_AND_DELETE_BATCH call: large enough to amortise the syscall,
/// small enough that the buffers stay at a few hundred KiB.
const BATCH: usize = 4096;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `union bpf_attr` for the batch commands (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads and deletes the whole (idle) table with the kernel's batch command. aya 0.14 has no
/// wrapper for it; the syscall is simple enough to make directly.
fn lookup_and_delete_batch(
    table: &HashMap<MapData, FlowKey, FlowValue>,
    f: &mut impl FnMut(&FlowKey, &FlowValue),
) -> std::io::Result<()> {
    let fd = table.map().fd().as_fd().as_raw_fd();
    let mut keys = vec![
        FlowKey {
            ifindex: 0,
            direction: 0,
            ip_version: 0,
            protocol: 0,
            action: 0,
            src: [0; 4],
            dst: [0; 4],
            src_port: 0,
            dst_port: 0,
        };
        BATCH
    ];
    let mut values = vec![FlowValue::default(); BATCH];
    // Hash maps use a 32-bit bucket cursor as the batch token.
    let mut token_in: u32 = 0;
    let mut token_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with an attr that points at buffers of `count` keys and values.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        for i in 0..n.min(BATCH) {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            // ENOENT: the table is done (the last entries came with it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) if first && n == 0 => return Err(e),
            Some(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
}
