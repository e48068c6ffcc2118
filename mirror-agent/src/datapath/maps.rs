//! The maps the programs read their configuration from and count into, taken out of the
//! `Ebpf` object so they can be written while programs are borrowed for attaching.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
};
use mirror_ebpf::{
    BudgetState, DIRECTIONS, FilterConfig, SOURCE_ACTIVE, SOURCES_DIRECT_MAX, SessionConfig,
    SessionStats, SourceConfig, SourceStats, map_names,
};

use super::{DatapathError, map_err};

/// The maps, taken out of the `Ebpf` object so they can be written while programs are
/// borrowed for attaching.
pub struct Maps {
    pub sources_direct: Array<MapData, SourceConfig>,
    pub sources: HashMap<MapData, u32, SourceConfig>,
    pub sessions: Array<MapData, SessionConfig>,
    pub filters: Array<MapData, FilterConfig>,
    pub session_stats: PerCpuArray<MapData, SessionStats>,
    pub source_stats: PerCpuArray<MapData, SourceStats>,
    pub rule_stats: PerCpuArray<MapData, u64>,
    pub budget_state: Array<MapData, BudgetState>,
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
        Ok(Maps {
            sources_direct: take_map(ebpf, map_names::SOURCES_DIRECT)?,
            sources: take_map(ebpf, map_names::SOURCES)?,
            sessions: take_map(ebpf, map_names::SESSIONS)?,
            filters: take_map(ebpf, map_names::FILTERS)?,
            session_stats: take_map(ebpf, map_names::SESSION_STATS)?,
            source_stats: take_map(ebpf, map_names::SOURCE_STATS)?,
            rule_stats: take_map(ebpf, map_names::RULE_STATS)?,
            budget_state: take_map(ebpf, map_names::BUDGET_STATE)?,
        })
    }

    /// Makes `ifindex` a source with this config, in whichever map holds its index.
    pub fn set_source(&mut self, ifindex: u32, mut cfg: SourceConfig) -> Result<(), DatapathError> {
        cfg.flags |= SOURCE_ACTIVE;
        if ifindex < SOURCES_DIRECT_MAX {
            self.sources_direct
                .set(ifindex, cfg, 0)
                .map_err(map_err(map_names::SOURCES_DIRECT))
        } else {
            self.sources
                .insert(ifindex, cfg, 0)
                .map_err(map_err(map_names::SOURCES))
        }
    }

    pub fn clear_source(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if ifindex < SOURCES_DIRECT_MAX {
            self.sources_direct
                .set(ifindex, SourceConfig::INACTIVE, 0)
                .map_err(map_err(map_names::SOURCES_DIRECT))
        } else {
            match self.sources.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err(map_names::SOURCES)(e)),
            }
        }
    }

    /// Counters of a session slot, summed over CPUs, per direction.
    pub fn session_stats(&self, slot: u32) -> Result<[SessionStats; DIRECTIONS], DatapathError> {
        per_direction(&self.session_stats, map_names::SESSION_STATS, slot)
    }

    /// Counters of a source slot, summed over CPUs, per direction.
    pub fn source_stats(&self, slot: u32) -> Result<[SourceStats; DIRECTIONS], DatapathError> {
        per_direction(&self.source_stats, map_names::SOURCE_STATS, slot)
    }

    pub fn rule_hits(&self, slot: u32) -> Result<u64, DatapathError> {
        let values = self
            .rule_stats
            .get(&slot, 0)
            .map_err(map_err(map_names::RULE_STATS))?;
        Ok(values.iter().sum())
    }

    /// A slot handed to a new object starts from zero, not from its predecessor's counts.
    pub(super) fn reset_session_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        reset_per_direction(&mut self.session_stats, map_names::SESSION_STATS, slot)
    }

    /// A slot handed to a new session starts with full budget buckets.
    pub(super) fn reset_budget_state(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.budget_state
            .set(slot, BudgetState::default(), 0)
            .map_err(map_err(map_names::BUDGET_STATE))
    }

    pub(super) fn reset_source_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        reset_per_direction(&mut self.source_stats, map_names::SOURCE_STATS, slot)
    }

    pub(super) fn reset_rule_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.rule_stats
            .set(slot, zeroed_per_cpu()?, 0)
            .map_err(map_err(map_names::RULE_STATS))
    }
}

/// A slot's counters of each direction (at `slot * DIRECTIONS + direction`), summed over CPUs.
fn per_direction<T>(
    map: &PerCpuArray<MapData, T>,
    name: &'static str,
    slot: u32,
) -> Result<[T; DIRECTIONS], DatapathError>
where
    T: aya::Pod + Default + Copy + std::ops::AddAssign,
{
    let mut out = [T::default(); DIRECTIONS];
    for (dir, total) in out.iter_mut().enumerate() {
        let values = map
            .get(&(slot * DIRECTIONS as u32 + dir as u32), 0)
            .map_err(map_err(name))?;
        for v in values.iter() {
            *total += *v;
        }
    }
    Ok(out)
}

fn reset_per_direction<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    slot: u32,
) -> Result<(), DatapathError> {
    for dir in 0..DIRECTIONS as u32 {
        map.set(slot * DIRECTIONS as u32 + dir, zeroed_per_cpu()?, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

pub(super) fn zeroed_per_cpu<T: aya::Pod + Default>() -> Result<PerCpuValues<T>, DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(DatapathError::Cpus)
}

pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// A session slot nothing is mirrored through (every field zero, sampling one in one).
pub(super) fn zeroed_session() -> SessionConfig {
    SessionConfig {
        flags: 0,
        vni: 0,
        snaplen: 0,
        filter_slot: 0,
        tunnel_ifindex: 0,
        remote_ipv4: 0,
        remote_ipv6: [0; 4],
        ttl: 0,
        tos: 0,
        port_be: 0,
        uplink_ifindex: 0,
        segment_ifindex: 0,
        eth_addrs: [0; 12],
        outer_src: 0,
        outer_dst: 0,
        packet_cost: 0,
        bit_cost: 0,
        sample_one_in: 1,
        copy_overhead: 0,
    }
}
