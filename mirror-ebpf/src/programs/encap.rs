//! From a copy to a VXLAN packet on its way to the target.
//!
//! A copy leaves the source program by one of three ways (docs/architecture.md draws them):
//! - fast path: cloned straight to the egress of the uplink, where `mirror_tx` cuts it and
//!   writes outer Ethernet/IPv4/UDP/VXLAN headers from the session's template;
//! - segmentation: cloned to the egress of `mirseg`, a veth without offloads, so the kernel
//!   cuts a GSO super-packet into its wire segments and fills checksums left to offload;
//!   `mirror_segment` on the peer's ingress sends each segment on to the uplink (or the
//!   tunnel device);
//! - fallback: the external-mode VXLAN device, where `mirror_encap` cuts the copy and sets
//!   the tunnel key and the kernel encapsulates and routes it.
//!
//! Each copy carries `mirror_mark(slot, direction)` until it is encapsulated, then only the
//! magic, so the uplink's source program never mirrors it again.

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::{
        bpf_get_hash_recalc, bpf_redirect, bpf_skb_change_head, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_set_tunnel_key, bpf_skb_store_bytes, bpf_skb_vlan_pop,
    },
    programs::TcContext,
};
use aya_log_ebpf::warn;
use mirror_ebpf::{
    ERR_ENCAP, ERR_NO_SESSION, ERR_TRUNCATE, ERR_TUNNEL_KEY, FAST_PATH_HEADROOM,
    MIRROR_MARK_DIR_SHIFT, MIRROR_MARK_IN_FLIGHT, MIRROR_MARK_MAGIC, MIRROR_MARK_SLOT_MASK,
    SESSION_ENABLED, SESSION_REMOTE_IPV6, SessionConfig, SessionStats, is_mirror_mark,
};

use super::{SESSIONS, session_stats};

/// The kernel's VXLAN device takes the outer source port from the inner flow hash within
/// the local port range; the fast path does the same with the default range, so a target's
/// ECMP or RSS spreads copies the way it spread them before.
const SRC_PORT_MIN: u32 = 32768;
const SRC_PORT_MAX: u32 = 61000;
/// Bytes a VLAN tag held in skb metadata takes once it is back in the frame.
const VLAN_HLEN: u32 = 4;
/// Where the inner frame starts once the outer headers are in front of it.
const INNER: u32 = FAST_PATH_HEADROOM;

/// The session a marked copy belongs to, with its counters; `None` for anything else.
#[inline(always)]
fn copy_session(ctx: &TcContext) -> Option<(u32, u32)> {
    // SAFETY: reading a field of the program's own context.
    let mark = unsafe { (*ctx.skb.skb).mark };
    // A copy already encapsulated carries the bare magic.
    if !is_mirror_mark(mark) || mark & MIRROR_MARK_IN_FLIGHT == 0 {
        return None;
    }
    Some((
        mark & MIRROR_MARK_SLOT_MASK,
        (mark >> MIRROR_MARK_DIR_SHIFT) & 1,
    ))
}

#[inline(always)]
fn enabled_session(slot: u32, stats: &mut SessionStats) -> Result<SessionConfig, ()> {
    match SESSIONS.get(slot) {
        Some(s) if s.flags & SESSION_ENABLED != 0 => Ok(*s),
        _ => {
            stats.errors[ERR_NO_SESSION] += 1;
            Err(())
        }
    }
}

/// Where a copy goes once it is a wire segment: the uplink when the fast path is resolved,
/// the tunnel device otherwise.
#[inline(always)]
pub(crate) fn next_hop_device(session: &SessionConfig) -> u32 {
    if session.uplink_ifindex != 0 {
        session.uplink_ifindex
    } else {
        session.tunnel_ifindex
    }
}

/// `mirror_segment`: a segment (or a checksummed packet) the kernel made on `mirseg`,
/// arriving on its peer. Sent on to where the session's copies are encapsulated.
/// Ok(ifindex) to redirect to; Err: not a copy, or its session is gone (dropped).
#[inline(always)]
pub(crate) fn try_mirror_segment(ctx: &TcContext) -> Result<u32, ()> {
    let (slot, dir) = copy_session(ctx).ok_or(())?;
    let stats = session_stats(slot, dir).ok_or(())?;
    let session = enabled_session(slot, stats)?;
    stats.segmented += 1;
    let dev = next_hop_device(&session);
    // SAFETY: plain helper call; the redirect happens when the program returns.
    let ret = unsafe { bpf_redirect(dev, 0) };
    if ret as i32 != aya_ebpf::bindings::TC_ACT_REDIRECT {
        stats.errors[ERR_ENCAP] += 1;
        return Err(());
    }
    Ok(dev)
}

/// Cuts the copy to the snap length (`snaplen` counts a metadata VLAN tag that goes back into
/// the frame). Returns the length of what is left.
#[inline(always)]
fn cut(
    ctx: &TcContext,
    slot: u32,
    stats: &mut SessionStats,
    snaplen: u32,
    tag_len: u32,
) -> Result<u32, ()> {
    // SAFETY: reading fields of the program's own context.
    let (gso_size, gso_segs) = unsafe { ((*ctx.skb.skb).gso_size, (*ctx.skb.skb).gso_segs) };
    // Only without a segmentation device does a super-packet get here; cutting it also
    // clears the GSO state, so it leaves as one packet.
    let is_gso = gso_size != 0 || gso_segs > 1;
    let len = ctx.len();
    let snaplen = snaplen.saturating_sub(tag_len);
    let new_len = if len > snaplen { snaplen } else { len };
    if new_len != len || is_gso {
        // SAFETY: helper on the program's own skb.
        let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) };
        if ret != 0 {
            stats.errors[ERR_TRUNCATE] += 1;
            warn!(
                ctx,
                "session slot {}: cutting a copy of {} bytes to {} failed: {}",
                slot,
                len,
                new_len,
                ret
            );
            return Err(());
        }
    }
    if new_len != len {
        stats.truncated += 1;
    }
    Ok(new_len)
}

/// `mirror_tx`, on the uplink's egress: a copy of the fast path becomes a VXLAN packet from
/// the session's template. Ok(true): encapsulated; Ok(false): not a copy of ours (passes on).
#[inline(always)]
pub(crate) fn try_mirror_tx(ctx: &TcContext) -> Result<bool, ()> {
    let Some((slot, dir)) = copy_session(ctx) else {
        return Ok(false);
    };
    let stats = session_stats(slot, dir).ok_or(())?;
    let session = enabled_session(slot, stats)?;
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if session.uplink_ifindex != ifindex {
        // The route moved between the clone and now: the template no longer fits this
        // device. Rare (a route change); the next copies take the new way.
        stats.errors[ERR_NO_SESSION] += 1;
        return Err(());
    }
    // Before any byte changes: the hash of the inner flow, as the VXLAN device takes it.
    // SAFETY: helper on the program's own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };

    // A VLAN tag the kernel holds in metadata would be inserted by the device in front of
    // the *outer* header: take it out of the metadata and write it into the inner frame.
    // SAFETY: reading fields of the program's own context.
    let (vlan_present, vlan_tci, vlan_proto) = unsafe {
        (
            (*ctx.skb.skb).vlan_present,
            (*ctx.skb.skb).vlan_tci,
            (*ctx.skb.skb).vlan_proto,
        )
    };
    let tag_len = if vlan_present != 0 { VLAN_HLEN } else { 0 };
    // SAFETY: helper on the program's own skb.
    if vlan_present != 0 && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        stats.errors[ERR_ENCAP] += 1;
        return Err(());
    }
    let kept = cut(ctx, slot, stats, session.snaplen, tag_len)?;
    let inner_len = kept + tag_len;

    // SAFETY: helper on the program's own skb: room in front, zeroed, mac header reset.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, INNER + tag_len, 0) } != 0 {
        stats.errors[ERR_ENCAP] += 1;
        warn!(ctx, "session slot {}: no room for the outer headers", slot);
        return Err(());
    }
    if tag_len != 0 {
        // The frame's addresses moved with it; put them in front of the tag.
        let mut macs = [0u8; 12];
        // vlan_proto is kept in network order, vlan_tci in host order.
        let proto = (vlan_proto as u16).to_ne_bytes();
        let tag: [u8; 4] = [proto[0], proto[1], (vlan_tci >> 8) as u8, vlan_tci as u8];
        // A constant length: the verifier refuses a read whose length may be zero.
        // SAFETY: helper on the program's own skb into a buffer of the given size.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                INNER + VLAN_HLEN,
                macs.as_mut_ptr().cast(),
                12,
            )
        };
        if loaded != 0
            || ctx.store(INNER as usize, &macs, 0).is_err()
            || ctx.store((INNER + 12) as usize, &tag, 0).is_err()
        {
            stats.errors[ERR_ENCAP] += 1;
            return Err(());
        }
    }
    let hdr = outer_headers(&session, inner_len, hash);
    // SAFETY: helper on the program's own skb, writing within the room made above.
    let ret =
        unsafe { bpf_skb_store_bytes(ctx.skb.skb, 0, hdr.as_ptr().cast(), FAST_PATH_HEADROOM, 0) };
    if ret != 0 {
        stats.errors[ERR_ENCAP] += 1;
        return Err(());
    }
    ctx.set_mark(MIRROR_MARK_MAGIC);
    stats.copies += 1;
    Ok(true)
}

/// Ethernet + IPv4 + UDP + VXLAN in front of an inner frame of `inner_len` bytes.
#[inline(always)]
fn outer_headers(s: &SessionConfig, inner_len: u32, hash: u32) -> [u8; 50] {
    let mut h = [0u8; 50];
    h[..12].copy_from_slice(&s.eth_addrs);
    h[12] = 0x08; // IPv4
    let ip_len = (20 + 8 + 8 + inner_len) as u16;
    let udp_len = ip_len - 20;
    let src = s.outer_src.to_ne_bytes();
    let dst = s.outer_dst.to_ne_bytes();
    h[14] = 0x45;
    h[15] = s.tos;
    h[16..18].copy_from_slice(&ip_len.to_be_bytes());
    // ID 0 with DF: the copy is cut to the path MTU, never fragmented (RFC 6864).
    h[20] = 0x40;
    h[22] = s.ttl;
    h[23] = 17; // UDP
    h[26..30].copy_from_slice(&src);
    h[30..34].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    let mut i = 14;
    while i < 34 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    h[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let sport =
        ((u64::from(hash) * u64::from(SRC_PORT_MAX - SRC_PORT_MIN)) >> 32) as u32 + SRC_PORT_MIN;
    h[34..36].copy_from_slice(&(sport as u16).to_be_bytes());
    h[36..38].copy_from_slice(&s.port_be.to_ne_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: allowed for IPv4, and what the kernel's VXLAN device sends by default.
    h[42] = 0x08; // VXLAN I flag
    let vni = s.vni << 8;
    h[46..50].copy_from_slice(&vni.to_be_bytes());
    h
}

/// `mirror_encap`, on the tunnel device's egress (the fallback path): cut the copy and set
/// the tunnel key; the kernel encapsulates and routes it.
#[inline(always)]
pub(crate) fn try_mirror_encap(ctx: &TcContext) -> Result<(), ()> {
    // Only copies belong on this device (no addresses, no routes point at it).
    let (slot, dir) = copy_session(ctx).ok_or(())?;
    let stats = session_stats(slot, dir).ok_or(())?;
    let session = enabled_session(slot, stats)?;
    // Keep only the magic on the wire copy: it still marks the outer packet as mirror traffic
    // for the uplink's source program, without the per-session bits, which other software's
    // mark conventions (e.g. kube-proxy's 0x8000 drop bit) could misread.
    ctx.set_mark(MIRROR_MARK_MAGIC);
    // A VLAN tag held in skb metadata is put back into the frame by the VXLAN device after
    // this program: leave room for its 4 bytes so the copy is PacketLength long.
    // SAFETY: reading a field of the program's own context.
    let tag_len = if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        VLAN_HLEN
    } else {
        0
    };
    cut(ctx, slot, stats, session.snaplen, tag_len)?;

    // SAFETY: bpf_tunnel_key is plain data; all-zero is its empty value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = session.vni;
    key.tunnel_tos = session.tos;
    key.tunnel_ttl = session.ttl;
    let flags = if session.flags & SESSION_REMOTE_IPV6 != 0 {
        key.__bindgen_anon_1.remote_ipv6 = session.remote_ipv6;
        BPF_F_TUNINFO_IPV6 as u64
    } else {
        key.__bindgen_anon_1.remote_ipv4 = session.remote_ipv4;
        // Outer UDP checksum 0 over IPv4, as the fast path and the kernel's VXLAN devices
        // send by default; a requested checksum is left to offload and, on veth, never
        // filled. IPv6 requires one.
        BPF_F_ZERO_CSUM_TX as u64
    };
    // SAFETY: helper on the program's own skb with a key on our stack.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if ret != 0 {
        stats.errors[ERR_TUNNEL_KEY] += 1;
        warn!(
            ctx,
            "session slot {}: setting the tunnel key failed: {}", slot, ret
        );
        return Err(());
    }
    stats.copies += 1;
    Ok(())
}
