#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on shared flow counters: the BPF target lacks `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod programs;

/// Host builds (`cargo build --workspace`, clippy on the host) get an empty binary; the real
/// one only exists for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
