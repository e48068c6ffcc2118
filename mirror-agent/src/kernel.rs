//! What the running kernel offers of the features the data path depends on, found once at
//! start. The agent adapts to each missing one (clsact instead of TCX, no drop accounting
//! where the tracepoint cannot give what it needs) and reports it: one log line, a
//! `degraded: kernel feature …` line in `/healthz` per missing feature, and
//! `mirror_kernel_feature{feature}` 1/0.
//!
//! Tested kernels: the host's (6.18, everything present) and Debian 12's 6.1 in a VM
//! (`cargo xtask test --kernel 6.1`), where `tcx` is missing.

use std::path::Path;

use aya::util::KernelVersion;

/// One feature: whether this kernel has it, and what the agent does without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// The `feature` label of `mirror_kernel_feature`.
    pub name: &'static str,
    /// The upstream release that brought it.
    pub since: &'static str,
    pub present: bool,
    /// What the agent does on a kernel without it.
    pub without: &'static str,
}

#[derive(Debug, Clone)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    pub features: Vec<Feature>,
}

/// TCX links (6.6): the source, uplink and receiver programs attach through them.
pub const TCX: &str = "tcx";
/// The drop reason as the `skb:kfree_skb` tracepoint's third argument (5.17): REJECT flow
/// records with the kernel's reason.
pub const DROP_REASON: &str = "drop_reason";
/// XDP programs declared frags-aware (`BPF_F_XDP_HAS_FRAGS`, 5.18): `rx_pass` on the capture
/// veths, which carry frames up to 9000 bytes.
pub const XDP_FRAGS: &str = "xdp_frags";
/// Hash maps allocated at run time (`BPF_F_NO_PREALLOC`, the flow tables) written from a
/// tracing program (`flow_drop`): safe since the BPF memory allocator (6.1); before it a
/// kernel WARN, and refused on PREEMPT_RT.
pub const TRACING_RUNTIME_ALLOC: &str = "tracing_runtime_alloc";
/// The kernel's own BTF (`/sys/kernel/btf/vmlinux`): the `sk_buff` layout `flow_drop` and the
/// source programs read, and the drop reasons' names.
pub const KERNEL_BTF: &str = "kernel_btf";

/// Features to treat as missing (comma-separated names) although the kernel has them: the
/// degraded paths can then be exercised, and are tested, on a kernel that has everything. The
/// agent warns when it is set.
pub const PRETEND_MISSING_ENV: &str = "MIRROR_AGENT_KERNEL_WITHOUT";

fn at_least(v: Option<KernelVersion>, major: u8, minor: u8) -> bool {
    v.is_some_and(|v| v >= KernelVersion::new(major, minor, 0))
}

/// A PREEMPT_RT kernel (`/sys/kernel/realtime`, or the build string `uname -v` shows).
fn preempt_rt() -> bool {
    let realtime = std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1");
    let version =
        std::fs::read_to_string("/proc/sys/kernel/version").is_ok_and(|s| s.contains("PREEMPT_RT"));
    realtime || version
}

impl KernelReport {
    /// The running kernel's report.
    pub fn probe() -> KernelReport {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let version = KernelVersion::current().ok();
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        let mut report = KernelReport::new(release, version, btf, preempt_rt());
        if let Ok(names) = std::env::var(PRETEND_MISSING_ENV) {
            report.pretend_missing(&names);
        }
        report
    }

    /// Marks the features named in `names` (comma-separated) missing; unknown names are
    /// ignored. See [`PRETEND_MISSING_ENV`].
    pub fn pretend_missing(&mut self, names: &str) {
        for name in names.split(',').map(str::trim) {
            if let Some(f) = self.features.iter_mut().find(|f| f.name == name) {
                f.present = false;
            }
        }
    }

    /// The report for a kernel of `version` (None: unknown, everything counted missing).
    pub fn new(
        release: String,
        version: Option<KernelVersion>,
        btf: bool,
        preempt_rt: bool,
    ) -> KernelReport {
        let features = vec![
            Feature {
                name: TCX,
                since: "6.6",
                // The same test `--tc-attach auto` makes (TcAttachMode::uses_tcx).
                present: at_least(version, 6, 6),
                without: "programs attach as clsact cls_bpf filters (--tc-attach auto picks clsact)",
            },
            Feature {
                name: DROP_REASON,
                since: "5.17",
                present: at_least(version, 5, 17),
                without: "no drop accounting: flow logs have no REJECT records",
            },
            Feature {
                name: XDP_FRAGS,
                since: "5.18",
                present: at_least(version, 5, 18),
                without: "receivers unavailable (rx_pass is frags-aware)",
            },
            Feature {
                name: TRACING_RUNTIME_ALLOC,
                since: "6.1, not PREEMPT_RT",
                present: at_least(version, 6, 1) && !preempt_rt,
                without: "no drop accounting: the flow tables are allocated at run time and \
                          flow_drop, a tracing program, may not write them here",
            },
            Feature {
                name: KERNEL_BTF,
                since: "CONFIG_DEBUG_INFO_BTF",
                present: btf,
                without: "no drop accounting, and checksums left to offload are not recognised",
            },
        ];
        KernelReport { release, features }
    }

    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.present)
    }

    pub fn missing(&self) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(|f| !f.present)
    }

    /// Whether `flow_drop` may run here, and why not.
    pub fn drop_accounting(&self) -> Result<(), String> {
        match self
            .missing()
            .find(|f| [DROP_REASON, TRACING_RUNTIME_ALLOC, KERNEL_BTF].contains(&f.name))
        {
            Some(f) => Err(format!("kernel feature {} ({}+) missing", f.name, f.since)),
            None => Ok(()),
        }
    }

    /// The log line's features: `tcx=no drop_reason=yes …`.
    pub fn summary(&self) -> String {
        self.features
            .iter()
            .map(|f| format!("{}={}", f.name, if f.present { "yes" } else { "no" }))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One probe line per missing feature (after `degraded: `).
    pub fn degradations(&self) -> Vec<String> {
        self.missing()
            .map(|f| {
                format!(
                    "kernel feature {} missing (Linux {}+; this is {}): {}",
                    f.name, f.since, self.release, f.without
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_one_lacks_only_tcx() {
        let r = KernelReport::new(
            "6.1.0-57-amd64".into(),
            Some(KernelVersion::new(6, 1, 0)),
            true,
            false,
        );
        let missing: Vec<_> = r.missing().map(|f| f.name).collect();
        assert_eq!(missing, [TCX]);
        assert!(r.drop_accounting().is_ok());
        assert!(
            r.degradations()[0]
                .starts_with("kernel feature tcx missing (Linux 6.6+; this is 6.1.0-57-amd64)")
        );
    }

    #[test]
    fn older_kernels_and_preempt_rt_lose_drop_accounting() {
        let r = KernelReport::new(
            "5.15.0".into(),
            Some(KernelVersion::new(5, 15, 0)),
            true,
            false,
        );
        let missing: Vec<_> = r.missing().map(|f| f.name).collect();
        // Ubuntu 22.04's 5.15.
        assert_eq!(
            missing,
            [TCX, DROP_REASON, XDP_FRAGS, TRACING_RUNTIME_ALLOC]
        );
        assert!(r.drop_accounting().is_err());
        let r = KernelReport::new(
            "5.14.0".into(),
            Some(KernelVersion::new(5, 14, 0)),
            true,
            false,
        );
        assert!(!r.has(DROP_REASON) && !r.has(XDP_FRAGS));
        let rt = KernelReport::new(
            "6.6.0-rt".into(),
            Some(KernelVersion::new(6, 6, 0)),
            true,
            true,
        );
        assert_eq!(
            rt.missing().map(|f| f.name).collect::<Vec<_>>(),
            [TRACING_RUNTIME_ALLOC]
        );
        let all = KernelReport::new(
            "6.18.0".into(),
            Some(KernelVersion::new(6, 18, 0)),
            true,
            false,
        );
        assert_eq!(all.missing().count(), 0);
        assert!(all.summary().starts_with("tcx=yes drop_reason=yes"));
    }
}
