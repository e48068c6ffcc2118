//! Loads the eBPF programs once and reconciles the mirror configuration into their maps.
//!
//! Changes never reload a program: sources are attached or detached one interface at a time,
//! and sessions, filters and targets are map writes. See docs/architecture.md.

mod adopt;
mod apply;
pub mod attach;
mod batchdrain;
mod devices;
mod drops;
pub mod encode;
pub mod flowtable;
mod loading;
mod maps;
pub mod nexthop;
pub mod object;
pub mod pins;
mod plan;
pub mod receive;
mod rxlinks;
pub mod segment;
mod slots;
mod sources;
mod teardown;
pub mod tunnel;

use std::{collections::BTreeMap, ffi::CString, path::PathBuf};

use aya::{
    maps::MapError,
    programs::{ProgramError, SchedClassifier},
};
use mirror_ebpf::{DIRECTIONS, SessionStats, SourceStats};
use thiserror::Error;
use tracing::warn;

use crate::model::Direction;
pub use attach::{
    CopyPathMode, DropLink, PROG_EGRESS, PROG_ENCAP, PROG_FLOW_DROP, PROG_INGRESS, PROG_SEGMENT,
    PROG_TX, Programs, TcAttachMode, TcLink,
};
use devices::TunnelDevice;
pub use flowtable::{FlowTableSpec, FlowTables};
pub use loading::{EBPF_OBJECT, load};
pub use maps::Maps;
use maps::{take_map, zeroed_per_cpu};
pub use slots::Slots;
use sources::AttachedSource;
pub use teardown::{cleanup, remove_pins};

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
    #[error(transparent)]
    Object(#[from] object::ObjectError),
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

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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
