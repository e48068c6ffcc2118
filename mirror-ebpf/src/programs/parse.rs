//! Header parsing for the source programs: Ethernet, up to two VLAN tags, IPv4 or IPv6 (with a
//! bounded walk over extension headers), and the L4 ports.
//!
//! Reads go through direct packet access. Every read is bounds-checked against `data_end`, and
//! each variable offset is derived from a masked or bounded value so the verifier can prove it.

use aya_ebpf::programs::{TcContext, XdpContext};
use mirror_ebpf::MAX_IPV6_EXT_HEADERS;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag still seen on some switches.
const ETH_P_QINQ_9100: u16 = 0x9100;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// What the rules match on, with addresses as raw network-order words.
pub struct Packet {
    pub ip_version: u8,
    pub protocol: u8,
    /// False for non-first fragments and non-TCP/UDP: port ranges are then not evaluated.
    pub has_ports: bool,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the first payload byte (end of L4 header where known, else end of L3).
    /// Used to count the headers every GSO segment repeats on the wire.
    pub headers_len: u32,
    /// Offset of the IP header.
    pub l3: u32,
    /// IP total length as the header states it (IPv6: payload length + 40).
    pub ip_len: u32,
    /// TCP flags byte (FIN..URG), 0 for other protocols.
    pub tcp_flags: u8,
}

pub enum Parsed {
    Ip(Packet),
    /// Not an IP frame (ARP, LLDP, ...): never a mirror candidate.
    NotIp,
    /// Claims to be IP but its headers are short or inconsistent.
    Malformed,
}

/// The packet bounds of a program's context: the TC and XDP programs share the readers below.
pub trait Bounds {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Bounds for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Bounds for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &impl Bounds, offset: usize) -> Option<*const T> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads are never narrower than two bytes: for a one-byte read, LLVM rewrites the bounds
/// check `p + 1 > end` into `p >= end`, from which the verifier derives no readable range.
#[inline(always)]
pub fn be16_at<C: Bounds>(ctx: &C, offset: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at; the read is unaligned-safe.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
}

/// A raw network-order word, compared as is against the rule's words.
#[inline(always)]
pub fn word_at<C: Bounds>(ctx: &C, offset: usize) -> Option<u32> {
    // SAFETY: bounds checked by ptr_at; the read is unaligned-safe.
    ptr_at::<[u8; 4]>(ctx, offset).map(|p| u32::from_ne_bytes(unsafe { p.read_unaligned() }))
}

#[inline(always)]
fn addr16_at(ctx: &TcContext, offset: usize) -> Option<[u32; 4]> {
    let p = ptr_at::<[[u8; 4]; 4]>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at; the read is unaligned-safe.
    let a = unsafe { p.read_unaligned() };
    Some([
        u32::from_ne_bytes(a[0]),
        u32::from_ne_bytes(a[1]),
        u32::from_ne_bytes(a[2]),
        u32::from_ne_bytes(a[3]),
    ])
}

/// The headers the source program needs sit in the linear part of the skb on every path we
/// know, but a driver may leave them in page fragments. Pull them once (this moves bytes into
/// the linear area without changing them) and parse again.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    match parse_linear(ctx) {
        Parsed::Malformed if ctx.data_end() - ctx.data() < ctx.len() as usize => {
            let want = if ctx.len() < 256 { ctx.len() } else { 256 };
            if ctx.pull_data(want).is_err() {
                return Parsed::Malformed;
            }
            parse_linear(ctx)
        }
        parsed => parsed,
    }
}

#[inline(always)]
fn parse_linear(ctx: &TcContext) -> Parsed {
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Parsed::NotIp;
    };
    let mut l3 = ETH_HLEN;
    // 802.1Q, 802.1ad (QinQ): two tags at most; a third is not a frame we mirror.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100 {
            let Some(inner) = be16_at(ctx, l3 + 2) else {
                return Parsed::Malformed;
            };
            ethertype = inner;
            l3 += 4;
        }
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3).unwrap_or(Parsed::Malformed),
        ETH_P_IPV6 => parse_ipv6(ctx, l3).unwrap_or(Parsed::Malformed),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize) -> Option<Parsed> {
    let vihl = (be16_at(ctx, l3)? >> 8) as u8;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Some(Parsed::Malformed);
    }
    let hdr_len = ihl * 4;
    // The whole header, options included, must be present.
    be16_at(ctx, l3 + hdr_len - 2)?;
    let tot_len = be16_at(ctx, l3 + 2)?;
    let frag = be16_at(ctx, l3 + 6)?;
    let first_fragment = frag & 0x1fff == 0;
    // TTL and protocol share a 16-bit word.
    let protocol = be16_at(ctx, l3 + 8)? as u8;
    let src = word_at(ctx, l3 + 12)?;
    let dst = word_at(ctx, l3 + 16)?;
    let mut pkt = Packet {
        ip_version: 4,
        protocol,
        has_ports: false,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        src_port: 0,
        dst_port: 0,
        headers_len: (l3 + hdr_len) as u32,
        l3: l3 as u32,
        ip_len: tot_len as u32,
        tcp_flags: 0,
    };
    if first_fragment {
        parse_l4(ctx, l3 + hdr_len, &mut pkt)?;
    }
    Some(Parsed::Ip(pkt))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize) -> Option<Parsed> {
    if be16_at(ctx, l3)? >> 12 != 6 {
        return Some(Parsed::Malformed);
    }
    let payload_len = be16_at(ctx, l3 + 4)?;
    // Next header and hop limit share a 16-bit word.
    let mut next = (be16_at(ctx, l3 + 6)? >> 8) as u8;
    let src = addr16_at(ctx, l3 + 8)?;
    let dst = addr16_at(ctx, l3 + 24)?;
    let mut off = l3 + 40;
    let mut first_fragment = true;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext_header(next) {
            break;
        }
        // Every extension header starts with its next-header byte and a length byte.
        let head = be16_at(ctx, off)?;
        let hdr_len = (head & 0xff) as usize;
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: length in
            // 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => (hdr_len + 1) * 8,
            // Fragment header: fixed 8 bytes; the offset field tells first from the rest.
            44 => {
                if be16_at(ctx, off + 2)? & 0xfff8 != 0 {
                    first_fragment = false;
                }
                8
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => (hdr_len + 2) * 4,
            _ => break,
        };
        // The whole header must be in the packet: one whose length runs past the end is
        // malformed, not a way to read the "ports" from beyond it.
        be16_at(ctx, off + len - 2)?;
        next = (head >> 8) as u8;
        off += len;
        walked += 1;
        if !first_fragment {
            // A later fragment: what follows is fragment data, not more headers. Its
            // protocol is the fragment header's next header; it has no ports.
            break;
        }
    }
    if first_fragment && is_ipv6_ext_header(next) {
        // Longer chain than we walk: the upper-layer protocol is unknown.
        return Some(Parsed::Malformed);
    }
    let mut pkt = Packet {
        ip_version: 6,
        protocol: next,
        has_ports: false,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
        headers_len: off as u32,
        l3: l3 as u32,
        ip_len: payload_len as u32 + 40,
        tcp_flags: 0,
    };
    if first_fragment {
        parse_l4(ctx, off, &mut pkt)?;
    }
    Some(Parsed::Ip(pkt))
}

#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// Ports for TCP and UDP, and the header length GSO segments repeat.
#[inline(always)]
fn parse_l4(ctx: &TcContext, l4: usize, pkt: &mut Packet) -> Option<()> {
    match pkt.protocol {
        IPPROTO_TCP => {
            // The fixed 20 bytes must all be there (one read of the whole header, which the
            // verifier follows): a shorter TCP header is malformed, not matched on ports.
            // SAFETY: bounds checked by ptr_at; the read is unaligned-safe.
            let h = unsafe { ptr_at::<[u8; 20]>(ctx, l4)?.read_unaligned() };
            pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
            pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
            let doff = (h[12] >> 4) as usize;
            pkt.tcp_flags = h[13] & 0x3f;
            pkt.headers_len = (l4 + doff * 4) as u32;
            pkt.has_ports = true;
        }
        IPPROTO_UDP => {
            // Likewise the UDP header's 8 bytes.
            // SAFETY: bounds checked by ptr_at; the read is unaligned-safe.
            let h = unsafe { ptr_at::<[u8; 8]>(ctx, l4)?.read_unaligned() };
            pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
            pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
            pkt.headers_len = (l4 + 8) as u32;
            pkt.has_ports = true;
        }
        _ => {}
    }
    Some(())
}
