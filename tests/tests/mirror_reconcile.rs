//! Changing the configuration of a running agent (SIGHUP re-reads the config file): sources
//! are attached and detached, sessions change, and none of it reloads the programs or
//! interrupts the copies of a source that was not touched.
//!
//! Kernel requirements: as mirror_e2e.rs (root, netns, veth, VXLAN), and TCX (6.6+), whose
//! BPF_PROG_QUERY tells which programs are attached to an interface.

use std::{collections::BTreeSet, net::UdpSocket, thread, time::Duration};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture},
    netns::in_netns,
    packets::summarize,
    tcx::attached,
    topology::{NODE_SRC_ADDR, NODE_SRC1_ADDR, Topology, config_with_collector},
    traffic::Stream,
};

fn config(s1_vni: u32, s1_sources: &str, with_s2: bool) -> String {
    let s2 = if with_s2 {
        r#"
[[sessions]]
id = "tms-s2"
priority = 2
virtual_network_id = 20
enabled = true
filter_id = "tmf-7001"
target_id = "tmt-col"
sources = ["src1"]
"#
    } else {
        ""
    };
    config_with_collector(&format!(
        r#"
[[filters]]
id = "tmf-7000"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[filters]]
id = "tmf-7001"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7001/7001"

[[sessions]]
id = "tms-s1"
priority = 1
virtual_network_id = {s1_vni}
enabled = true
filter_id = "tmf-7000"
target_id = "tmt-col"
sources = [{s1_sources}]
{s2}"#
    ))
}

#[test]
fn reloads_change_sources_and_sessions_without_reloading_programs() {
    let topo = Topology::new();
    // Sinks on the node so the datagrams are consumed, not answered with ICMP.
    let _sink0 = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let _sink1 = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC1_ADDR, 7001)).expect("sink")
    });
    let mut agent = Agent::start(&topo.node, &config(10, r#""src0""#, false));
    let src0_before = attached(&topo.node, "src0");
    assert_eq!(
        src0_before.len(),
        2,
        "ingress and egress programs on src0: {src0_before:?}"
    );
    assert!(
        attached(&topo.node, "src1").is_empty(),
        "src1 is not a source yet"
    );

    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let stream0 = Stream::start(&topo.wl, NODE_SRC_ADDR, 7000);
    thread::sleep(Duration::from_millis(300));

    // Add src1 as a source of a new session, and change tms-s1's VNI: map writes only.
    agent.reload(&config(11, r#""src0""#, true));
    let stream1 = Stream::start(&topo.wl2, NODE_SRC1_ADDR, 7001);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        attached(&topo.node, "src0"),
        src0_before,
        "src0's programs were replaced"
    );
    let src1_progs = attached(&topo.node, "src1");
    assert_eq!(src1_progs.len(), 2, "src1 attached: {src1_progs:?}");
    let ids =
        |set: &BTreeSet<(String, String, u32)>| set.iter().map(|p| p.2).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(&src1_progs),
        ids(&src0_before),
        "src1 runs the same loaded programs"
    );

    // Remove src1 again.
    agent.reload(&config(11, r#""src0""#, false));
    thread::sleep(Duration::from_millis(300));
    assert!(attached(&topo.node, "src1").is_empty(), "src1 detached");
    assert_eq!(
        attached(&topo.node, "src0"),
        src0_before,
        "src0's programs were replaced"
    );
    let sent1_after_detach = stream1.stop();
    thread::sleep(Duration::from_millis(100));
    let sent0 = stream0.stop();

    cap.wait_for_frames(sent0 as usize, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);

    // Every datagram of the untouched source was mirrored exactly once, across both reloads
    // and the VNI change.
    let mut seqs0 = Vec::new();
    let mut vnis0 = BTreeSet::new();
    let mut copies1 = 0;
    for c in &copies {
        let s = summarize(&c.inner).expect("IP copy");
        let payload = &c.inner[14 + 20 + 8..];
        let seq = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        match s.dport {
            7000 => {
                seqs0.push(seq);
                vnis0.insert(c.vni);
            }
            7001 => {
                assert_eq!(c.vni, 20, "src1's copies carry tms-s2's VNI");
                copies1 += 1;
            }
            other => panic!("unexpected copy to port {other}"),
        }
    }
    seqs0.sort_unstable();
    let expected: Vec<u32> = (0..sent0).collect();
    assert!(
        seqs0 == expected,
        "src0's copies have gaps or duplicates: {} copies for {sent0} datagrams",
        seqs0.len()
    );
    assert_eq!(
        vnis0,
        BTreeSet::from([10, 11]),
        "tms-s1's VNI changed in place"
    );
    assert!(copies1 > 0, "src1 was mirrored while attached");
    assert!(
        copies1 < sent1_after_detach,
        "src1 kept being mirrored after it was removed ({copies1} of {sent1_after_detach})"
    );
    drop(agent);
    assert!(
        attached(&topo.node, "src0").is_empty(),
        "the stopped agent detached src0"
    );
}
