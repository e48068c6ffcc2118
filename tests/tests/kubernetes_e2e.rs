//! End to end in Kubernetes mode, without a cluster: the agent binary (`mirror-agent run
//! --kubernetes`) and the cluster controller (`mirror-agent controller`) against the fake
//! API server of `mirror_tests::fakeapi`, which holds the mirror custom resources, the
//! node, a namespace and pods. Pods are network namespaces whose veth's host side is in the
//! node's namespace with a host route to the pod's IP (`<ip>/32 dev <veth> scope link`, what
//! routed CNIs such as Calico install), so the agent finds their interfaces as it does on a
//! real node; their traffic goes through the node to the collector, where the copies are
//! captured and decoded.
//!
//! Kernel requirements: as mirror_e2e.rs. Tools: tcpdump, tshark. Every test builds its own
//! topology with unique namespace names; the fake API server listens on 127.0.0.1 inside the
//! node's namespace, where the agent runs.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Node, Pod},
};
use mirror_agent::kubernetes::crd::{
    MirrorNodeState, TrafficMirrorFilter, TrafficMirrorSession, TrafficMirrorTarget,
};
use mirror_tests::{
    agent::{Agent, StartOptions, agent_binary},
    capture::{self, Capture},
    fakeapi::FakeApi,
    http::{metric_value, metrics_get},
    netns::{NetNs, in_netns, unique},
    scaled, tcx,
    topology::{COLLECTOR_ADDR, Topology, quiet},
    traffic::{Stream, stream_seq},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const VNI: u32 = 4242;
/// UDP port the pods send to (the filter's).
const PORT: u16 = 7000;
const METRICS: u16 = 9464;

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a test object")
}

/// A pod's network: a namespace whose `eth0` holds the pod's /32 with an on-link default
/// route, and whose peer (`cali…`) is in the node's namespace with proxy ARP and the host
/// route to the pod (Calico's way).
struct PodNet {
    ns: NetNs,
    host_if: String,
    ip: &'static str,
}

fn pod_net(node: &NetNs, ip: &'static str) -> PodNet {
    let ns = NetNs::new("pod");
    quiet(&ns);
    let host_if = unique("cali");
    ns.veth_to(node, "eth0", &host_if, Some(&format!("{ip}/32")), None);
    ns.exec(&["ip", "route", "add", "default", "dev", "eth0"]);
    // Proxy ARP answers at once, as Calico sets it: by default the kernel delays each answer
    // up to 0.8 s, and the pod's first datagrams overflow the queue of its unresolved
    // neighbour meanwhile.
    for key in [
        format!("net.ipv4.conf.{host_if}.proxy_arp=1"),
        format!("net.ipv4.neigh.{host_if}.proxy_delay=0"),
    ] {
        node.exec(&["sysctl", "-qw", &key]);
    }
    node.exec(&[
        "ip",
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        &host_if,
        "scope",
        "link",
    ]);
    PodNet { ns, host_if, ip }
}

fn pod(name: &str, ip: &str, labels: Value) -> Pod {
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// The cluster's objects: the node, the namespace, and a session mirroring what pods
/// labelled app=payments send to UDP 7000, to the collector, with VNI 4242.
fn declare_cluster(api: &FakeApi) {
    api.put::<Node>(&obj(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}
    })));
    api.put::<Namespace>(&obj(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}
    })));
    api.put::<TrafficMirrorFilter>(&obj(json!({
        "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorFilter",
        "metadata": {"name": "udp-7000"},
        "spec": {"egressRules": [{"priority": 1, "action": "accept", "protocol": "UDP",
                                  "destinationPortRange": format!("{PORT}/{PORT}")}]}
    })));
    api.put::<TrafficMirrorTarget>(&obj(json!({
        "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorTarget",
        "metadata": {"name": "collector"},
        "spec": {"destinationIp": COLLECTOR_ADDR, "destinationPort": 4789}
    })));
    api.put::<TrafficMirrorSession>(&obj(json!({
        "apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorSession",
        "metadata": {"name": "payments"},
        "spec": {"priority": 1, "virtualNetworkId": VNI, "filterRef": "udp-7000",
                 "targetRef": "collector",
                 "sources": {"podSelector": {"matchLabels": {"app": "payments"}}}}
    })));
}

/// The agent in Kubernetes mode, in the node's namespace, with its kubeconfig naming `api`.
fn start_agent(topo: &Topology, api: &FakeApi) -> Agent {
    let dir = std::env::temp_dir().join(unique("k8s"));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let kubeconfig = api.kubeconfig(&dir.join("kubeconfig"));
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_string();
    Agent::start_with(
        &topo.node,
        &format!("metrics_listen = \"127.0.0.1:{METRICS}\"\n"),
        &dir,
        &StartOptions {
            args: &["--kubernetes", "--node-name", NODE],
            env: &[("KUBECONFIG", &kubeconfig)],
            ..StartOptions::default()
        },
    )
}

/// A consumer of the pods' datagrams at the collector (no ICMP port unreachable back).
fn udp_sink(topo: &Topology) -> UdpSocket {
    in_netns(&topo.col, || {
        UdpSocket::bind((COLLECTOR_ADDR, PORT)).expect("collector UDP sink")
    })
}

/// One copy as read straight off the capture (outer IPv4, UDP 4789, VXLAN, inner IPv4).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Copy {
    vni: u32,
    inner_src: [u8; 4],
    seq: Option<u32>,
}

fn decode_copy(f: &[u8]) -> Option<Copy> {
    let ihl = usize::from(f.get(14)? & 0x0f) * 4;
    let udp = 14 + ihl;
    if f.get(23) != Some(&17) || f.get(udp + 2..udp + 4)? != 4789u16.to_be_bytes() {
        return None;
    }
    let vx = udp + 8;
    let vni = u32::from_be_bytes([0, *f.get(vx + 4)?, *f.get(vx + 5)?, *f.get(vx + 6)?]);
    let inner = f.get(vx + 8..)?;
    let src = inner.get(26..30)?;
    Some(Copy {
        vni,
        inner_src: src.try_into().ok()?,
        seq: stream_seq(inner),
    })
}

/// The copies in a (possibly still growing) capture file.
fn copies_in(path: &Path) -> Vec<Copy> {
    let bytes = std::fs::read(path).unwrap_or_default();
    capture::parse_pcap(&bytes, true)
        .map(|p| p.frames.iter().filter_map(|f| decode_copy(f)).collect())
        .unwrap_or_default()
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("IPv4").octets()
}

fn copies_from(path: &Path, ip: &str) -> usize {
    let ip = ip4(ip);
    copies_in(path).iter().filter(|c| c.inner_src == ip).count()
}

/// Waits until the capture holds more than `after` copies from `ip`; returns when it did.
fn wait_for_copies_from(
    path: &Path,
    ip: &str,
    after: usize,
    timeout: Duration,
    agent: &Agent,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if copies_from(path, ip) > after {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no copy from {ip} within {timeout:?}; agent log:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn connected(topo: &Topology) -> f64 {
    let (_, body) = metrics_get(&topo.node, METRICS, "/metrics");
    metric_value(&body, "mirror_kubernetes_connected")
}

fn wait_connected(topo: &Topology, want: f64, agent: &Agent) {
    let timeout = scaled(Duration::from_secs(15));
    let deadline = Instant::now() + timeout;
    while connected(topo) != want {
        assert!(
            Instant::now() < deadline,
            "mirror_kubernetes_connected is not {want} within {timeout:?}; agent log:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A MirrorNodeState session entry's sources as (interface, pod).
fn sources(state: &MirrorNodeState) -> Vec<(String, Option<String>)> {
    state
        .status
        .iter()
        .flat_map(|s| &s.sessions)
        .filter(|s| s.name == "payments")
        .flat_map(|s| &s.sources)
        .map(|s| (s.interface.clone(), s.pod.clone()))
        .collect()
}

/// `mirror-agent controller` in `ns`; SIGTERM (then SIGKILL) on drop.
struct Controller(Child);

impl Controller {
    fn start(ns: &NetNs, kubeconfig: &Path) -> Controller {
        let child = ns
            .command(agent_binary().to_str().expect("utf-8 path"))
            .args(["controller", "--identity", "ctl-0"])
            .args(["--lease-namespace", "mirror-agent"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning mirror-agent controller");
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (`ip netns exec` execs it).
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn condition(s: &TrafficMirrorSession, t: &str) -> Option<String> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

/// What both tests start from, dropped in this order: the cluster declared in the fake API
/// server, pay-1 (labelled app=payments) sending to the collector, the agent mirroring it,
/// the collector capturing.
struct Running {
    stream: Stream,
    agent: Agent,
    cap: Capture,
    api: FakeApi,
    pay1: PodNet,
    _sink: UdpSocket,
    topo: Topology,
}

fn running() -> Running {
    let topo = Topology::new();
    let sink = udp_sink(&topo);
    let api = FakeApi::start(&topo.node);
    declare_cluster(&api);
    let pay1 = pod_net(&topo.node, "198.18.30.2");
    api.put(&pod("pay-1", pay1.ip, json!({"app": "payments"})));
    let cap = Capture::start(&topo.col, "col0", "udp port 4789");
    let agent = start_agent(&topo, &api);
    let stream = Stream::start(&pay1.ns, COLLECTOR_ADDR, PORT);
    wait_for_copies_from(
        cap.path(),
        pay1.ip,
        0,
        scaled(Duration::from_secs(10)),
        &agent,
    );
    Running {
        stream,
        agent,
        cap,
        api,
        pay1,
        _sink: sink,
        topo,
    }
}

/// A labelled pod's traffic is mirrored, in VXLAN with the session's VNI, to the target; a
/// new matching pod is picked up within a second of turning Ready; a pod whose label goes
/// is dropped (detached, no more copies); the node's MirrorNodeState reads as
/// docs/kubernetes.md says, and the cluster controller makes the session Accepted and Ready
/// on one node of one.
#[test]
fn pods_are_mirrored_picked_up_dropped_and_reported() {
    let mut r = running();

    // A new pod: its network first (the CNI), then Ready in the API server.
    let pay2 = pod_net(&r.topo.node, "198.18.30.3");
    let _s2 = Stream::start(&pay2.ns, COLLECTOR_ADDR, PORT);
    // The agent has seen the new interface (a link event runs a reconciler pass).
    thread::sleep(Duration::from_millis(300));
    assert_eq!(copies_from(r.cap.path(), pay2.ip), 0, "not selected yet");
    let ready = Instant::now();
    r.api
        .put(&pod("pay-2", pay2.ip, json!({"app": "payments"})));
    let first = wait_for_copies_from(
        r.cap.path(),
        pay2.ip,
        0,
        scaled(Duration::from_secs(5)),
        &r.agent,
    );
    let took = first - ready;
    eprintln!("pay-2: first copy {took:?} after Ready");
    assert!(
        took <= scaled(Duration::from_secs(1)),
        "pay-2's first copy came {took:?} after it turned Ready"
    );

    // The node's state, as documented: each pod → its interface, Created.
    let state = r
        .api
        .wait_for::<MirrorNodeState>(None, NODE, Duration::from_secs(10), |s| {
            sources(s).len() == 2
                && s.status
                    .as_ref()
                    .is_some_and(|st| st.sessions.iter().all(|x| x.state == "Created"))
        });
    let mut want = vec![
        (r.pay1.host_if.clone(), Some("shop/pay-1".to_string())),
        (pay2.host_if.clone(), Some("shop/pay-2".to_string())),
    ];
    want.sort();
    assert_eq!(sources(&state), want);
    let st = state.status.as_ref().expect("status");
    assert!(st.connected);
    let session = &st.sessions[0];
    assert_eq!(session.name, "payments");
    assert!(session.errors.is_empty(), "{session:?}");
    assert!(
        ["fast", "tunnel"].contains(&session.copy_path.as_str()),
        "{session:?}"
    );
    assert_eq!(state.spec.node_name, NODE);
    let node: Node = r.api.get(None, NODE).expect("node");
    let owner = &state.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
        ("Node", NODE, node.metadata.uid.as_ref())
    );
    let requests = r.api.requests();
    for path in [
        "/apis/mirror-agent.io/v1alpha1/mirrornodestates/node-a?",
        "/apis/mirror-agent.io/v1alpha1/mirrornodestates/node-a/status?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("PATCH {path}"))
                    && r.contains("fieldManager=mirror-agent")
                    && r.contains("force=true")
                    && r.ends_with("application/apply-patch+yaml")),
            "no server-side apply of {path}: {requests:#?}"
        );
    }
    assert!(
        requests.iter().any(|r| r.starts_with("GET /api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName=node-a")
            && r.contains("watch=true")),
        "the node's pods are watched by field selector: {requests:#?}"
    );
    assert!(
        !tcx::attached(&r.topo.node, &r.pay1.host_if).is_empty()
            || !mirror_tests::kernel_at_least(6, 6),
        "programs attached to pay-1's interface"
    );

    // The cluster controller, against the same server: Accepted, Ready, 1 of 1 node.
    let kubeconfig = r.api.kubeconfig(&r.agent.dir().join("kubeconfig"));
    let controller = Controller::start(&r.topo.node, &kubeconfig);
    let session =
        r.api
            .wait_for::<TrafficMirrorSession>(None, "payments", Duration::from_secs(15), |s| {
                condition(s, "Accepted").as_deref() == Some("True")
                    && condition(s, "Ready").as_deref() == Some("True")
            });
    let status = session.status.as_ref().expect("status");
    assert_eq!(
        (
            status.nodes_selected,
            status.nodes_applied,
            status.nodes_failed
        ),
        (1, 1, 0),
        "{status:?}"
    );
    assert_eq!(condition(&session, "Degraded").as_deref(), Some("False"));
    let lease: Lease = r
        .api
        .get(Some("mirror-agent"), "mirror-agent-controller")
        .expect("the controller's Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("ctl-0")
    );
    drop(controller);

    // pay-1 loses its label: dropped, detached, no more copies from it.
    r.api.modify::<Pod>(Some("shop"), "pay-1", |p| {
        p.metadata.labels = Some(BTreeMap::from([("app".into(), "other".into())]));
    });
    let state = r
        .api
        .wait_for::<MirrorNodeState>(None, NODE, Duration::from_secs(10), |s| {
            sources(s).len() == 1
        });
    assert_eq!(
        sources(&state),
        [(pay2.host_if.clone(), Some("shop/pay-2".to_string()))]
    );
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while !tcx::attached(&r.topo.node, &r.pay1.host_if).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pay-1's interface still has programs: {:?}",
            tcx::attached(&r.topo.node, &r.pay1.host_if)
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
    let (from1, from2) = (
        copies_from(r.cap.path(), r.pay1.ip),
        copies_from(r.cap.path(), pay2.ip),
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        copies_from(r.cap.path(), r.pay1.ip),
        from1,
        "copies of pay-1 after it was dropped"
    );
    assert!(
        copies_from(r.cap.path(), pay2.ip) > from2 + 50,
        "pay-2 is still mirrored"
    );

    // What was captured, decoded by tshark: VXLAN to the target, the session's VNI, the
    // pods' datagrams inside.
    r.cap.wait_for_frames(1, Duration::from_secs(1));
    let pcap = r.cap.stop();
    let copies = capture::vxlan_copies(&pcap, 4789);
    assert!(copies.len() > 100, "{} copies", copies.len());
    for c in &copies {
        assert_eq!(c.vni, VNI, "the session's VNI");
        assert_eq!(c.outer_dst, COLLECTOR_ADDR, "to the target");
        let s = mirror_tests::packets::summarize(&c.inner).expect("an IP frame inside");
        assert_eq!((s.protocol, s.dport), (17, PORT), "{s:?}");
    }
    capture::remove(&pcap);
}

/// The API server goes away and comes back (forgetting its watch history, so the agent's
/// watches get 410 Gone and list again): the copies flow all along, every datagram copied
/// once, the programs stay as attached; `mirror_kubernetes_connected` and `/readyz` say 0
/// and "unreachable" meanwhile, 1 after.
#[test]
fn the_api_server_going_away_changes_nothing_on_the_wire() {
    let mut r = running();
    wait_connected(&r.topo, 1.0, &r.agent);
    r.agent.wait_settled(Duration::from_secs(10));
    let programs = tcx::attached(&r.topo.node, &r.pay1.host_if);

    r.api.stop();
    wait_connected(&r.topo, 0.0, &r.agent);
    let (code, ready) = metrics_get(&r.topo.node, METRICS, "/readyz");
    assert_eq!(code, 200, "mirroring works: ready");
    assert!(
        ready.contains("Kubernetes API server unreachable"),
        "/readyz: {ready}"
    );
    let before = copies_from(r.cap.path(), r.pay1.ip);
    thread::sleep(Duration::from_millis(1500));
    let during = copies_from(r.cap.path(), r.pay1.ip) - before;
    // 2 ms apart: some 750 datagrams in 1.5 s.
    assert!(
        during > 300,
        "{during} copies while the API server was away"
    );

    r.api.restart(&r.topo.node, true);
    wait_connected(&r.topo, 1.0, &r.agent);
    let (_, ready) = metrics_get(&r.topo.node, METRICS, "/readyz");
    assert!(!ready.contains("unreachable"), "/readyz: {ready}");
    let after = copies_from(r.cap.path(), r.pay1.ip);
    thread::sleep(Duration::from_millis(300));
    assert!(copies_from(r.cap.path(), r.pay1.ip) > after + 50);
    assert_eq!(
        tcx::attached(&r.topo.node, &r.pay1.host_if),
        programs,
        "the same programs, never re-attached"
    );
    // The pods' watch comes back (after its backoff), gets 410 Gone and lists again.
    let lists = || {
        r.api
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
            .count()
    };
    let timeout = scaled(Duration::from_secs(15));
    let deadline = Instant::now() + timeout;
    while lists() < 2 {
        assert!(
            Instant::now() < deadline,
            "pods not listed again within {timeout:?}: {:#?}",
            r.api.requests()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The node state says connected again (written only on change: it never said otherwise,
    // the API server being away).
    let state: MirrorNodeState = r.api.get(None, NODE).expect("MirrorNodeState");
    assert!(state.status.is_some_and(|s| s.connected));

    let sent = r.stream.stop();
    r.cap.wait_for_frames(1, Duration::from_secs(1));
    thread::sleep(Duration::from_millis(200));
    let pcap = r.cap.stop();
    // Every datagram from the first copy on was copied, exactly once.
    let mut seqs: Vec<u32> = copies_in(&pcap).iter().filter_map(|c| c.seq).collect();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no datagram copied twice");
    let (first, last) = (seqs[0], seqs[n - 1]);
    let gaps: Vec<(u32, u32)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0] + 1, w[1] - 1))
        .collect();
    assert!(
        gaps.is_empty(),
        "copies of datagrams {first}..={last} of {sent}: {n}, missing {gaps:?} ({}); agent log:\n{}",
        pcap.display(),
        r.agent.log_text()
    );
    for c in capture::vxlan_copies(&pcap, 4789).iter().take(50) {
        assert_eq!(c.vni, VNI);
    }
    capture::remove(&pcap);
}
