//! Mirroring on the wire: veth pairs in namespaces, the project's generator on CPU 0, and
//! everything else (the node's receive path steered there by RPS, the mirroring, the sinks,
//! userspace tools) on CPU 1.
//!
//! ```text
//!  sender            node (mirroring happens on s0 ingress)           dst (production sink)
//!  g0 ─veth─ s0 198.18.10.1 ── forwards ── d0 198.18.30.1 ─veth─ d1 198.18.30.2
//!                              copies: VXLAN ── u0 198.18.20.1 ─veth─ c0 198.18.20.2  col (target)
//! ```
//!
//! Production pps is what reaches d1, target pps what reaches c0 (the veth counters); the
//! sinks drop at nftables netdev ingress, the cheapest consumer this kernel offers.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    net::TcpStream,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use mirror_agent::datapath::{PROG_EGRESS, PROG_FLOW_DROP, PROG_INGRESS};
use mirror_tests::{
    agent::{Agent, StartOptions},
    netns::{NetNs, in_netns},
    pktgen::{GenConfig, Generator},
};

use crate::common::{
    CpuTimes, IfStats, cpu_times, human, if_stats, mac_of, machine, process_cpu, ratio, svg_plot,
};

/// The agent's metrics listener, in the node namespace.
pub const METRICS: &str = "127.0.0.1:9464";

pub const SENDER_CPU: usize = 0;
pub const WORK_CPU: usize = 1;
pub const FLOWS: u16 = 256;
pub const SIZES: [usize; 3] = [64, 512, 1500];

/// The namespaces; dropping it deletes them (and every link in them).
pub struct Bed {
    pub sender: NetNs,
    pub node: NetNs,
    pub dst: NetNs,
    pub col: NetNs,
    pub g0_mac: [u8; 6],
    pub s0_mac: [u8; 6],
}

pub use mirror_tests::topology::{quiet, sink};

impl Bed {
    pub fn new() -> Bed {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            cpus > WORK_CPU,
            "the wire bench needs {} CPUs (one sender core, one for the rest); this machine has {cpus}",
            WORK_CPU + 1
        );
        let sender = NetNs::new("wg");
        let node = NetNs::new("wn");
        let dst = NetNs::new("wd");
        let col = NetNs::new("wc");
        for ns in [&sender, &node, &dst, &col] {
            quiet(ns);
        }
        sender.veth_to(
            &node,
            "g0",
            "s0",
            Some("198.18.10.2/24"),
            Some("198.18.10.1/24"),
        );
        node.veth_to(
            &dst,
            "d0",
            "d1",
            Some("198.18.30.1/24"),
            Some("198.18.30.2/24"),
        );
        node.veth_to(
            &col,
            "u0",
            "c0",
            Some("198.18.20.1/24"),
            Some("198.18.20.2/24"),
        );
        // Room for a whole 1500-byte frame plus VXLAN on the underlay (a jumbo underlay, as in
        // clouds), so no method's copies are fragmented or cut by the path MTU.
        node.exec(&["ip", "link", "set", "u0", "mtu", "1600"]);
        col.exec(&["ip", "link", "set", "c0", "mtu", "1600"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.conf.s0.rp_filter=0"]);
        // Static neighbours: no ARP in the measured traffic.
        let d1 = crate::common::mac_text(mac_of(&dst, "d1"));
        let c0 = crate::common::mac_text(mac_of(&col, "c0"));
        node.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.30.2",
            "lladdr",
            &d1,
            "dev",
            "d0",
        ]);
        node.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.20.2",
            "lladdr",
            &c0,
            "dev",
            "u0",
        ]);
        // RPS: s0's receive processing runs on the work CPU, not on the sender's.
        mirror_tests::topology::steer_rx(&node, "s0", WORK_CPU);
        sink(&dst, "d1");
        sink(&col, "c0");
        let g0_mac = mac_of(&sender, "g0");
        let s0_mac = mac_of(&node, "s0");
        Bed {
            sender,
            node,
            dst,
            col,
            g0_mac,
            s0_mac,
        }
    }

    pub fn gen_config(&self, frame_len: usize, rate_pps: Option<u64>) -> GenConfig {
        GenConfig {
            ifname: "g0".into(),
            src_mac: self.g0_mac,
            dst_mac: self.s0_mac,
            src_ip: Ipv4Addr::new(198, 18, 10, 2),
            dst_ip: Ipv4Addr::new(198, 18, 30, 2),
            frame_len,
            flows: FLOWS,
            rate_pps,
            cpu: Some(SENDER_CPU),
        }
    }

    /// The VXLAN device the peers send their copies to: VNI 100 to the target, like the
    /// agent's copies.
    pub fn peer_vxlan(&self) {
        self.node.exec(&[
            "ip",
            "link",
            "add",
            "vxm0",
            "type",
            "vxlan",
            "id",
            "100",
            "remote",
            "198.18.20.2",
            "local",
            "198.18.20.1",
            "dstport",
            "4789",
            "dev",
            "u0",
        ]);
        self.node
            .exec(&["ip", "link", "set", "vxm0", "mtu", "1550", "up"]);
    }
}

/// The agent's BPF run time so far (ns) of its source programs (which include sending the
/// copy: the encapsulation program and the VXLAN device run inside bpf_clone_redirect) and
/// of its drop tracepoint, and
/// the runs of its ingress program, from its /metrics (the kernel's BPF stats, which the
/// agent keeps enabled, refreshed about every second).
pub fn bpf_stats(bed: &Bed) -> (f64, f64, f64) {
    let text = in_netns(&bed.node, || {
        let mut s = TcpStream::connect(METRICS).expect("connecting to the agent's /metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .expect("metrics request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("metrics answer");
        body
    });
    let value = |l: &str| {
        l.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (mut tc, mut drop, mut runs) = (0.0, 0.0, 0.0);
    let time = "mirror_bpf_program_run_time_seconds_total{";
    for l in text.lines().filter(|l| l.starts_with(time)) {
        // The encapsulation program runs inside the source program's bpf_clone_redirect
        // (the copy is sent synchronously), so its time is already in the source's.
        if l.contains(&format!("\"{PROG_FLOW_DROP}\"")) {
            drop += value(l) * 1e9;
        } else if l.contains(&format!("\"{PROG_INGRESS}\""))
            || l.contains(&format!("\"{PROG_EGRESS}\""))
        {
            tc += value(l) * 1e9;
        }
    }
    let count = "mirror_bpf_program_runs_total{";
    for l in text.lines().filter(|l| l.starts_with(count)) {
        if l.contains(&format!("\"{PROG_INGRESS}\"")) {
            runs += value(l);
        }
    }
    (tc, drop, runs)
}

/// The agent in the node namespace, pinned to the work CPU; it takes its data path with it
/// when it stops (`--detach-on-exit`), so the next method measures without it.
pub fn start_agent(bed: &Bed, config: &str, dir: &std::path::Path) -> Agent {
    start_agent_in(&bed.node, config, dir)
}

/// [`start_agent`] in any namespace (the GSO section has its own bed).
pub fn start_agent_in(ns: &NetNs, config: &str, dir: &std::path::Path) -> Agent {
    let cpu = WORK_CPU.to_string();
    Agent::start_with(
        ns,
        config,
        dir,
        &StartOptions {
            wrapper: &["taskset", "-c", &cpu],
            args: &["--detach-on-exit"],
            ..StartOptions::default()
        },
    )
}

/// A process started for one method, stopped on drop (also when the bench panics).
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn spawn(ns: &NetNs, args: &[&str]) -> Proc {
        let mut cmd = ns.command(args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting {args:?}: {e}")),
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            for _ in 0..50 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one measurement window saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub seconds: f64,
    pub offered: u64,
    /// Into the node (s0) and dropped before it (the sender's veth: the backlog was full).
    pub node_rx: u64,
    pub backlog_drops: u64,
    pub production: u64,
    pub target: u64,
    pub cpu: CpuTimes,
    /// The sending thread's time running and waiting for a CPU (ns); the rest of the window
    /// it was blocked by the receiver (see `pktgen`'s back-pressure).
    pub sender_run_ns: u64,
    pub sender_wait_ns: u64,
    /// CPU time of the userspace tool under test, if any: user, system.
    pub tool_ns: (u64, u64),
    /// The agent's eBPF time per received frame: TC programs, drop tracepoint.
    pub agent_bpf: Option<(f64, f64)>,
}

impl Window {
    pub fn pps(&self, n: u64) -> f64 {
        n as f64 / self.seconds.max(1e-9)
    }
    /// Share of the window the sending thread was blocked (neither running nor waiting for a
    /// CPU): held back by the receiver.
    pub fn sender_blocked(&self) -> f64 {
        let wall = (self.seconds * 1e9).max(1.0);
        (1.0 - (self.sender_run_ns + self.sender_wait_ns) as f64 / wall).max(0.0)
    }
    /// The receiving side set the rate: the sender waited for it, or its backlog dropped.
    pub fn receiver_bound(&self) -> bool {
        self.sender_blocked() > 0.1 || self.backlog_drops > 0
    }
    /// Kernel time of the work CPU plus the tool's user time, per packet received by the
    /// node. Other processes' user time is left out: a busy machine disturbs it less.
    pub fn cpu_per_packet(&self) -> f64 {
        (self.cpu.kernel_ns + self.tool_ns.0) as f64 / (self.node_rx.max(1)) as f64
    }
}

struct Snap {
    at: Instant,
    sent: u64,
    sched: (u64, u64),
    g0: IfStats,
    s0: IfStats,
    d1: IfStats,
    c0: IfStats,
    cpu: CpuTimes,
    tool: (u64, u64),
}

fn snap(bed: &Bed, sender: &Generator, tool_pid: u32) -> Snap {
    Snap {
        at: Instant::now(),
        sent: sender.sent(),
        sched: sender.schedstat(),
        g0: if_stats(&bed.sender, "g0"),
        s0: if_stats(&bed.node, "s0"),
        d1: if_stats(&bed.dst, "d1"),
        c0: if_stats(&bed.col, "c0"),
        cpu: cpu_times(WORK_CPU),
        tool: if tool_pid == 0 {
            (0, 0)
        } else {
            process_cpu(tool_pid)
        },
    }
}

/// Runs the generator (`rate` or flat out) and measures a window of `secs` after `warm`.
pub fn measure(
    bed: &Bed,
    frame_len: usize,
    rate: Option<u64>,
    warm: f64,
    secs: f64,
    tool_pid: u32,
) -> Window {
    let sender = Generator::start(&bed.sender, bed.gen_config(frame_len, rate));
    thread::sleep(Duration::from_secs_f64(warm));
    let a = snap(bed, &sender, tool_pid);
    thread::sleep(Duration::from_secs_f64(secs));
    let b = snap(bed, &sender, tool_pid);
    sender.stop();
    Window {
        seconds: b.at.duration_since(a.at).as_secs_f64(),
        offered: b.sent - a.sent,
        node_rx: b.s0.since(a.s0).rx_packets,
        backlog_drops: b.g0.since(a.g0).tx_dropped,
        production: b.d1.since(a.d1).rx_packets,
        target: b.c0.since(a.c0).rx_packets,
        cpu: b.cpu.since(a.cpu),
        sender_run_ns: b.sched.0.saturating_sub(a.sched.0),
        sender_wait_ns: b.sched.1.saturating_sub(a.sched.1),
        tool_ns: (
            b.tool.0.saturating_sub(a.tool.0),
            b.tool.1.saturating_sub(a.tool.1),
        ),
        agent_bpf: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    None,
    Mirred,
    NftDup,
    Daemonlogger,
    Agent,
    AgentTruncated,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::None,
        Method::Mirred,
        Method::NftDup,
        Method::Daemonlogger,
        Method::Agent,
        Method::AgentTruncated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::None => "no mirroring",
            Method::Mirred => "tc u32 + mirred to VXLAN",
            Method::NftDup => "nftables netdev dup to VXLAN",
            Method::Daemonlogger => "daemonlogger (libpcap) to VXLAN",
            Method::Agent => "mirror-agent",
            Method::AgentTruncated => "mirror-agent, truncated to 128 B",
        }
    }
}

/// Agent config: one session on s0, every IPv4 packet, to the target c0.
pub fn agent_config(packet_length: Option<u16>) -> String {
    let mut c = format!(
        "metrics_listen = \"{METRICS}\"\n\
         [[targets]]\nid = \"tmt-col\"\ndestination_ip = \"198.18.20.2\"\n\
         [[filters]]\nid = \"tmf-all\"\n\
         [[filters.ingress_rules]]\npriority = 1\naction = \"accept\"\nprotocol = \"ALL\"\n\
         ip_version = \"IPv4\"\nsource_cidr_block = \"0.0.0.0/0\"\n\
         destination_cidr_block = \"0.0.0.0/0\"\n\
         [[sessions]]\nid = \"tms-wire\"\npriority = 1\nvirtual_network_id = 100\n\
         enabled = true\nfilter_id = \"tmf-all\"\ntarget_id = \"tmt-col\"\nsources = [\"s0\"]\n",
    );
    if let Some(l) = packet_length {
        let _ = writeln!(c, "packet_length = {l}");
    }
    c
}

/// Set up for a method; the returned guard undoes it.
enum Setup {
    Nothing,
    Tc(String),
    Nft(String),
    Tool(Proc),
    Agent(Box<Agent>),
}

struct Guard<'a> {
    bed: &'a Bed,
    setup: Setup,
    /// The peers' VXLAN device exists (removed before the agent runs: two VXLAN devices
    /// cannot share UDP port 4789 in one namespace).
    vxlan: bool,
}

impl Guard<'_> {
    fn tool_pid(&self) -> u32 {
        match &self.setup {
            Setup::Tool(p) => p.pid(),
            Setup::Agent(a) => a.pid(),
            _ => 0,
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        match &mut self.setup {
            Setup::Tc(dev) => {
                let _ = self
                    .bed
                    .node
                    .exec_status(&["tc", "qdisc", "del", "dev", dev, "clsact"]);
            }
            Setup::Nft(table) => {
                let _ = self
                    .bed
                    .node
                    .exec_status(&["nft", "delete", "table", "netdev", table]);
            }
            Setup::Tool(p) => p.stop(),
            Setup::Agent(_) | Setup::Nothing => {}
        }
        if self.vxlan {
            let _ = self.bed.node.exec_status(&["ip", "link", "del", "vxm0"]);
        }
    }
}

fn set_up(bed: &Bed, m: Method) -> Guard<'_> {
    let vxlan = matches!(m, Method::Mirred | Method::NftDup | Method::Daemonlogger);
    if vxlan {
        bed.peer_vxlan();
    }
    // From here the guard's drop undoes what was made, also if a step below panics.
    let mut guard = Guard {
        bed,
        setup: Setup::Nothing,
        vxlan,
    };
    guard.setup = match m {
        Method::None => Setup::Nothing,
        Method::Mirred => {
            bed.node
                .exec(&["tc", "qdisc", "add", "dev", "s0", "clsact"]);
            bed.node.exec(&[
                "tc", "filter", "add", "dev", "s0", "ingress", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vxm0",
            ]);
            Setup::Tc("s0".into())
        }
        Method::NftDup => {
            bed.node.exec(&[
                "nft",
                "add table netdev mbench; add chain netdev mbench c { type filter hook ingress \
                 device \"s0\" priority 0; policy accept; }; add rule netdev mbench c dup to \
                 \"vxm0\"",
            ]);
            Setup::Nft("mbench".into())
        }
        Method::Daemonlogger => {
            let p = Proc::spawn(
                &bed.node,
                &[
                    "taskset",
                    "-c",
                    &WORK_CPU.to_string(),
                    "daemonlogger",
                    "-i",
                    "s0",
                    "-o",
                    "vxm0",
                ],
            );
            // libpcap opens the interfaces; give it a moment before traffic starts.
            thread::sleep(Duration::from_millis(500));
            Setup::Tool(p)
        }
        Method::Agent | Method::AgentTruncated => {
            let len = (m == Method::AgentTruncated).then_some(128);
            let dir = std::env::temp_dir().join(mirror_tests::netns::unique("wag"));
            let agent = start_agent(bed, &agent_config(len), &dir);
            let list = agent.wait_settled(Duration::from_secs(20));
            // Created but not applied (e.g. no tunnel device) would measure nothing.
            assert_eq!(
                list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"],
                "Normal",
                "{list}\n{}",
                agent.log_text()
            );
            Setup::Agent(Box::new(agent))
        }
    };
    guard
}

pub struct Wire {
    /// (method, frame size, window).
    pub results: Vec<(Method, usize, Window)>,
    /// The generator alone at 64 B: the node drops every frame as it arrives on s0.
    pub gen_only: Window,
    pub secs: f64,
}

pub fn run(bed: &Bed, quick: bool) -> Wire {
    let (warm, secs) = if quick { (0.3, 1.0) } else { (1.0, 5.0) };
    // The generator alone: the node's receive path does as little as it can (nftables drops
    // at s0's ingress hook), so what limits the rate is the sender.
    bed.node.exec(&[
        "nft",
        "add table netdev gencheck; add chain netdev gencheck in { type filter hook ingress \
         device \"s0\" priority 0; policy drop; }",
    ]);
    let gen_only = measure(bed, 64, None, warm, secs, 0);
    let _ = bed
        .node
        .exec_status(&["nft", "delete", "table", "netdev", "gencheck"]);
    let mut results = Vec::new();
    for m in Method::ALL {
        let guard = set_up(bed, m);
        for size in SIZES {
            let agent = matches!(m, Method::Agent | Method::AgentTruncated);
            // Rates and CPU with the kernel's BPF statistics off, as the agent runs by
            // default: with them on, every program run reads the clock twice, which on this
            // VM (pvclock) costs more than some of the programs.
            let mut w = measure(bed, size, None, warm, secs, guard.tool_pid());
            if agent {
                // The eBPF time per frame from a second window with the statistics on.
                let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .expect("enabling BPF run-time statistics");
                let b = bpf_stats(bed);
                let _ = measure(bed, size, None, warm.min(0.5), secs.min(2.0), 0);
                // The metrics lag the kernel by up to a second or so.
                thread::sleep(Duration::from_millis(2500));
                let a = bpf_stats(bed);
                drop(stats);
                let frames = (a.2 - b.2).max(1.0);
                w.agent_bpf = Some(((a.0 - b.0) / frames, (a.1 - b.1) / frames));
            }
            eprintln!("wire {:?} {size} B: {w:?}", m);
            results.push((m, size, w));
        }
        drop(guard);
    }
    Wire {
        results,
        gen_only,
        secs,
    }
}

impl Wire {
    pub fn rows(&self) -> usize {
        self.results.len()
    }

    pub fn expected_rows() -> usize {
        Method::ALL.len() * SIZES.len()
    }

    fn get(&self, m: Method, size: usize) -> Option<&Window> {
        self.results
            .iter()
            .find(|(mm, s, _)| *mm == m && *s == size)
            .map(|(_, _, w)| w)
    }

    /// No-mirroring production pps at 64 B: the capacity the other loads are set from.
    pub fn capacity_64(&self) -> f64 {
        self.get(Method::None, 64)
            .map_or(0.0, |w| w.pps(w.production))
    }

    pub fn markdown(&self, quick: bool) -> (String, Vec<(String, String)>) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Mirroring on the wire (veth, one sender core)\n\n\
             Machine: {}. Method: four network namespaces joined by veth pairs: the project's \
             generator (`tests/src/pktgen.rs`: AF_PACKET `sendmmsg` with PACKET_QDISC_BYPASS, \
             {FLOWS} UDP flows round robin) sends flat out from one thread pinned to CPU \
             {SENDER_CPU} into the node's `s0`; RPS moves `s0`'s receive processing to CPU \
             {WORK_CPU}, where everything else runs too: forwarding to the production sink, \
             the mirroring method, the VXLAN encapsulation, the sinks, and the userspace tools \
             (pinned there with taskset). The peers send to a VXLAN device (VNI 100) to the \
             same target; the agent uses its own. Each row is a {:.0}-second window after \
             warm-up. Production pps = frames reaching the production sink; target pps = VXLAN \
             packets reaching the target; CPU/pkt = kernel time of CPU {WORK_CPU} (system + irq \
             + softirq, /proc/stat) plus the user time of the method's process (daemonlogger, \
             the agent) divided by the frames the node received (other processes' user time \
             on that CPU is left out, so a busy machine disturbs it less; \"busy\" counts \
             everything); \
             \"backlog drops\" are frames the node's receive queue refused (rare: the \
             sender's socket buffer holds it back first). Ratios: production against no mirroring, target \
             against tc mirred, CPU against no mirroring.\n",
            machine(),
            self.secs
        );
        for size in SIZES {
            let _ = writeln!(out, "{size}-byte frames:\n");
            let _ = writeln!(
                out,
                "| method | offered pps | sender blocked | limited by | backlog drops | production pps | vs none | target pps | vs mirred | CPU{WORK_CPU} busy | CPU/pkt (ns) | vs none | of which the tool's process (ns) | agent eBPF (ns/frame): source programs / drop tracepoint |"
            );
            let _ = writeln!(
                out,
                "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let none = self.get(Method::None, size).copied().unwrap_or_default();
            let mirred = self.get(Method::Mirred, size).copied().unwrap_or_default();
            for m in Method::ALL {
                let Some(w) = self.get(m, size) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} % | {} | {:.1} % | {} | {} | {} | {} | {:.0} % | {:.0} | {} | {:.0} | {} |",
                    m.name(),
                    human(w.pps(w.offered)),
                    100.0 * w.sender_blocked(),
                    if w.receiver_bound() {
                        "receiver"
                    } else {
                        "sender"
                    },
                    100.0 * w.backlog_drops as f64 / w.offered.max(1) as f64,
                    human(w.pps(w.production)),
                    ratio(w.pps(w.production), none.pps(none.production)),
                    human(w.pps(w.target)),
                    ratio(w.pps(w.target), mirred.pps(mirred.target)),
                    100.0 * w.cpu.busy_ns as f64 / w.cpu.total_ns.max(1) as f64,
                    w.cpu_per_packet(),
                    ratio(w.cpu_per_packet(), none.cpu_per_packet()),
                    (w.tool_ns.0 + w.tool_ns.1) as f64 / w.node_rx.max(1) as f64,
                    w.agent_bpf
                        .map_or("-".to_string(), |(tc, d)| format!("{tc:.0} / {d:.0}")),
                );
            }
            out.push('\n');
        }
        // Goals.
        let mut goal = String::new();
        for size in SIZES {
            let (Some(a), Some(t), Some(mr), Some(n)) = (
                self.get(Method::Agent, size),
                self.get(Method::AgentTruncated, size),
                self.get(Method::Mirred, size),
                self.get(Method::None, size),
            ) else {
                continue;
            };
            // What mirroring itself costs per frame: CPU/pkt over the no-mirroring row.
            let extra = |w: &Window| w.cpu_per_packet() - n.cpu_per_packet();
            let ebpf = |w: &Window| w.agent_bpf.map_or(f64::NAN, |b| b.0);
            let _ = writeln!(
                goal,
                "- {size} B: agent target pps {} mirred's (truncated: {}); CPU that mirroring \
                 adds per frame {:.0} ns, {} of mirred's {:.0} ns (truncated: {:.0} ns, {}); \
                 eBPF per copy {:.0} ns (truncated {:.0} ns); production with the agent {} of \
                 no mirroring (truncated: {}).",
                ratio(a.pps(a.target), mr.pps(mr.target)),
                ratio(t.pps(t.target), mr.pps(mr.target)),
                extra(a),
                ratio(extra(a), extra(mr)),
                extra(mr),
                extra(t),
                ratio(extra(t), extra(mr)),
                ebpf(a),
                ebpf(t),
                ratio(a.pps(a.production), n.pps(n.production)),
                ratio(t.pps(t.production), n.pps(n.production)),
            );
        }
        let bound: Vec<&Window> = self.results.iter().map(|r| &r.2).collect();
        let receiver_bound = bound.iter().filter(|w| w.receiver_bound()).count();
        let g = &self.gen_only;
        let _ = writeln!(
            out,
            "The generator alone (the node drops every frame as it arrives on `s0`): {} pps at \
             64 B from one core, its thread blocked {:.0} % of the time, {}. In the table, \
             \"sender blocked\" is the share of the window the sending thread was neither \
             running nor waiting for a CPU (/proc schedstat): it waited in `sendmmsg` for its \
             socket's send buffer, which frames hold until the receiving side frees them. \
             \"Limited by\" is the receiver when that share is above 10 % or the node's \
             backlog dropped, else the sender. {receiver_bound} of {} rows were limited by the \
             receiving core, where production pps and target pps are the saturation \
             throughput of each method; in rows limited by the sender, compare CPU/pkt.\n",
            human(g.pps(g.offered)),
            100.0 * g.sender_blocked(),
            if g.receiver_bound() {
                "so even a node doing nothing but drop keeps up with less than the sender could \
                 send: one sender core saturates the receiving core of this bed"
            } else {
                "so one sender core does NOT saturate a receiving core that only drops"
            },
            bound.len(),
        );
        let _ = writeln!(
            out,
            "Against the goals (SPEC section 7 and the copy-path issue: >= 1.5x mirred's pps \
             delivered to the target, the CPU mirroring adds per frame <= 0.67x mirred's, eBPF \
             <= 1 us per copy, production >= 95 % of no mirroring){}:\n\n{goal}",
            if quick {
                " (quick run, not comparable)"
            } else {
                ""
            }
        );
        out.push_str(
            "The agent's eBPF column comes from the kernel's BPF statistics, measured in a \
             second window with them switched on (the agent runs with them off by default: with \
             them on every program run reads the clock twice, which perf showed at ~6 % of \
             this core), per frame its ingress program saw: the source programs \
             (classification, and the clone, whose encapsulation by `mirror_tx` on the uplink \
             and transmission to the target all run inside `bpf_clone_redirect`, so this is \
             most of the copy's cost) and its drop-accounting tracepoint \
             (`skb:kfree_skb`), which runs for every packet dropped anywhere on the host and \
             which the agent therefore attaches only while a flow log exists: these rows have \
             none, so it costs them nothing; the flow-accounting rows below pay it for every \
             frame this bed's sinks drop.\n\n",
        );
        out.push_str(
            "Every copy is made, encapsulated, sent and received by the target on the same \
             core as the production frame, so where that core is the bottleneck no method keeps \
             production at 95 % with a copy of every frame (mirred and nftables cannot truncate; \
             daemonlogger copies in userspace and loses copies once its ring overflows). Most of \
             what a copy costs is the same for every in-kernel method: the clone, a private \
             copy of the frame's head before the outer headers go in front (`pskb_expand_head`), \
             the veth transmit, and the target's receive and drop on this same core (perf, \
             64 B: the agent's own code, `mirror_ingress` + `mirror_tx`, is ~9 % of the core; \
             mirred's tc + VXLAN transmit functions ~10 %); the agent saves the route lookup, \
             netfilter and the second `dev_queue_xmit` of the VXLAN device, which bounds what \
             it can gain over mirred here. Cutting a copy makes the cloned head private \
             (`bpf_skb_change_tail` copies it whole first), so a truncated copy saves only \
             what the smaller copy costs downstream.\n\n",
        );
        out.push_str(
            "![target pps by frame size](bench/wire-target.svg)\n\
             ![production pps by frame size](bench/wire-production.svg)\n\
             ![CPU per frame by frame size](bench/wire-cpu.svg)\n",
        );
        let xs: Vec<f64> = SIZES.iter().map(|&s| s as f64).collect();
        // Every method in every plot, so each keeps its colour.
        let series = |f: &dyn Fn(&Window) -> f64| -> Vec<(String, Vec<f64>)> {
            Method::ALL
                .iter()
                .map(|&m| {
                    (
                        m.name().to_string(),
                        SIZES
                            .iter()
                            .map(|&s| self.get(m, s).map_or(f64::NAN, f))
                            .collect(),
                    )
                })
                .collect()
        };
        let plots = vec![
            (
                "wire-cpu.svg".to_string(),
                svg_plot(
                    "Work-core CPU per received frame",
                    "frame bytes",
                    "ns per frame",
                    &xs,
                    &series(&|w| w.cpu_per_packet()),
                ),
            ),
            (
                "wire-target.svg".to_string(),
                svg_plot(
                    "Copies delivered to the target",
                    "frame bytes",
                    "packets/s",
                    &xs,
                    &series(&|w| w.pps(w.target)),
                ),
            ),
            (
                "wire-production.svg".to_string(),
                svg_plot(
                    "Production frames forwarded",
                    "frame bytes",
                    "packets/s",
                    &xs,
                    &series(&|w| w.pps(w.production)),
                ),
            ),
        ];
        (out, plots)
    }
}
