use anyhow::{Context as _, anyhow};

/// Builds the eBPF programs (the `mirror` binary of `mirror-ebpf`) for the BPF target with the
/// nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
