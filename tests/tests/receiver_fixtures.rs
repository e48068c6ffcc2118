//! BPF_PROG_TEST_RUN fixtures for the receiving programs (`mirror_receive`, XDP, and its TC
//! twin `mirror_receive_tc`): each case is a description, an input frame, the expected verdict
//! and output frame, and the counters it must move. Every row runs through both programs.
//!
//! Kernel requirements: root (CAP_BPF, CAP_NET_ADMIN) to load programs, create a namespace
//! and veth pairs; BPF_PROG_TEST_RUN for XDP with an `xdp_md` context naming the ingress
//! interface (5.15+) and for TC with a `__sk_buff` context naming the device; native XDP on
//! veth for the capture pairs' `rx_pass`; a devmap hash (5.4+), looked up from TC. The receiver is set up by the agent's own `Datapath::apply`, so the maps hold what
//! the agent writes.

use aya::programs::SchedClassifier;
use mirror_agent::{
    config::Objects,
    datapath::{
        self, Datapath,
        receive::{PROG_RECEIVE, PROG_RECEIVE_TC, Receiver, ReceiverStatus, capture_name},
    },
};
use mirror_ebpf::{RxInterfaceStats, RxVniStats};
use mirror_tests::{
    fixture::{self, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    netns::{NetNs, in_netns},
    packets::{ETH_P_8021Q, Ip, L4, VXLAN_FLAG_I, arp, frame, v4, v6, vxlan},
};

/// TC verdicts as this file's runner returns them: the `int` read back as `u32`.
const TC_ACT_UNSPEC: u32 = fixture::TC_ACT_UNSPEC as u32;
const TC_ACT_REDIRECT: u32 = fixture::TC_ACT_REDIRECT as u32;
const RECEIVER: &str = "tmrcv-fx";
const PORT: u16 = 4789;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Redirected with exactly these bytes as the frame.
    Redirect,
    /// Passed to the stack untouched.
    Pass,
}

/// Which counter a case must move by one (and nothing else may move).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Frame(u32),
    NotMirror,
    Malformed,
    UnknownVni,
    VniMalformed(u32),
    NoCapture(u32),
    RedirectError(u32),
    Nothing,
}

/// The two receiving programs, run on the same rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    Tc,
}

impl Prog {
    fn pass(self) -> u32 {
        match self {
            Prog::Xdp => XDP_PASS,
            Prog::Tc => TC_ACT_UNSPEC,
        }
    }

    fn redirect(self) -> u32 {
        match self {
            Prog::Xdp => XDP_REDIRECT,
            Prog::Tc => TC_ACT_REDIRECT,
        }
    }

    /// Runs the program on `packet` arriving on `ifindex`: (verdict, frame afterwards).
    fn run(self, dp: &mut Datapath, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>), String> {
        match self {
            Prog::Xdp => fixture::try_run_xdp(
                dp.xdp_program(PROG_RECEIVE).expect("receive program"),
                packet,
                ifindex,
            ),
            Prog::Tc => run_tc(
                dp.program(PROG_RECEIVE_TC).expect("TC receive program"),
                packet,
                ifindex,
            ),
        }
    }
}

struct Case {
    desc: &'static str,
    packet: Vec<u8>,
    /// The interface the frame arrives on; the receiving one unless stated.
    ifname: &'static str,
    verdict: Verdict,
    /// The inner frame for redirects.
    inner: Vec<u8>,
    counted: Counted,
}

fn outer4() -> Ip {
    v4("198.18.30.1", "198.18.30.2")
}

fn outer6() -> Ip {
    v6("fd00:30::1", "fd00:30::2")
}

fn inner_tcp() -> Vec<u8> {
    frame(
        v4("10.1.0.1", "10.1.0.2"),
        L4::Tcp {
            sport: 40000,
            dport: 80,
        },
    )
    .payload(200)
    .build()
}

fn inner_v6_udp() -> Vec<u8> {
    frame(
        v6("fd00:1::1", "fd00:1::2"),
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    )
    .payload(64)
    .build()
}

/// A copy cut to PacketLength 64 by the source: the inner IP header claims more than present.
fn inner_truncated() -> Vec<u8> {
    let mut f = inner_tcp();
    f.truncate(64);
    f
}

fn redirect(desc: &'static str, packet: Vec<u8>, inner: Vec<u8>, vni: u32) -> Case {
    Case {
        desc,
        packet,
        ifname: "rx0",
        verdict: Verdict::Redirect,
        inner,
        counted: Counted::Frame(vni),
    }
}

fn pass(desc: &'static str, packet: Vec<u8>, counted: Counted) -> Case {
    Case {
        desc,
        packet,
        ifname: "rx0",
        verdict: Verdict::Pass,
        inner: Vec::new(),
        counted,
    }
}

fn ethernet_only() -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// Offset of the outer UDP header in a plain IPv4 outer frame.
const UDP4: usize = 14 + 20;

fn cases() -> Vec<Case> {
    let mut with_padding = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp());
    with_padding.extend_from_slice(&[0xee; 6]);

    let mut udp_too_long = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp());
    let claimed = (udp_too_long.len() - UDP4 + 10) as u16;
    udp_too_long[UDP4 + 4..UDP4 + 6].copy_from_slice(&claimed.to_be_bytes());

    let mut udp_too_short = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp());
    udp_too_short[UDP4 + 4..UDP4 + 6].copy_from_slice(&(16u16 + 10).to_be_bytes());

    // UDP to the port with 4 bytes of payload: no room for the VXLAN header.
    let mut short_header = frame(
        outer4(),
        L4::Udp {
            sport: 49152,
            dport: PORT,
        },
    )
    .payload(4)
    .build();
    short_header[UDP4 + 8] = VXLAN_FLAG_I;

    let mut fragment = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp());
    // More-fragments set: the stack reassembles; the program must not touch it.
    fragment[14 + 6] = 0x20;

    let mut ip_options = frame(
        Ip::V4 {
            src: "198.18.30.1".parse().expect("address"),
            dst: "198.18.30.2".parse().expect("address"),
            frag_offset: 0,
            more_fragments: false,
            options: vec![1, 1, 1, 0],
        },
        L4::Udp {
            sport: 49152,
            dport: PORT,
        },
    )
    .payload(8 + inner_tcp().len())
    .build();
    let at = ip_options.len() - 8 - inner_tcp().len();
    ip_options[at..at + 8].copy_from_slice(&[VXLAN_FLAG_I, 0, 0, 0, 0, 0, 100, 0]);
    ip_options[at + 8..].copy_from_slice(&inner_tcp());

    // Cut right after the UDP ports: addressed to the receiver, but no VXLAN header.
    let cut_after_ports = frame(
        outer4(),
        L4::Udp {
            sport: 49152,
            dport: PORT,
        },
    )
    .payload(20)
    .build()[..UDP4 + 4]
        .to_vec();

    let mut qinq = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp());
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x01, 0x81, 0x00, 0x00, 0x02]);

    let mut tagged = vxlan(outer4(), PORT, VXLAN_FLAG_I, 200, &inner_tcp());
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
    assert_eq!(u16::from_be_bytes([tagged[12], tagged[13]]), ETH_P_8021Q);

    vec![
        redirect(
            "VXLAN for served VNI 100, IPv4 outer: the inner frame goes to mrx100",
            vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp()),
            inner_tcp(),
            100,
        ),
        redirect(
            "VXLAN for served VNI 200 carrying IPv6/UDP",
            vxlan(outer4(), PORT, VXLAN_FLAG_I, 200, &inner_v6_udp()),
            inner_v6_udp(),
            200,
        ),
        redirect(
            "a copy truncated to 64 bytes by its session is delivered as it is",
            vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_truncated()),
            inner_truncated(),
            100,
        ),
        redirect(
            "IPv6 outer",
            vxlan(outer6(), PORT, VXLAN_FLAG_I, 100, &inner_tcp()),
            inner_tcp(),
            100,
        ),
        redirect("IPv4 outer with options", ip_options, inner_tcp(), 100),
        redirect("outer frame with an 802.1Q tag", tagged, inner_tcp(), 200),
        redirect(
            "bytes after the UDP payload are not part of the inner frame",
            with_padding,
            inner_tcp(),
            100,
        ),
        pass(
            "unknown VNI 300 passes untouched",
            vxlan(outer4(), PORT, VXLAN_FLAG_I, 300, &inner_tcp()),
            Counted::UnknownVni,
        ),
        pass(
            "I flag clear: the VNI is not valid",
            vxlan(outer4(), PORT, 0, 100, &inner_tcp()),
            Counted::Malformed,
        ),
        pass("truncated VXLAN header", short_header, Counted::Malformed),
        // Regressions of the differential test's receiver model (the program was right).
        pass(
            "UDP to the receiver's port cut right after the ports",
            cut_after_ports,
            Counted::Malformed,
        ),
        pass(
            "QinQ (802.1ad + 802.1Q) outer frame: not the receiver's",
            qinq,
            Counted::NotMirror,
        ),
        pass(
            "UDP length claims more than arrived",
            udp_too_long,
            Counted::VniMalformed(100),
        ),
        pass(
            "UDP length leaves no room for an inner Ethernet header",
            udp_too_short,
            Counted::VniMalformed(100),
        ),
        pass(
            "VXLAN to another port (8472) is not ours",
            vxlan(outer4(), 8472, VXLAN_FLAG_I, 100, &inner_tcp()),
            Counted::NotMirror,
        ),
        pass(
            "plain UDP traffic",
            frame(
                outer4(),
                L4::Udp {
                    sport: 1000,
                    dport: 53,
                },
            )
            .build(),
            Counted::NotMirror,
        ),
        pass("TCP traffic", inner_tcp(), Counted::NotMirror),
        pass("ARP", arp(), Counted::NotMirror),
        pass("an outer IPv4 fragment", fragment, Counted::NotMirror),
        // The kernel runs XDP on nothing shorter than an Ethernet header.
        pass(
            "an Ethernet header claiming IPv4 and nothing after it",
            ethernet_only(),
            Counted::NotMirror,
        ),
        Case {
            desc: "VXLAN on an interface that is not a receiver",
            packet: vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &inner_tcp()),
            ifname: "rx2",
            verdict: Verdict::Pass,
            inner: Vec::new(),
            counted: Counted::Nothing,
        },
    ]
}

fn run_tc(prog: &SchedClassifier, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>), String> {
    fixture::try_run(prog, packet, &fixture::skb_ctx(ifindex, 0, None))
        .map(|(ret, out)| (ret as u32, out))
}

fn receivers() -> Objects {
    Objects {
        receivers: vec![Receiver {
            id: RECEIVER.into(),
            interface: "rx0".into(),
            port: PORT,
            vnis: vec![100, 200],
        }],
        ..Objects::default()
    }
}

/// Namespace with the receiving interface rx0 and a bystander rx2.
fn fixture_netns() -> NetNs {
    mirror_tests::topology::quiet_netns(
        "rxf",
        &[
            ("rx0", "rx1", "198.18.30.2/24"),
            ("rx2", "rx3", "198.18.31.2/24"),
        ],
    )
}

fn with_receiver(f: impl FnOnce(&mut Datapath) + Send) {
    let ns = fixture_netns();
    fixture::with_datapath(&ns, &receivers(), 1024, async |dp, _| f(dp));
    in_netns(&ns, || {
        for vni in [100, 200] {
            assert!(
                datapath::ifindex(&capture_name(vni)).is_none(),
                "capture interface of VNI {vni} left behind by shutdown"
            );
        }
    });
}

fn status(dp: &Datapath) -> ReceiverStatus {
    dp.receive
        .status()
        .remove(RECEIVER)
        .expect("the receiver is attached")
}

fn vni(st: &ReceiverStatus, vni: u32) -> RxVniStats {
    st.vnis.get(&vni).map(|(_, s)| *s).unwrap_or_default()
}

/// The counter deltas a case expects.
fn expected(before: &ReceiverStatus, case: &Case) -> ReceiverStatus {
    let mut want = before.clone();
    if case.counted != Counted::Nothing {
        want.interface.packets += 1;
    }
    let bump = |want: &mut ReceiverStatus, v: u32, f: fn(&mut RxVniStats)| {
        if let Some((_, s)) = want.vnis.get_mut(&v) {
            f(s);
        }
    };
    match case.counted {
        Counted::Frame(v) => {
            let len = case.inner.len() as u64;
            if let Some((_, s)) = want.vnis.get_mut(&v) {
                s.frames += 1;
                s.bytes += len;
            }
        }
        Counted::NotMirror => want.interface.not_mirror += 1,
        Counted::Malformed => want.interface.malformed += 1,
        Counted::UnknownVni => want.interface.unknown_vni += 1,
        Counted::VniMalformed(v) => bump(&mut want, v, |s| s.malformed += 1),
        Counted::NoCapture(v) => bump(&mut want, v, |s| s.no_capture += 1),
        Counted::RedirectError(v) => bump(&mut want, v, |s| s.redirect_errors += 1),
        Counted::Nothing => {}
    }
    want
}

fn check(prog: Prog, case: &Case, ret: u32, out: &[u8]) -> Result<(), String> {
    match case.verdict {
        Verdict::Redirect => {
            if ret != prog.redirect() {
                return Err(format!(
                    "verdict {ret}, want redirect ({})",
                    prog.redirect()
                ));
            }
            if out != case.inner.as_slice() {
                return Err(format!(
                    "output frame ({} bytes) is not the inner frame ({} bytes)",
                    out.len(),
                    case.inner.len()
                ));
            }
        }
        Verdict::Pass => {
            if ret != prog.pass() {
                return Err(format!("verdict {ret}, want pass ({})", prog.pass()));
            }
            if out != case.packet.as_slice() {
                return Err("a passed frame was changed".into());
            }
        }
    }
    Ok(())
}

/// Runs each case through `prog`; returns what went wrong.
fn run_cases(dp: &mut Datapath, prog: Prog, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let ifindex = datapath::ifindex(case.ifname).expect("fixture interface exists");
        let before = status(dp);
        let (ret, out) = match prog.run(dp, &case.packet, ifindex) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{prog:?} {}: {e}", case.desc));
                continue;
            }
        };
        if let Err(why) = check(prog, &case, ret, &out) {
            failures.push(format!("{prog:?} {}: {why}", case.desc));
        }
        let after = status(dp);
        let want = expected(&before, &case);
        if after != want {
            failures.push(format!(
                "{prog:?} {}: counters {:?}, want {:?}",
                case.desc,
                summary(&after),
                summary(&want)
            ));
        }
    }
    failures
}

#[test]
fn receive_program_fixtures() {
    with_receiver(|dp| {
        let mut failures = run_cases(dp, Prog::Xdp, cases());
        // The skb test run refuses a frame of nothing but an Ethernet header (EINVAL).
        let tc_cases = cases()
            .into_iter()
            .filter(|c| c.packet.len() > 14)
            .collect();
        failures.extend(run_cases(dp, Prog::Tc, tc_cases));
        assert!(
            failures.is_empty(),
            "fixtures failed:\n  {}",
            failures.join("\n  ")
        );
    });
}

/// Where the two programs differ, by the kernel's rules: `bpf_skb_adjust_room` refuses to
/// leave less than an outer IP header's worth of bytes (40 for IPv6) after the Ethernet
/// header, so an inner frame that short cannot be decapsulated in TC. The TC program then
/// passes it untouched and counts a redirect error; XDP delivers it. (Mirror copies are IP
/// frames of at least 64 bytes: this takes a hand-made frame.)
#[test]
fn tc_receive_refuses_what_adjust_room_cannot_shrink_and_counts_it() {
    let mut tiny = vec![0u8; 14 + 30];
    tiny[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let packet = vxlan(outer6(), PORT, VXLAN_FLAG_I, 100, &tiny);
    with_receiver(|dp| {
        let mut failures = run_cases(
            dp,
            Prog::Xdp,
            vec![redirect(
                "a 44-byte inner frame, IPv6 outer",
                packet.clone(),
                tiny.clone(),
                100,
            )],
        );
        failures.extend(run_cases(
            dp,
            Prog::Tc,
            vec![pass(
                "a 44-byte inner frame, IPv6 outer",
                packet.clone(),
                Counted::RedirectError(100),
            )],
        ));
        // Padding after the datagram counts toward what must remain (a regression of the
        // differential test's model): 30 + 10 bytes are IPv6's 40.
        let mut padded = packet.clone();
        padded.extend_from_slice(&[0xee; 10]);
        failures.extend(run_cases(
            dp,
            Prog::Tc,
            vec![redirect(
                "a 44-byte inner frame, IPv6 outer, 10 bytes of padding",
                padded,
                tiny.clone(),
                100,
            )],
        ));
        // With an IPv4 outer header 20 bytes must remain, which 30 are.
        let packet4 = vxlan(outer4(), PORT, VXLAN_FLAG_I, 100, &tiny);
        failures.extend(run_cases(
            dp,
            Prog::Tc,
            vec![redirect(
                "a 44-byte inner frame, IPv4 outer",
                packet4,
                tiny.clone(),
                100,
            )],
        ));
        assert!(
            failures.is_empty(),
            "fixtures failed:\n  {}",
            failures.join("\n  ")
        );
    });
}

fn summary(st: &ReceiverStatus) -> (RxInterfaceStats, Vec<(u32, RxVniStats)>) {
    (
        st.interface,
        st.vnis.iter().map(|(v, (_, s))| (*v, *s)).collect(),
    )
}

/// A served VNI whose capture interface vanished (deleted by hand, before the agent's next
/// pass re-creates it): the kernel drops the device from the devmap, and the program passes
/// the frame untouched and counts it, rather than redirect into nothing.
#[test]
fn served_vni_without_capture_interface_passes_and_counts() {
    with_receiver(|dp| {
        let index = datapath::ifindex(&capture_name(200)).expect("mrx200 exists");
        let out = std::process::Command::new("ip")
            .args(["link", "del", &capture_name(200)])
            .output()
            .expect("ip link del");
        assert!(out.status.success(), "deleting mrx200: {out:?}");
        assert!(datapath::ifindex(&capture_name(200)).is_none(), "{index}");
        let case = Case {
            desc: "VNI 200 without its capture interface",
            packet: vxlan(outer4(), PORT, VXLAN_FLAG_I, 200, &inner_tcp()),
            ifname: "rx0",
            verdict: Verdict::Pass,
            inner: Vec::new(),
            counted: Counted::NoCapture(200),
        };
        let rx0 = datapath::ifindex("rx0").expect("rx0");
        for prog in [Prog::Xdp, Prog::Tc] {
            let before = status(dp);
            let (ret, out) = prog.run(dp, &case.packet, rx0).expect("test run");
            check(prog, &case, ret, &out).expect("verdict");
            assert_ne!(ret, XDP_DROP);
            let after = status(dp);
            assert_eq!(
                vni(&after, 200).no_capture,
                vni(&before, 200).no_capture + 1,
                "{prog:?}: no-capture counter of VNI 200"
            );
            assert_eq!(summary(&after), summary(&expected(&before, &case)));
        }
    });
}
