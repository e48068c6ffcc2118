//! BPF_PROG_TEST_RUN fixtures for the source and encapsulation programs, katran style: each
//! case is a description, an input packet, and the expected verdict and map changes.
//!
//! Kernel requirements: root (CAP_BPF, CAP_NET_ADMIN) to load programs and create a network
//! namespace; BPF_PROG_TEST_RUN for sched_cls with `ifindex`, `gso_segs` and `gso_size` in the
//! context (5.x+); TCX (6.6+) or clsact for the attach the agent does; VXLAN for the tunnel
//! device, which the copies really go through.
//!
//! The data path is set up by the agent's own `Datapath::apply` inside a fresh namespace, so
//! what is tested is the encoding the agent writes, not a hand-made imitation of it.

use std::collections::BTreeMap;

use mirror_agent::{
    config::{FileConfig, Objects},
    datapath::{self, Datapath, PROG_EGRESS, PROG_ENCAP, PROG_INGRESS},
};
use mirror_ebpf::{ERR_NO_SESSION, SessionStats, mirror_mark};
use mirror_tests::{
    fixture::{self, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, run, skb_ctx, tc_verdict, try_run},
    netns::NetNs,
    packets::{
        ETH_P_8021AD, ETH_P_8021Q, Ip, L4, arp, dest_opts, fragment_header, frame, hop_by_hop, v4,
        v6,
    },
};

/// The source: fx0. Copies leave through fx2 toward the target, so nothing the test sends out
/// (ARP for the target, the copies themselves) is seen by the source programs.
const CONFIG: &str = r#"
[[targets]]
id = "tmt-fx"
destination_ip = "198.18.201.2"

# tms-c has the best priority but is disabled: it must never mirror anything.
[[sessions]]
id = "tms-c"
priority = 5
virtual_network_id = 300
enabled = false
filter_id = "tmf-c"
target_id = "tmt-fx"
sources = ["fx0"]

[[sessions]]
id = "tms-a"
priority = 10
virtual_network_id = 100
packet_length = 128
enabled = true
filter_id = "tmf-a"
target_id = "tmt-fx"
sources = ["fx0"]

[[sessions]]
id = "tms-b"
priority = 20
virtual_network_id = 200
enabled = true
filter_id = "tmf-b"
target_id = "tmt-fx"
sources = ["fx0"]

[[filters]]
id = "tmf-a"
[[filters.ingress_rules]]
id = "tmr-a1"
priority = 1
action = "reject"
protocol = "UDP"
destination_port_range = "53/53"
[[filters.ingress_rules]]
id = "tmr-a2"
priority = 2
action = "accept"
protocol = "TCP"
source_cidr_block = "198.18.0.0/16"
destination_port_range = "80-90"
[[filters.ingress_rules]]
id = "tmr-a3"
priority = 3
action = "accept"
protocol = "ICMP"
destination_cidr_block = "198.18.5.0/24"
[[filters.ingress_rules]]
id = "tmr-a4"
priority = 4
action = "accept"
protocol = "TCP"
ip_version = "IPv6"
source_cidr_block = "fd00:1::/64"
destination_port_range = "443/443"
[[filters.ingress_rules]]
id = "tmr-a5"
priority = 6
action = "accept"
protocol = "UDP"
source_port_range = "1000/2000"
[[filters.egress_rules]]
id = "tmr-a6"
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "5000/5010"

[[filters]]
id = "tmf-b"
# Listed out of order on purpose: evaluation follows Priority, not position.
[[filters.ingress_rules]]
id = "tmr-b1"
priority = 5
action = "accept"
protocol = "ALL"
destination_cidr_block = "198.18.9.0/24"
[[filters.ingress_rules]]
id = "tmr-b2"
priority = 1
action = "drop"
protocol = "UDP"
destination_cidr_block = "198.18.9.53/32"
[[filters.ingress_rules]]
id = "tmr-b3"
priority = 2
action = "accept"
protocol = "UDP"
destination_port_range = "53/53"
[[filters.ingress_rules]]
id = "tmr-b4"
priority = 7
action = "accept"
protocol = "ICMPv6"
[[filters.ingress_rules]]
id = "tmr-b5"
priority = 8
action = "accept"
protocol = "47"
[[filters.egress_rules]]
id = "tmr-b6"
priority = 1
action = "accept"
protocol = "ALL"
ip_version = "IPv6"

[[filters]]
id = "tmf-c"
[[filters.ingress_rules]]
id = "tmr-c1"
priority = 1
action = "accept"
[[filters.ingress_rules]]
id = "tmr-c2"
priority = 2
action = "accept"
ip_version = "IPv6"
[[filters.egress_rules]]
id = "tmr-c3"
priority = 1
action = "accept"
"#;

const SESSIONS: [&str; 3] = ["tms-a", "tms-b", "tms-c"];
const RULES: [&str; 15] = [
    "tmr-a1", "tmr-a2", "tmr-a3", "tmr-a4", "tmr-a5", "tmr-a6", "tmr-b1", "tmr-b2", "tmr-b3",
    "tmr-b4", "tmr-b5", "tmr-b6", "tmr-c1", "tmr-c2", "tmr-c3",
];
/// Snap length of tms-a; tms-b keeps whole frames (path MTU 1500 - 36).
const SNAP_A: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Mirrored by this session, after these rules matched (in order).
    Mirrored(&'static str, &'static [&'static str]),
    /// Not mirrored; these rules matched (rejects).
    NotMirrored(&'static [&'static str]),
    NotIp,
    Malformed,
}

struct Case {
    desc: &'static str,
    dir: Dir,
    packet: Vec<u8>,
    /// (gso_segs, gso_size) for a GSO super-packet.
    gso: Option<(u32, u32)>,
    expect: Verdict,
}

fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp { sport, dport }
}
fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

fn ipv4_fragment(src: &str, dst: &str, offset: u16) -> Ip {
    match v4(src, dst) {
        Ip::V4 {
            src, dst, options, ..
        } => Ip::V4 {
            src,
            dst,
            frag_offset: offset,
            more_fragments: true,
            options,
        },
        ip => ip,
    }
}

fn with_ipv4_options(ip: Ip, options: Vec<u8>) -> Ip {
    match ip {
        Ip::V4 {
            src,
            dst,
            frag_offset,
            more_fragments,
            ..
        } => Ip::V4 {
            src,
            dst,
            frag_offset,
            more_fragments,
            options,
        },
        ip => ip,
    }
}

fn with_ext(ip: Ip, ext: Vec<(u8, Vec<u8>)>) -> Ip {
    match ip {
        Ip::V6 { src, dst, .. } => Ip::V6 { src, dst, ext },
        ip => ip,
    }
}

fn cases() -> Vec<Case> {
    use Dir::*;
    use Verdict::*;
    let case = |desc, dir, packet: Vec<u8>, expect| Case {
        desc,
        dir,
        packet,
        gso: None,
        expect,
    };
    let good_tcp = frame(v4("198.18.1.1", "198.18.2.2"), tcp(40000, 80));
    let mut seven = Vec::new();
    for _ in 0..7 {
        seven.push(dest_opts());
    }
    vec![
        case(
            "TCP to port 80 from 198.18/16: tms-a's accept rule",
            Ingress,
            good_tcp.clone().build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "large TCP frame is cut to tms-a's 128 bytes",
            Ingress,
            good_tcp.clone().payload(1000).build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "TCP to port 91: outside every range, no session",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), tcp(40000, 91)).build(),
            NotMirrored(&[]),
        ),
        case(
            "TCP from outside the source CIDR: no session",
            Ingress,
            frame(v4("203.0.113.1", "198.18.2.2"), tcp(40000, 80)).build(),
            NotMirrored(&[]),
        ),
        case(
            "UDP 53: tms-a rejects, tms-b accepts (reject falls through)",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), udp(3333, 53)).build(),
            Mirrored("tms-b", &["tmr-a1", "tmr-b3"]),
        ),
        case(
            "UDP 53 to 198.18.9.53: tms-b's priority-1 drop wins over its later accepts",
            Ingress,
            frame(v4("198.18.1.1", "198.18.9.53"), udp(3333, 53)).build(),
            NotMirrored(&["tmr-a1", "tmr-b2"]),
        ),
        case(
            "TCP to 198.18.9.7: tms-b's protocol ALL rule",
            Ingress,
            frame(v4("198.18.1.1", "198.18.9.7"), tcp(1, 22)).build(),
            Mirrored("tms-b", &["tmr-b1"]),
        ),
        case(
            "ICMP to 198.18.5.1: tms-a",
            Ingress,
            frame(v4("198.18.1.1", "198.18.5.1"), L4::Icmp).build(),
            Mirrored("tms-a", &["tmr-a3"]),
        ),
        case(
            "ICMP to 198.18.6.1: no session",
            Ingress,
            frame(v4("198.18.1.1", "198.18.6.1"), L4::Icmp).build(),
            NotMirrored(&[]),
        ),
        case(
            "GRE (protocol 47 by number): tms-b",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), L4::Raw(47)).build(),
            Mirrored("tms-b", &["tmr-b5"]),
        ),
        case(
            "UDP source port 1500 in 1000/2000: tms-a",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), udp(1500, 7000)).build(),
            Mirrored("tms-a", &["tmr-a5"]),
        ),
        case(
            "UDP source port 999: no session",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), udp(999, 7000)).build(),
            NotMirrored(&[]),
        ),
        case(
            "IPv4 with options (IHL 7): ports still found",
            Ingress,
            frame(
                with_ipv4_options(v4("198.18.1.1", "198.18.2.2"), vec![1; 8]),
                tcp(40000, 85),
            )
            .build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "802.1Q tagged TCP 80: parsed to the inner IP header",
            Ingress,
            good_tcp.clone().vlan(ETH_P_8021Q, 100).build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "QinQ (802.1ad + 802.1Q) TCP 80",
            Ingress,
            good_tcp
                .clone()
                .vlan(ETH_P_8021AD, 10)
                .vlan(ETH_P_8021Q, 20)
                .build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "IPv4 non-first fragment: ports not evaluated, so UDP rules match on protocol",
            Ingress,
            frame(ipv4_fragment("198.18.1.1", "198.18.2.2", 100), udp(1, 1)).build(),
            Mirrored("tms-b", &["tmr-a1", "tmr-b3"]),
        ),
        case(
            "IPv6 TCP 443 from fd00:1::/64: tms-a",
            Ingress,
            frame(v6("fd00:1::5", "fd00:2::1"), tcp(5555, 443)).build(),
            Mirrored("tms-a", &["tmr-a4"]),
        ),
        case(
            "IPv6 TCP 443 from fd00:3::5: no session",
            Ingress,
            frame(v6("fd00:3::5", "fd00:2::1"), tcp(5555, 443)).build(),
            NotMirrored(&[]),
        ),
        case(
            "ICMPv6: tms-b",
            Ingress,
            frame(v6("fd00:3::5", "fd00:2::1"), L4::Icmpv6).build(),
            Mirrored("tms-b", &["tmr-b4"]),
        ),
        case(
            "IPv6 hop-by-hop + destination options before TCP 443",
            Ingress,
            frame(
                with_ext(
                    v6("fd00:1::5", "fd00:2::1"),
                    vec![hop_by_hop(), dest_opts()],
                ),
                tcp(5555, 443),
            )
            .build(),
            Mirrored("tms-a", &["tmr-a4"]),
        ),
        case(
            "IPv6 first fragment (offset 0) keeps its ports",
            Ingress,
            frame(
                with_ext(v6("fd00:1::5", "fd00:2::1"), vec![fragment_header(0, true)]),
                tcp(5555, 443),
            )
            .build(),
            Mirrored("tms-a", &["tmr-a4"]),
        ),
        case(
            "IPv6 non-first fragment: matches on address and protocol only",
            Ingress,
            frame(
                with_ext(
                    v6("fd00:1::5", "fd00:2::1"),
                    vec![fragment_header(100, false)],
                ),
                tcp(1, 1),
            )
            .build(),
            Mirrored("tms-a", &["tmr-a4"]),
        ),
        case(
            "IPv6 with 7 extension headers (beyond the bounded walk): malformed, passed",
            Ingress,
            frame(
                with_ext(v6("fd00:1::5", "fd00:2::1"), seven),
                tcp(5555, 443),
            )
            .build(),
            Malformed,
        ),
        case(
            "egress UDP 5005: tms-a's egress rule",
            Egress,
            frame(v4("198.18.2.2", "198.18.1.1"), udp(9, 5005)).build(),
            Mirrored("tms-a", &["tmr-a6"]),
        ),
        case(
            "egress UDP 5010, the last port of tms-a's egress range: in its port prefilter",
            Egress,
            frame(v4("198.18.2.2", "198.18.1.1"), udp(9, 5010)).build(),
            Mirrored("tms-a", &["tmr-a6"]),
        ),
        case(
            "egress UDP 6024 (5000 + 1024: port 5000's bit in tms-a's port prefilter, the only \
             egress rule of tmf-a): the rule is walked and misses",
            Egress,
            frame(v4("198.18.2.2", "198.18.1.1"), udp(9, 6024)).build(),
            NotMirrored(&[]),
        ),
        case(
            "egress IPv6: tms-b's egress rule",
            Egress,
            frame(v6("fd00:2::1", "fd00:1::5"), udp(9, 9)).build(),
            Mirrored("tms-b", &["tmr-b6"]),
        ),
        case(
            "egress TCP v4: only the disabled tms-c would take it",
            Egress,
            frame(v4("198.18.2.2", "198.18.1.1"), tcp(80, 40000)).build(),
            NotMirrored(&[]),
        ),
        case(
            "ARP: not an IP frame, never mirrored",
            Ingress,
            arp(),
            NotIp,
        ),
        // BPF_PROG_TEST_RUN itself refuses an IPv4/IPv6 ethertype without a full IP header,
        // so a tag in front carries these short frames past it.
        case(
            "802.1Q frame that ends right after the tag, inner type IPv4",
            Ingress,
            good_tcp.clone().vlan(ETH_P_8021Q, 1).build()[..18].to_vec(),
            Malformed,
        ),
        case(
            "IPv4 with IHL 3",
            Ingress,
            {
                let mut p = frame(v4("198.18.1.1", "198.18.2.2"), tcp(1, 80)).build();
                p[14] = 0x43;
                p
            },
            Malformed,
        ),
        case(
            "IPv4 whose IHL (15) claims more header than the packet has",
            Ingress,
            {
                let mut p = frame(v4("198.18.1.1", "198.18.2.2"), L4::Raw(47))
                    .payload(0)
                    .build();
                p[14] = 0x4f;
                p
            },
            Malformed,
        ),
        case(
            "version 6 in an IPv4 ethertype",
            Ingress,
            {
                let mut p = frame(v4("198.18.1.1", "198.18.2.2"), tcp(1, 80)).build();
                p[14] = 0x65;
                p
            },
            Malformed,
        ),
        case(
            "TCP header cut after 2 bytes",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), tcp(1, 80)).build()[..14 + 20 + 2].to_vec(),
            Malformed,
        ),
        case(
            "802.1Q-tagged IPv6 header cut at 30 bytes",
            Ingress,
            frame(v6("fd00:1::5", "fd00:2::1"), tcp(1, 443))
                .vlan(ETH_P_8021Q, 1)
                .build()[..18 + 30]
                .to_vec(),
            Malformed,
        ),
        case(
            "IPv6 announcing a hop-by-hop header that is not there",
            Ingress,
            frame(
                with_ext(v6("fd00:1::5", "fd00:2::1"), vec![hop_by_hop()]),
                L4::Raw(59),
            )
            .payload(0)
            .build()[..14 + 40]
                .to_vec(),
            Malformed,
        ),
        // Regressions found by the differential test (tests/tests/differential.rs).
        case(
            "IPv6 destination options whose length runs past the end of the packet",
            Ingress,
            {
                let mut p = frame(
                    with_ext(v6("fd00:3::5", "fd00:2::1"), vec![dest_opts()]),
                    L4::Icmpv6,
                )
                .build();
                // 2048 bytes claimed; before the fix the ICMPv6 "after" it was matched.
                p[14 + 40 + 1] = 0xff;
                p
            },
            Malformed,
        ),
        case(
            "IPv6 later fragment: the walk stops at the fragment header (protocol 60, not ICMPv6)",
            Ingress,
            frame(
                with_ext(
                    v6("fd00:3::5", "fd00:2::1"),
                    vec![fragment_header(100, false), dest_opts()],
                ),
                L4::Icmpv6,
            )
            .build(),
            NotMirrored(&[]),
        ),
        case(
            "TCP header of 14 bytes (no room for the fixed 20): malformed, not matched on ports",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), tcp(40000, 80)).build()[..14 + 20 + 14].to_vec(),
            Malformed,
        ),
        case(
            "UDP header of 6 bytes: malformed",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), udp(1500, 7000)).build()[..14 + 20 + 6].to_vec(),
            Malformed,
        ),
        case(
            "TCP from source port 0: tmr-a2's open source side takes every port",
            Ingress,
            frame(v4("198.18.1.1", "198.18.2.2"), tcp(0, 80)).build(),
            Mirrored("tms-a", &["tmr-a2"]),
        ),
        case(
            "VLAN tag cut short",
            Ingress,
            {
                let p = good_tcp.clone().vlan(ETH_P_8021Q, 1).build();
                p[..15].to_vec()
            },
            Malformed,
        ),
        // No GSO case here: BPF_PROG_TEST_RUN can set gso_segs/gso_size but not gso_type,
        // and the kernel refuses to transmit such a half-GSO clone (EBADMSG). Real GSO
        // super-packets are covered end to end (mirror_wire.rs) and in the encapsulation
        // fixtures below.
    ]
}

struct Snapshot {
    sessions: BTreeMap<&'static str, [SessionStats; 2]>,
    rules: BTreeMap<&'static str, u64>,
    source: [mirror_ebpf::SourceStats; 2],
}

fn snapshot(dp: &Datapath) -> Snapshot {
    Snapshot {
        sessions: SESSIONS
            .iter()
            .map(|id| {
                (
                    *id,
                    dp.session_counters(id)
                        .unwrap_or_else(|| panic!("counters of {id}")),
                )
            })
            .collect(),
        rules: RULES
            .iter()
            .map(|id| {
                let slot = dp.rule_slot(id).unwrap_or_else(|| panic!("slot of {id}"));
                (*id, dp.maps.rule_hits(slot).expect("rule hits"))
            })
            .collect(),
        source: dp
            .maps
            .source_stats(dp.source_slot("fx0").expect("fx0 is attached"))
            .expect("source stats"),
    }
}

fn objects() -> Objects {
    let file: FileConfig = toml::from_str(CONFIG).expect("fixture config parses");
    file.objects().expect("fixture config validates")
}

/// Namespace with the source fx0 (peer fx1) and the uplink fx2 (peer fx3) toward the target.
fn fixture_netns() -> NetNs {
    mirror_tests::topology::quiet_netns(
        "fx",
        &[
            ("fx0", "fx1", "198.18.200.1/24"),
            ("fx2", "fx3", "198.18.201.1/24"),
        ],
    )
}

fn with_datapath(f: impl FnOnce(&mut Datapath) + Send) {
    fixture::with_datapath(&fixture_netns(), &objects(), 1024, async |dp, _| f(dp));
}

#[test]
fn source_program_fixtures() {
    with_datapath(|dp| {
        let ifindex = datapath::ifindex("fx0").expect("fx0 exists");
        let mut failures = Vec::new();
        for case in cases() {
            let before = snapshot(dp);
            let prog_name = match case.dir {
                Dir::Ingress => PROG_INGRESS,
                Dir::Egress => PROG_EGRESS,
            };
            let prog = dp.program(prog_name).expect("program");
            let (ret, out) = match try_run(prog, &case.packet, &skb_ctx(ifindex, 0, case.gso)) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: {e}", case.desc));
                    continue;
                }
            };
            let after = snapshot(dp);
            if let Err(why) = check(&case, ret, &out, &before, &after) {
                failures.push(format!("{}: {why}", case.desc));
            }
        }
        assert!(
            failures.is_empty(),
            "fixtures failed:\n  {}",
            failures.join("\n  ")
        );
    });
}

fn check(
    case: &Case,
    ret: i32,
    out: &[u8],
    before: &Snapshot,
    after: &Snapshot,
) -> Result<(), String> {
    // The original always passes, unchanged.
    if ret != TC_ACT_UNSPEC {
        return Err(format!("{}, expected TC_ACT_UNSPEC", tc_verdict(ret)));
    }
    if out != case.packet.as_slice() {
        return Err("the original packet was modified".into());
    }
    let dir = match case.dir {
        Dir::Ingress => 0,
        Dir::Egress => 1,
    };
    let segs = case.gso.map_or(1, |(s, _)| u64::from(s));
    let src_delta =
        |f: fn(&mirror_ebpf::SourceStats) -> u64| f(&after.source[dir]) - f(&before.source[dir]);
    if src_delta(|s| s.packets) != segs {
        return Err(format!(
            "source packets +{}, expected +{segs}",
            src_delta(|s| s.packets)
        ));
    }
    let (mirrored_by, rules_hit): (Option<&str>, &[&str]) = match &case.expect {
        Verdict::Mirrored(s, r) => (Some(s), r),
        Verdict::NotMirrored(r) => (None, r),
        Verdict::NotIp => {
            if src_delta(|s| s.not_ip) != 1 {
                return Err("not counted as not-IP".into());
            }
            (None, &[])
        }
        Verdict::Malformed => {
            if src_delta(|s| s.malformed) != 1 {
                return Err("not counted as malformed".into());
            }
            (None, &[])
        }
    };
    for id in SESSIONS {
        let b = &before.sessions[id][dir];
        let a = &after.sessions[id][dir];
        let (copies, packets) = (a.copies - b.copies, a.packets - b.packets);
        if Some(id) == mirrored_by {
            if copies != 1 || packets != segs {
                return Err(format!(
                    "{id}: copies +{copies}, packets +{packets}; expected +1, +{segs} (errors before {:?}, after {:?}, truncated +{})",
                    b.errors,
                    a.errors,
                    a.truncated - b.truncated,
                ));
            }
            let errors: u64 = a.errors.iter().sum::<u64>() - b.errors.iter().sum::<u64>();
            if errors != 0 {
                return Err(format!("{id}: {errors} copy errors: {:?}", a.errors));
            }
            let want_trunc = u64::from(id == "tms-a" && case.packet.len() > SNAP_A);
            if a.truncated - b.truncated != want_trunc {
                return Err(format!(
                    "{id}: truncated +{}, expected +{want_trunc}",
                    a.truncated - b.truncated
                ));
            }
        } else if copies != 0 || packets != 0 {
            return Err(format!(
                "{id} mirrored it (copies +{copies}) but should not have"
            ));
        }
    }
    if src_delta(|s| s.mirrored) != if mirrored_by.is_some() { segs } else { 0 } {
        return Err("source mirrored counter disagrees".into());
    }
    for id in RULES {
        let hits = after.rules[id] - before.rules[id];
        let want = u64::from(rules_hit.contains(&id));
        if hits != want {
            return Err(format!("rule {id}: hits +{hits}, expected +{want}"));
        }
    }
    Ok(())
}

#[test]
fn encap_program_fixtures() {
    with_datapath(|dp| {
        let slot_a = dp.session_slot("tms-a").expect("tms-a placed");
        let slot_b = dp.session_slot("tms-b").expect("tms-b placed");
        let long = frame(v4("198.18.1.1", "198.18.2.2"), tcp(40000, 80))
            .payload(300)
            .build();
        let short = frame(v4("198.18.1.1", "198.18.2.2"), tcp(40000, 80))
            .payload(10)
            .build();

        // A copy for tms-a is cut to its PacketLength and keeps the original's first bytes.
        let before = dp.session_counters("tms-a").expect("counters")[0];
        let prog = dp.program(PROG_ENCAP).expect("encap program");
        let (ret, out) = run(prog, &long, &skb_ctx(0, mirror_mark(slot_a, 0), None));
        assert_eq!(ret, TC_ACT_OK, "tms-a copy: {}", tc_verdict(ret));
        assert_eq!(out.len(), SNAP_A, "tms-a copy length");
        assert_eq!(
            out,
            long[..SNAP_A],
            "tms-a copy bytes are the original's first bytes"
        );
        let after = dp.session_counters("tms-a").expect("counters")[0];
        assert_eq!(after.truncated - before.truncated, 1, "truncation counted");

        // tms-b keeps whole frames that fit the path. A super-packet reaches the tunnel
        // device only when there is no segmentation device; it then leaves as one copy.
        let before = dp.session_counters("tms-b").expect("counters")[1];
        let prog = dp.program(PROG_ENCAP).expect("encap program");
        let (ret, out) = run(
            prog,
            &short,
            &skb_ctx(0, mirror_mark(slot_b, 1), Some((3, 20))),
        );
        assert_eq!(ret, TC_ACT_OK, "tms-b copy: {}", tc_verdict(ret));
        assert_eq!(out, short, "tms-b copy is the whole frame");
        let after = dp.session_counters("tms-b").expect("counters")[1];
        assert_eq!(
            after.truncated, before.truncated,
            "short frame not truncated"
        );
        assert_eq!(after.copies - before.copies, 1, "one copy counted");

        // A copy for a disabled session, or a slot no session holds, is dropped and counted.
        let slot_c = dp
            .session_slot("tms-c")
            .expect("disabled sessions are placed too");
        let unused_slot = 4000;
        for slot in [slot_c, unused_slot] {
            let before = dp.maps.session_stats(slot).expect("stats")[0].errors[ERR_NO_SESSION];
            let prog = dp.program(PROG_ENCAP).expect("encap program");
            let (ret, _) = run(prog, &short, &skb_ctx(0, mirror_mark(slot, 0), None));
            assert_eq!(
                ret,
                TC_ACT_SHOT,
                "copy for slot {slot}: {}",
                tc_verdict(ret)
            );
            let after = dp.maps.session_stats(slot).expect("stats")[0].errors[ERR_NO_SESSION];
            assert_eq!(after - before, 1, "session_gone counted on slot {slot}");
        }

        // Anything without the mirror mark does not belong on the tunnel device.
        let prog = dp.program(PROG_ENCAP).expect("encap program");
        let (ret, _) = run(prog, &short, &skb_ctx(0, 0x1234, None));
        assert_eq!(ret, TC_ACT_SHOT, "unmarked traffic: {}", tc_verdict(ret));
    });
}
