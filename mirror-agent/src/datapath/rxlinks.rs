//! The receiving side's links: XDP (`mirror_receive` on receiving interfaces, `rx_pass` on
//! capture interfaces) and TC ingress (`mirror_receive_tc`, where native XDP cannot attach).
//! Where the data path is pinned, each XDP and TCX link is pinned under `<pin_dir>/rx-links/`
//! so capture goes on while no agent runs (SIGTERM, `kill -9`), and the next agent takes the
//! link over with `BPF_LINK_UPDATE` to its own program (atomic: no frame sees no program).
//! Without bpffs the links belong to this process and go with it.
//!
//! A cls_bpf filter (clsact, kernels without TCX) has no link to pin: it lives in the qdisc
//! at a fixed priority and handle ([`RX_FILTER_PRIORITY`], [`RX_FILTER_HANDLE`]) so the next
//! agent finds it without saved state and replaces its program in place (atomic for the
//! qdisc), as the source side does with the filters it records.
//!
//! The directory is separate from the TC links' `links/`, whose unknown pins the TC side
//! removes as orphans.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        },
        xdp::{XdpLink, XdpLinkId},
    },
};
use tracing::{debug, info, warn};

use super::{
    DatapathError, TcAttachMode,
    attach::classifier_in,
    pins, prog_err,
    receive::{PROG_RECEIVE_TC, xdp},
};

/// Priority of the receive filter in a clsact ingress hook. Fixed, so that a later agent
/// finds the filter without saved state; ahead of the kernel's automatic priorities
/// (49152 and down, what the source side's filters get), so mirror traffic is terminated
/// before other filters look at it. Frames it does not take go on to them.
pub const RX_FILTER_PRIORITY: u16 = 0x2000;
/// Handle of the receive filter at [`RX_FILTER_PRIORITY`].
pub const RX_FILTER_HANDLE: u32 = 1;

/// An XDP link of ours.
#[derive(Debug)]
pub enum RxLink {
    /// Pinned at this path: attached until the pin is removed.
    Pinned(PathBuf),
    /// Owned by the loaded program: detached with it.
    Owned(XdpLinkId),
    /// A TCX link owned by the loaded TC program (no bpffs): detached with it.
    OwnedTc(SchedClassifierLinkId),
    /// The cls_bpf receive filter on this interface's clsact ingress: stays in the qdisc
    /// until removed, whatever happens to this process.
    Filter(String),
}

fn link_err(what: &str, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Link {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Takes over the link pinned at `pin`: it now runs `name` of this object.
fn adopt(ebpf: &mut Ebpf, name: &'static str, pin: &Path) -> Result<(), DatapathError> {
    let what = pin.display().to_string();
    let pinned = PinnedLink::from_pin(pin).map_err(|e| link_err(&what, e))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(&what, e))?;
    let prog = xdp(ebpf, name)?;
    // Fails (ENOLINK) when the interface of the link is gone: the caller attaches anew.
    let id = prog.attach_to_link(link).map_err(prog_err(name))?;
    // The pin holds the link; our descriptor is not needed.
    drop(prog.take_link(id).map_err(prog_err(name))?);
    Ok(())
}

/// Attaches `name` to `ifindex` in `mode`, pinned at `pin` when given; a link already pinned
/// there is taken over instead. Returns whether an existing link was taken over.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifindex: u32,
    mode: XdpMode,
    pin: Option<&Path>,
) -> Result<(RxLink, bool), DatapathError> {
    if let Some(path) = pin
        && path.exists()
    {
        match adopt(ebpf, name, path) {
            Ok(()) => {
                info!(program = name, pin = %path.display(), "XDP link taken over");
                return Ok((RxLink::Pinned(path.to_path_buf()), true));
            }
            Err(e) => {
                warn!(pin = %path.display(), "cannot take the XDP link over, attaching anew: {e}");
                let _ = pins::remove(path);
            }
        }
    }
    let prog = xdp(ebpf, name)?;
    let id = prog
        .attach_to_if_index(ifindex, mode)
        .map_err(prog_err(name))?;
    let Some(path) = pin else {
        return Ok((RxLink::Owned(id), false));
    };
    let link = prog.take_link(id).map_err(prog_err(name))?;
    // A netlink attachment (kernels without XDP bpf_link) cannot be pinned; it is detached
    // when dropped here, so attach it again as the program's own.
    let fd = match FdLink::try_from(link) {
        Ok(fd) => fd,
        Err(e) => {
            debug!(program = name, "XDP link cannot be pinned: {e}");
            let id = prog
                .attach_to_if_index(ifindex, mode)
                .map_err(prog_err(name))?;
            return Ok((RxLink::Owned(id), false));
        }
    };
    drop(
        fd.pin(path)
            .map_err(|e| link_err(&path.display().to_string(), e))?,
    );
    Ok((RxLink::Pinned(path.to_path_buf()), false))
}

/// Takes over the TC receive attachment an earlier agent left on `ifname`: the TCX link pinned
/// at `pin`, or with clsact the receive filter, which then runs this object's program. `None`
/// when there is none (or it is dead: a dead pin is removed).
pub fn take_over_tc(
    ebpf: &mut Ebpf,
    ifname: &str,
    mode: TcAttachMode,
    pin: Option<&Path>,
) -> Result<Option<RxLink>, DatapathError> {
    let name = PROG_RECEIVE_TC;
    if !mode.uses_tcx() {
        let prog = classifier_in(ebpf, name)?;
        // Replacing needs the filter to exist (no NLM_F_CREATE): it fails when no earlier
        // agent left one.
        return match prog.attach_to_link(filter_link(ifname)?) {
            Ok(id) => {
                // Out of aya's bookkeeping, whose drop would remove the filter.
                std::mem::forget(prog.take_link(id).map_err(prog_err(name))?);
                info!(program = name, ifname, "cls_bpf receive filter taken over");
                Ok(Some(RxLink::Filter(ifname.to_string())))
            }
            Err(e) => {
                debug!(ifname, error = %e, "no receive filter to take over");
                Ok(None)
            }
        };
    }
    let Some(path) = pin.filter(|p| p.exists()) else {
        return Ok(None);
    };
    match adopt_tcx(ebpf, path) {
        Ok(()) => {
            info!(program = name, pin = %path.display(), "TCX link taken over");
            Ok(Some(RxLink::Pinned(path.to_path_buf())))
        }
        Err(e) => {
            warn!(pin = %path.display(), "cannot take the TCX link over: {e}");
            let _ = pins::remove(path);
            Ok(None)
        }
    }
}

/// Attaches `mirror_receive_tc` anew to the ingress of `ifname`: a TCX link, pinned at `pin`
/// when given, or with clsact the receive filter.
pub fn attach_tc(
    ebpf: &mut Ebpf,
    ifname: &str,
    mode: TcAttachMode,
    pin: Option<&Path>,
) -> Result<RxLink, DatapathError> {
    let name = PROG_RECEIVE_TC;
    let tcx = mode.uses_tcx();
    if !tcx && let Err(e) = tc::qdisc_add_clsact(ifname) {
        // EEXIST: the qdisc is already there, which is what we want.
        if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST)) {
            debug!(ifname, error = %e, "adding clsact qdisc");
        }
    }
    let options = if tcx {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    } else {
        TcAttachOptions::Netlink(NlOptions {
            priority: RX_FILTER_PRIORITY,
            handle: TcHandle::from(RX_FILTER_HANDLE),
            ..NlOptions::default()
        })
    };
    let prog = classifier_in(ebpf, name)?;
    let id = prog
        .attach_with_options(ifname, TcAttachType::Ingress, options)
        .map_err(prog_err(name))?;
    if !tcx {
        // Out of aya's bookkeeping, whose drop would remove the filter: it stays until
        // detached, also when the agent leaves the data path running.
        std::mem::forget(prog.take_link(id).map_err(prog_err(name))?);
        return Ok(RxLink::Filter(ifname.to_string()));
    }
    let Some(path) = pin else {
        return Ok(RxLink::OwnedTc(id));
    };
    let link = prog.take_link(id).map_err(prog_err(name))?;
    let fd = FdLink::try_from(link).map_err(|e| link_err(name, e))?;
    // A pin left by a crashed agent for a link that no longer exists would make
    // BPF_OBJ_PIN fail with EEXIST.
    let _ = pins::remove(path);
    drop(
        fd.pin(path)
            .map_err(|e| link_err(&path.display().to_string(), e))?,
    );
    Ok(RxLink::Pinned(path.to_path_buf()))
}

/// Takes over the TCX link pinned at `pin`: it now runs this object's `mirror_receive_tc`.
fn adopt_tcx(ebpf: &mut Ebpf, pin: &Path) -> Result<(), DatapathError> {
    let what = pin.display().to_string();
    let pinned = PinnedLink::from_pin(pin).map_err(|e| link_err(&what, e))?;
    let link =
        SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(&what, e))?;
    let prog = classifier_in(ebpf, PROG_RECEIVE_TC)?;
    let id = prog
        .attach_to_link(link)
        .map_err(prog_err(PROG_RECEIVE_TC))?;
    // The pin holds the link; our descriptor is not needed.
    drop(prog.take_link(id).map_err(prog_err(PROG_RECEIVE_TC))?);
    Ok(())
}

fn filter_link(ifname: &str) -> Result<SchedClassifierLink, DatapathError> {
    SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        RX_FILTER_PRIORITY,
        TcHandle::from(RX_FILTER_HANDLE),
        None,
    )
    .map_err(DatapathError::Netlink)
}

/// Removes the receive filter an agent left on `ifname`'s clsact ingress, found by its
/// program's name; true when there was one.
pub fn remove_filter(ifname: &str) -> Result<bool, DatapathError> {
    match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, PROG_RECEIVE_TC) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc on the interface: nothing of ours there.
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(link_err(&format!("receive filter on {ifname}"), e)),
    }
}

/// Detaches now.
pub fn detach(ebpf: &mut Ebpf, name: &'static str, link: RxLink) {
    match link {
        // The pin held the last reference: the link detaches.
        RxLink::Pinned(path) => {
            if let Err(e) = pins::remove(&path) {
                warn!(pin = %path.display(), "removing pinned XDP link: {e}");
            }
        }
        RxLink::Owned(id) => {
            // The link may be gone with its interface already; nothing else to undo then.
            if let Err(e) = xdp(ebpf, name).and_then(|p| p.detach(id).map_err(prog_err(name))) {
                debug!(program = name, error = %e, "xdp detach");
            }
        }
        RxLink::OwnedTc(id) => {
            if let Err(e) = classifier_in(ebpf, PROG_RECEIVE_TC)
                .and_then(|p| p.detach(id).map_err(prog_err(PROG_RECEIVE_TC)))
            {
                debug!(program = PROG_RECEIVE_TC, error = %e, "tcx detach");
            }
        }
        RxLink::Filter(ifname) => match remove_filter(&ifname) {
            Ok(_) => {}
            Err(e) => debug!(ifname, error = %e, "removing the receive filter"),
        },
    }
}
