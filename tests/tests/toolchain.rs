//! The workspace's `rust-version` says what the code really needs: the newest of what our own
//! code uses (let-chains in `if let … && …`, stable since 1.88) and of what every dependency
//! built for Linux declares. Too low, and a user on that toolchain gets a dependency's error
//! instead of cargo's clear "requires rustc X"; higher than needed turns users away for nothing.
//! No rustc other than the pinned ones is installed here, so this reads `cargo metadata`
//! instead of building with an old toolchain.

use std::{path::Path, process::Command};

/// What our own code needs: let-chains (Rust 1.88).
const OWN_CODE_NEEDS: (u64, u64) = (1, 88);

fn parse_version(text: &str) -> (u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn metadata() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata JSON")
}

#[test]
fn rust_version_is_what_the_code_and_its_dependencies_need() {
    let meta = metadata();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let resolved: Vec<&str> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let packages = meta["packages"].as_array().expect("packages");

    let mut declared = Vec::new();
    let mut needed = (OWN_CODE_NEEDS, "let-chains in our own code".to_string());
    for package in packages {
        let id = package["id"].as_str().unwrap_or_default();
        let name = package["name"].as_str().unwrap_or_default();
        let version = package["rust_version"].as_str();
        if members.contains(&id) {
            declared.push((name.to_string(), version.map(parse_version)));
        } else if resolved.contains(&id)
            && let Some(version) = version.map(parse_version)
            && version > needed.0
        {
            needed = (version, format!("{name} {}", package["version"]));
        }
    }

    assert!(
        !declared.is_empty(),
        "no workspace members in cargo metadata"
    );
    for (name, version) in &declared {
        assert_eq!(
            *version,
            Some(needed.0),
            "{name}: rust-version {version:?}, but the code needs {}.{} ({}); every member \
             inherits the workspace's `rust-version`, which must be exactly that",
            needed.0.0,
            needed.0.1,
            needed.1
        );
    }
}
