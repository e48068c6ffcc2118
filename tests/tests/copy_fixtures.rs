//! BPF_PROG_TEST_RUN fixtures for the copy's way to the wire: `mirror_tx` (outer headers
//! from the session's template on the uplink) and `mirror_segment` (segments sent on).
//! Each case: a description, the packet and mark in, the verdict by name, the bytes out and
//! the counter changes.
//!
//! Kernel requirements: root; BPF_PROG_TEST_RUN for sched_cls with `ifindex` and `mark` in
//! the context (5.x+). The target's neighbour entry is made permanent so the agent's own
//! `Datapath::apply` resolves the fast path, as it would on a node.

use mirror_agent::{
    config::{FileConfig, Objects},
    datapath::{self, Datapath, PROG_SEGMENT, PROG_TX},
};
use mirror_ebpf::{ERR_NO_SESSION, MIRROR_MARK_MAGIC, mirror_mark};
use mirror_tests::{
    fixture::{self, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, run, skb_ctx},
    packets::{L4, frame, v4},
};

const TARGET: &str = "198.18.211.2";
const TARGET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x21, 0x02];
const SNAP: usize = 128;

const CONFIG: &str = r#"
[[targets]]
id = "tmt-tx"
destination_ip = "198.18.211.2"
destination_port = 4790

[[filters]]
id = "tmf-tx"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "ALL"

[[sessions]]
id = "tms-cut"
priority = 1
virtual_network_id = 4242
packet_length = 128
enabled = true
filter_id = "tmf-tx"
target_id = "tmt-tx"
sources = ["tx0"]

[[sessions]]
id = "tms-off"
priority = 2
virtual_network_id = 7
enabled = false
filter_id = "tmf-tx"
target_id = "tmt-tx"
sources = ["tx0"]
"#;

fn objects() -> Objects {
    let file: FileConfig = toml::from_str(CONFIG).expect("fixture config parses");
    file.objects().expect("fixture objects are valid")
}

fn with_datapath(f: impl FnOnce(&mut Datapath) + Send) {
    let ns = mirror_tests::topology::quiet_netns(
        "cfx",
        &[
            ("tx0", "tx1", "198.18.210.1/24"),
            ("tx2", "tx3", "198.18.211.1/24"),
        ],
    );
    let mac = TARGET_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ns.exec(&[
        "ip",
        "neigh",
        "replace",
        TARGET,
        "lladdr",
        &mac,
        "dev",
        "tx2",
        "nud",
        "permanent",
    ]);
    fixture::with_datapath(&ns, &objects(), 1024, async |dp, _| f(dp));
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The IPv4 header checksum over `hdr` is valid (sums to 0xffff).
fn ipv4_checksum_ok(hdr: &[u8]) -> bool {
    let mut sum: u32 = hdr.chunks(2).map(|w| u32::from(be16(w, 0))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn mirror_tx_fixtures() {
    with_datapath(|dp| {
        let path = dp
            .copy_paths()
            .get("tms-cut")
            .cloned()
            .expect("tms-cut placed");
        assert_eq!(path.mode, "fast", "next hop resolved: {path:?}");
        assert_eq!(path.detail, "tx2");
        let uplink = datapath::ifindex("tx2").expect("tx2");
        let uplink_mac = std::fs::read_to_string("/sys/class/net/tx2/address");
        let slot = dp.session_slot("tms-cut").expect("slot");
        let long = frame(
            v4("198.18.1.1", "198.18.2.2"),
            L4::Udp {
                sport: 1000,
                dport: 2000,
            },
        )
        .payload(400)
        .build();
        let short = frame(
            v4("198.18.1.1", "198.18.2.2"),
            L4::Udp {
                sport: 1000,
                dport: 2000,
            },
        )
        .payload(10)
        .build();

        // A copy for tms-cut: cut to 128 bytes of inner frame, behind 50 bytes of outer
        // Ethernet/IPv4/UDP/VXLAN built from the session's template.
        let before = dp.session_counters("tms-cut").expect("counters")[0];
        let prog = dp.program(PROG_TX).expect("mirror_tx");
        let (ret, out) = run(prog, &long, &skb_ctx(uplink, mirror_mark(slot, 0), None));
        assert_eq!(
            ret, TC_ACT_UNSPEC,
            "an encapsulated copy goes on to the device"
        );
        assert_eq!(out.len(), 50 + SNAP, "outer headers + the cut inner frame");
        assert_eq!(
            &out[50..],
            &long[..SNAP],
            "inner frame = the original's first bytes"
        );
        assert_eq!(
            &out[0..6],
            &TARGET_MAC,
            "outer destination = the neighbour's MAC"
        );
        if let Ok(mac) = uplink_mac {
            let want: Vec<u8> = mac
                .trim()
                .split(':')
                .map(|h| u8::from_str_radix(h, 16).expect("hex"))
                .collect();
            assert_eq!(
                &out[6..12],
                want.as_slice(),
                "outer source = the uplink's MAC"
            );
        }
        assert_eq!(be16(&out, 12), 0x0800, "outer IPv4");
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            usize::from(be16(ip, 2)),
            20 + 8 + 8 + SNAP,
            "IP total length"
        );
        assert_eq!(be16(ip, 6), 0x4000, "DF, not a fragment");
        assert_eq!(ip[8], 64, "TTL");
        assert_eq!(ip[9], 17, "UDP");
        assert!(ipv4_checksum_ok(ip), "IPv4 header checksum");
        assert_eq!(
            &ip[12..16],
            &[198, 18, 211, 1],
            "outer source = the route's source"
        );
        assert_eq!(
            &ip[16..20],
            &[198, 18, 211, 2],
            "outer destination = the target"
        );
        let udp = &out[34..42];
        let sport = be16(udp, 0);
        assert!(
            (32768..61000).contains(&sport),
            "source port {sport} from the flow hash"
        );
        assert_eq!(be16(udp, 2), 4790, "the target's port");
        assert_eq!(usize::from(be16(udp, 4)), 8 + 8 + SNAP, "UDP length");
        assert_eq!(be16(udp, 6), 0, "no outer UDP checksum over IPv4");
        assert_eq!(
            &out[42..50],
            &[0x08, 0, 0, 0, 0, 0x10, 0x92, 0],
            "VXLAN I flag, VNI 4242"
        );
        let after = dp.session_counters("tms-cut").expect("counters")[0];
        assert_eq!(after.copies - before.copies, 1, "one copy counted");
        assert_eq!(after.truncated - before.truncated, 1, "its cut counted");

        // The same flow hashes to the same source port (a target's RSS keeps it together).
        let prog = dp.program(PROG_TX).expect("mirror_tx");
        let (_, again) = run(prog, &long, &skb_ctx(uplink, mirror_mark(slot, 0), None));
        assert_eq!(be16(&again, 34), sport, "same flow, same source port");

        // A short copy is whole: lengths follow it.
        let prog = dp.program(PROG_TX).expect("mirror_tx");
        let (ret, out) = run(prog, &short, &skb_ctx(uplink, mirror_mark(slot, 1), None));
        assert_eq!(ret, TC_ACT_UNSPEC);
        assert_eq!(&out[50..], short.as_slice(), "whole frame inside");
        assert_eq!(usize::from(be16(&out, 16)), 36 + short.len());

        // Not ours: the host's own traffic, and a copy already encapsulated (bare magic),
        // pass untouched.
        for mark in [0, 0x1234, MIRROR_MARK_MAGIC] {
            let prog = dp.program(PROG_TX).expect("mirror_tx");
            let (ret, out) = run(prog, &short, &skb_ctx(uplink, mark, None));
            assert_eq!(ret, TC_ACT_UNSPEC, "mark {mark:#x} passes");
            assert_eq!(out, short, "mark {mark:#x} untouched");
        }

        // A copy of a disabled session, or on an interface that is not the session's uplink
        // (the route moved), must not reach the wire bare: dropped and counted.
        let off = dp
            .session_slot("tms-off")
            .expect("disabled sessions are placed too");
        let tx0 = datapath::ifindex("tx0").expect("tx0");
        for (what, ifindex, s) in [("disabled", uplink, off), ("wrong uplink", tx0, slot)] {
            let before = dp.maps.session_stats(s).expect("stats")[0].errors[ERR_NO_SESSION];
            let prog = dp.program(PROG_TX).expect("mirror_tx");
            let (ret, _) = run(prog, &short, &skb_ctx(ifindex, mirror_mark(s, 0), None));
            assert_eq!(ret, TC_ACT_SHOT, "{what}: dropped");
            let after = dp.maps.session_stats(s).expect("stats")[0].errors[ERR_NO_SESSION];
            assert_eq!(after - before, 1, "{what}: counted");
        }
    });
}

#[test]
fn mirror_segment_fixtures() {
    with_datapath(|dp| {
        let slot = dp.session_slot("tms-cut").expect("slot");
        let seg_peer = datapath::ifindex("mirseg-in").expect("segmentation device made");
        let packet = frame(
            v4("198.18.1.1", "198.18.2.2"),
            L4::Udp { sport: 1, dport: 2 },
        )
        .payload(100)
        .build();
        // A segment of a copy goes on (redirect to the uplink), unchanged, and is counted.
        let before = dp.session_counters("tms-cut").expect("counters")[1];
        let prog = dp.program(PROG_SEGMENT).expect("mirror_segment");
        let (ret, out) = run(
            prog,
            &packet,
            &skb_ctx(seg_peer, mirror_mark(slot, 1), None),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "segment sent on");
        assert_eq!(out, packet, "segment unchanged here");
        let after = dp.session_counters("tms-cut").expect("counters")[1];
        assert_eq!(after.segmented - before.segmented, 1, "segment counted");

        // Nothing else belongs on the segmentation device.
        for mark in [0, MIRROR_MARK_MAGIC] {
            let prog = dp.program(PROG_SEGMENT).expect("mirror_segment");
            let (ret, _) = run(prog, &packet, &skb_ctx(seg_peer, mark, None));
            assert_eq!(ret, TC_ACT_SHOT, "mark {mark:#x} dropped");
        }
    });
}
