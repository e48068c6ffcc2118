//! The receiving side's XDP links (`mirror_receive` on receiving interfaces, `rx_pass` on
//! capture interfaces). Where the data path is pinned, each link is pinned under
//! `<pin_dir>/rx-links/` so capture goes on while no agent runs (SIGTERM, `kill -9`), and the
//! next agent takes the link over with `BPF_LINK_UPDATE` to its own program (atomic: no frame
//! sees no program). Without bpffs the links belong to this process and go with it.
//!
//! The directory is separate from the TC links' `links/`, whose unknown pins the TC side
//! removes as orphans.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use tracing::{debug, info, warn};

use super::{DatapathError, pins, prog_err, receive::xdp};

/// An XDP link of ours.
#[derive(Debug)]
pub enum RxLink {
    /// Pinned at this path: attached until the pin is removed.
    Pinned(PathBuf),
    /// Owned by the loaded program: detached with it.
    Owned(XdpLinkId),
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
    }
}
