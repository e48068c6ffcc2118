//! BPF_PROG_TEST_RUN fixtures for a session's budgets and sampling, decided in the source
//! program before the clone: the token buckets at their edges (full, empty, refilled, a
//! burst, several CPUs sharing one bucket), the bit budget counting the copy's wire bytes,
//! and sampling one in N at random or by flow (a flow all or nothing).
//!
//! Kernel requirements: root; BPF_PROG_TEST_RUN for sched_cls (5.x+);
//! `bpf_ktime_get_coarse_ns` (5.11+). BPF_PROG_TEST_RUN runs a sched_cls program on the
//! calling CPU (its `cpu` attribute is for raw tracepoints only), so "several CPUs" are
//! threads pinned to different CPUs.
//!
//! Times are not asserted: a bucket's expected content is computed from the time the test
//! measured around its runs, with the coarse clock's tick as tolerance.

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use mirror_agent::{
    config::{FileConfig, Objects},
    datapath::{self, Datapath, PROG_INGRESS},
};
use mirror_ebpf::{SKIP_BUDGET_BITS, SKIP_BUDGET_PACKETS, SKIP_SAMPLED_OUT, SessionStats};
use mirror_tests::{
    fixture::{self, skb_ctx},
    packets::{L4, frame, v4},
};

/// Each session takes its own UDP destination port; the flow-sampled one takes TCP.
const CONFIG: &str = r#"
[[targets]]
id = "tmt-bg"
destination_ip = "198.18.221.2"

[[filters]]
id = "tmf-pps"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "1001/1001"

[[filters]]
id = "tmf-bits"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "1002/1002"

[[filters]]
id = "tmf-cpus"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "1003/1003"

[[filters]]
id = "tmf-sample"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "UDP"
destination_port_range = "1004/1004"

[[filters]]
id = "tmf-flow"
[[filters.ingress_rules]]
priority = 1
action = "accept"
protocol = "TCP"

[[sessions]]
id = "tms-pps"
priority = 1
virtual_network_id = 1
enabled = true
filter_id = "tmf-pps"
target_id = "tmt-bg"
sources = ["bg0"]
max_packets_per_second = 1000

[[sessions]]
id = "tms-bits"
priority = 2
virtual_network_id = 2
enabled = true
filter_id = "tmf-bits"
target_id = "tmt-bg"
sources = ["bg0"]
max_bits_per_second = 8000000

[[sessions]]
id = "tms-cpus"
priority = 3
virtual_network_id = 3
enabled = true
filter_id = "tmf-cpus"
target_id = "tmt-bg"
sources = ["bg0"]
max_packets_per_second = 20000

[[sessions]]
id = "tms-sample"
priority = 4
virtual_network_id = 4
enabled = true
filter_id = "tmf-sample"
target_id = "tmt-bg"
sources = ["bg0"]
sample_one_in = 10

[[sessions]]
id = "tms-flow"
priority = 5
virtual_network_id = 5
enabled = true
filter_id = "tmf-flow"
target_id = "tmt-bg"
sources = ["bg0"]
sample_one_in = 4
sample_mode = "flow"
"#;

/// The coarse clock ticks once a jiffy: 4 ms at HZ=250, 10 ms at HZ=100.
const COARSE_TICK: Duration = Duration::from_millis(10);

fn objects() -> Objects {
    let file: FileConfig = toml::from_str(CONFIG).expect("fixture config parses");
    file.objects().expect("fixture objects are valid")
}

fn udp_to(dport: u16, payload: usize) -> Vec<u8> {
    frame(
        v4("198.18.220.2", "198.18.220.1"),
        L4::Udp { sport: 7, dport },
    )
    .payload(payload)
    .build()
}

/// Runs the ingress program `times` times over `packet` (one syscall per `batch`).
fn run_n(prog: &SchedClassifier, packet: &[u8], ctx: &[u8], times: u32, batch: u32) {
    let mut left = times;
    while left > 0 {
        let n = left.min(batch);
        let mut out = vec![0u8; packet.len() + 256];
        prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            repeat: n,
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e:?}"));
        left -= n;
    }
}

fn prog(dp: &mut Datapath) -> &SchedClassifier {
    dp.program(PROG_INGRESS).expect("mirror_ingress")
}

fn counters(dp: &Datapath, id: &str) -> SessionStats {
    dp.session_counters(id).expect("session placed")[0]
}

/// The bucket's admissions over `elapsed` from full: the burst, plus the refill, give or
/// take a clock tick.
fn admitted_bounds(burst: u64, per_second: u64, elapsed: Duration) -> (u64, u64) {
    let refill = |d: Duration| (d.as_secs_f64() * per_second as f64).ceil() as u64;
    (burst, burst + refill(elapsed + COARSE_TICK) + 1)
}

fn with_datapath(f: impl FnOnce(&mut Datapath, u32) + Send) {
    let ns = mirror_tests::topology::quiet_netns(
        "bfx",
        &[
            ("bg0", "bg1", "198.18.220.1/24"),
            ("bg2", "bg3", "198.18.221.1/24"),
        ],
    );
    fixture::with_datapath(&ns, &objects(), 1024, async |dp, _| {
        let ifindex = datapath::ifindex("bg0").expect("bg0");
        f(dp, ifindex)
    });
}

#[test]
fn budget_fixtures() {
    with_datapath(|dp, ifindex| {
        let ctx = skb_ctx(ifindex, 0, None);

        // Packets: 1000/s, a burst of 100. A full bucket takes the burst, then it is empty
        // and only the refill goes.
        let packet = udp_to(1001, 64);
        let t = Instant::now();
        run_n(prog(dp), &packet, &ctx, 300, 300);
        let (lo, hi) = admitted_bounds(100, 1000, t.elapsed());
        let s = counters(dp, "tms-pps");
        assert!(
            (lo..=hi).contains(&s.packets),
            "full bucket: {} copies of 300, want {lo}..={hi}",
            s.packets
        );
        assert_eq!(
            s.skipped[SKIP_BUDGET_PACKETS],
            300 - s.packets,
            "every packet not copied is counted as over the packet budget"
        );
        assert_eq!(s.errors.iter().sum::<u64>(), 0, "skips are not errors");
        // Empty now: one more packet right away is skipped (unless a tick refilled one).
        let before = counters(dp, "tms-pps");
        run_n(prog(dp), &packet, &ctx, 1, 1);
        let after = counters(dp, "tms-pps");
        assert!(
            after.skipped[SKIP_BUDGET_PACKETS] == before.skipped[SKIP_BUDGET_PACKETS] + 1
                || after.packets == before.packets + 1,
            "one packet: copied or skipped, nothing else"
        );
        // Refill: 60 ms give 60 packets back, no more.
        std::thread::sleep(Duration::from_millis(60));
        let before = counters(dp, "tms-pps");
        let t = Instant::now();
        run_n(prog(dp), &packet, &ctx, 200, 200);
        let got = counters(dp, "tms-pps").packets - before.packets;
        let (_, hi) = admitted_bounds(60, 1000, t.elapsed());
        assert!(
            (55..=hi).contains(&got),
            "after 60 ms: {got} copies, want 55..={hi}"
        );
        // An idle bucket fills to the burst, never beyond: 300 ms idle still give 100.
        std::thread::sleep(Duration::from_millis(300));
        let before = counters(dp, "tms-pps");
        let t = Instant::now();
        run_n(prog(dp), &packet, &ctx, 400, 400);
        let got = counters(dp, "tms-pps").packets - before.packets;
        let (lo, hi) = admitted_bounds(100, 1000, t.elapsed());
        assert!(
            (lo..=hi).contains(&got),
            "after 300 ms idle: {got} copies, want {lo}..={hi} (the burst caps the bucket)"
        );

        // Bits: 8 Mbit/s, a burst of 800 000 bits. A 1000-byte frame leaves as a copy of
        // 1000 + 50 bytes (outer Ethernet, IPv4, UDP, VXLAN): 8400 bits, 95 in the burst.
        let big = udp_to(1002, 1000 - 42);
        assert_eq!(big.len(), 1000);
        let t = Instant::now();
        run_n(prog(dp), &big, &ctx, 200, 200);
        let s = counters(dp, "tms-bits");
        let (lo, hi) = admitted_bounds(95, 8_000_000 / 8400, t.elapsed());
        assert!(
            (lo..=hi).contains(&s.packets),
            "bit budget: {} copies of 200, want {lo}..={hi}",
            s.packets
        );
        assert_eq!(s.skipped[SKIP_BUDGET_BITS], 200 - s.packets);
        assert_eq!(s.skipped[SKIP_BUDGET_PACKETS], 0);

        // Several CPUs, one bucket: 20 000/s shared by a thread on each CPU, each offering
        // as fast as it can for a second of sustained overload. What they get together is
        // what one bucket allows, within 5 %.
        let cpus: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
            .take(4)
            .collect();
        let packet = udp_to(1003, 64);
        let t = Instant::now();
        let shared = prog(dp);
        let offered: u64 = std::thread::scope(|scope| {
            let runs: Vec<_> = cpus
                .iter()
                .map(|&cpu| {
                    let (packet, ctx) = (&packet, &ctx);
                    scope.spawn(move || {
                        pin_to(cpu);
                        let mut offered = 0u64;
                        while t.elapsed() < Duration::from_secs(1) {
                            run_n(shared, packet, ctx, 50, 50);
                            offered += 50;
                        }
                        offered
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("runner thread"))
                .sum()
        });
        let elapsed = t.elapsed();
        let s = counters(dp, "tms-cpus");
        let want = 2000.0 + 20_000.0 * elapsed.as_secs_f64();
        eprintln!(
            "{} CPUs, {offered} offered in {elapsed:?}: {} copies (one bucket: {want:.0})",
            cpus.len(),
            s.packets
        );
        assert!(offered > 2 * want as u64, "overload: {offered} offered");
        assert!(
            (s.packets as f64 - want).abs() <= 0.05 * want,
            "{} CPUs offered {offered} in {elapsed:?}: {} copies, want {want:.0} ± 5 %",
            cpus.len(),
            s.packets
        );
        assert_eq!(s.packets + s.skipped[SKIP_BUDGET_PACKETS], offered);

        // Sampling one in 10 at random: within 5 standard deviations of the binomial mean.
        let n = 20_000u64;
        run_n(prog(dp), &udp_to(1004, 64), &ctx, n as u32, 1000);
        let s = counters(dp, "tms-sample");
        let (mean, sd) = (n as f64 / 10.0, (n as f64 * 0.1 * 0.9).sqrt());
        assert!(
            (s.packets as f64 - mean).abs() <= 5.0 * sd,
            "one in 10 of {n}: {} copies, want {mean} ± {:.0}",
            s.packets,
            5.0 * sd
        );
        assert_eq!(s.skipped[SKIP_SAMPLED_OUT], n - s.packets);

        // Sampling one in 4 by flow: each flow (both directions) all or nothing, and about
        // a quarter of the flows.
        let flows = 400u16;
        let mut sampled = 0u64;
        for f in 0..flows {
            let sport = 20_000 + f;
            let fwd = frame(
                v4("198.18.220.2", "198.18.220.1"),
                L4::Tcp { sport, dport: 80 },
            )
            .build();
            let rev = frame(
                v4("198.18.220.1", "198.18.220.2"),
                L4::Tcp {
                    sport: 80,
                    dport: sport,
                },
            )
            .build();
            let before = counters(dp, "tms-flow");
            run_n(prog(dp), &fwd, &ctx, 3, 3);
            run_n(prog(dp), &rev, &ctx, 2, 2);
            let after = counters(dp, "tms-flow");
            let copied = after.packets - before.packets;
            let skipped = after.skipped[SKIP_SAMPLED_OUT] - before.skipped[SKIP_SAMPLED_OUT];
            assert!(
                (copied, skipped) == (5, 0) || (copied, skipped) == (0, 5),
                "flow {sport}: {copied} copied, {skipped} sampled out: not all or nothing"
            );
            sampled += u64::from(copied == 5);
        }
        let (mean, sd) = (
            f64::from(flows) / 4.0,
            (f64::from(flows) * 0.25 * 0.75).sqrt(),
        );
        assert!(
            (sampled as f64 - mean).abs() <= 5.0 * sd,
            "one in 4 of {flows} flows: {sampled} sampled, want {mean} ± {:.0}",
            5.0 * sd
        );
    });
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "pinning to CPU {cpu}");
    }
}
