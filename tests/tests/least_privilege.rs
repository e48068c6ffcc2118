//! The agent needs root's uid for nothing: as `nobody`, with only CAP_BPF, CAP_NET_ADMIN and
//! CAP_PERFMON (ambient, bounding set cut to them), it loads, attaches, creates its VXLAN
//! device and mirrors traffic end to end. What it loses without CAP_SYS_ADMIN is BPF run-time
//! statistics (BPF_ENABLE_STATS), which it reports and does without.
//!
//! Kernel requirements: as mirror_e2e.rs; unprivileged users keep `kernel.unprivileged_bpf_disabled`
//! irrelevant here because CAP_BPF is held. Tool: setpriv (util-linux), the equivalent of capsh.

use std::{net::UdpSocket, thread, time::Duration};

use mirror_tests::{
    agent::{Agent, as_nobody_with, nobody_dir},
    capture::{self, Capture},
    netns::in_netns,
    topology::{NODE_SRC_ADDR, Topology, config_with_collector},
};

const CAPS: &str = "-all,+bpf,+net_admin,+perfmon";
/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const CAP_MASK: u64 = (1 << 12) | (1 << 38) | (1 << 39);

#[test]
fn agent_runs_as_nobody_with_three_capabilities() {
    let topo = Topology::new();
    // nobody must own its state, socket and config directory.
    let dir = nobody_dir("lp");
    let config = config_with_collector(
        r#"
[[filters]]
id = "tmf-lp"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"

[[sessions]]
id = "tms-lp"
priority = 1
virtual_network_id = 44
packet_length = 64
enabled = true
filter_id = "tmf-lp"
target_id = "tmt-col"
sources = ["src0"]
"#,
    );
    let wrapper = as_nobody_with(CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&topo.node, &config, &dir, &wrapper);

    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert!(
        field("Uid:").starts_with("65534"),
        "agent runs as nobody: {status}"
    );
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
    assert_eq!(eff, CAP_MASK, "exactly CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON");

    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..10 {
        client
            .send_to(&[0u8; 300], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    cap.wait_for_frames(10, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(200));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);
    assert_eq!(copies.len(), 10);
    assert!(copies.iter().all(|c| c.vni == 44 && c.inner.len() == 64));

    // The API socket answers its owner (nobody) and is 0600.
    let list = agent.call("ListTrafficMirrorSessions", &[]);
    assert_eq!(
        list["TrafficMirrorSessions"][0]["TrafficMirrorSessionStatus"],
        "Created"
    );
    drop(agent);
}
