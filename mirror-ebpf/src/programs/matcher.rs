//! Filter rule evaluation (SPEC section 3): one rule against one parsed packet.

use mirror_ebpf::{RULE_ANY_PROTOCOL, RULE_MATCH_PORTS, Rule};

use super::parse::Packet;

#[inline(always)]
fn cidr_match(addr: &[u32; 4], net: &[u32; 4], mask: &[u32; 4]) -> bool {
    // Branch-free over the four words: IPv4 rules have zero masks in words 1..3.
    ((addr[0] & mask[0]) ^ net[0])
        | ((addr[1] & mask[1]) ^ net[1])
        | ((addr[2] & mask[2]) ^ net[2])
        | ((addr[3] & mask[3]) ^ net[3])
        == 0
}

#[inline(always)]
pub fn rule_matches(rule: &Rule, pkt: &Packet) -> bool {
    if rule.ip_version != pkt.ip_version {
        return false;
    }
    if rule.flags & RULE_ANY_PROTOCOL == 0 && rule.protocol != pkt.protocol {
        return false;
    }
    if !cidr_match(&pkt.src, &rule.src_addr, &rule.src_mask)
        || !cidr_match(&pkt.dst, &rule.dst_addr, &rule.dst_mask)
    {
        return false;
    }
    // Non-first fragments carry no ports: they match on addresses and protocol only.
    if rule.flags & RULE_MATCH_PORTS != 0 && pkt.has_ports {
        if pkt.src_port < rule.src_port_min || pkt.src_port > rule.src_port_max {
            return false;
        }
        if pkt.dst_port < rule.dst_port_min || pkt.dst_port > rule.dst_port_max {
            return false;
        }
    }
    true
}
