//! Differential tests: the real programs against the reference model (tests/src/model), on
//! random rule sets and frames, through BPF_PROG_TEST_RUN.
//!
//! - `source_programs_agree_with_the_model`: random rule sets are applied by the agent's own
//!   `Datapath::apply` (so the production encoding is what runs); random frames go through
//!   `mirror_ingress` / `mirror_egress` on the source. Checked per frame: the original passes
//!   byte-identical, the source's counters (packets, not IP, malformed, mirrored), which
//!   session's counters moved (packets, bytes, copies, truncated, no errors) and the copy as
//!   it leaves the uplink (VNI, port, inner bytes), read with a packet socket on the uplink's
//!   peer. Every other rule set sends its copies by the fallback path (the VXLAN device).
//!   Per rule set: every rule's hit counter (on a disagreement the set is replayed one frame
//!   at a time to name the first frame).
//! - `receive_programs_agree_with_the_model`: random outer/inner frames, served and unserved
//!   VNIs, malformed VXLAN, through `mirror_receive` (XDP) and `mirror_receive_tc`: verdict,
//!   output frame and every receiver counter.
//!
//! Case counts: `MIRROR_FUZZ_CASES` (source frames; receiver frames are half as many),
//! 40,000 by default, over one rule set per 200 frames. `MIRROR_FUZZ_SEED` replays a run;
//! the seed is printed either way. `cargo xtask fuzz` runs a million.
//!
//! Kernel requirements: those of mirror_fixtures.rs and receiver_fixtures.rs.

use std::{collections::BTreeMap, time::Duration};

use mirror_agent::{
    config::Objects,
    datapath::{
        self, CopyPathMode, Datapath, PROG_EGRESS, PROG_INGRESS,
        receive::{PROG_RECEIVE, PROG_RECEIVE_TC, Receiver, ReceiverStatus},
    },
    model::{Direction, Target},
};
use mirror_ebpf::{RxVniStats, SessionStats, SourceStats};
use mirror_tests::{
    fixture::{self, PacketSocket, skb_ctx},
    model::{
        self, Class, Decision,
        generate::{self, Rng, RuleSet},
        receive::{self as rx_model, Counted, Hook, RxDecision, Verdict},
    },
    netns::NetNs,
};

const SOURCE: &str = "df0";
const TARGET_IP: &str = "198.18.221.2";
const TARGET_MAC: &str = "02:00:00:00:22:02";
const PATH_MTU: usize = 1500;
const FRAMES_PER_RULE_SET: u64 = 200;
const DEFAULT_CASES: u64 = 40_000;
/// Outer Ethernet + IPv4 + UDP + VXLAN of a copy on the wire.
const OUTER: usize = 50;

fn target() -> Target {
    Target {
        id: "tmt-df".into(),
        destination_ip: TARGET_IP.parse().expect("address"),
        destination_port: 4789,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The counters one frame may move.
struct Snapshot {
    source: [SourceStats; 2],
    sessions: BTreeMap<String, [SessionStats; 2]>,
}

fn snapshot(dp: &Datapath, set: &RuleSet) -> Snapshot {
    Snapshot {
        source: dp
            .maps
            .source_stats(dp.source_slot(SOURCE).expect("source attached"))
            .expect("source stats"),
        sessions: set
            .objects
            .sessions
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    dp.session_counters(&s.id).expect("session counters"),
                )
            })
            .collect(),
    }
}

fn rule_hits(dp: &Datapath, set: &RuleSet) -> BTreeMap<String, u64> {
    set.objects
        .filters
        .iter()
        .flat_map(|f| &f.rules)
        .map(|r| {
            let slot = dp.rule_slot(&r.id).expect("rule slot");
            (r.id.clone(), dp.maps.rule_hits(slot).expect("rule hits"))
        })
        .collect()
}

fn direction(rng: &mut Rng) -> Direction {
    if rng.chance(50) {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// What one frame's run showed.
struct Observed {
    /// Verdict and the frame after the program.
    result: (i32, Vec<u8>),
    before: Snapshot,
    after: Snapshot,
    /// The copy as it arrived on the uplink's peer.
    copy: Option<Vec<u8>>,
}

/// Checks one frame's run against the model; Err says how they differ.
fn check_source(
    set: &RuleSet,
    dir: Direction,
    frame: &[u8],
    want: &Decision,
    seen: Observed,
) -> Result<(), String> {
    let Observed {
        result: (ret, out),
        before,
        after,
        copy,
    } = seen;
    if ret != fixture::TC_ACT_UNSPEC || out != frame {
        return Err(format!(
            "the original must pass unchanged: {}, changed {}",
            fixture::tc_verdict(ret),
            out != frame
        ));
    }
    let d = dir as usize;
    let (b, a) = (&before.source[d], &after.source[d]);
    let got = (
        a.packets - b.packets,
        a.not_ip - b.not_ip,
        a.malformed - b.malformed,
        a.mirrored - b.mirrored,
    );
    let expect = (
        1,
        u64::from(want.class == Class::NotIp),
        u64::from(want.class == Class::Malformed),
        u64::from(want.session.is_some()),
    );
    if got != expect {
        return Err(format!(
            "source counters (packets, not_ip, malformed, mirrored) +{got:?}, model +{expect:?}"
        ));
    }
    for s in &set.objects.sessions {
        let (b, a) = (&before.sessions[&s.id][d], &after.sessions[&s.id][d]);
        let got = (
            a.packets - b.packets,
            a.bytes - b.bytes,
            a.copies - b.copies,
            a.truncated - b.truncated,
            a.errors.iter().sum::<u64>() - b.errors.iter().sum::<u64>(),
        );
        let expect = if want.session.as_deref() == Some(s.id.as_str()) {
            (1, frame.len() as u64, 1, u64::from(want.truncated), 0)
        } else {
            (0, 0, 0, 0, 0)
        };
        if got != expect {
            return Err(format!(
                "session {} (packets, bytes, copies, truncated, errors) +{got:?}, model +{expect:?} (model picks {:?})",
                s.id, want.session
            ));
        }
    }
    match (&want.copy, copy) {
        (None, None) => Ok(()),
        (Some(_), None) => Err("no copy reached the uplink's peer".into()),
        (None, Some(c)) => Err(format!(
            "a copy the model does not expect: {}",
            hex(&c[..c.len().min(80)])
        )),
        (Some(inner), Some(c)) => {
            let session = set
                .objects
                .sessions
                .iter()
                .find(|s| Some(&s.id) == want.session.as_ref())
                .expect("the model's session is in the set");
            let vni = u32::from_be_bytes([0, c[OUTER - 4], c[OUTER - 3], c[OUTER - 2]]);
            let dport = u16::from_be_bytes([c[36], c[37]]);
            if vni != session.vni || dport != 4789 {
                return Err(format!(
                    "copy has VNI {vni} port {dport}, want {} 4789",
                    session.vni
                ));
            }
            if &c[OUTER..] != inner.as_slice() {
                return Err(format!(
                    "copy holds {} bytes, model {}; copy {}",
                    c.len() - OUTER,
                    inner.len(),
                    hex(&c[OUTER..c.len().min(OUTER + 80)])
                ));
            }
            Ok(())
        }
    }
}

/// A VXLAN copy read on the uplink's peer (anything else there is ignored).
fn next_copy(sock: &PacketSocket, wait: Duration) -> Option<Vec<u8>> {
    while let Some(f) = sock.recv(wait) {
        let is_copy = f.len() >= OUTER
            && f[12..14] == [0x08, 0x00]
            && f[23] == 17
            && u16::from_be_bytes([f[36], f[37]]) == 4789;
        if is_copy {
            return Some(f);
        }
    }
    None
}

struct SetResult {
    cases: u64,
    mirrored: u64,
    malformed: u64,
    refused: u64,
    failures: Vec<String>,
    /// Every frame agreed; only the set's rule-hit totals did not.
    hits_only: bool,
}

/// Runs the frames of rule set `index` (regenerated from the seed); with `per_case_hits`
/// the rule counters are compared after every frame (to find the first that disagrees).
fn run_set(
    dp: &mut Datapath,
    sock: &PacketSocket,
    (seed, index): (u64, u64),
    frames: u64,
    set: &RuleSet,
    mut rng: Rng,
    per_case_hits: bool,
) -> SetResult {
    let ifindex = datapath::ifindex(SOURCE).expect("source exists");
    let mut r = SetResult {
        cases: 0,
        mirrored: 0,
        malformed: 0,
        refused: 0,
        failures: Vec::new(),
        hits_only: false,
    };
    let hits_start = rule_hits(dp, set);
    let mut want_hits: BTreeMap<String, u64> = BTreeMap::new();
    for case in 0..frames {
        let dir = direction(&mut rng);
        let frame = generate::source_frame(&mut rng, set);
        let want = model::decide(
            &set.objects.sessions,
            &set.objects.filters,
            SOURCE,
            dir,
            &frame,
            PATH_MTU,
        );
        let before = snapshot(dp, set);
        let hits_before = per_case_hits.then(|| rule_hits(dp, set));
        let prog = dp
            .program(match dir {
                Direction::Ingress => PROG_INGRESS,
                Direction::Egress => PROG_EGRESS,
            })
            .expect("source program");
        let result = match fixture::try_run(prog, &frame, &skb_ctx(ifindex, 0, None)) {
            Ok(res) => res,
            // The skb test run refuses some short frames (an IP ethertype without a whole
            // IP header): nothing ran, nothing to compare.
            Err(_) => {
                r.refused += 1;
                continue;
            }
        };
        r.cases += 1;
        r.mirrored += u64::from(want.session.is_some());
        r.malformed += u64::from(want.class == Class::Malformed);
        let after = snapshot(dp, set);
        let wait = if want.copy.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let copy = next_copy(sock, wait);
        let describe = || {
            format!(
                "seed {seed} rule set {index} frame {case} ({dir:?}, {} bytes): model {:?} / {:?} / hits {:?}\n    frame {}\n    rules {:#?}\n    sessions {:#?}",
                frame.len(),
                want.class,
                want.session,
                want.hits,
                hex(&frame),
                set.objects.filters,
                set.objects.sessions,
            )
        };
        let seen = Observed {
            result,
            before,
            after,
            copy,
        };
        if let Err(why) = check_source(set, dir, &frame, &want, seen) {
            r.failures.push(format!("{why}\n  {}", describe()));
            // One disagreement per set is enough to debug; the state may be off after it.
            return r;
        }
        for h in &want.hits {
            *want_hits.entry(h.clone()).or_default() += 1;
        }
        if let Some(hb) = hits_before {
            let ha = rule_hits(dp, set);
            for (id, n) in &ha {
                let got = n - hb[id];
                let expect = u64::from(want.hits.contains(id));
                if got != expect {
                    r.failures.push(format!(
                        "rule {id}: hits +{got}, model +{expect}\n  {}",
                        describe()
                    ));
                    return r;
                }
            }
        }
    }
    let hits_end = rule_hits(dp, set);
    for (id, n) in &hits_end {
        let got = n - hits_start[id];
        let expect = want_hits.get(id).copied().unwrap_or(0);
        if got != expect {
            r.failures.push(format!(
                "seed {seed} rule set {index}: rule {id} hit {got} times, model {expect}"
            ));
            r.hits_only = true;
        }
    }
    r
}

#[test]
fn source_programs_agree_with_the_model() {
    let seed = generate::seed_from_env();
    let cases = generate::count_from_env("MIRROR_FUZZ_CASES", DEFAULT_CASES);
    let sets = cases.div_ceil(FRAMES_PER_RULE_SET).max(1);
    println!(
        "differential (source programs): seed {seed} (MIRROR_FUZZ_SEED={seed} replays), {cases} frames over {sets} rule sets"
    );
    let ns = mirror_tests::topology::quiet_netns(
        "dif",
        &[
            (SOURCE, "df1", "198.18.220.1/24"),
            ("df2", "df3", "198.18.221.1/24"),
        ],
    );
    ns.exec(&[
        "ip",
        "neigh",
        "replace",
        TARGET_IP,
        "lladdr",
        TARGET_MAC,
        "dev",
        "df2",
        "nud",
        "permanent",
    ]);
    let first = generate::rule_set(&mut Rng::for_item(seed, 0), 0, SOURCE, &target());
    let totals = fixture::with_datapath(&ns, &first.objects, 1024, async |dp, _| {
        let sock = PacketSocket::open("df3").expect("packet socket on df3");
        let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut failures = Vec::new();
        for index in 0..sets {
            let mut rng = Rng::for_item(seed, index);
            let set = generate::rule_set(&mut rng, index, SOURCE, &target());
            // Every other rule set sends its copies the fallback way (the kernel's VXLAN
            // device): both copy paths must carry what the model says.
            let (mode, path) = if index % 2 == 0 {
                (CopyPathMode::Auto, "fast")
            } else {
                (CopyPathMode::Tunnel, "tunnel")
            };
            dp.set_copy_path(mode);
            let report = dp.apply(&set.objects).await.expect("apply");
            assert!(report.errors.is_empty(), "apply: {report:?}");
            for (id, p) in dp.copy_paths() {
                assert_eq!(p.mode, path, "rule set {index}: copy path of {id}");
            }
            let frames = FRAMES_PER_RULE_SET.min(cases - index * FRAMES_PER_RULE_SET);
            let mut r = run_set(dp, &sock, (seed, index), frames, &set, rng.clone(), false);
            if r.hits_only {
                // Only the per-set hit totals disagree: replay the set frame by frame.
                let again = run_set(dp, &sock, (seed, index), frames, &set, rng, true);
                r.failures.extend(again.failures);
            }
            totals.0 += r.cases;
            totals.1 += r.mirrored;
            totals.2 += r.malformed;
            totals.3 += r.refused;
            if index % 2 == 1 {
                totals.4 += r.cases;
            }
            failures.extend(r.failures);
            if failures.len() >= 5 {
                break;
            }
        }
        assert!(
            failures.is_empty(),
            "the source programs and the model disagree (seed {seed}):\n{}",
            failures.join("\n")
        );
        totals
    });
    println!(
        "differential (source programs): {} frames agreed ({} mirrored, {} malformed, {} with copies on the tunnel path), {} refused by the test run; seed {seed}",
        totals.0, totals.1, totals.2, totals.4, totals.3
    );
}

// ---------------------------------------------------------------------------------------
// Receiver

const RECEIVER: &str = "tmrcv-df";
const RX_FRAMES_PER_CONFIG: u64 = 1000;

/// A receiver configuration: the port (the default or another) and one to four VNIs.
fn receiver_config(rng: &mut Rng) -> Receiver {
    let port = if rng.chance(70) {
        4789
    } else {
        rng.range(1024, 65535) as u16
    };
    let mut vnis = Vec::new();
    for _ in 0..rng.range(1, 4) {
        let vni = match rng.below(3) {
            0 => *rng.pick(&[0, 1, 16_777_215]),
            _ => rng.below(1 << 24) as u32,
        };
        if !vnis.contains(&vni) {
            vnis.push(vni);
        }
    }
    Receiver {
        id: RECEIVER.into(),
        interface: "dr0".into(),
        port,
        vnis,
    }
}

fn run_rx(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
) -> Result<(u32, Vec<u8>), String> {
    match hook {
        Hook::Xdp => fixture::try_run_xdp(
            dp.xdp_program(PROG_RECEIVE).expect("receive program"),
            frame,
            ifindex,
        ),
        Hook::Tc => fixture::try_run(
            dp.program(PROG_RECEIVE_TC).expect("TC receive program"),
            frame,
            &skb_ctx(ifindex, 0, None),
        )
        .map(|(ret, out)| (ret as u32, out)),
    }
}

fn rx_status(dp: &Datapath) -> ReceiverStatus {
    dp.receive
        .status()
        .remove(RECEIVER)
        .expect("the receiver is attached")
}

/// The status after `want` from `before`.
fn rx_expected(before: &ReceiverStatus, want: &RxDecision) -> ReceiverStatus {
    let mut st = before.clone();
    if want.counted != Counted::Nothing {
        st.interface.packets += 1;
    }
    let bump = |st: &mut ReceiverStatus, v: u32, f: &dyn Fn(&mut RxVniStats)| {
        if let Some((_, s)) = st.vnis.get_mut(&v) {
            f(s);
        }
    };
    match want.counted {
        Counted::Nothing => {}
        Counted::NotMirror => st.interface.not_mirror += 1,
        Counted::Malformed => st.interface.malformed += 1,
        Counted::UnknownVni => st.interface.unknown_vni += 1,
        Counted::VniMalformed(v) => bump(&mut st, v, &|s| s.malformed += 1),
        Counted::Frame(v, bytes) => bump(&mut st, v, &|s| {
            s.frames += 1;
            s.bytes += bytes;
        }),
        Counted::RedirectError(v) => bump(&mut st, v, &|s| s.redirect_errors += 1),
    }
    st
}

fn check_rx(
    hook: Hook,
    frame: &[u8],
    want: &RxDecision,
    (ret, out): (u32, Vec<u8>),
    before: &ReceiverStatus,
    after: &ReceiverStatus,
) -> Result<(), String> {
    let (pass, redirect, drop) = match hook {
        Hook::Xdp => (fixture::XDP_PASS, fixture::XDP_REDIRECT, fixture::XDP_DROP),
        // The TC verdicts read back as `u32`.
        Hook::Tc => (
            fixture::TC_ACT_UNSPEC as u32,
            fixture::TC_ACT_REDIRECT as u32,
            fixture::TC_ACT_SHOT as u32,
        ),
    };
    match &want.verdict {
        Verdict::Pass if ret != pass || out != frame => {
            return Err(format!(
                "verdict {ret} (want pass {pass}), frame changed: {}",
                out != frame
            ));
        }
        Verdict::Redirect(inner) if ret != redirect || &out != inner => {
            return Err(format!(
                "verdict {ret} (want redirect {redirect}); out {} bytes, inner {} bytes",
                out.len(),
                inner.len()
            ));
        }
        Verdict::Drop if ret != drop => {
            return Err(format!("verdict {ret} (want drop {drop})"));
        }
        _ => {}
    }
    let expect = rx_expected(before, want);
    if *after != expect {
        return Err(format!(
            "counters {:?} / {:?}, model {:?} / {:?}",
            after.interface, after.vnis, expect.interface, expect.vnis
        ));
    }
    Ok(())
}

#[test]
fn receive_programs_agree_with_the_model() {
    let seed = generate::seed_from_env();
    let cases = generate::count_from_env("MIRROR_FUZZ_CASES", DEFAULT_CASES) / 2;
    let configs = cases.div_ceil(RX_FRAMES_PER_CONFIG).max(1);
    println!(
        "differential (receiver): seed {seed} (MIRROR_FUZZ_SEED={seed} replays), {cases} frames through XDP and TC over {configs} receiver configurations"
    );
    let ns: NetNs = mirror_tests::topology::quiet_netns(
        "drx",
        &[
            ("dr0", "dr1", "198.18.230.2/24"),
            ("dr2", "dr3", "198.18.231.2/24"),
        ],
    );
    let objects = |rx: Receiver| Objects {
        receivers: vec![rx],
        ..Objects::default()
    };
    // The receiver's own stream of randomness, apart from the source test's.
    let seed_rx = seed ^ 0x5258;
    let first = receiver_config(&mut Rng::for_item(seed_rx, 0));
    let totals = fixture::with_datapath(&ns, &objects(first), 1024, async |dp, _| {
        let rx0 = datapath::ifindex("dr0").expect("dr0");
        let rx2 = datapath::ifindex("dr2").expect("dr2");
        let mut totals = (0u64, 0u64, 0u64);
        let mut failures = Vec::new();
        'configs: for index in 0..configs {
            let mut rng = Rng::for_item(seed_rx, index);
            let rx = receiver_config(&mut rng);
            let report = dp.apply(&objects(rx.clone())).await.expect("apply");
            assert!(report.errors.is_empty(), "apply: {report:?}");
            let model_rx = rx_model::Receiver {
                port: rx.port,
                vnis: rx.vnis.clone(),
            };
            let frames = RX_FRAMES_PER_CONFIG.min(cases - index * RX_FRAMES_PER_CONFIG);
            for case in 0..frames {
                let frame = generate::receiver_frame(&mut rng, rx.port, &rx.vnis);
                let on_receiver = rng.chance(95);
                let ifindex = if on_receiver { rx0 } else { rx2 };
                for hook in [Hook::Xdp, Hook::Tc] {
                    let want = rx_model::receive(on_receiver.then_some(&model_rx), hook, &frame);
                    let before = rx_status(dp);
                    let Ok(result) = run_rx(dp, hook, &frame, ifindex) else {
                        totals.2 += 1;
                        continue;
                    };
                    totals.0 += 1;
                    totals.1 += u64::from(matches!(want.verdict, Verdict::Redirect(_)));
                    let after = rx_status(dp);
                    if let Err(why) = check_rx(hook, &frame, &want, result, &before, &after) {
                        failures.push(format!(
                            "{hook:?}: {why}\n  seed {seed} configuration {index} frame {case} on {}: receiver port {} VNIs {:?}; model {want:?}\n    frame {}",
                            if on_receiver { "dr0" } else { "dr2" },
                            rx.port,
                            rx.vnis,
                            hex(&frame)
                        ));
                        if failures.len() >= 5 {
                            break 'configs;
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "the receiving programs and the model disagree (seed {seed}):\n{}",
            failures.join("\n")
        );
        totals
    });
    println!(
        "differential (receiver): {} runs agreed ({} delivered), {} refused by the test run; seed {seed}",
        totals.0, totals.1, totals.2
    );
}
