//! The benchmark's traffic generator: UDP/IPv4 frames written with AF_PACKET `sendmmsg`,
//! straight to the driver (PACKET_QDISC_BYPASS), from one thread pinned to one CPU.
//!
//! The kernel here has no pktgen, so the project brings its own. The frames are built once:
//! a fixed set of flows (source ports `FIRST_SPORT..`), sent round robin, so the ground truth
//! is known exactly: after `n` frames flow `i` has `n / flows + (i < n % flows)` packets.
//! Without a rate it sends as fast as it can; with one it paces batches against the clock
//! (spinning, as the core is the generator's anyway).
//!
//! Back-pressure: a frame keeps its reference to the sending socket across the veth until the
//! receiving side frees it, so the socket's send buffer bounds the frames in flight. When the
//! receiving core falls behind, `sendmmsg` blocks (instead of the receive backlog dropping)
//! and the rate becomes what the receiver processes; the thread then spends part of the wall
//! time blocked ([`Generator::schedstat`]: neither running nor waiting for a CPU), which is
//! how a caller tells a receiver-bound run from a sender-bound one.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Source port of flow 0; flow `i` uses `FIRST_SPORT + i`.
pub const FIRST_SPORT: u16 = 10_000;
/// Destination port of every flow (discard).
pub const DPORT: u16 = 9;

/// What to send.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Interface (in the generator's namespace) the frames leave on.
    pub ifname: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// Ethernet frame length without FCS, at least 60.
    pub frame_len: usize,
    /// Distinct flows (source ports).
    pub flows: u16,
    /// Packets per second, or as fast as possible.
    pub rate_pps: Option<u64>,
    /// The CPU the sending thread is pinned to.
    pub cpu: Option<usize>,
}

/// Flow `i`'s frame: Ethernet / IPv4 (checksummed) / UDP (no checksum) / zero payload.
pub fn build_frame(cfg: &GenConfig, flow: u16) -> Vec<u8> {
    use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, UdpHeader};
    let len = cfg.frame_len.max(60);
    let udp_len = (len - 14 - Ipv4Header::MIN_LEN) as u16;
    let mut ip = Ipv4Header::new(
        udp_len,
        64,
        IpNumber::UDP,
        cfg.src_ip.octets(),
        cfg.dst_ip.octets(),
    )
    .expect("frame length fits IPv4");
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader {
        source_port: FIRST_SPORT + flow,
        destination_port: DPORT,
        length: udp_len,
        checksum: 0,
    };
    let mut f = Ethernet2Header {
        source: cfg.src_mac,
        destination: cfg.dst_mac,
        ether_type: EtherType::IPV4,
    }
    .to_bytes()
    .to_vec();
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(&udp.to_bytes());
    f.resize(len, 0);
    f
}

/// Packets flow `flow` carried after `sent` frames in total.
pub fn flow_packets(sent: u64, flows: u16, flow: u16) -> u64 {
    let f = u64::from(flows.max(1));
    sent / f + u64::from(u64::from(flow) < sent % f)
}

/// A generator sending in the background until stopped.
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// The sending thread's id, for its /proc schedstat.
    tid: libc::pid_t,
    started: Instant,
    handle: Option<thread::JoinHandle<io::Result<()>>>,
}

/// What was sent.
#[derive(Clone, Copy, Debug)]
pub struct GenReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl GenReport {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0, …) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An AF_PACKET socket bound to `ifname` that never receives (protocol 0) and skips the
/// qdisc layer, as a NIC driver's own generator would.
fn packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    crate::sockopt::set_int(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
    // SAFETY: a zeroed sockaddr_ll with family and index set is a valid address.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of its own size.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

const BATCH: usize = 64;

struct Counters<'a> {
    stop: &'a AtomicBool,
    sent: &'a AtomicU64,
}

fn send_loop(cfg: &GenConfig, fd: &OwnedFd, c: &Counters<'_>, started: Instant) -> io::Result<()> {
    let (stop, sent) = (c.stop, c.sent);
    let flows = cfg.flows.max(1);
    let frames: Vec<Vec<u8>> = (0..flows).map(|i| build_frame(cfg, i)).collect();
    // One iovec per frame; a batch is a window over them, flow order kept exactly.
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is "no name, no control".
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut next: usize = 0;
    let mut total: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(rate) = cfg.rate_pps {
            // Pace: never ahead of rate x elapsed.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if total >= due {
                std::hint::spin_loop();
                continue;
            }
        }
        let n = BATCH;
        for (k, m) in msgs.iter_mut().enumerate().take(n) {
            let i = (next + k) % frames.len();
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every msghdr points at one live iovec over a live frame.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The driver's queue is full: try again (counted as nothing sent).
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        let r = r as usize;
        next = (next + r) % frames.len();
        total += r as u64;
        sent.store(total, Ordering::Relaxed);
    }
    Ok(())
}

impl Generator {
    /// Starts sending from `ns` on a thread of its own (pinned to `cfg.cpu`).
    pub fn start(ns: &NetNs, cfg: GenConfig) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
        let path = format!("/var/run/netns/{}", ns.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = thread::Builder::new()
            .name("pktgen".into())
            .spawn(move || -> io::Result<()> {
                let setup = || -> io::Result<OwnedFd> {
                    let file = File::open(&path)?;
                    // SAFETY: an open namespace file; only this thread changes namespace.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(cpu) = cfg.cpu {
                        pin_to(cpu)?;
                    }
                    packet_socket(&cfg.ifname)
                };
                let fd = match setup() {
                    Ok(fd) => {
                        // SAFETY: gettid has no preconditions.
                        let tid = unsafe { libc::gettid() };
                        let _ = ready_tx.send(Ok((Instant::now(), tid)));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                let started = Instant::now();
                let counters = Counters {
                    stop: &stop2,
                    sent: &sent2,
                };
                send_loop(&cfg, &fd, &counters, started)
            })
            .expect("spawning the generator thread");
        let (started, tid) = match ready_rx.recv() {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!("generator setup in {}: {e}", ns.name),
            Err(_) => panic!("generator thread ended during setup"),
        };
        Generator {
            stop,
            sent,
            tid,
            started,
            handle: Some(handle),
        }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The sending thread's time running on a CPU and waiting on a run queue so far (ns,
    /// /proc schedstat); the rest of the wall time it was blocked, i.e. held back by the
    /// receiver through its socket buffer.
    pub fn schedstat(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", self.tid))
            .unwrap_or_default();
        let mut f = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        (f.next().unwrap_or(0), f.next().unwrap_or(0))
    }

    /// Stops, and reports what was sent.
    pub fn stop(mut self) -> GenReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("generator failed: {e}"),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        GenReport {
            sent: self.sent(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
