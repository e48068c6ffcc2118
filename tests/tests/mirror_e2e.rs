//! End to end: the agent binary mirrors real traffic between network namespaces, and the
//! copies are decoded at the collector by tshark (see `capture::vxlan_copies`).
//!
//! Kernel requirements: root; network namespaces, veth, VXLAN (external mode), TCX or
//! clsact; BPF JIT not required but assumed for the traffic rates used here.
//! Every test builds its own `Topology` with unique namespace names; all links live inside
//! those namespaces and go away with them, also when a test panics.

use std::{
    collections::{BTreeMap, HashMap},
    net::UdpSocket,
    thread,
    time::Duration,
};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture, VxlanCopy},
    netns::in_netns,
    packets::{Summary, is_wire_prefix, summarize},
    topology::{
        COLLECTOR_ADDR, COLLECTOR_ADDR6, NODE_SRC_ADDR, NODE_SRC_ADDR6, Topology,
        config_with_collector,
    },
};

const WAIT: Duration = Duration::from_secs(10);

/// Sends `count` UDP datagrams from the workload to the node, on `port`, and returns what the
/// node's echo server sent back (when `echo` is true).
fn udp_exchange(topo: &Topology, port: u16, count: usize, size: usize, echo: bool) -> Vec<Vec<u8>> {
    let server = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, port)).expect("node UDP bind")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("workload UDP bind")
    });
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let echo_thread = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < count {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                break;
            };
            got += 1;
            if echo {
                server.send_to(&buf[..n], from).expect("echo");
            }
        }
        got
    });
    let mut echoed = Vec::new();
    for i in 0..count {
        let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
        client
            .send_to(&payload, (NODE_SRC_ADDR, port))
            .expect("send");
        if echo {
            let mut buf = vec![0u8; 65536];
            let n = client
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("echo {i} lost: {e}"));
            assert_eq!(
                &buf[..n],
                payload.as_slice(),
                "echo {i} differs from what was sent"
            );
            echoed.push(buf[..n].to_vec());
        }
    }
    let received = echo_thread.join().expect("echo server");
    assert_eq!(
        received, count,
        "the node received {received} of {count} datagrams"
    );
    echoed
}

fn copies_by_vni(copies: &[VxlanCopy]) -> BTreeMap<u32, Vec<&VxlanCopy>> {
    let mut by = BTreeMap::new();
    for c in copies {
        by.entry(c.vni).or_insert_with(Vec::new).push(c);
    }
    by
}

fn inner(c: &VxlanCopy) -> Summary {
    summarize(&c.inner).unwrap_or_else(|| panic!("copy is not an IP frame: {:02x?}", c.inner))
}

#[test]
fn udp_copies_are_filtered_truncated_and_sent_both_directions() {
    let topo = Topology::new();
    let agent = Agent::start(
        &topo.node,
        &config_with_collector(
            r#"
[[filters]]
id = "tmf-udp"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"
[[filters.egress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
source_port_range = "7000/7000"

[[sessions]]
id = "tms-udp"
priority = 1
virtual_network_id = 1001
packet_length = 100
enabled = true
filter_id = "tmf-udp"
target_id = "tmt-col"
sources = ["src0"]
"#,
        ),
    );
    let mut copies_cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let originals_cap = Capture::start(&topo.node, "src0", "udp");
    let sent_cap = Capture::start(&topo.wl, "wl0", "udp");

    udp_exchange(&topo, 7000, 20, 400, true);
    // Not in the filter: no copies, and the node's replies are ICMP, also not in it.
    udp_exchange(&topo, 7500, 10, 400, false);

    copies_cap.wait_for_frames(40, WAIT);
    thread::sleep(Duration::from_millis(300));
    let copies_pcap = copies_cap.stop();
    let originals_pcap = originals_cap.stop();
    let sent_pcap = sent_cap.stop();
    let copies = capture::vxlan_copies(&copies_pcap, 4789);
    let originals = capture::frames(&originals_pcap);
    let seen_by_workload = capture::frames(&sent_pcap);

    assert_eq!(
        copies.len(),
        40,
        "20 ingress + 20 egress copies, nothing else; the agent's counters: {}",
        agent.session_counters()
    );
    let mut outer_ports: HashMap<(u16, u16), u16> = HashMap::new();
    for c in &copies {
        assert_eq!(c.vni, 1001, "VNI of the session");
        assert_eq!(c.udp_dst_port, 4789, "target port");
        assert_eq!(
            c.outer_dst, COLLECTOR_ADDR,
            "outer destination is the target"
        );
        assert_eq!(c.inner.len(), 100, "copy truncated to PacketLength");
        let s = inner(c);
        assert_eq!(s.protocol, 17, "only UDP is mirrored");
        assert!(
            s.dport == 7000 || s.sport == 7000,
            "only port 7000 is mirrored: {s:?}"
        );
        // The outer source port is a hash of the inner flow: stable for a flow.
        let flow = (s.sport, s.dport);
        let port = *outer_ports.entry(flow).or_insert(c.udp_src_port);
        assert_eq!(
            port, c.udp_src_port,
            "outer source port changes within flow {flow:?}"
        );
        assert!(
            originals
                .iter()
                .any(|o| o.len() > 100 && is_wire_prefix(&c.inner, o)),
            "copy is not the first 100 bytes of any original frame"
        );
    }
    let ingress = copies.iter().filter(|c| inner(c).dport == 7000).count();
    let egress = copies.iter().filter(|c| inner(c).sport == 7000).count();
    assert_eq!((ingress, egress), (20, 20), "copies per direction");

    // The originals are untouched: the workload and the node saw the same UDP frames.
    let mut a: Vec<&Vec<u8>> = seen_by_workload.iter().collect();
    let mut b: Vec<&Vec<u8>> = originals.iter().collect();
    a.sort();
    b.sort();
    assert_eq!(a.len(), 50, "workload saw 20 + 20 + 10 UDP frames");
    assert!(
        a == b,
        "frames differ between the workload and the node side of the veth"
    );
    for p in [copies_pcap, originals_pcap, sent_pcap] {
        capture::remove(&p);
    }
}

#[test]
fn two_sessions_on_one_source_follow_priority() {
    let topo = Topology::new();
    let _agent = Agent::start(
        &topo.node,
        &config_with_collector(
            r#"
# tms-first has the better priority: it takes UDP 7000 and rejects ICMP, which then
# falls through to tms-second, which takes everything (IPv4 and IPv6).
[[filters]]
id = "tmf-first"
[[filters.ingress_rules]]
priority = 1
action = "reject"
protocol = "ICMP"
[[filters.ingress_rules]]
priority = 2
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[filters]]
id = "tmf-second"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "ALL"
[[filters.ingress_rules]]
priority = 2
action = "accept"
protocol = "ALL"
ip_version = "IPv6"

[[sessions]]
id = "tms-second"
priority = 20
virtual_network_id = 2
enabled = true
filter_id = "tmf-second"
target_id = "tmt-col"
sources = ["src0"]

[[sessions]]
id = "tms-first"
priority = 10
virtual_network_id = 1
enabled = true
filter_id = "tmf-first"
target_id = "tmt-col"
sources = ["src0"]
"#,
        ),
    );
    let mut copies_cap = Capture::start(&topo.col, "col0", "udp port 4789");
    udp_exchange(&topo, 7000, 10, 200, false);
    topo.wl.exec(&[
        "ping",
        "-q",
        "-c",
        "5",
        "-i",
        "0.05",
        "-W",
        "2",
        NODE_SRC_ADDR,
    ]);
    topo.wl.exec(&[
        "ping",
        "-q",
        "-6",
        "-c",
        "5",
        "-i",
        "0.05",
        "-W",
        "2",
        NODE_SRC_ADDR6,
    ]);
    copies_cap.wait_for_frames(20, WAIT);
    thread::sleep(Duration::from_millis(300));
    let pcap = copies_cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    let by = copies_by_vni(&copies);

    let udp_first = by
        .get(&1)
        .map_or(0, |v| v.iter().filter(|c| inner(c).protocol == 17).count());
    let udp_second = by
        .get(&2)
        .map_or(0, |v| v.iter().filter(|c| inner(c).protocol == 17).count());
    assert_eq!(
        udp_first, 10,
        "UDP 7000 mirrored by the better-priority session"
    );
    assert_eq!(
        udp_second, 0,
        "a packet is mirrored at most once per source"
    );
    let icmp_first = by
        .get(&1)
        .map_or(0, |v| v.iter().filter(|c| inner(c).protocol == 1).count());
    let icmp_second = by
        .get(&2)
        .map_or(0, |v| v.iter().filter(|c| inner(c).protocol == 1).count());
    assert_eq!(icmp_first, 0, "tms-first rejects ICMP");
    assert_eq!(icmp_second, 5, "rejected ICMP falls through to tms-second");
    let icmp6 = by.get(&2).map_or(0, |v| {
        v.iter()
            .filter(|c| inner(c).ip_version == 6 && inner(c).protocol == 58)
            .count()
    });
    assert!(
        icmp6 >= 5,
        "IPv6 echo requests mirrored by tms-second (got {icmp6})"
    );
    capture::remove(&pcap);
}

#[test]
fn uplink_as_source_does_not_mirror_copies() {
    let topo = Topology::new();
    let _agent = Agent::start(
        &topo.node,
        &config_with_collector(
            r#"
[[filters]]
id = "tmf-all"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "ALL"
[[filters.egress_rules]]
priority = 1
action = "accept"
protocol = "ALL"

# up0 carries the copies to the collector and is a source itself.
[[sessions]]
id = "tms-all"
priority = 1
virtual_network_id = 9
enabled = true
filter_id = "tmf-all"
target_id = "tmt-col"
sources = ["src0", "up0"]
"#,
        ),
    );
    let mut copies_cap = Capture::start(&topo.col, "col0", "udp port 4789");
    // Echoed, so 10 ingress + 10 egress packets on src0.
    udp_exchange(&topo, 7000, 10, 100, true);
    copies_cap.wait_for_frames(20, WAIT);
    thread::sleep(Duration::from_millis(500));
    let pcap = copies_cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    for c in &copies {
        let s = inner(c);
        assert!(
            !(s.protocol == 17 && (s.dport == 4789 || s.sport == 4789)),
            "a copy of a copy reached the collector: mirror loop"
        );
    }
    let udp = copies.iter().filter(|c| inner(c).protocol == 17).count();
    assert_eq!(
        udp, 20,
        "each workload packet mirrored once, copies never mirrored"
    );
    capture::remove(&pcap);
}

/// Older kernels have no TCX: the clsact fallback mirrors the same way, and iproute2 sees
/// the agent's filters on the qdisc.
#[test]
fn clsact_fallback_mirrors_too() {
    let topo = Topology::new();
    let agent = Agent::start(
        &topo.node,
        &format!(
            "tc_attach = \"clsact\"\n{}",
            config_with_collector(
                r#"
[[filters]]
id = "tmf-udp"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
[[filters.egress_rules]]
priority = 1
action = "accept"
protocol = "UDP"

[[sessions]]
id = "tms-udp"
priority = 1
virtual_network_id = 5
packet_length = 64
enabled = true
filter_id = "tmf-udp"
target_id = "tmt-col"
sources = ["src0"]
"#,
            )
        ),
    );
    for dir in ["ingress", "egress"] {
        let out = topo
            .node
            .exec(&["tc", "filter", "show", "dev", "src0", dir]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("mirror_"),
            "no agent filter on src0 {dir}: {text}"
        );
    }
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    udp_exchange(&topo, 7000, 10, 300, true);
    cap.wait_for_frames(20, WAIT);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);
    assert_eq!(copies.len(), 20, "10 ingress + 10 egress copies");
    assert!(copies.iter().all(|c| c.vni == 5 && c.inner.len() == 64));
    let filters = |dir: &str| {
        let out = topo
            .node
            .exec(&["tc", "filter", "show", "dev", "src0", dir]);
        // One line per filter; the program's name appears twice on it.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("mirror_"))
            .count()
    };

    // SIGTERM leaves the cls_bpf filters in their qdisc, still mirroring; a new agent adopts
    // them in place (one filter per direction, not two) and `cleanup` removes them.
    let config = std::fs::read_to_string(&agent.config).expect("agent config");
    let dir = agent.terminate();
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (1, 1),
        "left running"
    );
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    udp_exchange(&topo, 7001, 5, 300, true);
    cap.wait_for_frames(10, WAIT);
    let pcap = cap.stop();
    assert_eq!(
        capture::vxlan_copies(&pcap, 4789).len(),
        10,
        "copies while no agent runs"
    );
    capture::remove(&pcap);
    let agent = Agent::start_in(&topo.node, &config, &dir);
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (1, 1),
        "adopted, not attached a second time"
    );
    let dir = agent.terminate();
    let out = Agent::cleanup(&topo.node, &dir);
    Agent::remove_dir(&dir);
    assert_eq!(out.code, 0, "cleanup: {}{}", out.stdout, out.stderr);
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (0, 0),
        "cleanup removes the filters: {}",
        out.stdout
    );
}

/// An IPv6 target, and whole frames (no PacketLength) cut only where they would not fit the
/// path MTU once encapsulated: 1500 - 40 (IPv6) - 8 (UDP) - 8 (VXLAN) = 1444 bytes of frame.
#[test]
fn ipv6_target_and_path_mtu_cut() {
    let topo = Topology::new();
    let _agent = Agent::start(
        &topo.node,
        &format!(
            r#"
[[targets]]
id = "tmt-col6"
destination_ip = "{COLLECTOR_ADDR6}"

[[filters]]
id = "tmf-udp"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[sessions]]
id = "tms-v6"
priority = 1
virtual_network_id = 600
enabled = true
filter_id = "tmf-udp"
target_id = "tmt-col6"
sources = ["src0"]
"#
        ),
    );
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let originals_cap = Capture::start(&topo.node, "src0", "udp dst port 7000");
    // Frames of 14 + 20 + 8 + payload bytes: 1442 fits, 1492 does not.
    udp_exchange(&topo, 7000, 5, 1400, false);
    udp_exchange(&topo, 7000, 5, 1450, false);
    cap.wait_for_frames(10, WAIT);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();
    let originals_pcap = originals_cap.stop();
    let originals = capture::frames(&originals_pcap);
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);
    capture::remove(&originals_pcap);
    assert_eq!(copies.len(), 10);
    let mut lens: Vec<usize> = copies.iter().map(|c| c.inner.len()).collect();
    lens.sort_unstable();
    assert_eq!(
        lens,
        [1442, 1442, 1442, 1442, 1442, 1444, 1444, 1444, 1444, 1444]
    );
    for c in &copies {
        assert_eq!(c.outer_dst, COLLECTOR_ADDR6, "outer IPv6 destination");
        assert_eq!(c.vni, 600);
        assert!(
            originals.iter().any(|o| is_wire_prefix(&c.inner, o)),
            "copy is not a prefix of an original"
        );
    }
}

/// 802.1Q frames on a source: the kernel untags them on receive and keeps the tag in skb
/// metadata; the VXLAN device puts it back into the copy, which must still be exactly
/// PacketLength bytes, tag included. (This kernel has no 8021q module for VLAN devices, so
/// the tagged frames are sent with a packet socket.)
#[test]
fn vlan_tagged_copies_keep_their_tag_and_the_exact_length() {
    use mirror_tests::packets::{ETH_P_8021Q, L4, frame, v4};
    let topo = Topology::new();
    let _agent = Agent::start(
        &topo.node,
        &config_with_collector(
            r#"
[[filters]]
id = "tmf-vlan"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[sessions]]
id = "tms-vlan"
priority = 1
virtual_network_id = 12
packet_length = 80
enabled = true
filter_id = "tmf-vlan"
target_id = "tmt-col"
sources = ["src0"]
"#,
        ),
    );
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let mut tagged = frame(
        v4("198.18.10.2", NODE_SRC_ADDR),
        L4::Udp {
            sport: 5555,
            dport: 7000,
        },
    )
    .vlan(ETH_P_8021Q, 100)
    .payload(200)
    .build();
    // Broadcast destination: src0 takes it whatever its MAC.
    tagged[..6].copy_from_slice(&[0xff; 6]);
    in_netns(&topo.wl, || {
        // SAFETY: plain socket(2)/sendto(2) calls with a sockaddr_ll we fill completely.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new("wl0").expect("name");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            for _ in 0..5 {
                let n = libc::sendto(
                    fd,
                    tagged.as_ptr().cast(),
                    tagged.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n as usize,
                    tagged.len(),
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    });
    cap.wait_for_frames(5, WAIT);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);
    assert_eq!(copies.len(), 5);
    for c in &copies {
        assert_eq!(c.inner.len(), 80, "copy of PacketLength, tag included");
        assert_eq!(
            &c.inner[12..14],
            &[0x81, 0x00],
            "802.1Q tag inside the copy"
        );
        assert_eq!(
            u16::from_be_bytes([c.inner[14], c.inner[15]]) & 0x0fff,
            100,
            "VLAN 100"
        );
        assert_eq!(
            c.inner[..],
            tagged[..80],
            "the copy is the frame as sent, cut to 80 bytes"
        );
    }
}
