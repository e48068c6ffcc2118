//! GSO: a bulk TCP stream through the mirrored source. The workload's socket hands the stack
//! 64 KiB writes; on veth they travel as GSO super-packets (TSO on `g0`), so the node's `s0`
//! ingress sees one skb for up to ~45 wire segments. The question is how many copies the
//! target gets per wire segment (one is what a capture on the wire shows) and what that costs
//! the stream.
//!
//! ```text
//!  workload                 node (mirroring on s0 ingress; the TCP sink is here)
//!  g0 198.18.40.2 ─veth─ s0 198.18.40.1
//!                           copies: VXLAN ── u0 198.18.41.1 ─veth─ c0 198.18.41.2  col (target)
//!                                            (MTU 9000: whole frames fit in VXLAN)
//! ```
//!
//! The sender thread runs on CPU 0, everything of the node (RPS moves `s0`'s receive there,
//! the sink thread, the agent) on CPU 1; the workload's receive (the sink's ACKs) is steered
//! back to CPU 0, so the node core carries exactly the node's work.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{agent::Agent, netns::NetNs, netns::in_netns, pktgen::pin_to};

use crate::{
    common::{CpuTimes, cpu_times, if_stats, mac_of, mac_text, machine, process_cpu, ratio},
    wire::{SENDER_CPU, WORK_CPU, quiet, sink, start_agent_in},
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 1);
const PORT: u16 = 5201;
/// The collector link's MTU: a whole 1514-byte frame plus 50 bytes of VXLAN fits.
const COLLECTOR_MTU: &str = "9000";

/// The namespaces; dropping it deletes them (and every link in them), also on a panic.
pub struct Bed {
    pub workload: NetNs,
    pub node: NetNs,
    pub col: NetNs,
}

impl Bed {
    pub fn new() -> Bed {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            cpus > WORK_CPU,
            "the GSO bench needs {} CPUs (one sender core, one for the node); this machine has {cpus}",
            WORK_CPU + 1
        );
        let workload = NetNs::new("gw");
        let node = NetNs::new("gn");
        let col = NetNs::new("gc");
        // From here the namespaces are owned: a failing step below still deletes them.
        let bed = Bed {
            workload,
            node,
            col,
        };
        for ns in [&bed.workload, &bed.node, &bed.col] {
            quiet(ns);
        }
        bed.workload.veth_to(
            &bed.node,
            "g0",
            "s0",
            Some("198.18.40.2/24"),
            Some("198.18.40.1/24"),
        );
        bed.node.veth_to(
            &bed.col,
            "u0",
            "c0",
            Some("198.18.41.1/24"),
            Some("198.18.41.2/24"),
        );
        bed.node
            .exec(&["ip", "link", "set", "u0", "mtu", COLLECTOR_MTU]);
        bed.col
            .exec(&["ip", "link", "set", "c0", "mtu", COLLECTOR_MTU]);
        // Static neighbours: no ARP in the measured traffic (mirred copies everything).
        let s0 = mac_text(mac_of(&bed.node, "s0"));
        let g0 = mac_text(mac_of(&bed.workload, "g0"));
        let c0 = mac_text(mac_of(&bed.col, "c0"));
        bed.workload.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.40.1",
            "lladdr",
            &s0,
            "dev",
            "g0",
        ]);
        bed.node.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.40.2",
            "lladdr",
            &g0,
            "dev",
            "s0",
        ]);
        bed.node.exec(&[
            "ip",
            "neigh",
            "add",
            "198.18.41.2",
            "lladdr",
            &c0,
            "dev",
            "u0",
        ]);
        // RPS: the node's receive on the work CPU, the workload's (ACKs) on the sender's.
        for (ns, dev, cpu) in [
            (&bed.node, "s0", WORK_CPU),
            (&bed.workload, "g0", SENDER_CPU),
        ] {
            mirror_tests::topology::steer_rx(ns, dev, cpu);
        }
        sink(&bed.col, "c0");
        bed
    }

    /// The VXLAN device mirred sends to: VNI 100 to the target, like the agent's copies.
    fn peer_vxlan(&self) {
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
            "198.18.41.2",
            "local",
            "198.18.41.1",
            "dstport",
            "4789",
            "dev",
            "u0",
        ]);
        self.node
            .exec(&["ip", "link", "set", "vxm0", "mtu", "8950", "up"]);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    None,
    Mirred,
    Agent,
    AgentTruncated,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::None,
        Method::Mirred,
        Method::Agent,
        Method::AgentTruncated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::None => "no mirroring",
            Method::Mirred => "tc u32 + mirred to VXLAN",
            Method::Agent => "mirror-agent",
            Method::AgentTruncated => "mirror-agent, truncated to 128 B",
        }
    }
}

/// Agent config: one session on s0, every IPv4 packet, to the target c0 (wire.rs's, with
/// this bed's addresses and no metrics listener).
pub fn agent_config(packet_length: Option<u16>) -> String {
    let mut c = String::from(
        "[[targets]]\nid = \"tmt-col\"\ndestination_ip = \"198.18.41.2\"\n\
         [[filters]]\nid = \"tmf-all\"\n\
         [[filters.ingress_rules]]\npriority = 1\naction = \"accept\"\nprotocol = \"ALL\"\n\
         ip_version = \"IPv4\"\nsource_cidr_block = \"0.0.0.0/0\"\n\
         destination_cidr_block = \"0.0.0.0/0\"\n\
         [[sessions]]\nid = \"tms-gso\"\npriority = 1\nvirtual_network_id = 100\n\
         enabled = true\nfilter_id = \"tmf-all\"\ntarget_id = \"tmt-col\"\nsources = [\"s0\"]\n",
    );
    if let Some(l) = packet_length {
        let _ = writeln!(c, "packet_length = {l}");
    }
    c
}

/// What a method set up; dropping it undoes it (the agent detaches on exit).
struct Guard<'a> {
    bed: &'a Bed,
    tc: bool,
    vxlan: bool,
    agent: Option<Agent>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.tc {
            let _ = self
                .bed
                .node
                .exec_status(&["tc", "qdisc", "del", "dev", "s0", "clsact"]);
        }
        if self.vxlan {
            let _ = self.bed.node.exec_status(&["ip", "link", "del", "vxm0"]);
        }
        // Agent's own drop: SIGTERM, it removes its data path (--detach-on-exit).
        self.agent.take();
    }
}

impl Guard<'_> {
    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Agent::pid)
    }
}

fn set_up(bed: &Bed, m: Method) -> Guard<'_> {
    let mut guard = Guard {
        bed,
        tc: false,
        vxlan: false,
        agent: None,
    };
    match m {
        Method::None => {}
        Method::Mirred => {
            bed.peer_vxlan();
            guard.vxlan = true;
            bed.node
                .exec(&["tc", "qdisc", "add", "dev", "s0", "clsact"]);
            guard.tc = true;
            bed.node.exec(&[
                "tc", "filter", "add", "dev", "s0", "ingress", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vxm0",
            ]);
        }
        Method::Agent | Method::AgentTruncated => {
            let len = (m == Method::AgentTruncated).then_some(128);
            let dir = std::env::temp_dir().join(mirror_tests::netns::unique("gag"));
            let agent = start_agent_in(&bed.node, &agent_config(len), &dir);
            let list = agent.wait_settled(Duration::from_secs(20));
            assert_eq!(
                list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"],
                "Normal",
                "{list}\n{}",
                agent.log_text()
            );
            guard.agent = Some(agent);
        }
    }
    guard
}

/// One bulk TCP connection from the workload to the node, written and read flat out until
/// dropped.
struct Flow {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    /// The sender's socket (a duplicate): TCP_INFO, TCP_MAXSEG, and shutdown on drop.
    sender: TcpStream,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Flow {
    fn start(bed: &Bed) -> Flow {
        let listener = in_netns(&bed.node, || {
            TcpListener::bind((NODE_IP, PORT)).expect("GSO sink: listen")
        });
        let conn = in_netns(&bed.workload, || {
            TcpStream::connect((NODE_IP, PORT)).expect("GSO sender: connect")
        });
        // The handshake is done: accept returns at once.
        let (mut sink_conn, _) = listener.accept().expect("GSO sink: accept");
        drop(listener);
        // The sink checks the stop flag at least every 200 ms, whatever the network does.
        sink_conn
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let sender = conn.try_clone().expect("dup of the sender socket");
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let (stop, read) = (Arc::clone(&stop), Arc::clone(&read));
            threads.push(thread::spawn(move || {
                let _ = pin_to(WORK_CPU);
                let mut buf = vec![0u8; 1 << 18];
                while !stop.load(Ordering::Relaxed) {
                    match sink_conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            read.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
            }));
        }
        {
            let stop = Arc::clone(&stop);
            let mut conn = conn;
            threads.push(thread::spawn(move || {
                let _ = pin_to(SENDER_CPU);
                let chunk: Vec<u8> = (0..(64 << 10)).map(|i| (i * 7 + 3) as u8).collect();
                while !stop.load(Ordering::Relaxed) {
                    if conn.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }));
        }
        Flow {
            stop,
            read,
            sender,
            threads,
        }
    }

    fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The sender's current MSS (TCP_MAXSEG).
    fn mss(&self) -> u32 {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) into a c_int of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                self.sender.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        if rc == 0 { v.max(0) as u32 } else { 0 }
    }

    /// The sender's TCP_INFO counters: segments sent (all, in wire terms: a super-packet
    /// counts its segments) and segments retransmitted (cumulative).
    fn tcp_info(&self) -> (u32, u32) {
        let mut buf = [0u8; 256];
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: getsockopt(2) into a buffer of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                self.sender.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        // struct tcp_info (linux/tcp.h): tcpi_total_retrans at 100, tcpi_segs_out at 136
        // (kernel 4.2 on).
        let u32_at = |o: usize| {
            if rc == 0 && (len as usize) >= o + 4 {
                u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"))
            } else {
                0
            }
        };
        (u32_at(136), u32_at(100))
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Ends a write blocked on a full send buffer; the sink sees EOF or its timeout.
        let _ = self.sender.shutdown(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What one measurement window saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub seconds: f64,
    /// Bytes the sink read.
    pub bytes: u64,
    pub mss: u32,
    /// The sender's segments (TCP_INFO segs_out: every wire segment, retransmissions and
    /// pure ACKs included) and retransmitted segments.
    pub segments: u64,
    pub retransmitted: u64,
    /// Packets into the node's s0 (super-packets and plain ones).
    pub s0_packets: u64,
    /// Copies reaching the target's c0.
    pub copies: u64,
    pub cpu: CpuTimes,
    /// The sender's core, for telling which side limited the stream.
    pub sender_cpu: CpuTimes,
    /// The agent's user + system time, if it runs.
    pub tool_ns: (u64, u64),
}

impl Window {
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e9
    }
    pub fn copies_per_segment(&self) -> f64 {
        self.copies as f64 / self.segments.max(1) as f64
    }
    /// Node-core kernel time plus the agent's user time, per wire segment.
    pub fn cpu_per_segment(&self) -> f64 {
        (self.cpu.kernel_ns + self.tool_ns.0) as f64 / self.segments.max(1) as f64
    }
}

struct Snap {
    at: Instant,
    bytes: u64,
    info: (u32, u32),
    s0: u64,
    c0: u64,
    cpu: CpuTimes,
    sender_cpu: CpuTimes,
    tool: (u64, u64),
}

fn snap(bed: &Bed, flow: &Flow, tool_pid: u32) -> Snap {
    Snap {
        at: Instant::now(),
        bytes: flow.read_bytes(),
        info: flow.tcp_info(),
        s0: if_stats(&bed.node, "s0").rx_packets,
        c0: if_stats(&bed.col, "c0").rx_packets,
        cpu: cpu_times(WORK_CPU),
        sender_cpu: cpu_times(SENDER_CPU),
        tool: if tool_pid == 0 {
            (0, 0)
        } else {
            process_cpu(tool_pid)
        },
    }
}

fn measure(bed: &Bed, warm: f64, secs: f64, tool_pid: u32) -> Window {
    let flow = Flow::start(bed);
    thread::sleep(Duration::from_secs_f64(warm));
    let a = snap(bed, &flow, tool_pid);
    thread::sleep(Duration::from_secs_f64(secs));
    let b = snap(bed, &flow, tool_pid);
    let mss = flow.mss();
    drop(flow);
    let d = |x: u32, y: u32| u64::from(x.wrapping_sub(y));
    Window {
        seconds: b.at.duration_since(a.at).as_secs_f64(),
        bytes: b.bytes - a.bytes,
        mss,
        segments: d(b.info.0, a.info.0),
        retransmitted: d(b.info.1, a.info.1),
        s0_packets: b.s0.saturating_sub(a.s0),
        copies: b.c0.saturating_sub(a.c0),
        cpu: b.cpu.since(a.cpu),
        sender_cpu: b.sender_cpu.since(a.sender_cpu),
        tool_ns: (
            b.tool.0.saturating_sub(a.tool.0),
            b.tool.1.saturating_sub(a.tool.1),
        ),
    }
}

pub struct Gso {
    pub results: Vec<(Method, Window)>,
    pub secs: f64,
}

pub fn run(quick: bool) -> Gso {
    let (warm, secs) = if quick { (0.3, 0.5) } else { (1.0, 3.0) };
    let bed = Bed::new();
    let mut results = Vec::new();
    for m in Method::ALL {
        let guard = set_up(&bed, m);
        let w = measure(&bed, warm, secs, guard.agent_pid());
        eprintln!("gso {m:?}: {w:?}");
        results.push((m, w));
        drop(guard);
    }
    Gso { results, secs }
}

impl Gso {
    pub fn rows(&self) -> usize {
        self.results.len()
    }

    pub fn expected_rows() -> usize {
        Method::ALL.len()
    }

    fn get(&self, m: Method) -> Option<&Window> {
        self.results.iter().find(|(mm, _)| *mm == m).map(|(_, w)| w)
    }

    pub fn markdown(&self, quick: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## GSO: a TCP stream through the mirrored source\n\n\
             Machine: {}. Method: one TCP connection from a workload namespace to a sink in \
             the node namespace, through the node's mirrored `s0` (its ingress); the sender \
             writes 64 KiB at a time flat out from one thread on CPU {SENDER_CPU}, so the \
             stack sends GSO super-packets over the veth and `s0` receives up to ~45 wire \
             segments per skb. RPS moves `s0`'s receive to CPU {WORK_CPU}, where the sink \
             thread, the mirroring and the agent run too (the workload's receive, the ACKs, \
             stays on CPU {SENDER_CPU}). The collector link has MTU {COLLECTOR_MTU}, so whole \
             frames fit in VXLAN; tc mirred sends to a VXLAN device (VNI 100) with a fixed \
             remote, the agent uses its own path. Each row is a fresh connection measured \
             over a {:.1}-second window after warm-up. Throughput = bytes the sink read / \
             window; wire segments = the sender's `TCP_INFO` `tcpi_segs_out` over the window \
             (the stack counts a super-packet as the segments it stands for; retransmissions \
             and the few pure ACKs included), with bytes / MSS (`TCP_MAXSEG`) beside it as a \
             check; packets into `s0` and copies at the target are the veths' `rx_packets`. \
             Copies per wire segment is the goal figure: one copy per wire packet is what a \
             capture on the wire shows (both ends are counted a moment apart, so a short \
             window can read a little under or over). CPU/segment = kernel time of CPU \
             {WORK_CPU} (system + irq + softirq) plus the agent's user time, per wire \
             segment; the two busy columns (/proc/stat, everything on that CPU, other work on \
             this machine included) tell which side limited the stream.\n",
            machine(),
            self.secs
        );
        let _ = writeln!(
            out,
            "| method | throughput (Gbit/s) | vs none | MSS | wire segments | bytes / MSS | retransmitted | packets into s0 | segments per s0 packet | copies at target | copies per wire segment | CPU{SENDER_CPU} (sender) busy | CPU{WORK_CPU} (node) busy | CPU/segment (ns) | vs none |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let none = self.get(Method::None).copied().unwrap_or_default();
        for (m, w) in &self.results {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.2} | {:.0} % | {:.0} % | {:.0} | {} |",
                m.name(),
                w.gbps(),
                ratio(w.gbps(), none.gbps()),
                w.mss,
                w.segments,
                w.bytes / u64::from(w.mss.max(1)),
                w.retransmitted,
                w.s0_packets,
                w.segments as f64 / w.s0_packets.max(1) as f64,
                w.copies,
                w.copies_per_segment(),
                100.0 * w.sender_cpu.busy_ns as f64 / w.sender_cpu.total_ns.max(1) as f64,
                100.0 * w.cpu.busy_ns as f64 / w.cpu.total_ns.max(1) as f64,
                w.cpu_per_segment(),
                ratio(w.cpu_per_segment(), none.cpu_per_segment()),
            );
        }
        out.push('\n');
        if let (Some(a), Some(t), Some(mr)) = (
            self.get(Method::Agent),
            self.get(Method::AgentTruncated),
            self.get(Method::Mirred),
        ) {
            let _ = writeln!(
                out,
                "Copies per wire segment (goal: 1.00){}: the agent {:.2} (truncated {:.2}), tc \
                 mirred {:.2} (one copy per super-packet). Throughput against no mirroring: \
                 the agent {} (truncated {}), mirred {}.\n",
                if quick {
                    " (quick run, not comparable)"
                } else {
                    ""
                },
                a.copies_per_segment(),
                t.copies_per_segment(),
                mr.copies_per_segment(),
                ratio(a.gbps(), none.gbps()),
                ratio(t.gbps(), none.gbps()),
                ratio(mr.gbps(), none.gbps()),
            );
        }
        out
    }
}
