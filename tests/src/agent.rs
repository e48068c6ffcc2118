//! Runs the real `mirror-agent` binary inside a test namespace, the way an operator runs it.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use crate::netns::NetNs;

/// `target/<profile>/mirror-agent`, next to the test binary's `deps/` directory. `cargo xtask
/// test` builds it before the tests run.
/// `MIRROR_TEST_COPY_PATH=tunnel` runs every agent a test starts with `--copy-path
/// tunnel`: `cargo xtask test` runs the end-to-end suites a second time that way, so the
/// fallback path keeps passing the same tests as the fast path.
fn copy_path_override() -> Vec<String> {
    match std::env::var("MIRROR_TEST_COPY_PATH") {
        Ok(v) if !v.is_empty() => vec!["--copy-path".into(), v],
        _ => Vec::new(),
    }
}

/// Whether agents started by tests may take the fast copy path (not forced to the tunnel
/// device by `MIRROR_TEST_COPY_PATH`).
pub fn fast_path_allowed() -> bool {
    copy_path_override().is_empty()
}

pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // A binary target (the benchmark) lives in target/<profile>/ itself, next to the agent.
    let sibling = exe.parent().map(|d| d.join("mirror-agent"));
    if let Some(bin) = sibling.filter(|b| b.exists()) {
        return bin;
    }
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join("mirror-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p mirror-agent` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A running agent; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// Keep the directory (state, config, socket) when dropped: a restart reuses it.
    keep_dir: bool,
}

/// The directory of an agent that is gone but left state and pins for a restart. Dropped, it
/// unmounts the pins and removes the directory, so a failing test leaves nothing behind; an
/// agent restarted in it removes it first when that agent drops.
pub struct KeptDir(PathBuf);

impl std::ops::Deref for KeptDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        Agent::remove_dir(&self.0);
    }
}

/// How `Agent::start_with` starts the agent.
pub struct StartOptions<'a> {
    /// A command the agent runs under (e.g. `setpriv … --`).
    pub wrapper: &'a [&'a str],
    /// Extra `mirror-agent run` flags.
    pub args: &'a [&'a str],
    /// Mount a private bpffs for the pins (false: the agent finds no bpffs).
    pub bpffs: bool,
    /// The agent's RUST_LOG.
    pub rust_log: &'a str,
    /// More environment for the agent (e.g. `KUBECONFIG`).
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for StartOptions<'_> {
    fn default() -> Self {
        StartOptions {
            wrapper: &[],
            args: &[],
            bpffs: true,
            rust_log: "info",
            env: &[],
        }
    }
}

/// A `setpriv` wrapper running the agent as `nobody` with exactly `caps` (setpriv syntax,
/// e.g. `-all,+bpf,+net_admin`): inheritable, ambient and bounding sets.
pub fn as_nobody_with(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
        "--".into(),
    ]
}

/// A fresh agent directory owned by `nobody`, for agents run `as_nobody_with`.
pub fn nobody_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::netns::unique(prefix));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&dir)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {}", dir.display());
    dir
}

/// Mounts a fresh bpffs instance at `dir` unless one is there already.
pub fn mount_bpffs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("bpffs mount point");
    if is_bpffs(dir) {
        return;
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "mounting bpffs at {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_bpffs(dir: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) into a zeroed struct we own, on a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe4a11 }
}

/// Unmounts an agent directory's bpffs: the pins go, and with them whatever the agents
/// left attached.
pub fn unmount_bpffs(agent_dir: &std::path::Path) {
    let bpf = agent_dir.join("bpf");
    if let Ok(c) = std::ffi::CString::new(bpf.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) on a NUL-terminated path; failure (not mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// What the CLI printed and how it exited.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Agent {
    /// Writes `config` to a temporary file and starts `mirror-agent run --config …` in `ns`;
    /// returns once the agent reports the data path ready.
    pub fn start(ns: &NetNs, config: &str) -> Agent {
        let dir = std::env::temp_dir().join(crate::netns::unique("agt"));
        Agent::start_in(ns, config, &dir)
    }

    /// Starts an agent whose state, config and socket live in `dir` (a restart passes the
    /// directory of the agent it replaces).
    pub fn start_in(ns: &NetNs, config: &str, dir: &std::path::Path) -> Agent {
        Agent::start_wrapped(ns, config, dir, &[])
    }

    /// Starts the agent through `wrapper` (e.g. `setpriv … --`), inside `ns`.
    pub fn start_wrapped(
        ns: &NetNs,
        config: &str,
        dir: &std::path::Path,
        wrapper: &[&str],
    ) -> Agent {
        Agent::start_with(
            ns,
            config,
            dir,
            &StartOptions {
                wrapper,
                ..StartOptions::default()
            },
        )
    }

    /// Starts the agent with everything a test may vary.
    pub fn start_with(
        ns: &NetNs,
        config: &str,
        dir: &std::path::Path,
        opts: &StartOptions<'_>,
    ) -> Agent {
        let wrapper = opts.wrapper;
        // Before anything is mounted: a missing binary must not leave a bpffs behind.
        let binary = agent_binary();
        let binary = binary.to_str().expect("utf-8 path");
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).expect("agent temp dir");
        // Each agent pins into its own bpffs instance: `ip netns exec` remounts /sys, hiding
        // /sys/fs/bpf, and tests must not see each other's pins. Mounted before the agent
        // starts, since `ip netns exec` copies the mount table at that moment. A restarted
        // agent (same dir) finds the mount, and what the previous one pinned, in place.
        let bpf = dir.join("bpf");
        if opts.bpffs {
            mount_bpffs(&bpf);
        }
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).expect("writing the agent config");
        let state_dir = dir.join("state");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = ns.command(first);
                c.args(rest).arg(binary);
                c
            }
            None => ns.command(binary),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--state-dir")
            .arg(&state_dir)
            // Each agent its own socket: tests run agents in several namespaces of one host.
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .arg("--pin-dir")
            .arg(bpf.join("mirror-agent"))
            .args(copy_path_override())
            .args(opts.args)
            .env("RUST_LOG", opts.rust_log)
            .envs(opts.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning mirror-agent");
        let stderr = child.stderr.take().expect("agent stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let mut agent = Agent {
            child,
            log,
            lines,
            state_dir,
            socket: dir.join("api.sock"),
            config: config_path,
            keep_dir: false,
        };
        agent.wait_for_log("datapath ready", Duration::from_secs(30));
        agent
    }

    /// Waits for a log line containing `needle`; panics with the whole log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let timeout = crate::scaled(timeout);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "agent exited before logging {needle:?}:\n{}",
                        self.log_text()
                    )
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            if left.is_zero() {
                panic!(
                    "agent did not log {needle:?} within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// Rewrites the config and sends SIGHUP; returns when the agent has applied it.
    pub fn reload(&mut self, config: &str) {
        std::fs::write(&self.config, config).expect("rewriting the agent config");
        // Drain what was logged so far so the wait below sees only the new apply.
        while self.lines.try_recv().is_ok() {}
        self.signal(libc::SIGHUP);
        self.wait_for_log("datapath ready", Duration::from_secs(30));
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        // `ip netns exec` execs the agent, so the child pid is the agent's.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// The agent's process id (`ip netns exec` and the wrappers exec it, so it is the child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding state, config and socket.
    pub fn dir(&self) -> PathBuf {
        self.config
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }

    /// `kill -9`: no cleanup of any kind; the directory is kept for a restart.
    pub fn kill9(mut self) -> KeptDir {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.keep_dir = true;
        KeptDir(self.dir())
    }

    /// Runs the CLI against this agent's socket: `mirror-agent --socket … <args>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let out = std::process::Command::new(agent_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the mirror-agent CLI");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every session's counters as the agent lists them (copies, skips, errors by reason), for
    /// a failure message that has to tell copies lost in the data path from copies lost
    /// after it. Never panics: a failure to ask is part of the text.
    pub fn session_counters(&self) -> String {
        let out = self.cli(&["-o", "json", "call", "ListTrafficMirrorSessions"]);
        if out.code != 0 {
            return format!(
                "(ListTrafficMirrorSessions failed: {}{})",
                out.stdout, out.stderr
            );
        }
        out.stdout
    }

    /// An RPC action through the CLI's generic `call`; panics with the output unless it
    /// succeeded, and returns the JSON answer.
    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let kv: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["-o", "json", "call", action];
        args.extend(kv.iter().map(String::as_str));
        let out = self.cli(&args);
        assert_eq!(
            out.code,
            0,
            "{action} failed: {}\n{}\nagent log:\n{}",
            out.stdout,
            out.stderr,
            self.log_text()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{action}: answer is not JSON ({e}): {}", out.stdout))
    }

    /// Polls ListTrafficMirrorSessions until every session is Created (or `timeout`).
    pub fn wait_settled(&self, timeout: Duration) -> serde_json::Value {
        let timeout = crate::scaled(timeout);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let list = self.call("ListTrafficMirrorSessions", &[("MaxResults", "100")]);
            let settled = list["TrafficMirrorSessions"].as_array().is_some_and(|a| {
                a.iter()
                    .all(|s| s["TrafficMirrorSessionStatus"] == "Created")
            });
            if settled {
                return list;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sessions did not settle within {timeout:?}: {list}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: the agent leaves the data path running for the next one (unless it
    /// runs with `--detach-on-exit`). The directory and its pins go when the `Agent` drops.
    pub fn stop(mut self) -> String {
        self.stop_inner();
        self.log_text()
    }

    /// SIGTERM and wait, keeping the directory (and its pins): what the agent left running
    /// stays, for a restart or `cleanup` to find.
    pub fn terminate(mut self) -> KeptDir {
        // An agent that had to be killed skipped its orderly exit: every check the caller makes
        // next would fail for that reason, so say it here, with what the agent logged.
        assert!(
            self.stop_inner(),
            "agent did not exit on SIGTERM within {:?}:\n{}",
            crate::scaled(Duration::from_secs(10)),
            self.log_text()
        );
        self.keep_dir = true;
        KeptDir(self.dir())
    }

    /// `mirror-agent cleanup` for the agent that ran in `dir`, inside `ns`.
    pub fn cleanup(ns: &NetNs, dir: &std::path::Path) -> CliOutput {
        let out = ns
            .command(agent_binary().to_str().expect("utf-8 path"))
            .arg("cleanup")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pin-dir")
            .arg(dir.join("bpf").join("mirror-agent"))
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .output()
            .expect("running mirror-agent cleanup");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Unmounts and removes a directory an agent left with `terminate` or `kill9`.
    pub fn remove_dir(dir: &std::path::Path) {
        unmount_bpffs(dir);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SIGTERM, then SIGKILL if the agent has not exited in time; true if it exited by itself.
    fn stop_inner(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + crate::scaled(Duration::from_secs(10));
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_inner();
        if !self.keep_dir
            && let Some(dir) = self.config.parent()
        {
            unmount_bpffs(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The directory under an agent's pin dir (`<agent dir>/bpf/mirror-agent`) whose name starts
/// with `prefix` (`maps-`, `progs-`: their names carry the object's fingerprint).
pub fn pin_subdir(pins: &std::path::Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(pins)
        .unwrap_or_else(|e| panic!("pin dir {}: {e}", pins.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {prefix}* directory in {}", pins.display()))
}
