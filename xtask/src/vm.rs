//! The kernel-state tests on another kernel, in a VM: `cargo xtask test --kernel 6.1` and the
//! same pass at the end of `cargo xtask test`.
//!
//! The kernel is Debian 12's (`linux-image-amd64`, 6.1, what Debian 12 and Amazon Linux 2023
//! fleets run), booted by virtme-ng with this machine's root filesystem (read-only 9p), so the
//! test binaries are the ones built here and the tools they run (ip, tcpdump, tshark, nft) are
//! the host's. Only a subset runs (see [`VM_TESTS`] and the README's "Kernels" section): the
//! VM is emulated (TCG) on these machines and CI has 40 minutes in all.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{apt_install, cargo, output, root, run};

/// virtme-ng from PyPI at a pinned version, in its own virtual environment.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// Debian packages the VM pass needs: the emulator, the busybox virtme-ng's initramfs is built
/// from, and the Debian 12 kernel with its modules (veth, vxlan, sch_ingress …) in /lib/modules,
/// which the guest sees through the shared root.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "linux-image-amd64"];

/// Which tests run in the VM, by test binary and exact test name (all of a binary when none
/// is named). Chosen to cover every place the code depends on the kernel version within the
/// time CI has (about 8 minutes under TCG, where one agent start takes ~20 s): the kernel
/// feature report and the clsact choice; both receiver programs through the 6.1 verifier
/// (the fixture table); the source programs on clsact end to end, with a restart adopting the filters
/// in place; REJECT records with drop reasons from the BTF tracepoint; a program the kernel
/// refuses. Left out for time: mirror_fixtures (the source programs load in every test
/// here), the other receiver fixtures, receiver_e2e (~2 min per test under TCG), restart (its
/// checks are of TCX links). Measured under TCG: 399 s for this list; 517 s with all three
/// receiver fixtures; receiver_e2e's clsact kill -9 takeover passes on 6.1 in 119 s more.
pub const VM_TESTS: &[(&str, &[&str])] = &[
    // The other test of the file pretends a feature is missing: the same on any kernel.
    (
        "kernel_features",
        &["the_agent_reports_the_kernels_features_and_adapts_to_missing_ones"],
    ),
    ("receiver_fixtures", &["receive_program_fixtures"]),
    ("mirror_e2e", &["clsact_fallback_mirrors_too"]),
    (
        "flowlog_e2e",
        &["nftables_drops_are_reject_records_with_the_drop_reason"],
    ),
    (
        "faults",
        &["a_rejected_program_is_reported_and_the_agent_keeps_serving"],
    ),
];

/// The whole VM pass (boot included) may take this long; a guest that hangs is killed and the
/// run fails, rather than eating the rest of CI's budget.
const VM_TIMEOUT: Duration = Duration::from_secs(12 * 60);

/// How long a KVM guest may take to boot and print `uname -r` before TCG is used instead.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernels `--kernel` accepts: version → Debian package whose /boot/vmlinuz-* it boots.
fn kernel_image(kernel: &str) -> Result<PathBuf> {
    if kernel != "6.1" {
        bail!("--kernel {kernel}: only 6.1 (Debian 12's linux-image-amd64) is set up");
    }
    let mut images: Vec<PathBuf> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.1."))
        })
        .collect();
    images.sort();
    images
        .pop()
        .context("no /boot/vmlinuz-6.1.* after installing linux-image-amd64")
}

/// target/vm-venv with virtme-ng; reinstalled only when the pinned version changes.
fn virtme_venv() -> Result<PathBuf> {
    let venv = root().join("target/vm-venv");
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(VIRTME_NG) {
        return Ok(venv);
    }
    if !venv.join("bin/python").exists() {
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))?;
    std::fs::write(&stamp, VIRTME_NG).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}

/// Builds the agent and the test binaries of [`VM_TESTS`]; returns each binary's path.
fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    run(cargo().args(["build", "-q", "-p", "mirror-agent"]))?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-q",
        "-p",
        "tests",
        "--no-run",
        "--message-format=json",
    ]);
    for (test, _) in VM_TESTS {
        cmd.args(["--test", test]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the VM's test binaries failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for (test, _) in VM_TESTS {
        // One JSON message per artifact; the test target's has `"executable":"…/deps/<name>-<hash>"`.
        let exe = text
            .lines()
            .filter_map(|l| l.split("\"executable\":\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .find(|path| {
                Path::new(path)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.rsplit_once('-'))
                    .is_some_and(|(name, _)| name == *test)
            })
            .with_context(|| format!("no test binary for {test} in cargo's output"))?;
        found.push((test.to_string(), PathBuf::from(exe)));
    }
    Ok(found)
}

/// The script the guest runs as its only command: bpffs and tracefs mounted, every socket and
/// state directory on a VM-local tmpfs (the shared root is read-only 9p and the guest's /tmp
/// an overlay on it, where a Unix socket cannot be bound reliably), then each test binary in
/// turn; it exits non-zero if any failed.
fn guest_script(binaries: &[(String, PathBuf)], scale: u32) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         set -u\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
         mkdir -p /run/mirror-vm && mount -t tmpfs -o mode=1777 tmpfs /run/mirror-vm\n\
         export TMPDIR=/run/mirror-vm\n",
    );
    s += &format!("export MIRROR_TEST_TIME_SCALE={scale}\n");
    s += "echo \"VM kernel (uname -r inside the VM): $(uname -r)\"\n\
          failed=''\n";
    for (name, exe) in binaries {
        let filters = VM_TESTS
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let mut args = String::from("--test-threads=1");
        if !filters.is_empty() {
            args += " --exact";
            for f in filters {
                args += &format!(" {f}");
            }
        }
        s += &format!(
            "echo '== VM: {name} {args}'\n\
             start=$(date +%s)\n\
             if ! {exe} {args}; then failed=\"$failed {name}\"; fi\n\
             echo \"== VM: {name} took $(( $(date +%s) - start )) s\"\n",
            exe = exe.display()
        );
    }
    s += "if [ -n \"$failed\" ]; then echo \"VM: failed:$failed\"; exit 1; fi\n\
          echo 'VM: every test passed'\n";
    s
}

/// Starts `vng` in its own process group (so a timeout kills qemu with it), echoes its output
/// and waits up to `timeout`. Ok(true) when the guest command succeeded.
fn vng(venv: &Path, image: &Path, kvm: bool, exec: &str, timeout: Duration) -> Result<bool> {
    let mut cmd = Command::new(venv.join("bin/vng"));
    // vng runs virtme-run from PATH.
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .arg("-r")
        .arg(image)
        .args(["--cpus", "2", "--memory", "2G"]);
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    // Both streams through pipes we echo: virtme-ng reopens its stderr for writing, which
    // truncates it when it is a file (CI's log), losing everything printed before the VM.
    cmd.args(["--exec", exec])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().context("starting vng")?;
    let stdout = child.stdout.take().context("vng stdout")?;
    let stderr = child.stderr.take().context("vng stderr")?;
    let echo_err = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let (tx, rx) = mpsc::channel::<()>();
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
        let _ = tx.send(());
    });
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for vng")? {
            let _ = rx.recv_timeout(Duration::from_secs(5));
            let _ = echo.join();
            let _ = echo_err.join();
            return Ok(status.success());
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the process group we made for vng and qemu.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            eprintln!("vm: no answer within {timeout:?}: the guest was killed");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// KVM when a guest boots with it, else TCG. On these machines KVM fails (qemu cannot set MSR
/// 0x10a for `-cpu host`) or hangs at early boot; the answer is kept in target/vm so later runs
/// do not pay for the probe again.
fn use_kvm(venv: &Path, image: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let host = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cache = root().join("target/vm").join(format!(
        "kvm-{}-{}",
        host.trim(),
        image
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("kernel")
    ));
    if let Ok(answer) = std::fs::read_to_string(&cache) {
        return Ok(answer.trim() == "yes");
    }
    eprintln!("vm: probing KVM (falls back to TCG emulation)");
    let ok = vng(venv, image, true, "uname -r", KVM_PROBE_TIMEOUT)?;
    std::fs::write(&cache, if ok { "yes" } else { "no" })
        .with_context(|| format!("writing {}", cache.display()))?;
    Ok(ok)
}

/// `cargo xtask test --kernel <kernel>`: boots the kernel and runs [`VM_TESTS`] inside.
pub fn test_kernel(kernel: &str) -> Result<()> {
    let started = Instant::now();
    apt_install(VM_PACKAGES)?;
    let image = kernel_image(kernel)?;
    let venv = virtme_venv()?;
    let binaries = build_tests()?;
    std::fs::create_dir_all(root().join("target/vm")).context("creating target/vm")?;
    let kvm = use_kvm(&venv, &image)?;
    // Deadlines in the tests' helpers are multiplied by this: TCG runs the guest several
    // times slower than the host.
    let scale = if kvm { 2 } else { 10 };
    let script = root().join(format!("target/vm/run-{kernel}.sh"));
    std::fs::write(&script, guest_script(&binaries, scale))
        .with_context(|| format!("writing {}", script.display()))?;
    eprintln!(
        "vm: Linux {kernel} ({}) under {}, test deadlines x{scale}",
        image.display(),
        if kvm { "KVM" } else { "TCG" }
    );
    let booted = Instant::now();
    let ok = vng(
        &venv,
        &image,
        kvm,
        &format!("sh {}", script.display()),
        VM_TIMEOUT,
    )?;
    eprintln!(
        "vm: the Linux {kernel} pass took {} s (the VM, boot to power-off: {} s)",
        started.elapsed().as_secs(),
        booted.elapsed().as_secs()
    );
    if !ok {
        bail!("the test pass on Linux {kernel} failed");
    }
    Ok(())
}
