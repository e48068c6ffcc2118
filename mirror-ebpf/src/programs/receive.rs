//! The receiving side: `mirror_receive` (XDP on a receiving interface) terminates mirror
//! traffic. UDP to the receiver's port carrying VXLAN for a VNI served on that interface loses
//! its outer Ethernet/IP/UDP/VXLAN headers and the inner frame is redirected to the VNI's
//! capture interface; everything else passes to the stack untouched.
//!
//! `mirror_receive_tc` does the same in TC ingress, where native XDP cannot attach (a bridge,
//! a veth above about one page of MTU). Generic XDP is no substitute: the kernel skips it for
//! every skb marked as redirected (`netif_receive_generic_xdp`), and copies made by
//! `bpf_clone_redirect` on the same host keep that mark across a veth. Both programs share the
//! parsing and the decision ([`classify`]); only the way the headers go and the redirect differ.
//!
//! `rx_pass` is attached to the tools' end of each capture veth pair: a veth only accepts
//! XDP-redirected frames (`ndo_xdp_xmit`) when its peer runs NAPI, which an attached XDP
//! program turns on. Enabling GRO would too, but GRO would merge the mirrored TCP segments,
//! and the tools must see the frames as the source sent them.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    },
    helpers::{
        bpf_redirect, bpf_skb_change_tail, bpf_skb_vlan_pop, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    macros::{classifier, map, xdp},
    maps::{DevMapHash, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use mirror_ebpf::{
    MAX_RX_INTERFACES, MAX_RX_VNIS, RxInterface, RxInterfaceStats, RxVni, RxVniKey, RxVniStats,
};

use super::parse::{
    Bounds, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, be16_at, word_at,
};

#[map]
static RX_INTERFACES: HashMap<u32, RxInterface> = HashMap::with_max_entries(MAX_RX_INTERFACES, 0);
#[map]
static RX_VNIS: HashMap<RxVniKey, RxVni> = HashMap::with_max_entries(MAX_RX_VNIS, 0);
#[map]
static RX_CAPTURE: DevMapHash = DevMapHash::with_max_entries(MAX_RX_VNIS, 0);
#[map]
static RX_INTERFACE_STATS: PerCpuArray<RxInterfaceStats> =
    PerCpuArray::with_max_entries(MAX_RX_INTERFACES, 0);
#[map]
static RX_VNI_STATS: PerCpuArray<RxVniStats> = PerCpuArray::with_max_entries(MAX_RX_VNIS, 0);

/// Outer UDP (8) + VXLAN (8) headers.
const UDP_VXLAN_LEN: usize = 16;
/// VXLAN flags: the I flag says the VNI is valid (RFC 7348).
const VXLAN_FLAG_I: u16 = 0x0800;

#[xdp]
pub fn mirror_receive(ctx: XdpContext) -> u32 {
    // Err: a counter slot is missing (the agent always writes them first); never block
    // traffic over it.
    try_mirror_receive(&ctx).unwrap_or(XDP_PASS)
}

/// Declared frags-aware (`xdp.frags`): it never reads the packet, and a veth whose XDP
/// program is not frags-aware refuses a peer MTU above about one page, which would cap the
/// frames a capture pair can carry below the 9000 bytes a session may mirror.
/// The TC twin of `mirror_receive`, for interfaces where native XDP cannot attach. Frames it
/// does not take continue untouched (`TC_ACT_UNSPEC` is `TCX_NEXT`, and the next cls_bpf
/// filter for a clsact qdisc).
#[classifier]
pub fn mirror_receive_tc(ctx: TcContext) -> i32 {
    // Err: a counter slot is missing (the agent always writes them first).
    try_mirror_receive_tc(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[xdp(frags)]
pub fn rx_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Where the outer headers say the UDP header is, if the frame is unfragmented UDP over
/// IPv4 or IPv6 with at most one 802.1Q tag: in the frame, or (`tagged`, TC only) already
/// taken out into the skb's metadata by the stack.
#[inline(always)]
fn outer_udp<C: Bounds>(ctx: &C, tagged: bool) -> Option<usize> {
    let mut ethertype = be16_at(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q && !tagged {
        ethertype = be16_at(ctx, l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        ETH_P_IP => {
            let vihl = (be16_at(ctx, l3)? >> 8) as u8;
            let ihl = (vihl & 0x0f) as usize;
            if vihl >> 4 != 4 || ihl < 5 {
                return None;
            }
            // A fragment cannot be decapsulated on its own: the stack reassembles it.
            if be16_at(ctx, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            // TTL and protocol share a 16-bit word.
            if be16_at(ctx, l3 + 8)? as u8 != IPPROTO_UDP {
                return None;
            }
            Some(l3 + ihl * 4)
        }
        ETH_P_IPV6 => {
            if be16_at(ctx, l3)? >> 12 != 6 {
                return None;
            }
            // Next header and hop limit share a 16-bit word. Mirror traffic carries no
            // extension headers; anything else is not ours.
            if (be16_at(ctx, l3 + 6)? >> 8) as u8 != IPPROTO_UDP {
                return None;
            }
            Some(l3 + 40)
        }
        _ => None,
    }
}

/// A frame for a served VNI, with the inner frame's place and its VNI's counters.
struct Deliver {
    /// Offset of the inner Ethernet header.
    inner: usize,
    /// Inner frame length as the UDP length states it.
    inner_len: usize,
    /// The VNI's slot in `RX_CAPTURE` and `RX_VNI_STATS`.
    slot: u32,
    vstats: *mut RxVniStats,
}

/// The decision both receiving programs make, with every counter it implies: `None` passes
/// the frame untouched. `arrived` is the frame's whole length (the skb's, not only its linear
/// part); `tagged` says a VLAN tag was already moved out of the frame.
#[inline(always)]
fn classify<C: Bounds>(
    ctx: &C,
    ifindex: u32,
    arrived: usize,
    tagged: bool,
) -> Result<Option<Deliver>, ()> {
    // SAFETY: the value is copied out before any other map operation.
    let Some(iface) = (unsafe { RX_INTERFACES.get(ifindex) }).copied() else {
        return Ok(None);
    };
    let istats = RX_INTERFACE_STATS.get_ptr_mut(iface.stats_slot).ok_or(())?;
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let istats: &mut RxInterfaceStats = unsafe { &mut *istats };
    istats.packets += 1;

    let Some(l4) = outer_udp(ctx, tagged) else {
        istats.not_mirror += 1;
        return Ok(None);
    };
    // The port is compared as the packet holds it (network order).
    match word_at(ctx, l4) {
        Some(ports) if (ports >> 16) as u16 == iface.port_be => {}
        _ => {
            istats.not_mirror += 1;
            return Ok(None);
        }
    }
    let (Some(flags), Some(vni_word)) = (be16_at(ctx, l4 + 8), word_at(ctx, l4 + 12)) else {
        istats.malformed += 1;
        return Ok(None);
    };
    if flags & VXLAN_FLAG_I == 0 {
        istats.malformed += 1;
        return Ok(None);
    }
    let key = RxVniKey {
        ifindex,
        vni: u32::from_be(vni_word) >> 8,
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(served) = (unsafe { RX_VNIS.get(key) }).copied() else {
        istats.unknown_vni += 1;
        return Ok(None);
    };
    let vstats = RX_VNI_STATS.get_ptr_mut(served.slot).ok_or(())?;

    // The UDP length says where the inner frame ends; it must hold an Ethernet header and
    // lie within what arrived (a frame cut in transit is not a mirror copy we can trust).
    let udp_len = bounded_u16(be16_at(ctx, l4 + 4).ok_or(())? as usize);
    if udp_len < UDP_VXLAN_LEN + ETH_HLEN || l4 + udp_len > arrived {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { (*vstats).malformed += 1 };
        return Ok(None);
    }
    Ok(Some(Deliver {
        inner: l4 + UDP_VXLAN_LEN,
        inner_len: udp_len - UDP_VXLAN_LEN,
        slot: served.slot,
        vstats,
    }))
}

/// `v` with bounds the verifier can see. LLVM turns `(data_end - data) - inner_len` after
/// `bpf_xdp_adjust_head` into `data + udp_len` compared with `data_end`; the 6.1 verifier
/// tracks no bounds through the byte swap that read the UDP length (`be16`), and refuses
/// pointer arithmetic with an unbounded register ("math between pkt pointer and register with
/// unbounded min value"). The mask gives it the bounds; the volatile read keeps LLVM from
/// dropping a mask it knows to be redundant for a `u16`. 6.6+ would not need it.
#[inline(always)]
fn bounded_u16(v: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&v) & 0xffff }
}

#[inline(always)]
fn try_mirror_receive(ctx: &XdpContext) -> Result<u32, ()> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let arrived = ctx.data_end() - ctx.data();
    let Some(d) = classify(ctx, ifindex, arrived, false)? else {
        return Ok(XDP_PASS);
    };
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let vstats: &mut RxVniStats = unsafe { &mut *d.vstats };
    // The redirect is chosen before the frame is touched (it only records the device; the
    // kernel sends once the program returns XDP_REDIRECT): without a capture device the frame
    // still passes untouched, and the devmap is looked up once.
    if RX_CAPTURE.redirect(d.slot, 0) != Ok(XDP_REDIRECT) {
        vstats.no_capture += 1;
        return Ok(XDP_PASS);
    }
    // SAFETY: helper on the program's own context; it checks the delta itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, d.inner as i32) } != 0 {
        // Nothing was changed: the stack may have the frame.
        vstats.redirect_errors += 1;
        return Ok(XDP_PASS);
    }
    // Bytes after the UDP payload (Ethernet padding, trailers) are not part of the frame.
    let excess = (ctx.data_end() - ctx.data()) as i64 - d.inner_len as i64;
    // SAFETY: helper on the program's own context; it checks the delta itself.
    if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
        // The headers are gone: passing the inner frame to this interface's stack would
        // inject someone else's traffic here.
        vstats.redirect_errors += 1;
        return Ok(XDP_DROP);
    }
    vstats.frames += 1;
    vstats.bytes += d.inner_len as u64;
    Ok(XDP_REDIRECT)
}

/// `BPF_F_ADJ_ROOM_DECAP_L4_UDP`: the decap also resets the skb's UDP tunnel GSO state.
/// Newer than aya's bindings and than 6.18.
const BPF_F_ADJ_ROOM_DECAP_L4_UDP: u64 = 1 << 10;

/// Enough for the outer headers `classify` reads: Ethernet, a tag, IPv4 with the longest
/// options (or IPv6), UDP and VXLAN.
const RX_HEADERS_MAX: u32 = 14 + 4 + 60 + UDP_VXLAN_LEN as u32;

#[inline(always)]
fn try_mirror_receive_tc(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: reads of the program's own context.
    let (ifindex, tagged, gso_segs, gso_size) = unsafe {
        let skb = &*ctx.skb.skb;
        (
            skb.ifindex,
            skb.vlan_present != 0,
            skb.gso_segs,
            skb.gso_size,
        )
    };
    let arrived = ctx.len();
    // The outer headers must be in the linear part for direct reads; a driver or a sender
    // building the skb from pages may leave them out. Pulling moves bytes, changes none.
    let want = if arrived < RX_HEADERS_MAX {
        arrived
    } else {
        RX_HEADERS_MAX
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let Some(d) = classify(ctx, ifindex, arrived as usize, tagged)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let vstats: &mut RxVniStats = unsafe { &mut *d.vstats };
    // The devmap is the same one XDP redirects through: the kernel drops an entry whose
    // device goes away, so a deleted capture pair shows as missing here too.
    let Some(capture) = RX_CAPTURE.get_ifindex(d.slot) else {
        vstats.no_capture += 1;
        return Ok(TC_ACT_UNSPEC);
    };
    let Ok(eth) = ctx.load::<[u8; ETH_HLEN]>(d.inner) else {
        vstats.redirect_errors += 1;
        return Ok(TC_ACT_UNSPEC);
    };
    // A tag still in the frame (the stack moves a single one into metadata before TC, but
    // BPF_PROG_TEST_RUN does not): the helper below refuses any skb whose protocol is not
    // IP, so the tag goes first, and everything after it moves up by its 4 bytes.
    let mut inner = d.inner;
    let in_band = !tagged && be16_at(ctx, 12) == Some(ETH_P_8021Q);
    if in_band {
        // SAFETY: helper on the program's own context.
        if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
            vstats.redirect_errors += 1;
            return Ok(TC_ACT_UNSPEC);
        }
        inner -= 4;
    }
    // Removes `inner` bytes right after the first 14: the outer Ethernet header stays and is
    // overwritten below with the inner one, whose old copy went with the removed bytes. The
    // helper refuses (changing nothing) when less than an outer IP header's worth (20 or 40
    // bytes) would remain after the Ethernet header.
    // A GSO skb (a VXLAN super-packet a kernel VTEP on this host sent through a veth) keeps
    // its tunnel GSO state through a plain decap, and its segmentation on the way into the
    // capture pair then drops every segment (6.18). Only DECAP_L4_UDP (bpf-next, after 6.18)
    // resets that state; a kernel without it refuses the unknown flag, changing nothing, and
    // the super-packet passes, counted. FIXED_GSO: the segment size stays the inner one's.
    let flags = if gso_size != 0 {
        BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L4_UDP
    } else {
        BPF_F_ADJ_ROOM_FIXED_GSO as u64
    };
    if ctx
        .adjust_room(-(inner as i32), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        vstats.redirect_errors += 1;
        // Unchanged unless the tag went above.
        return Ok(if in_band { TC_ACT_SHOT } else { TC_ACT_UNSPEC });
    }
    // From here on the frame is no longer what arrived: a failure drops it (passing it would
    // inject someone else's traffic into this interface's stack).
    // Bytes after the UDP payload (Ethernet padding, trailers) are not part of the frame.
    // SAFETY: helper on the program's own context; it checks the length itself.
    if (ctx.len() as usize) > d.inner_len
        && unsafe { bpf_skb_change_tail(ctx.skb.skb, d.inner_len as u32, 0) } != 0
    {
        vstats.redirect_errors += 1;
        return Ok(TC_ACT_SHOT);
    }
    if ctx.store(0, &eth, 0).is_err() {
        vstats.redirect_errors += 1;
        return Ok(TC_ACT_SHOT);
    }
    // The outer tag, which the stack moved into the skb's metadata, would otherwise be sent
    // with the inner frame into the capture pair. With the tag in metadata and an IP
    // protocol this only clears it.
    // SAFETY: helper on the program's own context.
    if tagged && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        vstats.redirect_errors += 1;
        return Ok(TC_ACT_SHOT);
    }
    // A GSO skb is cut into its segments on its way into the capture veth, whose GSO is off
    // while its peer runs XDP: counted as the frames the tools will see.
    vstats.frames += if gso_segs > 1 { gso_segs as u64 } else { 1 };
    vstats.bytes += d.inner_len as u64;
    // SAFETY: helper call; the redirect happens once the program returns.
    Ok(unsafe { bpf_redirect(capture, 0) } as i32)
}
