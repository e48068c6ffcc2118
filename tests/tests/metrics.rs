//! Prometheus metrics of a live agent: `promtool check metrics` accepts them, and the
//! counters equal the packets sent; `/healthz` and `/readyz` answer on the same listener.
//!
//! Kernel requirements: as mirror_e2e.rs; BPF run-time stats (BPF_ENABLE_STATS, 5.8+).
//! Tool: promtool from Debian's prometheus package (cargo xtask setup installs it).

use std::{net::UdpSocket, thread, time::Duration};

use mirror_tests::{
    agent::Agent,
    http::{metric_value as value, metrics_get, promtool_check},
    netns::{NetNs, in_netns},
    topology::{NODE_SRC_ADDR, Topology, config_with_collector},
};

fn get(ns: &NetNs, path: &str) -> (u16, String) {
    metrics_get(ns, 9464, path)
}

#[test]
fn metrics_pass_promtool_and_count_the_packets_sent() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let config = format!(
        "metrics_listen = \"127.0.0.1:9464\"\nbpf_stats = true\n{}",
        config_with_collector(
            r#"
[[filters]]
id = "tmf-m"
[[filters.ingress_rules]]
id = "tmr-m"
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "7000/7000"

[[sessions]]
id = "tms-m"
priority = 1
virtual_network_id = 9
packet_length = 64
enabled = true
filter_id = "tmf-m"
target_id = "tmt-col"
sources = ["src0"]
"#
        )
    );
    let agent = Agent::start(&topo.node, &config);
    agent.call("ListTrafficMirrorSessions", &[]);
    let (status, _) = get(&topo.node, "/healthz");
    assert_eq!(status, 200, "healthz");
    let (status, _) = get(&topo.node, "/readyz");
    assert_eq!(status, 200, "readyz after the first reconcile");

    let _sink = in_netns(&topo.node, || {
        UdpSocket::bind((NODE_SRC_ADDR, 7000)).expect("sink")
    });
    let client = in_netns(&topo.wl, || {
        UdpSocket::bind(("0.0.0.0", 0)).expect("client")
    });
    for _ in 0..20 {
        client
            .send_to(&[0u8; 200], (NODE_SRC_ADDR, 7000))
            .expect("send");
    }
    // Counters are published every second.
    thread::sleep(Duration::from_millis(2500));
    let (status, text) = get(&topo.node, "/metrics");
    assert_eq!(status, 200);

    promtool_check(&text);

    let session = "{direction=\"ingress\",session=\"tms-m\"}";
    assert_eq!(
        value(
            &text,
            &format!("mirror_session_mirrored_packets_total{session}")
        ),
        20.0
    );
    assert_eq!(
        value(&text, &format!("mirror_session_copies_total{session}")),
        20.0
    );
    assert_eq!(
        value(
            &text,
            &format!("mirror_session_truncated_packets_total{session}")
        ),
        20.0
    );
    assert_eq!(
        value(
            &text,
            "mirror_rule_hits_total{filter=\"tmf-m\",rule=\"tmr-m\"}"
        ),
        20.0
    );
    assert_eq!(
        value(
            &text,
            "mirror_source_mirrored_packets_total{direction=\"ingress\",source=\"src0\"}"
        ),
        20.0
    );
    assert!(
        value(
            &text,
            "mirror_source_packets_total{direction=\"ingress\",source=\"src0\"}"
        ) >= 20.0
    );
    assert!(
        value(
            &text,
            "mirror_bpf_program_runs_total{program=\"mirror_ingress\"}"
        ) >= 20.0
    );
    assert_eq!(value(&text, "mirror_build_info{"), 1.0);
    assert!(text.contains("mirror_reconcile_duration_seconds_count"));
    assert_eq!(
        value(
            &text,
            "mirror_api_requests_total{action=\"ListTrafficMirrorSessions\",code=\"200\"}"
        ),
        1.0
    );
}
