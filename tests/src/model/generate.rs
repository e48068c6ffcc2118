//! Random inputs for the differential tests: rule sets within the quotas, frames biased to
//! the rules' edges, and structure-aware malformed frames. Everything comes from one seeded
//! generator, so a seed replays a whole run (`MIRROR_FUZZ_SEED`).

use std::net::{Ipv4Addr, Ipv6Addr};

use mirror_agent::{
    config::Objects,
    model::{Filter, FilterRule, RuleSpec, Session, Target},
};

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for the `index`-th item of a run: items replay on their own.
    pub fn for_item(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f));
        r.u64();
        r
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    /// lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// The run's seed: `MIRROR_FUZZ_SEED` replays one, otherwise the clock picks it.
pub fn seed_from_env() -> u64 {
    match std::env::var("MIRROR_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("MIRROR_FUZZ_SEED={s:?}: {e}"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// A count from the environment, or `default`.
pub fn count_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One random configuration of the source side.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub objects: Objects,
    /// Addresses the rules were built around: frames are drawn near them.
    pub pool4: Vec<Ipv4Addr>,
    pub pool6: Vec<Ipv6Addr>,
}

/// Quota of rules per direction of a filter (the agent's default).
pub const RULES_PER_DIRECTION: usize = 10;

const PROTOCOLS: [&str; 8] = ["ALL", "TCP", "UDP", "ICMP", "ICMPv6", "TCP", "UDP", "-1"];

fn port_range(rng: &mut Rng) -> Option<String> {
    let edge = [1u16, 2, 53, 80, 1023, 1024, 65534, 65535];
    let port = |rng: &mut Rng| {
        if rng.chance(50) {
            *rng.pick(&edge)
        } else {
            rng.range(1, 65535) as u16
        }
    };
    match rng.below(6) {
        0 => None,
        1 => Some("-1/-1".into()),
        2 => Some(port(rng).to_string()),
        _ => {
            let (a, b) = (port(rng), port(rng));
            let (lo, hi) = (a.min(b), a.max(b));
            let sep = if rng.chance(50) { "/" } else { "-" };
            Some(format!("{lo}{sep}{hi}"))
        }
    }
}

fn cidr(rng: &mut Rng, v6: bool, pool4: &[Ipv4Addr], pool6: &[Ipv6Addr]) -> Option<String> {
    if rng.chance(30) {
        return None;
    }
    Some(if v6 {
        let len = match rng.below(3) {
            0 => *rng.pick(&[0u64, 1, 63, 64, 65, 127, 128]),
            _ => rng.range(0, 128),
        };
        format!("{}/{len}", rng.pick(pool6))
    } else {
        let len = match rng.below(3) {
            0 => *rng.pick(&[0u64, 1, 8, 16, 24, 31, 32]),
            _ => rng.range(0, 32),
        };
        format!("{}/{len}", rng.pick(pool4))
    })
}

/// A destination port range a few ports wide at most, and a source side open or as narrow:
/// the rules of a filter made only of these leave most ports out of the programs' port
/// prefilter (`PortSet`), which wide ranges fill.
fn narrow_ports(rng: &mut Rng) -> (Option<String>, Option<String>) {
    let narrow = |rng: &mut Rng| {
        let lo = if rng.chance(50) {
            *rng.pick(&[1u16, 53, 80, 1023, 1024, 65535])
        } else {
            rng.range(1, 65535) as u16
        };
        let hi = lo.saturating_add(rng.below(8) as u16);
        format!("{lo}/{hi}")
    };
    let src = if rng.chance(50) {
        None
    } else {
        Some(narrow(rng))
    };
    (src, Some(narrow(rng)))
}

fn rule(
    rng: &mut Rng,
    id: &str,
    direction: &str,
    priority: i64,
    narrow: bool,
    pool4: &[Ipv4Addr],
    pool6: &[Ipv6Addr],
) -> FilterRule {
    loop {
        let v6 = rng.chance(40);
        let protocol = if narrow {
            rng.pick(&["TCP", "UDP"]).to_string()
        } else if rng.chance(15) {
            rng.pick(&[0u8, 4, 41, 47, 50, 58, 132, 255, 1, 6, 17])
                .to_string()
        } else {
            rng.pick(&PROTOCOLS).to_string()
        };
        let with_ports = matches!(protocol.as_str(), "TCP" | "UDP" | "6" | "17");
        let (sp, dp) = if narrow {
            narrow_ports(rng)
        } else if with_ports {
            (port_range(rng), port_range(rng))
        } else {
            (None, None)
        };
        let (src, dst) = (cidr(rng, v6, pool4, pool6), cidr(rng, v6, pool4, pool6));
        let action = *rng.pick(&["accept", "accept", "reject", "drop"]);
        let spec = RuleSpec {
            id,
            direction,
            priority,
            action,
            protocol: &protocol,
            ip_version: Some(if v6 { "IPv6" } else { "IPv4" }),
            source_cidr: src.as_deref(),
            destination_cidr: dst.as_deref(),
            source_ports: sp.as_deref(),
            destination_ports: dp.as_deref(),
        };
        // The API's own validation decides what a rule is; retry the rare refusal.
        if let Ok(r) = FilterRule::from_spec(&spec) {
            return r;
        }
    }
}

/// Distinct priorities in 1..=max, biased to the ends.
fn priorities(rng: &mut Rng, n: usize, max: u64) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = if rng.chance(20) {
            *rng.pick(&[1, 2, max - 1, max])
        } else {
            rng.range(1, max.min(64))
        } as u16;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// A rule set for the source `source` whose copies go to `target` (`tag` keeps the ids of
/// consecutive sets apart). Up to 8 sessions on the source (some disabled, some sharing a
/// filter), each filter with up to the quota of rules per direction.
pub fn rule_set(rng: &mut Rng, tag: u64, source: &str, target: &Target) -> RuleSet {
    let pool4: Vec<Ipv4Addr> = (0..rng.range(1, 4))
        .map(|_| Ipv4Addr::from(rng.u64() as u32))
        .collect();
    let pool6: Vec<Ipv6Addr> = (0..rng.range(1, 4))
        .map(|_| Ipv6Addr::from((u128::from(rng.u64()) << 64) | u128::from(rng.u64())))
        .collect();
    let n_filters = rng.range(1, 4) as usize;
    let filters: Vec<Filter> = (0..n_filters)
        .map(|f| {
            let mut rules = Vec::new();
            let narrow = rng.chance(30);
            for dir in ["ingress", "egress"] {
                let n = match rng.below(5) {
                    0 => RULES_PER_DIRECTION,
                    1 => 0,
                    _ => rng.range(1, RULES_PER_DIRECTION as u64) as usize,
                };
                for (i, p) in priorities(rng, n, 65535).into_iter().enumerate() {
                    let id = format!("tmr-{tag}-{f}-{dir}-{i}");
                    rules.push(rule(rng, &id, dir, i64::from(p), narrow, &pool4, &pool6));
                }
            }
            Filter {
                id: format!("tmf-{tag}-{f}"),
                rules,
            }
        })
        .collect();
    let n_sessions = rng.range(1, 8) as usize;
    let sessions = priorities(rng, n_sessions, 32766)
        .into_iter()
        .enumerate()
        .map(|(i, priority)| Session {
            id: format!("tms-{tag}-{i}"),
            priority,
            vni: rng.below(1 << 24) as u32,
            packet_length: match rng.below(4) {
                0 => None,
                1 => Some(*rng.pick(&[64, 65, 128, 1463, 1464, 1465, 9000])),
                _ => Some(rng.range(64, 1600) as u32),
            },
            enabled: rng.chance(85),
            filter_id: filters[rng.below(n_filters as u64) as usize].id.clone(),
            target_id: target.id.clone(),
            sources: vec![source.to_string()],
            // Budgets and sampling have fixtures and end-to-end tests of their own.
            budget: Default::default(),
        })
        .collect();
    RuleSet {
        objects: Objects {
            targets: vec![target.clone()],
            filters,
            sessions,
            ..Objects::default()
        },
        pool4,
        pool6,
    }
}

// ---------------------------------------------------------------------------------------
// Frames

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// Ethernet header with `tags` (TPID, VLAN id) and the final ethertype.
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// IPv4 header (checksum filled) for `payload_len` bytes after it.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    frag: u16,
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let hlen = 20 + options.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let sum = crate::packets::checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload_len as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// UDP header with the length field covering `payload_len`.
pub fn udp_header(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

fn tcp_header(rng: &mut Rng, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = rng.bytes(20);
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h
}

/// An address near a rule's edges: a pool address with some low bits set to all-zeros or
/// all-ones (a prefix's first and last address), one step outside, or anything.
fn near4(rng: &mut Rng, pool: &[Ipv4Addr]) -> Ipv4Addr {
    if rng.chance(10) {
        return Ipv4Addr::from(rng.u64() as u32);
    }
    let base = u32::from(*rng.pick(pool));
    let bits = rng.range(0, 32) as u32;
    let low = if bits == 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let a = match rng.below(5) {
        0 => base & !low,
        1 => base | low,
        2 => (base & !low).wrapping_sub(1),
        3 => (base | low).wrapping_add(1),
        _ => (base & !low) | (rng.u64() as u32 & low),
    };
    Ipv4Addr::from(a)
}

fn near6(rng: &mut Rng, pool: &[Ipv6Addr]) -> Ipv6Addr {
    if rng.chance(10) {
        return Ipv6Addr::from((u128::from(rng.u64()) << 64) | u128::from(rng.u64()));
    }
    let base = u128::from(*rng.pick(pool));
    let bits = rng.range(0, 128) as u32;
    let low = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let noise = (u128::from(rng.u64()) << 64) | u128::from(rng.u64());
    let a = match rng.below(5) {
        0 => base & !low,
        1 => base | low,
        2 => (base & !low).wrapping_sub(1),
        3 => (base | low).wrapping_add(1),
        _ => (base & !low) | (noise & low),
    };
    Ipv6Addr::from(a)
}

/// A port at the edges of the rule set's ranges, or anything.
fn near_port(rng: &mut Rng, set: &RuleSet) -> u16 {
    let rules: Vec<&FilterRule> = set.objects.filters.iter().flat_map(|f| &f.rules).collect();
    if rules.is_empty() || rng.chance(15) {
        let any = rng.u64() as u16;
        return *rng.pick(&[0, 1, 65535, any]);
    }
    let r = rng.pick(&rules);
    let range = if rng.chance(50) {
        r.source_ports
    } else {
        r.destination_ports
    };
    match rng.below(6) {
        0 => range.min,
        1 => range.max,
        2 => range.min.wrapping_sub(1),
        3 => range.max.wrapping_add(1),
        // Shares the range's first bit in the programs' port prefilter (`PortSet`) without
        // being in the range (unless the range is that wide).
        4 => range.min.wrapping_add(mirror_ebpf::PORT_SET_BITS as u16),
        _ => 0,
    }
}

/// An IPv6 extension header of type `kind` followed by `next`; a fragment header is first
/// (offset 0) or later, with or without the M flag.
fn ext_header(rng: &mut Rng, kind: u8, next: u8) -> Vec<u8> {
    match kind {
        44 => {
            let offset: u16 = if rng.chance(50) {
                0
            } else {
                rng.range(1, 8191) as u16
            };
            let m = u16::from(rng.chance(50));
            let mut h = vec![next, 0];
            h.extend_from_slice(&((offset << 3) | m).to_be_bytes());
            h.extend_from_slice(&rng.bytes(4));
            h
        }
        51 => {
            // Authentication header: (len + 2) * 4 bytes.
            let len = rng.range(1, 4) as u8;
            let mut h = vec![next, len];
            h.extend_from_slice(&rng.bytes((usize::from(len) + 2) * 4 - 2));
            h
        }
        _ => {
            let len = if rng.chance(70) {
                0
            } else {
                rng.range(1, 3) as u8
            };
            let mut h = vec![next, len];
            h.extend_from_slice(&rng.bytes((usize::from(len) + 1) * 8 - 2));
            h
        }
    }
}

const EXT_KINDS: [u8; 8] = [0, 43, 44, 51, 60, 135, 139, 140];

/// One frame for the source programs: mostly well-formed traffic around the rule set's
/// edges, some of it deliberately broken. Never shorter than 15 bytes (the skb test run
/// refuses a bare Ethernet header).
pub fn source_frame(rng: &mut Rng, set: &RuleSet) -> Vec<u8> {
    if rng.chance(3) {
        // Not IP: ARP, LLDP, a random ethertype, or three tags deep.
        let any = rng.u64() as u16;
        let ethertype = *rng.pick(&[0x0806u16, 0x88cc, any, 0x8100]);
        let tags: Vec<(u16, u16)> = if ethertype == 0x8100 {
            vec![(0x88a8, 1), (0x8100, 2)]
        } else {
            Vec::new()
        };
        let mut f = ethernet(&tags, ethertype);
        let n = rng.range(28, 64) as usize;
        f.extend_from_slice(&rng.bytes(n));
        return f;
    }
    let tags: Vec<(u16, u16)> = match rng.below(10) {
        0 => vec![(*rng.pick(&TPIDS), rng.below(4096) as u16)],
        1 => vec![
            (*rng.pick(&TPIDS), rng.below(4096) as u16),
            (*rng.pick(&TPIDS), rng.below(4096) as u16),
        ],
        _ => Vec::new(),
    };
    let v6 = rng.chance(40);
    let protocol = match rng.below(10) {
        0..=3 => 6,
        4..=6 => 17,
        7 => {
            if v6 {
                58
            } else {
                1
            }
        }
        _ => *rng.pick(&[0u8, 2, 47, 50, 58, 59, 132, 255, 1]),
    };
    let (sport, dport) = (near_port(rng, set), near_port(rng, set));
    let payload_len = match rng.below(20) {
        0 => rng.range(1400, 3000) as usize,
        1..=3 => rng.range(100, 1500) as usize,
        _ => rng.range(0, 64) as usize,
    };
    let mut l4 = match protocol {
        6 => tcp_header(rng, sport, dport),
        17 => udp_header(sport, dport, payload_len),
        _ => Vec::new(),
    };
    l4.extend_from_slice(&rng.bytes(payload_len));
    let mut f;
    let l3;
    if v6 {
        // Extension chains of every length up to past the walk's bound.
        let n_ext = match rng.below(4) {
            0 | 1 => 0,
            2 => rng.range(1, 3),
            _ => rng.range(4, 8),
        } as usize;
        let kinds: Vec<u8> = (0..n_ext).map(|_| *rng.pick(&EXT_KINDS)).collect();
        let mut exts = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(protocol);
            exts.extend(ext_header(rng, *kind, next));
        }
        let first = kinds.first().copied().unwrap_or(protocol);
        let (src, dst) = (near6(rng, &set.pool6), near6(rng, &set.pool6));
        f = ethernet(&tags, ETH_P_IPV6);
        l3 = f.len();
        f.extend(ipv6_header(src, dst, first, exts.len() + l4.len()));
        f.extend(exts);
    } else {
        let frag = match rng.below(8) {
            0 => 0x2000,
            1 => rng.range(1, 0x1fff) as u16 | if rng.chance(50) { 0x2000 } else { 0 },
            2 => 0x4000,
            _ => 0,
        };
        let options = if rng.chance(15) {
            let n = 4 * rng.range(1, 10) as usize;
            rng.bytes(n)
        } else {
            Vec::new()
        };
        let (src, dst) = (near4(rng, &set.pool4), near4(rng, &set.pool4));
        f = ethernet(&tags, ETH_P_IP);
        l3 = f.len();
        f.extend(ipv4_header(src, dst, protocol, frag, &options, l4.len()));
    }
    let l4_at = f.len();
    f.extend(l4);
    if rng.chance(20) {
        malform(rng, &mut f, l3, l4_at, v6);
    }
    if f.len() < 15 {
        f.resize(15, 0);
    }
    f
}

/// Breaks a frame the way real broken frames are broken: cut at or near a header boundary,
/// a bad IHL or version, a length byte that runs past the end.
fn malform(rng: &mut Rng, f: &mut Vec<u8>, l3: usize, l4: usize, v6: bool) {
    match rng.below(5) {
        0 | 1 => {
            // Cut near a boundary: inside the tags, the IP header, the transport header.
            let at = match rng.below(4) {
                0 => rng.range(12, l3 as u64 + 2),
                1 => rng.range(l3 as u64, l4 as u64),
                2 => l4 as u64 + rng.range(0, 20),
                _ => rng.range(15, f.len() as u64),
            } as usize;
            f.truncate(at.max(15));
        }
        2 if !v6 => {
            // IHL 0..15 whatever the header holds.
            f[l3] = 0x40 | rng.below(16) as u8;
        }
        3 => {
            // The wrong version nibble.
            f[l3] = (rng.below(16) as u8) << 4 | (f[l3] & 0x0f);
        }
        _ => {
            // A length byte somewhere in the extension chain or options.
            if l4 > l3 + 41 {
                let at = rng.range(l3 as u64 + 40, l4 as u64 - 1) as usize;
                f[at] = rng.u64() as u8;
            } else {
                f.truncate(f.len().saturating_sub(rng.range(1, 8) as usize));
            }
        }
    }
}

/// One frame for the receiving programs: VXLAN toward `port` for a served VNI (the common
/// case), unserved VNIs, other ports and protocols, outer tags (one, QinQ), IPv4 options and
/// fragments, IPv6, a VXLAN header without the I flag, a UDP length that lies, padding after
/// the datagram, and frames cut anywhere. Never shorter than 15 bytes.
pub fn receiver_frame(rng: &mut Rng, port: u16, vnis: &[u32]) -> Vec<u8> {
    if rng.chance(3) {
        let mut f = ethernet(&[], 0x0806);
        f.extend(rng.bytes(28));
        return f;
    }
    // The inner frame: what a source mirrored, possibly cut by PacketLength.
    let inner_len = match rng.below(10) {
        0 => rng.range(0, 40),
        1 => rng.range(1000, 1600),
        _ => rng.range(40, 300),
    } as usize;
    let mut inner = ethernet(&[], ETH_P_IP);
    inner.extend(rng.bytes(inner_len));
    inner.truncate(inner_len.max(rng.range(0, 14) as usize));
    let vni = if rng.chance(75) && !vnis.is_empty() {
        *rng.pick(vnis)
    } else {
        rng.below(1 << 24) as u32
    };
    let flags = match rng.below(12) {
        0 => 0,
        1 => rng.u64() as u8,
        _ => 0x08,
    };
    let mut vx = vec![flags, 0, 0, 0];
    vx.extend_from_slice(&vni.to_be_bytes()[1..]);
    vx.push(0);
    vx.extend(inner);
    let dport = match rng.below(10) {
        0 => *rng.pick(&[4789u16, 8472, 4790]),
        1 => rng.u64() as u16,
        _ => port,
    };
    let mut udp = udp_header(rng.range(49152, 65535) as u16, dport, vx.len());
    match rng.below(10) {
        0 => {
            let claimed = rng.range(0, 64) as u16;
            udp[4..6].copy_from_slice(&claimed.to_be_bytes());
        }
        1 => {
            let claimed = (8 + vx.len() as u64 + rng.range(1, 20)) as u16;
            udp[4..6].copy_from_slice(&claimed.to_be_bytes());
        }
        _ => {}
    }
    udp.extend(vx);
    let protocol = if rng.chance(95) {
        17
    } else {
        *rng.pick(&[6u8, 1, 0, 47])
    };
    let tags: Vec<(u16, u16)> = match rng.below(12) {
        0 | 1 => vec![(0x8100, rng.below(4096) as u16)],
        2 => vec![(0x88a8, 1), (0x8100, 2)],
        3 => vec![(0x8100, 1), (0x8100, 2)],
        _ => Vec::new(),
    };
    let mut f;
    let l3;
    if rng.chance(25) {
        let src = Ipv6Addr::from(u128::from(rng.u64()));
        let dst = Ipv6Addr::from(u128::from(rng.u64()));
        f = ethernet(&tags, ETH_P_IPV6);
        l3 = f.len();
        f.extend(ipv6_header(src, dst, protocol, udp.len()));
    } else {
        let frag = match rng.below(12) {
            0 => 0x2000,
            1 => rng.range(1, 0x1fff) as u16,
            2 => 0x4000,
            _ => 0,
        };
        let options = if rng.chance(10) {
            let n = 4 * rng.range(1, 10) as usize;
            rng.bytes(n)
        } else {
            Vec::new()
        };
        f = ethernet(&tags, ETH_P_IP);
        l3 = f.len();
        let (src, dst) = (
            Ipv4Addr::from(rng.u64() as u32),
            Ipv4Addr::from(rng.u64() as u32),
        );
        f.extend(ipv4_header(src, dst, protocol, frag, &options, udp.len()));
    }
    let l4 = f.len();
    f.extend(udp);
    match rng.below(12) {
        0 => {
            // Ethernet padding or a trailer after the datagram.
            let n = rng.range(1, 40) as usize;
            f.extend(rng.bytes(n));
        }
        1 => {
            let at = rng.range(l3 as u64, (l4 + 20).min(f.len()) as u64) as usize;
            f.truncate(at);
        }
        2 => {
            let at = rng.range(15, f.len() as u64) as usize;
            f.truncate(at);
        }
        3 if l3 + 20 <= f.len() => {
            // A bad version or IHL in the outer header.
            f[l3] = rng.u64() as u8;
        }
        _ => {}
    }
    if f.len() < 15 {
        f.resize(15, 0);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_agent::model::Direction;

    fn target() -> Target {
        Target {
            id: "tmt-t".into(),
            destination_ip: "198.18.0.9".parse().expect("address"),
            destination_port: 4789,
        }
    }

    #[test]
    fn a_seed_replays_the_same_rule_sets_and_frames() {
        for index in 0..20 {
            let mut a = Rng::for_item(7, index);
            let mut b = Rng::for_item(7, index);
            let (sa, sb) = (
                rule_set(&mut a, index, "eth0", &target()),
                rule_set(&mut b, index, "eth0", &target()),
            );
            assert_eq!(sa.objects, sb.objects);
            for _ in 0..50 {
                assert_eq!(source_frame(&mut a, &sa), source_frame(&mut b, &sb));
                assert_eq!(
                    receiver_frame(&mut a, 4789, &[1, 2]),
                    receiver_frame(&mut b, 4789, &[1, 2])
                );
            }
        }
    }

    #[test]
    fn rule_sets_stay_within_the_quotas() {
        for index in 0..200 {
            let set = rule_set(&mut Rng::for_item(11, index), index, "eth0", &target());
            let sessions = &set.objects.sessions;
            assert!((1..=8).contains(&sessions.len()));
            let mut prios: Vec<u16> = sessions.iter().map(|s| s.priority).collect();
            prios.sort();
            prios.dedup();
            assert_eq!(prios.len(), sessions.len(), "session priorities are unique");
            for f in &set.objects.filters {
                for dir in [Direction::Ingress, Direction::Egress] {
                    let rules = f.rules_in_order(dir);
                    assert!(rules.len() <= RULES_PER_DIRECTION);
                    let mut p: Vec<u16> = rules.iter().map(|r| r.priority).collect();
                    p.dedup();
                    assert_eq!(p.len(), rules.len(), "rule priorities are unique");
                }
            }
        }
    }

    #[test]
    fn frames_are_never_shorter_than_the_test_run_takes() {
        let mut rng = Rng::new(3);
        let set = rule_set(&mut rng, 0, "eth0", &target());
        for _ in 0..5000 {
            assert!(source_frame(&mut rng, &set).len() >= 15);
            assert!(receiver_frame(&mut rng, 4789, &[5]).len() >= 15);
        }
    }
}
