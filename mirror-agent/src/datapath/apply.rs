//! Performs the steps of a `plan` against the kernel, reporting per object what could not be
//! applied. An error that leaves the maps in doubt (a map write) ends the apply; one that
//! concerns one object is reported and the apply goes on.

use std::collections::{BTreeMap, BTreeSet};

use mirror_ebpf::{
    FilterConfig, MAX_SESSIONS_PER_SOURCE, SOURCE_FLOW_LOG, SourceConfig, VXLAN_OVERHEAD_IPV4,
    VXLAN_OVERHEAD_IPV6, map_names,
};
use tracing::info;

use super::{
    ApplyReport, CopyPath, CopyPathMode, Datapath, DatapathError, encode, map_err,
    maps::zeroed_session,
    nexthop,
    plan::{Current, Op, plan},
    segment, tunnel,
};
use crate::{
    config::Objects,
    model::{Filter, Session, Target},
};

/// What the steps of one apply learn and hand on to later steps.
struct Run<'a> {
    report: ApplyReport,
    targets: BTreeMap<&'a str, &'a Target>,
    filters: BTreeMap<&'a str, &'a Filter>,
    sessions: BTreeMap<&'a str, &'a Session>,
    /// Why a port has no tunnel device, for the sessions that need it.
    tunnel_errors: BTreeMap<u16, String>,
    /// The segmentation device's index; 0 without it.
    segment_ifindex: u32,
    next_hops: BTreeMap<std::net::IpAddr, Result<encode::FastPath, nexthop::Unresolved>>,
    uplinks_used: BTreeSet<String>,
    paths: BTreeMap<String, CopyPath>,
    /// Sessions written to their slot by this apply.
    placed: BTreeSet<String>,
}

impl<'a> Run<'a> {
    fn new(desired: &'a Objects) -> Self {
        // The first of equal ids, as the steps met them before they were planned.
        fn index<T>(items: &[T], id: impl Fn(&T) -> &str) -> BTreeMap<&str, &T> {
            let mut map = BTreeMap::new();
            for item in items {
                map.entry(id(item)).or_insert(item);
            }
            map
        }
        Run {
            report: ApplyReport::default(),
            targets: desired.targets.iter().map(|t| (t.id.as_str(), t)).collect(),
            filters: index(&desired.filters, |f| f.id.as_str()),
            sessions: index(&desired.sessions, |s| s.id.as_str()),
            tunnel_errors: BTreeMap::new(),
            segment_ifindex: 0,
            next_hops: BTreeMap::new(),
            uplinks_used: BTreeSet::new(),
            paths: BTreeMap::new(),
            placed: BTreeSet::new(),
        }
    }
}

impl Datapath {
    /// Reconciles the maps and attachments to `desired`. New objects are written before
    /// anything refers to them, and old ones removed after nothing does, so the programs never
    /// see a dangling slot (see `plan`).
    pub async fn apply(&mut self, desired: &Objects) -> Result<ApplyReport, DatapathError> {
        let ops = plan(desired, &self.current());
        let mut run = Run::new(desired);
        for op in ops {
            self.perform(op, desired, &mut run).await?;
        }
        Ok(run.report)
    }

    fn current(&self) -> Current {
        Current {
            sessions: self.sessions.ids().into_iter().collect(),
            filters: self.filters.ids().into_iter().collect(),
            rules: self.rules.ids().into_iter().collect(),
            sources: self.attached.keys().cloned().collect(),
            tunnels: self.tunnels.keys().copied().collect(),
        }
    }

    async fn perform(
        &mut self,
        op: Op,
        desired: &Objects,
        run: &mut Run<'_>,
    ) -> Result<(), DatapathError> {
        match op {
            Op::EnsureTunnel(port) => {
                if let Err(e) = self.ensure_tunnel(port).await {
                    let msg = format!("tunnel device {}: {e}", tunnel::device_name(port));
                    run.report.error(&tunnel::device_name(port), msg.clone());
                    run.tunnel_errors.insert(port, msg);
                }
            }
            Op::EnsureSegment => {
                run.segment_ifindex = match self.ensure_segment().await {
                    Ok(i) => i,
                    Err(e) => {
                        run.report.error(
                            segment::DEVICE,
                            format!("segmentation device: {e}; super-packets yield one copy each"),
                        );
                        0
                    }
                };
            }
            Op::ResolveNextHop(ip) => {
                let hop = match self.copy_path {
                    CopyPathMode::Auto => nexthop::resolve(&self.netlink, ip).await,
                    CopyPathMode::Tunnel => Err(nexthop::Unresolved::Configured),
                };
                run.next_hops.insert(ip, hop);
            }
            Op::LabelRules(labels) => self.rule_filter = labels,
            Op::WriteFilter { id, new_rules } => {
                if let Some(filter) = run.filters.get(id.as_str()).copied() {
                    self.write_filter(filter, new_rules, &mut run.report)?;
                }
            }
            Op::WriteSession { id, new } => {
                if let Some(session) = run.sessions.get(id.as_str()).copied() {
                    self.write_session(session, new, run)?;
                }
            }
            Op::WriteSource {
                ifname,
                sessions,
                flow_log,
            } => self.write_source(&ifname, sessions, flow_log, run),
            Op::DetachSource {
                ifname,
                unless_any_placed,
            } => {
                if !unless_any_placed.iter().any(|s| run.placed.contains(s)) {
                    self.remove_source(&ifname)?;
                }
            }
            Op::ReleaseSession { id, unless_placed } => {
                if !(unless_placed && run.placed.contains(&id))
                    && let Some(slot) = self.sessions.release(&id)
                {
                    self.maps
                        .sessions
                        .set(slot, zeroed_session(), 0)
                        .map_err(map_err(map_names::SESSIONS))?;
                }
            }
            Op::ReleaseFilter(id) => {
                if let Some(slot) = self.filters.release(&id) {
                    self.maps
                        .filters
                        .set(slot, FilterConfig::EMPTY, 0)
                        .map_err(map_err(map_names::FILTERS))?;
                }
            }
            Op::ReleaseRule(id) => {
                self.rules.release(&id);
            }
            Op::RemoveTunnel(port) => self.remove_tunnel(port).await?,
            Op::RetireUplinks => {
                let unused: Vec<String> = self
                    .uplinks
                    .keys()
                    .filter(|n| !run.uplinks_used.contains(*n))
                    .cloned()
                    .collect();
                for name in unused {
                    if let Some(t) = self.uplinks.remove(&name) {
                        t.link.detach();
                        info!(uplink = %name, "mirror_tx detached: no session sends through it");
                    }
                }
            }
            Op::PublishPaths => {
                self.next_hops = std::mem::take(&mut run.next_hops);
                self.paths = std::mem::take(&mut run.paths);
            }
            Op::SyncDropAccounting(wanted) => self.sync_drop_accounting(wanted, &mut run.report),
            Op::ApplyReceivers => {
                self.receive
                    .apply(
                        self.programs.ebpf_mut(),
                        &self.netlink,
                        &desired.receivers,
                        &mut run.report,
                    )
                    .await?
            }
            Op::Save => {
                // The next agent adopts from this; failing to save costs a gap then, not now.
                if let Err(e) = self.save() {
                    run.report.error("datapath", e.to_string());
                }
            }
        }
        Ok(())
    }

    fn write_filter(
        &mut self,
        filter: &Filter,
        new_rules: Vec<String>,
        report: &mut ApplyReport,
    ) -> Result<(), DatapathError> {
        let Some(slot) = self.filters.get_or_alloc(&filter.id) else {
            report.error(&filter.id, "filter map is full");
            return Ok(());
        };
        let mut fresh: BTreeSet<String> = new_rules.into_iter().collect();
        let mut full = false;
        for rule in &filter.rules {
            match self.rules.get_or_alloc(&rule.id) {
                Some(s) if fresh.remove(&rule.id) => self.maps.reset_rule_stats(s)?,
                Some(_) => {}
                None => full = true,
            }
        }
        if full {
            report.error(&filter.id, "rule counter map is full");
            return Ok(());
        }
        let rules = &self.rules;
        let cfg = encode::encode_filter(filter, |id| rules.get(id).unwrap_or(0));
        self.maps
            .filters
            .set(slot, cfg, 0)
            .map_err(map_err(map_names::FILTERS))
    }

    fn write_session(
        &mut self,
        session: &Session,
        new: bool,
        run: &mut Run<'_>,
    ) -> Result<(), DatapathError> {
        let segment_ifindex = run.segment_ifindex;
        let (Some(target), Some(filter_slot)) = (
            run.targets.get(session.target_id.as_str()).copied(),
            self.filters.get(&session.filter_id),
        ) else {
            run.report
                .error(&session.id, "its filter or target is not available");
            return Ok(());
        };
        let Some(tunnel) = self.tunnels.get(&target.destination_port) else {
            let why = run
                .tunnel_errors
                .get(&target.destination_port)
                .cloned()
                .unwrap_or_else(|| "no tunnel device for its target".to_string());
            run.report.error(&session.id, why);
            return Ok(());
        };
        let tunnel_ifindex = tunnel.ifindex;
        let (fast, path) = match run.next_hops.get(&target.destination_ip) {
            Some(Ok(hop)) => match self.ensure_uplink(hop.uplink_ifindex) {
                Ok(name) => {
                    run.uplinks_used.insert(name.clone());
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
                run.report.error(&session.id, e);
                // Keep mirroring what fits a standard 1500-byte path.
                session.packet_length.unwrap_or(1500 - overhead(target))
            }
        };
        let Some(slot) = self.sessions.get_or_alloc(&session.id) else {
            run.report.error(&session.id, "session map is full");
            return Ok(());
        };
        if new {
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
        run.paths.insert(session.id.clone(), path);
        run.placed.insert(session.id.clone());
        Ok(())
    }

    fn write_source(
        &mut self,
        ifname: &str,
        sessions: Vec<String>,
        flow_log: bool,
        run: &mut Run<'_>,
    ) {
        let mut sessions: Vec<String> = sessions
            .into_iter()
            .filter(|s| run.placed.contains(s))
            .collect();
        if sessions.is_empty() && !flow_log {
            return;
        }
        if sessions.len() > MAX_SESSIONS_PER_SOURCE {
            run.report.error(
                ifname,
                format!("more than {MAX_SESSIONS_PER_SOURCE} sessions use this source; the lowest priorities are left out"),
            );
            sessions.truncate(MAX_SESSIONS_PER_SOURCE);
        }
        let mut cfg = SourceConfig::INACTIVE;
        if flow_log {
            cfg.flags |= SOURCE_FLOW_LOG;
        }
        for (i, s) in sessions.iter().enumerate() {
            if let Some(slot) = self.sessions.get(s) {
                cfg.sessions[i] = slot as u16;
            }
        }
        if let Err(e) = self.ensure_source(ifname, cfg) {
            for s in &sessions {
                run.report.error(s, format!("source {ifname}: {e}"));
            }
            if flow_log {
                run.report.error(ifname, format!("flow log: {e}"));
            }
        }
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
