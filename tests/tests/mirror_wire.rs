//! End to end: copies as the wire carried the originals. Bulk TCP (IPv4 and IPv6, both
//! directions of a source) and UDP GSO go through a mirrored source as GSO super-packets
//! (veth, TSO/GSO); the collector's capture, decoded and reassembled by tshark, must hold
//! the stream, one copy per wire segment, every inner length consistent and every whole
//! copy's checksum valid.
//!
//! Kernel requirements: root; network namespaces, veth, VXLAN (external mode), TCX or
//! clsact; UDP GSO (`UDP_SEGMENT`, 4.18+).

use std::{net::UdpSocket, thread, time::Duration};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture},
    netns::in_netns,
    packets::ipv4_tcp_claim,
    topology::{NODE_SRC_ADDR, NODE_SRC_ADDR6, Topology, WL_ADDR, WL_ADDR6, config_with_collector},
    traffic::{self, bad_checksums, tshark_follow},
};

const WAIT: Duration = Duration::from_secs(10);
const PORT: u16 = 5301;

/// Which way the copies take: the fast path (outer headers in eBPF on the uplink) or the
/// tunnel device (`copy_path = "tunnel"`); both must give the same copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Fast,
    Tunnel,
}

fn session_config(packet_length: Option<u32>, way: Way) -> String {
    let pl = packet_length.map_or(String::new(), |n| format!("packet_length = {n}"));
    let head = match way {
        Way::Fast => "",
        Way::Tunnel => "copy_path = \"tunnel\"\n",
    };
    head.to_string()
        + &config_with_collector(&format!(
            r#"
[[filters]]
id = "tmf-all"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "ALL"
[[filters.ingress_rules]]
priority = 2
action = "accept"
protocol = "ALL"
source_cidr_block = "::/0"
destination_cidr_block = "::/0"
[[filters.egress_rules]]
priority = 1
action = "accept"
protocol = "ALL"
[[filters.egress_rules]]
priority = 2
action = "accept"
protocol = "ALL"
source_cidr_block = "::/0"
destination_cidr_block = "::/0"

[[sessions]]
id = "tms-wire"
priority = 1
virtual_network_id = 88
{pl}
enabled = true
filter_id = "tmf-all"
target_id = "tmt-col"
sources = ["src0"]
"#
        ))
}

/// Starts the source agent and checks which way its copies take.
fn start_agent(topo: &Topology, packet_length: Option<u32>, way: Way) -> Agent {
    // The first apply (before "datapath ready") resolves the next hop.
    let agent = Agent::start(&topo.node, &session_config(packet_length, way));
    agent.wait_settled(WAIT);
    let log = agent.log_text();
    assert_eq!(
        log.contains("mirror_tx attached"),
        way == Way::Fast,
        "copies take the {way:?} way"
    );
    let list = agent.call("ListTrafficMirrorSessions", &[]);
    let s = &list["TrafficMirrorSessions"][0];
    let want = match way {
        Way::Fast => "fast",
        Way::Tunnel => "tunnel",
    };
    assert_eq!(s["CopyPath"], want, "List shows the way: {s}");
    assert_eq!(s["Segmentation"], true, "{s}");
    if way == Way::Fast {
        assert_eq!(s["CopyPathDetail"], "up0", "the uplink: {s}");
    }
    agent
}

/// Sends `total` bytes over TCP: from the workload to the node (`upload`, src0's ingress) or
/// from the node to the workload (src0's egress). Returns the bytes the receiver read.
fn bulk_tcp(topo: &Topology, v6: bool, upload: bool, total: usize) -> usize {
    let (server, client, addr) = if upload {
        (
            &topo.node,
            &topo.wl,
            if v6 { NODE_SRC_ADDR6 } else { NODE_SRC_ADDR },
        )
    } else {
        (&topo.wl, &topo.node, if v6 { WL_ADDR6 } else { WL_ADDR })
    };
    traffic::bulk_tcp(server, client, addr.parse().expect("addr"), PORT, total)
}

/// The inner IP packet's total length as its header claims it, and the bytes it holds.
fn inner_ip_lengths(inner: &[u8]) -> Option<(usize, usize)> {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([inner[12], inner[13]]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([inner[l3 + 2], inner[l3 + 3]]);
        l3 += 4;
    }
    let ip = inner.get(l3..)?;
    match ethertype {
        0x0800 => Some((usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len())),
        0x86dd => Some((
            40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            ip.len(),
        )),
        _ => None,
    }
}

/// The collector link at MTU 9000, so whole 1514-byte frames fit in VXLAN (at 1500 every
/// copy of a full-size frame is cut to fit and counted as truncated).
fn jumbo_collector_link(topo: &Topology) {
    topo.node.exec(&["ip", "link", "set", "up0", "mtu", "9000"]);
    topo.col.exec(&["ip", "link", "set", "col0", "mtu", "9000"]);
}

fn whole_frame_stream(v6: bool, upload: bool, way: Way) {
    let topo = Topology::new();
    jumbo_collector_link(&topo);
    let agent = start_agent(&topo, None, way);
    let mut cap = Capture::start_bulk(&topo.col, "col0", "udp port 4789", 9216);
    const TOTAL: usize = 4 << 20;
    let got = bulk_tcp(&topo, v6, upload, TOTAL);
    assert_eq!(got, TOTAL, "the transfer arrived whole");
    cap.wait_for_frames(1, WAIT);
    thread::sleep(Duration::from_millis(700));
    let pcap = cap.stop_complete();
    let copies = capture::vxlan_copies(&pcap, 4789);
    assert!(!copies.is_empty(), "no copies");
    let mut super_packets = 0;
    for c in &copies {
        assert_eq!(c.vni, 88);
        let Some((claimed, held)) = inner_ip_lengths(&c.inner) else {
            continue;
        };
        assert!(
            claimed <= held,
            "a copy claims {claimed} IP bytes but holds {held}: not a wire packet"
        );
        if c.inner.len() > 1514 + 4 {
            super_packets += 1;
        }
    }
    assert_eq!(super_packets, 0, "copies larger than a wire frame");
    let (a, b) = tshark_follow(&pcap);
    let stream = a.max(b);
    assert!(
        stream as f64 >= TOTAL as f64 * 0.999,
        "tshark reassembled {stream} of {TOTAL} bytes from the copies ({} copies); the \
         agent's counters: {}",
        copies.len(),
        agent.session_counters()
    );
    let bad = bad_checksums(&pcap);
    assert!(
        bad.is_empty(),
        "{} of {} copies carry a bad inner checksum (kept: {}):\n{}",
        bad.len(),
        copies.len(),
        pcap.display(),
        bad.join("\n")
    );
    capture::remove(&pcap);
}

#[test]
fn tcp_ipv4_upload_whole_copies_reassemble() {
    whole_frame_stream(false, true, Way::Fast);
}

#[test]
fn tcp_ipv4_download_whole_copies_reassemble() {
    whole_frame_stream(false, false, Way::Fast);
}

#[test]
fn tcp_ipv6_upload_whole_copies_reassemble() {
    whole_frame_stream(true, true, Way::Fast);
}

#[test]
fn tcp_ipv6_download_whole_copies_reassemble() {
    whole_frame_stream(true, false, Way::Fast);
}

#[test]
fn tunnel_device_tcp_ipv4_upload_whole_copies_reassemble() {
    whole_frame_stream(false, true, Way::Tunnel);
}

#[test]
fn tunnel_device_tcp_ipv6_download_whole_copies_reassemble() {
    whole_frame_stream(true, false, Way::Tunnel);
}

/// Every wire segment arrives as one copy of `cut` bytes of inner frame (or whole, when
/// shorter): the payload the copies' headers claim adds up to the stream.
fn one_cut_copy_per_segment(packet_length: Option<u32>, cut: usize, way: Way) {
    let topo = Topology::new();
    let _agent = start_agent(&topo, packet_length, way);
    let mut cap = Capture::start_bulk(&topo.col, "col0", "udp port 4789", 9216);
    const TOTAL: usize = 4 << 20;
    assert_eq!(bulk_tcp(&topo, false, true, TOTAL), TOTAL);
    cap.wait_for_frames(1, WAIT);
    thread::sleep(Duration::from_millis(700));
    let pcap = cap.stop_complete();
    let copies = capture::vxlan_copies(&pcap, 4789);
    let mut claimed_payload = 0usize;
    let mut data_copies = 0usize;
    for c in &copies {
        let Some((total, payload, sport)) = ipv4_tcp_claim(&c.inner) else {
            continue;
        };
        if sport == PORT {
            continue; // the server's ACKs
        }
        if payload > 0 {
            // A segment shorter than the cut (a write's last one) is whole.
            let want = (14 + total).min(cut);
            assert_eq!(
                c.inner.len(),
                want,
                "a data copy of {} wire bytes",
                14 + total
            );
            assert!(
                total + 14 <= 1514,
                "a copy's headers claim {total} IP bytes: a super-packet, not a wire segment"
            );
            claimed_payload += payload;
            data_copies += 1;
        }
    }
    // Retransmissions may add a little; nothing may be missing.
    assert!(
        (TOTAL..=TOTAL + TOTAL / 50).contains(&claimed_payload),
        "{data_copies} data copies claim {claimed_payload} payload bytes for a {TOTAL}-byte stream"
    );
    capture::remove(&pcap);
}

#[test]
fn tcp_packet_length_128_one_copy_per_segment() {
    one_cut_copy_per_segment(Some(128), 128, Way::Fast);
}

#[test]
fn tunnel_device_tcp_packet_length_128_one_copy_per_segment() {
    one_cut_copy_per_segment(Some(128), 128, Way::Tunnel);
}

/// At the usual 1500-byte collector link a full-size frame does not fit in VXLAN: a
/// whole-frame session cuts each segment to the 1464 bytes that fit (1500 - 36), one copy
/// per segment.
#[test]
fn tcp_collector_link_1500_cuts_each_segment_to_fit() {
    one_cut_copy_per_segment(None, 1464, Way::Fast);
}

/// UDP GSO: one send of many datagrams (UDP_SEGMENT) leaves as one super-packet; each
/// datagram must arrive as its own copy with its own UDP length and a valid checksum.
#[test]
fn udp_gso_one_copy_per_datagram() {
    udp_gso(Way::Fast);
}

#[test]
fn tunnel_device_udp_gso_one_copy_per_datagram() {
    udp_gso(Way::Tunnel);
}

fn udp_gso(way: Way) {
    let topo = Topology::new();
    jumbo_collector_link(&topo);
    let _agent = start_agent(&topo, None, way);
    let mut cap = Capture::start_bulk(&topo.col, "col0", "udp port 4789", 9216);
    const SEG: usize = 1200;
    const SENDS: usize = 20;
    const PER_SEND: usize = 40;
    let server = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, PORT)).expect("bind")
    });
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut n = 0usize;
        while server.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    in_netns(&topo.wl, || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
        mirror_tests::sockopt::set_int(&sock, libc::SOL_UDP, libc::UDP_SEGMENT, SEG as libc::c_int)
            .expect("UDP_SEGMENT");
        let buf: Vec<u8> = (0..SEG * PER_SEND).map(|i| i as u8).collect();
        for _ in 0..SENDS {
            sock.send_to(&buf, (NODE_SRC_ADDR, PORT)).expect("send");
            thread::sleep(Duration::from_millis(5));
        }
    });
    let received = reader.join().expect("reader");
    assert_eq!(received, SENDS * PER_SEND, "datagrams lost on the way");
    cap.wait_for_frames(1, WAIT);
    thread::sleep(Duration::from_millis(700));
    let pcap = cap.stop_complete();
    let copies = capture::vxlan_copies(&pcap, 4789);
    let datagrams: Vec<_> = copies
        .iter()
        .filter(|c| {
            c.inner.len() >= 42
                && c.inner[23] == 17
                && u16::from_be_bytes([c.inner[36], c.inner[37]]) == PORT
        })
        .collect();
    assert_eq!(
        datagrams.len(),
        SENDS * PER_SEND,
        "one copy per datagram on the wire"
    );
    for d in &datagrams {
        let udp_len = usize::from(u16::from_be_bytes([d.inner[38], d.inner[39]]));
        assert_eq!(
            udp_len,
            SEG + 8,
            "each copy carries one datagram's UDP length"
        );
        assert_eq!(d.inner.len(), 14 + 20 + 8 + SEG);
    }
    let bad = bad_checksums(&pcap);
    assert!(
        bad.is_empty(),
        "{} copies carry a bad inner checksum (kept: {}):\n{}",
        bad.len(),
        pcap.display(),
        bad.join("\n")
    );
    capture::remove(&pcap);
}
