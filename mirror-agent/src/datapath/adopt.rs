//! Opening the data path over what an earlier agent left: pins, links and slot tables are
//! taken over so a restart or an upgrade leaves no gap, and saved for the next agent.

use std::{collections::BTreeSet, path::PathBuf};

use aya::programs::TcAttachType;
use mirror_ebpf::{MAX_FILTERS, MAX_RULE_SLOTS, MAX_SESSIONS, SkbLayout};
use tracing::{info, warn};

use super::{
    Datapath, DatapathError, DropLink, FlowTables, OpenReport, PROG_EGRESS, PROG_ENCAP,
    PROG_INGRESS, PROG_SEGMENT, PROG_TX, Persistence, Slots, TcAttachMode,
    devices::TunnelDevice,
    flowtable::{FlowTableSpec, sized_flow_maps},
    ifindex, load,
    object::EbpfObject,
    pins::{self, PinPaths, SavedDatapath, SavedSource, SavedTunnel},
    remove_pins, segment,
    sources::AttachedSource,
    tunnel,
};

impl Datapath {
    /// Loads the data path for the agent: maps and programs pinned under the pin directory,
    /// and whatever an earlier agent left attached (its links, slots and counters) adopted, so
    /// a restart or an upgrade leaves no gap. Without bpffs it runs unpinned and says why; a
    /// program the kernel rejects disables what needs it, not the agent.
    pub fn open(
        attach_mode: TcAttachMode,
        flow_tables: FlowTableSpec,
        skb_layout: &SkbLayout,
        persist: &Persistence,
    ) -> Result<(Datapath, FlowTables, OpenReport), DatapathError> {
        let mut report = OpenReport::default();
        // The pins' fingerprint is of this object: changing `flow_table_prealloc` makes new
        // flow tables, as changing their size does.
        let object = EbpfObject::for_tables(flow_tables)?;
        let pins = match PinPaths::prepare(
            &persist.pin_dir,
            object.bytes(),
            skb_layout.as_bytes(),
            &sized_flow_maps(flow_tables.entries),
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
        let (programs, maps, flows) = load(&object, flow_tables.entries, pins.clone(), skb_layout)?;
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
}
