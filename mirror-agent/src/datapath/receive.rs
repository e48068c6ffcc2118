//! The receiving side of a mirror target: `mirror_receive` in native XDP on each receiving
//! interface (`mirror_receive_tc` in TC ingress where the driver refuses native XDP), and one
//! capture veth pair per served VNI, made and owned by the agent.
//!
//! Frames of a VNI are redirected into the agent's end of its pair (`mrx<vni>-in`) and come
//! out of the tools' end (`mrx<vni>`), where tcpdump, Zeek or Suricata read them. The tools'
//! end carries `rx_pass`, an XDP program that passes everything: a veth accepts frames from
//! XDP_REDIRECT (`ndo_xdp_xmit`) only while its peer runs NAPI, and an XDP program is the way
//! to get NAPI without GRO (GRO would merge the mirrored TCP segments the tools must see as
//! sent). See docs/architecture.md.

use mirror_ebpf::map_names;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap, MapData, MapError, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use mirror_ebpf::{
    MAX_RX_INTERFACES, MAX_RX_VNIS, RxInterface, RxInterfaceStats, RxVni, RxVniKey, RxVniStats,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::{
    ApplyReport, DatapathError, Slots, TcAttachMode,
    attach::classifier_in,
    ifindex, map_err, prog_err,
    rxlinks::{self, RxLink},
    zeroed_per_cpu,
};

pub const PROG_RECEIVE: &str = "mirror_receive";
pub const PROG_RECEIVE_TC: &str = "mirror_receive_tc";
pub const PROG_RX_PASS: &str = "rx_pass";

/// What the reconciler wants received: the interface resolved to a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub id: String,
    pub interface: String,
    pub port: u16,
    pub vnis: Vec<u32>,
}

/// MTU of both ends of a capture pair. The kernel here delivers redirected frames longer
/// than the pair's MTU (receiver_e2e sends 2942- and 4042-byte frames), but tools size their
/// buffers from it (Suricata's default packet size follows the interface MTU), and a session
/// may mirror up to 9000 bytes of a jumbo frame (PacketLength).
pub const CAPTURE_MTU: u32 = 9216;

/// The tools' end of a VNI's capture pair, e.g. `mrx100`.
pub fn capture_name(vni: u32) -> String {
    format!("mrx{vni}")
}

/// The agent's end, which frames are redirected into, e.g. `mrx100-in` (at most 14 bytes for
/// the largest VNI, within the kernel's 15).
pub fn capture_inner_name(vni: u32) -> String {
    format!("mrx{vni}-in")
}

/// The VNI of an agent end (`mrx<vni>-in`), one name per capture pair.
fn inner_vni(name: &str) -> Option<u32> {
    name.strip_prefix("mrx")?.strip_suffix("-in")?.parse().ok()
}

/// True for either end of an agent capture pair.
pub fn is_capture_name(name: &str) -> bool {
    let rest = name.strip_prefix("mrx").unwrap_or_default();
    let digits = rest.strip_suffix("-in").unwrap_or(rest);
    !digits.is_empty() && digits.parse::<u32>().is_ok()
}

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        source: rtnetlink::Error,
    },
    #[error("{0} exists and is not an agent capture pair")]
    Foreign(String),
    #[error("turning IPv6 off on {name}: {source}")]
    Sysctl {
        name: String,
        source: std::io::Error,
    },
}

/// How the receiving program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// XDP in the driver (veth, most physical NICs): before an skb exists.
    Native,
    /// TC ingress (any interface: a bridge, a veth at a jumbo MTU): after the skb is built,
    /// slower. Not generic XDP, which the kernel skips for every skb marked as redirected,
    /// such as the copies a source agent on the same host makes with `bpf_clone_redirect`.
    Tc,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Tc => "tc",
        }
    }

    /// The program that runs in this mode.
    pub fn program(self) -> &'static str {
        match self {
            AttachedMode::Native => PROG_RECEIVE,
            AttachedMode::Tc => PROG_RECEIVE_TC,
        }
    }
}

struct Capture {
    slot: u32,
    /// The agent's end (redirect target) and the tools' end.
    inner_ifindex: u32,
    tool_ifindex: u32,
    pass_link: RxLink,
}

struct Attached {
    interface: String,
    ifindex: u32,
    port: u16,
    stats_slot: u32,
    mode: AttachedMode,
    link: RxLink,
    captures: BTreeMap<u32, Capture>,
}

/// Live view of a receiver for the API and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// "native" or "tc"; empty while not attached.
    pub mode: String,
    pub interface: RxInterfaceStats,
    /// By VNI: the capture interface and its counters.
    pub vnis: BTreeMap<u32, (String, RxVniStats)>,
}

pub struct Receive {
    /// Why receivers cannot work here (an XDP program the kernel rejected).
    unavailable: Option<String>,
    /// Why the TC fallback cannot work here (the kernel rejected it): receivers then need
    /// native XDP.
    tc_unavailable: Option<String>,
    /// TCX or clsact for the TC fallback, as for the source programs.
    tc_mode: TcAttachMode,
    /// Where the XDP and TCX links are pinned (`<pin_dir>/rx-links`), when the data path is
    /// pinned.
    pin_dir: Option<PathBuf>,
    interfaces: HashMap<MapData, u32, RxInterface>,
    vnis: HashMap<MapData, RxVniKey, RxVni>,
    capture: DevMapHash<MapData>,
    interface_stats: PerCpuArray<MapData, RxInterfaceStats>,
    vni_stats: PerCpuArray<MapData, RxVniStats>,
    interface_slots: Slots,
    vni_slots: Slots,
    /// By receiver id.
    attached: BTreeMap<String, Attached>,
    /// Whether what an earlier agent left was looked at (first apply).
    swept: bool,
}

pub(super) fn xdp<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

impl Receive {
    /// Takes the receiving maps and loads the XDP programs and the TC fallback (so the
    /// verifier speaks at start, not at the first receiver). A program the kernel rejects
    /// disables receivers (or the fallback), not the agent: each receiver then reports why.
    pub fn new(
        ebpf: &mut Ebpf,
        pin_dir: Option<PathBuf>,
        tc_mode: TcAttachMode,
    ) -> Result<Receive, DatapathError> {
        let mut unavailable = None;
        for name in [PROG_RECEIVE, PROG_RX_PASS] {
            if let Err(e) = xdp(ebpf, name)?.load() {
                warn!(program = name, "receivers are unavailable: {e}");
                unavailable = Some(format!("program {name} rejected by the kernel: {e}"));
            }
        }
        let tc_unavailable = match classifier_in(ebpf, PROG_RECEIVE_TC)?.load() {
            Ok(()) => None,
            Err(e) => {
                warn!(
                    program = PROG_RECEIVE_TC,
                    "receivers need native XDP: the TC fallback is unavailable: {e}"
                );
                Some(format!(
                    "program {PROG_RECEIVE_TC} rejected by the kernel: {e}"
                ))
            }
        };
        let pin_dir = pin_dir.filter(|dir| match std::fs::create_dir_all(dir) {
            Ok(()) => true,
            Err(e) => {
                warn!(dir = %dir.display(), "receivers' XDP links go with the agent: {e}");
                false
            }
        });
        Ok(Receive {
            unavailable,
            tc_unavailable,
            tc_mode,
            pin_dir,
            interfaces: super::take_map(ebpf, map_names::RX_INTERFACES)?,
            vnis: super::take_map(ebpf, map_names::RX_VNIS)?,
            capture: super::take_map(ebpf, map_names::RX_CAPTURE)?,
            interface_stats: super::take_map(ebpf, map_names::RX_INTERFACE_STATS)?,
            vni_stats: super::take_map(ebpf, map_names::RX_VNI_STATS)?,
            interface_slots: Slots::new(MAX_RX_INTERFACES),
            vni_slots: Slots::new(MAX_RX_VNIS),
            attached: BTreeMap::new(),
            swept: false,
        })
    }

    /// Reconciles receivers: what is no longer wanted goes first (so a VNI or interface can
    /// move between receivers), then each wanted one is made complete.
    pub async fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        netlink: &Handle,
        desired: &[Receiver],
        report: &mut ApplyReport,
    ) -> Result<(), DatapathError> {
        if let Some(why) = &self.unavailable {
            for r in desired {
                report.error(&r.id, why.clone());
            }
            return Ok(());
        }
        let wanted: BTreeMap<&str, &Receiver> =
            desired.iter().map(|r| (r.id.as_str(), r)).collect();
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(id, a)| {
                wanted.get(id.as_str()).is_none_or(|r| {
                    r.interface != a.interface
                        || r.port != a.port
                        || ifindex(&a.interface) != Some(a.ifindex)
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove(ebpf, netlink, &id).await?;
        }
        for r in desired {
            self.remove_stale_vnis(ebpf, netlink, r).await?;
        }
        for r in desired {
            if let Err(e) = self.ensure(ebpf, netlink, r).await {
                report.error(&r.id, e.to_string());
            }
        }
        if !self.swept {
            self.swept = true;
            self.sweep(netlink).await;
        }
        Ok(())
    }

    /// Once, after the first apply: links and capture pairs an earlier agent left for
    /// receivers or VNIs that are no longer configured (changed while no agent ran).
    async fn sweep(&mut self, netlink: &Handle) {
        let mut known_pins = Vec::new();
        let mut known_vnis = Vec::new();
        let mut known_filters = Vec::new();
        for a in self.attached.values() {
            match &a.link {
                RxLink::Pinned(p) => known_pins.push(p.clone()),
                RxLink::Filter(ifname) => known_filters.push(ifname.clone()),
                RxLink::Owned(_) | RxLink::OwnedTc(_) => {}
            }
            for (vni, c) in &a.captures {
                known_vnis.push(*vni);
                if let RxLink::Pinned(p) = &c.pass_link {
                    known_pins.push(p.clone());
                }
            }
        }
        if let Some(dir) = &self.pin_dir
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                if !known_pins.contains(&path) {
                    info!(pin = %path.display(), "removing a receive link no receiver accounts for");
                    let _ = super::pins::remove(&path);
                }
            }
        }
        let links = match crate::links::dump(netlink).await {
            Ok(l) => l,
            Err(e) => {
                warn!("listing interfaces for stale capture pairs: {e}");
                return;
            }
        };
        for name in links.iter().map(|l| &l.name) {
            // cls_bpf receive filters (clsact) have no pin to find them by.
            if !known_filters.contains(name) && !is_capture_name(name) {
                match rxlinks::remove_filter(name) {
                    Ok(true) => {
                        info!(interface = %name, "removed a receive filter no receiver accounts for")
                    }
                    Ok(false) => {}
                    Err(e) => debug!(interface = %name, error = %e, "looking for a receive filter"),
                }
            }
            let Some(vni) = inner_vni(name) else {
                continue;
            };
            if !known_vnis.contains(&vni) {
                info!(capture = %capture_name(vni), "removing a capture pair no receiver serves");
                if let Err(e) = delete_pair(netlink, vni).await {
                    warn!(vni, error = %e, "deleting capture interface");
                }
            }
        }
    }

    async fn remove_stale_vnis(
        &mut self,
        ebpf: &mut Ebpf,
        netlink: &Handle,
        r: &Receiver,
    ) -> Result<(), DatapathError> {
        let Some(a) = self.attached.get_mut(&r.id) else {
            return Ok(());
        };
        let gone: Vec<u32> = a
            .captures
            .iter()
            .filter(|(vni, c)| {
                !r.vnis.contains(vni)
                    || ifindex(&capture_inner_name(**vni)) != Some(c.inner_ifindex)
                    || ifindex(&capture_name(**vni)) != Some(c.tool_ifindex)
            })
            .map(|(vni, _)| *vni)
            .collect();
        let ifindex = a.ifindex;
        for vni in gone {
            if let Some(c) = a.captures.remove(&vni) {
                drop_capture(
                    ebpf,
                    netlink,
                    Maps {
                        vnis: &mut self.vnis,
                        capture: &mut self.capture,
                        slots: &mut self.vni_slots,
                    },
                    ifindex,
                    vni,
                    c,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Makes a receiver complete: its interface entry, a capture pair per VNI, then the
    /// program (fresh, or an earlier agent's link switched to ours once the maps it will read
    /// are filled).
    async fn ensure(
        &mut self,
        ebpf: &mut Ebpf,
        netlink: &Handle,
        r: &Receiver,
    ) -> Result<(), DatapathError> {
        let index = ifindex(&r.interface)
            .ok_or_else(|| DatapathError::InterfaceNotFound(r.interface.clone()))?;
        let mut fresh = None;
        let stats_slot = match self.attached.get(&r.id) {
            Some(a) => a.stats_slot,
            None => {
                let slot = self.interface_slots.get_or_alloc(&r.id).ok_or(
                    DatapathError::SlotsExhausted {
                        table: map_names::RX_INTERFACES,
                        capacity: MAX_RX_INTERFACES,
                    },
                )?;
                self.interface_stats
                    .set(slot, zeroed_per_cpu()?, 0)
                    .map_err(map_err(map_names::RX_INTERFACE_STATS))?;
                // Before the program: attached first, it would only pass.
                self.interfaces
                    .insert(
                        index,
                        RxInterface {
                            port_be: r.port.to_be(),
                            _pad: 0,
                            stats_slot: slot,
                        },
                        0,
                    )
                    .map_err(map_err(map_names::RX_INTERFACES))?;
                fresh = Some(BTreeMap::new());
                slot
            }
        };
        let mut problems = Vec::new();
        for &vni in &r.vnis {
            let captures = match (&mut fresh, self.attached.get_mut(&r.id)) {
                (Some(c), _) => c,
                (None, Some(a)) => &mut a.captures,
                (None, None) => break,
            };
            if captures.contains_key(&vni) {
                continue;
            }
            match add_capture(
                ebpf,
                netlink,
                Maps {
                    vnis: &mut self.vnis,
                    capture: &mut self.capture,
                    slots: &mut self.vni_slots,
                },
                &mut self.vni_stats,
                index,
                vni,
                self.pin_dir.as_deref(),
            )
            .await
            {
                Ok(c) => {
                    info!(receiver = %r.id, vni, capture = %capture_name(vni), "capture interface ready");
                    captures.insert(vni, c);
                }
                Err(e) => problems.push(format!("VNI {vni}: {e}")),
            }
        }
        if let Some(captures) = fresh {
            let attached = attach_best(
                ebpf,
                index,
                &r.interface,
                self.pin_dir.as_deref(),
                self.tc_mode,
                self.tc_unavailable.as_deref(),
            );
            let (mode, link) = match attached {
                Ok(x) => x,
                Err(e) => {
                    for (vni, c) in captures {
                        drop_capture(
                            ebpf,
                            netlink,
                            Maps {
                                vnis: &mut self.vnis,
                                capture: &mut self.capture,
                                slots: &mut self.vni_slots,
                            },
                            index,
                            vni,
                            c,
                        )
                        .await?;
                    }
                    let _ = self.interfaces.remove(&index);
                    self.interface_slots.release(&r.id);
                    return Err(e);
                }
            };
            info!(receiver = %r.id, interface = %r.interface, mode = mode.as_str(), port = r.port, "receiving program attached");
            self.attached.insert(
                r.id.clone(),
                Attached {
                    interface: r.interface.clone(),
                    ifindex: index,
                    port: r.port,
                    stats_slot,
                    mode,
                    link,
                    captures,
                },
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DatapathError::Captures(problems.join("; ")))
        }
    }

    async fn remove(
        &mut self,
        ebpf: &mut Ebpf,
        netlink: &Handle,
        id: &str,
    ) -> Result<(), DatapathError> {
        let Some(mut a) = self.attached.remove(id) else {
            return Ok(());
        };
        rxlinks::detach(ebpf, a.mode.program(), a.link);
        match self.interfaces.remove(&a.ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::RX_INTERFACES)(e)),
        }
        self.interface_slots.release(id);
        for (vni, c) in std::mem::take(&mut a.captures) {
            drop_capture(
                ebpf,
                netlink,
                Maps {
                    vnis: &mut self.vnis,
                    capture: &mut self.capture,
                    slots: &mut self.vni_slots,
                },
                a.ifindex,
                vni,
                c,
            )
            .await?;
        }
        info!(receiver = id, interface = %a.interface, "receiving program detached");
        Ok(())
    }

    /// Detaches every receiver and deletes the capture interfaces.
    pub async fn shutdown(
        &mut self,
        ebpf: &mut Ebpf,
        netlink: &Handle,
    ) -> Result<(), DatapathError> {
        let ids: Vec<String> = self.attached.keys().cloned().collect();
        for id in ids {
            self.remove(ebpf, netlink, &id).await?;
        }
        Ok(())
    }

    /// Mode and counters of each attached receiver, summed over CPUs.
    pub fn status(&self) -> BTreeMap<String, ReceiverStatus> {
        let mut out = BTreeMap::new();
        for (id, a) in &self.attached {
            let mut st = ReceiverStatus {
                mode: a.mode.as_str().to_string(),
                ..ReceiverStatus::default()
            };
            if let Ok(values) = self.interface_stats.get(&a.stats_slot, 0) {
                for v in values.iter() {
                    st.interface.packets += v.packets;
                    st.interface.not_mirror += v.not_mirror;
                    st.interface.malformed += v.malformed;
                    st.interface.unknown_vni += v.unknown_vni;
                }
            }
            for (vni, c) in &a.captures {
                let mut total = RxVniStats::default();
                if let Ok(values) = self.vni_stats.get(&c.slot, 0) {
                    for v in values.iter() {
                        total.frames += v.frames;
                        total.bytes += v.bytes;
                        total.malformed += v.malformed;
                        total.no_capture += v.no_capture;
                        total.redirect_errors += v.redirect_errors;
                    }
                }
                st.vnis.insert(*vni, (capture_name(*vni), total));
            }
            out.insert(id.clone(), st);
        }
        out
    }
}

/// Native XDP where the driver has it, the TC program otherwise; an earlier agent's link on
/// the interface (pinned, or its cls_bpf filter) is taken over in the mode it has.
fn attach_best(
    ebpf: &mut Ebpf,
    index: u32,
    ifname: &str,
    pin_dir: Option<&Path>,
    tc_mode: TcAttachMode,
    tc_unavailable: Option<&str>,
) -> Result<(AttachedMode, RxLink), DatapathError> {
    let native_pin = pin_dir.map(|d| d.join(format!("xdp-{ifname}-native")));
    let tc_pin = pin_dir.map(|d| d.join(format!("tc-{ifname}")));
    // Taken over, or attached anew in that mode when the old link is dead.
    if let Some(path) = native_pin.as_ref().filter(|p| p.exists()) {
        match rxlinks::attach(ebpf, PROG_RECEIVE, index, XdpMode::Driver, Some(path)) {
            Ok((link, _)) => {
                drop_stale_filter(ifname);
                return Ok((AttachedMode::Native, link));
            }
            Err(e) => debug!(ifindex = index, error = %e, "pinned XDP link not usable"),
        }
    }
    if tc_unavailable.is_none()
        && let Some(link) = rxlinks::take_over_tc(ebpf, ifname, tc_mode, tc_pin.as_deref())?
    {
        return Ok((AttachedMode::Tc, link));
    }
    let native = match rxlinks::attach(
        ebpf,
        PROG_RECEIVE,
        index,
        XdpMode::Driver,
        native_pin.as_deref(),
    ) {
        Ok((link, _)) => {
            drop_stale_filter(ifname);
            return Ok((AttachedMode::Native, link));
        }
        Err(e) => e,
    };
    if let Some(why) = tc_unavailable {
        return Err(DatapathError::Link {
            what: format!("receiving program on {ifname}"),
            reason: format!("no native XDP ({native}) and {why}"),
        });
    }
    debug!(ifindex = index, error = %native, "no native XDP, attaching the TC program");
    if tc_mode.uses_tcx() {
        drop_stale_filter(ifname);
    }
    let link = rxlinks::attach_tc(ebpf, ifname, tc_mode, tc_pin.as_deref())?;
    Ok((AttachedMode::Tc, link))
}

/// A cls_bpf receive filter an earlier agent left (in clsact mode) would see the frames the
/// new attachment passes; it goes. (Left-over pins are removed by the sweep.)
fn drop_stale_filter(ifname: &str) {
    match rxlinks::remove_filter(ifname) {
        Ok(true) => info!(ifname, "removed a receive filter an earlier agent left"),
        Ok(false) => {}
        Err(e) => debug!(ifname, error = %e, "looking for an earlier receive filter"),
    }
}

/// What a capture pair is entered into: the VNI map, the devmap and the VNI slots.
struct Maps<'a> {
    vnis: &'a mut HashMap<MapData, RxVniKey, RxVni>,
    capture: &'a mut DevMapHash<MapData>,
    slots: &'a mut Slots,
}

async fn add_capture(
    ebpf: &mut Ebpf,
    netlink: &Handle,
    mut maps: Maps<'_>,
    stats: &mut PerCpuArray<MapData, RxVniStats>,
    rx_ifindex: u32,
    vni: u32,
    pin_dir: Option<&Path>,
) -> Result<Capture, DatapathError> {
    let (inner_ifindex, tool_ifindex) = ensure_pair(netlink, vni).await?;
    let pin = pin_dir.map(|d| d.join(format!("rxpass-{vni}")));
    let (pass_link, _) = rxlinks::attach(
        ebpf,
        PROG_RX_PASS,
        tool_ifindex,
        XdpMode::Driver,
        pin.as_deref(),
    )?;
    let key = vni_key(vni);
    let placed = match maps.slots.get_or_alloc(&key) {
        Some(slot) => {
            place_vni(&mut maps, stats, rx_ifindex, vni, slot, inner_ifindex).map(|()| slot)
        }
        None => Err(DatapathError::SlotsExhausted {
            table: map_names::RX_VNIS,
            capacity: MAX_RX_VNIS,
        }),
    };
    match placed {
        Ok(slot) => Ok(Capture {
            slot,
            inner_ifindex,
            tool_ifindex,
            pass_link,
        }),
        Err(e) => {
            // The pair stays (the next pass reuses it); what points at it goes.
            maps.slots.release(&key);
            rxlinks::detach(ebpf, PROG_RX_PASS, pass_link);
            Err(e)
        }
    }
}

/// Counters from zero, then the device, then the VNI that points at it: the program never
/// sees a dangling slot.
fn place_vni(
    maps: &mut Maps<'_>,
    stats: &mut PerCpuArray<MapData, RxVniStats>,
    rx_ifindex: u32,
    vni: u32,
    slot: u32,
    inner_ifindex: u32,
) -> Result<(), DatapathError> {
    stats
        .set(slot, zeroed_per_cpu()?, 0)
        .map_err(map_err(map_names::RX_VNI_STATS))?;
    maps.capture
        .insert(slot, inner_ifindex, None, 0)
        .map_err(|e| match e {
            aya::maps::xdp::XdpMapError::MapError(source) => DatapathError::Map {
                name: map_names::RX_CAPTURE,
                source,
            },
            other => DatapathError::MapOther {
                name: map_names::RX_CAPTURE,
                reason: other.to_string(),
            },
        })?;
    maps.vnis
        .insert(
            RxVniKey {
                ifindex: rx_ifindex,
                vni,
            },
            RxVni { slot },
            0,
        )
        .map_err(map_err(map_names::RX_VNIS))
}

fn vni_key(vni: u32) -> String {
    vni.to_string()
}

async fn drop_capture(
    ebpf: &mut Ebpf,
    netlink: &Handle,
    maps: Maps<'_>,
    rx_ifindex: u32,
    vni: u32,
    c: Capture,
) -> Result<(), DatapathError> {
    match maps.vnis.remove(&RxVniKey {
        ifindex: rx_ifindex,
        vni,
    }) {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(e) => return Err(map_err(map_names::RX_VNIS)(e)),
    }
    if let Err(e) = maps.capture.remove(c.slot) {
        debug!(vni, error = %e, "RX_CAPTURE entry already gone");
    }
    maps.slots.release(&vni_key(vni));
    rxlinks::detach(ebpf, PROG_RX_PASS, c.pass_link);
    if let Err(e) = delete_pair(netlink, vni).await {
        warn!(vni, error = %e, "deleting capture interface");
    }
    info!(vni, capture = %capture_name(vni), "capture interface removed");
    Ok(())
}

fn nl(context: String) -> impl FnOnce(rtnetlink::Error) -> CaptureError {
    move |source| CaptureError::Netlink { context, source }
}

/// Creates the pair if it is missing, with IPv6 off (no router solicitations or MLD reports
/// among the mirrored frames), room for jumbo frames, and both ends up; returns (agent end,
/// tools' end) indexes.
async fn ensure_pair(netlink: &Handle, vni: u32) -> Result<(u32, u32), CaptureError> {
    let (inner, tool) = (capture_inner_name(vni), capture_name(vni));
    let found = (
        super::tunnel::link_index(netlink, &inner)
            .await
            .map_err(nl(format!("looking up {inner}")))?,
        super::tunnel::link_index(netlink, &tool)
            .await
            .map_err(nl(format!("looking up {tool}")))?,
    );
    let (inner_ifindex, tool_ifindex) = match found {
        (Some(i), Some(t)) => (i, t),
        (None, None) => {
            netlink
                .link()
                .add(LinkMessageBuilder::<LinkVeth>::new(&inner, &tool).build())
                .execute()
                .await
                .map_err(nl(format!("creating {inner}/{tool}")))?;
            let i = super::tunnel::link_index(netlink, &inner)
                .await
                .map_err(nl(format!("looking up {inner}")))?
                .ok_or_else(|| CaptureError::Foreign(inner.clone()))?;
            let t = super::tunnel::link_index(netlink, &tool)
                .await
                .map_err(nl(format!("looking up {tool}")))?
                .ok_or_else(|| CaptureError::Foreign(tool.clone()))?;
            (i, t)
        }
        // Half a pair: one end was renamed or deleted under us; start over.
        (Some(_), None) | (None, Some(_)) => {
            delete_pair(netlink, vni).await?;
            return Box::pin(ensure_pair(netlink, vni)).await;
        }
    };
    for name in [&inner, &tool] {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        match std::fs::write(&path, "1") {
            Ok(()) => {}
            // No IPv6 in this kernel: nothing to silence.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CaptureError::Sysctl {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    for (name, index) in [(&inner, inner_ifindex), (&tool, tool_ifindex)] {
        netlink
            .link()
            .set(
                LinkMessageBuilder::<LinkUnspec>::new()
                    .index(index)
                    .mtu(CAPTURE_MTU)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("setting {name} up")))?;
    }
    Ok((inner_ifindex, tool_ifindex))
}

/// Deletes every agent capture pair in this namespace (`mirror-agent cleanup`: what a
/// stopped agent left for its successor); returns what it removed.
pub async fn remove_all_captures(netlink: &Handle) -> Result<Vec<String>, CaptureError> {
    let links = crate::links::dump(netlink)
        .await
        .map_err(nl("listing interfaces".into()))?;
    let mut removed = Vec::new();
    for name in links.iter().map(|l| &l.name) {
        if let Some(vni) = inner_vni(name) {
            delete_pair(netlink, vni).await?;
            removed.push(format!(
                "capture interfaces {} and {name}",
                capture_name(vni)
            ));
        }
    }
    Ok(removed)
}

/// Removes the cls_bpf receive filter (clsact) from every interface in this namespace
/// (`mirror-agent cleanup`; TCX and XDP links go with their pins); returns what it removed.
pub async fn remove_all_filters(netlink: &Handle) -> Result<Vec<String>, DatapathError> {
    let links = crate::links::dump(netlink)
        .await
        .map_err(nl("listing interfaces".into()))?;
    let mut removed = Vec::new();
    for name in links.iter().map(|l| &l.name) {
        if rxlinks::remove_filter(name)? {
            removed.push(format!("receive filter on {name} (clsact ingress)"));
        }
    }
    Ok(removed)
}

async fn delete_pair(netlink: &Handle, vni: u32) -> Result<(), CaptureError> {
    // Deleting either end of a veth pair deletes both.
    for name in [capture_inner_name(vni), capture_name(vni)] {
        if let Some(index) = super::tunnel::link_index(netlink, &name)
            .await
            .map_err(nl(format!("looking up {name}")))?
        {
            netlink
                .link()
                .del(index)
                .execute()
                .await
                .map_err(nl(format!("deleting {name}")))?;
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_names_fit_the_kernel_limit_and_are_recognised() {
        assert_eq!(capture_name(100), "mrx100");
        assert_eq!(capture_inner_name(100), "mrx100-in");
        assert!(capture_inner_name(16_777_215).len() <= 15);
        assert!(is_capture_name("mrx16777215-in"));
        assert!(is_capture_name("mrx7"));
        assert!(!is_capture_name("mrx"));
        assert!(!is_capture_name("mrxa-in"));
        assert!(!is_capture_name("eth0"));
        assert_eq!(inner_vni("mrx100-in"), Some(100));
        assert_eq!(inner_vni("mrx100"), None);
        assert_eq!(inner_vni("mrxa-in"), None);
    }
}
