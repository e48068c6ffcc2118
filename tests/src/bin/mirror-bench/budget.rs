//! Budgets: what a session whose budget is a tenth of the offered rate costs production
//! (the wire bed, flat out, against no mirroring), and what a copy the budget or the
//! sampling leaves out costs the data path (BPF_PROG_TEST_RUN, against the same source
//! program's path for a packet no rule matches, without a budget).

use std::{fmt::Write as _, time::Duration};

use mirror_agent::{
    config::FileConfig,
    datapath::{self, PROG_INGRESS},
};
use mirror_ebpf::{MAX_SOURCES, NO_SESSION, SourceConfig};
use mirror_tests::{fixture, packets::L4};

use crate::{
    common::{human, ratio},
    progcost::{measure, netns, sized, skb_ctx},
    wire::{self, Bed, Window},
};

/// The data-path rows: (label, session the measured source has, destination port). The base
/// packet goes to 2024, which shares port 1000's bit in the port prefilter, so it walks the
/// rule and misses on the port, as every no-match packet did before the prefilter.
const COST_ROWS: [(&str, &str, u16); 4] = [
    ("no budget, no rule matches (the base)", "tms-plain", 2024),
    ("over the packet budget (skipped)", "tms-budget", 1000),
    ("sampled out, SampleMode packet", "tms-sample", 1000),
    ("sampled out, SampleMode flow", "tms-flow", 1000),
];
const COST_SIZES: [usize; 2] = [64, 1500];

fn cost_config() -> String {
    let mut c = String::from(
        "[[targets]]\nid = \"tmt-bench\"\ndestination_ip = \"198.18.201.2\"\n\
         [[filters]]\nid = \"tmf-b\"\n[[filters.ingress_rules]]\npriority = 1\n\
         action = \"accept\"\nprotocol = \"UDP\"\ndestination_port_range = \"1000/1000\"\n",
    );
    // 1 packet/s: the bucket is empty after the first run. One in 2^24: practically never.
    for (i, (id, extra)) in [
        ("tms-plain", ""),
        ("tms-budget", "max_packets_per_second = 1\n"),
        ("tms-sample", "sample_one_in = 16777216\n"),
        (
            "tms-flow",
            "sample_one_in = 16777216\nsample_mode = \"flow\"\n",
        ),
    ]
    .iter()
    .enumerate()
    {
        let _ = write!(
            c,
            "[[sessions]]\nid = \"{id}\"\npriority = {}\nvirtual_network_id = {}\n\
             enabled = true\nfilter_id = \"tmf-b\"\ntarget_id = \"tmt-bench\"\n\
             sources = [\"bx0\"]\n{extra}",
            i + 1,
            i + 1
        );
    }
    c
}

pub struct Budget {
    /// (frame size, ns of each COST_ROWS row).
    cost: Vec<(usize, Vec<f64>)>,
    /// (frame size, no mirroring, budgeted session, budget pps, every copy skipped).
    wire: Vec<(usize, Window, Window, u64, Window)>,
    secs: f64,
}

fn run_cost(quick: bool) -> Vec<(usize, Vec<f64>)> {
    let (runs, repeat) = if quick { (3, 1_000) } else { (7, 1_000_000) };
    let ns = netns();
    let file: FileConfig = toml::from_str(&cost_config()).expect("bench config");
    let objects = file.objects().expect("bench objects");
    let out = fixture::with_datapath(&ns, &objects, 1024, async |dp, _| {
        let bx1 = datapath::ifindex("bx1").expect("bx1");
        let ctx = skb_ctx(bx1);
        let mut cost = Vec::new();
        for size in COST_SIZES {
            let mut row = Vec::new();
            for (_, session, dport) in COST_ROWS {
                let slot = dp.session_slot(session).expect("session placed") as u16;
                let mut cfg = SourceConfig {
                    sessions: [NO_SESSION; 8],
                    stats_slot: MAX_SOURCES - 1,
                    flags: 0,
                };
                cfg.sessions[0] = slot;
                dp.maps.set_source(bx1, cfg).expect("measured source");
                let pkt = sized(
                    4,
                    L4::Udp {
                        sport: 40000,
                        dport,
                    },
                    size,
                );
                row.push(measure(dp, PROG_INGRESS, &pkt, &ctx, runs, repeat));
            }
            cost.push((size, row));
        }
        cost
    });
    drop(ns);
    out
}

pub fn run(quick: bool) -> Budget {
    let cost = run_cost(quick);
    let (warm, secs) = if quick { (0.3, 1.0) } else { (1.0, 5.0) };
    let bed = Bed::new();
    let mut rows = Vec::new();
    for size in wire::SIZES {
        // What production gets without mirroring, flat out: the budget is a tenth of it.
        let none = wire::measure(&bed, size, None, warm, secs, 0);
        let budget = (none.pps(none.production) / 10.0).max(1.0) as u64;
        let with = budgeted(&bed, size, budget, warm, secs);
        // The same session with a budget of 1 copy/s: every packet takes the data path's skip
        // (the program on every frame, no copies), which splits the cost of the row above into
        // the program's and the copies'.
        let skipped = budgeted(&bed, size, 1, warm, secs);
        eprintln!("budget {size} B: none {none:?} with {with:?} all skipped {skipped:?}");
        rows.push((size, none, with, budget, skipped));
    }
    Budget {
        cost,
        wire: rows,
        secs,
    }
}

/// A window of the wire bed with the agent's one session budgeted to `budget` copies/s.
fn budgeted(bed: &Bed, size: usize, budget: u64, warm: f64, secs: f64) -> Window {
    let config = format!(
        "{}max_packets_per_second = {budget}\n",
        wire::agent_config(None)
    );
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("bag"));
    let agent = wire::start_agent(bed, &config, &dir);
    agent.wait_settled(Duration::from_secs(20));
    wire::measure(bed, size, None, warm, secs, agent.pid())
}

impl Budget {
    pub fn rows(&self) -> usize {
        self.cost.iter().map(|c| c.1.len()).sum::<usize>() + self.wire.len()
    }

    pub fn expected_rows() -> usize {
        COST_ROWS.len() * COST_SIZES.len() + wire::SIZES.len()
    }

    pub fn markdown(&self, quick: bool) -> String {
        let mut s = String::from("## Budgets\n\n");
        let _ = writeln!(
            s,
            "A session with `MaxPacketsPerSecond` at a tenth of what production reaches without \
             mirroring (the wire bed, flat out, {} s windows): production against no mirroring \
             (goal ≥ 0.95x), and the copies the target gets. To tell the data path's own \
             cost from the copies', the same session with a budget of 1 copy/s (every frame \
             runs the source program to the skip, none is copied). CPU/frame is the work \
             CPU's kernel time, plus the agent's user time, per frame the node received (the \
             wire section's CPU/pkt); the windows keep that CPU busy nearly all the time \
             (compare CPU/frame x pps with 10^9 ns), so production is what its time allows.\n",
            self.secs
        );
        s.push_str(
            "| frame | no mirroring pps | CPU/frame (ns) | budget | with the budget pps | production | CPU/frame (ns) | copies/s | every copy skipped pps | production | CPU/frame (ns) |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (size, none, with, budget, skipped) in &self.wire {
            let _ = writeln!(
                s,
                "| {size} B | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} |",
                human(none.pps(none.production)),
                none.cpu_per_packet(),
                human(*budget as f64),
                human(with.pps(with.production)),
                ratio(with.pps(with.production), none.pps(none.production)),
                with.cpu_per_packet(),
                human(with.pps(with.target)),
                human(skipped.pps(skipped.production)),
                ratio(skipped.pps(skipped.production), none.pps(none.production)),
                skipped.cpu_per_packet(),
            );
        }
        // Where the time goes, from the CPU per frame: the skip row's excess is the program
        // on every frame; the rest of the budget row's excess is the copies'.
        for (size, none, with, _, skipped) in &self.wire {
            let base = none.cpu_per_packet();
            let program = skipped.cpu_per_packet() - base;
            let copies = with.target.max(1) as f64;
            let per_copy =
                (with.cpu_per_packet() - skipped.cpu_per_packet()) * with.node_rx as f64 / copies;
            let _ = writeln!(
                s,
                "\n{size} B: the program on every frame adds {program:.0} ns per frame \
                 ({:.1} % of a frame's {base:.0} ns); each copy adds about {per_copy:.0} ns \
                 ({:.2} frames' worth) on this CPU, which also receives it at the target.",
                100.0 * program / base,
                per_copy / base,
            );
        }
        s.push_str(
            "\nThe data path's cost of a copy left out, before any clone (BPF_PROG_TEST_RUN, \
             median ns per run of the source program), against its path for a packet no rule \
             matches without a budget (goal: ≤ 30 ns more).\n\n\
             | frame | path | ns | over the base |\n|---|---|---|---|\n",
        );
        for (size, row) in &self.cost {
            let base = row.first().copied().unwrap_or(f64::NAN);
            for ((label, _, _), ns) in COST_ROWS.iter().zip(row) {
                let _ = writeln!(s, "| {size} B | {label} | {ns:.1} | {:+.1} |", ns - base);
            }
        }
        if quick {
            s.push_str("\n(quick mode: figures are not meaningful)\n");
        }
        s
    }
}
