//! Source interfaces: their map entry and the ingress and egress programs on them.

use std::path::PathBuf;

use aya::programs::TcAttachType;
use mirror_ebpf::{DIRECTIONS, MAX_SOURCES, SOURCE_FLOW_LOG, SourceConfig, map_names};
use tracing::info;

use super::{Datapath, DatapathError, PROG_EGRESS, PROG_INGRESS, TcLink, ifindex};
use crate::model::Direction;

pub(super) struct AttachedSource {
    pub(super) ifindex: u32,
    pub(super) stats_slot: u32,
    pub(super) flow_log: bool,
    pub(super) links: [TcLink; DIRECTIONS],
}

impl Datapath {
    /// Pin path of a source link, when the data path is pinned.
    fn source_pin(&self, ifname: &str, dir: Direction) -> Option<PathBuf> {
        self.programs
            .pins()
            .map(|p| p.source_link(ifname, dir.as_str()))
    }

    pub(super) fn ensure_source(
        &mut self,
        ifname: &str,
        mut cfg: SourceConfig,
    ) -> Result<(), DatapathError> {
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

    pub(super) fn remove_source(&mut self, ifname: &str) -> Result<(), DatapathError> {
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
}
