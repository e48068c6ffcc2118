//! A reference model of the data path, written from SPEC section 3 and kept deliberately
//! plain: byte offsets read from a slice, every bound checked, no cleverness. The agent never
//! uses it; the differential tests (tests/tests/differential.rs) feed it and the real
//! programs the same random rule sets and frames and require the same answer.
//!
//! Input: the sessions and filters as the API stores them (`mirror_agent::model`), one source
//! interface, a direction and one frame. Output: which session mirrors the frame (or none),
//! which rules matched on the way (their hit counters move), and what the copy holds.

pub mod generate;
pub mod receive;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mirror_agent::model::{Action, Direction, Filter, IpVersion, Protocol, Session};

/// Most sessions one source takes (the data path's per-source list); the agent keeps the
/// best priorities.
pub const SESSIONS_PER_SOURCE: usize = 8;
/// Extension headers the data path walks before it gives up on an IPv6 packet.
pub const IPV6_EXT_HEADERS: usize = 6;
/// Outer IPv4 + UDP + VXLAN: what a copy adds beyond the inner frame on the path.
pub const VXLAN_OVERHEAD: usize = 36;

/// What the rules see of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// (source, destination); `None` for non-first fragments and protocols without ports.
    pub ports: Option<(u16, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// ARP, LLDP, a third VLAN tag...: never a candidate.
    NotIp,
    /// Says it is IP but the headers are short or inconsistent: counted, never mirrored.
    Malformed,
    Ip(Fields),
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad and the pre-standard 0x9100 QinQ outer tag.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const TCP: u8 = 6;
const UDP: u8 = 17;
const FRAGMENT: u8 = 44;

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// The bytes `at..at + len`, if all of them are in the frame.
fn bytes(f: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    f.get(at..at.checked_add(len)?)
}

/// Classifies a frame the way SPEC section 3 describes candidates.
pub fn classify(f: &[u8]) -> Class {
    let Some(mut ethertype) = be16(f, 12) else {
        return Class::NotIp;
    };
    let mut l3 = 14;
    // Up to two tags are parsed to the IP header inside (802.1Q / QinQ).
    for _ in 0..2 {
        if VLAN_TPIDS.contains(&ethertype) {
            let Some(inner) = be16(f, l3 + 2) else {
                return Class::Malformed;
            };
            ethertype = inner;
            l3 += 4;
        }
    }
    let parsed = match ethertype {
        ETH_P_IP => ipv4(f, l3),
        ETH_P_IPV6 => ipv6(f, l3),
        _ => return Class::NotIp,
    };
    parsed.map_or(Class::Malformed, Class::Ip)
}

fn ipv4(f: &[u8], l3: usize) -> Option<Fields> {
    let hdr = bytes(f, l3, 20)?;
    if hdr[0] >> 4 != 4 || hdr[0] & 0x0f < 5 {
        return None;
    }
    let hlen = usize::from(hdr[0] & 0x0f) * 4;
    bytes(f, l3, hlen)?;
    let offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let protocol = hdr[9];
    let src = IpAddr::V4(Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]));
    // Non-first fragments carry no transport header: they match on addresses and protocol.
    let ports = if offset == 0 {
        ports(f, l3 + hlen, protocol)?
    } else {
        None
    };
    Some(Fields {
        src,
        dst,
        protocol,
        ports,
    })
}

fn ipv6(f: &[u8], l3: usize) -> Option<Fields> {
    let hdr = bytes(f, l3, 40)?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&hdr[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let (src, dst) = (addr(8), addr(24));
    let mut next = hdr[6];
    let mut off = l3 + 40;
    for _ in 0..IPV6_EXT_HEADERS {
        let len = match next {
            0 | 43 | 60 | 135 | 139 | 140 => (usize::from(*f.get(off + 1)?) + 1) * 8,
            FRAGMENT => 8,
            51 => (usize::from(*f.get(off + 1)?) + 2) * 4,
            _ => break,
        };
        // An extension header must be whole: one that runs past the packet is malformed.
        let ext = bytes(f, off, len)?;
        if next == FRAGMENT && u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
            // A later fragment: what follows is the fragment's data, not headers. The
            // protocol is the fragment header's next header, and there are no ports.
            return Some(Fields {
                src,
                dst,
                protocol: ext[0],
                ports: None,
            });
        }
        next = ext[0];
        off += len;
    }
    if is_ipv6_ext(next) {
        // A chain longer than the bounded walk: the upper layer is unknown.
        return None;
    }
    Some(Fields {
        src,
        dst,
        protocol: next,
        ports: ports(f, off, next)?,
    })
}

fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// Ports of a TCP or UDP header at `l4`; the header must be whole (20 bytes for TCP, 8 for
/// UDP), else the packet is malformed (outer `None`).
fn ports(f: &[u8], l4: usize, protocol: u8) -> Option<Option<(u16, u16)>> {
    let need = match protocol {
        TCP => 20,
        UDP => 8,
        _ => return Some(None),
    };
    let h = bytes(f, l4, need)?;
    Some(Some((
        u16::from_be_bytes([h[0], h[1]]),
        u16::from_be_bytes([h[2], h[3]]),
    )))
}

/// Whether one rule matches (SPEC 2 and 3: version, protocol, CIDRs, port ranges for TCP/UDP
/// rules when the packet has ports; `-1/-1` is every port, 0 included).
pub fn rule_matches(rule: &mirror_agent::model::FilterRule, p: &Fields) -> bool {
    let version_ok = matches!(
        (rule.ip_version, p.src),
        (IpVersion::V4, IpAddr::V4(_)) | (IpVersion::V6, IpAddr::V6(_))
    );
    let protocol_ok = match rule.protocol {
        Protocol::All => true,
        Protocol::Number(n) => n == p.protocol,
    };
    let in_range = |r: &mirror_agent::model::PortRange, port: u16| {
        r.is_all() || (r.min..=r.max).contains(&port)
    };
    let ports_ok = match (rule.protocol.has_ports(), p.ports) {
        (true, Some((sport, dport))) => {
            in_range(&rule.source_ports, sport) && in_range(&rule.destination_ports, dport)
        }
        _ => true,
    };
    version_ok
        && protocol_ok
        && rule.source_cidr.contains(&p.src)
        && rule.destination_cidr.contains(&p.dst)
        && ports_ok
}

/// The model's answer for one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub class: Class,
    /// The session that mirrors the frame.
    pub session: Option<String>,
    /// Rules that matched, in evaluation order (the first matching rule of each session
    /// tried).
    pub hits: Vec<String>,
    /// The inner frame of the copy: the original frame, cut to the session's snap length.
    pub copy: Option<Vec<u8>>,
    /// The copy was cut.
    pub truncated: bool,
}

/// Bytes of the frame a session's copy keeps: PacketLength, but never more than fits the
/// path (MTU minus the encapsulation).
pub fn snaplen(session: &Session, path_mtu: usize) -> usize {
    let fit = path_mtu - VXLAN_OVERHEAD;
    session.packet_length.map_or(fit, |n| (n as usize).min(fit))
}

/// SPEC section 3: the source's enabled sessions in ascending Priority; in each, the first
/// rule of the direction (ascending rule Priority) that matches decides: accept mirrors and
/// stops, reject (or no match) goes on to the next session.
pub fn decide(
    sessions: &[Session],
    filters: &[Filter],
    source: &str,
    dir: Direction,
    frame: &[u8],
    path_mtu: usize,
) -> Decision {
    let class = classify(frame);
    let mut d = Decision {
        class: class.clone(),
        session: None,
        hits: Vec::new(),
        copy: None,
        truncated: false,
    };
    let Class::Ip(fields) = class else {
        return d;
    };
    let mut mine: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.sources.iter().any(|x| x == source))
        .collect();
    mine.sort_by_key(|s| s.priority);
    mine.truncate(SESSIONS_PER_SOURCE);
    for s in mine.into_iter().filter(|s| s.enabled) {
        let Some(filter) = filters.iter().find(|f| f.id == s.filter_id) else {
            continue;
        };
        let Some(rule) = filter
            .rules_in_order(dir)
            .into_iter()
            .find(|r| rule_matches(r, &fields))
        else {
            continue;
        };
        d.hits.push(rule.id.clone());
        if rule.action == Action::Accept {
            let keep = snaplen(s, path_mtu);
            d.truncated = frame.len() > keep;
            d.copy = Some(frame[..frame.len().min(keep)].to_vec());
            d.session = Some(s.id.clone());
            break;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_agent::model::{FilterRule, RuleSpec};

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4_udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = eth(ETH_P_IP);
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        f.append(&mut ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    fn ipv6_with(next: u8, ext: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6);
        let mut ip = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        ip.extend_from_slice(&[0xfd; 16]);
        ip.extend_from_slice(&[0xfe; 16]);
        f.append(&mut ip);
        f.extend_from_slice(ext);
        f.extend_from_slice(tail);
        f
    }

    fn rule(id: &str, priority: i64, action: &str, ports: Option<&str>) -> FilterRule {
        FilterRule::from_spec(&RuleSpec {
            id,
            direction: "ingress",
            priority,
            action,
            protocol: "UDP",
            destination_ports: ports,
            ..Default::default()
        })
        .expect("rule")
    }

    #[test]
    fn udp_ports_are_read_and_short_udp_is_malformed() {
        let f = ipv4_udp(0, 53);
        let Class::Ip(p) = classify(&f) else {
            panic!("{:?}", classify(&f))
        };
        assert_eq!(p.ports, Some((0, 53)));
        assert_eq!(classify(&f[..f.len() - 1]), Class::Malformed);
        assert_eq!(classify(&eth(0x0806)), Class::NotIp);
    }

    #[test]
    fn ipv6_later_fragment_stops_the_walk_and_an_overlong_header_is_malformed() {
        // Fragment header, offset 1 (8 bytes), next header: destination options (60).
        let frag = [60, 0, 0, 8, 0, 0, 0, 1];
        let Class::Ip(p) = classify(&ipv6_with(FRAGMENT, &frag, &[])) else {
            panic!("a later fragment is IP")
        };
        assert_eq!((p.protocol, p.ports), (60, None));
        // Destination options claiming 16 bytes with 8 present.
        let opts = [UDP, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(classify(&ipv6_with(60, &opts, &[])), Class::Malformed);
        // Seven destination options: past the bounded walk.
        let seven: Vec<u8> = (0..7).flat_map(|_| [60, 0, 0, 0, 0, 0, 0, 0]).collect();
        assert_eq!(classify(&ipv6_with(60, &seven, &[])), Class::Malformed);
    }

    #[test]
    fn first_matching_rule_decides_and_reject_falls_through() {
        let filters = vec![
            Filter {
                id: "tmf-a".into(),
                rules: vec![
                    rule("tmr-a2", 2, "accept", None),
                    rule("tmr-a1", 1, "reject", Some("53/53")),
                ],
            },
            Filter {
                id: "tmf-b".into(),
                rules: vec![rule("tmr-b1", 1, "accept", Some("1/53"))],
            },
        ];
        let session = |id: &str, priority, filter: &str, packet_length| Session {
            id: id.into(),
            priority,
            vni: 1,
            packet_length,
            enabled: true,
            filter_id: filter.into(),
            target_id: "tmt-x".into(),
            sources: vec!["eth0".into()],
            budget: Default::default(),
        };
        let sessions = vec![
            session("tms-b", 2, "tmf-b", Some(64)),
            session("tms-a", 1, "tmf-a", None),
        ];
        let f = ipv4_udp(1, 53);
        let d = decide(&sessions, &filters, "eth0", Direction::Ingress, &f, 1500);
        assert_eq!(d.session.as_deref(), Some("tms-b"));
        assert_eq!(d.hits, ["tmr-a1", "tmr-b1"]);
        assert_eq!(d.copy.as_deref(), Some(&f[..]));
        let d = decide(
            &sessions,
            &filters,
            "eth0",
            Direction::Ingress,
            &ipv4_udp(1, 54),
            1500,
        );
        assert_eq!(d.session.as_deref(), Some("tms-a"));
        assert_eq!(d.hits, ["tmr-a2"]);
        let d = decide(&sessions, &filters, "eth0", Direction::Egress, &f, 1500);
        assert_eq!((d.session, d.hits.len()), (None, 0));
    }

    #[test]
    fn the_copy_is_cut_to_packet_length_and_the_path() {
        let s = Session {
            id: "tms-x".into(),
            priority: 1,
            vni: 1,
            packet_length: Some(9000),
            enabled: true,
            filter_id: String::new(),
            target_id: String::new(),
            sources: Vec::new(),
            budget: Default::default(),
        };
        assert_eq!(snaplen(&s, 1500), 1464);
        let s = Session {
            packet_length: Some(64),
            ..s
        };
        assert_eq!(snaplen(&s, 1500), 64);
    }
}
