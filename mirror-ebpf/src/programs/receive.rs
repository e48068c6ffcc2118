//! The receiving side: `mirror_receive` (XDP on a receiving interface) terminates mirror
//! traffic. UDP to the receiver's port carrying VXLAN for a VNI served on that interface loses
//! its outer Ethernet/IP/UDP/VXLAN headers and the inner frame is redirected to the VNI's
//! capture interface; everything else passes to the stack untouched.
//!
//! `rx_pass` is attached to the tools' end of each capture veth pair: a veth only accepts
//! XDP-redirected frames (`ndo_xdp_xmit`) when its peer runs NAPI, which an attached XDP
//! program turns on. Enabling GRO would too, but GRO would merge the mirrored TCP segments,
//! and the tools must see the frames as the source sent them.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use mirror_ebpf::{
    MAX_RX_INTERFACES, MAX_RX_VNIS, RxInterface, RxInterfaceStats, RxVni, RxVniKey, RxVniStats,
};

use super::parse::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, be16_at, word_at};

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
#[xdp(frags)]
pub fn rx_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Where the outer headers say the UDP header is, if the frame is unfragmented UDP over
/// IPv4 or IPv6 (one optional 802.1Q tag).
#[inline(always)]
fn outer_udp(ctx: &XdpContext) -> Option<usize> {
    let mut ethertype = be16_at(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
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

#[inline(always)]
fn try_mirror_receive(ctx: &XdpContext) -> Result<u32, ()> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out before any other map operation.
    let Some(iface) = (unsafe { RX_INTERFACES.get(ifindex) }).copied() else {
        return Ok(XDP_PASS);
    };
    let istats = RX_INTERFACE_STATS.get_ptr_mut(iface.stats_slot).ok_or(())?;
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let istats: &mut RxInterfaceStats = unsafe { &mut *istats };
    istats.packets += 1;

    let Some(l4) = outer_udp(ctx) else {
        istats.not_mirror += 1;
        return Ok(XDP_PASS);
    };
    // The port is compared as the packet holds it (network order).
    match word_at(ctx, l4) {
        Some(ports) if (ports >> 16) as u16 == iface.port_be => {}
        _ => {
            istats.not_mirror += 1;
            return Ok(XDP_PASS);
        }
    }
    let (Some(flags), Some(vni_word)) = (be16_at(ctx, l4 + 8), word_at(ctx, l4 + 12)) else {
        istats.malformed += 1;
        return Ok(XDP_PASS);
    };
    if flags & VXLAN_FLAG_I == 0 {
        istats.malformed += 1;
        return Ok(XDP_PASS);
    }
    let key = RxVniKey {
        ifindex,
        vni: u32::from_be(vni_word) >> 8,
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(served) = (unsafe { RX_VNIS.get(key) }).copied() else {
        istats.unknown_vni += 1;
        return Ok(XDP_PASS);
    };
    let vstats = RX_VNI_STATS.get_ptr_mut(served.slot).ok_or(())?;
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let vstats: &mut RxVniStats = unsafe { &mut *vstats };

    // The UDP length says where the inner frame ends; it must hold an Ethernet header and
    // lie within what arrived (a frame cut in transit is not a mirror copy we can trust).
    let udp_len = be16_at(ctx, l4 + 4).ok_or(())? as usize;
    let arrived = ctx.data_end() - ctx.data();
    if udp_len < UDP_VXLAN_LEN + ETH_HLEN || l4 + udp_len > arrived {
        vstats.malformed += 1;
        return Ok(XDP_PASS);
    }
    let inner = l4 + UDP_VXLAN_LEN;
    let inner_len = udp_len - UDP_VXLAN_LEN;
    // The redirect is chosen before the frame is touched (it only records the device; the
    // kernel sends once the program returns XDP_REDIRECT): without a capture device the frame
    // still passes untouched, and the devmap is looked up once.
    if RX_CAPTURE.redirect(served.slot, 0) != Ok(XDP_REDIRECT) {
        vstats.no_capture += 1;
        return Ok(XDP_PASS);
    }
    // SAFETY: helper on the program's own context; it checks the delta itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner as i32) } != 0 {
        // Nothing was changed: the stack may have the frame.
        vstats.redirect_errors += 1;
        return Ok(XDP_PASS);
    }
    // Bytes after the UDP payload (Ethernet padding, trailers) are not part of the frame.
    let excess = (ctx.data_end() - ctx.data()) as i64 - inner_len as i64;
    // SAFETY: helper on the program's own context; it checks the delta itself.
    if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
        // The headers are gone: passing the inner frame to this interface's stack would
        // inject someone else's traffic here.
        vstats.redirect_errors += 1;
        return Ok(XDP_DROP);
    }
    vstats.frames += 1;
    vstats.bytes += inner_len as u64;
    Ok(XDP_REDIRECT)
}
