//! XDP receive: `mirror_receive` decapsulating and redirecting into a capture veth, against
//! the kernel's own VXLAN device receiving the same frames, on one core; and the program cost
//! of both receiving programs, `mirror_receive` (XDP) and `mirror_receive_tc` (TC ingress,
//! where native XDP cannot attach).

use std::fmt::Write as _;

use aya::programs::{TestRun as _, TestRunOptions};
use mirror_agent::datapath::{self, Datapath, TcAttachMode};
use mirror_tests::{
    netns::in_netns,
    packets::{L4, v4},
};

/// One receiver serving VNI 100 on UDP 4789 of `interface`.
fn receiver_on(interface: &str) -> mirror_agent::config::Objects {
    mirror_agent::config::Objects {
        receivers: vec![mirror_agent::datapath::receive::Receiver {
            id: format!("tmrcv-{interface}"),
            interface: interface.into(),
            port: 4789,
            vnis: vec![100],
        }],
        ..mirror_agent::config::Objects::default()
    }
}

/// Rows the section produces: live frames at 64 B and 1450 B inner frames, and program cost
/// for IPv4 and IPv6 outer headers at three inner sizes, XDP and TC.
pub const EXPECTED_ROWS: usize = 2 + 6 + 6;

/// One program-cost row: outer header, frame and inner sizes, then ns per frame of the
/// empty program, of a served VNI and of an unknown VNI.
type CostRow = (&'static str, usize, usize, f64, f64, f64);

/// The program's own cost, as the TC rows measure theirs: ns per frame over an empty XDP
/// program (`rx_pass`, which only returns XDP_PASS) from the kernel's BPF_PROG_TEST_RUN
/// timing. One frame per call (repeat 1): the program strips the outer headers in place, so
/// a repeated run would measure the stripped frame from the second run on. Median of many
/// calls; the verdict is not carried out (no redirect), so this is the program alone.
fn cost(quick: bool) -> (String, usize) {
    use mirror_agent::datapath::receive::{PROG_RECEIVE, PROG_RECEIVE_TC, PROG_RX_PASS};
    use mirror_tests::packets::{VXLAN_FLAG_I, v6, vxlan};

    let calls = if quick { 50 } else { 20_000 };
    let ns = mirror_tests::topology::quiet_netns("brc", &[("rc0", "rc1", "198.18.31.2/24")]);
    let (rows, tc_rows): (Vec<CostRow>, Vec<CostRow>) =
        mirror_tests::fixture::with_datapath(&ns, &receiver_on("rc0"), 1024, async |dp, _| {
            let rc0 = datapath::ifindex("rc0").expect("rc0");
            // The agent never loads the baseline; the benchmark does.
            dp.program(TC_EMPTY)
                .expect("baseline program")
                .load()
                .expect("loading the baseline");
            let mut rows = Vec::new();
            let mut tc_rows = Vec::new();
            for (outer, ip) in [
                ("IPv4", v4("198.18.31.1", "198.18.31.2")),
                ("IPv6", v6("fd00::31:1", "fd00::31:2")),
            ] {
                for inner_len in [64usize, 512, 1450] {
                    let inner = super::progcost::sized(
                        4,
                        L4::Udp {
                            sport: 40000,
                            dport: 53,
                        },
                        inner_len,
                    );
                    let served = vxlan(ip.clone(), 4789, VXLAN_FLAG_I, 100, &inner);
                    let unknown = vxlan(ip.clone(), 4789, VXLAN_FLAG_I, 999, &inner);
                    let mut ns_per_frame = |name: &'static str, packet: &[u8]| {
                        // struct xdp_md: data_end = the frame's length, ingress_ifindex.
                        let mut ctx = vec![0u8; 24];
                        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                        ctx[12..16].copy_from_slice(&rc0.to_ne_bytes());
                        let prog = dp.xdp_program(name).expect("xdp program");
                        let v: Vec<f64> = (0..calls)
                            .map(|_| {
                                prog.test_run(TestRunOptions {
                                    data_in: Some(packet),
                                    ctx_in: Some(&ctx),
                                    repeat: 1,
                                    ..TestRunOptions::new()
                                })
                                .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {name}: {e}"))
                                .duration
                                .as_nanos() as f64
                            })
                            .collect();
                        super::common::median(v)
                    };
                    let empty = ns_per_frame(PROG_RX_PASS, &served);
                    let decap = ns_per_frame(PROG_RECEIVE, &served);
                    let pass = ns_per_frame(PROG_RECEIVE, &unknown);
                    rows.push((outer, served.len(), inner_len, empty, decap, pass));
                    // The TC twin on the same frames, over the object's empty TC program:
                    // an skb built per call, the device rc0 (`__sk_buff.ifindex`).
                    let mut tc_ns_per_frame = |name: &'static str, packet: &[u8]| {
                        let mut ctx = vec![0u8; 192];
                        ctx[40..44].copy_from_slice(&rc0.to_ne_bytes());
                        let prog = dp.program(name).expect("TC program");
                        let v: Vec<f64> = (0..calls)
                            .map(|_| {
                                prog.test_run(TestRunOptions {
                                    data_in: Some(packet),
                                    ctx_in: Some(&ctx),
                                    repeat: 1,
                                    ..TestRunOptions::new()
                                })
                                .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {name}: {e}"))
                                .duration
                                .as_nanos() as f64
                            })
                            .collect();
                        super::common::median(v)
                    };
                    let empty = tc_ns_per_frame(TC_EMPTY, &served);
                    let decap = tc_ns_per_frame(PROG_RECEIVE_TC, &served);
                    let pass = tc_ns_per_frame(PROG_RECEIVE_TC, &unknown);
                    tc_rows.push((outer, served.len(), inner_len, empty, decap, pass));
                }
            }
            (rows, tc_rows)
        });
    drop(ns);
    let mut out = format!(
        "\n### XDP receive: program cost\n\nns per frame from the kernel's BPF_PROG_TEST_RUN \
         timing, median of {calls} calls of one frame each (the program rewrites the frame in \
         place, so runs are not repeated on it); the verdict is not carried out. Peer: an empty \
         XDP program (`rx_pass`, XDP_PASS) on the same frame. \"served VNI\" parses, strips the \
         outer headers and returns XDP_REDIRECT; \"unknown VNI\" parses and passes.\n\n\
         | outer | frame | inner | empty (ns) | served VNI (ns) | over empty | unknown VNI (ns) | over empty |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    cost_table(&mut out, &rows);
    let _ = write!(
        out,
        "\n### TC receive: program cost\n\n`mirror_receive_tc`, the receiving program in TC \
         ingress where native XDP cannot attach (a bridge, a veth at a jumbo MTU), on the same \
         frames and the same method: ns per frame from BPF_PROG_TEST_RUN (an skb built per \
         call), median of {calls} calls; the redirect is not carried out. Peer: the object's \
         empty TC program (`{TC_EMPTY}`). \"served VNI\" parses, removes the outer headers \
         (`bpf_skb_adjust_room`), writes the inner Ethernet header back and returns \
         TC_ACT_REDIRECT; \"unknown VNI\" parses and passes. No live-frame row: live test runs \
         exist for XDP only.\n\n\
         | outer | frame | inner | empty (ns) | served VNI (ns) | over empty | unknown VNI (ns) | over empty |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    cost_table(&mut out, &tc_rows);
    (out, rows.len() + tc_rows.len())
}

/// The empty TC program of the object, the peer of the TC rows (as in the program-cost
/// section).
const TC_EMPTY: &str = "bench_empty";

fn cost_table(out: &mut String, rows: &[CostRow]) {
    for (outer, frame, inner, empty, decap, pass) in rows {
        let _ = writeln!(
            out,
            "| {outer} | {frame} B | {inner} B | {empty:.0} | {decap:.0} | {:+.0} ns ({:.1}x) | {pass:.0} | {:+.0} ns |",
            decap - empty,
            decap / empty.max(1.0),
            pass - empty
        );
    }
}

/// The receiving side on one core, with live frames (BPF_PROG_TEST_RUN with
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: each frame really goes where the verdict sends it, on the
/// calling CPU). `mirror_receive` decapsulates and redirects into the capture veth, which
/// delivers to its tools' end; the alternative is the kernel's own VXLAN device for the VNI
/// (what a tool would otherwise capture on): `rx_pass` hands the same frames to the stack,
/// which routes, decapsulates and delivers them to `vxlan100`. Rates are frames over the
/// wall-clock time of the call; the delivered counts (received packets of `mrx100` and of
/// `vxlan100`) show that the frames arrived.
pub fn run(quick: bool) -> (String, usize) {
    let (live, live_rows) = live(quick);
    let (cost, cost_rows) = cost(quick);
    (live + &cost, live_rows + cost_rows)
}

fn live(quick: bool) -> (String, usize) {
    use mirror_agent::datapath::receive::{PROG_RECEIVE, PROG_RX_PASS};
    use mirror_tests::packets::{VXLAN_FLAG_I, vxlan};

    let (runs, repeat) = if quick { (3, 10_000) } else { (5, 2_000_000) };
    let ns = mirror_tests::topology::quiet_netns("brx", &[("rx0", "rx1", "198.18.30.2/24")]);
    // The kernel path's VXLAN device for VNI 100 (its port is 4789 here, like the receiver's).
    ns.exec(&[
        "ip", "link", "add", "vxlan100", "type", "vxlan", "id", "100", "dstport", "4789", "dev",
        "rx0",
    ]);
    ns.exec(&["ip", "link", "set", "vxlan100", "up"]);
    let link_field = |dev: &str, pointer: &str| -> serde_json::Value {
        let out = ns.exec(&["ip", "-j", "-s", "link", "show", dev]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        v[0].pointer(pointer).cloned().unwrap_or_default()
    };
    // Frames for the stack must be addressed to rx0, or it drops them as another host's.
    let rx0_mac = super::common::mac_of(&ns, "rx0");
    let vxlan_rx = || {
        link_field("vxlan100", "/stats64/rx/packets")
            .as_u64()
            .unwrap_or(0)
    };
    let mut rows = Vec::new();
    for inner_len in [64usize, 1450] {
        let inner = super::progcost::sized(
            4,
            L4::Udp {
                sport: 40000,
                dport: 53,
            },
            inner_len,
        );
        let mut packet = vxlan(
            v4("198.18.30.1", "198.18.30.2"),
            4789,
            VXLAN_FLAG_I,
            100,
            &inner,
        );
        packet[..6].copy_from_slice(&rx0_mac);
        let before = vxlan_rx();
        let (ours, kernel, ours_delivered) = in_netns(&ns, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                let (mut dp, _flows) =
                    Datapath::new(TcAttachMode::Auto, 1024).expect("loading programs");
                let rx0 = datapath::ifindex("rx0").expect("rx0");
                // struct xdp_md: data_end = the frame's length, ingress_ifindex = rx0.
                let mut ctx = vec![0u8; 24];
                ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&rx0.to_ne_bytes());
                let live_pps = |dp: &mut Datapath, name: &'static str| {
                    let prog = dp.xdp_program(name).expect("xdp program");
                    let v: Vec<f64> = (0..runs)
                        .map(|_| {
                            let start = std::time::Instant::now();
                            prog.test_run(TestRunOptions {
                                data_in: Some(&packet),
                                ctx_in: Some(&ctx),
                                repeat,
                                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(64),
                                ..TestRunOptions::new()
                            })
                            .unwrap_or_else(|e| panic!("live BPF_PROG_TEST_RUN {name}: {e}"));
                            f64::from(repeat) / start.elapsed().as_secs_f64()
                        })
                        .collect();
                    super::common::median(v)
                };
                // Before any receiver exists: the stack and its VXLAN device get the frames.
                let kernel = live_pps(&mut dp, PROG_RX_PASS);
                let report = dp.apply(&receiver_on("rx0")).await.expect("apply");
                assert!(report.errors.is_empty(), "{report:?}");
                let ours = live_pps(&mut dp, PROG_RECEIVE);
                // What the tools' end received, not what the program counted as sent.
                let delivered = link_field("mrx100", "/stats64/rx/packets")
                    .as_u64()
                    .unwrap_or(0);
                dp.shutdown().await.expect("shutdown");
                (ours, kernel, delivered)
            })
        });
        let kernel_delivered = vxlan_rx() - before;
        rows.push((
            packet.len(),
            inner_len,
            kernel,
            kernel_delivered,
            ours,
            ours_delivered,
        ));
    }
    drop(ns);
    let produced = rows.len();
    let sent = u64::from(repeat) * runs as u64;
    let mut out = format!(
        "\n## XDP receive (decapsulation and redirect)\n\nVXLAN (IPv4 outer, UDP 4789) for VNI 100 \
         arriving on a veth, one core, BPF_PROG_TEST_RUN with live frames (batches of 64): every \
         frame really goes where the verdict sends it. \"kernel VXLAN device\" passes the frames \
         to the stack, which decapsulates them into a `vxlan100` device (what a capture tool \
         would otherwise read); \"mirror_receive\" strips the headers in XDP and redirects into \
         the capture veth, delivered to `mrx100`. Frames per second over the wall-clock time of \
         the call, median of {runs} runs x {repeat} frames ({sent} sent per row and path). \
         Goal: >= 2 Mpps decap + redirect on one core.\n\n\
         | outer frame | inner frame | kernel VXLAN device (Mpps) | delivered | mirror_receive (Mpps) | delivered | speed-up | against the goal |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for (outer, inner, kernel, kd, ours, od) in rows {
        let _ = writeln!(
            out,
            "| {outer} B | {inner} B | {:.2} | {kd} | {:.2} | {od} | {:.1}x | {} |",
            kernel / 1e6,
            ours / 1e6,
            ours / kernel,
            if quick {
                "quick run: not comparable"
            } else if ours >= 2e6 {
                "goal met"
            } else {
                "goal missed"
            }
        );
    }
    (out, produced)
}
