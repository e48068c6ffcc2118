//! Test packets: a builder (Ethernet, VLAN tags, IPv4/IPv6 with extension headers and
//! fragments, TCP/UDP/ICMP) and the readers tests use on captured frames, both on etherparse.
//! Checksums are filled where the kernel would look at them on a real path (IPv4 header); the
//! rest of the bytes are exactly what the caller asked for. IPv6 extension headers stay raw
//! bytes: tests build malformed chains on purpose, which etherparse's types refuse.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv6Header, LaxNetSlice,
    LaxSlicedPacket, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

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
                let mut h = TcpHeader::new(sport, dport, 1, 65535);
                h.psh = true;
                h.ack = true;
                h.to_bytes().to_vec()
            }
            L4::Udp { sport, dport } => UdpHeader {
                source_port: sport,
                destination_port: dport,
                length: (8 + payload_len) as u16,
                checksum: 0,
            }
            .to_bytes()
            .to_vec(),
            // Echo requests, id 1 and sequence 1, checksum left 0.
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
        let ip_type = match self.ip {
            Ip::V4 { .. } => EtherType::IPV4,
            Ip::V6 { .. } => EtherType::IPV6,
        };
        // Each tag's TPID is the ethertype field of what comes before it.
        let tpids: Vec<EtherType> = self
            .vlans
            .iter()
            .map(|(tpid, _)| EtherType(*tpid))
            .chain([ip_type])
            .collect();
        let mut out = Ethernet2Header {
            source: [0x02, 0, 0, 0, 0, 0x01],
            destination: [0x02, 0, 0, 0, 0, 0x02],
            ether_type: tpids[0],
        }
        .to_bytes()
        .to_vec();
        for (i, (_, tci)) in self.vlans.iter().enumerate() {
            let tag = SingleVlanHeader {
                pcp: VlanPcp::try_new((tci >> 13) as u8).expect("3-bit PCP"),
                drop_eligible_indicator: tci & 0x1000 != 0,
                vlan_id: VlanId::try_new(tci & 0x0fff).expect("12-bit VLAN id"),
                ether_type: tpids[i + 1],
            };
            out.extend_from_slice(&tag.to_bytes());
        }
        let payload: Vec<u8> = (0..self.payload_len).map(|i| i as u8).collect();
        let mut l4 = self.l4.header(self.payload_len);
        l4.extend_from_slice(&payload);
        let protocol = IpNumber(self.l4.protocol());
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                frag_offset,
                more_fragments,
                options,
            } => {
                let mut h = Ipv4Header::new(
                    (options.len() + l4.len()) as u16,
                    64,
                    protocol,
                    src.octets(),
                    dst.octets(),
                )
                .expect("IPv4 payload fits");
                h.options = options[..]
                    .try_into()
                    .expect("IPv4 options: a multiple of 4, at most 40");
                // The same bytes whatever the crate's defaults: total length of header and
                // payload, a fixed id, no DF.
                h.total_len = (h.header_len() + l4.len()) as u16;
                h.identification = 0x1234;
                h.dont_fragment = false;
                h.more_fragments = *more_fragments;
                h.fragment_offset =
                    IpFragOffset::try_new(*frag_offset).expect("13-bit fragment offset");
                h.header_checksum = h.calc_header_checksum();
                out.extend_from_slice(&h.to_bytes());
            }
            Ip::V6 { src, dst, ext } => {
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
                let h = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: (exts.len() + l4.len()) as u16,
                    next_header: IpNumber(first),
                    hop_limit: 64,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                out.extend_from_slice(&h.to_bytes());
                out.extend_from_slice(&exts);
            }
        }
        out.extend_from_slice(&l4);
        out
    }
}

/// The Internet checksum of `bytes` (RFC 1071), as a number to write big-endian: for headers
/// built by hand on purpose (malformed ones included), which etherparse's types refuse.
pub fn checksum(bytes: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(bytes)
        .ones_complement()
        .to_be()
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // 198.18.0.1 → 198.18.0.2, UDP, total length 50, DF, TTL 64: checksum 0xae93.
        let mut h = [
            0x45, 0, 0, 0x32, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        assert_eq!(super::checksum(&h), 0xae93);
        h[10..12].copy_from_slice(&0xae93u16.to_be_bytes());
        assert_eq!(super::checksum(&h), 0);
    }
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

/// The IP payload of a frame (up to three VLAN tags, IPv4 or IPv6 with its extension headers),
/// as far as it was captured: its offset in the frame, its protocol, and whether it is a
/// later fragment (no transport header of its own).
fn ip_payload(frame: &[u8]) -> Option<(usize, u8, bool, u8)> {
    let packet = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let (version, payload) = match packet.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => (4, ip.payload()),
        LaxNetSlice::Ipv6(ip) => (6, ip.payload()),
        LaxNetSlice::Arp(_) => return None,
    };
    let offset = payload.payload.as_ptr() as usize - frame.as_ptr() as usize;
    Some((offset, payload.ip_number.0, payload.fragmented, version))
}

/// Summarises an Ethernet frame carrying IPv4 or IPv6; `None` for anything else. Only the
/// first bytes of the transport header are needed, so truncated copies work too.
pub fn summarize(frame: &[u8]) -> Option<Summary> {
    let (l4, protocol, _, ip_version) = ip_payload(frame)?;
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

/// Offset of a frame's TCP or UDP checksum field, if the frame holds one (a later fragment
/// has no transport header).
pub fn l4_checksum_at(frame: &[u8]) -> Option<usize> {
    match ip_payload(frame)? {
        (_, _, true, _) => None,
        (l4, 6, _, _) => Some(l4 + 16),
        (l4, 17, _, _) => Some(l4 + 6),
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
    let packet = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let Some(LaxNetSlice::Ipv4(ip)) = packet.net.as_ref() else {
        return None;
    };
    let header = ip.header();
    if header.protocol() != IpNumber::TCP || !packet.link_exts.is_empty() {
        return None;
    }
    let tcp = ip.payload().payload;
    if tcp.len() < 20 {
        return None;
    }
    let total = usize::from(header.total_len());
    let headers = usize::from(header.ihl()) * 4 + usize::from(tcp[12] >> 4) * 4;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    Some((total, total.checked_sub(headers)?, sport))
}
