//! The programs and their attachments as objects the agent owns: loaded fresh or adopted from
//! pins, attached with TCX (pinned when bpffs is there) or cls_bpf, and either detached or
//! left running when the agent goes.

use std::{collections::BTreeMap, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        tp_btf::BtfTracePointLink,
    },
    util::KernelVersion,
};
use tracing::{debug, info, warn};

use super::{
    DatapathError,
    pins::{PinPaths, SavedLink},
    prog_err,
};

pub const PROG_INGRESS: &str = "mirror_ingress";
pub const PROG_EGRESS: &str = "mirror_egress";
pub const PROG_ENCAP: &str = "mirror_encap";
pub const PROG_TX: &str = "mirror_tx";
pub const PROG_SEGMENT: &str = "mirror_segment";
pub const PROG_FLOW_DROP: &str = "flow_drop";
/// The tracepoint `flow_drop` is a BTF program of.
const DROP_TRACEPOINT: &str = "kfree_skb";
pub const TC_PROGRAMS: [&str; 5] = [PROG_INGRESS, PROG_EGRESS, PROG_ENCAP, PROG_TX, PROG_SEGMENT];

/// Which way copies may take (`copy_path`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CopyPathMode {
    /// The fast path (outer headers written in eBPF on the uplink) wherever the next hop
    /// toward the target is resolved and the target is IPv4; the tunnel device otherwise.
    #[default]
    Auto,
    /// Always the kernel's VXLAN device: copies go through the host's routing and netfilter
    /// (e.g. to be policed there), at the cost of a route lookup per copy.
    Tunnel,
}

/// How programs are attached to interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    /// TCX where the kernel has it (6.6+), clsact otherwise.
    #[default]
    Auto,
    /// TCX links, which need Linux 6.6+.
    Tcx,
    /// A clsact qdisc and a direct-action cls_bpf filter over netlink, as before TCX. The
    /// qdisc is left in place on detach: other software may have filters on it.
    Clsact,
}

impl TcAttachMode {
    pub(crate) fn uses_tcx(self) -> bool {
        match self {
            TcAttachMode::Tcx => true,
            TcAttachMode::Clsact => false,
            TcAttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
        }
    }
}

/// A TC attachment of ours.
#[derive(Debug)]
pub enum TcLink {
    /// A TCX link pinned in bpffs: it stays attached until the pin is removed.
    Pinned { link: PinnedLink, path: PathBuf },
    /// A TCX link without a pin (no bpffs) or a cls_bpf filter: detached on drop.
    Owned(SchedClassifierLink),
}

impl TcLink {
    /// What a later agent needs to adopt this link; `None` for a TCX link that dies with us.
    pub fn saved(&self) -> Option<SavedLink> {
        match self {
            TcLink::Pinned { path, .. } => Some(SavedLink::Pin { path: path.clone() }),
            TcLink::Owned(l) => match (l.priority(), l.handle()) {
                (Ok(priority), Ok(handle)) => Some(SavedLink::Netlink {
                    priority,
                    handle: handle.into(),
                }),
                _ => None,
            },
        }
    }

    /// Detaches now.
    pub fn detach(self) {
        match self {
            TcLink::Pinned { link, path } => match link.unpin() {
                // The last reference goes with the returned FdLink: the link detaches.
                Ok(fd) => drop(fd),
                Err(e) => warn!(pin = %path.display(), "removing pinned link: {e}"),
            },
            TcLink::Owned(l) => drop(l),
        }
    }

    /// Leaves the program attached after this process exits, where the kernel can keep it.
    pub fn leave(self) {
        match self {
            // The pin holds the link.
            TcLink::Pinned { .. } => {}
            // A cls_bpf filter lives in the qdisc; only dropping our handle would remove it.
            TcLink::Owned(l) if l.priority().is_ok() => std::mem::forget(l),
            // An unpinned TCX link cannot outlive its file descriptor.
            TcLink::Owned(l) => drop(l),
        }
    }
}

/// The loaded programs: adopted from pins when this very build pinned them, loaded otherwise.
pub struct Programs {
    ebpf: Ebpf,
    pinned_tc: BTreeMap<&'static str, SchedClassifier>,
    pinned_drop: Option<BtfTracePoint>,
    pins: Option<PinPaths>,
    /// Programs the kernel would not load, with its reason: their features are off, the rest
    /// of the agent works.
    pub rejected: BTreeMap<&'static str, String>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// The verifier's verdict, short enough for a session's state: the error and the log's tail.
fn rejection(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The verdict is the last line before the statistics the verifier appends.
            let log = verifier_log.to_string();
            let verdict = log
                .lines()
                .map(str::trim)
                .rfind(|l| {
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("processed ")
                        && !l.starts_with("stack depth ")
                })
                .unwrap_or("");
            format!("rejected by the kernel ({io_error}): {verdict}")
        }
        other => format!("rejected by the kernel: {other}"),
    }
}

impl Programs {
    /// Loads (or adopts) the TC programs. A program the kernel rejects is recorded, not fatal.
    pub fn load(
        mut ebpf: Ebpf,
        pins: Option<PinPaths>,
        logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    ) -> Programs {
        let mut pinned_tc = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        for name in TC_PROGRAMS {
            let Some(p) = &pins else { break };
            let path = p.progs.join(name);
            if path.exists() {
                match SchedClassifier::from_pin(&path) {
                    Ok(prog) => {
                        debug!(program = name, "adopted from its pin");
                        pinned_tc.insert(name, prog);
                    }
                    Err(e) => warn!(program = name, "cannot adopt the pinned program: {e}"),
                }
            }
        }
        let mut to_load = Vec::new();
        for (name, prog) in ebpf.programs_mut() {
            let Some(&name) = TC_PROGRAMS.iter().find(|n| **n == name) else {
                continue;
            };
            if pinned_tc.contains_key(name) {
                continue;
            }
            match <&mut SchedClassifier>::try_from(prog) {
                Ok(prog) => to_load.push((name, prog)),
                Err(e) => {
                    rejected.insert(name, prog_err(name)(e).to_string());
                }
            }
        }
        for name in TC_PROGRAMS {
            if !pinned_tc.contains_key(name)
                && !rejected.contains_key(name)
                && !to_load.iter().any(|(n, _)| *n == name)
            {
                rejected.insert(name, DatapathError::MissingProgram(name).to_string());
            }
        }
        // The verifier takes most of an agent's start (the source programs about a second
        // each); one thread per program lets it use every CPU.
        let loaded: Vec<_> = std::thread::scope(|s| {
            let running: Vec<_> = to_load
                .into_iter()
                .map(|(name, prog)| (name, s.spawn(move || prog.load().map(|()| prog))))
                .collect();
            running
                .into_iter()
                .map(|(name, t)| (name, t.join()))
                .collect()
        });
        for (name, outcome) in loaded {
            let prog = match outcome {
                Ok(Ok(prog)) => prog,
                Ok(Err(e)) => {
                    let why = rejection(&e);
                    tracing::error!(program = name, "{why}");
                    rejected.insert(name, why);
                    continue;
                }
                Err(_) => {
                    rejected.insert(name, "its loading thread panicked".to_string());
                    continue;
                }
            };
            if let Some(p) = &pins
                && let Err(e) = prog.pin(p.progs.join(name))
            {
                warn!(program = name, "pinning: {e}");
            }
        }
        Programs {
            ebpf,
            pinned_tc,
            pinned_drop: None,
            pins,
            rejected,
            logger,
        }
    }

    /// The reader of the programs' log ring buffer, for whoever forwards it.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    pub fn pins(&self) -> Option<&PinPaths> {
        self.pins.as_ref()
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// A loaded TC program.
    pub fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DatapathError> {
        if let Some(why) = self.rejected.get(name) {
            return Err(DatapathError::Rejected {
                name,
                reason: why.clone(),
            });
        }
        if let Some(p) = self.pinned_tc.get_mut(name) {
            return Ok(p);
        }
        classifier_in(&mut self.ebpf, name)
    }

    /// The kernel id of a loaded program.
    pub fn program_id(&mut self, name: &'static str) -> Option<u32> {
        self.classifier(name).ok()?.info().ok().map(|i| i.id())
    }

    /// Attaches `name` to `ifname` and takes the link out of aya's bookkeeping (whose drop
    /// would detach it); with TCX and bpffs, pins it at `pin`.
    pub fn attach(
        &mut self,
        name: &'static str,
        ifname: &str,
        attach_type: TcAttachType,
        mode: TcAttachMode,
        pin: Option<PathBuf>,
    ) -> Result<TcLink, DatapathError> {
        self.attach_ordered(name, ifname, attach_type, mode, pin, LinkOrder::default())
    }

    /// As `attach`, at a given place in the device's TCX chain. `mirror_tx` goes first
    /// (cls_bpf: a new filter gets a better priority than those present anyway): it must
    /// encapsulate a copy before the uplink's other programs, ours included, see it.
    pub fn attach_ordered(
        &mut self,
        name: &'static str,
        ifname: &str,
        attach_type: TcAttachType,
        mode: TcAttachMode,
        pin: Option<PathBuf>,
        order: LinkOrder,
    ) -> Result<TcLink, DatapathError> {
        let tcx = mode.uses_tcx();
        let options = if tcx {
            TcAttachOptions::TcxOrder(order)
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
        let prog = self.classifier(name)?;
        let id = prog
            .attach_with_options(ifname, attach_type, options)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        match (tcx, pin) {
            (true, Some(path)) => pin_tc(name, link, path),
            _ => Ok(TcLink::Owned(link)),
        }
    }

    /// Takes over a link an earlier agent left, switching it atomically to our program when it
    /// runs another one (an upgrade). `None` when the link is gone.
    pub fn adopt(
        &mut self,
        name: &'static str,
        saved: &SavedLink,
        ifname: &str,
        attach_type: TcAttachType,
    ) -> Result<Option<TcLink>, DatapathError> {
        let ours = self.program_id(name);
        match saved {
            SavedLink::Pin { path } => {
                let Ok(pinned) = PinnedLink::from_pin(path) else {
                    return Ok(None);
                };
                let fd = FdLink::from(pinned);
                let running = fd.info().ok().map(|i| i.program_id());
                if running.is_some() && running == ours {
                    let link = PinnedLink::from_pin(path).map_err(|e| DatapathError::Link {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    return Ok(Some(TcLink::Pinned {
                        link,
                        path: path.clone(),
                    }));
                }
                let link = SchedClassifierLink::try_from(fd).map_err(|e| DatapathError::Link {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let prog = self.classifier(name)?;
                let id = prog.attach_to_link(link).map_err(prog_err(name))?;
                // The pin still names the same link, which now runs our program.
                let _ = prog.take_link(id).map_err(prog_err(name))?;
                info!(
                    program = name,
                    ifname, "pinned link switched to this build's program"
                );
                let link = PinnedLink::from_pin(path).map_err(|e| DatapathError::Link {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Ok(Some(TcLink::Pinned {
                    link,
                    path: path.clone(),
                }))
            }
            SavedLink::Netlink { priority, handle } => {
                let link = SchedClassifierLink::attached(
                    ifname,
                    attach_type,
                    *priority,
                    TcHandle::from(*handle),
                    None,
                )
                .map_err(DatapathError::Netlink)?;
                // A cls_bpf filter tells us nothing cheaply about its program: replace it with
                // ours in place (same priority and handle), which is atomic for the qdisc.
                let prog = self.classifier(name)?;
                let id = prog.attach_to_link(link).map_err(prog_err(name))?;
                let link = prog.take_link(id).map_err(prog_err(name))?;
                Ok(Some(TcLink::Owned(link)))
            }
        }
    }

    /// Loads and attaches the drop tracepoint, adopting a pinned link of the same program and
    /// replacing one of an older build (new first, then old: drops may count twice for a few
    /// microseconds rather than not at all).
    /// Loads the drop program (adopting this build's pinned one), without attaching it: a
    /// kernel that rejects it is found at start, not when the first flow log arrives.
    pub fn load_drop(&mut self) -> Result<Option<u32>, DatapathError> {
        let prog_pin = self.pins.as_ref().map(|p| p.progs.join(PROG_FLOW_DROP));
        if self.pinned_drop.is_none()
            && let Some(path) = prog_pin.as_ref().filter(|p| p.exists())
        {
            match BtfTracePoint::from_pin(path) {
                Ok(p) => self.pinned_drop = Some(p),
                Err(e) => warn!(
                    program = PROG_FLOW_DROP,
                    "cannot adopt the pinned program: {e}"
                ),
            }
        }
        Ok(match &self.pinned_drop {
            Some(p) => p.info().ok().map(|i| i.id()),
            None => {
                let prog: &mut BtfTracePoint = self
                    .ebpf
                    .program_mut(PROG_FLOW_DROP)
                    .ok_or(DatapathError::MissingProgram(PROG_FLOW_DROP))?
                    .try_into()
                    .map_err(prog_err(PROG_FLOW_DROP))?;
                if prog.fd().is_err() {
                    // The tracepoint's argument types come from the kernel's BTF.
                    let btf = aya::Btf::from_sys_fs().map_err(|e| DatapathError::Rejected {
                        name: PROG_FLOW_DROP,
                        reason: format!("reading the kernel's BTF: {e}"),
                    })?;
                    prog.load(DROP_TRACEPOINT, &btf)
                        .map_err(|e| DatapathError::Rejected {
                            name: PROG_FLOW_DROP,
                            reason: rejection(&e),
                        })?;
                    if let Some(path) = &prog_pin
                        && let Err(e) = prog.pin(path)
                    {
                        warn!(program = PROG_FLOW_DROP, "pinning: {e}");
                    }
                }
                prog.info().ok().map(|i| i.id())
            }
        })
    }

    /// Whether an earlier agent left the drop tracepoint attached (pinned).
    pub fn drop_link_pinned(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.drop_link().exists())
    }

    pub fn attach_drop(&mut self) -> Result<DropLink, DatapathError> {
        let pin = self.pins.as_ref().map(PinPaths::drop_link);
        let ours = self.load_drop()?;
        let old = pin.as_ref().and_then(|p| PinnedLink::from_pin(p).ok());
        if let Some(old) = old {
            let fd = FdLink::from(old);
            if ours.is_some()
                && fd.info().ok().map(|i| i.program_id()) == ours
                && let Some(path) = &pin
                && let Ok(link) = PinnedLink::from_pin(path)
            {
                return Ok(DropLink::Pinned {
                    link,
                    path: path.clone(),
                });
            }
            // Another build's program: attach ours, then let the old link go.
            let new = self.attach_drop_new(None)?;
            if let Some(path) = &pin {
                let _ = super::pins::remove(path);
            }
            drop(fd);
            return match (new, &pin) {
                (DropLink::Owned(l), Some(path)) => pin_drop(l, path.clone()),
                (other, _) => Ok(other),
            };
        }
        self.attach_drop_new(pin)
    }

    fn attach_drop_new(&mut self, pin: Option<PathBuf>) -> Result<DropLink, DatapathError> {
        let prog: &mut BtfTracePoint = match &mut self.pinned_drop {
            Some(p) => p,
            None => self
                .ebpf
                .program_mut(PROG_FLOW_DROP)
                .ok_or(DatapathError::MissingProgram(PROG_FLOW_DROP))?
                .try_into()
                .map_err(prog_err(PROG_FLOW_DROP))?,
        };
        let id = prog.attach().map_err(prog_err(PROG_FLOW_DROP))?;
        let link = prog.take_link(id).map_err(prog_err(PROG_FLOW_DROP))?;
        match pin {
            Some(path) => pin_drop(link, path),
            None => Ok(DropLink::Owned(link)),
        }
    }

    /// Kernel run-time statistics of every loaded program: (name, run time ns, runs).
    pub fn stats(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for (name, prog) in &self.pinned_tc {
            if let Ok(info) = prog.info() {
                out.push((
                    name.to_string(),
                    info.run_time().as_nanos() as u64,
                    info.run_count(),
                ));
            }
        }
        if let Some(prog) = &self.pinned_drop
            && let Ok(info) = prog.info()
        {
            out.push((
                PROG_FLOW_DROP.to_string(),
                info.run_time().as_nanos() as u64,
                info.run_count(),
            ));
        }
        for (name, prog) in self.ebpf.programs() {
            let adopted = self.pinned_tc.contains_key(name)
                || (name == PROG_FLOW_DROP && self.pinned_drop.is_some());
            if adopted {
                continue;
            }
            if let Ok(info) = prog.info() {
                out.push((
                    name.to_string(),
                    info.run_time().as_nanos() as u64,
                    info.run_count(),
                ));
            }
        }
        out
    }
}

pub fn classifier_in<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn pin_tc(
    name: &'static str,
    link: SchedClassifierLink,
    path: PathBuf,
) -> Result<TcLink, DatapathError> {
    // A pin left by a crashed agent for a link that no longer exists would make BPF_OBJ_PIN
    // fail with EEXIST.
    let _ = super::pins::remove(&path);
    let fd = FdLink::try_from(link).map_err(|e| DatapathError::Link {
        what: name.to_string(),
        reason: e.to_string(),
    })?;
    let link = fd.pin(&path).map_err(|e| DatapathError::Link {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(TcLink::Pinned { link, path })
}

/// The drop tracepoint's link.
#[derive(Debug)]
pub enum DropLink {
    Pinned { link: PinnedLink, path: PathBuf },
    Owned(BtfTracePointLink),
}

impl DropLink {
    pub fn detach(self) {
        match self {
            DropLink::Pinned { link, path } => match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => warn!(pin = %path.display(), "removing pinned link: {e}"),
            },
            DropLink::Owned(l) => drop(l),
        }
    }

    pub fn path(&self) -> Option<PathBuf> {
        match self {
            DropLink::Pinned { path, .. } => Some(path.clone()),
            DropLink::Owned(_) => None,
        }
    }
}

fn pin_drop(link: BtfTracePointLink, path: PathBuf) -> Result<DropLink, DatapathError> {
    let _ = super::pins::remove(&path);
    let fd = FdLink::from(link);
    let link = fd.pin(&path).map_err(|e| DatapathError::Link {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(DropLink::Pinned { link, path })
}
