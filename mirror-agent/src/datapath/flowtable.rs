//! The kernel's double-buffered flow tables, from the agent's side: flip, wait, drain.
//!
//! The programs write the table `FLOW_CTL[0]` names. `drain` flips it, waits `grace` so that
//! programs which read the old index have finished (a program runs for microseconds), then
//! reads every entry of the now idle table and deletes it. Nothing writes the idle table
//! meanwhile, so each update is read exactly once: none lost, none counted twice.

use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
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
            .map_err(map_err("FLOW_CTL"))
    }

    /// Flips the active table, waits out programs still writing the old one, and empties it.
    /// `stats_slots` are the source stats slots to read skip counters for.
    pub fn drain(
        &mut self,
        grace: Duration,
        stats_slots: &[u32],
    ) -> Result<Drained, DatapathError> {
        let old = self.active()? & 1;
        self.ctl
            .set(FLOW_CTL_ACTIVE, 1 - old, 0)
            .map_err(map_err("FLOW_CTL"))?;
        std::thread::sleep(grace);
        let table = &mut self.tables[old as usize];
        let keys: Vec<FlowKey> = table.keys().filter_map(Result::ok).collect();
        let mut flows = Vec::with_capacity(keys.len());
        for key in keys {
            match table.get(&key, 0) {
                Ok(v) => flows.push((key, v)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("FLOWS")(e)),
            }
            match table.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("FLOWS")(e)),
            }
        }
        let mut skipped = Vec::new();
        for &slot in stats_slots {
            for dir in 0..DIRECTIONS as u32 {
                let index = slot * DIRECTIONS as u32 + dir;
                let total: u64 = match self.stats.get(&index, 0) {
                    Ok(values) => values.iter().map(|v| v.skipped_packets).sum(),
                    Err(e) => return Err(map_err("FLOW_STATS")(e)),
                };
                let last = self.last_skipped.insert(index, total).unwrap_or(0);
                if total > last {
                    skipped.push((index, total - last));
                }
            }
        }
        Ok(Drained { flows, skipped })
    }
}
