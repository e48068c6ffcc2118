//! The deployment files are checked by the tools that exist for them here: yamllint for the
//! DaemonSet manifest, `systemd-analyze verify` for the unit, the agent's own config parser
//! for the example config. (No Dockerfile linter is packaged for Debian; the Dockerfile's
//! build steps are the README's.)

use std::{path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn daemonset_manifest_is_valid_yaml_with_least_privilege_and_probes() {
    let path = repo().join("deploy/daemonset.yaml");
    // No errors; long comment lines are fine.
    let report = ok(Command::new("yamllint")
        .args([
            "-d",
            "{extends: default, rules: {line-length: disable, document-start: disable}}",
        ])
        .arg(&path));
    assert!(!report.contains("error"), "{report}");
    let text = std::fs::read_to_string(&path).expect("manifest");
    for needle in [
        "hostNetwork: true",
        "privileged: false",
        "add: [\"BPF\", \"NET_ADMIN\", \"PERFMON\"]",
        "path: /healthz",
        "path: /readyz",
        "prometheus.io/scrape: \"true\"",
        "path: /sys/fs/bpf",
        "path: /var/lib/mirror-agent",
    ] {
        assert!(text.contains(needle), "daemonset.yaml lacks {needle:?}");
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/mirror-agent.service")).expect("unit");
    // verify checks that ExecStart exists: point it at the binary the tests built.
    let binary = mirror_tests::agent::agent_binary();
    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("unit"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("mirror-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/mirror-agent",
            binary.to_str().expect("utf-8 path"),
        ),
    )
    .expect("writing the unit");
    let result =
        std::panic::catch_unwind(|| ok(Command::new("systemd-analyze").arg("verify").arg(&path)));
    let _ = std::fs::remove_dir_all(&dir);
    let report = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        !report.contains("mirror-agent.service:"),
        "systemd-analyze complains: {report}"
    );
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
}

#[test]
fn example_config_parses_and_validates() {
    let cfg = mirror_agent::config::FileConfig::load(&repo().join("deploy/example.toml"))
        .expect("deploy/example.toml parses");
    cfg.objects().expect("deploy/example.toml validates");
}
