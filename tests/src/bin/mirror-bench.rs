//! `cargo xtask bench`: the agent side by side with the tools operators use today, every
//! figure measured against a peer in the same run. Sections (one module each):
//!
//! - program cost (BPF_PROG_TEST_RUN against an empty TC program);
//! - mirroring on the wire (veth pairs in namespaces, one sender core, one core for the
//!   rest): no mirroring, tc mirred, nftables dup, daemonlogger, this agent;
//! - flow accounting at the same offered load: this agent, softflowd, pmacctd;
//! - the drain of a 1 M-flow table, and its effect on the data path;
//! - the agent's memory for an aggregation interval of 1 M distinct flows;
//! - the control plane: AddSources to copies on the wire, API requests under load;
//! - XDP receive: decapsulation and redirect into a capture veth against the kernel's VXLAN
//!   device;
//! - budgets: production with a session budgeted to a tenth of the offered rate, and the
//!   data path's cost of a copy the budget or the sampling leaves out;
//! - GSO: a bulk TCP stream through the mirrored source (super-packets on veth), copies per
//!   wire segment and throughput: no mirroring, tc mirred, this agent.
//!
//! `--quick` (CI) runs every section briefly and fails if a row is missing; it never judges
//! speed. `--write FILE` writes the Markdown document (plots go next to it).

use std::{fmt::Write as _, process::ExitCode};

#[path = "mirror-bench/budget.rs"]
mod budget;
#[path = "mirror-bench/common.rs"]
mod common;
#[path = "mirror-bench/control.rs"]
mod control;
#[path = "mirror-bench/drain.rs"]
mod drain;
#[path = "mirror-bench/flowacct.rs"]
mod flowacct;
#[path = "mirror-bench/gso.rs"]
mod gso;
#[path = "mirror-bench/interval.rs"]
mod interval;
#[path = "mirror-bench/progcost.rs"]
mod progcost;
#[path = "mirror-bench/receive.rs"]
mod receive;
#[path = "mirror-bench/statfloor.rs"]
mod statfloor;
#[path = "mirror-bench/wire.rs"]
mod wire;

struct Args {
    quick: bool,
    write: Option<String>,
    only: Option<String>,
    /// What the node forwards at 64 B with nothing else running, when the wire section that
    /// measures it is not run (`--only flows --capacity-pps N`).
    capacity_pps: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        write: None,
        only: None,
        capacity_pps: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--write" => args.write = Some(it.next().ok_or("--write needs a file")?),
            // For working on one section: `--only wire` (the document is then partial).
            "--only" => args.only = Some(it.next().ok_or("--only needs a section")?),
            "--capacity-pps" => {
                let v = it.next().ok_or("--capacity-pps needs a rate")?;
                args.capacity_pps =
                    Some(v.parse().map_err(|e| format!("--capacity-pps {v}: {e}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// One section's text and whether it produced every row it should.
struct Section {
    name: &'static str,
    markdown: String,
    rows: usize,
    expected: usize,
    /// SVG files (name, content), written to `bench/` next to the document.
    plots: Vec<(String, String)>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mirror-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quick = args.quick;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    let started = std::time::Instant::now();
    // Other work on the machine shows in every figure: say how much there was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut sections: Vec<Section> = Vec::new();
    if wanted("cost") {
        let cost = progcost::run(quick);
        sections.push(Section {
            name: "cost",
            markdown: cost.markdown(quick),
            rows: cost.rows(),
            expected: progcost::Cost::expected_rows(),
            plots: Vec::new(),
        });
    }
    if wanted("drain") {
        let n = if quick { 10_000 } else { 1_000_000 };
        sections.push(Section {
            name: "drain",
            markdown: drain::drain_section(n),
            rows: 1,
            expected: 1,
            plots: Vec::new(),
        });
    }
    if wanted("interval") {
        let n = if quick { 10_000 } else { 1_000_000 };
        let i = interval::run(n);
        sections.push(Section {
            name: "interval",
            markdown: i.markdown(quick),
            rows: i.rows(),
            expected: 2,
            plots: Vec::new(),
        });
    }
    if wanted("receive") {
        let (markdown, rows) = receive::run(quick);
        sections.push(Section {
            name: "receive",
            markdown,
            rows,
            expected: receive::EXPECTED_ROWS,
            plots: Vec::new(),
        });
    }
    if wanted("wire") || wanted("flows") || wanted("control") {
        let bed = wire::Bed::new();
        let mut capacity = args.capacity_pps.unwrap_or(0.0);
        if wanted("wire") {
            let w = wire::run(&bed, quick);
            capacity = w.capacity_64();
            let (markdown, plots) = w.markdown(quick);
            sections.push(Section {
                name: "wire",
                markdown,
                rows: w.rows(),
                expected: wire::Wire::expected_rows(),
                plots,
            });
        }
        if wanted("flows") {
            let f = flowacct::run(&bed, quick, capacity);
            sections.push(Section {
                name: "flows",
                markdown: f.markdown(quick),
                rows: f.rows(),
                expected: flowacct::FlowAcct::expected_rows(),
                plots: Vec::new(),
            });
        }
        if wanted("control") {
            let c = control::run(&bed, quick);
            sections.push(Section {
                name: "control",
                markdown: c.markdown(quick),
                rows: c.rows(),
                expected: control::Control::expected_rows(),
                plots: Vec::new(),
            });
        }
    }
    if wanted("budget") {
        let b = budget::run(quick);
        sections.push(Section {
            name: "budget",
            markdown: b.markdown(quick),
            rows: b.rows(),
            expected: budget::Budget::expected_rows(),
            plots: Vec::new(),
        });
    }
    if wanted("gso") {
        let g = gso::run(quick);
        sections.push(Section {
            name: "gso",
            markdown: g.markdown(quick),
            rows: g.rows(),
            expected: gso::Gso::expected_rows(),
            plots: Vec::new(),
        });
    }
    let mut out = String::new();
    for s in &sections {
        out.push_str(&s.markdown);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Whole run: {:.0} s{}.",
        started.elapsed().as_secs_f64(),
        if quick { " (quick mode)" } else { "" }
    );
    print!("{out}");
    let missing: Vec<String> = sections
        .iter()
        .filter(|s| s.rows != s.expected)
        .map(|s| format!("{}: {} of {} rows", s.name, s.rows, s.expected))
        .collect();
    if let Some(path) = args.write {
        let doc = format!(
            "# Benchmarks\n\nRegenerate with `cargo xtask bench` (root). Numbers from one run on \
             the machine named below; every figure is put next to a peer measured in the same \
             run. Compare ratios, not absolute values, across machines. Load average when the \
             run started: {} (1, 5, 15 min; anything above 0 is other work sharing the \
             CPUs).\n\n{out}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Err(e) = std::fs::write(&path, doc) {
            eprintln!("mirror-bench: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
        let dir = std::path::Path::new(&path)
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("bench");
        for (name, svg) in sections.iter().flat_map(|s| &s.plots) {
            if let Err(e) =
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), svg))
            {
                eprintln!("mirror-bench: writing {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("wrote {path}");
    }
    if !missing.is_empty() {
        eprintln!("mirror-bench: rows missing: {}", missing.join("; "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
