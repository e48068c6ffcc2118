//! End to end: a session's budgets and sampling with the project's generator offering far
//! more than the budget, the copies counted where they arrive (a packet socket on the
//! target's interface, each copy timestamped), the skips read from List.
//!
//! ```text
//!  sender                 node (agent; session on s0 ingress)
//!  g0 ─veth─ s0 198.18.40.1          u0 198.18.41.1 ─veth─ c0 198.18.41.2  col (target)
//! ```
//!
//! One session, changed between the phases through UpdateTrafficMirrorSessionAttribute:
//! 1. MaxPacketsPerSecond 10 000 with 100 k pps offered: copies within 5 % of 10 k/s over
//!    5 s, and every matching packet either copied or counted as skipped;
//! 2. raised to 20 000 while the traffic runs: the new rate within 100 ms, no gap in the
//!    copies around the change;
//! 3. MaxBitsPerSecond with 1500-byte frames: the copies' wire bits within 5 % over 5 s;
//! 4. SampleOneIn 100: the copies within the binomial bounds of the matching packets.
//!
//! Kernel requirements: root; AF_PACKET; nftables (the production packets and the copies
//! are dropped after they were counted, so neither stack spends the CPU on them).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime},
};

use mirror_tests::{
    agent::Agent,
    netns::NetNs,
    pktgen::{GenConfig, Generator},
    topology::{mac_of, mac_text, quiet, sink, steer_rx},
};
use serde_json::Value;

const SENDER_CPU: usize = 0;
const WORK_CPU: usize = 1;
const TARGET: &str = "198.18.41.2";
const VXLAN_PORT: u16 = 4789;
/// `SIOCGSTAMPNS_OLD` (asm-generic/sockios.h): the last frame's receive time.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

struct Bed {
    sender: NetNs,
    node: NetNs,
    col: NetNs,
    g0_mac: [u8; 6],
    s0_mac: [u8; 6],
}

impl Bed {
    fn new() -> Bed {
        let sender = NetNs::new("bs");
        let node = NetNs::new("bn");
        let col = NetNs::new("bc");
        for ns in [&sender, &node, &col] {
            quiet(ns);
        }
        sender.veth_to(
            &node,
            "g0",
            "s0",
            Some("198.18.40.2/24"),
            Some("198.18.40.1/24"),
        );
        node.veth_to(
            &col,
            "u0",
            "c0",
            Some("198.18.41.1/24"),
            Some(&format!("{TARGET}/24")),
        );
        let c0 = mac_text(mac_of(&col, "c0"));
        node.exec(&["ip", "neigh", "add", TARGET, "lladdr", &c0, "dev", "u0"]);
        // The node's receive work away from the sender's CPU.
        steer_rx(&node, "s0", WORK_CPU);
        sink(&node, "s0");
        sink(&col, "c0");
        Bed {
            g0_mac: mac_of(&sender, "g0"),
            s0_mac: mac_of(&node, "s0"),
            sender,
            node,
            col,
        }
    }

    fn generator(&self, frame_len: usize, rate_pps: u64) -> Generator {
        Generator::start(
            &self.sender,
            GenConfig {
                ifname: "g0".into(),
                src_mac: self.g0_mac,
                dst_mac: self.s0_mac,
                src_ip: Ipv4Addr::new(198, 18, 40, 2),
                dst_ip: Ipv4Addr::new(198, 18, 40, 1),
                frame_len,
                flows: 256,
                rate_pps: Some(rate_pps),
                cpu: Some(SENDER_CPU),
            },
        )
    }
}

/// Every VXLAN copy arriving on the target's interface, with the time it arrived and its
/// length on the wire (Ethernet header included).
struct Tap {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<(SystemTime, u32)>, u32)>,
}

impl Tap {
    fn start(ns: &NetNs, dev: &str) -> Tap {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let path = format!("/var/run/netns/{}", ns.name);
        let dev = dev.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            let file = File::open(&path).expect("netns file");
            // SAFETY: an open namespace file; only this thread changes namespace.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let fd = packet_socket(&dev);
            let _ = ready_tx.send(());
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            // SAFETY: zeroed sockaddr_ll is valid; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            while !stop2.load(Ordering::Relaxed) {
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buffers of the given sizes; MSG_TRUNC returns the frame's length.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                        (&raw mut from).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    continue; // the receive timeout: look at the stop flag
                }
                // The kernel's arrival time, not when this thread got to read it.
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: SIOCGSTAMPNS fills a timespec.
                let at = if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts) } == 0 {
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
                } else {
                    SystemTime::now()
                };
                let vxlan = from.sll_pkttype != libc::PACKET_OUTGOING
                    && buf[12..14] == [0x08, 0x00]
                    && buf[23] == 17
                    && u16::from_be_bytes([buf[36], buf[37]]) == VXLAN_PORT;
                if vxlan {
                    seen.push((at, n as u32));
                }
            }
            (seen, drops(&fd))
        });
        ready_rx.recv().expect("tap ready");
        Tap { stop, handle }
    }

    /// The copies seen, and the frames the socket had to drop (must be 0 for the counts to
    /// be the target's).
    fn stop(self) -> (Vec<(SystemTime, u32)>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("tap thread")
    }
}

fn packet_socket(dev: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(dev).expect("name");
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex > 0, "no interface {dev}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let buf: i32 = 64 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const buf).cast(),
            4,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        fd
    }
}

fn drops(fd: &std::os::fd::OwnedFd) -> u32 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: a buffer of the size given.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut st).cast(),
            &mut len,
        )
    };
    st.tp_drops
}

/// Copies (count, bytes) that arrived in [from, to).
fn window(seen: &[(SystemTime, u32)], from: SystemTime, to: SystemTime) -> (u64, u64) {
    seen.iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .fold((0, 0), |(n, b), (_, len)| (n + 1, b + u64::from(*len)))
}

/// The longest time without a copy in [from, to), and when it began.
fn longest_gap(
    seen: &[(SystemTime, u32)],
    from: SystemTime,
    to: SystemTime,
) -> (Duration, SystemTime) {
    let times: Vec<SystemTime> = seen
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= from && *t < to)
        .collect();
    times
        .windows(2)
        .map(|w| (w[1].duration_since(w[0]).unwrap_or_default(), w[0]))
        .max()
        .unwrap_or((to.duration_since(from).unwrap_or_default(), from))
}

fn skipped(agent: &Agent, id: &str) -> Value {
    let list = agent.call(
        "ListTrafficMirrorSessions",
        &[("TrafficMirrorSessionIds.1", id)],
    );
    list["TrafficMirrorSessions"][0]["SkippedPackets"]["Ingress"].clone()
}

/// The counters are read into List once a second: wait until they have stopped moving.
fn skipped_settled(agent: &Agent, id: &str) -> Value {
    let mut last = skipped(agent, id);
    loop {
        thread::sleep(Duration::from_millis(1200));
        let now = skipped(agent, id);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn update(agent: &Agent, id: &str, params: &[(&str, &str)]) {
    let mut p = vec![("TrafficMirrorSessionId", id)];
    p.extend_from_slice(params);
    agent.call("UpdateTrafficMirrorSessionAttribute", &p);
}

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= tolerance * want
}

#[test]
fn budgets_and_sampling_end_to_end() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus > WORK_CPU, "needs {} CPUs", WORK_CPU + 1);
    let bed = Bed::new();
    let config = format!(
        r#"
[[targets]]
id = "tmt-bud"
destination_ip = "{TARGET}"
destination_port = {VXLAN_PORT}

[[filters]]
id = "tmf-bud"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
"#
    );
    let agent = Agent::start(&bed.node, &config);
    let created = agent.call(
        "CreateTrafficMirrorSession",
        &[
            ("TrafficMirrorFilterId", "tmf-bud"),
            ("TrafficMirrorTargetId", "tmt-bud"),
            ("Priority", "1"),
            ("Enabled", "true"),
            ("TrafficMirrorSourceIds.1", "s0"),
            ("MaxPacketsPerSecond", "10000"),
        ],
    );
    let id = created["TrafficMirrorSessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    agent.wait_settled(Duration::from_secs(10));
    let mut report = Vec::new();

    // 1 + 2. Packets: 10 k/s of 100 k/s offered, then raised to 20 k/s while running.
    let tap = Tap::start(&bed.col, "c0");
    let before = skipped_settled(&agent, &id);
    let generator = bed.generator(64, 100_000);
    thread::sleep(Duration::from_secs(1)); // the burst is spent: sustained overload
    let t0 = SystemTime::now();
    let sent0 = generator.sent();
    thread::sleep(Duration::from_secs(5));
    let t1 = SystemTime::now();
    let offered =
        (generator.sent() - sent0) as f64 / t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    update(&agent, &id, &[("MaxPacketsPerSecond", "20000")]);
    let changed = SystemTime::now();
    thread::sleep(Duration::from_millis(1500));
    let t2 = SystemTime::now();
    let sent = generator.stop().sent;
    thread::sleep(Duration::from_millis(200));
    let (seen, tap_drops) = tap.stop();
    let after = skipped_settled(&agent, &id);
    assert_eq!(
        tap_drops, 0,
        "the tap dropped copies: counts are not the target's"
    );

    let (copies, _) = window(&seen, t0, t1);
    let rate = copies as f64 / t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    report.push(format!(
        "packets: offered {offered:.0} pps, copies {rate:.0}/s over {:?}",
        t1.duration_since(t0).unwrap_or_default()
    ));
    assert!(
        offered > 30_000.0,
        "overload needs the offer: {offered:.0} pps"
    );
    assert!(
        within(rate, 10_000.0, 0.05),
        "copies {rate:.0}/s, want 10 000 ± 5 % ({report:?})"
    );
    let skip = |v: &Value, r: &str| v[r].as_u64().unwrap_or(0);
    let skipped_now = skip(&after, "budget_packets") - skip(&before, "budget_packets");
    let total_copies = seen.len() as u64;
    assert!(
        within((skipped_now + total_copies) as f64, sent as f64, 0.01),
        "copies {total_copies} + skipped {skipped_now} should be the {sent} offered"
    );
    report.push(format!(
        "packets: {sent} offered = {total_copies} copies + {skipped_now} skipped (budget_packets)"
    ));
    // The change: within 100 ms the copies come at the new rate (1.5 times the old one in
    // a 20 ms window at least), and at no time around it do they stop.
    let step = Duration::from_millis(5);
    let mut at = changed;
    let effective = loop {
        let (n, _) = window(&seen, at, at + Duration::from_millis(20));
        if n as f64 >= 15_000.0 * 0.020 || at > changed + Duration::from_secs(1) {
            break (at + Duration::from_millis(20))
                .duration_since(changed)
                .unwrap_or_default();
        }
        at += step;
    };
    let (steady_gap, _) = longest_gap(&seen, t0, t1);
    let (gap, gap_at) = longest_gap(
        &seen,
        changed - Duration::from_millis(500),
        changed + Duration::from_millis(500),
    );
    eprintln!(
        "longest gap around the change {gap:?} at {:?} from the request; in the 5 s before {steady_gap:?}",
        gap_at
            .duration_since(changed)
            .map_or_else(|e| format!("-{:?}", e.duration()), |d| format!("{d:?}"))
    );
    let (new_copies, _) = window(&seen, changed + Duration::from_millis(500), t2);
    let new_rate = new_copies as f64
        / t2.duration_since(changed + Duration::from_millis(500))
            .unwrap_or_default()
            .as_secs_f64();
    report.push(format!(
        "change 10k→20k: in effect after {effective:?}, longest gap {gap:?}, then {new_rate:.0}/s"
    ));
    assert!(effective <= Duration::from_millis(100), "{report:?}");
    // A shared VM stalls now and then with or without a change: the change must not make
    // the copies stop for longer than they did in the 5 s before it (or 25 ms).
    assert!(
        gap <= (steady_gap + Duration::from_millis(5)).max(Duration::from_millis(25)),
        "a gap in the copies: {report:?}, longest before the change {steady_gap:?}"
    );
    // The new budget holds (never above it); below it only by what a loaded machine could
    // not carry (the 5 % bound is phase 1's, on a steady run).
    assert!(
        new_rate > 15_000.0 && new_rate <= 20_000.0 * 1.05,
        "{report:?}"
    );

    // 3. Bits: 62 Mbit/s of 1500-byte frames at 30 k/s (360 Mbit/s of copies otherwise).
    update(
        &agent,
        &id,
        &[
            ("MaxPacketsPerSecond", "0"),
            ("MaxBitsPerSecond", "62000000"),
        ],
    );
    agent.wait_settled(Duration::from_secs(10));
    let tap = Tap::start(&bed.col, "c0");
    let generator = bed.generator(1500, 30_000);
    thread::sleep(Duration::from_secs(1));
    let t0 = SystemTime::now();
    thread::sleep(Duration::from_secs(5));
    let t1 = SystemTime::now();
    generator.stop();
    let (seen, tap_drops) = tap.stop();
    assert_eq!(tap_drops, 0);
    let (_, bytes) = window(&seen, t0, t1);
    let bps = bytes as f64 * 8.0 / t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    report.push(format!("bits: copies {:.1} Mbit/s on the wire", bps / 1e6));
    assert!(
        within(bps, 62e6, 0.05),
        "copies {bps:.0} bit/s, want 62 Mbit/s ± 5 % ({report:?})"
    );

    // 4. Sampling one in 100 at random.
    update(
        &agent,
        &id,
        &[("MaxBitsPerSecond", "0"), ("SampleOneIn", "100")],
    );
    agent.wait_settled(Duration::from_secs(10));
    let before = skipped_settled(&agent, &id);
    let tap = Tap::start(&bed.col, "c0");
    let generator = bed.generator(64, 100_000);
    thread::sleep(Duration::from_secs(3));
    generator.stop();
    thread::sleep(Duration::from_millis(200));
    let (seen, tap_drops) = tap.stop();
    assert_eq!(tap_drops, 0);
    let after = skipped_settled(&agent, &id);
    let sampled_out = skip(&after, "sampled_out") - skip(&before, "sampled_out");
    let copies = seen.len() as f64;
    let matched = copies + sampled_out as f64;
    let (mean, sd) = (matched / 100.0, (matched * 0.01 * 0.99).sqrt());
    report.push(format!(
        "sampling 1/100: {copies} copies of {matched} matching (mean {mean:.0}, sd {sd:.1})"
    ));
    assert!(
        (copies - mean).abs() <= 5.0 * sd,
        "outside 5 sd of the binomial: {report:?}"
    );
    eprintln!("{}", report.join("\n"));
    drop(agent);
    drop(bed.node);
}
