//! Flow logs end to end: traffic with known counts in namespaces, the agent's records on disk.
//!
//! Kernel requirements: root; netns, veth; TCX or clsact; the `skb:kfree_skb` raw tracepoint
//! and /sys/kernel/btf/vmlinux for REJECT records; nftables for the drop rule.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture},
    netns::in_netns,
    pktgen,
    tcx::raw_tracepoint_links,
    topology::{self, NODE_SRC_ADDR, NODE_SRC_ADDR6, Topology, WL_ADDR, WL_ADDR6},
};
use serde_json::Value;

/// Look for ended intervals often and use 2-second intervals: the test sees records within
/// seconds.
const AGENT_CONFIG: &str = "flow_drain_ms = 200\n";

/// The fields these tests read (AWS's default format has only the version 2 ones).
const LOG_FORMAT: &str = "${version} ${flow-log-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${flow-direction} ${type} ${drop-reason} ${skipped-packets}";

fn create_flow_log(agent: &Agent, resource: &str, traffic: &str, topic: &str) -> String {
    let v = agent.call(
        "CreateFlowLog",
        &[
            ("Version", "2020-04-01"),
            ("FlowLogName", "test"),
            ("ResourceType", "eni"),
            ("ResourceId", resource),
            ("TrafficType", traffic),
            ("LogProjectName", "proj"),
            ("LogTopicName", topic),
            ("AggregationIntervalSeconds", "2"),
            ("LogFormat", LOG_FORMAT),
        ],
    );
    let id = v["Result"]["FlowLogId"]
        .as_str()
        .unwrap_or_else(|| panic!("no FlowLogId in {v}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = agent.call("DescribeFlowLogs", &[("FlowLogIds.1", &id)]);
        if d["FlowLogs"][0]["Status"] == "Active" {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "flow log never became Active: {d}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every record written so far for a topic (JSON Lines files of the default sink).
fn records(state_dir: &Path, topic: &str) -> Vec<Value> {
    let dir = state_dir.join("flowlogs").join("proj").join(topic);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("bad JSON line {line:?}: {err}")),
            );
        }
    }
    out
}

/// Waits until two intervals passed after the traffic, so every flow is flushed.
fn settle_records(state_dir: &Path, topic: &str) -> Vec<Value> {
    thread::sleep(Duration::from_millis(4500));
    records(state_dir, topic)
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    packets: u64,
    bytes: u64,
    flags: u64,
}

/// Sums records (a flow may span intervals) by (src, dst, sport, dport, proto, direction, action).
/// (srcaddr, dstaddr, srcport, dstport, protocol, flow-direction, action).
type FlowId = (String, String, u64, u64, u64, String, String);

fn totals(recs: &[Value]) -> BTreeMap<FlowId, Count> {
    let mut out: BTreeMap<_, Count> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["log-status"] == "OK") {
        let k = (
            r["srcaddr"].as_str().unwrap_or_default().to_string(),
            r["dstaddr"].as_str().unwrap_or_default().to_string(),
            r["srcport"].as_u64().unwrap_or_default(),
            r["dstport"].as_u64().unwrap_or_default(),
            r["protocol"].as_u64().unwrap_or_default(),
            r["flow-direction"].as_str().unwrap_or_default().to_string(),
            r["action"].as_str().unwrap_or_default().to_string(),
        );
        let c = out.entry(k).or_default();
        c.packets += r["packets"].as_u64().unwrap_or_default();
        c.bytes += r["bytes"].as_u64().unwrap_or_default();
        c.flags |= r["tcp-flags"].as_u64().unwrap_or_default();
    }
    out
}

#[test]
fn records_count_udp_tcp_icmp_and_ipv6_exactly() {
    let topo = Topology::new();
    // Wire packets only, so tcpdump's frame count is the ground truth for TCP.
    for (ns, dev) in [(&topo.wl, "wl0"), (&topo.node, "src0")] {
        ns.exec(&[
            "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
        ]);
    }
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    let fl = create_flow_log(&agent, "src0", "All", "all");
    let tcp_cap = Capture::start(&topo.node, "src0", "tcp port 5201");

    let sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let sink6 = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR6, 7001)).expect("sink6")
    });
    let (c4, c6) = in_netns(&topo.wl, || {
        (
            UdpSocket::bind((WL_ADDR, 40000)).expect("client"),
            UdpSocket::bind((WL_ADDR6, 40001)).expect("client6"),
        )
    });
    for _ in 0..25 {
        c4.send_to(&[7u8; 100], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    for _ in 0..10 {
        c6.send_to(&[7u8; 50], (NODE_SRC_ADDR6, 7001))
            .expect("send6");
    }
    topo.wl.exec(&[
        "ping",
        "-q",
        "-c",
        "5",
        "-i",
        "0.05",
        "-s",
        "56",
        NODE_SRC_ADDR,
    ]);
    let listener = in_netns(&topo.node, || {
        TcpListener::bind((NODE_SRC_ADDR, 5201)).expect("listen")
    });
    let server = thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        std::io::copy(&mut c, &mut std::io::sink()).expect("read");
    });
    in_netns(&topo.wl, || {
        let mut c = TcpStream::connect((NODE_SRC_ADDR, 5201)).expect("connect");
        c.write_all(&vec![1u8; 200_000]).expect("write");
    });
    server.join().expect("server");
    // Read what arrived: datagrams left queued on a closed socket are dropped by the kernel,
    // and would (rightly) show up as REJECT.
    for (sock, n) in [(&sink, 25), (&sink6, 10)] {
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for i in 0..n {
            sock.recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {i} lost: {e}"));
        }
    }

    let recs = settle_records(&agent.state_dir, "all");
    let pcap = tcp_cap.stop();
    let frames = capture::frames(&pcap);
    capture::remove(&pcap);
    let t = totals(&recs);
    let get = |src: &str, dst: &str, sport: u64, dport: u64, proto: u64, dir: &str| {
        t.get(&(
            src.into(),
            dst.into(),
            sport,
            dport,
            proto,
            dir.into(),
            "ACCEPT".into(),
        ))
        .copied()
        .unwrap_or_else(|| {
            panic!("no {dir} record {src}:{sport} -> {dst}:{dport}/{proto} in {t:#?}")
        })
    };
    assert!(
        recs.iter()
            .all(|r| r["flow-log-id"] == fl.as_str() && r["version"] == 5),
        "version 5: the highest of the format's fields (flow-direction)"
    );
    assert!(recs.iter().all(|r| r["interface-id"] == "src0"));

    let udp = get(WL_ADDR, NODE_SRC_ADDR, 40000, 7000, 17, "ingress");
    assert_eq!(
        (udp.packets, udp.bytes),
        (25, 25 * 128),
        "UDP: 25 x (20 + 8 + 100) bytes"
    );
    let udp6 = get(WL_ADDR6, NODE_SRC_ADDR6, 40001, 7001, 17, "ingress");
    assert_eq!(
        (udp6.packets, udp6.bytes),
        (10, 10 * 98),
        "IPv6 UDP: 10 x (40 + 8 + 50)"
    );
    let echo = get(WL_ADDR, NODE_SRC_ADDR, 0, 0, 1, "ingress");
    let reply = get(NODE_SRC_ADDR, WL_ADDR, 0, 0, 1, "egress");
    assert_eq!(
        (echo.packets, echo.bytes),
        (5, 5 * 84),
        "ICMP echo requests"
    );
    assert_eq!(
        (reply.packets, reply.bytes),
        (5, 5 * 84),
        "ICMP echo replies"
    );

    // TCP: exactly what tcpdump saw on the wire, per direction; flags ORed.
    let mut want_in = Count::default();
    let mut want_out = Count::default();
    for f in &frames {
        let sport = u16::from_be_bytes([f[34], f[35]]);
        let ip_len = u64::from(u16::from_be_bytes([f[16], f[17]]));
        let flags = u64::from(f[14 + 20 + 13] & 0x3f);
        let c = if sport == 5201 {
            &mut want_out
        } else {
            &mut want_in
        };
        c.packets += 1;
        c.bytes += ip_len;
        c.flags |= flags;
    }
    let tcp_in: Count = t
        .iter()
        .filter(|(k, _)| k.4 == 6 && k.3 == 5201 && k.5 == "ingress")
        .map(|(_, c)| *c)
        .fold(Count::default(), |a, c| Count {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            flags: a.flags | c.flags,
        });
    let tcp_out: Count = t
        .iter()
        .filter(|(k, _)| k.4 == 6 && k.2 == 5201 && k.5 == "egress")
        .map(|(_, c)| *c)
        .fold(Count::default(), |a, c| Count {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            flags: a.flags | c.flags,
        });
    assert_eq!(tcp_in, want_in, "TCP client -> server");
    assert_eq!(tcp_out, want_out, "TCP server -> client");
    assert_eq!(
        tcp_in.flags & 0x13,
        0x13,
        "SYN, ACK and FIN seen from the client"
    );
    // Every record's start and end lie within the last minute and in order.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for r in recs.iter().filter(|r| r["log-status"] == "OK") {
        let (s, e) = (
            r["start"].as_u64().unwrap_or(0),
            r["end"].as_u64().unwrap_or(0),
        );
        assert!(
            s <= e && e <= now && now - s < 60,
            "start/end {s}/{e} vs now {now}"
        );
    }
}

#[test]
fn nftables_drops_are_reject_records_with_the_drop_reason() {
    let topo = Topology::new();
    topo.node.drop_udp_input("t", 7002);
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    create_flow_log(&agent, "src0", "All", "drops");
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 40002)).expect("client")
    });
    for _ in 0..15 {
        client
            .send_to(&[1u8; 60], (NODE_SRC_ADDR, 7002))
            .expect("send");
        thread::sleep(Duration::from_millis(2));
    }
    let recs = settle_records(&agent.state_dir, "drops");
    let rejects: Vec<&Value> = recs
        .iter()
        .filter(|r| r["action"] == "REJECT" && r["dstport"] == 7002)
        .collect();
    let packets: u64 = rejects
        .iter()
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(packets, 15, "every dropped packet is a REJECT: {rejects:?}");
    assert!(
        rejects.iter().all(|r| r["drop-reason"] == "NETFILTER_DROP"),
        "the kernel's drop reason: {rejects:?}"
    );
    let accepted: u64 = recs
        .iter()
        .filter(|r| r["action"] == "ACCEPT" && r["dstport"] == 7002)
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(accepted, 0, "dropped packets are not also ACCEPT");

    // TrafficType=Drop on another interface keeps only REJECT records.
    drop(agent);
}

#[test]
fn a_full_flow_table_shows_as_skipdata_not_silence() {
    full_flow_table(false);
}

/// The same with `flow_table_prealloc`: a preallocated table is full at the same count.
#[test]
fn a_full_preallocated_flow_table_shows_as_skipdata_not_silence() {
    full_flow_table(true);
}

/// Changing `flow_table_prealloc` takes effect at the next start: the pinned tables of the
/// other kind are not reused, and the old ones go.
#[test]
fn flow_table_prealloc_changes_at_restart() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    assert_eq!(
        accept_table_flags(&agent),
        1,
        "allocated per flow by default"
    );
    let dir = agent.terminate();
    let agent = Agent::start_in(
        &topo.node,
        &format!("{AGENT_CONFIG}flow_table_prealloc = true\n"),
        &dir,
    );
    assert_eq!(
        accept_table_flags(&agent),
        0,
        "preallocated after the restart"
    );
    let pins = dir.join("bpf/mirror-agent");
    let map_dirs = std::fs::read_dir(&pins)
        .expect("pin dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("maps-"))
        .count();
    assert_eq!(map_dirs, 1, "the old tables are gone");
}

/// `map_flags` of the agent's pinned ACCEPT table (`BPF_F_NO_PREALLOC` = 1).
fn accept_table_flags(agent: &Agent) -> u32 {
    let pins = agent
        .state_dir
        .parent()
        .expect("agent dir")
        .join("bpf/mirror-agent");
    let maps = mirror_tests::agent::pin_subdir(&pins, "maps-");
    aya::maps::MapInfo::from_pin(maps.join(mirror_ebpf::map_names::FLOWS_0))
        .expect("pinned FLOWS_0")
        .map_flags()
}

fn full_flow_table(prealloc: bool) {
    let topo = Topology::new();
    // IPv6 neighbour discovery and MLD would compete for the 8 entries and make the skipped
    // count depend on their timing.
    for ns in [&topo.wl, &topo.node] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    }
    let agent = Agent::start(
        &topo.node,
        &format!("{AGENT_CONFIG}flow_table_size = 8\nflow_table_prealloc = {prealloc}\n"),
    );
    assert_eq!(
        accept_table_flags(&agent),
        if prealloc { 0 } else { 1 },
        "FLOWS_0 preallocated: {prealloc}"
    );
    create_flow_log(&agent, "src0", "All", "small");
    // A socket on the generator's port, read as fast as it fills: no ICMP errors and no
    // socket drops (REJECT flows) adding to the count.
    let sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, pktgen::DPORT)).expect("sink")
    });
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("sink timeout");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sink.recv(&mut buf);
            }
        })
    };
    // Four times as many flows as a CPU's flow cache has slots, into a table of 8: the
    // caches keep some, the table 8, the rest must show as skipped.
    let flows = 4 * mirror_ebpf::FLOW_CACHE_SLOTS as u16;
    let generator = pktgen::Generator::start(
        &topo.wl,
        pktgen::GenConfig {
            ifname: "wl0".into(),
            src_mac: topology::mac_of(&topo.wl, "wl0"),
            dst_mac: topology::mac_of(&topo.node, "src0"),
            src_ip: WL_ADDR.parse().expect("address"),
            dst_ip: NODE_SRC_ADDR.parse().expect("address"),
            frame_len: 60,
            flows,
            rate_pps: Some(20_000),
            cpu: None,
        },
    );
    thread::sleep(Duration::from_millis(400));
    let sent = generator.stop().sent;
    thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    assert!(sent > u64::from(flows), "the generator sent {sent} frames");
    let recs = settle_records(&agent.state_dir, "small");
    let skipped: u64 = recs
        .iter()
        .filter(|r| r["log-status"] == "SKIPDATA")
        .map(|r| r["skipped-packets"].as_u64().unwrap_or(0))
        .sum();
    let counted: u64 = recs
        .iter()
        .filter(|r| r["log-status"] == "OK" && r["srcaddr"] == WL_ADDR)
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(skipped > 0, "no SKIPDATA record: {recs:?}");
    assert_eq!(
        counted + skipped,
        sent,
        "every packet is either counted or reported skipped"
    );
}

/// CreateFlowLog's documented errors (seed 004), the state changes, and the CLI.
#[test]
fn flow_log_api_errors_states_and_cli() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    let err = |params: &[(&str, &str)]| -> (String, String) {
        let mut args: Vec<String> = vec![
            "-o".into(),
            "json".into(),
            "call".into(),
            "CreateFlowLog".into(),
        ];
        let base = [
            ("Version", "2020-04-01"),
            ("FlowLogName", "fl"),
            ("ResourceType", "eni"),
            ("ResourceId", "src0"),
            ("TrafficType", "All"),
            ("LogProjectName", "proj"),
            ("LogTopicName", "t1"),
        ];
        let mut merged: BTreeMap<&str, &str> = base.into_iter().collect();
        for (k, v) in params {
            merged.insert(k, v);
        }
        args.extend(merged.iter().map(|(k, v)| format!("{k}={v}")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.cli(&a);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let code = v["ResponseMetadata"]["Error"]["Code"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (code, out.stdout)
    };
    for (params, want) in [
        (
            vec![("AggregationInterval", "3")],
            "InvalidParameter.FlowLogAggregationInterval",
        ),
        (
            vec![("TrafficType", "Some")],
            "InvalidParameter.FlowLogTrafficType",
        ),
        (
            vec![("ResourceType", "router")],
            "InvalidResourceType.Malformed",
        ),
        (vec![("ResourceId", "nope0")], "InvalidResource.NotFound"),
        (vec![("FlowLogName", "")], "MissingParameter"),
        (vec![("Description", "<x>")], "InvalidDescription.Malformed"),
        (
            vec![("Tags.1.Key", "a"), ("Tags.3.Key", "b")],
            "InvalidTag.Disorder",
        ),
        (
            vec![("ClientToken", &"x".repeat(65))],
            "InvalidParameter.ClientTokenMalformed",
        ),
    ] {
        let (code, body) = err(&params);
        assert_eq!(code, want, "{params:?}: {body}");
    }
    let (code, body) = err(&[("DryRun", "true")]);
    assert_eq!(code, "DryRunOperation", "{body}");
    assert_eq!(
        agent.call("DescribeFlowLogs", &[])["TotalCount"],
        0,
        "no bad or dry-run request created anything"
    );

    let out = agent.cli(&[
        "flowlog",
        "create",
        "--name",
        "web",
        "--resource-id",
        "src0",
        "--project",
        "proj",
        "--topic",
        "t1",
        "--interval",
        "1",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_string();
    assert!(id.starts_with("fl-"), "{id}");
    let (code, _) = err(&[("LogTopicName", "t2")]);
    assert_eq!(code, "InvalidParameter.FlowLogResourceAlreadyBound");
    let (code, _) = err(&[("ResourceId", "src1")]);
    assert_eq!(code, "InvalidParameter.TLSTopicExisted");

    let status = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = agent.call("DescribeFlowLogs", &[("FlowLogIds.1", id)]);
            let s = d["FlowLogs"][0]["Status"]
                .as_str()
                .unwrap_or("gone")
                .to_string();
            if s != "Creating" || Instant::now() > deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(status(&id), "Active");
    assert_eq!(agent.cli(&["flowlog", "deactivate", &id]).code, 0);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&id), "Inactive");
    assert_eq!(agent.cli(&["flowlog", "activate", &id]).code, 0);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&id), "Active");
    let table = agent.cli(&["flowlog", "list"]);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("proj/t1"),
        "{}",
        table.stdout
    );
    assert_eq!(agent.cli(&["flowlog", "delete", &id]).code, 0);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.call("DescribeFlowLogs", &[])["TotalCount"],
        0,
        "deleted"
    );
}

/// A real IPFIX collector (nfcapd, from Debian's nfdump) in the collector namespace receives
/// the same flows and counts as the files; nfdump reads them back.
#[test]
fn ipfix_collector_receives_the_same_flows_as_the_files() {
    use std::process::{Command, Stdio};
    let topo = Topology::new();
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("nfc"));
    std::fs::create_dir_all(dir.join("flows")).expect("nfcapd dir");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let mut nfcapd = Kill(
        topo.col
            .command("nfcapd")
            .args([
                "-b",
                mirror_tests::topology::COLLECTOR_ADDR,
                "-p",
                "4739",
                "-t",
                "3600",
                "-w",
            ])
            .arg(dir.join("flows"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nfcapd (cargo xtask setup installs nfdump)"),
        dir.clone(),
    );
    thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(
        &topo.node,
        &format!(
            "{AGENT_CONFIG}ipfix_collector = \"{}:4739\"\n",
            mirror_tests::topology::COLLECTOR_ADDR
        ),
    );
    create_flow_log(&agent, "src0", "All", "ipfix");
    let sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 40010)).expect("client")
    });
    for i in 0..12u16 {
        client
            .send_to(&vec![0u8; 100 + usize::from(i)], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    topo.wl
        .exec(&["ping", "-q", "-c", "3", "-i", "0.05", NODE_SRC_ADDR]);
    sink.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    for _ in 0..12 {
        sink.recv(&mut buf).expect("datagram");
    }
    let recs = settle_records(&agent.state_dir, "ipfix");
    drop(agent);
    // SIGTERM: nfcapd closes its file.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(nfcapd.0.id() as libc::pid_t, libc::SIGTERM) };
    let _ = nfcapd.0.wait();

    let mut from_files: Vec<(String, String, u64, u64, u64, u64)> = recs
        .iter()
        .filter(|r| {
            r["log-status"] == "OK"
                && r["srcaddr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("198.18."))
        })
        .map(|r| {
            (
                r["srcaddr"].as_str().unwrap_or_default().to_string(),
                r["dstaddr"].as_str().unwrap_or_default().to_string(),
                r["srcport"].as_u64().unwrap_or(0),
                r["protocol"].as_u64().unwrap_or(0),
                r["packets"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut from_ipfix = Vec::new();
    for e in std::fs::read_dir(dir.join("flows"))
        .expect("nfcapd files")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("nfcapd.") || name.starts_with("nfcapd.current") {
            continue;
        }
        let out = Command::new("nfdump")
            .env("TZ", "UTC")
            .arg("-r")
            .arg(e.path())
            .args(["-o", "json"])
            .output()
            .expect("nfdump");
        let text = String::from_utf8_lossy(&out.stdout);
        let Ok(Value::Array(flows)) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        for v in flows {
            let src = v["src4_addr"].as_str().unwrap_or_default().to_string();
            if !src.starts_with("198.18.") {
                continue;
            }
            let proto = v["proto"].as_u64().unwrap_or(0);
            from_ipfix.push((
                src,
                v["dst4_addr"].as_str().unwrap_or_default().to_string(),
                if proto == 1 {
                    0
                } else {
                    v["src_port"].as_u64().unwrap_or(0)
                },
                proto,
                v["in_packets"].as_u64().unwrap_or(0),
                v["in_bytes"].as_u64().unwrap_or(0),
            ));
        }
    }
    from_files.sort();
    from_ipfix.sort();
    assert!(
        from_files.iter().any(|f| f.2 == 40010 && f.4 == 12),
        "the UDP flow is in the files: {from_files:?}"
    );
    assert_eq!(from_ipfix, from_files, "IPFIX (nfdump) and files disagree");
}

/// ResourceType subnet covers the interfaces with an address in the CIDR; vpc covers them all.
#[test]
fn subnet_and_vpc_flow_logs_cover_the_right_interfaces() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    let create = |kind: &str, id: &str, topic: &str| {
        agent.call(
            "CreateFlowLog",
            &[
                ("Version", "2020-04-01"),
                ("FlowLogName", topic),
                ("ResourceType", kind),
                ("ResourceId", id),
                ("TrafficType", "All"),
                ("LogProjectName", "proj"),
                ("LogTopicName", topic),
                ("AggregationIntervalSeconds", "2"),
            ],
        )
    };
    // src1 (198.18.11.1/24) only.
    create("subnet", "198.18.11.0/24", "subnet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.call("DescribeFlowLogs", &[])["FlowLogs"][0]["Status"] != "Active" {
        assert!(Instant::now() < deadline, "subnet flow log never active");
        thread::sleep(Duration::from_millis(50));
    }
    let c1 = in_netns(&topo.wl, || UdpSocket::bind((WL_ADDR, 0)).expect("client"));
    let c2 = in_netns(&topo.wl2, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    let s1 = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7100)).expect("sink")
    });
    let s2 = in_netns(&topo.node, || {
        UdpSocket::bind((mirror_tests::topology::NODE_SRC1_ADDR, 7100)).expect("sink")
    });
    for _ in 0..5 {
        c1.send_to(&[0u8; 10], (NODE_SRC_ADDR, 7100)).expect("send");
        c2.send_to(&[0u8; 10], (mirror_tests::topology::NODE_SRC1_ADDR, 7100))
            .expect("send");
    }
    let recs = settle_records(&agent.state_dir, "subnet");
    drop((s1, s2));
    let ifaces: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter_map(|r| r["interface-id"].as_str())
        .collect();
    assert_eq!(
        ifaces,
        std::collections::BTreeSet::from(["src1"]),
        "subnet covers src1 only"
    );
    let udp: u64 = recs
        .iter()
        .filter(|r| r["dstport"] == 7100)
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(udp, 5);

    // vpc: every interface of the node (the agent's own tunnel device excluded).
    create("vpc", "vpc-node", "vpc");
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        c1.send_to(&[0u8; 10], (NODE_SRC_ADDR, 7101)).expect("send");
        c2.send_to(&[0u8; 10], (mirror_tests::topology::NODE_SRC1_ADDR, 7101))
            .expect("send");
    }
    let recs = settle_records(&agent.state_dir, "vpc");
    let ifaces: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter_map(|r| r["interface-id"].as_str())
        .collect();
    for want in ["src0", "src1", "up0"] {
        assert!(
            ifaces.contains(want),
            "vpc flow log covers {want}: {ifaces:?}"
        );
    }
    assert!(!ifaces.contains("lo") && !ifaces.iter().any(|i| i.starts_with("mirvx")));
}

/// ClientToken on CreateFlowLog: 412 while the first is still Creating, the same answer once
/// it is Active, 400 with other parameters; changes to a Creating flow log get 409.
#[test]
fn flow_log_client_token_and_status_conflicts() {
    let topo = Topology::new();
    // Passes held back so that Creating lasts long enough to be seen.
    let agent = Agent::start(&topo.node, "reconcile_delay_ms = 1500\n");
    let call = |extra: &[(&str, &str)]| -> Value {
        let mut args: Vec<String> = ["-o", "json", "call", "CreateFlowLog"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (k, v) in [
            ("Version", "2020-04-01"),
            ("FlowLogName", "tok"),
            ("ResourceType", "eni"),
            ("ResourceId", "src0"),
            ("TrafficType", "All"),
            ("LogProjectName", "proj"),
            ("LogTopicName", "tok"),
            ("ClientToken", "token-1"),
        ] {
            if !extra.iter().any(|(ek, _)| *ek == k) {
                args.push(format!("{k}={v}"));
            }
        }
        args.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.cli(&a);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    };
    let first = call(&[]);
    let id = first["Result"]["FlowLogId"]
        .as_str()
        .expect("id")
        .to_string();
    let again = call(&[]);
    assert_eq!(
        again["ResponseMetadata"]["Error"]["Code"], "IdempotentProcessing",
        "{again}"
    );
    let modify = agent.cli(&[
        "-o",
        "json",
        "call",
        "ModifyFlowLogAttribute",
        "Version=2020-04-01",
        &format!("FlowLogId={id}"),
        "FlowLogName=x",
    ]);
    assert!(
        modify.stdout.contains("InvalidFlowLog.InvalidStatus"),
        "{}",
        modify.stdout
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.call("DescribeFlowLogs", &[])["FlowLogs"][0]["Status"] != "Active" {
        assert!(Instant::now() < deadline, "never Active");
        thread::sleep(Duration::from_millis(100));
    }
    let replay = call(&[]);
    assert_eq!(
        replay["Result"]["FlowLogId"],
        id.as_str(),
        "replay answers the first id"
    );
    assert_eq!(
        replay["ResponseMetadata"]["RequestId"], first["ResponseMetadata"]["RequestId"],
        "and the first RequestId"
    );
    assert_eq!(
        agent.call("DescribeFlowLogs", &[])["TotalCount"],
        1,
        "nothing done twice"
    );
    let other = call(&[("FlowLogName", "other")]);
    assert_eq!(
        other["ResponseMetadata"]["Error"]["Code"], "IdempotentParameterMismatch",
        "{other}"
    );
}

/// Drops in another namespace are not this node's: the workload's wl0 has the same
/// interface index as the node's src0, and the tracepoint sees every namespace's drops.
#[test]
fn drops_in_other_namespaces_are_not_attributed_to_the_node() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    create_flow_log(&agent, "src0", "All", "otherns");
    // The node sends to a closed port of the workload: the workload drops them (NO_SOCKET).
    let client = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 40020)).expect("client")
    });
    for _ in 0..10 {
        client.send_to(&[0u8; 20], (WL_ADDR, 7300)).expect("send");
        thread::sleep(Duration::from_millis(2));
    }
    let recs = settle_records(&agent.state_dir, "otherns");
    let sent: u64 = recs
        .iter()
        .filter(|r| {
            r["dstport"] == 7300 && r["action"] == "ACCEPT" && r["flow-direction"] == "egress"
        })
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sent, 10, "the node sent them: egress ACCEPT");
    let rejects: Vec<&Value> = recs
        .iter()
        .filter(|r| r["dstport"] == 7300 && r["action"] == "REJECT")
        .collect();
    assert!(
        rejects.is_empty(),
        "the workload's drops are not the node's: {rejects:?}"
    );
}

/// The drop tracepoint runs for every packet the host drops, so it is attached only while a
/// flow log needs it: none at start, one with a flow log, none again once it is deleted.
#[test]
fn drop_accounting_is_attached_only_while_a_flow_log_exists() {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    assert_eq!(
        raw_tracepoint_links("flow_drop"),
        0,
        "no flow log, no tracepoint"
    );
    let id = create_flow_log(&agent, "src0", "All", "drops-on-demand");
    assert_eq!(
        raw_tracepoint_links("flow_drop"),
        1,
        "attached for the flow log; agent log:\n{}",
        agent.log_text()
    );
    agent.call(
        "DeleteFlowLog",
        &[("Version", "2020-04-01"), ("FlowLogId", &id)],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_tracepoint_links("flow_drop") != 0 {
        assert!(
            Instant::now() < deadline,
            "the tracepoint stays attached after the last flow log went"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM in the middle of a long interval (a rolling update): the agent drains the table and
/// writes what it holds as a short interval instead of dropping it; the kernel keeps counting
/// for the next agent.
#[test]
fn sigterm_writes_the_interval_in_progress() {
    let topo = Topology::new();
    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7300)).expect("sink")
    });
    let agent = Agent::start(&topo.node, AGENT_CONFIG);
    let v = agent.call(
        "CreateFlowLog",
        &[
            ("Version", "2020-04-01"),
            ("FlowLogName", "long"),
            ("ResourceType", "eni"),
            ("ResourceId", "src0"),
            ("TrafficType", "All"),
            ("LogProjectName", "proj"),
            ("LogTopicName", "long"),
            ("AggregationIntervalSeconds", "600"),
        ],
    );
    assert!(v["Result"]["FlowLogId"].is_string(), "CreateFlowLog: {v}");
    thread::sleep(Duration::from_millis(500));
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..30 {
        client
            .send_to(&[1u8; 120], (NODE_SRC_ADDR, 7300))
            .expect("send");
    }
    // Counted in the kernel's table for the interval, far from its end.
    thread::sleep(Duration::from_millis(1000));
    let dir = agent.terminate();
    let packets: u64 = records(&dir.join("state"), "long")
        .iter()
        .filter(|r| r["dstport"] == 7300)
        .map(|r| r["packets"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(
        packets, 30,
        "the interval in progress was written on SIGTERM"
    );
}
