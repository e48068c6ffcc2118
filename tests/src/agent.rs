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
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
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
}

impl Agent {
    /// Writes `config` to a temporary file and starts `mirror-agent run --config …` in `ns`;
    /// returns once the agent reports the data path ready.
    pub fn start(ns: &NetNs, config: &str) -> Agent {
        let dir = std::env::temp_dir().join(crate::netns::unique("agt"));
        std::fs::create_dir_all(&dir).expect("agent temp dir");
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).expect("writing the agent config");
        let state_dir = dir.join("state");
        let mut child = ns
            .command(agent_binary().to_str().expect("utf-8 path"))
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--state-dir")
            .arg(&state_dir)
            // Each agent its own socket: tests run agents in several namespaces of one host.
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .env("RUST_LOG", "info")
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
        };
        agent.wait_for_log("datapath ready", Duration::from_secs(30));
        agent
    }

    /// Waits for a log line containing `needle`; panics with the whole log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
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

    /// SIGTERM and wait: the agent detaches everything it attached.
    pub fn stop(mut self) -> String {
        self.stop_inner();
        self.log_text()
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_inner();
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
