//! End to end on the receiving side: a source node's agent mirrors real traffic to a target
//! node whose agent terminates it in XDP, or in TC ingress where native XDP cannot attach (a
//! bridge, a veth at a jumbo MTU); tcpdump on each VNI's capture interface sees the frames the
//! source saw, byte for byte (cut to PacketLength where the session truncates). The source
//! and target agents run on one host (namespaces joined by veth), so the copies the source
//! makes with `bpf_clone_redirect` reach the receiver still marked as redirected, which is
//! what generic XDP used to skip. Also the receiver API: create, list with state and
//! counters, bad input, delete.
//!
//! Kernel requirements: root; network namespaces, veth, VXLAN (external mode) and TCX or
//! clsact on the source node; XDP on the target (native on veth, 5.9+ for veth to veth
//! XDP_REDIRECT with the peer's NAPI), a devmap hash (5.4+), TCX (6.6+) or clsact for the TC
//! receive path. Tools: tcpdump, bpftool.

use std::{net::UdpSocket, thread, time::Duration};

use mirror_tests::{
    agent::{Agent, StartOptions, as_nobody_with, nobody_dir},
    capture::{self, Capture},
    http::{json, metric_value as value, metrics_get, promtool_check, rpc_get_params},
    netns::{NetNs, in_netns},
    packets::{assert_same_as_wire, ipv4_tcp_claim},
    topology::{
        COLLECTOR_ADDR, COLLECTOR_ADDR6, NODE_SRC_ADDR, NODE_UP_ADDR, Topology, WL_ADDR,
        config_with_collector,
    },
    traffic::{bad_checksums, bulk_tcp, tshark_follow},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const FULL_PORT: u16 = 7100;
const CUT_PORT: u16 = 7200;
const CUT_LEN: usize = 96;

const SOURCE_CONFIG: &str = r#"
[[filters]]
id = "tmf-full"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7100/7100"

[[filters]]
id = "tmf-cut"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7200/7200"

[[sessions]]
id = "tms-full"
priority = 1
virtual_network_id = 100
enabled = true
filter_id = "tmf-full"
target_id = "tmt-col"
sources = ["src0"]

[[sessions]]
id = "tms-cut"
priority = 2
virtual_network_id = 200
packet_length = 96
enabled = true
filter_id = "tmf-cut"
target_id = "tmt-col"
sources = ["src0"]
"#;

/// The target node (the collector namespace) serves both VNIs on `interface`.
fn target_config(interface: &str) -> String {
    format!(
        r#"
metrics_listen = "127.0.0.1:9464"

[[receivers]]
id = "tmrcv-col"
interface = "{interface}"
virtual_network_ids = [100, 200]
"#
    )
}

fn receivers(agent: &Agent) -> Vec<Value> {
    agent.call("ListTrafficMirrorReceivers", &[])["TrafficMirrorReceivers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls until the receiver is Created with its program attached (the mode is published
/// with the counters, once a second).
fn wait_attached(agent: &Agent, id: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = receivers(agent)
            .into_iter()
            .find(|r| r["TrafficMirrorReceiverId"] == id);
        if let Some(r) = &found
            && r["TrafficMirrorReceiverStatus"] == "Created"
            && r["XdpMode"].as_str().is_some_and(|m| !m.is_empty())
        {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "receiver {id} not attached within {WAIT:?}: {found:?}\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn vni_counters(r: &Value, vni: u64) -> Value {
    r["Captures"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["VirtualNetworkId"] == vni))
        .cloned()
        .unwrap_or_else(|| panic!("no capture entry for VNI {vni}: {r}"))
}

fn dst_port(frame: &[u8]) -> Option<u16> {
    // Plain Ethernet + IPv4 without options, as the workload sends.
    (frame.len() >= 38 && frame[12..14] == [0x08, 0x00] && frame[23] == 17)
        .then(|| u16::from_be_bytes([frame[36], frame[37]]))
}

fn link_exists(ns: &NetNs, name: &str) -> bool {
    ns.exec_status(&["ip", "link", "show", name])
        .status
        .success()
}

/// col0 is a veth, which has native XDP. The links' MTU is 3000 (a veth whose program is not
/// frags-aware allows its peer about one page), so a 2942-byte frame is mirrored whole and
/// must arrive whole through the native redirect path.
#[test]
fn mirrored_frames_arrive_on_each_vnis_capture_interface_byte_identical() {
    let topo = Topology::new();
    set_mtu(&topo, 3000);
    mirror_to_receiver(&topo, "col0", "native", &[], 2900, Ending::Cleanup);
}

/// col0 at MTU 9000: native XDP on a veth refuses a peer MTU above about one page (the
/// program reads only the first buffer), so the receiver runs in TC ingress (TCX here), and
/// an 8000-byte frame arrives whole, byte-identical.
#[test]
fn tc_receiver_on_a_jumbo_veth_delivers_the_same_frames() {
    let topo = Topology::new();
    set_mtu(&topo, 9000);
    mirror_to_receiver(&topo, "col0", "tc", &[], 8000, Ending::Cleanup);
}

/// The same through a clsact qdisc and a cls_bpf filter, as on kernels without TCX (6.1):
/// delivered, taken over by the next agent in place, removed by cleanup.
#[test]
fn clsact_tc_receiver_on_a_jumbo_veth_delivers_the_same_frames() {
    let topo = Topology::new();
    set_mtu(&topo, 9000);
    mirror_to_receiver(
        &topo,
        "col0",
        "tc",
        &["--tc-attach", "clsact"],
        8000,
        Ending::Cleanup,
    );
}

fn set_mtu(topo: &Topology, mtu: u32) {
    let mtu = mtu.to_string();
    for (ns, dev) in [
        (&topo.wl, "wl0"),
        (&topo.node, "src0"),
        (&topo.node, "up0"),
        (&topo.col, "col0"),
    ] {
        ns.exec(&["ip", "link", "set", dev, "mtu", &mtu]);
    }
}

/// A bridge has no native XDP: the receiver falls back to TC ingress (clsact here, TCX in the
/// test above), and the frames still arrive byte-identical. The links carry jumbo frames
/// here, and a 4042-byte frame is mirrored whole through the capture pair.
#[test]
fn tc_receiver_on_a_bridge_delivers_the_same_frames() {
    let topo = Topology::new();
    set_mtu(&topo, 9000);
    // The target's address moves from col0 to a bridge with col0 as its port.
    let col = &topo.col;
    col.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    col.exec(&["ip", "addr", "flush", "dev", "col0"]);
    col.exec(&["ip", "link", "set", "col0", "master", "br0"]);
    col.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{COLLECTOR_ADDR}/24"),
        "dev",
        "br0",
    ]);
    col.exec(&["ip", "link", "set", "br0", "mtu", "9000", "up"]);
    col.exec(&["ip", "route", "replace", "default", "via", NODE_UP_ADDR]);
    mirror_to_receiver(
        &topo,
        "br0",
        "tc",
        &["--tc-attach", "clsact"],
        4000,
        Ending::Unconfigured,
    );
}

/// Receiving programs of ours on `dev`: XDP ones (`ip link` names none, so any) plus
/// `mirror_receive_tc` in TCX (asked from the kernel; the kernel keeps 15 characters of a
/// name) or as a cls_bpf filter (bpftool names it; Debian 12's bpftool lists no TCX).
fn receive_programs(ns: &NetNs, dev: &str) -> usize {
    let tcx = mirror_tests::tcx::attached(ns, dev)
        .iter()
        .filter(|(dir, name, _)| dir == "ingress" && name.starts_with("mirror_receive"))
        .count();
    let link = ns.exec(&["ip", "-d", "link", "show", dev]);
    let xdp = String::from_utf8_lossy(&link.stdout)
        .lines()
        .filter(|l| l.contains("prog/xdp"))
        .count();
    let net = ns.exec(&["bpftool", "net", "show", "dev", dev]);
    let tc = String::from_utf8_lossy(&net.stdout)
        .lines()
        .filter(|l| l.contains("mirror_receive_tc"))
        .count();
    xdp + tcx + tc
}

/// What the next agent logs when it takes the receiving program over in `mode`.
fn takeover_log(mode: &str, args: &[&str]) -> &'static str {
    match (mode, args.contains(&"clsact")) {
        ("native", _) => "XDP link taken over",
        (_, true) => "cls_bpf receive filter taken over",
        (_, false) => "TCX link taken over",
    }
}

/// Starts the target agent on the collector namespace with extra `args`.
fn start_target(topo: &Topology, config: &str, args: &[&str]) -> Agent {
    Agent::start_with(
        &topo.col,
        config,
        &std::env::temp_dir().join(mirror_tests::netns::unique("agt")),
        &StartOptions {
            args,
            ..StartOptions::default()
        },
    )
}

/// The source agent mirrors two sessions to the target, whose agent (run with `args`)
/// receives on `receiving` in `mode` (native or tc); one more datagram of `large` bytes
/// goes to the full session.
fn mirror_to_receiver(
    topo: &Topology,
    receiving: &str,
    mode: &str,
    args: &[&str],
    large: usize,
    ending: Ending,
) {
    let mut target = start_target(topo, &target_config(receiving), args);
    let rx = wait_attached(&target, "tmrcv-col");
    assert_eq!(rx["XdpMode"], mode, "{rx}");
    for name in ["mrx100", "mrx100-in", "mrx200", "mrx200-in"] {
        assert!(
            link_exists(&topo.col, name),
            "capture interface {name} missing"
        );
    }
    let source = Agent::start(&topo.node, &config_with_collector(SOURCE_CONFIG));
    source.wait_settled(WAIT);

    // Sinks so the node answers no ICMP for the test's datagrams.
    let _sinks = in_netns(&topo.node, || {
        [FULL_PORT, CUT_PORT].map(|p| UdpSocket::bind((NODE_SRC_ADDR, p)).expect("node sink"))
    });
    let mut on_source = Capture::start(
        &topo.node,
        "src0",
        &format!("udp dst port {FULL_PORT} or udp dst port {CUT_PORT}"),
    );
    let mut full = Capture::start(&topo.col, "mrx100", "");
    let mut cut = Capture::start(&topo.col, "mrx200", "");

    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 0)).expect("workload socket")
    });
    const EACH: usize = 5;
    for i in 0..EACH {
        let small: Vec<u8> = (0..200).map(|b| (b + i) as u8).collect();
        let large: Vec<u8> = (0..700).map(|b| (b * 3 + i) as u8).collect();
        client
            .send_to(&small, (NODE_SRC_ADDR, FULL_PORT))
            .expect("send to the full-frame session");
        client
            .send_to(&large, (NODE_SRC_ADDR, CUT_PORT))
            .expect("send to the truncating session");
    }
    let large: Vec<u8> = (0..large).map(|b| (b * 7) as u8).collect();
    client
        .send_to(&large, (NODE_SRC_ADDR, FULL_PORT))
        .expect("send a large datagram");
    let full_count = EACH + 1;
    on_source.wait_for_frames(full_count + EACH, WAIT);
    full.wait_for_frames(full_count, WAIT);
    cut.wait_for_frames(EACH, WAIT);
    // Anything late (a stray frame) would show up as a mismatch below.
    thread::sleep(Duration::from_millis(300));
    let (src_pcap, full_pcap, cut_pcap) = (on_source.stop(), full.stop(), cut.stop());
    let sent = capture::frames(&src_pcap);
    let got_full = capture::frames(&full_pcap);
    let got_cut = capture::frames(&cut_pcap);

    let want_full: Vec<Vec<u8>> = sent
        .iter()
        .filter(|f| dst_port(f) == Some(FULL_PORT))
        .cloned()
        .collect();
    let want_cut: Vec<Vec<u8>> = sent
        .iter()
        .filter(|f| dst_port(f) == Some(CUT_PORT))
        .map(|f| f[..CUT_LEN.min(f.len())].to_vec())
        .collect();
    assert_eq!(want_full.len(), full_count, "source capture");
    assert_eq!(want_cut.len(), EACH, "source capture");
    assert_same_as_wire(
        &got_full,
        &want_full,
        "mrx100 must carry exactly the frames of VNI 100 as the source sent them",
    );
    assert_same_as_wire(
        &got_cut,
        &want_cut,
        &format!("mrx200 must carry the frames of VNI 200 cut to {CUT_LEN} bytes"),
    );
    for p in [src_pcap, full_pcap, cut_pcap] {
        capture::remove(&p);
    }

    // The counters of List match what arrived (published once a second).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = wait_attached(&target, "tmrcv-col");
        let (a, b) = (vni_counters(&r, 100), vni_counters(&r, 200));
        let bytes_full: usize = want_full.iter().map(Vec::len).sum();
        let bytes_cut: usize = want_cut.iter().map(Vec::len).sum();
        if a["Frames"] == full_count as u64
            && a["Bytes"] == bytes_full as u64
            && b["Frames"] == EACH as u64
            && b["Bytes"] == bytes_cut as u64
        {
            assert_eq!(a["CaptureInterface"], "mrx100");
            assert_eq!(b["CaptureInterface"], "mrx200");
            for c in [&a, &b] {
                assert_eq!(c["Malformed"], 0, "{r}");
                assert_eq!(c["NoCaptureInterface"], 0, "{r}");
                assert_eq!(c["RedirectErrors"], 0, "{r}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "receiver counters never matched the traffic: {r}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The same counters in Prometheus, promtool clean (published with the List counters).
    let (status, text) = metrics_get(&topo.col, 9464, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    let vni100 = "{receiver=\"tmrcv-col\",vni=\"100\"}";
    let vni200 = "{receiver=\"tmrcv-col\",vni=\"200\"}";
    assert_eq!(
        value(&text, &format!("mirror_receive_frames_total{vni100}")),
        full_count as f64
    );
    assert_eq!(
        value(&text, &format!("mirror_receive_frames_total{vni200}")),
        EACH as f64
    );
    assert_eq!(
        value(&text, &format!("mirror_receive_bytes_total{vni200}")),
        (EACH * CUT_LEN) as f64
    );
    assert_eq!(
        value(
            &text,
            "mirror_receive_errors_total{reason=\"redirect\",receiver=\"tmrcv-col\",vni=\"100\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!("mirror_receiver_attached{{mode=\"{mode}\",receiver=\"tmrcv-col\"}}")
        ),
        1.0
    );
    assert!(
        value(
            &text,
            "mirror_receive_packets_total{receiver=\"tmrcv-col\"}"
        ) >= 10.0
    );

    // A reload that drops VNI 200 from the file removes its capture pair, keeps VNI 100's.
    target.reload(&target_config(receiving).replace("[100, 200]", "[100]"));
    let deadline = std::time::Instant::now() + WAIT;
    while link_exists(&topo.col, "mrx200") || link_exists(&topo.col, "mrx200-in") {
        assert!(
            std::time::Instant::now() < deadline,
            "mrx200 still there after the reload dropped VNI 200\n{}",
            target.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(link_exists(&topo.col, "mrx100"), "mrx100 must stay");
    let r = wait_attached(&target, "tmrcv-col");
    assert_eq!(r["VirtualNetworkIds"], serde_json::json!([100]), "{r}");
    assert_eq!(r["XdpMode"], mode, "{r}");

    // SIGTERM: everything stays attached (pinned), and frames keep arriving on mrx100 while
    // no target agent runs.
    let config = std::fs::read_to_string(target.dir().join("agent.toml")).expect("config");
    let dir = target.terminate();
    let programs = |dev: &str| receive_programs(&topo.col, dev);
    assert_eq!(
        programs(receiving),
        1,
        "receiving program left on {receiving} after stop"
    );
    let mrx100 = capture_index(&topo.col, "mrx100");
    let during = |what: &str| {
        let mut cap = Capture::start(&topo.col, "mrx100", "");
        for i in 0..3u8 {
            client
                .send_to(&[i; 100], (NODE_SRC_ADDR, FULL_PORT))
                .expect("send");
        }
        cap.wait_for_frames(3, WAIT);
        let pcap = cap.stop();
        let n = capture::frames(&pcap).len();
        capture::remove(&pcap);
        assert_eq!(n, 3, "frames on mrx100 {what}");
    };
    during("with no target agent running");

    // The next agent takes the links and the capture pair over: one program still, the same
    // interface, frames still flowing.
    let next = Agent::start_with(
        &topo.col,
        &config,
        &dir,
        &StartOptions {
            args,
            ..StartOptions::default()
        },
    );
    let r = wait_attached(&next, "tmrcv-col");
    assert_eq!(r["XdpMode"], mode, "{r}");
    assert!(
        next.log_text().contains(takeover_log(mode, args)),
        "{}",
        next.log_text()
    );
    assert_eq!(programs(receiving), 1, "one program on {receiving}");
    assert_eq!(
        capture_index(&topo.col, "mrx100"),
        mrx100,
        "the next agent takes the capture interface over instead of re-creating it"
    );
    during("after the next agent took over");
    let dir = next.terminate();
    drop(source);
    match ending {
        // cleanup removes what the agents left: the XDP links and the capture pairs too.
        Ending::Cleanup => {
            let out = Agent::cleanup(&topo.col, &dir);
            assert_eq!(out.code, 0, "cleanup: {}{}", out.stdout, out.stderr);
            assert!(
                out.stdout.contains("mrx100"),
                "cleanup output: {}",
                out.stdout
            );
            if args.contains(&"clsact") {
                assert!(
                    out.stdout
                        .contains(&format!("receive filter on {receiving}")),
                    "cleanup output: {}",
                    out.stdout
                );
            }
        }
        // The receiver left the config while no agent ran: the next agent removes what the
        // last one left for it.
        Ending::Unconfigured => {
            let last = Agent::start_with(
                &topo.col,
                "",
                &dir,
                &StartOptions {
                    args,
                    ..StartOptions::default()
                },
            );
            let deadline = std::time::Instant::now() + WAIT;
            while programs(receiving) > 0 || link_exists(&topo.col, "mrx100") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the unconfigured receiver's link or capture pair stayed\n{}",
                    last.log_text()
                );
                thread::sleep(Duration::from_millis(100));
            }
            last.stop();
        }
    }
    for name in ["mrx100", "mrx100-in"] {
        assert!(
            !link_exists(&topo.col, name),
            "{name} left behind after cleanup"
        );
    }
    assert_eq!(
        programs(receiving),
        0,
        "receiving program left on {receiving} after cleanup"
    );
}

/// How `mirror_to_receiver` ends, after a restart took the receiver over.
enum Ending {
    /// `mirror-agent cleanup` with no agent running.
    Cleanup,
    /// An agent starts whose config no longer has the receiver.
    Unconfigured,
}

/// The interface index of a capture interface, from inside its namespace.
fn capture_index(ns: &NetNs, name: &str) -> String {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{name}/ifindex")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Parameters of a bad create, and the status and code they must get.
type BadInput<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);

fn rpc_error(agent: &Agent, params: &[(&str, &str)]) -> (u16, String) {
    let r = rpc_get_params(&agent.socket, params);
    let body = json(&r);
    (
        r.status,
        body["Code"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn receiver_api_creates_lists_rejects_bad_input_and_deletes() {
    let ns = mirror_tests::topology::quiet_netns(
        "rxa",
        &[
            ("rx0", "rx1", "198.18.40.1/24"),
            ("rx2", "rx3", "198.18.41.1/24"),
        ],
    );
    let agent = Agent::start(&ns, "");
    let params = [
        ("NetworkInterfaceId", "rx0"),
        ("VirtualNetworkIds.1", "301"),
        ("VirtualNetworkIds.2", "300"),
        ("TrafficMirrorReceiverName", "tools"),
        ("ClientToken", "rx-token-1"),
    ];
    let created = agent.call("CreateTrafficMirrorReceiver", &params);
    let id = created["TrafficMirrorReceiverId"]
        .as_str()
        .expect("an id")
        .to_string();
    assert!(id.starts_with("tmrcv-"), "{created}");
    let r = wait_attached(&agent, &id);
    // The same ClientToken and parameters: the first answer again, nothing made twice.
    let again = agent.call("CreateTrafficMirrorReceiver", &params);
    assert_eq!(
        again["TrafficMirrorReceiverId"],
        created["TrafficMirrorReceiverId"]
    );
    assert_eq!(again["RequestId"], created["RequestId"]);
    let mut other = vec![("Action", "CreateTrafficMirrorReceiver")];
    other.extend_from_slice(&params);
    other[2] = ("VirtualNetworkIds.1", "302");
    assert_eq!(
        rpc_error(&agent, &other),
        (400, "IdempotentParameterMismatch".to_string())
    );
    assert_eq!(receivers(&agent).len(), 1);
    assert_eq!(r["NetworkInterfaceId"], "rx0");
    assert_eq!(r["DestinationPort"], 4789);
    assert_eq!(r["VirtualNetworkIds"], serde_json::json!([300, 301]));
    assert_eq!(r["TrafficMirrorReceiverName"], "tools");
    assert_eq!(r["TrafficMirrorReceiverBusinessStatus"], "Normal", "{r}");
    for name in ["mrx300", "mrx300-in", "mrx301", "mrx301-in"] {
        assert!(link_exists(&ns, name), "capture interface {name} missing");
    }
    let rx0 = ns.exec(&["ip", "link", "show", "rx0"]);
    assert!(
        String::from_utf8_lossy(&rx0.stdout).contains("xdp"),
        "no XDP program on rx0: {}",
        String::from_utf8_lossy(&rx0.stdout)
    );

    let create = "CreateTrafficMirrorReceiver";
    let bad: &[BadInput] = &[
        (&[("VirtualNetworkIds.1", "5")], 400, "MissingParameter"),
        (&[("NetworkInterfaceId", "rx2")], 400, "MissingParameter"),
        (
            &[
                ("NetworkInterfaceId", "rx2"),
                ("VirtualNetworkIds.1", "16777216"),
            ],
            400,
            "InvalidVirtualNetworkId.Malformed",
        ),
        (
            &[("NetworkInterfaceId", "rx2"), ("VirtualNetworkIds.1", "x")],
            400,
            "InvalidVirtualNetworkId.Malformed",
        ),
        (
            &[
                ("NetworkInterfaceId", "rx2"),
                ("VirtualNetworkIds.1", "7"),
                ("VirtualNetworkIds.2", "7"),
            ],
            400,
            "DuplicatedParam.VirtualNetworkIds",
        ),
        (
            &[
                ("NetworkInterfaceId", "nosuch0"),
                ("VirtualNetworkIds.1", "7"),
            ],
            400,
            "ResourceNotFound.NetworkInterface",
        ),
        (
            &[
                ("NetworkInterfaceId", "rx2"),
                ("VirtualNetworkIds.1", "7"),
                ("DestinationPort", "0"),
            ],
            400,
            "InvalidDestinationPort.Malformed",
        ),
        (
            &[
                ("NetworkInterfaceId", "rx2"),
                ("VirtualNetworkIds.1", "300"),
            ],
            409,
            "InvalidVirtualNetworkId.Conflict",
        ),
        (
            &[("NetworkInterfaceId", "rx0"), ("VirtualNetworkIds.1", "7")],
            400,
            "ResourceAlreadyAssociated.NetworkInterface",
        ),
        (
            &[
                ("NetworkInterfaceId", "mrx300"),
                ("VirtualNetworkIds.1", "7"),
            ],
            400,
            "InvalidParameter.NetworkInterfaceId",
        ),
    ];
    for (params, status, code) in bad {
        let mut all = vec![("Action", create)];
        all.extend_from_slice(params);
        assert_eq!(
            rpc_error(&agent, &all),
            (*status, code.to_string()),
            "{params:?}"
        );
    }
    assert_eq!(
        rpc_error(
            &agent,
            &[
                ("Action", "DeleteTrafficMirrorReceiver"),
                ("TrafficMirrorReceiverId", "tmrcv-nosuch")
            ]
        ),
        (400, "ResourceNotFound.TrafficMirrorReceiver".to_string())
    );
    // DryRun validates and changes nothing.
    assert_eq!(
        rpc_error(
            &agent,
            &[
                ("Action", create),
                ("NetworkInterfaceId", "rx2"),
                ("VirtualNetworkIds.1", "9"),
                ("DryRun", "true")
            ]
        ),
        (400, "DryRunOperation".to_string())
    );
    assert_eq!(
        receivers(&agent).len(),
        1,
        "bad input must not change state"
    );
    assert!(!link_exists(&ns, "mrx9"));

    // The CLI's friendly subcommands: create prints the id, list a row per VNI. rx2's peer
    // has a jumbo MTU, above what a veth allows under a program that is not frags-aware: the
    // native attach is refused and the receiver runs in TC ingress.
    for dev in ["rx2", "rx3"] {
        ns.exec(&["ip", "link", "set", dev, "mtu", "9000"]);
    }
    let out = agent.cli(&["receiver", "create", "--interface", "rx2", "--vni", "400"]);
    assert_eq!(
        out.code, 0,
        "receiver create: {} {}",
        out.stdout, out.stderr
    );
    let cli_id = out.stdout.trim().to_string();
    assert!(cli_id.starts_with("tmrcv-"), "{}", out.stdout);
    wait_attached(&agent, &cli_id);
    let table = agent.cli(&["receiver", "list"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&cli_id))
        .unwrap_or_else(|| panic!("no row for {cli_id}:\n{}", table.stdout));
    for field in ["rx2", "4789", "tc", "400", "mrx400", "Created"] {
        assert!(
            row.split_whitespace().any(|c| c == field),
            "{field} not in {row:?}"
        );
    }
    let out = agent.cli(&["receiver", "delete", &cli_id]);
    assert_eq!(
        out.code, 0,
        "receiver delete: {} {}",
        out.stdout, out.stderr
    );

    agent.call(
        "DeleteTrafficMirrorReceiver",
        &[("TrafficMirrorReceiverId", &id)],
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !receivers(&agent).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "receiver not deleted: {:?}",
            receivers(&agent)
        );
        thread::sleep(Duration::from_millis(100));
    }
    for name in ["mrx300", "mrx300-in", "mrx301", "mrx301-in", "mrx400"] {
        assert!(!link_exists(&ns, name), "{name} left behind after delete");
    }
    let rx0 = ns.exec(&["ip", "link", "show", "rx0"]);
    assert!(
        !String::from_utf8_lossy(&rx0.stdout).contains("xdp"),
        "XDP still attached to rx0 after delete"
    );
    agent.stop();
}

/// The receiver needs no more than the agent's three capabilities: as `nobody` with CAP_BPF,
/// CAP_NET_ADMIN and CAP_PERFMON it attaches XDP, makes the capture pairs (CAP_NET_ADMIN also
/// covers their per-interface IPv6 sysctl in its own namespace) and removes them on stop.
/// Tool: setpriv (util-linux).
#[test]
fn receiver_runs_with_the_agents_three_capabilities() {
    let topo = Topology::new();
    let wrapper = as_nobody_with("-all,+bpf,+net_admin,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // --detach-on-exit: the stop below removes the capture pairs, as nobody too.
    let target = Agent::start_with(
        &topo.col,
        &target_config("col0"),
        &nobody_dir("rxl"),
        &StartOptions {
            wrapper: &wrapper,
            args: &["--detach-on-exit"],
            ..StartOptions::default()
        },
    );
    let r = wait_attached(&target, "tmrcv-col");
    assert_eq!(r["XdpMode"], "native", "{r}");
    assert_eq!(
        r["TrafficMirrorReceiverBusinessStatus"],
        "Normal",
        "{r}\n{}",
        target.log_text()
    );
    for name in ["mrx100", "mrx200"] {
        assert!(link_exists(&topo.col, name), "{name} missing");
    }
    target.stop();
    for name in ["mrx100", "mrx200"] {
        assert!(!link_exists(&topo.col, name), "{name} left behind");
    }
}

/// An IPv6 target: the copies arrive with an IPv6 outer header, and the receiver decapsulates
/// them as it does IPv4 ones (byte-identical frames, cut to PacketLength 64).
#[test]
fn copies_to_an_ipv6_target_arrive_byte_identical() {
    const PORT6: u16 = 7300;
    let topo = Topology::new();
    let target = Agent::start(
        &topo.col,
        r#"
[[receivers]]
id = "tmrcv-v6"
interface = "col0"
virtual_network_ids = [300]
"#,
    );
    wait_attached(&target, "tmrcv-v6");
    let source_config = format!(
        r#"
[[targets]]
id = "tmt-v6"
destination_ip = "{COLLECTOR_ADDR6}"

[[filters]]
id = "tmf-v6"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "{PORT6}/{PORT6}"

[[sessions]]
id = "tms-v6"
priority = 1
virtual_network_id = 300
packet_length = 64
enabled = true
filter_id = "tmf-v6"
target_id = "tmt-v6"
sources = ["src0"]
"#
    );
    let source = Agent::start(&topo.node, &source_config);
    source.wait_settled(WAIT);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, PORT6)).expect("node sink")
    });
    let mut on_source = Capture::start(&topo.node, "src0", &format!("udp dst port {PORT6}"));
    let mut got = Capture::start(&topo.col, "mrx300", "");
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 0)).expect("workload socket")
    });
    for i in 0..5u8 {
        client
            .send_to(&[i; 300], (NODE_SRC_ADDR, PORT6))
            .expect("send");
    }
    on_source.wait_for_frames(5, WAIT);
    got.wait_for_frames(5, WAIT);
    thread::sleep(Duration::from_millis(300));
    let (src_pcap, got_pcap) = (on_source.stop(), got.stop());
    let want: Vec<Vec<u8>> = capture::frames(&src_pcap)
        .iter()
        .map(|f| f[..64].to_vec())
        .collect();
    assert_eq!(want.len(), 5);
    assert_same_as_wire(
        &capture::frames(&got_pcap),
        &want,
        "mrx300 must carry the frames cut to 64 bytes",
    );
    capture::remove(&src_pcap);
    capture::remove(&got_pcap);
    drop(source);
    target.stop();
}

/// The source agent and a receiver agent on one host, the collector link at MTU 9000 so
/// whole frames fit in VXLAN: col0 refuses native XDP at that MTU and the receiver runs in
/// TC ingress. Every copy the source makes (`bpf_clone_redirect`, so every one arrives
/// marked as redirected, which generic XDP skipped: it saw 2 of 20) is counted and
/// delivered, byte-identical, for datagrams of several sizes up to 8000 bytes.
#[test]
fn same_host_source_and_tc_receiver_deliver_every_copy() {
    const N: usize = 250;
    const SIZES: [usize; 5] = [18, 200, 1400, 3000, 8000];
    let topo = Topology::new();
    set_mtu(&topo, 9000);
    let target = start_target(&topo, &target_config("col0"), &[]);
    let rx = wait_attached(&target, "tmrcv-col");
    assert_eq!(rx["XdpMode"], "tc", "{rx}");
    let source = Agent::start(&topo.node, &config_with_collector(SOURCE_CONFIG));
    source.wait_settled(WAIT);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, FULL_PORT)).expect("node sink")
    });
    let mut on_source = Capture::start(&topo.node, "src0", &format!("udp dst port {FULL_PORT}"));
    let mut got = Capture::start(&topo.col, "mrx100", "");
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 0)).expect("workload socket")
    });
    let mut bytes = 0;
    for i in 0..N {
        let size = SIZES[i % SIZES.len()];
        let payload: Vec<u8> = (0..size).map(|b| (b * 13 + i) as u8).collect();
        client
            .send_to(&payload, (NODE_SRC_ADDR, FULL_PORT))
            .expect("send to the full-frame session");
        // Ethernet, IPv4 and UDP headers around the payload.
        bytes += 14 + 20 + 8 + size;
        // Paced a little so that tcpdump's buffers, not the data path, set no limit.
        if i % 10 == 9 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    on_source.wait_for_frames(N, WAIT);
    got.wait_for_frames(N, WAIT);
    thread::sleep(Duration::from_millis(300));
    let (src_pcap, got_pcap) = (on_source.stop(), got.stop());
    let sent = capture::frames(&src_pcap);
    let delivered = capture::frames(&got_pcap);
    assert_eq!(sent.len(), N, "source capture");
    assert_eq!(
        delivered.len(),
        N,
        "every copy must reach mrx100 (generic XDP delivered a tenth)"
    );
    // The frames the source saw, as the wire carries them: a local sender's UDP checksum,
    // left to offload in the source's capture, is filled in the copy.
    assert_same_as_wire(
        &delivered,
        &sent,
        "mrx100 must carry exactly the frames the source sent",
    );
    capture::remove(&src_pcap);
    capture::remove(&got_pcap);

    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = wait_attached(&target, "tmrcv-col");
        let c = vni_counters(&r, 100);
        if c["Frames"] == N as u64 && c["Bytes"] == bytes as u64 {
            for field in ["Malformed", "NoCaptureInterface", "RedirectErrors"] {
                assert_eq!(c[field], 0, "{field}: {r}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "receiver counters never matched the {N} frames ({bytes} bytes): {r}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let (status, text) = metrics_get(&topo.col, 9464, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(
            &text,
            "mirror_receive_frames_total{receiver=\"tmrcv-col\",vni=\"100\"}"
        ),
        N as f64
    );
    assert_eq!(
        value(
            &text,
            "mirror_receiver_attached{mode=\"tc\",receiver=\"tmrcv-col\"}"
        ),
        1.0
    );
    drop(source);
    target.stop();
}

/// `kill -9` of the receiver agent while copies flow: the pinned TCX link (or the cls_bpf
/// filter) keeps delivering with no agent running, the next agent takes it over, and not one
/// copy of a steady stream is lost across the whole restart.
fn tc_receive_survives_kill_9(args: &[&str]) {
    let topo = Topology::new();
    set_mtu(&topo, 9000);
    let target = start_target(&topo, &target_config("col0"), args);
    let rx = wait_attached(&target, "tmrcv-col");
    assert_eq!(rx["XdpMode"], "tc", "{rx}");
    let source = Agent::start(&topo.node, &config_with_collector(SOURCE_CONFIG));
    source.wait_settled(WAIT);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, FULL_PORT)).expect("node sink")
    });
    let mut got = Capture::start(&topo.col, "mrx100", "");
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 0)).expect("workload socket")
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            let mut seq: u32 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut payload = vec![0u8; 2000];
                payload[..4].copy_from_slice(&seq.to_be_bytes());
                client
                    .send_to(&payload, (NODE_SRC_ADDR, FULL_PORT))
                    .expect("send");
                seq += 1;
                thread::sleep(Duration::from_millis(3));
            }
            seq
        })
    };
    thread::sleep(Duration::from_millis(300));
    let dir = target.kill9();
    // No agent: the pinned link (or the filter) runs on.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(receive_programs(&topo.col, "col0"), 1, "after kill -9");
    let config = std::fs::read_to_string(dir.join("agent.toml")).expect("config");
    let next = Agent::start_with(
        &topo.col,
        &config,
        &dir,
        &StartOptions {
            args,
            ..StartOptions::default()
        },
    );
    let r = wait_attached(&next, "tmrcv-col");
    assert_eq!(r["XdpMode"], "tc", "{r}");
    assert!(
        next.log_text().contains(takeover_log("tc", args)),
        "{}",
        next.log_text()
    );
    assert_eq!(receive_programs(&topo.col, "col0"), 1, "after the takeover");
    thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().expect("sender thread") as usize;
    got.wait_for_frames(sent, WAIT);
    thread::sleep(Duration::from_millis(300));
    let pcap = got.stop();
    let seqs: Vec<u32> = capture::frames(&pcap)
        .iter()
        .filter(|f| f.len() == 14 + 20 + 8 + 2000)
        .map(|f| u32::from_be_bytes([f[42], f[43], f[44], f[45]]))
        .collect();
    capture::remove(&pcap);
    assert_eq!(
        seqs,
        (0..sent as u32).collect::<Vec<_>>(),
        "every copy, in order, across kill -9 and the takeover ({sent} sent)"
    );
    // The new agent's counters start with its maps, at the takeover.
    let c = vni_counters(&wait_attached(&next, "tmrcv-col"), 100);
    assert_eq!(c["RedirectErrors"], 0, "{c}");

    let dir = next.terminate();
    drop(source);
    let out = Agent::cleanup(&topo.col, &dir);
    assert_eq!(out.code, 0, "cleanup: {}{}", out.stdout, out.stderr);
    assert_eq!(
        receive_programs(&topo.col, "col0"),
        0,
        "receiving program left on col0 after cleanup"
    );
    assert!(
        !link_exists(&topo.col, "mrx100"),
        "mrx100 left after cleanup"
    );
}

#[test]
fn tcx_receive_link_survives_kill_9_and_is_taken_over() {
    tc_receive_survives_kill_9(&[]);
}

#[test]
fn clsact_receive_filter_survives_kill_9_and_is_taken_over() {
    tc_receive_survives_kill_9(&["--tc-attach", "clsact"]);
}

/// A kernel VXLAN device on the same host (VNI 100 to the collector) sends UDP GSO
/// super-packets, which cross the veth unsegmented into the TC receiver (a veth without XDP
/// keeps its peer's GSO). A decap with `bpf_skb_adjust_room` would leave the skb's UDP tunnel
/// GSO state behind and the segmentation into the capture pair would drop every segment, so
/// on kernels without `BPF_F_ADJ_ROOM_DECAP_L4_UDP` (6.18 has none) the program passes each
/// super-packet untouched and counts it as a redirect error; with the flag, every segment is
/// delivered. Frames that are not GSO (the device's own IPv6 chatter) are delivered either
/// way.
#[test]
fn gso_vxlan_super_packets_are_delivered_or_counted_never_lost_silently() {
    const SUPER: usize = 10;
    const SEGMENT: usize = 1000;
    const PAYLOAD: usize = 8000;
    let topo = Topology::new();
    for (ns, dev) in [(&topo.node, "up0"), (&topo.col, "col0")] {
        ns.exec(&["ip", "link", "set", dev, "mtu", "9000"]);
    }
    let target = start_target(&topo, &target_config("col0"), &[]);
    let rx = wait_attached(&target, "tmrcv-col");
    assert_eq!(rx["XdpMode"], "tc", "{rx}");
    let node = &topo.node;
    node.exec(&[
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "100",
        "remote",
        COLLECTOR_ADDR,
        "local",
        NODE_UP_ADDR,
        "dstport",
        "4789",
        "dev",
        "up0",
    ]);
    node.exec(&["sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1"]);
    node.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "vx0"]);
    node.exec(&["ip", "link", "set", "vx0", "mtu", "1450", "up"]);
    node.exec(&[
        "ip",
        "neigh",
        "add",
        "10.99.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "vx0",
        "nud",
        "permanent",
    ]);
    let got = Capture::start(&topo.col, "mrx100", "udp dst port 9999");
    in_netns(node, || {
        let s = UdpSocket::bind(("10.99.0.1", 0)).expect("socket on vx0");
        mirror_tests::sockopt::set_int(
            &s,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            SEGMENT as libc::c_int,
        )
        .expect("UDP_SEGMENT");
        for i in 0..SUPER {
            s.send_to(&[i as u8; PAYLOAD], ("10.99.0.2", 9999))
                .expect("send a UDP GSO super-packet");
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let counters = loop {
        let r = wait_attached(&target, "tmrcv-col");
        let c = vni_counters(&r, 100);
        let errors = c["RedirectErrors"].as_u64().unwrap_or_default() as usize;
        let frames = c["Frames"].as_u64().unwrap_or_default() as usize;
        if errors == SUPER || frames >= SUPER * PAYLOAD / SEGMENT {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "super-packets neither delivered nor counted: {r}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    thread::sleep(Duration::from_millis(300));
    let pcap = got.stop();
    let delivered = capture::frames(&pcap);
    capture::remove(&pcap);
    if counters["RedirectErrors"] == SUPER as u64 {
        assert!(
            delivered.is_empty(),
            "passed super-packets must not reach mrx100: {} frames",
            delivered.len()
        );
    } else {
        assert_eq!(counters["RedirectErrors"], 0, "{counters}");
        assert_eq!(
            delivered.len(),
            SUPER * PAYLOAD / SEGMENT,
            "one frame per segment on mrx100"
        );
        assert!(
            delivered.iter().all(|f| f.len() == 14 + 20 + 8 + SEGMENT),
            "segments of {SEGMENT} bytes"
        );
    }
    target.stop();
}

/// The whole pipeline as an operator runs it: a source agent mirrors a bulk TCP upload (GSO
/// super-packets on veth) to a receiver agent on the same host, and a tool on `mrx100`
/// reads the stream. `collector_mtu` 9000: whole frames fit in VXLAN, the receiving veth
/// refuses native XDP (TC receive), and tshark reassembles the upload from `mrx100`. 1500:
/// native XDP, and every wire segment arrives as one copy cut to the 1464 bytes that fit.
fn bulk_upload_read_on_the_capture_interface(collector_mtu: u32) {
    const TOTAL: usize = 4 << 20;
    const PORT: u16 = 7300;
    let topo = Topology::new();
    let mtu = collector_mtu.to_string();
    topo.node.exec(&["ip", "link", "set", "up0", "mtu", &mtu]);
    topo.col.exec(&["ip", "link", "set", "col0", "mtu", &mtu]);
    let target = start_target(&topo, &target_config("col0"), &[]);
    let rx = wait_attached(&target, "tmrcv-col");
    let want_mode = if collector_mtu > 3000 { "tc" } else { "native" };
    assert_eq!(rx["XdpMode"], want_mode, "{rx}");
    let source = Agent::start(
        &topo.node,
        &config_with_collector(
            r#"
[[filters]]
id = "tmf-tcp"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "TCP"
destination_port_range = "7300/7300"

[[sessions]]
id = "tms-tcp"
priority = 1
virtual_network_id = 100
enabled = true
filter_id = "tmf-tcp"
target_id = "tmt-col"
sources = ["src0"]
"#,
        ),
    );
    source.wait_settled(WAIT);
    let mut got = Capture::start_bulk(&topo.col, "mrx100", "tcp", 9216);
    let addr = NODE_SRC_ADDR.parse().expect("address");
    assert_eq!(bulk_tcp(&topo.node, &topo.wl, addr, PORT, TOTAL), TOTAL);
    got.wait_for_frames(1, WAIT);
    thread::sleep(Duration::from_millis(700));
    let pcap = got.stop_complete();
    let frames = capture::frames(&pcap);
    assert!(!frames.is_empty(), "nothing reached mrx100");
    if collector_mtu > 3000 {
        let (a, b) = tshark_follow(&pcap);
        let stream = a.max(b);
        assert!(
            stream as f64 >= TOTAL as f64 * 0.999,
            "tshark reassembled {stream} of {TOTAL} bytes from mrx100 ({} frames)",
            frames.len()
        );
        let bad = bad_checksums(&pcap);
        assert!(
            bad.is_empty(),
            "bad checksums on mrx100 (kept: {}):\n{}",
            pcap.display(),
            bad.join("\n")
        );
    } else {
        let mut claimed = 0usize;
        for f in &frames {
            let Some((total, payload, _)) = ipv4_tcp_claim(f) else {
                continue;
            };
            if payload == 0 {
                continue;
            }
            assert!(total + 14 <= 1514, "a frame claims {total} IP bytes");
            assert_eq!(
                f.len(),
                (14 + total).min(1464),
                "one copy per segment, cut to fit"
            );
            claimed += payload;
        }
        assert!(
            (TOTAL..=TOTAL + TOTAL / 50).contains(&claimed),
            "the segments on mrx100 claim {claimed} payload bytes of a {TOTAL}-byte upload"
        );
    }
    capture::remove(&pcap);
    drop(source);
    target.stop();
}

#[test]
fn bulk_upload_reassembles_on_the_capture_interface_at_mtu_9000() {
    bulk_upload_read_on_the_capture_interface(9000);
}

#[test]
fn bulk_upload_arrives_one_cut_copy_per_segment_at_mtu_1500() {
    bulk_upload_read_on_the_capture_interface(1500);
}
