//! Faults stay contained: each is reported (state, metrics) while the agent keeps serving and
//! everything else keeps working.
//!
//! Kernel requirements: as mirror_e2e.rs and flowlog_e2e.rs; tmpfs for a small filesystem;
//! the verifier's rule that pointer arithmetic on packets needs CAP_PERFMON (5.8+) for the
//! rejected-program test. Tool: setpriv (util-linux).

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{Agent, StartOptions, as_nobody_with, nobody_dir},
    capture::{self, Capture},
    http::{metric_value, metrics_get},
    netns::in_netns,
    topology::{NODE_SRC_ADDR, Topology, WL_ADDR, config_with_collector},
};

/// A target without a route: the session says why, other sessions are unaffected, and the
/// session recovers when the route appears.
#[test]
fn unreachable_target_is_reported_and_recovers() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, "");
    let t = agent.call(
        "CreateTrafficMirrorTarget",
        &[("DestinationIp", "198.19.99.9")],
    );
    let target = t["TrafficMirrorTargetId"]
        .as_str()
        .expect("target")
        .to_string();
    let f = agent.call(
        "CreateTrafficMirrorFilter",
        &[
            ("IngressRules.1.Priority", "1"),
            ("IngressRules.1.Action", "accept"),
        ],
    );
    let filter = f["TrafficMirrorFilterId"]
        .as_str()
        .expect("filter")
        .to_string();
    agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("Priority", "1"),
            ("Enabled", "true"),
            ("TrafficMirrorFilterId", &filter),
            ("TrafficMirrorTargetId", &target),
            ("TrafficMirrorSourceIds.1", "src0"),
        ],
    );
    let list = agent.wait_settled(Duration::from_secs(10));
    let s = &list["TrafficMirrorSessions"][0];
    assert_eq!(
        s["TrafficMirrorSessionBusinessStatus"], "FailedToApply",
        "{s}"
    );
    assert!(
        s["TrafficMirrorSessionErrors"]
            .to_string()
            .contains("unreachable"),
        "{s}"
    );

    // The route appears: the next change (here, any link event) re-applies it cleanly.
    topo.node
        .exec(&["ip", "route", "add", "198.19.99.0/24", "via", "198.18.20.2"]);
    agent.call(
        "UpdateTrafficMirrorSessionAttribute",
        &[
            (
                "TrafficMirrorSessionId",
                s["TrafficMirrorSessionId"].as_str().unwrap_or_default(),
            ),
            ("VirtualNetworkId", "5"),
        ],
    );
    let list = agent.wait_settled(Duration::from_secs(10));
    assert_eq!(
        list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"], "Normal",
        "{list}"
    );
}

/// The flow-log file sink on a full disk: reported in DescribeFlowLogs and metrics, records
/// kept for retry, the agent keeps serving; with space again, the kept records are written.
#[test]
fn full_disk_for_the_file_sink_is_reported_and_retried() {
    let topo = Topology::new();
    // The topic's directory on a 256 KiB filesystem, mounted before the agent starts: the
    // agent runs in the mount namespace `ip netns exec` gives it, which later mounts of the
    // test do not reach.
    let base = std::env::temp_dir().join(mirror_tests::netns::unique("full"));
    let dir = base
        .join("state")
        .join("flowlogs")
        .join("proj")
        .join("full");
    std::fs::create_dir_all(&dir).expect("topic dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a small tmpfs");
    /// Unmounts the small filesystem, then removes the agent's directory, which the agent
    /// (dropped first) could not remove whole while the mount was in it.
    struct Unmount(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let guard = Unmount(dir.clone(), base.clone());
    // Full from the start: the sink can create its file but not write a byte.
    std::fs::write(dir.join("filler"), vec![0u8; 256 * 1024]).ok();
    let agent = Agent::start_in(
        &topo.node,
        "flow_drain_ms = 200\nmetrics_listen = \"127.0.0.1:9465\"\n",
        &base,
    );
    let v = agent.call(
        "CreateFlowLog",
        &[
            ("Version", "2020-04-01"),
            ("FlowLogName", "full"),
            ("ResourceType", "eni"),
            ("ResourceId", "src0"),
            ("TrafficType", "All"),
            ("LogProjectName", "proj"),
            ("LogTopicName", "full"),
            ("AggregationIntervalSeconds", "1"),
        ],
    );
    let id = v["Result"]["FlowLogId"].as_str().expect("id").to_string();
    let client = in_netns(&topo.wl, || UdpSocket::bind((WL_ADDR, 0)).expect("client"));
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7200)).expect("sink")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut port = 7200;
    loop {
        for _ in 0..50 {
            client
                .send_to(&[0u8; 100], (NODE_SRC_ADDR, port))
                .expect("send");
            port = 7200 + (port - 7199) % 50;
        }
        thread::sleep(Duration::from_millis(500));
        let d = agent.call("DescribeFlowLogs", &[("FlowLogIds.1", &id)]);
        let errors = d["FlowLogs"][0]["Errors"].to_string();
        if errors.contains("disk full") {
            assert_eq!(d["FlowLogs"][0]["BusinessStatus"], "Error");
            break;
        }
        assert!(Instant::now() < deadline, "disk full never reported: {d}");
    }
    // Still serving, and the failure is counted.
    let sessions = agent.call("ListTrafficMirrorSessions", &[]);
    assert_eq!(sessions["TotalCount"], 0);
    let metrics = in_netns(&topo.node, || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9465)).expect("metrics");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("req");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("resp");
        out
    });
    assert!(
        metrics.contains(&format!(
            "mirror_flowlog_sink_errors_total{{flow_log=\"{id}\",sink=\"file\"}}"
        )),
        "sink errors counted"
    );

    // Space again: the kept records go out and the error clears.
    std::fs::remove_file(dir.join("filler")).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        thread::sleep(Duration::from_millis(500));
        let d = agent.call("DescribeFlowLogs", &[("FlowLogIds.1", &id)]);
        if d["FlowLogs"][0]["BusinessStatus"] == "Normal" {
            break;
        }
        assert!(Instant::now() < deadline, "sink never recovered: {d}");
    }
    let written = std::fs::read_to_string(dir.join("current.jsonl")).unwrap_or_default();
    assert!(
        written.lines().count() > 0,
        "kept records written after recovery"
    );
    drop(agent);
    drop(guard);
}

const FAULT_CONFIG: &str = r#"
[[filters]]
id = "tmf-f"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[sessions]]
id = "tms-f"
priority = 1
virtual_network_id = 61
packet_length = 64
enabled = true
filter_id = "tmf-f"
target_id = "tmt-col"
sources = ["src0"]
"#;

fn fault_config() -> String {
    format!(
        "metrics_listen = \"127.0.0.1:9464\"\n{}",
        config_with_collector(FAULT_CONFIG)
    )
}

/// Sends `n` datagrams to the node's port 7000 and returns the copies the collector saw.
fn mirrored(topo: &Topology, n: usize) -> usize {
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..n {
        client
            .send_to(&[0u8; 200], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    cap.wait_for_frames(n, Duration::from_secs(3));
    thread::sleep(Duration::from_millis(200));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789).len();
    capture::remove(&pcap);
    copies
}

/// bpffs not mounted where the pins go: the agent says so (log, /healthz, metric), mirrors
/// anyway, and since nothing can outlive it, detaches everything on SIGTERM.
#[test]
fn bpffs_missing_is_reported_and_mirroring_works_unpinned() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("nbpf"));
    let config = fault_config();
    let agent = Agent::start_with(
        &topo.node,
        &config,
        &dir,
        &StartOptions {
            bpffs: false,
            ..StartOptions::default()
        },
    );
    assert!(
        agent.log_text().contains("is not on a bpffs mount"),
        "the log names the fault:\n{}",
        agent.log_text()
    );
    assert_eq!(mirrored(&topo, 10), 10, "mirroring works without pins");
    let (status, health) = metrics_get(&topo.node, 9464, "/healthz");
    assert_eq!(status, 200, "healthz");
    assert!(
        health.contains("degraded:") && health.contains("bpffs"),
        "/healthz names the fault: {health}"
    );
    let (status, ready) = metrics_get(&topo.node, 9464, "/readyz");
    assert_eq!(status, 200, "still ready (degraded, not broken): {ready}");
    let (_, text) = metrics_get(&topo.node, 9464, "/metrics");
    assert_eq!(metric_value(&text, "mirror_datapath_pinned "), 0.0);
    let dir = agent.terminate();
    let left = topo
        .node
        .exec(&["tc", "filter", "show", "dev", "src0", "ingress"]);
    assert!(
        mirror_tests::tcx::attached(&topo.node, "src0").is_empty() && left.stdout.is_empty(),
        "an unpinned agent detaches on SIGTERM"
    );
    Agent::remove_dir(&dir);
}

/// Programs the kernel rejects (here: the verifier refuses the TC programs to an agent
/// without CAP_PERFMON, an easy mistake in a manifest): the session fails with the verifier's
/// reason, the metric and /readyz show it, and the API, the store and the metrics keep
/// serving.
#[test]
fn a_rejected_program_is_reported_and_the_agent_keeps_serving() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = nobody_dir("rej");
    let wrapper = as_nobody_with("-all,+bpf,+net_admin");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let config = fault_config();
    let agent = Agent::start_with(
        &topo.node,
        &config,
        &dir,
        &StartOptions {
            wrapper: &wrapper,
            ..StartOptions::default()
        },
    );
    let list = agent.call("ListTrafficMirrorSessions", &[]);
    let session = &list["TrafficMirrorSessions"][0];
    assert_eq!(
        session["TrafficMirrorSessionBusinessStatus"], "FailedToApply",
        "{list}"
    );
    assert!(
        session["TrafficMirrorSessionErrors"]
            .to_string()
            .contains("rejected by the kernel"),
        "the session carries the kernel's reason: {session}"
    );
    assert!(
        agent.log_text().contains("rejected by the kernel"),
        "{}",
        agent.log_text()
    );
    let (_, text) = metrics_get(&topo.node, 9464, "/metrics");
    assert_eq!(
        metric_value(
            &text,
            "mirror_bpf_program_loaded{program=\"mirror_ingress\"}"
        ),
        0.0
    );
    let (status, ready) = metrics_get(&topo.node, 9464, "/readyz");
    assert_eq!(
        status, 503,
        "not ready while mirroring cannot work: {ready}"
    );
    assert!(ready.contains("mirror_ingress"), "{ready}");
    // The API and the store keep working.
    let t = agent.call(
        "CreateTrafficMirrorTarget",
        &[("DestinationIp", "198.18.20.2")],
    );
    assert!(t["TrafficMirrorTargetId"].is_string(), "{t}");
    let (status, _) = metrics_get(&topo.node, 9464, "/healthz");
    assert_eq!(status, 200);
    drop(agent);
}

/// The segmentation device taken down under the agent: every copy that needs it (here UDP
/// from a local socket, whose checksum is left to offload) fails, which the session's error
/// counter shows, and the program's own log message (aya-log, debug level) reaches the
/// agent's log at its level.
#[test]
fn failed_copies_are_counted_and_the_programs_log_reaches_the_agent_log() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("plog"));
    let mut agent = Agent::start_with(
        &topo.node,
        &fault_config(),
        &dir,
        &StartOptions {
            rust_log: "debug",
            ..StartOptions::default()
        },
    );
    topo.node.exec(&["ip", "link", "set", "mirseg", "down"]);
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..5 {
        client
            .send_to(&[0u8; 200], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    agent.wait_for_log("clone to device", Duration::from_secs(5));
    let line = agent
        .log_text()
        .lines()
        .find(|l| l.contains("clone to device"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("DEBUG"),
        "forwarded at the program's level: {line}"
    );
    thread::sleep(Duration::from_millis(1500));
    let (_, text) = metrics_get(&topo.node, 9464, "/metrics");
    assert_eq!(
        metric_value(
            &text,
            "mirror_session_errors_total{direction=\"ingress\",reason=\"clone_redirect\",session=\"tms-f\"}"
        ),
        5.0,
        "each failed copy is counted"
    );
    drop(agent);
}

/// Another VXLAN device holding the target's UDP port (here a plain `vx0` on 4789): the
/// session says which device holds it, and mirrors once the port is free.
#[test]
fn a_taken_vxlan_port_names_its_holder_and_recovers() {
    let topo = Topology::new();
    // Up, so it holds its UDP socket on 4789.
    topo.node.exec(&[
        "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
    ]);
    topo.node.exec(&["ip", "link", "set", "vx0", "up"]);
    let agent = Agent::start(&topo.node, &config_with_collector(FAULT_CONFIG));
    let list = agent.call("ListTrafficMirrorSessions", &[]);
    let session = &list["TrafficMirrorSessions"][0];
    assert_eq!(
        session["TrafficMirrorSessionBusinessStatus"], "FailedToApply",
        "{list}"
    );
    let errors = session["TrafficMirrorSessionErrors"].to_string();
    assert!(
        errors.contains("UDP port 4789 is already taken") && errors.contains("vx0"),
        "the error names the port and its holder: {errors}"
    );
    topo.node.exec(&["ip", "link", "del", "vx0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = agent.call("ListTrafficMirrorSessions", &[]);
        if list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"] == "Normal" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {list}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mirrored(&topo, 5), 5, "mirroring once the port is free");
}
