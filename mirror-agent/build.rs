use anyhow::{Context as _, anyhow};

#[path = "build/btf_names.rs"]
mod btf_names;

/// Builds the eBPF programs (the `mirror` binary of `mirror-ebpf`) for the BPF target with the
/// nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`,
/// with its BTF's type names made acceptable to the kernel (see `build/btf_names.rs`).
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "mirror-ebpf")
        .ok_or_else(|| anyhow!("mirror-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("mirror-ebpf manifest has no parent"))?;
    // The benchmark's programs only when a benchmark build asks for them (the feature of the
    // same name): the agent's object carries only what it runs.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH_PROGRAMS").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    println!("cargo:rerun-if-changed=build/btf_names.rs");
    let object = std::path::Path::new(&std::env::var("OUT_DIR").context("OUT_DIR")?).join("mirror");
    let mut bytes =
        std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let changed =
        btf_names::sanitize(&mut bytes).map_err(|e| anyhow!("BTF of {}: {e}", object.display()))?;
    if !changed.is_empty() {
        std::fs::write(&object, &bytes).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
