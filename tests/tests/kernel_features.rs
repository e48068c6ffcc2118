//! The agent's report of the kernel features the data path depends on (mirror-agent/src/
//! kernel.rs), checked against the kernel the test runs on: on the host's 6.18 everything is
//! present and nothing is degraded; on Linux 6.1 (`cargo xtask test --kernel 6.1`, in a VM)
//! TCX is missing, the agent says so, attaches with clsact by itself and reports the
//! degradation in `/healthz` and `mirror_kernel_feature`. Also: the kernel accepts the
//! object's BTF (the build renames what it would refuse), so no start warns about it.
//!
//! Kernel requirements: as mirror_e2e.rs.

use mirror_tests::{
    agent::Agent,
    http::{metric_value, metrics_get},
    kernel_version,
    topology::{Topology, config_with_collector},
};

#[test]
fn the_agent_reports_the_kernels_features_and_adapts_to_missing_ones() {
    let version = kernel_version();
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let config = format!(
        "metrics_listen = \"127.0.0.1:9464\"\n{}",
        config_with_collector(
            r#"
[[filters]]
id = "tmf-k"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"

[[sessions]]
id = "tms-k"
priority = 1
virtual_network_id = 7
packet_length = 64
enabled = true
filter_id = "tmf-k"
target_id = "tmt-col"
sources = ["src0"]
"#
        )
    );
    let agent = Agent::start(&topo.node, &config);
    agent.call("ListTrafficMirrorSessions", &[]);
    let log = agent.log_text();
    assert!(
        !log.contains("BTF couldn't be loaded"),
        "the kernel refused the object's BTF:\n{log}"
    );

    // (feature, present on this kernel): the releases that brought them.
    let expected = [
        ("tcx", version >= (6, 6)),
        ("drop_reason", version >= (5, 17)),
        ("xdp_frags", version >= (5, 18)),
        ("tracing_runtime_alloc", version >= (6, 1)),
        ("kernel_btf", true),
    ];
    let summary: Vec<String> = expected
        .iter()
        .map(|(f, p)| format!("{f}={}", if *p { "yes" } else { "no" }))
        .collect();
    assert!(
        log.contains(&format!("kernel features: {}", summary.join(" "))),
        "no feature report {summary:?} in the log:\n{log}"
    );

    let (status, health) = metrics_get(&topo.node, 9464, "/healthz");
    assert_eq!(status, 200, "healthz: {health}");
    let (_, metrics) = metrics_get(&topo.node, 9464, "/metrics");
    for (feature, present) in expected {
        assert_eq!(
            metric_value(
                &metrics,
                &format!("mirror_kernel_feature{{feature=\"{feature}\"}}")
            ),
            f64::from(u8::from(present)),
            "{feature}"
        );
        let line = format!("degraded: kernel feature {feature} missing");
        assert_eq!(
            health.contains(&line),
            !present,
            "{feature} in /healthz:\n{health}"
        );
    }

    // Without TCX the agent chooses clsact itself (tc_attach is the default, auto), says so,
    // and the source's programs are cls_bpf filters; with TCX there are none.
    let tcx = version >= (6, 6);
    assert_eq!(
        log.contains("no TCX in this kernel (6.6+): attaching the TC programs with clsact"),
        !tcx,
        "{log}"
    );
    for dir in ["ingress", "egress"] {
        let out = topo
            .node
            .exec(&["tc", "filter", "show", "dev", "src0", dir]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.contains("mirror_"),
            !tcx,
            "cls_bpf filter on src0 {dir}: {text}"
        );
    }
    let listed = agent.call("ListTrafficMirrorSessions", &[]);
    assert!(
        listed.to_string().contains("tms-k"),
        "the session is served either way: {listed}"
    );
}

/// A missing feature is reported on the objects it affects, not only on the node: with drop
/// reasons missing (pretended through `MIRROR_AGENT_KERNEL_WITHOUT`, so the degraded path runs
/// on any kernel), the agent attaches no drop accounting, says so in the log, `/healthz` and
/// `mirror_kernel_feature`, and every flow log that asks for REJECT records carries the reason
/// it gets none (`Degradations`); an Allow-only flow log does not.
#[test]
fn a_missing_feature_shows_on_the_objects_it_affects() {
    let topo = Topology::new();
    topo.node.exec(&["ip", "link", "set", "lo", "up"]);
    let config = format!(
        "metrics_listen = \"127.0.0.1:9465\"\n{}",
        config_with_collector("")
    );
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("kfw"));
    let agent = Agent::start_wrapped(
        &topo.node,
        &config,
        &dir,
        &["env", "MIRROR_AGENT_KERNEL_WITHOUT=drop_reason"],
    );
    // One flow log per resource: an interface, a subnet and the node.
    let create = |traffic: &str, topic: &str, (kind, resource): (&str, &str)| -> String {
        let v = agent.call(
            "CreateFlowLog",
            &[
                ("Version", "2020-04-01"),
                ("FlowLogName", topic),
                ("ResourceType", kind),
                ("ResourceId", resource),
                ("TrafficType", traffic),
                ("LogProjectName", "proj"),
                ("LogTopicName", topic),
                ("AggregationIntervalSeconds", "2"),
            ],
        );
        v["Result"]["FlowLogId"]
            .as_str()
            .unwrap_or_else(|| panic!("CreateFlowLog: {v}"))
            .to_string()
    };
    let all = create("All", "t-all", ("eni", "src0"));
    let drops = create("Drop", "t-drop", ("subnet", "198.18.0.0/16"));
    let allow = create("Allow", "t-allow", ("vpc", "vpc-node"));
    let described = agent.call("DescribeFlowLogs", &[]);
    let degradations = |id: &str| -> String {
        described["FlowLogs"]
            .as_array()
            .and_then(|logs| logs.iter().find(|l| l["FlowLogId"] == id))
            .map(|l| l["Degradations"].to_string())
            .unwrap_or_else(|| panic!("{id} not described: {described}"))
    };
    for id in [&all, &drops] {
        let d = degradations(id);
        assert!(
            d.contains("no REJECT records on this node") && d.contains("drop_reason"),
            "{id}: {d}"
        );
    }
    assert_eq!(
        degradations(&allow),
        "null",
        "an Allow flow log loses nothing"
    );

    let log = agent.log_text();
    assert!(
        log.contains("MIRROR_AGENT_KERNEL_WITHOUT=drop_reason") && log.contains("drop_reason=no"),
        "{log}"
    );
    assert!(log.contains("drop accounting unavailable"), "{log}");
    let (_, health) = metrics_get(&topo.node, 9465, "/healthz");
    assert!(
        health.contains("degraded: kernel feature drop_reason missing"),
        "{health}"
    );
    let (_, metrics) = metrics_get(&topo.node, 9465, "/metrics");
    assert_eq!(
        metric_value(&metrics, "mirror_kernel_feature{feature=\"drop_reason\"}"),
        0.0
    );
}
