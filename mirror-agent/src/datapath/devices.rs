//! Devices that carry one program of ours: tunnel devices, the segmentation pair's peer and
//! the uplinks of fast-path sessions.

use aya::programs::TcAttachType;
use tracing::info;

use super::{
    Datapath, DatapathError, PROG_ENCAP, PROG_SEGMENT, PROG_TX, TcLink, ifname, segment, tunnel,
};

/// A device with one program of ours: a tunnel device (`mirror_encap`), the segmentation
/// device's peer (`mirror_segment`) or an uplink (`mirror_tx`).
pub(super) struct TunnelDevice {
    pub(super) ifindex: u32,
    pub(super) link: TcLink,
}

impl Datapath {
    pub(super) async fn ensure_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
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
    pub(super) async fn ensure_segment(&mut self) -> Result<u32, DatapathError> {
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
    pub(super) fn ensure_uplink(&mut self, index: u32) -> Result<String, DatapathError> {
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

    pub(super) async fn remove_tunnel(&mut self, port: u16) -> Result<(), DatapathError> {
        if let Some(t) = self.tunnels.remove(&port) {
            t.link.detach();
        }
        tunnel::delete_device(&self.netlink, port).await?;
        Ok(())
    }
}
