//! Test packet builder: Ethernet, VLAN tags, IPv4/IPv6 (with extension headers and fragments),
//! TCP/UDP/ICMP. Checksums are filled where the kernel would look at them on a real path
//! (IPv4 header), the rest of the bytes are exactly what the caller asked for.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp,
    Icmpv6,
    /// Any other protocol number, with these payload bytes as its header.
    Raw(u8),
}

impl L4 {
    fn protocol(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp => 1,
            L4::Icmpv6 => 58,
            L4::Raw(p) => *p,
        }
    }

    fn header(&self, payload_len: usize) -> Vec<u8> {
        match *self {
            L4::Tcp { sport, dport } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&1u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = 0x18; // PSH|ACK
                h[14..16].copy_from_slice(&65535u16.to_be_bytes());
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
                h
            }
            L4::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
            L4::Icmpv6 => vec![128, 0, 0, 0, 0, 1, 0, 1],
            L4::Raw(_) => Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Ip {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Fragment offset in 8-byte units (non-zero = not the first fragment).
        frag_offset: u16,
        more_fragments: bool,
        /// IPv4 options, a multiple of 4 bytes.
        options: Vec<u8>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// Extension headers as (next-header number of this header, its bytes without the
        /// next-header byte at offset 0, which the builder fills).
        ext: Vec<(u8, Vec<u8>)>,
    },
}

pub fn v4(src: &str, dst: &str) -> Ip {
    Ip::V4 {
        src: src.parse().expect("IPv4 source"),
        dst: dst.parse().expect("IPv4 destination"),
        frag_offset: 0,
        more_fragments: false,
        options: Vec::new(),
    }
}

pub fn v6(src: &str, dst: &str) -> Ip {
    Ip::V6 {
        src: src.parse().expect("IPv6 source"),
        dst: dst.parse().expect("IPv6 destination"),
        ext: Vec::new(),
    }
}

/// IPv6 extension header bodies (7 bytes after the next-header byte, i.e. 8 in total).
pub fn hop_by_hop() -> (u8, Vec<u8>) {
    (0, vec![0, 1, 4, 0, 0, 0, 0])
}
pub fn dest_opts() -> (u8, Vec<u8>) {
    (60, vec![0, 1, 4, 0, 0, 0, 0])
}
pub fn fragment_header(offset_units: u16, more: bool) -> (u8, Vec<u8>) {
    let field = (offset_units << 3) | u16::from(more);
    let f = field.to_be_bytes();
    (44, vec![0, f[0], f[1], 0, 0, 0, 1])
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub vlans: Vec<(u16, u16)>,
    pub ip: Ip,
    pub l4: L4,
    pub payload_len: usize,
}

pub fn frame(ip: Ip, l4: L4) -> Frame {
    Frame {
        vlans: Vec::new(),
        ip,
        l4,
        payload_len: 32,
    }
}

impl Frame {
    pub fn vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    pub fn payload(mut self, len: usize) -> Self {
        self.payload_len = len;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for (tpid, id) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        let payload: Vec<u8> = (0..self.payload_len).map(|i| i as u8).collect();
        let mut l4 = self.l4.header(self.payload_len);
        l4.extend_from_slice(&payload);
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                frag_offset,
                more_fragments,
                options,
            } => {
                out.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 5 + options.len() / 4;
                let total = ihl * 4 + l4.len();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | ihl as u8;
                h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                let frag = (u16::from(*more_fragments) << 13) | frag_offset;
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = 64;
                h[9] = self.l4.protocol();
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h.extend_from_slice(options);
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                out.extend_from_slice(&h);
            }
            Ip::V6 { src, dst, ext } => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut exts = Vec::new();
                for (i, (_, body)) in ext.iter().enumerate() {
                    let next = ext
                        .get(i + 1)
                        .map(|(n, _)| *n)
                        .unwrap_or_else(|| self.l4.protocol());
                    exts.push(next);
                    exts.extend_from_slice(body);
                }
                let first = ext
                    .first()
                    .map(|(n, _)| *n)
                    .unwrap_or_else(|| self.l4.protocol());
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                h[6] = first;
                h[7] = 64;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                out.extend_from_slice(&h);
                out.extend_from_slice(&exts);
            }
        }
        out.extend_from_slice(&l4);
        out
    }
}

pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP request frame: never a mirror candidate.
pub fn arp() -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 198, 18, 0, 1]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[198, 18, 0, 2]);
    out
}

/// What a test needs to know of a captured frame: IP version, protocol and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub ip_version: u8,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Summarises an untagged Ethernet frame (IPv4 or IPv6 without extension headers); `None` for
/// anything else. Only the first bytes are needed, so truncated copies work too.
pub fn summarize(frame: &[u8]) -> Option<Summary> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (ip_version, protocol, l4) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            (4, *frame.get(14 + 9)?, 14 + ihl)
        }
        ETH_P_IPV6 => (6, *frame.get(14 + 6)?, 14 + 40),
        _ => return None,
    };
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
    };
    let (sport, dport) = match protocol {
        6 | 17 => (port(l4)?, port(l4 + 2)?),
        _ => (0, 0),
    };
    Some(Summary {
        ip_version,
        protocol,
        sport,
        dport,
    })
}

/// VXLAN flags byte with the I flag (the VNI is valid).
pub const VXLAN_FLAG_I: u8 = 0x08;

/// `inner` inside outer Ethernet / `outer` IP / UDP to `dport` / VXLAN (`flags`, `vni`), as a
/// source node's tunnel device sends it.
pub fn vxlan(outer: Ip, dport: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut out = frame(
        outer,
        L4::Udp {
            sport: 49152,
            dport,
        },
    )
    .payload(8 + inner.len())
    .build();
    let at = out.len() - 8 - inner.len();
    let v = vni.to_be_bytes();
    out[at..at + 8].copy_from_slice(&[flags, 0, 0, 0, v[1], v[2], v[3], 0]);
    out[at + 8..].copy_from_slice(inner);
    out
}

/// Offset of a frame's TCP or UDP checksum field (Ethernet, up to two VLAN tags, IPv4 or
/// IPv6 without extension headers), if the frame holds one.
pub fn l4_checksum_at(frame: &[u8]) -> Option<usize> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let mut l3 = 14;
    let mut ethertype = be16(12)?;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(l3 + 2)?;
        l3 += 4;
    }
    let (protocol, l4) = match ethertype {
        0x0800 => {
            let vihl = *frame.get(l3)?;
            // A later fragment has no transport header.
            if be16(l3 + 6)? & 0x1fff != 0 {
                return None;
            }
            (*frame.get(l3 + 9)?, l3 + usize::from(vihl & 0x0f) * 4)
        }
        0x86dd => (*frame.get(l3 + 6)?, l3 + 40),
        _ => return None,
    };
    match protocol {
        6 => Some(l4 + 16),
        17 => Some(l4 + 6),
        _ => None,
    }
}

/// Whether `copy` is the first bytes of `original` as the wire carried it: byte for byte,
/// except the transport checksum, which a local sender leaves to offload. Captured where it
/// was sent the original holds only the pseudo-header sum there; the copy (like the wire)
/// holds the filled checksum.
pub fn is_wire_prefix(copy: &[u8], original: &[u8]) -> bool {
    if copy.len() > original.len() {
        return false;
    }
    let skip = l4_checksum_at(original).map(|at| at..at + 2);
    copy.iter()
        .zip(original)
        .enumerate()
        .all(|(i, (c, o))| c == o || skip.as_ref().is_some_and(|r| r.contains(&i)))
}

/// Panics unless `got` holds exactly the frames of `sent` (same count, order and lengths),
/// each as the wire carried it ([`is_wire_prefix`]: a transport checksum left to offload in
/// the sender's capture is filled in the copy).
pub fn assert_same_as_wire(got: &[Vec<u8>], sent: &[Vec<u8>], what: &str) {
    assert_eq!(got.len(), sent.len(), "{what}: frame count");
    for (i, (g, s)) in got.iter().zip(sent).enumerate() {
        assert!(
            g.len() == s.len() && is_wire_prefix(g, s),
            "{what}: frame {i} differs\n got: {g:?}\nsent: {s:?}"
        );
    }
}

/// For a frame holding IPv4 + TCP (a copy of a wire segment, whole or cut): the IP total
/// length its header claims, the TCP payload length that implies, and the TCP source port.
pub fn ipv4_tcp_claim(frame: &[u8]) -> Option<(usize, usize, u16)> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [8, 0] || ip.len() < 40 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let headers = usize::from(ip[0] & 0x0f) * 4 + usize::from(ip[32] >> 4) * 4;
    let sport = u16::from_be_bytes([ip[20], ip[21]]);
    Some((total, total.checked_sub(headers)?, sport))
}
