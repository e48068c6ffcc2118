//! Restarts without a gap (SPEC section 8, issue 5): programs, links and maps are pinned in
//! bpffs, so mirroring and flow counting go on while no agent runs; the next agent adopts
//! what is pinned (an upgrade switches the links atomically to its programs), counters
//! continue, nothing is attached twice; `cleanup` and `--detach-on-exit` remove it all.
//!
//! Kernel requirements: TCX (6.6+) for pinnable links and BPF_LINK_UPDATE on them; bpffs (each
//! agent gets a private instance from the harness); veth and VXLAN as in mirror_e2e.rs.

use std::{
    net::UdpSocket,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{Agent, StartOptions},
    capture::{self, Capture},
    http::{metric_value, metrics_get},
    netns::{NetNs, in_netns},
    tcx::{attached, ids, program_loaded},
    topology::{NODE_SRC_ADDR, Topology, config_with_collector},
    traffic::{Stream, stream_seq},
};

const METRICS_PORT: u16 = 9464;

fn config() -> String {
    format!(
        "metrics_listen = \"127.0.0.1:{METRICS_PORT}\"\nflow_drain_ms = 200\n{}",
        config_with_collector(
            r#"
[[filters]]
id = "tmf-r"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[sessions]]
id = "tms-r"
priority = 1
virtual_network_id = 31
packet_length = 80
enabled = true
filter_id = "tmf-r"
target_id = "tmt-col"
sources = ["src0"]
"#
        )
    )
}

fn session_packets(ns: &NetNs) -> f64 {
    let (status, text) = metrics_get(ns, METRICS_PORT, "/metrics");
    assert_eq!(status, 200, "/metrics");
    metric_value(
        &text,
        "mirror_session_mirrored_packets_total{direction=\"ingress\",session=\"tms-r\"}",
    )
}

/// Waits for the published counter to reach `want` (published every second).
fn wait_counter(ns: &NetNs, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = session_packets(ns);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the stream and the capture; panics unless every datagram was mirrored exactly once.
fn assert_every_datagram_mirrored_once(stream: Stream, mut cap: Capture, what: &str) -> u32 {
    let sent = stream.stop();
    cap.wait_for_frames(sent as usize, Duration::from_secs(5));
    let pcap = cap.stop();
    let seqs = seqs_of(&pcap);
    capture::remove(&pcap);
    let expected: Vec<u32> = (0..sent).collect();
    assert!(
        seqs == expected,
        "copies have gaps or duplicates across {what}: {} copies for {sent} datagrams (first missing: {:?})",
        seqs.len(),
        expected.iter().find(|s| seqs.binary_search(s).is_err())
    );
    sent
}

fn seqs_of(pcap: &Path) -> Vec<u32> {
    let mut seqs: Vec<u32> = capture::vxlan_copies(pcap, 4789)
        .iter()
        .filter(|c| c.vni == 31)
        .filter_map(|c| stream_seq(&c.inner))
        .collect();
    seqs.sort_unstable();
    seqs
}

/// `kill -9` under traffic: every datagram is mirrored exactly once across the kill and the
/// restart, the next agent adopts the same programs (no reload, nothing attached twice), the
/// session counter continues, and packets counted while no agent ran reach the flow log.
#[test]
fn kill9_under_traffic_leaves_no_gap_and_the_next_agent_adopts() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let _sink2 = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7100)).expect("sink")
    });
    let agent = Agent::start(&topo.node, &config());
    let v = agent.call(
        "CreateFlowLog",
        &[
            ("Version", "2020-04-01"),
            ("FlowLogName", "restart"),
            ("ResourceType", "eni"),
            ("ResourceId", "src0"),
            ("TrafficType", "All"),
            ("LogProjectName", "proj"),
            ("LogTopicName", "restart"),
            ("AggregationIntervalSeconds", "2"),
        ],
    );
    assert!(v["Result"]["FlowLogId"].is_string(), "CreateFlowLog: {v}");
    // A session made through the API with a budget and sampling: kept by the store.
    let v = agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("TrafficMirrorFilterId", "tmf-r"),
            ("TrafficMirrorTargetId", "tmt-col"),
            ("Priority", "2"),
            ("TrafficMirrorSourceIds.1", "src1"),
            ("MaxPacketsPerSecond", "5000"),
            ("MaxBitsPerSecond", "8000000"),
            ("SampleOneIn", "7"),
            ("SampleMode", "flow"),
        ],
    );
    let budgeted = v["TrafficMirrorSessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    thread::sleep(Duration::from_millis(500));
    let before = attached(&topo.node, "src0");
    assert_eq!(before.len(), 2, "ingress and egress on src0: {before:?}");

    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let stream = Stream::start(&topo.wl, NODE_SRC_ADDR, 7000);
    thread::sleep(Duration::from_millis(1500));
    let counted_before_kill = session_packets(&topo.node);
    assert!(counted_before_kill > 0.0, "mirroring before the kill");

    let dir = agent.kill9();
    // While no agent runs: the stream goes on, and a separate flow of exactly 50 datagrams.
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..50 {
        client
            .send_to(&[7u8; 100], (NODE_SRC_ADDR, 7100))
            .expect("send while down");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(700));
    let down = attached(&topo.node, "src0");
    assert_eq!(
        down, before,
        "the programs stay attached while no agent runs"
    );

    let agent = Agent::start_in(&topo.node, &config(), &dir);
    thread::sleep(Duration::from_millis(1000));
    let sent = assert_every_datagram_mirrored_once(stream, cap, "the kill");
    let list = agent.call(
        "ListTrafficMirrorSessions",
        &[("TrafficMirrorSessionIds.1", budgeted.as_str())],
    );
    let s = &list["TrafficMirrorSessions"][0];
    for (k, want) in [
        ("MaxPacketsPerSecond", serde_json::json!(5000)),
        ("MaxBitsPerSecond", serde_json::json!(8000000)),
        ("SampleOneIn", serde_json::json!(7)),
        ("SampleMode", serde_json::json!("flow")),
    ] {
        assert_eq!(s[k], want, "{k} across the restart: {list}");
    }
    let after = attached(&topo.node, "src0");
    assert_eq!(
        after, before,
        "the new agent adopted the same programs (no reload, nothing attached twice)"
    );
    let counted = wait_counter(&topo.node, f64::from(sent));
    assert_eq!(
        counted,
        f64::from(sent),
        "the session counter continues across the restart (was {counted_before_kill} before the kill)"
    );

    // The 50 datagrams sent while no agent ran were counted by the kernel and reported by
    // the next agent: flow counting went on.
    thread::sleep(Duration::from_millis(4500));
    let topic = agent.state_dir.join("flowlogs/proj/restart");
    let mut packets = 0;
    for e in std::fs::read_dir(&topic)
        .unwrap_or_else(|e| panic!("flow-log files in {}: {e}", topic.display()))
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let r: serde_json::Value = serde_json::from_str(line).expect("JSON record");
            if r["dstport"] == 7100 {
                packets += r["packets"].as_u64().unwrap_or_default();
            }
        }
    }
    assert_eq!(
        packets, 50,
        "datagrams sent while no agent ran, in the flow log"
    );
    drop(agent);
}

/// An upgrade: the new agent's programs differ from the pinned ones (simulated by hiding the
/// pinned programs, so it loads its own). The links switch to the new programs atomically:
/// no copy is lost, each direction still runs one program, the old programs are unloaded.
#[test]
fn an_upgrade_switches_the_links_atomically() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let agent = Agent::start(&topo.node, &config());
    let before = attached(&topo.node, "src0");
    assert_eq!(before.len(), 2, "{before:?}");
    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let stream = Stream::start(&topo.wl, NODE_SRC_ADDR, 7000);
    thread::sleep(Duration::from_millis(500));
    let dir = agent.terminate();

    // Another build pins its programs under another name: rename ours out of its way.
    let pins = dir.join("bpf/mirror-agent");
    let progs = mirror_tests::agent::pin_subdir(&pins, "progs-");
    std::fs::rename(&progs, pins.join("progs-0000000000000000-older"))
        .expect("renaming the pinned programs");

    let agent = Agent::start_in(&topo.node, &config(), &dir);
    thread::sleep(Duration::from_millis(500));
    assert_every_datagram_mirrored_once(stream, cap, "the upgrade");
    let after = attached(&topo.node, "src0");
    assert_eq!(after.len(), 2, "one program per direction: {after:?}");
    assert!(
        ids(&after).is_disjoint(&ids(&before)),
        "the links run the new programs: before {before:?}, after {after:?}"
    );
    assert!(
        !pins.join("progs-0000000000000000-older").exists(),
        "the older build's pins are removed"
    );
    for id in ids(&before) {
        assert!(!program_loaded(id), "old program {id} is unloaded");
    }
    drop(agent);
}

/// SIGTERM leaves the data path running for the next agent; `cleanup` refuses while an agent
/// runs, then removes every link, program, pin and device; `--detach-on-exit` does the same
/// on SIGTERM.
#[test]
fn sigterm_leaves_it_running_and_cleanup_or_detach_on_exit_remove_it() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, &config());
    let progs = attached(&topo.node, "src0");
    assert_eq!(progs.len(), 2, "{progs:?}");
    let dir = agent.dir();
    let refused = Agent::cleanup(&topo.node, &dir);
    assert_ne!(refused.code, 0, "cleanup must refuse while the agent runs");
    assert!(
        refused.stderr.contains("an agent is running"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        attached(&topo.node, "src0"),
        progs,
        "refusal changed nothing"
    );

    let dir = agent.terminate();
    assert_eq!(attached(&topo.node, "src0"), progs, "left running");
    let device = |name: &str| {
        topo.node
            .exec_status(&["ip", "link", "show", name])
            .status
            .success()
    };
    assert!(device("mirvx4789"), "tunnel device left for the next agent");
    assert!(
        device("mirseg"),
        "segmentation device left for the next agent"
    );
    assert_eq!(
        attached(&topo.node, "up0")
            .iter()
            .any(|(dir, name, _)| dir == "egress" && name == "mirror_tx"),
        mirror_tests::agent::fast_path_allowed(),
        "the uplink keeps encapsulating copies (unless the copy path is forced to the tunnel)"
    );
    let out = Agent::cleanup(&topo.node, &dir);
    assert_eq!(out.code, 0, "cleanup: {}{}", out.stdout, out.stderr);
    assert!(attached(&topo.node, "src0").is_empty(), "{}", out.stdout);
    assert!(
        !device("mirvx4789"),
        "tunnel device removed: {}",
        out.stdout
    );
    assert!(
        !device("mirseg"),
        "segmentation device removed: {}",
        out.stdout
    );
    assert!(
        attached(&topo.node, "up0").is_empty(),
        "mirror_tx detached from the uplink: {}",
        out.stdout
    );
    assert!(
        !dir.join("bpf/mirror-agent").exists(),
        "pins removed: {}",
        out.stdout
    );
    for id in ids(&progs) {
        assert!(!program_loaded(id), "program {id} unloaded");
    }
    let again = Agent::cleanup(&topo.node, &dir);
    assert_eq!(again.code, 0, "cleanup twice: {}", again.stderr);
    assert!(
        again.stdout.contains("nothing to remove"),
        "{}",
        again.stdout
    );
    Agent::remove_dir(&dir);

    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("agt"));
    let agent = Agent::start_with(
        &topo.node,
        &config(),
        &dir,
        &StartOptions {
            args: &["--detach-on-exit"],
            ..StartOptions::default()
        },
    );
    let progs = attached(&topo.node, "src0");
    assert_eq!(progs.len(), 2, "{progs:?}");
    let dir = agent.terminate();
    assert!(attached(&topo.node, "src0").is_empty(), "detached on exit");
    assert!(!device("mirvx4789"), "tunnel device removed on exit");
    assert!(!device("mirseg"), "segmentation device removed on exit");
    assert!(
        attached(&topo.node, "up0").is_empty(),
        "mirror_tx detached on exit"
    );
    assert!(
        !dir.join("bpf/mirror-agent").exists(),
        "pins removed on exit"
    );
    for id in ids(&progs) {
        assert!(!program_loaded(id), "program {id} unloaded");
    }
    Agent::remove_dir(&dir);
}

/// A second agent pointed at a pin directory another agent is using refuses to start (two
/// agents would adopt and remove each other's links), and so does `cleanup`; the running
/// agent is untouched.
#[test]
fn a_second_agent_on_the_same_pin_directory_refuses_to_start() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, &config());
    let progs = attached(&topo.node, "src0");
    assert_eq!(progs.len(), 2, "{progs:?}");
    let other = std::env::temp_dir().join(mirror_tests::netns::unique("agt"));
    std::fs::create_dir_all(&other).expect("second agent dir");
    let mut child = topo
        .node
        .command(
            mirror_tests::agent::agent_binary()
                .to_str()
                .expect("utf-8 path"),
        )
        .arg("run")
        .arg("--state-dir")
        .arg(other.join("state"))
        .arg("--api-socket")
        .arg(other.join("api.sock"))
        .arg("--pin-dir")
        .arg(agent.dir().join("bpf/mirror-agent"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the second agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the second agent") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&other);
            panic!("the second agent kept running on a pin directory in use");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&other);
    assert!(!status.success(), "the second agent must fail: {stderr}");
    assert!(
        stderr.contains("another agent is using the pin directory"),
        "it says why: {stderr}"
    );
    assert_eq!(
        attached(&topo.node, "src0"),
        progs,
        "the first agent is untouched"
    );

    // cleanup refuses too, even when asked with another socket that nobody answers on.
    let out = topo
        .node
        .command(
            mirror_tests::agent::agent_binary()
                .to_str()
                .expect("utf-8 path"),
        )
        .arg("cleanup")
        .arg("--state-dir")
        .arg(agent.state_dir.clone())
        .arg("--pin-dir")
        .arg(agent.dir().join("bpf/mirror-agent"))
        .arg("--api-socket")
        .arg(other.join("nobody.sock"))
        .output()
        .expect("running cleanup");
    assert!(!out.status.success(), "cleanup must refuse");
    assert_eq!(
        attached(&topo.node, "src0"),
        progs,
        "cleanup removed nothing"
    );
    drop(agent);
}
