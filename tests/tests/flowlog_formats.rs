//! Flow-log record formats: AWS's `LogFormat` on CreateFlowLog / ModifyFlowLogAttribute, the
//! AWS text files (header, columns, every field's value for a known TCP flow and a dropped
//! UDP flow), JSON Lines carrying the same fields by name, the API's errors, and how soon an
//! interval's records are written.
//!
//! Kernel requirements: root; netns, veth; TCX or clsact; the `skb:kfree_skb` raw tracepoint
//! and /sys/kernel/btf/vmlinux for REJECT records; nftables for the drop rule.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mirror_tests::{
    agent::Agent,
    http::{metric_value, metrics_get, promtool_check},
    netns::in_netns,
    topology::{NODE_SRC_ADDR, Topology, WL_ADDR},
};
use serde_json::Value;

/// The node's inventory values, as an operator configures them.
const NODE_META: &str = r#"
account_id = "123456789012"
vpc_id = "vpc-0a1b2c"
subnet_id = "subnet-0d4e"
instance_id = "node-7"
region = "cn-beijing"
az_id = "cn-beijing-a"
"#;

/// Every kind of field, in an order no default has: v2, v3, v4, v5, v7, v8 and ours.
const FORMAT: &str = "${tcp-flags} ${srcport} ${version} ${action} ${srcaddr} ${dstaddr} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${log-status} ${interface-id} ${account-id} ${vpc-id} ${subnet-id} ${instance-id} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${region} ${az-id} ${sublocation-type} ${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${flow-direction} ${traffic-path} ${ecs-cluster-name} ${reject-reason} ${drop-reason} ${flow-log-id}";

/// An RPC action whatever its answer (the harness's `call` insists on success).
fn call(agent: &Agent, action: &str, params: &[(&str, &str)]) -> Value {
    let mut args: Vec<String> = ["-o", "json", "call", action, "Version=2020-04-01"]
        .map(String::from)
        .to_vec();
    args.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent.cli(&a);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{action}: not JSON ({e}): {} {}", out.stdout, out.stderr))
}

fn create(agent: &Agent, topic: &str, format: Option<&str>) -> Value {
    let mut p = vec![
        ("FlowLogName", topic),
        ("ResourceType", "eni"),
        ("ResourceId", "src0"),
        ("TrafficType", "All"),
        ("LogProjectName", "proj"),
        ("LogTopicName", topic),
        ("AggregationIntervalSeconds", "2"),
    ];
    if let Some(f) = format {
        p.push(("LogFormat", f));
    }
    call(agent, "CreateFlowLog", &p)
}

fn wait_active(agent: &Agent, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = call(agent, "DescribeFlowLogs", &[("FlowLogIds.1", id)]);
        let f = &d["Result"]["FlowLogs"][0];
        if f["Status"] == "Active" {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "never Active: {d}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn created_id(v: &Value) -> String {
    v["Result"]["FlowLogId"]
        .as_str()
        .unwrap_or_else(|| panic!("no FlowLogId in {v}"))
        .to_string()
}

/// The topic's files, oldest first (rotated names sort by sequence; the active file last).
fn files(state_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let dir = state_dir.join("flowlogs").join("proj").join(topic);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort_by_key(|p| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        (n.starts_with("current"), n.to_string())
    });
    v
}

/// One AWS text file parsed back: its header's field names, then each line as name → value.
fn parse_text(path: &Path) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            let cols: Vec<&str> = l.split(' ').collect();
            assert_eq!(
                cols.len(),
                header.len(),
                "{}: line {l:?} has {} columns, the header {}",
                path.display(),
                cols.len(),
                header.len()
            );
            header
                .iter()
                .cloned()
                .zip(cols.iter().map(|c| c.to_string()))
                .collect()
        })
        .collect();
    (header, rows)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A TCP connection (wl → node, 5000 bytes, closed by both) and 12 UDP datagrams the node's
/// nftables drops, on src0.
fn traffic(topo: &Topology) {
    let listener = in_netns(&topo.node, || {
        TcpListener::bind((NODE_SRC_ADDR, 5300)).expect("listen")
    });
    let server = thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).expect("read");
        buf.len()
    });
    in_netns(&topo.wl, || {
        let mut c = TcpStream::connect_timeout(
            &(
                NODE_SRC_ADDR.parse::<std::net::IpAddr>().expect("addr"),
                5300,
            )
                .into(),
            Duration::from_secs(5),
        )
        .expect("connect");
        c.write_all(&[3u8; 5000]).expect("write");
    });
    assert_eq!(server.join().expect("server"), 5000);
    let udp = in_netns(&topo.wl, || {
        UdpSocket::bind((WL_ADDR, 40050)).expect("client")
    });
    for _ in 0..12 {
        udp.send_to(&[9u8; 72], (NODE_SRC_ADDR, 7050))
            .expect("send");
        thread::sleep(Duration::from_millis(2));
    }
}

/// AWS text files with a custom format: the header is the format's names in its order, every
/// line has that many columns, and each field's value for a known TCP flow and a dropped UDP
/// flow is what the traffic and the node's configuration say.
#[test]
fn aws_text_follows_the_custom_format_field_by_field() {
    let topo = Topology::new();
    topo.node.drop_udp_input("fmt", 7050);
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let config = format!(
        "flow_drain_ms = 200\nflow_log_format = \"aws\"\nmetrics_listen = \"127.0.0.1:9466\"\n{NODE_META}"
    );
    let agent = Agent::start(&topo.node, &config);
    let id = created_id(&create(&agent, "text", Some(FORMAT)));
    let described = wait_active(&agent, &id);
    assert_eq!(described["LogFormat"], FORMAT, "{described}");
    let before = now_unix();
    traffic(&topo);
    thread::sleep(Duration::from_millis(4500));

    let files = files(&agent.state_dir, "text");
    assert!(!files.is_empty(), "no flow-log file");
    let mut rows = Vec::new();
    let names: Vec<&str> = FORMAT
        .split(' ')
        .map(|t| t.trim_start_matches("${").trim_end_matches('}'))
        .collect();
    for f in &files {
        assert!(f.extension().is_some_and(|e| e == "log"), "{}", f.display());
        let (header, r) = parse_text(f);
        assert_eq!(header, names, "{}: header", f.display());
        rows.extend(r);
    }
    let flow = |proto: &str, action: &str, dport: &str| -> Vec<&BTreeMap<String, String>> {
        rows.iter()
            .filter(|r| {
                r["protocol"] == proto
                    && r["action"] == action
                    && r["dstport"] == dport
                    && r["log-status"] == "OK"
            })
            .collect()
    };
    let tcp = flow("6", "ACCEPT", "5300");
    assert!(!tcp.is_empty(), "no TCP record in {rows:#?}");
    let sum = |rs: &[&BTreeMap<String, String>], k: &str| -> u64 {
        rs.iter().map(|r| r[k].parse::<u64>().unwrap_or(0)).sum()
    };
    let flags = tcp
        .iter()
        .fold(0u64, |a, r| a | r["tcp-flags"].parse::<u64>().unwrap_or(0));
    assert_eq!(
        flags & (1 | 2 | 16),
        1 | 2 | 16,
        "FIN, SYN and ACK: {tcp:#?}"
    );
    // 5000 payload bytes plus at least the headers of the handshake and close.
    assert!(sum(&tcp, "bytes") > 5000, "{tcp:#?}");
    assert!(sum(&tcp, "packets") >= 4, "{tcp:#?}");
    for r in &tcp {
        let want = [
            ("version", "8"),
            ("srcaddr", WL_ADDR),
            ("dstaddr", NODE_SRC_ADDR),
            ("pkt-srcaddr", WL_ADDR),
            ("pkt-dstaddr", NODE_SRC_ADDR),
            ("interface-id", "src0"),
            ("account-id", "123456789012"),
            ("vpc-id", "vpc-0a1b2c"),
            ("subnet-id", "subnet-0d4e"),
            ("instance-id", "node-7"),
            ("region", "cn-beijing"),
            ("az-id", "cn-beijing-a"),
            ("type", "IPv4"),
            ("flow-direction", "ingress"),
            ("sublocation-type", "-"),
            ("sublocation-id", "-"),
            ("pkt-src-aws-service", "-"),
            ("pkt-dst-aws-service", "-"),
            ("traffic-path", "-"),
            ("ecs-cluster-name", "-"),
            ("reject-reason", "-"),
            ("drop-reason", "-"),
            ("flow-log-id", id.as_str()),
        ];
        for (k, v) in want {
            assert_eq!(r[k], v, "TCP record field {k}: {r:#?}");
        }
        let (start, end): (u64, u64) = (r["start"].parse().unwrap(), r["end"].parse().unwrap());
        assert!(
            before <= start && start <= end && end <= now_unix(),
            "{r:#?}"
        );
        assert!(r["srcport"].parse::<u16>().is_ok_and(|p| p > 0), "{r:#?}");
    }

    let udp = flow("17", "REJECT", "7050");
    assert_eq!(
        sum(&udp, "packets"),
        12,
        "every dropped datagram: {rows:#?}"
    );
    assert_eq!(sum(&udp, "bytes"), 12 * (20 + 8 + 72));
    for r in &udp {
        for (k, v) in [
            ("srcport", "40050"),
            ("tcp-flags", "0"),
            ("reject-reason", "NETFILTER_DROP"),
            ("drop-reason", "NETFILTER_DROP"),
            ("flow-direction", "ingress"),
            ("type", "IPv4"),
        ] {
            assert_eq!(r[k], v, "dropped UDP record field {k}: {r:#?}");
        }
    }
    assert!(
        flow("17", "ACCEPT", "7050").is_empty(),
        "dropped datagrams are not also ACCEPT"
    );

    // Each closed interval's record count and end are in the metrics, and its records were
    // written within 10 s of its end.
    let (status, metrics) = metrics_get(&topo.node, 9466, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&metrics);
    let label = format!("{{flow_log=\"{id}\"}}");
    assert!(metric_value(&metrics, &format!("mirror_flowlog_interval_records{label}")) >= 1.0);
    assert!(
        metric_value(
            &metrics,
            &format!("mirror_flowlog_interval_end_timestamp_seconds{label}")
        ) >= before as f64
    );
    let within = metric_value(
        &metrics,
        "mirror_flowlog_interval_delay_seconds_bucket{le=\"10\"}",
    );
    let all = metric_value(&metrics, "mirror_flowlog_interval_delay_seconds_count");
    assert!(all >= 1.0, "{metrics}");
    assert_eq!(within, all, "every interval written within 10 s of its end");
}

/// The default is AWS's default format; JSON Lines carry the format's fields by name, in its
/// order; ModifyFlowLogAttribute changes the fields of the next records (and the text header);
/// the format survives a restart; bad formats get InvalidParameter.LogFormat.
#[test]
fn log_format_default_json_modify_restart_and_errors() {
    let topo = Topology::new();
    topo.node.drop_udp_input("fmt", 7050);
    let config = format!("flow_drain_ms = 200\n{NODE_META}");
    let agent = Agent::start(&topo.node, &config);

    for (bad, why) in [
        ("${srcaddr} ${no-such-field}", "no-such-field"),
        ("srcaddr dstaddr", "srcaddr"),
        ("${srcaddr} ${srcaddr}", "twice"),
        ("   ", ""),
    ] {
        let v = create(&agent, "bad", Some(bad));
        let err = &v["ResponseMetadata"]["Error"];
        if bad.trim().is_empty() {
            // An empty LogFormat is AWS's default, as if it were not given.
            let id = created_id(&v);
            assert_eq!(wait_active(&agent, &id)["LogFormat"], DEFAULT_FORMAT);
            call(&agent, "DeleteFlowLog", &[("FlowLogId", &id)]);
            thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert_eq!(err["Code"], "InvalidParameter.LogFormat", "{bad}: {v}");
        assert!(
            err["Message"].as_str().unwrap_or_default().contains(why),
            "{bad}: {v}"
        );
    }
    assert_eq!(
        call(&agent, "DescribeFlowLogs", &[])["Result"]["TotalCount"],
        0,
        "nothing created by a refused request"
    );

    // The default: AWS's version 2 format.
    let id = created_id(&create(&agent, "json", None));
    assert_eq!(wait_active(&agent, &id)["LogFormat"], DEFAULT_FORMAT);
    traffic(&topo);
    thread::sleep(Duration::from_millis(4500));
    let lines = json_lines(&agent.state_dir, "json");
    let v2: Vec<&str> = DEFAULT_FORMAT
        .split(' ')
        .map(|t| t.trim_start_matches("${").trim_end_matches('}'))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(keys_in_order(l), v2, "{l}");
        let v: Value = serde_json::from_str(l).expect("JSON");
        assert_eq!(v["version"], 2, "{l}");
        assert_eq!(v["account-id"], "123456789012", "{l}");
    }
    let rejected: u64 = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|v| v["action"] == "REJECT" && v["dstport"] == 7050)
        .map(|v| v["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(rejected, 12);

    // Modified: the records after the change carry the new fields, in the new order.
    let custom = "${flow-direction} ${dstport} ${packets} ${reject-reason} ${version}";
    let m = call(
        &agent,
        "ModifyFlowLogAttribute",
        &[("FlowLogId", &id), ("LogFormat", custom)],
    );
    assert!(m["ResponseMetadata"]["Error"].is_null(), "{m}");
    assert_eq!(wait_active(&agent, &id)["LogFormat"], custom);
    let bad = call(
        &agent,
        "ModifyFlowLogAttribute",
        &[("FlowLogId", &id), ("LogFormat", "${bytes} ${nope}")],
    );
    assert_eq!(
        bad["ResponseMetadata"]["Error"]["Code"], "InvalidParameter.LogFormat",
        "{bad}"
    );
    assert_eq!(wait_active(&agent, &id)["LogFormat"], custom, "unchanged");
    let seen = lines.len();
    traffic(&topo);
    thread::sleep(Duration::from_millis(4500));
    let lines = json_lines(&agent.state_dir, "json");
    let after: Vec<&String> = lines[seen..]
        .iter()
        .filter(|l| keys_in_order(l) != v2)
        .collect();
    assert!(!after.is_empty(), "no record in the new format: {lines:#?}");
    for l in &after {
        assert_eq!(
            keys_in_order(l),
            [
                "flow-direction",
                "dstport",
                "packets",
                "reject-reason",
                "version"
            ],
            "{l}"
        );
        assert!(l.ends_with(",\"version\":8}"), "{l}");
    }
    assert!(
        after
            .iter()
            .any(|l| l.contains("\"reject-reason\":\"NETFILTER_DROP\"")),
        "{after:#?}"
    );

    // The format is part of the stored flow log.
    let dir = agent.terminate();
    let agent = Agent::start_in(&topo.node, &config, &dir);
    assert_eq!(wait_active(&agent, &id)["LogFormat"], custom);
    // And an empty value returns to the default.
    call(
        &agent,
        "ModifyFlowLogAttribute",
        &[("FlowLogId", &id), ("LogFormat", "")],
    );
    assert_eq!(wait_active(&agent, &id)["LogFormat"], DEFAULT_FORMAT);

    // The CLI passes it through.
    let out = agent.cli(&[
        "flowlog",
        "create",
        "--name",
        "cli",
        "--resource-id",
        "src1",
        "--project",
        "proj",
        "--topic",
        "cli",
        "--log-format",
        "${srcaddr} ${az-id}",
    ]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let listed = agent.cli(&["-o", "json", "flowlog", "list"]).stdout;
    assert!(listed.contains("${srcaddr} ${az-id}"), "{listed}");
}

const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

fn json_lines(state_dir: &Path, topic: &str) -> Vec<String> {
    files(state_dir, topic)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The member names of one JSON object line, in the order the line has them (serde_json's
/// map would sort them).
fn keys_in_order(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(line);
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<serde::de::IgnoredAny>()?;
                self.0.push(k);
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).expect("JSON object");
    keys
}
