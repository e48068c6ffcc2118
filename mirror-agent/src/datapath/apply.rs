//! The executor of a reconciliation plan (see `plan`): performs each step against the
//! kernel, reporting per object what could not be applied.

use std::collections::{BTreeMap, BTreeSet};

use mirror_ebpf::{
    FilterConfig, MAX_SESSIONS_PER_SOURCE, SOURCE_FLOW_LOG, SourceConfig, VXLAN_OVERHEAD_IPV4,
    VXLAN_OVERHEAD_IPV6, map_names,
};
use tracing::info;

use super::{
    ApplyReport, CopyPath, CopyPathMode, Datapath, DatapathError, encode, map_err,
    maps::zeroed_session, nexthop, segment, tunnel,
};
use crate::{
    config::Objects,
    model::{Session, Target},
};

impl Datapath {
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
}

fn tunnel_path(why: String, segment_ifindex: u32) -> CopyPath {
    CopyPath {
        mode: "tunnel",
        detail: why,
        segmentation: segment_ifindex != 0,
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
