//! Packet capture with `tcpdump` and independent decoding of mirrored VXLAN copies.
//!
//! The agent's own code never decodes what tests check: frames are captured by `tcpdump`
//! into a classic pcap file, VXLAN packets are identified by `tshark` (Wireshark's dissectors)
//! and the raw bytes are read with the pcap-file crate and cut out with etherparse. The two decoders
//! cross-check each other (VNI, UDP ports, outer destination), so a bug in either one shows up
//! as a panic instead of a silently passing test.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, ErrorKind},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{NetNs, unique};

/// How long tcpdump may take to start listening, and to exit after SIGINT.
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval while waiting for a child process or for frames in the pcap file.
const POLL: Duration = Duration::from_millis(10);

/// pcap link type of Ethernet frames (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u32 = 1;

/// A running `tcpdump` writing to a pcap file, inside a test namespace.
///
/// Dropping it kills tcpdump but leaves the pcap file alone: call [`Capture::stop`] to get the
/// file, and [`remove`] it when done (keeping it after a failed test helps debugging).
#[must_use = "dropping a Capture kills tcpdump"]
pub struct Capture {
    /// `None` once tcpdump has been reaped.
    child: Option<Child>,
    path: PathBuf,
    /// Human-readable description for panic messages.
    what: String,
    /// Everything tcpdump wrote to stderr so far (filled by `drain`).
    stderr: Arc<Mutex<String>>,
    /// Thread that keeps reading tcpdump's stderr so it never blocks on a full pipe.
    drain: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` inside `ns`, writing every frame in full to a
    /// fresh pcap file under [`std::env::temp_dir`], and returns once tcpdump is listening,
    /// i.e. once frames on `iface` are guaranteed to be captured. An empty `filter` captures
    /// everything.
    ///
    /// # Panics
    ///
    /// If tcpdump cannot be started, exits, or does not report "listening on" within 10 s;
    /// the message includes tcpdump's stderr.
    pub fn start(ns: &NetNs, iface: &str, filter: &str) -> Capture {
        Capture::start_with(ns, iface, filter, 0)
    }

    /// As [`Capture::start`], for bursts of up to thousands of frames of at most `snaplen`
    /// bytes (a bulk transfer's copies): the kernel's capture ring has one slot per frame of
    /// the snap length, so the default (256 KiB) would hold only a few hundred.
    pub fn start_bulk(ns: &NetNs, iface: &str, filter: &str, snaplen: u32) -> Capture {
        Capture::start_with(ns, iface, filter, snaplen)
    }

    fn start_with(ns: &NetNs, iface: &str, filter: &str, snaplen: u32) -> Capture {
        let path = std::env::temp_dir().join(format!("{}.pcap", unique("cap")));
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", iface])
            // Write each packet as soon as it is captured (-U) and have the kernel hand it
            // over immediately instead of batching ring blocks: together they make the file
            // reflect the traffic promptly (see `wait_for_frames`) and lose nothing on SIGINT.
            .args(["-U", "--immediate-mode"])
            // No name resolution (no DNS lookups in an isolated netns), full frames.
            .args(["-n", "-s", &snaplen.to_string()]);
        if snaplen != 0 {
            // 128 MiB of ring: a bulk transfer's copies arrive faster than tcpdump writes.
            cmd.args(["-B", "131072"]);
        }
        cmd
            // Running as root, tcpdump would otherwise switch to the `tcpdump` user before
            // creating the output file, which can fail depending on temp_dir's permissions.
            .args(["-Z", "root"])
            .arg("-w")
            .arg(&path);
        if !filter.is_empty() {
            // tcpdump joins the remaining arguments into one expression, so a single argument
            // containing spaces is fine.
            cmd.arg(filter);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let what = format!(
            "tcpdump on {iface} in netns {} (filter {filter:?}, file {})",
            ns.name,
            path.display()
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {what}: {e}"));

        let pipe = child
            .stderr
            .take()
            .expect("tcpdump's stderr was configured as a pipe");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        let drain = {
            let stderr = Arc::clone(&stderr);
            thread::Builder::new()
                .name("tcpdump stderr".into())
                .spawn(move || {
                    let mut reader = BufReader::new(pipe);
                    let mut line = Vec::new();
                    // Byte-wise lines: a non-UTF-8 interface name must not stop the draining.
                    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        lock(&stderr).push_str(&text);
                        // The receiver is gone once tcpdump is listening; keep draining anyway.
                        let _ = lines_tx.send(text);
                        line.clear();
                    }
                })
                .expect("failed to spawn the tcpdump stderr thread")
        };

        // From here on, a panic drops `capture`, which kills tcpdump.
        let mut capture = Capture {
            child: Some(child),
            path,
            what,
            stderr,
            drain: Some(drain),
        };
        let deadline = Instant::now() + crate::scaled(TCPDUMP_TIMEOUT);
        loop {
            match lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    capture.discard_file();
                    panic!(
                        "{} did not start listening within {TCPDUMP_TIMEOUT:?}; stderr:\n{}",
                        capture.what,
                        capture.stderr()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: tcpdump exited (bad interface, filter syntax, ...).
                    let status = capture.reap();
                    capture.discard_file();
                    panic!(
                        "{} exited with {status} before listening; stderr:\n{}",
                        capture.what,
                        capture.stderr()
                    );
                }
            }
        }
    }

    /// The pcap file tcpdump writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything tcpdump has written to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Waits until the pcap file holds at least `min` complete frames and returns the number
    /// of frames it holds.
    ///
    /// Sending a packet and immediately stopping the capture is racy: tcpdump may not have
    /// read the packet from the kernel yet. Waiting for the expected frame count first makes
    /// [`Self::stop`] deterministic.
    ///
    /// # Panics
    ///
    /// If tcpdump exits or `timeout` elapses first, with the frame count and tcpdump's stderr.
    pub fn wait_for_frames(&mut self, min: usize, timeout: Duration) -> usize {
        let timeout = crate::scaled(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let count = match fs::read(&self.path) {
                // Lenient: tcpdump may be in the middle of writing a record.
                Ok(bytes) => parse_pcap(&bytes, true)
                    .map(|pcap| pcap.frames.len())
                    .unwrap_or_else(|e| panic!("{}: bad pcap file: {e}", self.what)),
                Err(e) if e.kind() == ErrorKind::NotFound => 0,
                Err(e) => panic!("{}: failed to read {}: {e}", self.what, self.path.display()),
            };
            if count >= min {
                return count;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited with {status} after capturing {count} of {min} frames; stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} captured only {count} of {min} frames within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops tcpdump with SIGINT, which makes it flush and close the file cleanly, and returns
    /// the pcap path. The caller owns the file from now on (see [`remove`]).
    ///
    /// If tcpdump does not exit within 10 s it is killed with SIGKILL; frames written before
    /// are still usable thanks to `-U`.
    ///
    /// # Panics
    ///
    /// If tcpdump had already exited on its own (e.g. its interface disappeared), or exits
    /// with an error, including its stderr.
    #[must_use = "the caller owns the pcap file and should remove it"]
    pub fn stop(mut self) -> PathBuf {
        if let Some(status) = self.try_status() {
            panic!(
                "{} exited on its own with {status} before being stopped; stderr:\n{}",
                self.what,
                self.stderr()
            );
        }
        let child = self.child.as_mut().expect("tcpdump is still running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the child has not been reaped,
        // so the pid cannot have been recycled for another process.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            panic!(
                "failed to send SIGINT to {} (pid {pid}): {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        let status = match wait_timeout(child, crate::scaled(TCPDUMP_TIMEOUT)) {
            Some(status) => status,
            None => {
                eprintln!(
                    "warning: {} ignored SIGINT for {TCPDUMP_TIMEOUT:?}; killing it",
                    self.what
                );
                let _ = child.kill();
                child
                    .wait()
                    .unwrap_or_else(|e| panic!("failed to wait for {}: {e}", self.what))
            }
        };
        self.child = None;
        self.join_drain();
        // tcpdump exits 0 on SIGINT; SIGKILL was already reported above.
        if !status.success() && status.code().is_some() {
            panic!(
                "{} exited with {status}; stderr:\n{}",
                self.what,
                self.stderr()
            );
        }
        std::mem::take(&mut self.path)
    }

    /// Stops tcpdump like [`Capture::stop`] and fails if it reports frames the kernel
    /// dropped before tcpdump read them: a test that counts copies must not blame the data
    /// path for the capture's losses.
    pub fn stop_complete(self) -> PathBuf {
        let what = self.what.clone();
        let stderr = Arc::clone(&self.stderr);
        let path = self.stop();
        let text = lock(&stderr).clone();
        let dropped = text
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(dropped, 0, "{what} lost frames itself; stderr:\n{text}");
        path
    }

    /// Returns the exit status if tcpdump has exited, reaping it.
    fn try_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child
            .try_wait()
            .unwrap_or_else(|e| panic!("failed to poll {}: {e}", self.what))?;
        self.child = None;
        Some(status)
    }

    /// Waits for tcpdump to exit on its own (used once its stderr has closed).
    fn reap(&mut self) -> ExitStatus {
        let child = self
            .child
            .as_mut()
            .expect("tcpdump has not been reaped yet");
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("failed to wait for {}: {e}", self.what));
        self.child = None;
        self.join_drain();
        status
    }

    fn join_drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            // The drain thread only panics if a lock is poisoned; nothing to add then.
            let _ = drain.join();
        }
    }

    /// Removes the pcap file of a capture that failed to start: nobody else knows its path.
    fn discard_file(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Never panic: we may be unwinding from a failed test already.
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                eprintln!("warning: failed to kill {}: {e}", self.what);
            }
            if let Err(e) = child.wait() {
                eprintln!("warning: failed to wait for {}: {e}", self.what);
            }
        }
        self.join_drain();
    }
}

/// Locks `m`, ignoring poisoning: the guarded data is a plain log that stays consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `child` until it exits or `timeout` elapses (std has no timed wait).
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("failed to poll a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Removes a pcap file returned by [`Capture::stop`]; a missing file is not an error.
///
/// # Panics
///
/// If the file exists but cannot be removed.
pub fn remove(pcap: &Path) {
    match fs::remove_file(pcap) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("failed to remove {}: {e}", pcap.display()),
    }
}

/// Contents of a classic (libpcap, not pcapng) capture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcap {
    /// `LINKTYPE_*` of every frame, e.g. [`LINKTYPE_ETHERNET`].
    pub linktype: u32,
    /// Captured bytes of each frame, in file order (frame number `n` is `frames[n - 1]`).
    pub frames: Vec<Vec<u8>>,
    /// Original length on the wire of each frame; larger than the captured length only if
    /// the snapshot length truncated the frame.
    pub orig_lens: Vec<u32>,
}

/// Parses a classic pcap file (microsecond magic `0xa1b2c3d4` or nanosecond `0xa1b23c4d`,
/// either byte order) with the pcap-file crate.
///
/// With `lenient`, an incomplete trailing record (tcpdump still writing) is ignored;
/// otherwise it is an error.
pub fn parse_pcap(bytes: &[u8], lenient: bool) -> Result<Pcap, String> {
    use pcap_file::PcapError;
    use pcap_file::pcap::PcapParser;

    let empty = Pcap {
        linktype: 0,
        frames: Vec::new(),
        orig_lens: Vec::new(),
    };
    let (mut rest, parser) = match PcapParser::new(bytes) {
        Ok(parsed) => parsed,
        // tcpdump writes the global header as soon as it opens the file; until then the file
        // is simply empty.
        Err(PcapError::IncompleteBuffer) if lenient && bytes.is_empty() => return Ok(empty),
        Err(PcapError::IncompleteBuffer) => {
            return Err(format!(
                "file is {} bytes, shorter than the 24-byte pcap header",
                bytes.len()
            ));
        }
        Err(e) => {
            let magic = bytes.get(..4).map_or(0, |m| {
                u32::from_le_bytes(m.try_into().expect("slice of length 4"))
            });
            return Err(if magic == 0x0a0d_0d0a {
                "pcapng files are not supported".into()
            } else {
                format!("unknown pcap magic {magic:#010x} ({e})")
            });
        }
    };
    let mut pcap = Pcap {
        linktype: parser.header().datalink.into(),
        ..empty
    };
    while !rest.is_empty() {
        let frame_number = pcap.frames.len() + 1;
        match parser.next_raw_packet(rest) {
            Ok((after, packet)) => {
                pcap.frames.push(packet.data.into_owned());
                pcap.orig_lens.push(packet.orig_len);
                rest = after;
            }
            Err(PcapError::IncompleteBuffer) if lenient => break,
            Err(e) => {
                return Err(format!(
                    "frame {frame_number} at offset {}: {e} ({} bytes remain)",
                    bytes.len() - rest.len(),
                    rest.len()
                ));
            }
        }
    }
    Ok(pcap)
}

/// Reads a classic pcap file written by tcpdump and returns the captured bytes of each frame.
///
/// # Panics
///
/// If the file cannot be read or is not a well-formed classic pcap file.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    read_pcap_full(path).frames
}

/// Like [`read_pcap`], but also returns the link type and original frame lengths.
///
/// # Panics
///
/// If the file cannot be read or is not a well-formed classic pcap file.
pub fn read_pcap_full(path: &Path) -> Pcap {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    parse_pcap(&bytes, false).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Captured bytes of each frame in a pcap file; an alias of [`read_pcap`].
pub fn frames(pcap: &Path) -> Vec<Vec<u8>> {
    read_pcap(pcap)
}

/// One VXLAN-encapsulated copy found in a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanCopy {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Outer UDP source port.
    pub udp_src_port: u16,
    /// Outer UDP destination port.
    pub udp_dst_port: u16,
    /// Outer IP destination, as `IpAddr`'s `Display` (e.g. `198.18.0.2` or `fd00:1::2`).
    pub outer_dst: String,
    /// The encapsulated (inner) Ethernet frame, exactly as carried in the UDP payload.
    pub inner: Vec<u8>,
}

/// Outer headers of a VXLAN frame, decoded from the raw bytes by etherparse.
#[derive(Debug, PartialEq, Eq)]
struct RawVxlan<'a> {
    outer_dst: IpAddr,
    udp_src_port: u16,
    udp_dst_port: u16,
    flags: u8,
    vni: u32,
    inner: &'a [u8],
}

/// Splits an Ethernet frame carrying IPv4/IPv6 + UDP + VXLAN into its outer fields and the
/// inner frame. A fragment is an error (its UDP payload is not all here), as is anything that
/// is not UDP: never a guess.
fn split_vxlan(frame: &[u8]) -> Result<RawVxlan<'_>, String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice, err::packet::SliceError};
    const VXLAN: usize = 8;

    let packet = SlicedPacket::from_ethernet(frame).map_err(|e| match e {
        SliceError::Len(e) => format!("frame of {} bytes too short: {e}", frame.len()),
        e => format!("malformed outer headers: {e}"),
    })?;
    let (outer_dst, fragmented, protocol) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (
            IpAddr::V4(ip.header().destination_addr()),
            ip.is_payload_fragmented(),
            ip.payload().ip_number,
        ),
        Some(NetSlice::Ipv6(ip)) => (
            IpAddr::V6(ip.header().destination_addr()),
            ip.is_payload_fragmented(),
            ip.payload().ip_number,
        ),
        _ => return Err("the outer frame is not IPv4 or IPv6".into()),
    };
    // Ethernet padding after a short IP packet is not part of it: etherparse bounds the
    // payload by the IP and UDP length fields.
    let udp = match &packet.transport {
        _ if fragmented => return Err("outer IP packet is a fragment".into()),
        Some(TransportSlice::Udp(udp)) => udp,
        _ => return Err(format!("outer IP protocol {protocol:?} is not UDP")),
    };
    let payload = udp.payload();
    let vxlan = payload.get(..VXLAN).ok_or_else(|| {
        format!(
            "UDP payload of {} bytes too short for a VXLAN header",
            payload.len()
        )
    })?;
    Ok(RawVxlan {
        outer_dst,
        udp_src_port: udp.source_port(),
        udp_dst_port: udp.destination_port(),
        flags: vxlan[0],
        vni: u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]),
        inner: &payload[VXLAN..],
    })
}

/// Returns every VXLAN copy (UDP port `udp_port`, either direction) in a pcap file of
/// Ethernet frames, in capture order.
///
/// `tshark` decides which frames are VXLAN and reports their VNI, ports and outer destination;
/// the inner frame is cut out of the raw pcap record, and both views must agree.
///
/// # Panics
///
/// If tshark fails, the file is not an untruncated Ethernet capture, a frame's headers
/// disagree with tshark, or a VXLAN header lacks the I (valid VNI) flag.
pub fn vxlan_copies(pcap: &Path, udp_port: u16) -> Vec<VxlanCopy> {
    const VXLAN_FLAG_I: u8 = 0x08;

    let file = read_pcap_full(pcap);
    assert_eq!(
        file.linktype,
        LINKTYPE_ETHERNET,
        "{}: expected an Ethernet capture",
        pcap.display()
    );

    let decode_as = format!("udp.port=={udp_port},vxlan");
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        // No name resolution: faster, and addresses stay numeric for comparison.
        .arg("-n")
        .args(["-d", &decode_as])
        // Only frames whose outermost layers are IP/UDP/VXLAN. ICMP errors quote the
        // offending datagram and tshark dissects the quoted VXLAN header too, so a plain
        // `vxlan` filter would count them; `!icmp` would instead drop copies of ICMP.
        .args([
            "-Y",
            r#"frame.protocols matches "^eth:ethertype:ip(v6)?:udp:vxlan:""#,
        ])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "header=n"])
        // First occurrence = outermost layer: an inner frame may itself be IP/UDP.
        .args(["-E", "occurrence=f"])
        .args(["-e", "frame.number", "-e", "vxlan.vni"])
        .args(["-e", "udp.srcport", "-e", "udp.dstport"])
        .args(["-e", "ip.dst", "-e", "ipv6.dst"])
        .stdin(Stdio::null());
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start tshark on {}: {e}", pcap.display()));
    // tshark warns on stderr when run as root; stderr only matters if it failed.
    if !output.status.success() {
        panic!(
            "tshark on {} failed with {}; stderr:\n{}",
            pcap.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout).expect("tshark printed non-UTF-8 fields");

    let mut copies = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let context = || format!("{}: tshark line {line:?}", pcap.display());
        let [number, vni, src_port, dst_port, ip_dst, ipv6_dst] = fields[..] else {
            panic!("{}: expected 6 tab-separated fields", context());
        };
        let number: usize = number
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad frame.number: {e}", context()));
        let frame = number
            .checked_sub(1)
            .and_then(|i| file.frames.get(i))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no frame {number} among {}",
                    context(),
                    file.frames.len()
                )
            });
        let orig_len = file.orig_lens[number - 1] as usize;
        assert_eq!(
            frame.len(),
            orig_len,
            "{}: frame {number} was truncated by the snapshot length",
            context()
        );
        let raw = split_vxlan(frame).unwrap_or_else(|e| {
            panic!("{}: frame {number}: {e}; bytes: {}", context(), hex(frame))
        });

        assert_eq!(
            raw.flags & VXLAN_FLAG_I,
            VXLAN_FLAG_I,
            "{}: frame {number}: VXLAN flags {:#04x} lack the I flag",
            context(),
            raw.flags
        );
        // Cross-check the hand decoding against tshark's dissectors.
        let expect_num = |name: &str, field: &str, raw_value: u32| {
            let value: u32 = field
                .parse()
                .unwrap_or_else(|e| panic!("{}: bad {name} {field:?}: {e}", context()));
            assert_eq!(
                value,
                raw_value,
                "{}: frame {number}: tshark's {name} differs from the raw bytes",
                context()
            );
        };
        expect_num("vxlan.vni", vni, raw.vni);
        expect_num("udp.srcport", src_port, raw.udp_src_port.into());
        expect_num("udp.dstport", dst_port, raw.udp_dst_port.into());
        // With an IPv4 outer header and an IPv6 inner packet, the first ipv6.dst is the inner
        // one, so pick the field by the outer header's version.
        let tshark_dst = match raw.outer_dst {
            IpAddr::V4(_) => ip_dst,
            IpAddr::V6(_) => ipv6_dst,
        };
        let tshark_dst: IpAddr = tshark_dst
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad outer destination {tshark_dst:?}: {e}", context()));
        assert_eq!(
            tshark_dst,
            raw.outer_dst,
            "{}: frame {number}: tshark's outer destination differs from the raw bytes",
            context()
        );

        copies.push(VxlanCopy {
            vni: raw.vni,
            udp_src_port: raw.udp_src_port,
            udp_dst_port: raw.udp_dst_port,
            outer_dst: raw.outer_dst.to_string(),
            inner: raw.inner.to_vec(),
        });
    }
    copies
}

/// Lowercase hex dump for panic messages.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").expect("writing to a String cannot fail");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Builds a pcap file image; `magic` is written in the requested byte order, as a writer
    /// with that native endianness would.
    fn pcap_bytes(magic: u32, big_endian: bool, linktype: u32, frames: &[&[u8]]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend(w32(magic));
        out.extend(w16(2)); // version major
        out.extend(w16(4)); // version minor
        out.extend(w32(0)); // thiszone
        out.extend(w32(0)); // sigfigs
        out.extend(w32(65535)); // snaplen
        out.extend(w32(linktype));
        for (i, frame) in frames.iter().enumerate() {
            let len = u32::try_from(frame.len()).expect("test frame fits in u32");
            out.extend(w32(1_700_000_000 + i as u32)); // ts_sec
            out.extend(w32(123)); // ts_usec / ts_nsec
            out.extend(w32(len)); // incl_len
            out.extend(w32(len)); // orig_len
            out.extend_from_slice(frame);
        }
        out
    }

    /// Temporary file removed on drop, so failing tests leave nothing behind.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!("{}.pcap", unique("ut")));
            fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    const FRAME_A: &[u8] = &[0xde, 0xad, 0xbe, 0xef];
    const FRAME_B: &[u8] = &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];

    #[test]
    fn reads_all_magic_and_byte_order_variants() {
        for magic in [0xa1b2_c3d4, 0xa1b2_3c4d] {
            for big_endian in [false, true] {
                let file = TempFile::new(&pcap_bytes(magic, big_endian, 1, &[FRAME_A, FRAME_B]));
                let pcap = read_pcap_full(&file.0);
                assert_eq!(
                    pcap.linktype, LINKTYPE_ETHERNET,
                    "magic {magic:#x}, big endian {big_endian}"
                );
                assert_eq!(
                    pcap.frames,
                    [FRAME_A.to_vec(), FRAME_B.to_vec()],
                    "magic {magic:#x}, big endian {big_endian}"
                );
                assert_eq!(pcap.orig_lens, [4, 7]);
                assert_eq!(frames(&file.0), pcap.frames);
            }
        }
    }

    #[test]
    fn reads_empty_capture() {
        let file = TempFile::new(&pcap_bytes(0xa1b2_c3d4, false, 1, &[]));
        assert!(read_pcap(&file.0).is_empty());
    }

    #[test]
    fn rejects_truncated_record_unless_lenient() {
        let mut bytes = pcap_bytes(0xa1b2_c3d4, false, 1, &[FRAME_A, FRAME_B]);
        bytes.truncate(bytes.len() - 1);
        let err = parse_pcap(&bytes, false).expect_err("truncated record must be rejected");
        assert!(err.contains("frame 2"), "unexpected error: {err}");
        let pcap = parse_pcap(&bytes, true).expect("lenient parse keeps complete records");
        assert_eq!(pcap.frames, [FRAME_A.to_vec()]);

        // A partial record header is also tolerated only in lenient mode.
        let mut bytes = pcap_bytes(0xa1b2_c3d4, false, 1, &[FRAME_A]);
        bytes.extend([0; 5]);
        assert!(parse_pcap(&bytes, false).is_err());
        assert_eq!(
            parse_pcap(&bytes, true)
                .expect("lenient parse of a partial header")
                .frames
                .len(),
            1
        );
    }

    #[test]
    #[should_panic(expected = "unknown pcap magic")]
    fn rejects_bad_magic() {
        let file = TempFile::new(&pcap_bytes(0x1234_5678, false, 1, &[FRAME_A]));
        read_pcap(&file.0);
    }

    #[test]
    #[should_panic(expected = "pcapng files are not supported")]
    fn rejects_pcapng() {
        let file = TempFile::new(&pcap_bytes(0x0a0d_0d0a, false, 1, &[]));
        read_pcap(&file.0);
    }

    /// Outer Ethernet + IPv4 (with options, to exercise IHL) + UDP + VXLAN + inner, plus
    /// trailing Ethernet padding that must not end up in the inner frame.
    fn vxlan_over_ipv4(inner: &[u8]) -> Vec<u8> {
        let udp_len = u16::try_from(8 + 8 + inner.len()).expect("small test frame");
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        // IPv4, IHL 6 (one 4-byte option), protocol UDP, DF set, 198.18.0.1 -> 198.18.0.2.
        let total = (24 + udp_len).to_be_bytes();
        f.extend([0x46, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend([198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend([1, 1, 1, 0]); // NOP, NOP, NOP, EOL
        f.extend(40000u16.to_be_bytes());
        f.extend(4789u16.to_be_bytes());
        f.extend(udp_len.to_be_bytes());
        f.extend([0, 0]);
        f.extend([0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        f.extend_from_slice(inner);
        f.extend([0; 6]); // padding
        f
    }

    #[test]
    fn splits_vxlan_over_ipv4() {
        let frame = vxlan_over_ipv4(FRAME_B);
        let raw = split_vxlan(&frame).expect("valid VXLAN frame");
        assert_eq!(
            raw,
            RawVxlan {
                outer_dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
                udp_src_port: 40000,
                udp_dst_port: 4789,
                flags: 0x08,
                vni: 0x12_3456,
                inner: FRAME_B,
            }
        );
    }

    #[test]
    fn splits_vxlan_over_ipv6() {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        frame.extend([0x60, 0, 0, 0, 0, 8 + 8 + 4, 17, 64]);
        frame.extend(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1).octets());
        frame.extend(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2).octets());
        frame.extend([0x9c, 0x40, 0x12, 0xb5, 0, 20, 0, 0]);
        frame.extend([0x08, 0, 0, 0, 0, 0, 7, 0]);
        frame.extend_from_slice(FRAME_A);
        let raw = split_vxlan(&frame).expect("valid VXLAN frame");
        assert_eq!(raw.outer_dst.to_string(), "fd00:1::2");
        assert_eq!((raw.udp_src_port, raw.udp_dst_port), (40000, 4789));
        assert_eq!((raw.flags, raw.vni), (0x08, 7));
        assert_eq!(raw.inner, FRAME_A);
    }

    #[test]
    fn rejects_non_udp_and_fragments() {
        let mut icmp = vxlan_over_ipv4(FRAME_A);
        icmp[14 + 9] = 1;
        assert!(split_vxlan(&icmp).expect_err("ICMP").contains("not UDP"));
        let mut fragment = vxlan_over_ipv4(FRAME_A);
        fragment[14 + 6] = 0x20; // more fragments
        assert!(
            split_vxlan(&fragment)
                .expect_err("fragment")
                .contains("fragment")
        );
        let short = &vxlan_over_ipv4(FRAME_A)[..40];
        assert!(split_vxlan(short).expect_err("short").contains("too short"));
    }

    /// End-to-end check of the whole toolchain (namespaces, veth, tcpdump, tshark, parser):
    /// sends hand-made VXLAN packets between two namespaces and decodes the capture.
    /// Needs root, like every test that creates namespaces; skipped otherwise so that plain
    /// `cargo test` of the parser works anywhere.
    #[test]
    fn captures_and_decodes_vxlan_between_namespaces() {
        use std::net::UdpSocket;

        use crate::netns::in_netns;

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root to create network namespaces");
            return;
        }
        let a = NetNs::new("ca");
        let b = NetNs::new("cb");
        let veth = a.veth_to(&b, "va", "vb", Some("198.18.0.1/24"), Some("198.18.0.2/24"));
        a.add_addr(&veth.here, "fd00:1::1/64");
        b.add_addr(&veth.there, "fd00:1::2/64");
        // Declared after the namespaces, so it is dropped (tcpdump killed) first.
        let mut capture = Capture::start(&b, &veth.there, "udp port 4789 or icmp or icmp6");

        // Inner frames whose IP version differs from the outer one: tshark's first ipv6.dst /
        // ip.dst then belongs to the inner packet, which vxlan_copies must not pick.
        let mut inner_v6 = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x86, 0xdd];
        inner_v6.extend([0x60, 0, 0, 0, 0, 0, 59, 64]); // no next header, empty payload
        inner_v6.extend(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1).octets());
        inner_v6.extend(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2).octets());
        let mut inner_v4 = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00];
        inner_v4.extend([0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 253, 0, 0]);
        inner_v4.extend([198, 19, 0, 1, 198, 19, 0, 2]);

        let vxlan = |vni: u32, inner: &[u8]| {
            let mut p = vec![0x08, 0, 0, 0];
            p.extend(&vni.to_be_bytes()[1..]);
            p.push(0);
            p.extend_from_slice(inner);
            p
        };
        let (port_v4, port_v6) = in_netns(&a, || {
            let send = |bind: &str, to: &str, payload: Vec<u8>| {
                let socket = UdpSocket::bind(bind)
                    .unwrap_or_else(|e| panic!("failed to bind {bind} in {}: {e}", a.name));
                socket
                    .send_to(&payload, to)
                    .unwrap_or_else(|e| panic!("failed to send to {to}: {e}"));
                socket
                    .local_addr()
                    .expect("local address of a bound socket")
                    .port()
            };
            (
                send("198.18.0.1:0", "198.18.0.2:4789", vxlan(42, &inner_v6)),
                send(
                    "[fd00:1::1]:0",
                    "[fd00:1::2]:4789",
                    vxlan(0xab_cdef, &inner_v4),
                ),
            )
        });
        capture.wait_for_frames(2, Duration::from_secs(10));
        let pcap = capture.stop();
        let copies = vxlan_copies(&pcap, 4789);
        remove(&pcap);

        assert_eq!(
            copies,
            [
                VxlanCopy {
                    vni: 42,
                    udp_src_port: port_v4,
                    udp_dst_port: 4789,
                    outer_dst: "198.18.0.2".into(),
                    inner: inner_v6,
                },
                VxlanCopy {
                    vni: 0xab_cdef,
                    udp_src_port: port_v6,
                    udp_dst_port: 4789,
                    outer_dst: "fd00:1::2".into(),
                    inner: inner_v4,
                },
            ]
        );
    }
}
