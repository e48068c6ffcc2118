//! Taking the data path down: at shutdown, at a rolling update (left running for the next
//! agent), and `mirror-agent cleanup` after an agent that is gone.

use std::{collections::BTreeSet, path::Path};

use aya::programs::TcAttachType;
use tracing::warn;

use super::{
    Datapath, DatapathError, Persistence, ifindex,
    pins::{self, SavedDatapath},
    receive, segment, tunnel,
};

impl Datapath {
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
