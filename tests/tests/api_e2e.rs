//! The API on a running agent drives the data path: objects created through the API mirror
//! real traffic; source and session changes take effect on the wire without interrupting
//! other sources; state survives restarts and `kill -9`; glob sources follow interfaces.
//!
//! Kernel requirements: as mirror_e2e.rs (root, netns, veth, VXLAN, TCX or clsact). The API is
//! reached through the agent's own CLI (`mirror-agent call …`) on the agent's Unix socket.

use std::{
    collections::BTreeSet,
    net::UdpSocket,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture},
    netns::{NetNs, in_netns},
    packets::summarize,
    topology::{COLLECTOR_ADDR, NODE_SRC_ADDR, NODE_SRC1_ADDR, Topology},
    traffic::{Stream, stream_seq},
};

const SETTLE: Duration = Duration::from_secs(10);

/// Target (the collector) and a filter taking UDP 7000-7001 in: the objects every test needs.
fn base_objects(agent: &Agent) -> (String, String) {
    let target = agent.call(
        "CreateTrafficMirrorTarget",
        &[
            ("DestinationIp", COLLECTOR_ADDR),
            ("TrafficMirrorTargetName", "collector"),
        ],
    );
    let target = target["TrafficMirrorTargetId"]
        .as_str()
        .expect("target id")
        .to_string();
    let filter = agent.call(
        "CreateTrafficMirrorFilter",
        &[
            ("TrafficMirrorFilterName", "udp-7000"),
            ("IngressRules.1.Priority", "1"),
            ("IngressRules.1.Action", "accept"),
            ("IngressRules.1.Protocol", "UDP"),
            ("IngressRules.1.DestinationPortRange", "7000/7001"),
        ],
    );
    let filter = filter["TrafficMirrorFilterId"]
        .as_str()
        .expect("filter id")
        .to_string();
    (target, filter)
}

fn sinks(topo: &Topology) -> (UdpSocket, UdpSocket) {
    (
        in_netns(&topo.node, || {
            UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
        }),
        in_netns(&topo.node, || {
            UdpSocket::bind((NODE_SRC1_ADDR, 7001)).expect("sink")
        }),
    )
}

#[test]
fn api_changes_take_effect_on_the_wire_without_disturbing_other_sources() {
    let topo = Topology::new();
    let _sinks = sinks(&topo);
    let agent = Agent::start(&topo.node, "");
    let (target, filter) = base_objects(&agent);
    let created = agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("Priority", "1"),
            ("VirtualNetworkId", "100"),
            ("Enabled", "true"),
            ("TrafficMirrorFilterId", &filter),
            ("TrafficMirrorTargetId", &target),
            ("TrafficMirrorSourceIds.1", "src0"),
        ],
    );
    let session = created["TrafficMirrorSessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    agent.wait_settled(SETTLE);

    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let stream0 = Stream::start(&topo.wl, NODE_SRC_ADDR, 7000);
    let stream1 = Stream::start(&topo.wl2, NODE_SRC1_ADDR, 7001);
    thread::sleep(Duration::from_millis(300));

    agent.call(
        "AddSourcesToTrafficMirrorSession",
        &[
            ("TrafficMirrorSessionId", &session),
            ("TrafficMirrorSourceIds", r#"["src1"]"#),
        ],
    );
    agent.wait_settled(SETTLE);
    thread::sleep(Duration::from_millis(300));
    agent.call(
        "UpdateTrafficMirrorSessionAttribute",
        &[
            ("TrafficMirrorSessionId", &session),
            ("VirtualNetworkId", "101"),
        ],
    );
    agent.wait_settled(SETTLE);
    thread::sleep(Duration::from_millis(300));
    agent.call(
        "RemoveSourcesFromTrafficMirrorSession",
        &[
            ("TrafficMirrorSessionId", &session),
            ("TrafficMirrorSourceIds.1", "src1"),
        ],
    );
    agent.wait_settled(SETTLE);
    thread::sleep(Duration::from_millis(300));
    let sent1 = stream1.stop();
    let sent0 = stream0.stop();

    cap.wait_for_frames(sent0 as usize, SETTLE);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);

    let mut seqs0 = Vec::new();
    let mut vnis0 = BTreeSet::new();
    let mut vnis1 = BTreeSet::new();
    let mut copies1 = 0u32;
    for c in &copies {
        let s = summarize(&c.inner).expect("IP copy");
        let seq = stream_seq(&c.inner).expect("stream datagram");
        match s.dport {
            7000 => {
                seqs0.push(seq);
                vnis0.insert(c.vni);
            }
            7001 => {
                copies1 += 1;
                vnis1.insert(c.vni);
            }
            other => panic!("unexpected copy to port {other}"),
        }
    }
    seqs0.sort_unstable();
    assert!(
        seqs0 == (0..sent0).collect::<Vec<_>>(),
        "src0's copies have gaps or duplicates across AddSources/Update/RemoveSources: {} copies of {sent0}",
        seqs0.len()
    );
    assert_eq!(
        vnis0,
        BTreeSet::from([100, 101]),
        "the VNI update reached the wire"
    );
    assert!(copies1 > 0, "AddSources started mirroring src1");
    assert!(copies1 < sent1, "RemoveSources stopped mirroring src1");
    assert!(vnis1.contains(&100) || vnis1.contains(&101));
}

#[test]
fn kill9_keeps_every_acknowledged_change_and_the_datapath_comes_back() {
    let topo = Topology::new();
    let _sinks = sinks(&topo);
    let agent = Agent::start(&topo.node, "");
    let (target, filter) = base_objects(&agent);
    let created = agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("Priority", "7"),
            ("VirtualNetworkId", "77"),
            ("PacketLength", "96"),
            ("Enabled", "true"),
            ("TrafficMirrorFilterId", &filter),
            ("TrafficMirrorTargetId", &target),
            ("TrafficMirrorSourceIds.1", "src0"),
        ],
    );
    let session = created["TrafficMirrorSessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    agent.wait_settled(SETTLE);

    // Changes keep being acknowledged while the agent is killed: each acknowledged one must
    // be there after the restart.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let socket = agent.socket.clone();
    let writer = {
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        let bin = mirror_tests::agent::agent_binary();
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&bin)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["-o", "json", "call", "CreateTrafficMirrorFilter"])
                    .arg(format!("TrafficMirrorFilterName=f{i}"))
                    .output()
                    .expect("CLI");
                if out.status.success()
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    && let Some(id) = v["TrafficMirrorFilterId"].as_str()
                    && let Ok(mut a) = acked.lock()
                {
                    a.push(id.to_string());
                }
                i += 1;
            }
        })
    };
    thread::sleep(Duration::from_millis(700));
    let dir = agent.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let acked = acked.lock().expect("acked").clone();
    assert!(
        !acked.is_empty(),
        "no change was acknowledged before the kill"
    );

    let agent = Agent::start_in(&topo.node, "", &dir);
    let list = agent.wait_settled(SETTLE);
    let sessions = list["TrafficMirrorSessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["TrafficMirrorSessionId"], session.as_str());
    assert_eq!(sessions[0]["VirtualNetworkId"], 77);
    assert_eq!(sessions[0]["PacketLength"], 96);
    let filters = agent.call("ListTrafficMirrorFilters", &[("MaxResults", "100")]);
    let mut have: BTreeSet<String> = BTreeSet::new();
    let mut next = String::new();
    loop {
        let page = agent.call(
            "ListTrafficMirrorFilters",
            &[("MaxResults", "100"), ("NextToken", &next)],
        );
        for f in page["TrafficMirrorFilters"].as_array().expect("filters") {
            have.insert(
                f["TrafficMirrorFilterId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        next = page["NextToken"].as_str().unwrap_or_default().to_string();
        if next.is_empty() {
            break;
        }
    }
    for id in &acked {
        assert!(
            have.contains(id),
            "acknowledged filter {id} lost by kill -9 ({filters})"
        );
    }

    // The restarted agent re-applied the session: copies flow again.
    let mut cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let stream = Stream::start(&topo.wl, NODE_SRC_ADDR, 7000);
    thread::sleep(Duration::from_millis(300));
    stream.stop();
    cap.wait_for_frames(5, SETTLE);
    let pcap = cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    capture::remove(&pcap);
    assert!(copies.iter().all(|c| c.vni == 77 && c.inner.len() == 96));
}

/// A second workload namespace on a new interface of the node, as a pod's veth appears.
fn add_pod(node: &NetNs, name: &str, subnet: u8) -> NetNs {
    let pod = NetNs::new("pod");
    pod.veth_to(
        node,
        "eth0",
        name,
        Some(&format!("198.18.{subnet}.2/24")),
        Some(&format!("198.18.{subnet}.1/24")),
    );
    pod
}

#[test]
fn glob_sources_follow_interfaces_as_they_come_and_go() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, "");
    let (target, filter) = base_objects(&agent);
    agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("Priority", "3"),
            ("VirtualNetworkId", "33"),
            ("Enabled", "true"),
            ("TrafficMirrorFilterId", &filter),
            ("TrafficMirrorTargetId", &target),
            ("TrafficMirrorSourceIds.1", "lxc*"),
        ],
    );
    agent.wait_settled(SETTLE);

    let send = |pod: &NetNs, subnet: u8, n: u32| {
        let dst = format!("198.18.{subnet}.1");
        let sock = in_netns(pod, || UdpSocket::bind(("0.0.0.0", 0)).expect("pod socket"));
        for i in 0..n {
            sock.send_to(&i.to_be_bytes(), (dst.as_str(), 7000))
                .expect("pod send");
            thread::sleep(Duration::from_millis(5));
        }
    };
    let count_copies = |cap: Capture, subnet: u8| -> usize {
        thread::sleep(Duration::from_millis(300));
        let pcap = cap.stop();
        let copies = capture::vxlan_copies(&pcap, 4789);
        capture::remove(&pcap);
        copies
            .iter()
            .filter(|c| {
                c.vni == 33
                    && c.inner.get(26..28) == Some(&[198, 18][..])
                    && c.inner.get(28) == Some(&subnet)
            })
            .count()
    };

    // A new interface matching the glob is picked up (rtnetlink event, no API call).
    let pod = add_pod(&topo.node, "lxc1", 31);
    thread::sleep(Duration::from_millis(1000));
    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    send(&pod, 31, 10);
    assert_eq!(
        count_copies(cap, 31),
        10,
        "new lxc1 interface mirrored within a second"
    );

    // It goes away: the session stays healthy. It comes back: mirrored again.
    drop(pod);
    thread::sleep(Duration::from_millis(500));
    let list = agent.wait_settled(SETTLE);
    assert_eq!(
        list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"], "Normal",
        "{list}"
    );
    let pod = add_pod(&topo.node, "lxc1", 31);
    thread::sleep(Duration::from_millis(1000));
    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    send(&pod, 31, 10);
    assert_eq!(count_copies(cap, 31), 10, "re-created lxc1 mirrored again");

    // Interfaces that do not match are left alone.
    let other = add_pod(&topo.node, "veth9", 32);
    thread::sleep(Duration::from_millis(500));
    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    send(&other, 32, 10);
    assert_eq!(count_copies(cap, 32), 0, "veth9 does not match lxc*");
}

/// The socket is the operator's only door by default: mode 0600. A TCP listener off
/// loopback refuses to start without a token, and with one, requires it.
#[test]
fn api_socket_is_0600_and_tcp_requires_the_token() {
    use std::{
        io::{Read as _, Write as _},
        os::unix::fs::PermissionsExt as _,
    };
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, "");
    let mode = std::fs::metadata(&agent.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "API socket mode");
    drop(agent);

    // Not loopback and no token: the agent refuses to expose the API.
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("tok"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, format!("api_listen = \"{NODE_SRC_ADDR}:18080\"\n")).expect("config");
    let out = topo
        .node
        .command(mirror_tests::agent::agent_binary().to_str().expect("path"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .output()
        .expect("running the agent");
    assert!(
        !out.status.success(),
        "agent exposed the API without a token"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api_token") && stderr.contains("api_credentials"),
        "the refusal names the fix: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let agent = Agent::start(
        &topo.node,
        &format!("api_listen = \"{NODE_SRC_ADDR}:18080\"\napi_token = \"s3cret\"\n"),
    );
    let get = |auth: Option<&str>| -> String {
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        in_netns(&topo.wl, || {
            let mut s = std::net::TcpStream::connect((NODE_SRC_ADDR, 18080)).expect("connect");
            write!(
                s,
                "GET /?Action=ListTrafficMirrorSessions HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            )
            .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("response");
            out
        })
    };
    assert!(
        get(None).starts_with("HTTP/1.1 401"),
        "no token: {}",
        get(None)
    );
    assert!(get(Some("wrong")).starts_with("HTTP/1.1 401"));
    let ok = get(Some("s3cret"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    drop(agent);
}

/// The friendly subcommands: tables for people, JSON for scripts, non-zero exit with the
/// error code on API errors.
#[test]
fn cli_subcommands_print_tables_json_and_errors() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, "");
    let out = agent.cli(&[
        "target",
        "create",
        "--destination-ip",
        COLLECTOR_ADDR,
        "--name",
        "col",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let target = out.stdout.trim().to_string();
    assert!(target.starts_with("tmt-"), "target id printed: {target}");
    let out = agent.cli(&[
        "filter",
        "create",
        "--name",
        "web",
        "--ingress",
        "priority=1,action=accept,protocol=TCP,dst-ports=80/443",
        "--egress",
        "priority=1,action=drop,protocol=UDP",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let filter = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        filter.starts_with("tmf-"),
        "filter id printed: {}",
        out.stdout
    );
    let out = agent.cli(&[
        "session",
        "create",
        "--priority",
        "5",
        "--filter",
        &filter,
        "--target",
        &target,
        "--vni",
        "55",
        "--packet-length",
        "128",
        "--enabled",
        "--source",
        "src0",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let session = out.stdout.trim().to_string();
    agent.wait_settled(SETTLE);

    let table = agent.cli(&["session", "list"]);
    assert_eq!(table.code, 0);
    assert!(
        table.stdout.contains(&session) && table.stdout.contains("Created"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("PRIORITY"),
        "header row"
    );
    let json = agent.cli(&["-o", "json", "session", "list"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON output");
    assert_eq!(
        v["TrafficMirrorSessions"][0]["TrafficMirrorSessionId"],
        session.as_str()
    );
    let filters = agent.cli(&["filter", "list"]);
    assert!(filters.stdout.contains("80/443"), "{}", filters.stdout);

    let err = agent.cli(&["session", "delete", "tms-doesnotexist"]);
    assert_eq!(err.code, 1, "API errors exit 1");
    assert!(
        err.stderr.contains("ResourceNotFound.TrafficMirrorSession"),
        "{}",
        err.stderr
    );
    let err = agent.cli(&["session", "update", &session, "--priority", "40000"]);
    assert_eq!(err.code, 1);
    assert!(
        err.stderr.contains("InvalidPriority.Malformed"),
        "{}",
        err.stderr
    );
}

/// A named source deleted while mirroring is detached and reported on its session; created
/// again, it is attached again without any API call.
#[test]
fn a_deleted_source_is_reported_and_reattached_when_it_returns() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, "");
    let (target, filter) = base_objects(&agent);
    // A dedicated interface this test can delete and re-create.
    let add = || {
        topo.node.exec(&[
            "ip", "link", "add", "tap9", "type", "veth", "peer", "name", "tap9p",
        ]);
        topo.node.exec(&["ip", "link", "set", "tap9", "up"]);
        topo.node.exec(&["ip", "link", "set", "tap9p", "up"]);
    };
    add();
    agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("Priority", "1"),
            ("Enabled", "true"),
            ("TrafficMirrorFilterId", &filter),
            ("TrafficMirrorTargetId", &target),
            ("TrafficMirrorSourceIds.1", "tap9"),
        ],
    );
    let list = agent.wait_settled(SETTLE);
    assert_eq!(
        list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"],
        "Normal"
    );

    topo.node.exec(&["ip", "link", "del", "tap9"]);
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let list = agent.call("ListTrafficMirrorSessions", &[]);
        let s = &list["TrafficMirrorSessions"][0];
        if s["TrafficMirrorSessionBusinessStatus"] == "FailedToApply" {
            assert!(
                s["TrafficMirrorSessionErrors"].to_string().contains("tap9"),
                "the error names the source: {s}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deletion not reported: {list}"
        );
        thread::sleep(Duration::from_millis(50));
    }

    add();
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let list = agent.call("ListTrafficMirrorSessions", &[]);
        if list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"] == "Normal" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "re-creation not picked up: {list}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let progs = in_netns(&topo.node, || {
        aya::programs::SchedClassifier::query_tcx("tap9", aya::programs::TcAttachType::Ingress)
            .map(|(_, p)| p.len())
            .unwrap_or(0)
    });
    assert_eq!(progs, 1, "the source program is attached to the new tap9");
}
