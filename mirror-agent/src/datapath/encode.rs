//! Model objects → map values of the shared ABI (`mirror_ebpf`).

use std::net::IpAddr;

use ipnet::IpNet;
use mirror_ebpf::{
    ACTION_ACCEPT, ACTION_REJECT, FilterConfig, RULE_ANY_PROTOCOL, RULE_MATCH_PORTS, Rule,
    SESSION_ENABLED, SESSION_REMOTE_IPV6, SESSION_SAMPLE_FLOW, SessionConfig,
};

use crate::model::{
    Action, Budget, Direction, Filter, FilterRule, IpVersion, PortRange, Protocol, SampleMode,
    Session, Target,
};

/// Nanoseconds of budget one unit (a packet, a bit) uses at `per_second`, in the data
/// path's fixed point (`BUDGET_COST_SHIFT`). 0: no budget.
pub fn budget_cost(per_second: Option<u64>) -> u64 {
    match per_second {
        Some(rate) if rate > 0 => {
            ((1_000_000_000u128 << mirror_ebpf::BUDGET_COST_SHIFT) / u128::from(rate)).max(1) as u64
        }
        _ => 0,
    }
}

/// Largest `SessionConfig::bit_cost` (see `encode_budget`).
const MAX_BIT_COST: u64 = 1 << 40;

/// The budget and sampling fields of a session's map value.
fn encode_budget(b: &Budget, cfg: &mut SessionConfig) {
    cfg.packet_cost = budget_cost(b.max_packets_per_second);
    // The data path multiplies the bits of a packet's copies (under 2^24 even for a BIG TCP
    // super-packet's) by this cost in 64 bits: kept at most 2^40 so the product cannot
    // overflow. That is a floor of 60 bit/s, less than one small copy a second.
    cfg.bit_cost = budget_cost(b.max_bits_per_second).min(MAX_BIT_COST);
    cfg.sample_one_in = b.sample_one_in.unwrap_or(1);
    if b.sample_mode == SampleMode::Flow {
        cfg.flags |= SESSION_SAMPLE_FLOW;
    }
}

/// Address and mask as the raw network-order words the program compares.
fn cidr_words(net: &IpNet) -> ([u32; 4], [u32; 4]) {
    let mut addr = [0u32; 4];
    let mut mask = [0u32; 4];
    match net {
        IpNet::V4(n) => {
            addr[0] = u32::from_ne_bytes(n.network().octets());
            mask[0] = u32::from_ne_bytes(n.netmask().octets());
        }
        IpNet::V6(n) => {
            let a = n.network().octets();
            let m = n.netmask().octets();
            for i in 0..4 {
                addr[i] = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
                mask[i] = u32::from_ne_bytes([m[4 * i], m[4 * i + 1], m[4 * i + 2], m[4 * i + 3]]);
            }
        }
    }
    (addr, mask)
}

/// A range as the program compares it: `-1/-1` (all) is every port the packet can carry,
/// 0 included (PortRange::ALL is 1-65535 for the API's display, not a restriction).
fn port_bounds(range: &PortRange) -> (u16, u16) {
    if range.is_all() {
        (0, u16::MAX)
    } else {
        (range.min, range.max)
    }
}

pub fn encode_rule(rule: &FilterRule, stats_slot: u32) -> Rule {
    let (src_addr, src_mask) = cidr_words(&rule.source_cidr);
    let (dst_addr, dst_mask) = cidr_words(&rule.destination_cidr);
    let mut flags = 0;
    let protocol = match rule.protocol {
        Protocol::All => {
            flags |= RULE_ANY_PROTOCOL;
            0
        }
        Protocol::Number(n) => n,
    };
    if rule.protocol.has_ports() && !(rule.source_ports.is_all() && rule.destination_ports.is_all())
    {
        flags |= RULE_MATCH_PORTS;
    }
    let (src_port_min, src_port_max) = port_bounds(&rule.source_ports);
    let (dst_port_min, dst_port_max) = port_bounds(&rule.destination_ports);
    Rule {
        action: match rule.action {
            Action::Accept => ACTION_ACCEPT,
            Action::Reject => ACTION_REJECT,
        },
        protocol,
        ip_version: match rule.ip_version {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        },
        flags,
        src_port_min,
        src_port_max,
        dst_port_min,
        dst_port_max,
        stats_slot,
        src_addr,
        src_mask,
        dst_addr,
        dst_mask,
    }
}

/// Encodes a filter; `stats_slot` gives each rule's counter slot by rule id.
pub fn encode_filter(filter: &Filter, stats_slot: impl Fn(&str) -> u32) -> FilterConfig {
    let mut cfg = FilterConfig::EMPTY;
    for dir in Direction::ALL {
        for rule in filter.rules_in_order(dir) {
            // The quota (validated against MAX_RULES_PER_DIRECTION) keeps lists within it.
            if !cfg.push(dir.index(), encode_rule(rule, stats_slot(&rule.id))) {
                break;
            }
        }
    }
    cfg
}

/// The fast path toward a target: the uplink and the outer headers' addresses, resolved
/// from the kernel's routes and neighbours (`nexthop.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPath {
    pub uplink_ifindex: u32,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: std::net::Ipv4Addr,
}

pub struct SessionPlacement {
    pub filter_slot: u32,
    pub tunnel_ifindex: u32,
    pub snaplen: u32,
    /// 0: no segmentation device.
    pub segment_ifindex: u32,
    /// None: the tunnel device carries the copies.
    pub fast: Option<FastPath>,
}

pub fn encode_session(session: &Session, target: &Target, at: SessionPlacement) -> SessionConfig {
    let mut flags = 0;
    if session.enabled {
        flags |= SESSION_ENABLED;
    }
    let (remote_ipv4, remote_ipv6) = match target.destination_ip {
        IpAddr::V4(a) => (u32::from(a), [0; 4]),
        IpAddr::V6(a) => {
            flags |= SESSION_REMOTE_IPV6;
            let o = a.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            (0, w)
        }
    };
    let mut cfg = SessionConfig {
        flags,
        vni: session.vni,
        snaplen: at.snaplen,
        filter_slot: at.filter_slot,
        tunnel_ifindex: at.tunnel_ifindex,
        remote_ipv4,
        remote_ipv6,
        ttl: 64,
        port_be: target.destination_port.to_be(),
        segment_ifindex: at.segment_ifindex,
        // The fast path's template and the budget are filled in below and by the next-hop
        // resolution.
        ..super::maps::zeroed_session()
    };
    encode_budget(&session.budget, &mut cfg);
    // What the wire carries beyond the inner frame: outer Ethernet + the VXLAN overhead.
    cfg.copy_overhead = 14
        + match target.destination_ip {
            IpAddr::V4(_) => mirror_ebpf::VXLAN_OVERHEAD_IPV4,
            IpAddr::V6(_) => mirror_ebpf::VXLAN_OVERHEAD_IPV6,
        };
    if let (Some(fast), IpAddr::V4(dst)) = (at.fast, target.destination_ip) {
        cfg.uplink_ifindex = fast.uplink_ifindex;
        cfg.eth_addrs[..6].copy_from_slice(&fast.eth_dst);
        cfg.eth_addrs[6..].copy_from_slice(&fast.eth_src);
        cfg.outer_src = u32::from_ne_bytes(fast.src.octets());
        cfg.outer_dst = u32::from_ne_bytes(dst.octets());
    }
    cfg
}

#[cfg(test)]
mod tests {
    use mirror_ebpf::{PortSet, RulePorts};

    use super::*;
    use crate::model::RuleSpec;

    #[test]
    fn budget_costs_in_fixed_point() {
        assert_eq!(budget_cost(None), 0);
        // 10 k packets/s: 100 µs each.
        assert_eq!(
            budget_cost(Some(10_000)) >> mirror_ebpf::BUDGET_COST_SHIFT,
            100_000
        );
        // 10 Gbit/s: 0.1 ns per bit, kept to the fixed point's precision.
        assert_eq!(budget_cost(Some(10_000_000_000)), 6553);
    }

    #[test]
    fn ipv4_cidr_words_are_network_order() {
        let (a, m) = cidr_words(&"198.18.1.0/24".parse().expect("cidr"));
        assert_eq!(a[0].to_ne_bytes(), [198, 18, 1, 0]);
        assert_eq!(m[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(&a[1..], &[0, 0, 0]);
    }

    #[test]
    fn ports_only_flagged_when_restricted() {
        let rule = FilterRule::from_spec(&RuleSpec {
            id: "tmr-1",
            direction: "egress",
            priority: 3,
            action: "drop",
            protocol: "UDP",
            destination_ports: Some("53/53"),
            ..Default::default()
        })
        .expect("rule");
        let r = encode_rule(&rule, 9);
        assert_eq!(r.flags, RULE_MATCH_PORTS);
        assert_eq!((r.dst_port_min, r.dst_port_max), (53, 53));
        // The open side takes every port, 0 included (a packet from port 0 is legal).
        assert_eq!((r.src_port_min, r.src_port_max), (0, 65535));
        assert_eq!(r.action, ACTION_REJECT);
        assert_eq!(r.stats_slot, 9);
    }

    fn rule(id: &str, direction: &str, protocol: &str, dst: Option<&str>) -> FilterRule {
        FilterRule::from_spec(&RuleSpec {
            id,
            direction,
            priority: 1,
            action: "accept",
            protocol,
            destination_ports: dst,
            ..Default::default()
        })
        .expect("rule")
    }

    /// The prefilter may only ever let more packets through to the walk, never fewer: every
    /// port a rule takes has its bit, per direction and side.
    #[test]
    fn port_sets_hold_every_port_the_rules_take() {
        let filter = Filter {
            id: "tmf-1".into(),
            rules: vec![
                rule("tmr-1", "ingress", "UDP", Some("53/53")),
                rule("tmr-2", "ingress", "TCP", Some("8000/8010")),
                rule("tmr-3", "egress", "TCP", Some("443/443")),
            ],
        };
        let cfg = encode_filter(&filter, |_| 0);
        let ingress = &cfg.ports[Direction::Ingress.index()];
        let egress = &cfg.ports[Direction::Egress.index()];
        for port in [53, 8000, 8005, 8010] {
            assert!(ingress.dst.contains(port), "{port}");
        }
        // Open source side: every source port.
        assert!((0..=u16::MAX).all(|p| ingress.src.contains(p)));
        assert!(!ingress.dst.contains(54) && !ingress.dst.contains(7999));
        assert!(!ingress.dst.contains(443), "egress rules stay in egress");
        assert!(egress.dst.contains(443) && !egress.dst.contains(53));
        // Ports PORT_SET_BITS apart share a bit: a superset, which the walk then sorts out.
        assert!(ingress.dst.contains(53 + mirror_ebpf::PORT_SET_BITS as u16));
        assert_eq!(cfg.n_rules, [2, 1]);
    }

    #[test]
    fn port_sets_are_full_for_rules_without_ports_and_wide_ranges() {
        let any = encode_filter(
            &Filter {
                id: "tmf-1".into(),
                rules: vec![rule("tmr-1", "ingress", "ICMP", None)],
            },
            |_| 0,
        );
        assert_eq!(any.ports[Direction::Ingress.index()].dst, PortSet::ALL);
        assert_eq!(any.ports[Direction::Egress.index()], RulePorts::EMPTY);
        let wide = encode_filter(
            &Filter {
                id: "tmf-2".into(),
                rules: vec![rule("tmr-1", "ingress", "UDP", Some("1000/2023"))],
            },
            |_| 0,
        );
        assert_eq!(wide.ports[Direction::Ingress.index()].dst, PortSet::ALL);
        let mut one = PortSet::EMPTY;
        one.insert_range(65535, 65535);
        assert!(one.contains(65535) && !one.contains(65534));
        one.insert_range(10, 9);
        assert!(!one.contains(10), "an empty range adds nothing");
    }
}
