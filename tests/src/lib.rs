//! Support for the kernel tests: network namespaces and veth links that clean up after
//! themselves, packet capture and independent decoding (tcpdump, tshark), test packets, and
//! the real agent binary run inside a namespace.

pub mod agent;
pub mod capture;
pub mod fakeapi;
pub mod fixture;
pub mod http;
pub mod model;
pub mod netns;
pub mod packets;
pub mod pktgen;
pub mod sockopt;
pub mod tcx;
pub mod topology;
pub mod traffic;

/// How much slower than the host this run's machine is: `MIRROR_TEST_TIME_SCALE` (set by
/// `cargo xtask test --kernel …` for its VM, 10 under TCG emulation), 1 otherwise. Deadlines
/// are waits for something that must happen; a slow VM gets longer waits, never weaker checks.
pub fn time_scale() -> u32 {
    std::env::var("MIRROR_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&s| s >= 1)
        .unwrap_or(1)
}

/// A deadline scaled by [`time_scale`].
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * time_scale()
}

/// Whether the running kernel is at least `major.minor` (from /proc/sys/kernel/osrelease).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version() >= (major, minor)
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
