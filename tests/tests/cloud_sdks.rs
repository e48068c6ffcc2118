//! The clouds' own Python SDKs, unchanged but for the endpoint, against a real agent on a
//! non-loopback TCP listener with access keys: Alibaba's current SDK (ACS3-HMAC-SHA256) and
//! classic SDK (signature v1), Volcengine's and Huawei's. Each SDK's driver
//! (tests/sdk/*.py) calls every traffic-mirroring and flow-log operation its client has and
//! checks the answers' declared fields; the one session it leaves is then checked on the
//! wire (its copies arrive at the collector with its VNI) before the driver deletes it.
//! `signatures_are_checked_like_the_clouds` sends good and bad signatures of each algorithm.
//!
//! Requirements: root (namespaces, eBPF), the agent binary built, and the SDKs' virtualenv
//! (`cargo xtask setup` makes target/sdk-venv from tests/sdk/requirements.txt). Run with
//! `--test-threads=1`.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::Agent,
    capture::{self, Capture},
    topology::{COLLECTOR_ADDR, NODE_SRC_ADDR, Topology},
    traffic::Stream,
};

const AK: &str = "mirror-test-key";
/// Checked absent from the agent's log: secrets never appear there.
const SK: &str = "mirror-test-secret-3f9a";
/// A second pair, from a credentials file (a mounted Kubernetes Secret).
const AK_FILE: &str = "mirror-file-key";
const SK_FILE: &str = "mirror-file-secret-77c1";
const PORT: u16 = 18080;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn python() -> PathBuf {
    let venv = std::env::var_os("MIRROR_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/sdk-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask setup` (it makes the SDKs' virtualenv)",
        py.display()
    );
    py
}

struct Lab {
    agent: Agent,
    topo: Topology,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent whose API listens on the node's workload-facing address (not loopback) with one
/// inline access key and one from a file; `eni-collector` aliases the collector's address.
fn lab() -> Lab {
    let topo = Topology::new();
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("sdk"));
    std::fs::create_dir_all(&dir).expect("lab dir");
    let keys = dir.join("credentials");
    std::fs::write(&keys, format!("# a mounted Secret\n{AK_FILE}:{SK_FILE}\n")).expect("keys");
    let config = format!(
        r#"api_listen = "{NODE_SRC_ADDR}:{PORT}"

[api_credentials]
keys = [{{ access_key_id = "{AK}", access_key_secret = "{SK}" }}]
file = "{}"

[aliases]
"eni-collector" = "{COLLECTOR_ADDR}"
"#,
        keys.display()
    );
    let agent = Agent::start(&topo.node, &config);
    Lab { agent, topo, dir }
}

impl Lab {
    /// Runs `tests/sdk/<script> <phase>` in the workload namespace (the agent is another host
    /// from there); returns its output, or panics with it.
    fn driver(&self, script: &str, phase: &str, env: &[(&str, String)]) -> String {
        let mut cmd = self.topo.wl.command(python().to_str().expect("utf-8 path"));
        cmd.arg(workspace().join("tests/sdk").join(script))
            .arg(phase)
            .current_dir(workspace().join("tests/sdk"))
            .env("MIRROR_ENDPOINT", format!("{NODE_SRC_ADDR}:{PORT}"))
            .env("MIRROR_COLLECTOR_IP", COLLECTOR_ADDR)
            .env("MIRROR_STATE", self.dir.join(format!("{script}.json")))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running the SDK driver");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} {phase} failed\n--- stdout\n{stdout}\n--- stderr\n{}\n--- agent\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.agent.log_text()
        );
        stdout
    }

    /// Copies of the workload's traffic into src0 arrive at the collector, all with `vni`.
    fn copies_arrive(&self, vni: u32) {
        let mut cap = Capture::start(&self.topo.col, "col0", "udp port 4789");
        let stream = Stream::start(&self.topo.wl, NODE_SRC_ADDR, 7000);
        thread::sleep(Duration::from_millis(500));
        let sent = stream.stop();
        cap.wait_for_frames(sent as usize / 2, Duration::from_secs(5));
        let pcap = cap.stop();
        let copies = capture::vxlan_copies(&pcap, 4789);
        capture::remove(&pcap);
        let vnis: BTreeSet<u32> = copies.iter().map(|c| c.vni).collect();
        assert!(
            copies.len() as u32 >= sent / 2,
            "{} copies of {sent} packets",
            copies.len()
        );
        assert_eq!(
            vnis,
            BTreeSet::from([vni]),
            "copies carry the session's VNI"
        );
    }

    fn no_secret_in_log(&self) {
        let log = self.agent.log_text();
        for secret in [SK, SK_FILE] {
            assert!(!log.contains(secret), "a secret is in the agent's log");
        }
    }
}

/// Every operation the SDK's client has for traffic mirroring and flow logs, then the kept
/// session's copies on the wire, then the driver's deletes.
fn drive(script: &str, ops: &[&str], env: &[(&str, String)], vni: u32) {
    let lab = lab();
    let mut env = env.to_vec();
    env.push(("MIRROR_VNI", vni.to_string()));
    let started = Instant::now();
    let out = lab.driver(script, "setup", &env);
    assert!(
        out.lines().any(|l| l.starts_with("KEEP ")),
        "{script} kept a session: {out}"
    );
    let session = out
        .lines()
        .find_map(|l| l.strip_prefix("KEEP "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    lab.agent.wait_settled(Duration::from_secs(10));
    lab.copies_arrive(vni);
    let out = out + &lab.driver(script, "teardown", &env);
    let done: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&&str> = ops.iter().filter(|op| !done.contains(**op)).collect();
    assert!(
        missing.is_empty(),
        "{script}: not exercised: {missing:?}\n{out}"
    );
    let listed = lab.agent.call("ListTrafficMirrorSessions", &[]);
    assert!(
        !listed.to_string().contains(&session),
        "the SDK's delete reached the store: {listed}"
    );
    lab.no_secret_in_log();
    eprintln!(
        "{script}: {} operations in {:?}",
        done.len(),
        started.elapsed()
    );
}

#[test]
fn alibaba_tea_sdk_every_operation() {
    drive(
        "alibaba_tea.py",
        ALIBABA_OPS,
        &[("MIRROR_AK", AK.into()), ("MIRROR_SK", SK.into())],
        1001,
    );
}

/// Alibaba's operation list, the same in both of its SDKs.
const ALIBABA_OPS: &[&str] = &[
    "GetTrafficMirrorServiceStatus",
    "OpenTrafficMirrorService",
    "CreateTrafficMirrorFilter",
    "CreateTrafficMirrorFilterRules",
    "UpdateTrafficMirrorFilterRuleAttribute",
    "UpdateTrafficMirrorFilterAttribute",
    "ListTrafficMirrorFilters",
    "DeleteTrafficMirrorFilterRules",
    "CreateTrafficMirrorSession",
    "ListTrafficMirrorSessions",
    "AddSourcesToTrafficMirrorSession",
    "RemoveSourcesFromTrafficMirrorSession",
    "UpdateTrafficMirrorSessionAttribute",
    "GetFlowLogServiceStatus",
    "OpenFlowLogService",
    "CreateFlowLog",
    "DescribeFlowLogs",
    "ModifyFlowLogAttribute",
    "DeactiveFlowLog",
    "ActiveFlowLog",
    "DeleteFlowLog",
    "DeleteTrafficMirrorSession",
    "DeleteTrafficMirrorFilter",
];

#[test]
fn alibaba_classic_sdk_every_operation() {
    drive(
        "alibaba_classic.py",
        ALIBABA_OPS,
        &[("MIRROR_AK", AK.into()), ("MIRROR_SK", SK.into())],
        1002,
    );
}

#[test]
fn volcengine_sdk_every_operation() {
    drive(
        "volcengine.py",
        &[
            "CreateTrafficMirrorFilter",
            "CreateTrafficMirrorFilterRule",
            "ModifyTrafficMirrorFilterRuleAttributes",
            "ModifyTrafficMirrorFilterAttributes",
            "DescribeTrafficMirrorFilters",
            "DeleteTrafficMirrorFilterRule",
            "CreateTrafficMirrorTarget",
            "ModifyTrafficMirrorTargetAttributes",
            "DescribeTrafficMirrorTargets",
            "CreateTrafficMirrorSession",
            "DescribeTrafficMirrorSessions",
            "ModifyTrafficMirrorSessionAttributes",
            "CreateFlowLog",
            "DescribeFlowLogs",
            "ModifyFlowLogAttribute",
            "DeactiveFlowLog",
            "ActiveFlowLog",
            "DeleteFlowLog",
            "DeleteTrafficMirrorSession",
            "DeleteTrafficMirrorTarget",
            "DeleteTrafficMirrorFilter",
        ],
        &[("MIRROR_AK", AK.into()), ("MIRROR_SK", SK.into())],
        1003,
    );
}

/// Huawei's client, signed with the key from the credentials file.
#[test]
fn huawei_sdk_every_operation() {
    drive(
        "huawei.py",
        &[
            "CreateTrafficMirrorFilter",
            "CreateTrafficMirrorFilterRule",
            "UpdateTrafficMirrorFilterRule",
            "ShowTrafficMirrorFilterRule",
            "ListTrafficMirrorFilterRules",
            "DeleteTrafficMirrorFilterRule",
            "UpdateTrafficMirrorFilter",
            "ShowTrafficMirrorFilter",
            "ListTrafficMirrorFilters",
            "CreateTrafficMirrorSession",
            "AddSourcesToTrafficMirrorSession",
            "RemoveSourcesFromTrafficMirrorSession",
            "UpdateTrafficMirrorSession",
            "ShowTrafficMirrorSession",
            "ListTrafficMirrorSessions",
            "DeleteTrafficMirrorSession",
            "DeleteTrafficMirrorFilter",
        ],
        &[("MIRROR_AK", AK_FILE.into()), ("MIRROR_SK", SK_FILE.into())],
        1004,
    );
}

/// Each algorithm's right key passes; a wrong secret, an unknown key id, an expired
/// timestamp, a replayed nonce (Alibaba's two algorithms have one) and an unsigned request
/// each get that cloud's code and status (tests/sdk/auth_checks.py).
#[test]
fn signatures_are_checked_like_the_clouds() {
    let lab = lab();
    let out = lab.driver(
        "auth_checks.py",
        "run",
        &[("MIRROR_AK", AK.into()), ("MIRROR_SK", SK.into())],
    );
    for case in [
        "v1 right key",
        "v1 replayed nonce",
        "v1 wrong secret",
        "v1 unknown key",
        "v1 expired",
        "alibaba unsigned",
        "acs3 right key",
        "acs3 wrong secret",
        "acs3 unknown key",
        "acs3 expired",
        "acs3 replayed nonce",
        "volcengine right key",
        "volcengine wrong secret",
        "volcengine unknown key",
        "volcengine expired",
        "volcengine unsigned",
        "huawei right key",
        "huawei wrong secret",
        "huawei unknown key",
        "huawei expired",
        "huawei unsigned",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("OK {case}"))),
            "case {case:?} not passed:\n{out}"
        );
    }
    assert!(out.contains("DONE"), "{out}");
    lab.no_secret_in_log();
}

/// The CLI talks to a remote agent with an access key (`--endpoint`, `--access-key-id`, the
/// secret from MIRROR_AGENT_ACCESS_KEY_SECRET), signing as Alibaba's SDK does; a wrong
/// secret or no key gets the agent's refusal, and what the CLI made is in the one store.
#[test]
fn cli_signs_with_an_access_key() {
    let lab = lab();
    let endpoint = format!("http://{NODE_SRC_ADDR}:{PORT}");
    let cli = |args: &[&str], secret: Option<&str>| {
        let bin = mirror_tests::agent::agent_binary();
        let mut cmd = lab.topo.wl.command(bin.to_str().expect("utf-8 path"));
        cmd.args(["--endpoint", &endpoint]).args(args);
        cmd.env_remove("MIRROR_AGENT_ACCESS_KEY_SECRET");
        if let Some(s) = secret {
            cmd.env("MIRROR_AGENT_ACCESS_KEY_SECRET", s);
        }
        let out = cmd.output().expect("running the CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = cli(
        &[
            "--access-key-id",
            AK,
            "target",
            "create",
            "--destination-ip",
            COLLECTOR_ADDR,
        ],
        Some(SK),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let target = stdout.trim().to_string();
    assert!(target.starts_with("tmt-"), "{stdout}");
    let listed = lab.agent.call("ListTrafficMirrorTargets", &[]);
    assert!(listed.to_string().contains(&target), "{listed}");
    // The key from the credentials file works the same.
    let (code, stdout, stderr) = cli(
        &["--access-key-id", AK_FILE, "-o", "json", "target", "list"],
        Some(SK_FILE),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&target), "{stdout}");

    let (code, _, stderr) = cli(&["--access-key-id", AK, "target", "list"], Some("wrong"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    let (code, _, stderr) = cli(&["target", "list"], None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("MissingSignature"), "{stderr}");
    let (code, _, stderr) = cli(&["--access-key-id", AK, "target", "list"], None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("MIRROR_AGENT_ACCESS_KEY_SECRET"),
        "{stderr}"
    );
    lab.no_secret_in_log();
}
