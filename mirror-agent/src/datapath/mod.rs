//! Loads the eBPF programs once and reconciles the mirror configuration into their maps.
//!
//! Changes never reload a program: sources are attached or detached one interface at a time,
//! and sessions, filters and targets are map writes. See docs/architecture.md.

pub mod attach;
pub mod encode;
pub mod flowtable;
pub mod nexthop;
pub mod pins;
pub mod receive;
mod rxlinks;
pub mod segment;
mod slots;
pub mod tunnel;

use mirror_ebpf::map_names;
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use mirror_ebpf::{
    BudgetState, DIRECTIONS, FilterConfig, MAX_FILTERS, MAX_RULE_SLOTS, MAX_SESSIONS,
    MAX_SESSIONS_PER_SOURCE, MAX_SOURCES, SOURCE_ACTIVE, SOURCE_FLOW_LOG, SOURCES_DIRECT_MAX,
    SessionConfig, SessionStats, SkbLayout, SourceConfig, SourceStats, VXLAN_OVERHEAD_IPV4,
    VXLAN_OVERHEAD_IPV6,
};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    config::Objects,
    model::{Direction, Session, Target},
};
pub use attach::{
    CopyPathMode, DropLink, PROG_EGRESS, PROG_ENCAP, PROG_FLOW_DROP, PROG_INGRESS, PROG_SEGMENT,
    PROG_TX, Programs, TcAttachMode, TcLink,
};
pub use flowtable::FlowTables;
use pins::{PinPaths, SavedDatapath, SavedSource, SavedTunnel};
pub use slots::Slots;

/// The compiled programs, built by build.rs with aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

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
    #[error("map {name}: {reason}")]
    MapOther { name: &'static str, reason: String },
    #[error("{table}: all {capacity} slots are in use")]
    SlotsExhausted { table: &'static str, capacity: u32 },
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    #[error("capture devices: {0}")]
    Captures(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error(transparent)]
    Capture(#[from] receive::CaptureError),
    #[error("reading possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("program {name} {reason}")]
    Rejected { name: &'static str, reason: String },
    #[error("link {what}: {reason}")]
    Link { what: String, reason: String },
    #[error(transparent)]
    Pins(pins::PinError),
    #[error("saving the data path state in {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the data path state in {path}: {source}")]
    ReadSaved {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

/// Reasons a matching packet was not copied, as List and the metrics name them: the data
/// path's `SKIP_*` reasons, then copies the kernel could not send (every `ERR_*` reason).
pub const SKIP_REASONS_SHOWN: [&str; mirror_ebpf::SKIP_REASONS + 1] = [
    mirror_ebpf::SKIP_REASON_NAMES[0],
    mirror_ebpf::SKIP_REASON_NAMES[1],
    mirror_ebpf::SKIP_REASON_NAMES[2],
    "send_errors",
];

/// Skipped packets of one session: `[direction][reason of SKIP_REASONS_SHOWN]`.
pub type SkippedPackets = [[u64; mirror_ebpf::SKIP_REASONS + 1]; DIRECTIONS];

/// A session's counters as `SkippedPackets`.
pub fn skipped_packets(stats: &[SessionStats; DIRECTIONS]) -> SkippedPackets {
    let mut out = [[0; mirror_ebpf::SKIP_REASONS + 1]; DIRECTIONS];
    for (o, s) in out.iter_mut().zip(stats) {
        o[..mirror_ebpf::SKIP_REASONS].copy_from_slice(&s.skipped);
        o[mirror_ebpf::SKIP_REASONS] = s.errors.iter().sum();
    }
    out
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
    pub budget_state: Array<MapData, BudgetState>,
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
            sources_direct: take(ebpf, map_names::SOURCES_DIRECT)?,
            sources: take(ebpf, map_names::SOURCES)?,
            sessions: take(ebpf, map_names::SESSIONS)?,
            filters: take(ebpf, map_names::FILTERS)?,
            session_stats: take(ebpf, map_names::SESSION_STATS)?,
            source_stats: take(ebpf, map_names::SOURCE_STATS)?,
            rule_stats: take(ebpf, map_names::RULE_STATS)?,
            skb_layout: take(ebpf, map_names::SKB_LAYOUT)?,
            budget_state: take(ebpf, map_names::BUDGET_STATE)?,
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
        let mut out = [SessionStats::default(); DIRECTIONS];
        for (dir, total) in out.iter_mut().enumerate() {
            let values = self
                .session_stats
                .get(&(slot * DIRECTIONS as u32 + dir as u32), 0)
                .map_err(map_err(map_names::SESSION_STATS))?;
            for v in values.iter() {
                total.packets += v.packets;
                total.bytes += v.bytes;
                total.copies += v.copies;
                total.truncated += v.truncated;
                total.segmented += v.segmented;
                for (t, e) in total.errors.iter_mut().zip(v.errors) {
                    *t += e;
                }
                for (t, e) in total.skipped.iter_mut().zip(v.skipped) {
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
                .map_err(map_err(map_names::SOURCE_STATS))?;
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
            .map_err(map_err(map_names::RULE_STATS))?;
        Ok(values.iter().sum())
    }

    /// A slot handed to a new object starts from zero, not from its predecessor's counts.
    fn reset_session_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        for dir in 0..DIRECTIONS as u32 {
            self.session_stats
                .set(slot * DIRECTIONS as u32 + dir, zeroed_per_cpu()?, 0)
                .map_err(map_err(map_names::SESSION_STATS))?;
        }
        Ok(())
    }

    /// A slot handed to a new session starts with full budget buckets.
    fn reset_budget_state(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.budget_state
            .set(slot, BudgetState::default(), 0)
            .map_err(map_err(map_names::BUDGET_STATE))
    }

    fn reset_source_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        for dir in 0..DIRECTIONS as u32 {
            self.source_stats
                .set(slot * DIRECTIONS as u32 + dir, zeroed_per_cpu()?, 0)
                .map_err(map_err(map_names::SOURCE_STATS))?;
        }
        Ok(())
    }

    fn reset_rule_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.rule_stats
            .set(slot, zeroed_per_cpu()?, 0)
            .map_err(map_err(map_names::RULE_STATS))
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

/// Loads the object into the kernel: maps (reused from `pins` when it has them) and the TC
/// programs (adopted from `pins` when this build pinned them). Each flow table gets
/// `flow_table_size` entries.
pub fn load(
    flow_table_size: u32,
    pins: Option<PinPaths>,
) -> Result<(Programs, Maps, FlowTables), DatapathError> {
    // The programs' log statements below the agent's level cost a load and a compare; the
    // level is fixed when a program is loaded (adopted programs keep theirs).
    let log_level = program_log_level();
    let mut loader = aya::EbpfLoader::new();
    loader
        .map_max_entries(map_names::FLOWS_0, flow_table_size)
        .map_max_entries(map_names::FLOWS_1, flow_table_size)
        .override_global(aya_log::LEVEL, &log_level, false);
    if let Some(p) = &pins {
        for &name in pins::PINNED_MAPS {
            loader.map_pin_path(name, p.maps.join(name));
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("the programs' log messages are not forwarded: {e}");
            None
        }
    };
    let maps = Maps::take(&mut ebpf)?;
    let flows = FlowTables::new(
        [
            take_map(&mut ebpf, map_names::FLOWS_0)?,
            take_map(&mut ebpf, map_names::FLOWS_1)?,
        ],
        take_map(&mut ebpf, map_names::FLOW_CTL)?,
        take_map(&mut ebpf, map_names::FLOW_STATS)?,
    );
    Ok((Programs::load(ebpf, pins, logger), maps, flows))
}

/// aya-log's level numbering (error 1 … trace 5, 0 off) for the agent's tracing level.
fn program_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Forwards the programs' aya-log records to the agent's log (through the `log` bridge of
/// tracing-subscriber) at their own level, whenever the ring buffer has some.
fn forward_program_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> Option<tokio::task::JoinHandle<()>> {
    // SAFETY: the logger owns the ring buffer's map fd and keeps it open, unchanged, for as
    // long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("the programs' log messages are not forwarded: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// A program of a freshly loaded object (fixtures and benchmarks).
pub use attach::classifier_in as classifier;

/// The name of an interface index, if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn tunnel_path(why: String, segment_ifindex: u32) -> CopyPath {
    CopyPath {
        mode: "tunnel",
        detail: why,
        segmentation: segment_ifindex != 0,
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
    links: [TcLink; DIRECTIONS],
}

/// A device with one program of ours: a tunnel device (`mirror_encap`), the segmentation
/// device's peer (`mirror_segment`) or an uplink (`mirror_tx`).
struct TunnelDevice {
    ifindex: u32,
    link: TcLink,
}

/// The way a session's copies take, for List and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPath {
    /// `fast` (outer headers written in eBPF on the uplink) or `tunnel` (the kernel's VXLAN
    /// device: IPv6 targets, next hop not resolved yet).
    pub mode: &'static str,
    /// The uplink for `fast`, why not for `tunnel`.
    pub detail: String,
    /// Super-packets and offloaded checksums are made wire segments first.
    pub segmentation: bool,
}

/// Where the data path keeps what must outlive the agent.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// bpffs directory for maps, programs and links (`--pin-dir`).
    pub pin_dir: PathBuf,
    /// The agent's state directory, for the slot tables (`--state-dir`).
    pub state_dir: PathBuf,
}

/// How `Datapath::open` found the kernel.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Why nothing is pinned, when it is not (bpffs missing, ...).
    pub unpinned: Option<String>,
    /// Programs the kernel rejected, with its reason.
    pub rejected: BTreeMap<String, String>,
    /// Links taken over from an earlier agent.
    pub adopted: usize,
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
    programs: Programs,
    pub maps: Maps,
    netlink: rtnetlink::Handle,
    attach_mode: TcAttachMode,
    copy_path: CopyPathMode,
    sessions: Slots,
    filters: Slots,
    rules: Slots,
    sources: Slots,
    attached: BTreeMap<String, AttachedSource>,
    tunnels: BTreeMap<u16, TunnelDevice>,
    /// `mirror_segment` on the segmentation device's peer, when the pair exists.
    segment: Option<TunnelDevice>,
    /// `mirror_tx` on each uplink a fast-path session uses, by interface name.
    uplinks: BTreeMap<String, TunnelDevice>,
    /// Targets' next hops as resolved by the last apply (checked again every second).
    next_hops: BTreeMap<std::net::IpAddr, Result<encode::FastPath, nexthop::Unresolved>>,
    /// Each applied session's way, by session id.
    paths: BTreeMap<String, CopyPath>,
    /// Rule id → filter id, for metrics labels.
    rule_filter: BTreeMap<String, String>,
    drop_link: Option<DropLink>,
    /// The drop program is loaded and the kernel's `sk_buff` layout known.
    drop_available: bool,
    /// Where the slot tables are saved, when the data path outlives the agent.
    state_dir: Option<PathBuf>,
    /// Forwards the programs' aya-log records; ends with the runtime.
    #[expect(
        dead_code,
        reason = "held so the task's handle lives as long as the data path"
    )]
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// The receiving side (XDP and capture interfaces) of a mirror target.
    pub receive: receive::Receive,
}

impl Datapath {
    /// Loads the programs without pins: everything goes with this process (fixtures and
    /// benchmarks). Needs a tokio runtime for netlink. The flow tables go to whoever drains
    /// them (the flow-log runner).
    pub fn new(
        attach_mode: TcAttachMode,
        flow_table_size: u32,
    ) -> Result<(Datapath, FlowTables), DatapathError> {
        let (programs, maps, flows) = load(flow_table_size, None)?;
        Ok((
            Datapath::assemble(programs, maps, attach_mode, None)?,
            flows,
        ))
    }

    fn assemble(
        mut programs: Programs,
        maps: Maps,
        attach_mode: TcAttachMode,
        state_dir: Option<PathBuf>,
    ) -> Result<Datapath, DatapathError> {
        let rx_pins = programs.pins().map(|p| p.root.join("rx-links"));
        let receive = receive::Receive::new(programs.ebpf_mut(), rx_pins, attach_mode)?;
        let (connection, netlink, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let log_task = programs.take_logger().and_then(forward_program_logs);
        Ok(Datapath {
            log_task,
            programs,
            maps,
            netlink,
            attach_mode,
            copy_path: CopyPathMode::Auto,
            sessions: Slots::new(MAX_SESSIONS),
            filters: Slots::new(MAX_FILTERS),
            rules: Slots::new(MAX_RULE_SLOTS),
            sources: Slots::new(MAX_SOURCES),
            attached: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            segment: None,
            uplinks: BTreeMap::new(),
            next_hops: BTreeMap::new(),
            paths: BTreeMap::new(),
            rule_filter: BTreeMap::new(),
            drop_link: None,
            drop_available: false,
            state_dir,
            receive,
        })
    }

    /// Loads the data path for the agent: maps and programs pinned under the pin directory,
    /// and whatever an earlier agent left attached (its links, slots and counters) adopted, so
    /// a restart or an upgrade leaves no gap. Without bpffs it runs unpinned and says why; a
    /// program the kernel rejects disables what needs it, not the agent.
    pub fn open(
        attach_mode: TcAttachMode,
        flow_table_size: u32,
        persist: &Persistence,
    ) -> Result<(Datapath, FlowTables, OpenReport), DatapathError> {
        let mut report = OpenReport::default();
        let pins = match PinPaths::prepare(
            &persist.pin_dir,
            EBPF_OBJECT,
            &[
                (map_names::FLOWS_0, flow_table_size),
                (map_names::FLOWS_1, flow_table_size),
            ],
        ) {
            Ok(p) => Some(p),
            // Two agents on one pin directory would adopt and remove each other's links.
            Err(e @ pins::PinError::InUse(_)) => return Err(DatapathError::Pins(e)),
            Err(e) => {
                tracing::error!("{e}");
                report.unpinned = Some(e.to_string());
                None
            }
        };
        // Maps that already existed carry an earlier agent's configuration and counters; the
        // saved slot tables describe them only then.
        let maps_reused = pins
            .as_ref()
            .is_some_and(|p| pins::PINNED_MAPS.iter().all(|m| p.maps.join(m).exists()));
        let (programs, maps, flows) = load(flow_table_size, pins.clone())?;
        report.rejected = programs
            .rejected
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut dp =
            Datapath::assemble(programs, maps, attach_mode, Some(persist.state_dir.clone()))?;
        let saved = match SavedDatapath::read(&persist.state_dir) {
            Ok(s) => s,
            Err(e) => {
                warn!("ignoring the saved data path state: {e}");
                None
            }
        };
        if let Some(saved) = saved {
            report.adopted = dp.adopt(saved, pins.as_ref(), maps_reused);
        }
        if let Some(p) = &pins {
            dp.remove_orphan_links(p);
            // Links of older builds now run this build's programs; the old programs and maps
            // go once their last user does.
            for dir in p.stale_dirs() {
                info!(pin = %dir.display(), "removing pins of an earlier build");
                remove_pins(&dir);
            }
        }
        dp.save()?;
        Ok((dp, flows, report))
    }

    /// Takes over what an earlier agent left: slot tables (when the maps are the same ones),
    /// source and tunnel links. Returns the number of links adopted.
    fn adopt(&mut self, saved: SavedDatapath, pins: Option<&PinPaths>, maps_reused: bool) -> usize {
        let same_maps = maps_reused && pins.is_some_and(|p| p.maps == saved.maps);
        if same_maps {
            self.sessions = Slots::restore(MAX_SESSIONS, saved.sessions);
            self.filters = Slots::restore(MAX_FILTERS, saved.filters);
            self.rules = Slots::restore(MAX_RULE_SLOTS, saved.rules);
        }
        let mut adopted = 0;
        for (ifname, src) in saved.sources {
            if ifindex(&ifname) != Some(src.ifindex) {
                // Gone, or another interface under the same name: its links died with it.
                for l in &src.links {
                    if let pins::SavedLink::Pin { path } = l {
                        let _ = pins::remove(path);
                    }
                }
                continue;
            }
            let [ing, eg] = &src.links;
            let ingress = self
                .programs
                .adopt(PROG_INGRESS, ing, &ifname, TcAttachType::Ingress);
            let egress = self
                .programs
                .adopt(PROG_EGRESS, eg, &ifname, TcAttachType::Egress);
            match (ingress, egress) {
                (Ok(Some(i)), Ok(Some(e))) => {
                    let stats_slot = if same_maps {
                        self.sources.restore_one(&ifname, src.stats_slot)
                    } else {
                        self.sources.get_or_alloc(&ifname)
                    };
                    let Some(stats_slot) = stats_slot else {
                        i.detach();
                        e.detach();
                        continue;
                    };
                    adopted += 2;
                    self.attached.insert(
                        ifname,
                        AttachedSource {
                            ifindex: src.ifindex,
                            stats_slot,
                            flow_log: src.flow_log,
                            links: [i, e],
                        },
                    );
                }
                (i, e) => {
                    warn!(source = %ifname, "cannot adopt its links; they are re-made");
                    for link in [i, e].into_iter().flatten().flatten() {
                        link.detach();
                    }
                }
            }
        }
        for (port, t) in saved.tunnels {
            let name = tunnel::device_name(port);
            if ifindex(&name) != Some(t.ifindex) {
                if let pins::SavedLink::Pin { path } = &t.link {
                    let _ = pins::remove(path);
                }
                continue;
            }
            match self
                .programs
                .adopt(PROG_ENCAP, &t.link, &name, TcAttachType::Egress)
            {
                Ok(Some(link)) => {
                    adopted += 1;
                    self.tunnels.insert(
                        port,
                        TunnelDevice {
                            ifindex: t.ifindex,
                            link,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => warn!(device = %name, "cannot adopt its link: {e}"),
            }
        }
        let aux = saved
            .segment
            .map(|t| {
                (
                    segment::PEER.to_string(),
                    PROG_SEGMENT,
                    TcAttachType::Ingress,
                    t,
                )
            })
            .into_iter()
            .chain(
                saved
                    .uplinks
                    .into_iter()
                    .map(|(n, t)| (n, PROG_TX, TcAttachType::Egress, t)),
            );
        for (name, prog, dir, t) in aux {
            if ifindex(&name) != Some(t.ifindex) {
                if let pins::SavedLink::Pin { path } = &t.link {
                    let _ = pins::remove(path);
                }
                continue;
            }
            match self.programs.adopt(prog, &t.link, &name, dir) {
                Ok(Some(link)) => {
                    adopted += 1;
                    let dev = TunnelDevice {
                        ifindex: t.ifindex,
                        link,
                    };
                    if prog == PROG_SEGMENT {
                        self.segment = Some(dev);
                    } else {
                        self.uplinks.insert(name, dev);
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(device = %name, "cannot adopt its link: {e}"),
            }
        }
        adopted
    }

    /// Link pins nobody accounts for (an agent killed between attaching and saving, or a lost
    /// state directory): without this they would mirror a second time beside our new links.
    fn remove_orphan_links(&mut self, pins: &PinPaths) {
        let mut known: BTreeSet<PathBuf> = BTreeSet::new();
        for a in self.attached.values() {
            for l in &a.links {
                if let Some(pins::SavedLink::Pin { path }) = l.saved() {
                    known.insert(path);
                }
            }
        }
        for t in self
            .tunnels
            .values()
            .chain(self.uplinks.values())
            .chain(self.segment.iter())
        {
            if let Some(pins::SavedLink::Pin { path }) = t.link.saved() {
                known.insert(path);
            }
        }
        // The drop link is adopted by `enable_drop_accounting`, by its fixed name.
        known.insert(pins.drop_link());
        let Ok(entries) = std::fs::read_dir(&pins.links) else {
            return;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if !known.contains(&path) {
                info!(pin = %path.display(), "removing a link no agent accounts for");
                let _ = pins::remove(&path);
            }
        }
    }

    /// Saves the slot tables and links for the next agent.
    pub fn save(&self) -> Result<(), DatapathError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let saved = SavedDatapath {
            maps: self
                .programs
                .pins()
                .map(|p| p.maps.clone())
                .unwrap_or_default(),
            sessions: self.sessions.table(),
            filters: self.filters.table(),
            rules: self.rules.table(),
            sources: self
                .attached
                .iter()
                .filter_map(|(name, a)| {
                    let [i, e] = &a.links;
                    Some((
                        name.clone(),
                        SavedSource {
                            ifindex: a.ifindex,
                            stats_slot: a.stats_slot,
                            flow_log: a.flow_log,
                            links: [i.saved()?, e.saved()?],
                        },
                    ))
                })
                .collect(),
            tunnels: self
                .tunnels
                .iter()
                .filter_map(|(port, t)| {
                    Some((
                        *port,
                        SavedTunnel {
                            ifindex: t.ifindex,
                            link: t.link.saved()?,
                        },
                    ))
                })
                .collect(),
            drop_link: self.drop_link.as_ref().and_then(DropLink::path),
            segment: self.segment.as_ref().and_then(|t| {
                Some(SavedTunnel {
                    ifindex: t.ifindex,
                    link: t.link.saved()?,
                })
            }),
            uplinks: self
                .uplinks
                .iter()
                .filter_map(|(name, t)| {
                    Some((
                        name.clone(),
                        SavedTunnel {
                            ifindex: t.ifindex,
                            link: t.link.saved()?,
                        },
                    ))
                })
                .collect(),
        };
        saved.write(dir).map_err(|source| DatapathError::Save {
            path: dir.join(pins::STATE_FILE),
            source,
        })
    }

    /// Makes drop accounting available: dropped packets of flow-logged interfaces become
    /// REJECT flows, counted from the `skb:kfree_skb` raw tracepoint with the `sk_buff` layout
    /// read from the kernel's BTF. The program is loaded now (a rejection shows at start) but
    /// attached only while a flow log exists: it runs for every packet the host drops.
    pub fn enable_drop_accounting(&mut self, layout: SkbLayout) -> Result<(), DatapathError> {
        self.maps
            .skb_layout
            .set(0, layout, 0)
            .map_err(map_err(map_names::SKB_LAYOUT))?;
        self.programs.load_drop()?;
        self.drop_available = true;
        // What an earlier agent left counting goes on counting (no gap across a restart);
        // the first apply detaches it if no flow log wants it any more.
        if self.drop_link.is_none() && self.programs.drop_link_pinned() {
            self.drop_link = Some(self.programs.attach_drop()?);
        }
        Ok(())
    }

    /// Attaches or detaches the drop tracepoint as flow logs need it.
    fn sync_drop_accounting(&mut self, wanted: bool, report: &mut ApplyReport) {
        match (wanted && self.drop_available, self.drop_link.is_some()) {
            (true, false) => match self.programs.attach_drop() {
                Ok(link) => {
                    info!("drop accounting attached to skb:kfree_skb");
                    self.drop_link = Some(link);
                }
                Err(e) => report.error(PROG_FLOW_DROP, format!("drop accounting: {e}")),
            },
            (false, true) => {
                if let Some(link) = self.drop_link.take() {
                    link.detach();
                    info!("drop accounting detached: no flow log needs it");
                }
            }
            _ => {}
        }
    }

    /// Whether the drop tracepoint is attached now.
    pub fn drop_accounting_attached(&self) -> bool {
        self.drop_link.is_some()
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
        self.programs.classifier(name)
    }

    /// Pin path of a source link, when the data path is pinned.
    fn source_pin(&self, ifname: &str, dir: Direction) -> Option<PathBuf> {
        self.programs
            .pins()
            .map(|p| p.source_link(ifname, dir.as_str()))
    }

    /// A loaded XDP program (the receiving side), e.g. for BPF_PROG_TEST_RUN.
    pub fn xdp_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::programs::Xdp, DatapathError> {
        receive::xdp(self.programs.ebpf_mut(), name)
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
        let mut tunnel_errors: BTreeMap<u16, String> = BTreeMap::new();
        for &port in &ports {
            if let Err(e) = self.ensure_tunnel(port).await {
                let msg = format!("tunnel device {}: {e}", tunnel::device_name(port));
                report.error(&tunnel::device_name(port), msg.clone());
                tunnel_errors.insert(port, msg);
            }
        }

        // 1b. The segmentation device, and the next hop toward each target.
        let segment_ifindex = match self.ensure_segment().await {
            Ok(i) => i,
            Err(e) => {
                report.error(
                    segment::DEVICE,
                    format!("segmentation device: {e}; super-packets yield one copy each"),
                );
                0
            }
        };
        let mut next_hops = BTreeMap::new();
        for target in desired.targets.iter() {
            if let std::collections::btree_map::Entry::Vacant(e) =
                next_hops.entry(target.destination_ip)
            {
                e.insert(match self.copy_path {
                    CopyPathMode::Auto => {
                        nexthop::resolve(&self.netlink, target.destination_ip).await
                    }
                    CopyPathMode::Tunnel => Err(nexthop::Unresolved::Configured),
                });
            }
        }
        let mut uplinks_used: BTreeSet<String> = BTreeSet::new();
        let mut paths = BTreeMap::new();

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
                .map_err(map_err(map_names::FILTERS))?;
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
                let why = tunnel_errors
                    .get(&target.destination_port)
                    .cloned()
                    .unwrap_or_else(|| "no tunnel device for its target".to_string());
                report.error(&session.id, why);
                continue;
            };
            let tunnel_ifindex = tunnel.ifindex;
            let (fast, path) = match next_hops.get(&target.destination_ip) {
                Some(Ok(hop)) => match self.ensure_uplink(hop.uplink_ifindex) {
                    Ok(name) => {
                        uplinks_used.insert(name.clone());
                        (
                            Some(*hop),
                            CopyPath {
                                mode: "fast",
                                detail: name,
                                segmentation: segment_ifindex != 0,
                            },
                        )
                    }
                    Err(e) => (None, tunnel_path(format!("uplink: {e}"), segment_ifindex)),
                },
                Some(Err(why)) => (None, tunnel_path(why.to_string(), segment_ifindex)),
                None => (None, tunnel_path("not resolved".into(), segment_ifindex)),
            };
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
                self.maps.reset_budget_state(slot)?;
            }
            let cfg = encode::encode_session(
                session,
                target,
                encode::SessionPlacement {
                    filter_slot,
                    tunnel_ifindex,
                    snaplen,
                    segment_ifindex,
                    fast,
                },
            );
            self.maps
                .sessions
                .set(slot, cfg, 0)
                .map_err(map_err(map_names::SESSIONS))?;
            paths.insert(session.id.clone(), path);
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
                    .map_err(map_err(map_names::SESSIONS))?;
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
                    .map_err(map_err(map_names::FILTERS))?;
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
        // Uplinks no session sends through any more (after the sessions moved away).
        let unused: Vec<String> = self
            .uplinks
            .keys()
            .filter(|n| !uplinks_used.contains(*n))
            .cloned()
            .collect();
        for name in unused {
            if let Some(t) = self.uplinks.remove(&name) {
                t.link.detach();
                info!(uplink = %name, "mirror_tx detached: no session sends through it");
            }
        }
        self.next_hops = next_hops;
        self.paths = paths;
        self.sync_drop_accounting(!desired.flow_interfaces.is_empty(), &mut report);

        // 8. Receivers (the target side).
        self.receive
            .apply(
                self.programs.ebpf_mut(),
                &self.netlink,
                &desired.receivers,
                &mut report,
            )
            .await?;

        // The next agent adopts from this; failing to save costs a gap then, not now.
        if let Err(e) = self.save() {
            report.error("datapath", e.to_string());
        }
        Ok(report)
    }

    async fn ensure_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
        let ifindex = tunnel::ensure_device(&self.netlink, port).await?;
        match self.tunnels.get(&port) {
            Some(t) if t.ifindex == ifindex => return Ok(()),
            Some(_) => {
                // Re-created under us: the old link went with the old device.
                if let Some(old) = self.tunnels.remove(&port) {
                    old.link.detach();
                }
            }
            None => {}
        }
        let pin = self.programs.pins().map(|p| p.encap_link(port));
        let link = self.programs.attach(
            PROG_ENCAP,
            &tunnel::device_name(port),
            TcAttachType::Egress,
            self.attach_mode,
            pin,
        )?;
        info!(device = %tunnel::device_name(port), ifindex, "tunnel device ready");
        self.tunnels.insert(port, TunnelDevice { ifindex, link });
        Ok(())
    }

    /// The segmentation pair with `mirror_segment` on its peer's ingress; its index.
    async fn ensure_segment(&mut self) -> Result<u32, DatapathError> {
        let dev = segment::ensure(&self.netlink).await?;
        match &self.segment {
            Some(t) if t.ifindex == dev.peer => return Ok(dev.device),
            Some(_) => {
                if let Some(old) = self.segment.take() {
                    old.link.detach();
                }
            }
            None => {}
        }
        let pin = self.programs.pins().map(|p| p.links.join("segment"));
        let link = self.programs.attach(
            PROG_SEGMENT,
            segment::PEER,
            TcAttachType::Ingress,
            self.attach_mode,
            pin,
        )?;
        info!(device = segment::DEVICE, "segmentation device ready");
        self.segment = Some(TunnelDevice {
            ifindex: dev.peer,
            link,
        });
        Ok(dev.device)
    }

    /// `mirror_tx` on an uplink's egress, first in line; the uplink's name.
    fn ensure_uplink(&mut self, index: u32) -> Result<String, DatapathError> {
        let name =
            ifname(index).ok_or_else(|| DatapathError::InterfaceNotFound(format!("#{index}")))?;
        match self.uplinks.get(&name) {
            Some(t) if t.ifindex == index => return Ok(name),
            Some(_) => {
                if let Some(old) = self.uplinks.remove(&name) {
                    old.link.detach();
                }
            }
            None => {}
        }
        let pin = self
            .programs
            .pins()
            .map(|p| p.links.join(format!("tx-{name}")));
        let link = self.programs.attach_ordered(
            PROG_TX,
            &name,
            TcAttachType::Egress,
            self.attach_mode,
            pin,
            aya::programs::links::LinkOrder::first(),
        )?;
        info!(uplink = %name, "mirror_tx attached: copies are encapsulated in eBPF");
        self.uplinks.insert(
            name.clone(),
            TunnelDevice {
                ifindex: index,
                link,
            },
        );
        Ok(name)
    }

    /// Which way copies may take from the next apply on.
    pub fn set_copy_path(&mut self, mode: CopyPathMode) {
        self.copy_path = mode;
    }

    /// Whether a target's next hop changed since the last apply (route, neighbour, uplink
    /// address): then an apply rewrites the sessions' outer headers.
    pub async fn next_hops_changed(&self) -> bool {
        if self.copy_path == CopyPathMode::Tunnel {
            return false;
        }
        for (ip, before) in &self.next_hops {
            if nexthop::resolve(&self.netlink, *ip).await != *before {
                return true;
            }
        }
        false
    }

    /// The way each applied session's copies take.
    pub fn copy_paths(&self) -> &BTreeMap<String, CopyPath> {
        &self.paths
    }

    async fn remove_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
        if let Some(t) = self.tunnels.remove(&port) {
            t.link.detach();
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
            return Err(DatapathError::InterfaceNotFound(ifname.to_string()));
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
        let stats_slot =
            self.sources
                .get_or_alloc(ifname)
                .ok_or(DatapathError::SlotsExhausted {
                    table: map_names::SOURCE_STATS,
                    capacity: MAX_SOURCES,
                })?;
        self.maps.reset_source_stats(stats_slot)?;
        cfg.stats_slot = stats_slot;
        // The map entry goes in first: a program attached before it would just pass packets.
        self.maps.set_source(index, cfg)?;
        let ingress = self.programs.attach(
            PROG_INGRESS,
            ifname,
            TcAttachType::Ingress,
            self.attach_mode,
            self.source_pin(ifname, Direction::Ingress),
        );
        let ingress = match ingress {
            Ok(l) => l,
            Err(e) => {
                let _ = self.maps.clear_source(index);
                self.sources.release(ifname);
                return Err(e);
            }
        };
        let egress = match self.programs.attach(
            PROG_EGRESS,
            ifname,
            TcAttachType::Egress,
            self.attach_mode,
            self.source_pin(ifname, Direction::Egress),
        ) {
            Ok(l) => l,
            Err(e) => {
                ingress.detach();
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
        ingress.detach();
        egress.detach();
        self.maps.clear_source(a.ifindex)?;
        self.sources.release(ifname);
        info!(source = ifname, "source detached");
        Ok(())
    }

    /// Whether the data path outlives this process (pinned in bpffs).
    pub fn is_pinned(&self) -> bool {
        self.programs.pins().is_some()
    }

    /// Detaches everything and deletes the tunnel devices, the pins and the saved state.
    pub async fn shutdown(&mut self) -> Result<(), DatapathError> {
        for name in self.attached_sources() {
            self.remove_source(&name)?;
        }
        let ports: Vec<u16> = self.tunnels.keys().copied().collect();
        for port in ports {
            self.remove_tunnel(port).await?;
        }
        for (_, t) in std::mem::take(&mut self.uplinks) {
            t.link.detach();
        }
        if let Some(t) = self.segment.take() {
            t.link.detach();
        }
        segment::delete(&self.netlink).await?;
        self.receive
            .shutdown(self.programs.ebpf_mut(), &self.netlink)
            .await?;
        if let Some(l) = self.drop_link.take() {
            l.detach();
        }
        if let Some(p) = self.programs.pins() {
            remove_pins(&p.root);
        }
        if let Some(dir) = &self.state_dir {
            let _ = SavedDatapath::remove(dir);
        }
        Ok(())
    }

    /// Leaves everything running for the next agent (a rolling update): links stay pinned,
    /// cls_bpf filters stay in their qdiscs, and the slot tables are saved. Receivers' XDP
    /// links stay pinned and their capture interfaces stay, so tools reading them keep
    /// receiving; the next agent takes both over.
    pub fn leave(mut self) -> Result<(), DatapathError> {
        let saved = self.save();
        for (_, a) in std::mem::take(&mut self.attached) {
            for l in a.links {
                l.leave();
            }
        }
        for (_, t) in std::mem::take(&mut self.tunnels) {
            t.link.leave();
        }
        for (_, t) in std::mem::take(&mut self.uplinks) {
            t.link.leave();
        }
        if let Some(t) = self.segment.take() {
            t.link.leave();
        }
        saved
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
        c.programs = self.programs.stats();
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

/// Removes what agents left running under `persist` (`mirror-agent cleanup`): cls_bpf filters
/// named in the saved state, every pin (links detach, programs and maps go once unused), the
/// tunnel devices, and the saved state. Returns what it removed, for the operator.
pub async fn cleanup(persist: &Persistence) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    // A running agent would re-create what we remove.
    let _lock = match pins::lock(&persist.pin_dir) {
        Ok(l) => Some(l),
        Err(e @ pins::PinError::InUse(_)) => return Err(DatapathError::Pins(e)),
        Err(_) => None,
    };
    let saved = SavedDatapath::read(&persist.state_dir)
        .map_err(|source| DatapathError::ReadSaved {
            path: persist.state_dir.join(pins::STATE_FILE),
            source,
        })?
        .unwrap_or_default();
    let mut netlink_links: Vec<(String, TcAttachType, u16, u32)> = Vec::new();
    for (ifname, src) in &saved.sources {
        for (link, dir) in src
            .links
            .iter()
            .zip([TcAttachType::Ingress, TcAttachType::Egress])
        {
            if let pins::SavedLink::Netlink { priority, handle } = link {
                netlink_links.push((ifname.clone(), dir, *priority, *handle));
            }
        }
    }
    let mut ports: BTreeSet<u16> = saved.tunnels.keys().copied().collect();
    for (port, t) in &saved.tunnels {
        if let pins::SavedLink::Netlink { priority, handle } = &t.link {
            netlink_links.push((
                tunnel::device_name(*port),
                TcAttachType::Egress,
                *priority,
                *handle,
            ));
        }
    }
    for (name, t) in &saved.uplinks {
        if let pins::SavedLink::Netlink { priority, handle } = &t.link {
            netlink_links.push((name.clone(), TcAttachType::Egress, *priority, *handle));
        }
    }
    for (ifname, dir, priority, handle) in netlink_links {
        if let Ok(link) = aya::programs::tc::SchedClassifierLink::attached(
            &ifname,
            dir,
            priority,
            aya::programs::tc::TcHandle::from(handle),
            None,
        ) {
            // Dropping the handle removes the filter; it may be gone with its interface.
            drop(link);
            removed.push(format!("cls_bpf filter on {ifname} ({dir:?})"));
        }
    }
    // Tunnel devices also from the link pins, in case the saved state was lost.
    if let Ok(entries) = std::fs::read_dir(persist.pin_dir.join("links")) {
        for e in entries.filter_map(Result::ok) {
            if let Some(port) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("encap-"))
                .and_then(|p| p.parse().ok())
            {
                ports.insert(port);
            }
        }
    }
    if persist.pin_dir.exists() {
        pins::remove(&persist.pin_dir).map_err(|source| DatapathError::Remove {
            path: persist.pin_dir.clone(),
            source,
        })?;
        removed.push(format!("pins under {}", persist.pin_dir.display()));
    }
    let (connection, netlink, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    for port in ports {
        let name = tunnel::device_name(port);
        if ifindex(&name).is_some() {
            tunnel::delete_device(&netlink, port).await?;
            removed.push(format!("tunnel device {name}"));
        }
    }
    if ifindex(segment::DEVICE).is_some() {
        segment::delete(&netlink).await?;
        removed.push(format!("segmentation device {}", segment::DEVICE));
    }
    removed.extend(receive::remove_all_filters(&netlink).await?);
    removed.extend(receive::remove_all_captures(&netlink).await?);
    SavedDatapath::remove(&persist.state_dir).map_err(|source| DatapathError::Remove {
        path: persist.state_dir.join(pins::STATE_FILE),
        source,
    })?;
    Ok(removed)
}

/// Removes a pin directory; links in it detach, programs and maps go once nothing uses them.
pub fn remove_pins(root: &Path) {
    if let Err(e) = pins::remove(root) {
        warn!(pin_dir = %root.display(), "removing pins: {e}");
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
