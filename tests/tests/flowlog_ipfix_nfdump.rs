//! IPFIX export checked by an independent collector: nfcapd (nfdump) receives what
//! `IpfixExporter` sends on loopback, and `nfdump -o json` decodes the file it wrote. Every
//! flow must come back with the same addresses, ports, protocol, counters, times, TCP flags,
//! interface and direction; nfcapd must see no sequence errors.
//!
//! Requirements: `nfcapd` and `nfdump` (Debian package nfdump, installed by
//! `cargo xtask setup`). No root needed; the collector listens on 127.0.0.1 only.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use mirror_agent::flowlog::{
    ipfix::IpfixExporter,
    record::{FlowAction, FlowDirection, FlowFields, FlowRecord, LogStatus},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const OBSERVATION_DOMAIN: u32 = 4242;

/// nfcapd as a child process writing into its own temp directory. Dropping it kills the
/// child (if still running) and removes the directory, also when the test panics.
struct Collector {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Collector {
    fn start() -> Collector {
        let dir = std::env::temp_dir().join(format!(
            "flowlog-ipfix-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(dir.join("flows")).unwrap();
        // Free port: the kernel picks one, then nfcapd binds it; a clash would show up as
        // nfcapd failing to bind, reported below.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(dir.join("nfcapd.log")).unwrap();
        let child = Command::new("nfcapd")
            .args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .arg("-w")
            .arg(dir.join("flows"))
            // One file for the whole test; it is closed by SIGTERM, not by time.
            .args(["-t", "3600"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nfcapd ({e}); install nfdump (cargo xtask setup)")
            });
        let mut c = Collector {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + WAIT;
        while udp_socket(port).is_none() {
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nfcapd exited with {status}: {}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "nfcapd does not listen: {}",
                c.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("nfcapd.log")).unwrap_or_default()
    }

    /// Waits until nfcapd has read every datagram sent to it, so none is lost at SIGTERM.
    fn wait_drained(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = udp_socket(self.port).expect("nfcapd socket gone");
            assert_eq!(s.drops, 0, "datagrams dropped at the collector socket");
            if s.rx_queue == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "nfcapd does not read its socket");
            thread::sleep(Duration::from_millis(10));
        }
        // The last datagram read may still be in processing.
        thread::sleep(Duration::from_millis(200));
    }

    /// SIGTERM (nfcapd then flushes and closes its file) and wait; returns nfcapd's log.
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("stopped twice");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nfcapd ignored SIGTERM: {}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "nfcapd exited with {status}: {}",
            self.log()
        );
        self.log()
    }

    /// The closed capture files (`nfcapd.YYYYMMDDhhmm`), oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.join("flows"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("nfcapd.") && !name.starts_with("nfcapd.current")
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct UdpSocketStat {
    rx_queue: u64,
    drops: u64,
}

/// The 127.0.0.1:`port` UDP socket from /proc/net/udp, if one is bound.
fn udp_socket(port: u16) -> Option<UdpSocketStat> {
    let table = fs::read_to_string("/proc/net/udp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) {
            return None;
        }
        let (_, rx) = cols[4].split_once(':')?;
        Some(UdpSocketStat {
            rx_queue: u64::from_str_radix(rx, 16).ok()?,
            drops: cols.last()?.parse().ok()?,
        })
    })
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (major, minor, patch) of the installed nfdump ("nfdump: Version: NSEL-NEL1.7.1").
fn nfdump_version() -> (u32, u32, u32) {
    let out = run(Command::new("nfdump").arg("-V"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let start = text.find(|c: char| c.is_ascii_digit()).expect("version");
    let v: Vec<u32> = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    (
        v[0],
        v.get(1).copied().unwrap_or(0),
        v.get(2).copied().unwrap_or(0),
    )
}

/// Unix seconds of nfdump's "YYYY-MM-DDThh:mm:ss.mmm" (printed in UTC: TZ=UTC below).
fn unix_seconds(s: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    assert_eq!(&s[19..], ".000", "whole seconds expected: {s}");
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).unwrap()
}

/// nfdump's "CEUAPRSF" flag string back to bits.
fn tcp_flags(s: &str) -> u8 {
    assert_eq!(s.len(), 8, "{s}");
    s.bytes()
        .enumerate()
        .filter(|(_, c)| *c != b'.')
        .fold(0, |acc, (i, _)| acc | (0x80 >> i))
}

#[allow(clippy::too_many_arguments)]
fn flow(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    action: FlowAction,
    flags: u8,
    direction: FlowDirection,
    ifindex: u32,
    start: u64,
) -> FlowRecord {
    FlowRecord {
        flow_log_id: "fl-nfdump".into(),
        interface_id: format!("veth{ifindex}"),
        ifindex,
        flow: Some(FlowFields {
            srcaddr: src.parse().unwrap(),
            dstaddr: dst.parse().unwrap(),
            srcport: sport,
            dstport: dport,
            protocol: proto,
            packets,
            bytes,
            action,
            tcp_flags: flags,
            direction,
            drop_reason: (action == FlowAction::Reject).then(|| "NETFILTER_DROP".to_string()),
        }),
        start,
        end: start + 59,
        log_status: LogStatus::Ok,
        skipped_packets: 0,
    }
}

/// What nfdump printed for one flow, keyed like the exported record.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    start: u64,
    end: u64,
    flags: u8,
    input: u32,
    output: u32,
    direction: u8,
    /// Not compared for ICMP: newer nfdump prints it only for port-carrying flows.
    fwd_status: Option<u8>,
}

fn field<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k)
        .unwrap_or_else(|| panic!("nfdump record without {k}: {v}"))
}

fn num(v: &Value, k: &str) -> u64 {
    field(v, k)
        .as_u64()
        .unwrap_or_else(|| panic!("{k} not a number: {v}"))
}

fn seen_from_nfdump(v: &Value) -> Seen {
    let addr = |k4: &str, k6: &str| -> IpAddr {
        v.get(k4)
            .or_else(|| v.get(k6))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {k4}/{k6}: {v}"))
            .parse()
            .unwrap()
    };
    let proto = u8::try_from(num(v, "proto")).unwrap();
    // nfdump shows ICMP's type and code (carried in the destination port) instead of ports.
    let (sport, dport, flags) = if is_icmp(proto) {
        let t = u16::try_from(num(v, "icmp_type")).unwrap();
        let c = u16::try_from(num(v, "icmp_code")).unwrap();
        (0, t << 8 | c, 0)
    } else {
        (
            u16::try_from(num(v, "src_port")).unwrap(),
            u16::try_from(num(v, "dst_port")).unwrap(),
            tcp_flags(field(v, "tcp_flags").as_str().unwrap()),
        )
    };
    Seen {
        src: addr("src4_addr", "src6_addr"),
        dst: addr("dst4_addr", "dst6_addr"),
        sport,
        dport,
        proto,
        packets: num(v, "in_packets"),
        bytes: num(v, "in_bytes"),
        start: unix_seconds(field(v, "first").as_str().unwrap()),
        end: unix_seconds(field(v, "last").as_str().unwrap()),
        flags,
        input: u32::try_from(num(v, "input_snmp")).unwrap(),
        output: u32::try_from(num(v, "output_snmp")).unwrap(),
        direction: u8::try_from(num(v, "direction")).unwrap(),
        fwd_status: (!is_icmp(proto)).then(|| u8::try_from(num(v, "fwd_status")).unwrap()),
    }
}

fn expected(r: &FlowRecord, decodes_fwd_status: bool) -> Seen {
    let f = r.flow.as_ref().unwrap();
    let (input, output, direction) = match f.direction {
        FlowDirection::Ingress => (r.ifindex, 0, 0),
        FlowDirection::Egress => (0, r.ifindex, 1),
    };
    let fwd_status = match (decodes_fwd_status, f.action) {
        (false, _) => 0,
        (true, FlowAction::Accept) => 64,
        (true, FlowAction::Reject) => 128,
    };
    Seen {
        src: f.srcaddr,
        dst: f.dstaddr,
        sport: f.srcport,
        dport: f.dstport,
        proto: f.protocol,
        packets: f.packets,
        bytes: f.bytes,
        start: r.start,
        end: r.end,
        // TCP flags are only meaningful (and only shown) for non-ICMP flows.
        flags: if is_icmp(f.protocol) { 0 } else { f.tcp_flags },
        input,
        output,
        direction,
        fwd_status: (!is_icmp(f.protocol)).then_some(fwd_status),
    }
}

fn is_icmp(proto: u8) -> bool {
    proto == 1 || proto == 58
}

#[test]
fn ipfix_export_decoded_by_nfdump() {
    let version = nfdump_version();
    // nfdump decodes forwardingStatus (IPFIX element 89) from 1.7.2 on; 1.7.1 drops it.
    let decodes_fwd_status = version >= (1, 7, 2);
    let mut collector = Collector::start();

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = now - 3600;
    use FlowAction::{Accept, Reject};
    use FlowDirection::{Egress, Ingress};
    const FIN: u8 = 1;
    const SYN: u8 = 2;
    const RST: u8 = 4;
    const PSH: u8 = 8;
    const ACK: u8 = 16;
    const URG: u8 = 32;
    let mut records = vec![
        flow(
            "192.0.2.10",
            "198.51.100.20",
            49152,
            443,
            6,
            12,
            4_321,
            Accept,
            SYN | ACK | PSH | FIN,
            Ingress,
            3,
            t,
        ),
        flow(
            "192.0.2.10",
            "198.51.100.21",
            40000,
            22,
            6,
            3,
            180,
            Reject,
            SYN,
            Egress,
            4,
            t + 1,
        ),
        flow(
            "198.51.100.22",
            "192.0.2.10",
            80,
            50000,
            6,
            1,
            40,
            Accept,
            RST | ACK | URG,
            Ingress,
            3,
            t + 2,
        ),
        // Counters past 32 bits must survive the 8-byte fields.
        flow(
            "192.0.2.11",
            "203.0.113.5",
            5353,
            53,
            17,
            5_000_000_000,
            7_000_000_000_000,
            Accept,
            0,
            Egress,
            5,
            t + 3,
        ),
        flow(
            "203.0.113.5",
            "192.0.2.11",
            53,
            5353,
            17,
            2,
            300,
            Reject,
            0,
            Ingress,
            5,
            t + 4,
        ),
        // ICMP echo request: type 8, code 0 in the destination port.
        flow(
            "192.0.2.12",
            "192.0.2.13",
            0,
            8 << 8,
            1,
            4,
            336,
            Accept,
            0,
            Egress,
            6,
            t + 5,
        ),
        flow(
            "2001:db8::1",
            "2001:db8:1::2",
            55555,
            443,
            6,
            20,
            30_000,
            Accept,
            SYN | ACK | FIN,
            Ingress,
            7,
            t + 6,
        ),
        flow(
            "2001:db8::1",
            "2001:db8:1::3",
            55556,
            8443,
            6,
            2,
            152,
            Reject,
            SYN | RST,
            Egress,
            7,
            t + 7,
        ),
        flow(
            "2001:db8:1::4",
            "2001:db8::1",
            123,
            123,
            17,
            1,
            76,
            Accept,
            0,
            Ingress,
            8,
            t + 8,
        ),
        // ICMPv6 echo request: type 128, code 0.
        flow(
            "2001:db8::1",
            "2001:db8:1::5",
            0,
            128 << 8,
            58,
            3,
            312,
            Reject,
            0,
            Egress,
            8,
            t + 9,
        ),
    ];
    // Enough more flows to need several messages, mixing both templates.
    for i in 0..150u16 {
        let (src, dst) = if i % 2 == 0 {
            (
                Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8).to_string(),
                "10.2.0.1".to_string(),
            )
        } else {
            (
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i).to_string(),
                "fd00::2".to_string(),
            )
        };
        records.push(flow(
            &src,
            &dst,
            10_000 + i,
            9000,
            17,
            u64::from(i) + 1,
            100 * (u64::from(i) + 1),
            Accept,
            0,
            Ingress,
            9,
            t + 100,
        ));
    }
    // Not flows: must not reach the collector.
    let mut nodata = records[0].clone();
    nodata.flow = None;
    nodata.log_status = LogStatus::NoData;
    let mut skipdata = nodata.clone();
    skipdata.log_status = LogStatus::SkipData;
    skipdata.skipped_packets = 99;

    let mut exporter = IpfixExporter::new(
        format!("127.0.0.1:{}", collector.port).parse().unwrap(),
        OBSERVATION_DOMAIN,
    )
    .unwrap();
    let (first, rest) = records.split_at(5);
    let mut with_status = first.to_vec();
    with_status.push(nodata);
    with_status.push(skipdata);
    assert_eq!(exporter.send(&with_status).unwrap(), first.len());
    // A second call continues the sequence numbers without templates.
    assert_eq!(exporter.send(rest).unwrap(), rest.len());
    assert_eq!(exporter.sequence() as usize, records.len());

    collector.wait_drained();
    let log = collector.stop();
    assert!(
        log.contains("Sequence Errors: 0"),
        "nfcapd saw sequence errors: {log}"
    );
    assert!(
        log.contains("Bad Packets: 0"),
        "nfcapd saw bad packets: {log}"
    );

    let files = collector.files();
    assert!(!files.is_empty(), "nfcapd wrote no file: {log}");
    let mut got = Vec::new();
    for file in &files {
        let out = run(Command::new("nfdump")
            .env("TZ", "UTC")
            .arg("-r")
            .arg(file)
            .args(["-o", "json"]));
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains("No matching flows") {
            continue;
        }
        let parsed: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("nfdump json does not parse ({e}): {text}"));
        for v in parsed.as_array().unwrap() {
            assert_eq!(field(v, "type"), "FLOW", "{v}");
            got.push(seen_from_nfdump(v));
        }
    }
    let mut want: Vec<Seen> = records
        .iter()
        .map(|r| expected(r, decodes_fwd_status))
        .collect();
    got.sort();
    want.sort();
    if got != want {
        let g: BTreeMap<_, _> = got
            .iter()
            .map(|s| ((s.src, s.dst, s.sport, s.dport), s))
            .collect();
        for w in &want {
            match g.get(&(w.src, w.dst, w.sport, w.dport)) {
                Some(s) if *s == w => {}
                Some(s) => eprintln!("differs:\n  want {w:?}\n  got  {s:?}"),
                None => eprintln!("missing: {w:?}"),
            }
        }
        panic!(
            "nfdump decoded {} flows, {} sent; see above",
            got.len(),
            want.len()
        );
    }
    eprintln!(
        "nfdump {}.{}.{}: {} flows decoded; forwardingStatus {}",
        version.0,
        version.1,
        version.2,
        got.len(),
        if decodes_fwd_status {
            "decoded (64 ACCEPT / 128 REJECT)"
        } else {
            "not decoded by this version (0)"
        }
    );
}
