use which::which;

/// Rebuild the programs when bpf-linker changes: it is what turns rustc's bitcode into the
/// object the kernel verifies, and cargo cannot see it as a dependency.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
