//! The data path. See docs/architecture.md for the picture and the map table.
//!
//! Stage 1, `mirror_ingress` / `mirror_egress` (TC on each source interface): parse, pick the
//! first session whose filter accepts the packet, and `bpf_clone_redirect` a copy on with the
//! session in `skb->mark`. The original always continues unchanged.
//!
//! Stage 2 (`encap.rs`): the copy becomes wire segments if it stands for several
//! (`mirror_segment` after the `mirseg` device) and a VXLAN packet (`mirror_tx` on the uplink,
//! or `mirror_encap` on the tunnel device as the fallback).

// Built only with the `bench` feature: the agent's object carries only what it runs.
#[cfg(feature = "bench")]
mod bench;
mod budget;
mod encap;
mod flows;
mod matcher;
mod parse;
mod receive;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_probe_read_kernel,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use mirror_ebpf::{
    ACTION_ACCEPT, CHECKSUM_PARTIAL, DIR_EGRESS, DIR_INGRESS, DIRECTIONS, ERR_CLONE, FLOW_ACCEPT,
    FilterConfig, FlowKey, MAX_FILTERS, MAX_RULE_SLOTS, MAX_RULES_PER_DIRECTION, MAX_SESSIONS,
    MAX_SESSIONS_PER_SOURCE, MAX_SOURCES, NO_SESSION, RULE_END, SESSION_ENABLED, SOURCE_ACTIVE,
    SOURCE_FLOW_LOG, SOURCES_DIRECT_MAX, SessionConfig, SessionStats, SourceConfig, SourceStats,
    is_mirror_mark, mirror_mark,
};

use flows::skb_layout;
use matcher::rule_matches;
use parse::{IPPROTO_TCP, IPPROTO_UDP, Packet, Parsed, parse};

#[map]
static SOURCES_DIRECT: Array<SourceConfig> = Array::with_max_entries(SOURCES_DIRECT_MAX, 0);
#[map]
static SOURCES: HashMap<u32, SourceConfig> = HashMap::with_max_entries(MAX_SOURCES, 0);
#[map]
pub(crate) static SESSIONS: Array<SessionConfig> = Array::with_max_entries(MAX_SESSIONS, 0);
#[map]
static FILTERS: Array<FilterConfig> = Array::with_max_entries(MAX_FILTERS, 0);
#[map]
static SESSION_STATS: PerCpuArray<SessionStats> =
    PerCpuArray::with_max_entries(MAX_SESSIONS * DIRECTIONS as u32, 0);
#[map]
static SOURCE_STATS: PerCpuArray<SourceStats> =
    PerCpuArray::with_max_entries(MAX_SOURCES * DIRECTIONS as u32, 0);
#[map]
static RULE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_RULE_SLOTS, 0);

/// TCX_NEXT / TC_ACT_UNSPEC: let the next program (or the default action) decide. The source
/// programs never drop, redirect or alter the original.
const PASS_ORIGINAL: i32 = TC_ACT_UNSPEC;
/// TC_ACT_OK: the tunnel device transmits the copy.
const TC_ACT_OK_PASS: i32 = aya_ebpf::bindings::TC_ACT_OK;

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    mirror_source::<DIR_INGRESS>(&ctx);
    PASS_ORIGINAL
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    mirror_source::<DIR_EGRESS>(&ctx);
    PASS_ORIGINAL
}

/// On the tunnel device (the fallback path): cut the copy, set the tunnel key.
#[classifier]
pub fn mirror_encap(ctx: TcContext) -> i32 {
    match encap::try_mirror_encap(&ctx) {
        Ok(()) => TC_ACT_OK_PASS,
        // The copy is dropped; the reason is counted in SESSION_STATS.
        Err(()) => TC_ACT_SHOT,
    }
}

/// On the uplink's egress, first in line: copies of the fast path get their outer headers
/// and go on through the uplink's other programs like any packet the host sends; everything
/// else passes untouched.
#[classifier]
pub fn mirror_tx(ctx: TcContext) -> i32 {
    match encap::try_mirror_tx(&ctx) {
        Ok(_) => PASS_ORIGINAL,
        // A copy that cannot be encapsulated must not reach the wire bare.
        Err(()) => TC_ACT_SHOT,
    }
}

/// On the ingress of `mirseg-in`, the peer of the segmentation device: each wire segment
/// the kernel cut from a copy goes on to be encapsulated.
#[classifier]
pub fn mirror_segment(ctx: TcContext) -> i32 {
    match encap::try_mirror_segment(&ctx) {
        Ok(_) => TC_ACT_REDIRECT,
        // Nothing but copies belongs on this device.
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
pub(crate) fn session_stats(slot: u32, dir: u32) -> Option<&'static mut SessionStats> {
    let ptr = SESSION_STATS.get_ptr_mut(slot * DIRECTIONS as u32 + dir)?;
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    Some(unsafe { &mut *ptr })
}

#[inline(always)]
fn wire_segments(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own context.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs > 1 { segs } else { 1 }
}

#[inline(always)]
fn mirror_source<const DIR: u32>(ctx: &TcContext) {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(source) = source_config(ifindex) else {
        return;
    };
    let Some(sstats) = SOURCE_STATS.get_ptr_mut(source.stats_slot * DIRECTIONS as u32 + DIR) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let sstats: &mut SourceStats = unsafe { &mut *sstats };
    let segs = wire_segments(ctx);
    sstats.packets += segs as u64;
    sstats.bytes += ctx.len() as u64;

    let pkt = match parse(ctx) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp => {
            sstats.not_ip += segs as u64;
            return;
        }
        Parsed::Malformed => {
            sstats.malformed += segs as u64;
            return;
        }
    };
    if source.flags & SOURCE_FLOW_LOG != 0 {
        account_flow::<DIR>(ctx, &source, &pkt, segs);
    }
    // A copy on its way out of the uplink: it is real traffic for the flow log above, but
    // mirroring it would loop.
    // SAFETY: reading a field of the program's own context.
    if is_mirror_mark(unsafe { (*ctx.skb.skb).mark }) {
        sstats.mirror_traffic += segs as u64;
        return;
    }
    if let Some((slot, session)) = select_session::<DIR>(&source, &pkt)
        && send_copy::<DIR>(ctx, slot, session, segs, &pkt)
    {
        sstats.mirrored += segs as u64;
    }
}

#[inline(always)]
fn account_flow<const DIR: u32>(ctx: &TcContext, source: &SourceConfig, pkt: &Packet, segs: u32) {
    let key = FlowKey {
        // SAFETY: reading a field of the program's own context.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        direction: DIR as u8,
        ip_version: pkt.ip_version,
        protocol: pkt.protocol,
        action: FLOW_ACCEPT,
        src: pkt.src,
        dst: pkt.dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
    };
    // Wire bytes at the IP layer: a GSO super-packet's segments each repeat the headers.
    let bytes = if segs > 1 {
        let ip_part = (ctx.len() - pkt.l3) as u64;
        ip_part + (segs as u64 - 1) * (pkt.headers_len - pkt.l3) as u64
    } else {
        pkt.ip_len as u64
    };
    flows::account(
        &key,
        segs as u64,
        bytes,
        pkt.tcp_flags as u32,
        source.stats_slot * DIRECTIONS as u32 + DIR,
    );
}

#[inline(always)]
pub(crate) fn source_config(ifindex: u32) -> Option<SourceConfig> {
    let source = if ifindex < SOURCES_DIRECT_MAX {
        *SOURCES_DIRECT.get(ifindex)?
    } else {
        // SAFETY: the value is copied out before any other map operation.
        *unsafe { SOURCES.get(ifindex) }?
    };
    (source.flags & SOURCE_ACTIVE != 0).then_some(source)
}

/// The first enabled session, in the source's priority order, whose first matching rule of
/// this direction accepts the packet: its slot and its configuration (looked up once).
#[inline(always)]
fn select_session<const DIR: u32>(
    source: &SourceConfig,
    pkt: &Packet,
) -> Option<(u32, &'static SessionConfig)> {
    for i in 0..MAX_SESSIONS_PER_SOURCE {
        let slot = source.sessions[i];
        if slot == NO_SESSION {
            return None;
        }
        let slot = slot as u32;
        let Some(session) = SESSIONS.get(slot) else {
            continue;
        };
        if session.flags & SESSION_ENABLED == 0 {
            continue;
        }
        let Some(filter) = FILTERS.get(session.filter_slot) else {
            continue;
        };
        // Most packets match no rule of most sessions; their ports tell most of them apart
        // with two bit tests. Non-first fragments carry no ports and match on the rest.
        if pkt.has_ports && !filter.ports[DIR as usize].may_match(pkt.src_port, pkt.dst_port) {
            continue;
        }
        let rules = &filter.rules[DIR as usize];
        // An index loop with a constant bound: the iterator form compiles to a pointer
        // comparison against a computed end, which the verifier cannot bound.
        #[expect(
            clippy::needless_range_loop,
            reason = "verifier needs a constant-bound index"
        )]
        for r in 0..MAX_RULES_PER_DIRECTION {
            let rule = &rules[r];
            if rule.ip_version == RULE_END {
                break;
            }
            if rule_matches(rule, pkt) {
                if let Some(hits) = RULE_STATS.get_ptr_mut(rule.stats_slot) {
                    // SAFETY: per-CPU value, only this CPU writes it.
                    unsafe { *hits += 1 };
                }
                if rule.action == ACTION_ACCEPT {
                    return Some((slot, session));
                }
                // Reject: this session does not mirror it; the next session may.
                break;
            }
        }
    }
    None
}

/// Hands a copy on with the session in the mark, which is restored on the original right
/// after the clone. The way depends on what the packet is (see `copy_device`).
#[inline(always)]
fn send_copy<const DIR: u32>(
    ctx: &TcContext,
    slot: u32,
    session: &SessionConfig,
    segs: u32,
    pkt: &Packet,
) -> bool {
    let Some(stats) = session_stats(slot, DIR) else {
        return false;
    };
    // Before the clone: a copy the session's sampling or budget leaves out costs nothing more.
    let len = ctx.len() as u64;
    let copy_bytes = || {
        // A super-packet leaves as `segs` copies, each with the headers and cut to snaplen.
        let segs = u64::from(segs);
        let inner = len + (segs - 1) * u64::from(pkt.headers_len);
        let each = inner / segs;
        let each = if each > u64::from(session.snaplen) {
            u64::from(session.snaplen)
        } else {
            each
        };
        segs * (each + u64::from(session.copy_overhead))
    };
    if let Err(reason) = budget::admit(slot, session, pkt, segs, copy_bytes) {
        if let Some(n) = stats.skipped.get_mut(reason) {
            *n += u64::from(segs);
        }
        return false;
    }
    let dev = copy_device(ctx, session, pkt);
    // SAFETY: reading a field of the program's own context.
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark(mirror_mark(slot, DIR));
    let sent = ctx.clone_redirect(dev, 0);
    ctx.set_mark(mark);
    match sent {
        Ok(()) => {
            stats.packets += segs as u64;
            // A GSO super-packet leaves as `segs` packets, each with its own copy of the
            // headers: count the bytes the wire carries.
            stats.bytes += len + (segs as u64 - 1) * pkt.headers_len as u64;
            true
        }
        Err(e) => {
            stats.errors[ERR_CLONE] += 1;
            // Debug: a device that is down fails every copy; the counter is the alarm.
            debug!(
                ctx,
                "session slot {}: clone to device {} failed: {}", slot, dev, e
            );
            false
        }
    }
}

/// Where the clone goes. A super-packet stands for several wire packets, and a packet whose
/// transport checksum is left to offload (locally generated) carries an unfilled field:
/// both go to the segmentation device, where the kernel makes them what the wire carries.
/// Everything else goes straight to be encapsulated.
#[inline(always)]
fn copy_device(ctx: &TcContext, session: &SessionConfig, pkt: &Packet) -> u32 {
    if session.segment_ifindex != 0 {
        // SAFETY: reading a field of the program's own context.
        let gso_size = unsafe { (*ctx.skb.skb).gso_size };
        let l4_checksum = pkt.protocol == IPPROTO_TCP || pkt.protocol == IPPROTO_UDP;
        if gso_size != 0 || (l4_checksum && checksum_partial(ctx)) {
            return session.segment_ifindex;
        }
    }
    encap::next_hop_device(session)
}

/// Whether the kernel left this packet's transport checksum to the device
/// (`CHECKSUM_PARTIAL`). `__sk_buff` does not show `ip_summed`; its place comes from the
/// kernel's BTF (`SKB_LAYOUT`). Unknown: assumed filled.
#[inline(always)]
fn checksum_partial(ctx: &TcContext) -> bool {
    if skb_layout!(ip_summed_valid) == 0 {
        return false;
    }
    // The context pointer is the kernel's sk_buff; reading through it needs CAP_PERFMON,
    // which the source programs need anyway.
    let at =
        (ctx.skb.skb as *const u8).wrapping_add((skb_layout!(ip_summed_byte) & 0x3ff) as usize);
    // SAFETY: a bounded read of the kernel's sk_buff, checked by the helper.
    match unsafe { bpf_probe_read_kernel(at) } {
        Ok(byte) => (byte >> (skb_layout!(ip_summed_shift) & 7)) & 3 == CHECKSUM_PARTIAL,
        Err(_) => false,
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}
