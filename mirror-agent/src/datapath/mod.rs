//! Loads the eBPF programs once and reconciles the mirror configuration into their maps.
//!
//! Changes never reload a program: sources are attached or detached one interface at a time,
//! and sessions, filters and targets are map writes. See docs/architecture.md.

pub mod encode;
pub mod flowtable;
pub mod receive;
mod slots;
pub mod tunnel;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, ProgramError, RawTracePoint, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use mirror_ebpf::{
    DIRECTIONS, FilterConfig, MAX_FILTERS, MAX_RULE_SLOTS, MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE,
    MAX_SOURCES, SOURCE_ACTIVE, SOURCE_FLOW_LOG, SOURCES_DIRECT_MAX, SessionConfig, SessionStats,
    SkbLayout, SourceConfig, SourceStats, VXLAN_OVERHEAD_IPV4, VXLAN_OVERHEAD_IPV6,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    config::Objects,
    model::{Direction, Session, Target},
};
pub use flowtable::FlowTables;
pub use slots::Slots;

/// The compiled programs, built by build.rs with aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

pub const PROG_INGRESS: &str = "mirror_ingress";
pub const PROG_EGRESS: &str = "mirror_egress";
pub const PROG_ENCAP: &str = "mirror_encap";
pub const PROG_FLOW_DROP: &str = "flow_drop";

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    #[error(transparent)]
    Capture(#[from] receive::CaptureError),
    #[error("reading possible CPUs: {0}")]
    Cpus(std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

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
    pub skb_layout: Array<MapData, SkbLayout>,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
        fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
        where
            T: TryFrom<aya::maps::Map, Error = MapError>,
        {
            let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            T::try_from(map).map_err(map_err(name))
        }
        Ok(Maps {
            sources_direct: take(ebpf, "SOURCES_DIRECT")?,
            sources: take(ebpf, "SOURCES")?,
            sessions: take(ebpf, "SESSIONS")?,
            filters: take(ebpf, "FILTERS")?,
            session_stats: take(ebpf, "SESSION_STATS")?,
            source_stats: take(ebpf, "SOURCE_STATS")?,
            rule_stats: take(ebpf, "RULE_STATS")?,
            skb_layout: take(ebpf, "SKB_LAYOUT")?,
        })
    }

    /// Makes `ifindex` a source with this config, in whichever map holds its index.
    pub fn set_source(&mut self, ifindex: u32, mut cfg: SourceConfig) -> Result<(), DatapathError> {
        cfg.flags |= SOURCE_ACTIVE;
        if ifindex < SOURCES_DIRECT_MAX {
            self.sources_direct
                .set(ifindex, cfg, 0)
                .map_err(map_err("SOURCES_DIRECT"))
        } else {
            self.sources
                .insert(ifindex, cfg, 0)
                .map_err(map_err("SOURCES"))
        }
    }

    pub fn clear_source(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if ifindex < SOURCES_DIRECT_MAX {
            self.sources_direct
                .set(ifindex, SourceConfig::INACTIVE, 0)
                .map_err(map_err("SOURCES_DIRECT"))
        } else {
            match self.sources.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err("SOURCES")(e)),
            }
        }
    }

    /// Counters of a session slot, summed over CPUs, per direction.
    pub fn session_stats(&self, slot: u32) -> Result<[SessionStats; DIRECTIONS], DatapathError> {
        let mut out = [SessionStats::default(); DIRECTIONS];
        for (dir, total) in out.iter_mut().enumerate() {
            let values = self
                .session_stats
                .get(&(slot * DIRECTIONS as u32 + dir as u32), 0)
                .map_err(map_err("SESSION_STATS"))?;
            for v in values.iter() {
                total.packets += v.packets;
                total.bytes += v.bytes;
                total.copies += v.copies;
                total.truncated += v.truncated;
                total.gso_copies += v.gso_copies;
                for (t, e) in total.errors.iter_mut().zip(v.errors) {
                    *t += e;
                }
            }
        }
        Ok(out)
    }

    /// Counters of a source slot, summed over CPUs, per direction.
    pub fn source_stats(&self, slot: u32) -> Result<[SourceStats; DIRECTIONS], DatapathError> {
        let mut out = [SourceStats::default(); DIRECTIONS];
        for (dir, total) in out.iter_mut().enumerate() {
            let values = self
                .source_stats
                .get(&(slot * DIRECTIONS as u32 + dir as u32), 0)
                .map_err(map_err("SOURCE_STATS"))?;
            for v in values.iter() {
                total.packets += v.packets;
                total.bytes += v.bytes;
                total.mirrored += v.mirrored;
                total.not_ip += v.not_ip;
                total.malformed += v.malformed;
                total.mirror_traffic += v.mirror_traffic;
            }
        }
        Ok(out)
    }

    pub fn rule_hits(&self, slot: u32) -> Result<u64, DatapathError> {
        let values = self
            .rule_stats
            .get(&slot, 0)
            .map_err(map_err("RULE_STATS"))?;
        Ok(values.iter().sum())
    }

    /// A slot handed to a new object starts from zero, not from its predecessor's counts.
    fn reset_session_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        for dir in 0..DIRECTIONS as u32 {
            self.session_stats
                .set(slot * DIRECTIONS as u32 + dir, zeroed_per_cpu()?, 0)
                .map_err(map_err("SESSION_STATS"))?;
        }
        Ok(())
    }

    fn reset_source_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        for dir in 0..DIRECTIONS as u32 {
            self.source_stats
                .set(slot * DIRECTIONS as u32 + dir, zeroed_per_cpu()?, 0)
                .map_err(map_err("SOURCE_STATS"))?;
        }
        Ok(())
    }

    fn reset_rule_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.rule_stats
            .set(slot, zeroed_per_cpu()?, 0)
            .map_err(map_err("RULE_STATS"))
    }
}

fn zeroed_per_cpu<T: aya::Pod + Default>() -> Result<PerCpuValues<T>, DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(DatapathError::Cpus)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Loads the object and the three TC programs into the kernel (not attached); each flow
/// table gets `flow_table_size` entries.
pub fn load(flow_table_size: u32) -> Result<(Ebpf, Maps, FlowTables), DatapathError> {
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries("FLOWS_0", flow_table_size)
        .map_max_entries("FLOWS_1", flow_table_size)
        .load(EBPF_OBJECT)?;
    for name in [PROG_INGRESS, PROG_EGRESS, PROG_ENCAP] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(prog_err(name))?;
    }
    let maps = Maps::take(&mut ebpf)?;
    let flows = FlowTables::new(
        [
            take_map(&mut ebpf, "FLOWS_0")?,
            take_map(&mut ebpf, "FLOWS_1")?,
        ],
        take_map(&mut ebpf, "FLOW_CTL")?,
        take_map(&mut ebpf, "FLOW_STATS")?,
    );
    Ok((ebpf, maps, flows))
}

pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

/// How programs are attached to interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    /// TCX where the kernel has it (6.6+), clsact otherwise.
    #[default]
    Auto,
    Tcx,
    /// A clsact qdisc and a direct-action cls_bpf filter over netlink, as before TCX. The
    /// qdisc is left in place on detach: other software may have filters on it.
    Clsact,
}

impl TcAttachMode {
    fn uses_tcx(self) -> bool {
        match self {
            TcAttachMode::Tcx => true,
            TcAttachMode::Clsact => false,
            TcAttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
        }
    }
}

/// Attaches with TCX where the kernel has it (6.6+), so we coexist with other TC programs
/// (Cilium, ...) without owning a qdisc; otherwise through a clsact qdisc over netlink.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
    mode: TcAttachMode,
) -> Result<SchedClassifierLinkId, DatapathError> {
    let options = if mode.uses_tcx() {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    } else {
        if let Err(e) = tc::qdisc_add_clsact(ifname) {
            // EEXIST: the qdisc is already there, which is what we want.
            if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
            {
                debug!(ifname, error = %e, "adding clsact qdisc");
            }
        }
        TcAttachOptions::Netlink(NlOptions::default())
    };
    classifier(ebpf, name)?
        .attach_with_options(ifname, attach_type, options)
        .map_err(prog_err(name))
}

fn detach(ebpf: &mut Ebpf, name: &'static str, link: SchedClassifierLinkId) {
    // The link may already be gone with its interface; nothing else to undo then.
    match classifier(ebpf, name).map(|p| p.detach(link)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(program = name, error = %e, "detach"),
        Err(e) => debug!(program = name, error = %e, "detach"),
    }
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

struct AttachedSource {
    ifindex: u32,
    stats_slot: u32,
    flow_log: bool,
    links: [SchedClassifierLinkId; DIRECTIONS],
}

struct TunnelDevice {
    ifindex: u32,
    link: SchedClassifierLinkId,
}

/// Snapshot of the data path's counters (see `Datapath::counters`).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub sessions: Vec<(String, [SessionStats; DIRECTIONS])>,
    pub sources: Vec<(String, [SourceStats; DIRECTIONS])>,
    /// (filter, rule, hits).
    pub rules: Vec<(String, String, u64)>,
    /// (program, run time ns, runs), from the kernel's BPF stats.
    pub programs: Vec<(String, u64, u64)>,
}

/// What could not be applied, by object id. Everything else was applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub errors: BTreeMap<String, Vec<String>>,
}

impl ApplyReport {
    fn error(&mut self, id: &str, msg: impl Into<String>) {
        let msg = msg.into();
        warn!(object = id, "{msg}");
        self.errors.entry(id.to_string()).or_default().push(msg);
    }
}

/// The loaded data path and what is attached where.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    netlink: rtnetlink::Handle,
    attach_mode: TcAttachMode,
    sessions: Slots,
    filters: Slots,
    rules: Slots,
    sources: Slots,
    attached: BTreeMap<String, AttachedSource>,
    tunnels: BTreeMap<u16, TunnelDevice>,
    /// Rule id → filter id, for metrics labels.
    rule_filter: BTreeMap<String, String>,
    drop_link: Option<aya::programs::raw_trace_point::RawTracePointLinkId>,
    /// The receiving side (XDP and capture interfaces) of a mirror target.
    pub receive: receive::Receive,
}

impl Datapath {
    /// Loads the programs. Needs a tokio runtime for netlink. The flow tables go to whoever
    /// drains them (the flow-log runner).
    pub fn new(
        attach_mode: TcAttachMode,
        flow_table_size: u32,
    ) -> Result<(Datapath, FlowTables), DatapathError> {
        let (mut ebpf, maps, flows) = load(flow_table_size)?;
        let receive = receive::Receive::new(&mut ebpf)?;
        let (connection, netlink, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let datapath = Datapath {
            ebpf,
            maps,
            netlink,
            attach_mode,
            sessions: Slots::new(MAX_SESSIONS),
            filters: Slots::new(MAX_FILTERS),
            rules: Slots::new(MAX_RULE_SLOTS),
            sources: Slots::new(MAX_SOURCES),
            attached: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            rule_filter: BTreeMap::new(),
            drop_link: None,
            receive,
        };
        Ok((datapath, flows))
    }

    /// Counts the node's dropped packets into the flow tables (REJECT flows) from the
    /// `skb:kfree_skb` raw tracepoint, with the `sk_buff` layout read from the kernel's BTF.
    pub fn enable_drop_accounting(&mut self, layout: SkbLayout) -> Result<(), DatapathError> {
        self.maps
            .skb_layout
            .set(0, layout, 0)
            .map_err(map_err("SKB_LAYOUT"))?;
        if self.drop_link.is_some() {
            return Ok(());
        }
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(PROG_FLOW_DROP)
            .ok_or(DatapathError::MissingProgram(PROG_FLOW_DROP))?
            .try_into()
            .map_err(prog_err(PROG_FLOW_DROP))?;
        prog.load().map_err(prog_err(PROG_FLOW_DROP))?;
        let link = prog.attach("kfree_skb").map_err(prog_err(PROG_FLOW_DROP))?;
        self.drop_link = Some(link);
        info!("drop accounting attached to skb:kfree_skb");
        Ok(())
    }

    /// Source stats slots of the interfaces with a flow log, by interface index.
    pub fn flow_log_slots(&self) -> Vec<(u32, u32)> {
        self.attached
            .values()
            .filter(|a| a.flow_log)
            .map(|a| (a.ifindex, a.stats_slot))
            .collect()
    }

    pub fn session_slot(&self, id: &str) -> Option<u32> {
        self.sessions.get(id)
    }

    pub fn source_slot(&self, ifname: &str) -> Option<u32> {
        self.attached.get(ifname).map(|a| a.stats_slot)
    }

    pub fn rule_slot(&self, id: &str) -> Option<u32> {
        self.rules.get(id)
    }

    /// A loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// A loaded XDP program (the receiving side), e.g. for BPF_PROG_TEST_RUN.
    pub fn xdp_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::programs::Xdp, DatapathError> {
        receive::xdp(&mut self.ebpf, name)
    }

    /// Interfaces with the source programs attached.
    pub fn attached_sources(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    /// Reconciles the maps and attachments to `desired`. New objects are written before
    /// anything refers to them, and old ones removed after nothing does, so the programs never
    /// see a dangling slot.
    pub async fn apply(&mut self, desired: &Objects) -> Result<ApplyReport, DatapathError> {
        let mut report = ApplyReport::default();
        let targets: BTreeMap<&str, &Target> =
            desired.targets.iter().map(|t| (t.id.as_str(), t)).collect();

        // 1. Tunnel devices for the ports in use.
        let ports: BTreeSet<u16> = desired
            .sessions
            .iter()
            .filter_map(|s| targets.get(s.target_id.as_str()))
            .map(|t| t.destination_port)
            .collect();
        for &port in &ports {
            if let Err(e) = self.ensure_tunnel(port).await {
                report.error(&tunnel::device_name(port), e.to_string());
            }
        }

        // 2. Filters and their rules.
        self.rule_filter = desired
            .filters
            .iter()
            .flat_map(|f| f.rules.iter().map(|r| (r.id.clone(), f.id.clone())))
            .collect();
        for filter in &desired.filters {
            let Some(slot) = self.filters.get_or_alloc(&filter.id) else {
                report.error(&filter.id, "filter map is full");
                continue;
            };
            let mut full = false;
            for rule in &filter.rules {
                let known = self.rules.get(&rule.id).is_some();
                match self.rules.get_or_alloc(&rule.id) {
                    Some(s) if !known => self.maps.reset_rule_stats(s)?,
                    Some(_) => {}
                    None => full = true,
                }
            }
            if full {
                report.error(&filter.id, "rule counter map is full");
                continue;
            }
            let rules = &self.rules;
            let cfg = encode::encode_filter(filter, |id| rules.get(id).unwrap_or(0));
            self.maps
                .filters
                .set(slot, cfg, 0)
                .map_err(map_err("FILTERS"))?;
        }

        // 3. Sessions.
        let mut placed: Vec<&Session> = Vec::new();
        for session in &desired.sessions {
            let (Some(target), Some(filter_slot)) = (
                targets.get(session.target_id.as_str()),
                self.filters.get(&session.filter_id),
            ) else {
                report.error(&session.id, "its filter or target is not available");
                continue;
            };
            let Some(tunnel) = self.tunnels.get(&target.destination_port) else {
                report.error(&session.id, "no tunnel device for its target");
                continue;
            };
            let tunnel_ifindex = tunnel.ifindex;
            let snaplen = match snaplen(session, target) {
                Ok(n) => n,
                Err(e) => {
                    report.error(&session.id, e);
                    // Keep mirroring what fits a standard 1500-byte path.
                    session.packet_length.unwrap_or(1500 - overhead(target))
                }
            };
            let known = self.sessions.get(&session.id).is_some();
            let Some(slot) = self.sessions.get_or_alloc(&session.id) else {
                report.error(&session.id, "session map is full");
                continue;
            };
            if !known {
                self.maps.reset_session_stats(slot)?;
            }
            let cfg = encode::encode_session(
                session,
                target,
                encode::SessionPlacement {
                    filter_slot,
                    tunnel_ifindex,
                    snaplen,
                },
            );
            self.maps
                .sessions
                .set(slot, cfg, 0)
                .map_err(map_err("SESSIONS"))?;
            placed.push(session);
        }

        // 4. Sources: each interface's sessions in ascending priority; flow-logged
        // interfaces get the programs too, for the flow table.
        let mut by_source: BTreeMap<&str, Vec<&Session>> = BTreeMap::new();
        for session in &placed {
            for src in &session.sources {
                by_source.entry(src.as_str()).or_default().push(session);
            }
        }
        for ifname in &desired.flow_interfaces {
            by_source.entry(ifname.as_str()).or_default();
        }
        for (ifname, mut sessions) in by_source.clone() {
            sessions.sort_by_key(|s| s.priority);
            if sessions.len() > MAX_SESSIONS_PER_SOURCE {
                report.error(
                    ifname,
                    format!("more than {MAX_SESSIONS_PER_SOURCE} sessions use this source; the lowest priorities are left out"),
                );
                sessions.truncate(MAX_SESSIONS_PER_SOURCE);
            }
            let mut cfg = SourceConfig::INACTIVE;
            if desired.flow_interfaces.iter().any(|f| f == ifname) {
                cfg.flags |= SOURCE_FLOW_LOG;
            }
            for (i, s) in sessions.iter().enumerate() {
                if let Some(slot) = self.sessions.get(&s.id) {
                    cfg.sessions[i] = slot as u16;
                }
            }
            match self.ensure_source(ifname, cfg) {
                Ok(()) => {}
                Err(e) => {
                    for s in &sessions {
                        report.error(&s.id, format!("source {ifname}: {e}"));
                    }
                    if cfg.flags & SOURCE_FLOW_LOG != 0 {
                        report.error(ifname, format!("flow log: {e}"));
                    }
                }
            }
        }

        // 5. Sources no longer used.
        let stale: Vec<String> = self
            .attached
            .keys()
            .filter(|name| !by_source.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in stale {
            self.remove_source(&name)?;
        }

        // 6. Sessions, filters and rules no longer declared.
        let keep: BTreeSet<&str> = placed.iter().map(|s| s.id.as_str()).collect();
        for id in self.sessions.ids() {
            if !keep.contains(id.as_str())
                && let Some(slot) = self.sessions.release(&id)
            {
                self.maps
                    .sessions
                    .set(slot, zeroed_session(), 0)
                    .map_err(map_err("SESSIONS"))?;
            }
        }
        let keep: BTreeSet<&str> = desired.filters.iter().map(|f| f.id.as_str()).collect();
        for id in self.filters.ids() {
            if !keep.contains(id.as_str())
                && let Some(slot) = self.filters.release(&id)
            {
                self.maps
                    .filters
                    .set(slot, FilterConfig::EMPTY, 0)
                    .map_err(map_err("FILTERS"))?;
            }
        }
        let keep: BTreeSet<&str> = desired
            .filters
            .iter()
            .flat_map(|f| f.rules.iter().map(|r| r.id.as_str()))
            .collect();
        for id in self.rules.ids() {
            if !keep.contains(id.as_str()) {
                self.rules.release(&id);
            }
        }

        // 7. Tunnel devices no longer used.
        let unused: Vec<u16> = self
            .tunnels
            .keys()
            .filter(|p| !ports.contains(p))
            .copied()
            .collect();
        for port in unused {
            self.remove_tunnel(port).await?;
        }

        // 8. Receivers (the target side).
        self.receive
            .apply(
                &mut self.ebpf,
                &self.netlink,
                &desired.receivers,
                &mut report,
            )
            .await?;
        Ok(report)
    }

    async fn ensure_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
        let ifindex = tunnel::ensure_device(&self.netlink, port).await?;
        match self.tunnels.get(&port) {
            Some(t) if t.ifindex == ifindex => return Ok(()),
            Some(_) => {
                // Re-created under us: the old link went with the old device.
                if let Some(old) = self.tunnels.remove(&port) {
                    detach(&mut self.ebpf, PROG_ENCAP, old.link);
                }
            }
            None => {}
        }
        let link = attach(
            &mut self.ebpf,
            PROG_ENCAP,
            &tunnel::device_name(port),
            TcAttachType::Egress,
            self.attach_mode,
        )?;
        info!(device = %tunnel::device_name(port), ifindex, "tunnel device ready");
        self.tunnels.insert(port, TunnelDevice { ifindex, link });
        Ok(())
    }

    async fn remove_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
        if let Some(t) = self.tunnels.remove(&port) {
            detach(&mut self.ebpf, PROG_ENCAP, t.link);
        }
        tunnel::delete_device(&self.netlink, port).await?;
        Ok(())
    }

    fn ensure_source(&mut self, ifname: &str, mut cfg: SourceConfig) -> Result<(), DatapathError> {
        let Some(index) = ifindex(ifname) else {
            // Gone (or not there yet): forget a stale attachment, nothing to attach.
            if self.attached.contains_key(ifname) {
                self.remove_source(ifname)?;
            }
            return Err(DatapathError::Netlink(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "interface not found",
            )));
        };
        if self
            .attached
            .get(ifname)
            .is_some_and(|a| a.ifindex != index)
        {
            // Same name, new interface: the old links died with the old one.
            self.remove_source(ifname)?;
        }
        if let Some(a) = self.attached.get_mut(ifname) {
            cfg.stats_slot = a.stats_slot;
            a.flow_log = cfg.flags & SOURCE_FLOW_LOG != 0;
            return self.maps.set_source(index, cfg);
        }
        let stats_slot = self
            .sources
            .get_or_alloc(ifname)
            .ok_or_else(|| DatapathError::Map {
                name: "SOURCE_STATS",
                source: MapError::OutOfBounds {
                    index: MAX_SOURCES,
                    max_entries: MAX_SOURCES,
                },
            })?;
        self.maps.reset_source_stats(stats_slot)?;
        cfg.stats_slot = stats_slot;
        // The map entry goes in first: a program attached before it would just pass packets.
        self.maps.set_source(index, cfg)?;
        let ingress = attach(
            &mut self.ebpf,
            PROG_INGRESS,
            ifname,
            TcAttachType::Ingress,
            self.attach_mode,
        );
        let ingress = match ingress {
            Ok(l) => l,
            Err(e) => {
                let _ = self.maps.clear_source(index);
                self.sources.release(ifname);
                return Err(e);
            }
        };
        let egress = match attach(
            &mut self.ebpf,
            PROG_EGRESS,
            ifname,
            TcAttachType::Egress,
            self.attach_mode,
        ) {
            Ok(l) => l,
            Err(e) => {
                detach(&mut self.ebpf, PROG_INGRESS, ingress);
                let _ = self.maps.clear_source(index);
                self.sources.release(ifname);
                return Err(e);
            }
        };
        info!(source = ifname, ifindex = index, "source attached");
        self.attached.insert(
            ifname.to_string(),
            AttachedSource {
                ifindex: index,
                stats_slot,
                flow_log: cfg.flags & SOURCE_FLOW_LOG != 0,
                links: [ingress, egress],
            },
        );
        Ok(())
    }

    fn remove_source(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let Some(a) = self.attached.remove(ifname) else {
            return Ok(());
        };
        let [ingress, egress] = a.links;
        detach(&mut self.ebpf, PROG_INGRESS, ingress);
        detach(&mut self.ebpf, PROG_EGRESS, egress);
        self.maps.clear_source(a.ifindex)?;
        self.sources.release(ifname);
        info!(source = ifname, "source detached");
        Ok(())
    }

    /// Detaches everything and deletes the tunnel devices.
    pub async fn shutdown(&mut self) -> Result<(), DatapathError> {
        for name in self.attached_sources() {
            self.remove_source(&name)?;
        }
        let ports: Vec<u16> = self.tunnels.keys().copied().collect();
        for port in ports {
            self.remove_tunnel(port).await?;
        }
        self.receive.shutdown(&mut self.ebpf, &self.netlink).await?;
        Ok(())
    }

    /// Every counter the data path keeps, by object, for metrics.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for id in self.sessions.ids() {
            if let Some(slot) = self.sessions.get(&id)
                && let Ok(stats) = self.maps.session_stats(slot)
            {
                c.sessions.push((id, stats));
            }
        }
        for (name, a) in &self.attached {
            if let Ok(stats) = self.maps.source_stats(a.stats_slot) {
                c.sources.push((name.clone(), stats));
            }
        }
        for id in self.rules.ids() {
            if let Some(slot) = self.rules.get(&id)
                && let Ok(hits) = self.maps.rule_hits(slot)
            {
                let filter = self.rule_filter.get(&id).cloned().unwrap_or_default();
                c.rules.push((filter, id, hits));
            }
        }
        for (name, prog) in self.ebpf.programs() {
            if let Ok(info) = prog.info() {
                c.programs.push((
                    name.to_string(),
                    info.run_time().as_nanos() as u64,
                    info.run_count(),
                ));
            }
        }
        c
    }

    /// Counters of a session by id, per direction.
    pub fn session_counters(&self, id: &str) -> Option<[SessionStats; DIRECTIONS]> {
        self.maps.session_stats(self.sessions.get(id)?).ok()
    }

    pub fn direction_name(dir: usize) -> &'static str {
        Direction::ALL[dir].as_str()
    }
}

fn zeroed_session() -> SessionConfig {
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
        _pad: [0; 6],
    }
}

fn overhead(target: &Target) -> u32 {
    if target.destination_ip.is_ipv4() {
        VXLAN_OVERHEAD_IPV4
    } else {
        VXLAN_OVERHEAD_IPV6
    }
}

/// The session's PacketLength, or the whole frame, but never more than fits the path to the
/// target once encapsulated (SPEC section 2).
fn snaplen(session: &Session, target: &Target) -> Result<u32, String> {
    let mtu = tunnel::path_mtu(target.destination_ip, target.destination_port).map_err(|e| {
        format!(
            "target {} ({}) is unreachable: {e}",
            target.id, target.destination_ip
        )
    })?;
    let fit = mtu.saturating_sub(overhead(target));
    Ok(match session.packet_length {
        Some(len) => len.min(fit),
        None => fit,
    })
}
