//! Project tasks. `cargo xtask setup` prepares a fresh machine (idempotent), `run` runs the
//! agent, `test` runs everything CI runs, `bench` runs the benchmarks, `fuzz` runs the
//! differential tests long.
//!
//! xtask deliberately does not depend on the agent: it must build and run on a machine that
//! does not have bpf-linker yet, since installing it is its first job.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod vm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker 0.10.0, Debian
    /// packages, the cloud SDKs' virtualenv) and mount bpffs and tracefs. Safe to run again.
    Setup,
    /// Build the agent (release) and run it in the foreground; extra arguments go to
    /// `mirror-agent run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, formatting and lints of both crates, then every test (kernel tests included,
    /// one at a time), with a quick benchmark pass first so its harness cannot rot; then the
    /// kernel-state subset again on Linux 6.1 in a VM.
    Test {
        /// Only the VM pass, on this kernel (6.1: Debian 12's).
        #[arg(long)]
        kernel: Option<String>,
    },
    /// A throwaway lab (root): workload and collector namespaces around a node namespace
    /// running the agent; creates a session and a flow log through the API, shows copies
    /// arriving (tcpdump) and flow-log records, then removes everything.
    Lab,
    /// The differential tests (the programs against the reference model) with many more
    /// cases than `test` runs: MIRROR_FUZZ_CASES source frames (default 1,000,000; half as
    /// many receiver frames), MIRROR_FUZZ_SEED to replay a run. Needs root.
    Fuzz {
        /// Source frames (receiver frames: half). Overrides MIRROR_FUZZ_CASES.
        #[arg(long)]
        cases: Option<u64>,
        /// Replays this seed. Overrides MIRROR_FUZZ_SEED.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks (needs root). Writes BENCHMARKS.md.
    Bench {
        /// Few repetitions: checks that every row is produced, not how fast.
        #[arg(long)]
        quick: bool,
    },
}

/// Debian packages the tests and benchmarks run (the real tools the results are checked with).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "procps",
    "tcpdump",
    "tshark",
    "iperf3",
    "nftables",
    "bpftool",
    "ethtool",
    "libcap2-bin",
    "prometheus",
    "yamllint",
    "nfdump",
    // The cloud SDK tests' virtualenv (tests/sdk/requirements.txt).
    "python3",
    "python3-venv",
    // Peers the benchmark measures the agent against (cargo xtask bench).
    "daemonlogger",
    "softflowd",
    "pmacct",
];

const BPF_LINKER_VERSION: &str = "0.10.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn setup() -> Result<()> {
    // Nightly with rust-src: aya-build compiles the eBPF crate with -Z build-std=core.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "clippy",
        "rustfmt",
        "--toolchain",
        "nightly",
    ]))?;

    // bpf-linker 0.10.0 uses rustc's own LLVM; newer ones need a system LLVM we do not have.
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }

    if !is_root() {
        eprintln!("not root: skipping Debian packages and mounts (tests need root anyway)");
        return Ok(());
    }
    apt_install(DEBIAN_PACKAGES)?;
    mount_if_missing("bpf", "/sys/fs/bpf")?;
    mount_if_missing("tracefs", "/sys/kernel/tracing")?;
    sdk_venv()
}

/// The clouds' Python SDKs at the pinned versions of tests/sdk/requirements.txt, in
/// target/sdk-venv (tests/tests/cloud_sdks.rs runs them). Rebuilt only when the
/// requirements change: the installed list is stamped into the venv.
fn sdk_venv() -> Result<()> {
    let venv = root().join("target/sdk-venv");
    let requirements = root().join("tests/sdk/requirements.txt");
    let want = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join(".requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    // Debian's interpreter: the one python3-venv above belongs to.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    if !venv.join("bin/python").exists() {
        run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Installs those of `packages` that are not installed yet (Debian's apt).
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn mount_if_missing(fstype: &str, path: &str) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, ty) = (f.next(), f.next(), f.next());
        mnt == Some(path) && ty == Some(fstype)
    });
    if !mounted {
        std::fs::create_dir_all(path).with_context(|| format!("creating {path}"))?;
        run(Command::new("mount").args(["-t", fstype, fstype, path]))?;
    }
    Ok(())
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        // The benchmark binary and the benchmark-only programs exist only with their features.
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate for its real target: this is where its program code is compiled. Both
    // objects: the agent's, and the benchmark's (code only it uses must not go unlinted).
    for features in ["", "bench"] {
        run(Command::new("rustup").current_dir(root()).args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "mirror-ebpf",
            "--bins",
            "--release",
            "--features",
            features,
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    // The bench runs the agent binary of its own profile (wire, flow and control sections).
    let mut agent = cargo();
    agent.args(["build", "-q", "-p", "mirror-agent"]);
    let mut cmd = cargo();
    if quick {
        // The quick pass checks that every row is produced, not timings: the debug build the
        // tests already made is enough and saves a release build in CI.
        cmd.args([
            "run",
            "-q",
            "-p",
            "tests",
            "--bin",
            "mirror-bench",
            "--features",
            "bench",
            "--",
            "--quick",
        ]);
    } else {
        agent.arg("--release");
        cmd.args([
            "run",
            "--release",
            "-q",
            "-p",
            "tests",
            "--bin",
            "mirror-bench",
            "--features",
            "bench",
            "--",
        ]);
        // Plots go to bench/*.svg next to it.
        cmd.args(["--write", "BENCHMARKS.md"]);
    }
    run(&mut agent)?;
    run(&mut cmd)
}

/// Source frames `cargo xtask fuzz` runs unless told otherwise.
const FUZZ_CASES: u64 = 1_000_000;

fn fuzz(cases: Option<u64>, seed: Option<u64>) -> Result<()> {
    let cases = cases
        .or_else(|| {
            std::env::var("MIRROR_FUZZ_CASES")
                .ok()
                .and_then(|v| v.replace('_', "").parse().ok())
        })
        .unwrap_or(FUZZ_CASES);
    let mut cmd = cargo();
    // The debug build `cargo xtask test` already made: the frames spend most of their time
    // in the kernel (test runs, map reads), so a release build would save little.
    cmd.env("MIRROR_FUZZ_CASES", cases.to_string()).args([
        "test",
        "-p",
        "tests",
        "--test",
        "differential",
        "--",
        "--nocapture",
        "--test-threads=1",
    ]);
    if let Some(seed) = seed {
        cmd.env("MIRROR_FUZZ_SEED", seed.to_string());
    }
    eprintln!(
        "xtask fuzz: {cases} source frames, {} receiver frames",
        cases / 2
    );
    run(&mut cmd)
}

/// Namespaces and links of the lab; removed on drop, also when a step fails.
struct Lab {
    names: [String; 3],
    agent: Option<std::process::Child>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(a.id() as libc::pid_t, libc::SIGTERM) };
            let _ = a.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("lab removed");
    }
}

fn lab() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "mirror-agent"]))?;
    let agent_bin = root().join("target/release/mirror-agent");
    let tag = std::process::id() % 100_000;
    let [wl, node, col] = [
        format!("labwl{tag}"),
        format!("labnd{tag}"),
        format!("labcl{tag}"),
    ];
    let dir = std::env::temp_dir().join(format!("mirror-lab-{tag}"));
    let mut lab = Lab {
        names: [wl.clone(), node.clone(), col.clone()],
        agent: None,
        dir: dir.clone(),
    };
    let ip = |args: &[&str]| run(Command::new("ip").args(args));
    let nsx =
        |ns: &str, args: &[&str]| run(Command::new("ip").args(["netns", "exec", ns]).args(args));
    for ns in &lab.names {
        ip(&["netns", "add", ns])?;
        nsx(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    // workload (198.18.10.2) -- eth0 [node] uplink (198.18.20.1) -- collector (198.18.20.2)
    ip(&[
        "-n", &wl, "link", "add", "wl0", "type", "veth", "peer", "name", "eth0", "netns", &node,
    ])?;
    ip(&[
        "-n", &node, "link", "add", "uplink", "type", "veth", "peer", "name", "col0", "netns", &col,
    ])?;
    for (ns, dev, addr) in [
        (&wl, "wl0", "198.18.10.2/24"),
        (&node, "eth0", "198.18.10.1/24"),
        (&node, "uplink", "198.18.20.1/24"),
        (&col, "col0", "198.18.20.2/24"),
    ] {
        nsx(ns, &["ip", "addr", "add", addr, "dev", dev])?;
        nsx(ns, &["ip", "link", "set", dev, "up"])?;
    }
    std::fs::create_dir_all(&dir).context("lab dir")?;
    let socket = dir.join("api.sock");
    let child = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(&agent_bin)
        .args(["run", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--api-socket")
        .arg(&socket)
        // A throwaway lab: nothing may outlive it.
        .arg("--detach-on-exit")
        .stderr(std::fs::File::create(dir.join("agent.log")).context("agent log")?)
        .spawn()
        .context("starting the agent")?;
    lab.agent = Some(child);
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new(&agent_bin)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .context("running the CLI")?;
        if !out.status.success() {
            bail!(
                "mirror-agent {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("$ mirror-agent {}\n{text}", args.join(" "));
        Ok(text)
    };
    let target = cli(&["target", "create", "--destination-ip", "198.18.20.2"])?;
    let filter = cli(&[
        "filter",
        "create",
        "--ingress",
        "priority=1,action=accept,protocol=ICMP",
    ])?;
    let filter = filter.lines().next().unwrap_or_default().to_string();
    cli(&[
        "session",
        "create",
        "--priority",
        "1",
        "--filter",
        &filter,
        "--target",
        &target,
        "--vni",
        "100",
        "--packet-length",
        "96",
        "--enabled",
        "--source",
        "eth0",
    ])?;
    cli(&[
        "flowlog",
        "create",
        "--name",
        "lab",
        "--resource-id",
        "eth0",
        "--project",
        "lab",
        "--topic",
        "eth0",
        "--interval-seconds",
        "2",
    ])?;
    std::thread::sleep(Duration::from_secs(1));
    cli(&["session", "list"])?;
    println!("\n# copies arriving at the collector (VXLAN, VNI 100, cut to 96 bytes):");
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", &col, "tcpdump", "-n", "-i", "col0", "-c", "3", "udp", "port", "4789",
        ])
        .spawn()
        .context("tcpdump")?;
    std::thread::sleep(Duration::from_millis(800));
    nsx(&wl, &["ping", "-c", "3", "-i", "0.2", "198.18.10.1"])?;
    let _ = dump.wait();
    std::thread::sleep(Duration::from_secs(3));
    println!("\n# flow-log records:");
    let records = dir.join("state/flowlogs/lab/eth0/current.jsonl");
    print!("{}", std::fs::read_to_string(&records).unwrap_or_default());
    drop(lab);
    Ok(())
}

/// How long each step of `cargo xtask test` took, printed at the end (pass or fail) so a CI
/// log shows where its minutes went.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    fn time<T>(&mut self, name: &'static str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = step();
        self.0.push((name, started.elapsed()));
        result
    }

    fn report(&self) {
        let total: Duration = self.0.iter().map(|(_, d)| *d).sum();
        eprintln!("xtask: steps of `cargo xtask test`:");
        for (name, d) in &self.0 {
            eprintln!("xtask:   {:>6.0} s  {name}", d.as_secs_f64());
        }
        eprintln!("xtask:   {:>6.0} s  in all", total.as_secs_f64());
    }
}

/// receiver_e2e tests whose mirror traffic comes from the kernel's VXLAN device, not from a
/// source agent: the copy path does not change them.
const RECEIVER_ONLY_TESTS: [&str; 3] = [
    "receiver_api_creates_lists_rejects_bad_input_and_deletes",
    "receiver_runs_with_the_agents_three_capabilities",
    "gso_vxlan_super_packets_are_delivered_or_counted_never_lost_silently",
];

/// Everything CI runs, in order: the cheap checks first, the VM last.
fn test_all(steps: &mut Steps) -> Result<()> {
    steps.time("setup", setup)?;
    steps.time("lint (fmt, clippy)", lint)?;
    // The end-to-end tests run the agent binary.
    steps.time("agent build", || {
        run(cargo().args(["build", "-p", "mirror-agent"]))
    })?;
    steps.time("quick bench", || bench(true))?;
    // Kernel-state tests one at a time: they create namespaces, links and programs.
    steps.time("tests", || {
        run(cargo().args([
            "test",
            "--workspace",
            "--all-targets",
            "--",
            "--test-threads=1",
        ]))
    })?;
    // The end-to-end suites again with every agent on the fallback copy path (the kernel's
    // VXLAN device), which the fast path otherwise hides; the receiver tests without a source
    // agent (no copy path in them) are not run twice. `--workspace` rather than `-p tests`:
    // the same feature resolution as the run above, so its builds are reused instead of made
    // again (eBPF object included).
    steps.time("tests on the tunnel path", || {
        run(cargo()
            .env("MIRROR_TEST_COPY_PATH", "tunnel")
            .args([
                "test",
                "--workspace",
                "--test",
                "mirror_e2e",
                "--test",
                "receiver_e2e",
                "--test",
                "restart",
                "--",
                "--test-threads=1",
            ])
            .args(RECEIVER_ONLY_TESTS.iter().flat_map(|t| ["--skip", t])))
    })?;
    // The fleet's older kernel: Debian 12 / Amazon Linux 2023's 6.1.
    steps.time("Linux 6.1 VM", || vm::test_kernel("6.1"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Run { args } => setup().and_then(|()| {
            run(cargo().args(["build", "--release", "-p", "mirror-agent"]))?;
            run(Command::new(root().join("target/release/mirror-agent"))
                .arg("run")
                .args(args))
        }),
        Task::Test {
            kernel: Some(kernel),
        } => setup().and_then(|()| vm::test_kernel(&kernel)),
        Task::Test { kernel: None } => {
            let mut steps = Steps::default();
            let result = test_all(&mut steps);
            steps.report();
            result
        }
        Task::Bench { quick } => setup().and_then(|()| bench(quick)),
        Task::Fuzz { cases, seed } => setup().and_then(|()| fuzz(cases, seed)),
        Task::Lab => setup().and_then(|()| lab()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
