//! Loading the eBPF object: maps (reused from pins), programs and their log forwarding.

use std::{collections::BTreeMap, path::PathBuf};

use mirror_ebpf::{
    MAX_FILTERS, MAX_RULE_SLOTS, MAX_SESSIONS, MAX_SOURCES, SKB_LAYOUT_GLOBAL, SkbLayout, map_names,
};
use tracing::warn;

use super::{
    CopyPathMode, Datapath, DatapathError, FlowTables, Programs, Slots, TcAttachMode,
    flowtable::{FlowBuffer, FlowTableSpec, sized_flow_maps},
    maps::{Maps, take_map},
    object::EbpfObject,
    pins::{self, PinPaths},
    receive,
};

/// The compiled programs, built by build.rs with aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

/// Loads `object` into the kernel: maps (reused from `pins` when it has them) and the TC
/// programs (adopted from `pins` when this build pinned them). Each flow table gets
/// `flow_table_size` entries; `skb_layout` is the kernel's, for the programs that read the
/// `sk_buff` beyond `__sk_buff` (the drop tracepoint, the checksum test).
pub fn load(
    object: &EbpfObject,
    flow_table_size: u32,
    pins: Option<PinPaths>,
    skb_layout: &SkbLayout,
) -> Result<(Programs, Maps, FlowTables), DatapathError> {
    // The programs' log statements below the agent's level cost a load and a compare; the
    // level is fixed when a program is loaded (adopted programs keep theirs).
    let log_level = program_log_level();
    let mut loader = aya::EbpfLoader::new();
    for (name, size) in sized_flow_maps(flow_table_size) {
        loader.map_max_entries(name, size);
    }
    loader.override_global(aya_log::LEVEL, &log_level, false);
    loader.override_global(SKB_LAYOUT_GLOBAL, skb_layout, true);
    if let Some(p) = &pins {
        for &name in pins::PINNED_MAPS {
            loader.map_pin_path(name, p.maps.join(name));
        }
    }
    let mut ebpf = loader.load(object.bytes())?;
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
            FlowBuffer {
                accepts: take_map(&mut ebpf, map_names::FLOWS_0)?,
                rejects: take_map(&mut ebpf, map_names::FLOW_REJECTS_0)?,
                cache: take_map(&mut ebpf, map_names::FLOW_CACHE_0)?,
            },
            FlowBuffer {
                accepts: take_map(&mut ebpf, map_names::FLOWS_1)?,
                rejects: take_map(&mut ebpf, map_names::FLOW_REJECTS_1)?,
                cache: take_map(&mut ebpf, map_names::FLOW_CACHE_1)?,
            },
        ],
        take_map(&mut ebpf, map_names::FLOW_CTL)?,
        take_map(&mut ebpf, map_names::FLOW_STATS)?,
        take_map(&mut ebpf, map_names::FLOW_CLOCK)?,
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

impl Datapath {
    /// Loads the programs without pins: everything goes with this process (fixtures and
    /// benchmarks). Needs a tokio runtime for netlink. The flow tables go to whoever drains
    /// them (the flow-log runner).
    pub fn new(
        attach_mode: TcAttachMode,
        flow_tables: impl Into<FlowTableSpec>,
    ) -> Result<(Datapath, FlowTables), DatapathError> {
        let spec = flow_tables.into();
        let object = EbpfObject::for_tables(spec)?;
        let (programs, maps, flows) = load(&object, spec.entries, None, &SkbLayout::UNKNOWN)?;
        Ok((
            Datapath::assemble(programs, maps, attach_mode, None)?,
            flows,
        ))
    }

    pub(super) fn assemble(
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
}
