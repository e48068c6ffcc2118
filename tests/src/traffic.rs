//! Traffic generators for the end-to-end tests.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::{NetNs, in_netns};

/// Sends numbered UDP datagrams from `ns` to `dst:port` every 2 ms until stopped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u32>>,
}

impl Stream {
    pub fn start(ns: &NetNs, dst: &'static str, port: u16) -> Stream {
        let sock = in_netns(ns, || {
            UdpSocket::bind(("0.0.0.0", 0)).expect("stream socket")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(64, 0xab);
                sock.send_to(&payload, (dst, port)).expect("stream send");
                seq += 1;
                thread::sleep(Duration::from_millis(2));
            }
            seq
        });
        Stream {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map_or(0, |h| h.join().expect("stream thread"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The sequence number a Stream datagram carries, from a copy's inner frame (IPv4, UDP).
pub fn stream_seq(inner: &[u8]) -> Option<u32> {
    let ihl = usize::from(inner.get(14)? & 0x0f) * 4;
    let at = 14 + ihl + 8;
    Some(u32::from_be_bytes(inner.get(at..at + 4)?.try_into().ok()?))
}

/// Sends `total` bytes over one TCP connection from `client` to `addr:port` in `server`,
/// in 64 KiB writes (the stack makes GSO super-packets of them on veth). Returns the bytes
/// the server read.
pub fn bulk_tcp(server: &NetNs, client: &NetNs, addr: IpAddr, port: u16, total: usize) -> usize {
    let listener = in_netns(server, || TcpListener::bind((addr, port)).expect("listen"));
    let reader = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                break got;
            }
            got += n;
        }
    });
    in_netns(client, || {
        let mut conn = TcpStream::connect((addr, port)).expect("connect");
        let chunk: Vec<u8> = (0..(64 << 10)).map(|i| (i * 7 + 3) as u8).collect();
        for _ in 0..total / chunk.len() {
            conn.write_all(&chunk).expect("write");
        }
    });
    reader.join().expect("reader")
}

/// tshark's own reassembly of the first TCP stream in `pcap` (decoding UDP 4789 as VXLAN,
/// so it works on copies as captured at a collector and on decapsulated frames alike):
/// the bytes each side sent.
pub fn tshark_follow(pcap: &Path) -> (usize, usize) {
    let text = tshark(pcap, &["-q", "-z", "follow,tcp,raw,0"]);
    // Raw follow output: one hex line per segment; the second node's lines start with a tab.
    let mut first = 0usize;
    let mut second = 0usize;
    let mut started = false;
    for line in text.lines() {
        if line.starts_with("Node 1:") {
            started = true;
            continue;
        }
        if !started || line.starts_with('=') || line.trim().is_empty() {
            continue;
        }
        if let Some(hex) = line.strip_prefix('\t') {
            second += hex.trim().len() / 2;
        } else {
            first += line.trim().len() / 2;
        }
    }
    (first, second)
}

/// Frames in `pcap` whose TCP or UDP checksum tshark finds bad, with validation on (an
/// outer UDP checksum of 0 over IPv4 is "not present", not bad).
pub fn bad_checksums(pcap: &Path) -> Vec<String> {
    tshark(
        pcap,
        &[
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "tcp.relative_sequence_numbers:FALSE",
            "-Y",
            "tcp.checksum.status == 0 || udp.checksum.status == 0",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "separator=/t",
        ]
        .into_iter()
        .chain(BAD_CHECKSUM_FIELDS.iter().flat_map(|f| ["-e", f]))
        .collect::<Vec<_>>(),
    )
    .lines()
    .map(|line| {
        BAD_CHECKSUM_FIELDS
            .iter()
            .zip(line.split('\t'))
            .map(|(f, v)| format!("{f}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
    .collect()
}

/// What a failing test prints of each copy with a bad checksum, so a rare failure in CI
/// says which packet it was.
const BAD_CHECKSUM_FIELDS: &[&str] = &[
    "frame.number",
    "frame.len",
    "ip.src",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags.str",
    "tcp.seq",
    "tcp.len",
    "tcp.checksum",
    "tcp.checksum.calculated",
    "udp.length",
    "udp.checksum",
    "udp.checksum.calculated",
];

/// tshark's standard output on `pcap`: numeric, UDP 4789 decoded as VXLAN.
fn tshark(pcap: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-d", "udp.port==4789,vxlan"])
        .args(args)
        .output()
        .expect("tshark");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
