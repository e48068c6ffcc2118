//! The Kubernetes manifests, checked offline by the tools that exist for them here (no API
//! server can be installed on these machines): the committed CRDs are exactly what
//! `mirror-agent crds` generates from the Rust types; `kubectl kustomize` renders the base;
//! `kubernetes-validate --strict` accepts everything it renders (CRDs, RBAC, the
//! Kubernetes-mode DaemonSet) and deploy/daemonset.yaml as the API's schemas define them; the
//! agent's ClusterRole is exactly what its requests need; the example custom resources pass the generated schemas and bad ones are
//! refused with the reason (tests/sdk/validate_crs.py applies each CRD's openAPIV3Schema as
//! the API server does, unknown fields refused).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use mirror_tests::agent::agent_binary;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("MIRROR_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/sdk-venv"));
    let p = venv.join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup`",
        p.display()
    );
    p
}

/// (success, stdout + stderr)
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const CRDS: &str = "deploy/kubernetes/base/crds.yaml";

#[test]
fn committed_crds_are_generated_from_the_types() {
    let out = Command::new(agent_binary())
        .arg("crds")
        .output()
        .expect("mirror-agent crds");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let committed = std::fs::read_to_string(repo().join(CRDS)).expect("committed CRDs");
    assert!(
        generated == committed,
        "{CRDS} is stale: regenerate it with `target/debug/mirror-agent crds > {CRDS}`"
    );
}

#[test]
fn kustomize_renders_and_the_api_schemas_accept_crds_rbac_and_daemonsets() {
    let (ok, rendered) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy/kubernetes/base")));
    assert!(ok, "kubectl kustomize: {rendered}");
    for kind in [
        "trafficmirrorfilters",
        "trafficmirrortargets",
        "trafficmirrorsessions",
        "trafficmirrorreceivers",
        "flowlogs",
        "mirrornodestates",
    ] {
        assert!(
            rendered.contains(&format!("name: {kind}.mirror-agent.io")),
            "{kind} missing from the rendered base"
        );
    }
    let dir = std::env::temp_dir().join(format!("k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("write rendered");
    for manifest in [file.clone(), repo().join("deploy/daemonset.yaml")] {
        let (ok, report) = run(Command::new(venv_bin("kubernetes-validate"))
            .arg("--strict")
            .arg(&manifest));
        assert!(ok, "{}: {report}", manifest.display());
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "{}: {report}",
            manifest.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The base as `kubectl kustomize` renders it, one JSON value per object (PyYAML of the
/// validator's venv reads the YAML).
fn rendered_base() -> Vec<serde_json::Value> {
    rendered("deploy/kubernetes/base")
}

/// A kustomization under the repository as `kubectl kustomize` renders it, as JSON values.
fn rendered(dir: &str) -> Vec<serde_json::Value> {
    let (ok, rendered) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join(dir)));
    assert!(ok, "kubectl kustomize: {rendered}");
    let mut child = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rendered.as_bytes())
        .expect("feed YAML");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

fn object<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} missing from the rendered base"))
}

/// Each "group/resource verb" of every resource with every verb.
fn grants(resources: &[&str], verbs: &[&str]) -> std::collections::BTreeSet<String> {
    resources
        .iter()
        .flat_map(|r| verbs.iter().map(move |v| format!("{r} {v}")))
        .collect()
}

/// Every (group/resource verb) a ClusterRole or Role grants.
fn granted(role: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut granted = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for g in rule["apiGroups"].as_array().expect("apiGroups") {
            for r in rule["resources"].as_array().expect("resources") {
                for v in rule["verbs"].as_array().expect("verbs") {
                    granted.insert(format!(
                        "{}/{} {}",
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap()
                    ));
                }
            }
        }
    }
    granted
}

/// The agent's ClusterRole grants exactly what the node controller's requests need
/// (mirror-agent/src/kubernetes/node.rs and status.rs): read the mirror resources, pods,
/// namespaces and nodes; create and server-side apply MirrorNodeStates and their status.
/// Nothing else (no secrets, no wildcards, no writes to the mirror resources).
#[test]
fn agent_rbac_is_least_privilege() {
    let docs = rendered_base();
    let granted = granted(object(&docs, "ClusterRole", "mirror-agent-node"));
    let mut want = grants(
        &[
            "mirror-agent.io/trafficmirrorfilters",
            "mirror-agent.io/trafficmirrortargets",
            "mirror-agent.io/trafficmirrorsessions",
            "mirror-agent.io/trafficmirrorreceivers",
            "mirror-agent.io/flowlogs",
            "/pods",
            "/namespaces",
            "/nodes",
        ],
        &["get", "list", "watch"],
    );
    want.extend(grants(
        &["mirror-agent.io/mirrornodestates"],
        &["get", "create", "patch"],
    ));
    want.extend(grants(
        &["mirror-agent.io/mirrornodestates/status"],
        &["get", "patch"],
    ));
    assert_eq!(granted, want);
    let binding = object(&docs, "ClusterRoleBinding", "mirror-agent-node");
    assert_eq!(binding["roleRef"]["name"], "mirror-agent-node");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "mirror-agent", "namespace": "mirror-agent"}])
    );
    object(&docs, "ServiceAccount", "mirror-agent");
}

/// The controller reads sessions, filters, targets and node states, writes only sessions'
/// status, and holds its Lease in its own namespace; its pod has no host access.
#[test]
fn controller_rbac_is_least_privilege_and_its_pod_unprivileged() {
    let docs = rendered_base();
    let mut want = grants(
        &[
            "mirror-agent.io/trafficmirrorsessions",
            "mirror-agent.io/trafficmirrorfilters",
            "mirror-agent.io/trafficmirrortargets",
            "mirror-agent.io/mirrornodestates",
        ],
        &["get", "list", "watch"],
    );
    want.extend(grants(
        &["mirror-agent.io/trafficmirrorsessions/status"],
        &["get", "patch"],
    ));
    assert_eq!(
        granted(object(&docs, "ClusterRole", "mirror-agent-controller")),
        want
    );
    let lease = object(&docs, "Role", "mirror-agent-controller-lease");
    assert_eq!(lease["metadata"]["namespace"], "mirror-agent");
    assert_eq!(
        granted(lease),
        grants(
            &["coordination.k8s.io/leases"],
            &["get", "create", "update"]
        )
    );
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let name = if kind == "RoleBinding" {
            "mirror-agent-controller-lease"
        } else {
            "mirror-agent-controller"
        };
        assert_eq!(
            object(&docs, kind, name)["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "mirror-agent-controller", "namespace": "mirror-agent"}])
        );
    }
    let pod = &object(&docs, "Deployment", "mirror-agent-controller")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "mirror-agent-controller");
    assert!(pod.get("hostNetwork").is_none());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "controller");
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["securityContext"]["capabilities"].get("add").is_none());
    let env = c["env"].to_string();
    assert!(
        env.contains("POD_NAME") && env.contains("POD_NAMESPACE"),
        "{env}"
    );
}

/// The example overlay changes what it says and nothing breaks: kubernetes-validate accepts
/// it, the image, node selector and tolerations are the overlay's, the metrics port moved
/// everywhere at once, and the agent parses the patched agent.toml.
#[test]
fn example_overlay_renders_validates_and_changes_what_it_says() {
    let dir = "deploy/kubernetes/overlays/example";
    let (ok, text) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join(dir)));
    assert!(ok, "{text}");
    let tmp = std::env::temp_dir().join(format!("k8s-overlay-{}.yaml", std::process::id()));
    std::fs::write(&tmp, &text).expect("write rendered overlay");
    let (ok, report) = run(Command::new(venv_bin("kubernetes-validate"))
        .arg("--strict")
        .arg(&tmp));
    let _ = std::fs::remove_file(&tmp);
    assert!(
        ok && !report.contains("WARN") && !report.contains("ERROR"),
        "{report}"
    );
    assert!(
        !text.contains("9464"),
        "the base's metrics port is left somewhere"
    );
    let docs = rendered(dir);
    let pod = &object(&docs, "DaemonSet", "mirror-agent")["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        "registry.example.com/mirror-agent:0.1.0"
    );
    assert_eq!(
        spec["nodeSelector"],
        serde_json::json!({"mirror-agent.io/enabled": "true"})
    );
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let agent = &spec["containers"][0];
    assert_eq!(agent["ports"][0]["containerPort"], 9500);
    assert_eq!(agent["livenessProbe"]["httpGet"]["port"], 9500);
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], 9500);
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9500");
    let controller =
        &object(&docs, "Deployment", "mirror-agent-controller")["spec"]["template"]["spec"];
    assert_eq!(
        controller["containers"][0]["image"],
        "registry.example.com/mirror-agent:0.1.0"
    );
    let toml_text = object(&docs, "ConfigMap", "mirror-agent")["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml");
    let file: mirror_agent::config::FileConfig =
        toml::from_str(toml_text).expect("agent.toml parses");
    assert_eq!(file.metrics_listen.as_deref(), Some("0.0.0.0:9500"));
    assert_eq!(
        file.ipfix_collector,
        Some("10.20.0.16:4739".parse().unwrap())
    );
    assert_eq!(file.flow_log_format.as_deref(), Some("aws"));
}

/// The base's DaemonSet runs the agent in Kubernetes mode as the bound service account,
/// with its node's name from the downward API.
#[test]
fn daemonset_runs_kubernetes_mode_with_the_node_name() {
    let docs = rendered_base();
    let ds = object(&docs, "DaemonSet", "mirror-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "mirror-agent");
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    let args: Vec<&str> = agent["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--kubernetes"), "{args:?}");
    let env = agent["env"].as_array().expect("env");
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        caps["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    assert_eq!(agent["securityContext"]["privileged"], false);
}

fn validate(resources: &Path) -> (bool, String) {
    run(Command::new(venv_bin("python"))
        .arg(repo().join("tests/sdk/validate_crs.py"))
        .arg(repo().join(CRDS))
        .arg(resources))
}

#[test]
fn example_resources_pass_the_crd_schemas() {
    let (ok, report) = validate(&repo().join("deploy/kubernetes/examples/payments.yaml"));
    assert!(ok, "{report}");
    for r in [
        "TrafficMirrorFilter/https",
        "TrafficMirrorTarget/ids",
        "TrafficMirrorSession/payments",
        "TrafficMirrorReceiver/ids-node",
        "FlowLog/payments",
    ] {
        assert!(report.contains(&format!("ok {r}")), "{report}");
    }
}

/// Each bad object is refused by the schema (so the API server refuses it), with the field.
#[test]
fn bad_resources_are_refused_by_the_schemas() {
    let session = |spec: &str| {
        format!(
            "apiVersion: mirror-agent.io/v1alpha1\nkind: TrafficMirrorSession\nmetadata: {{name: s}}\nspec:\n  filterRef: f\n  targetRef: t\n  sources: {{interfaces: [eth0]}}\n{spec}"
        )
    };
    let rule = |r: &str| {
        format!(
            "apiVersion: mirror-agent.io/v1alpha1\nkind: TrafficMirrorFilter\nmetadata: {{name: f}}\nspec:\n  ingressRules:\n  - {{{r}}}\n"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("priority 0", session("  priority: 0\n  virtualNetworkId: 1\n"), "priority"),
        ("priority too high", session("  priority: 32767\n  virtualNetworkId: 1\n"), "priority"),
        ("VNI past 24 bits", session("  priority: 1\n  virtualNetworkId: 16777216\n"), "virtualNetworkId"),
        (
            "packet length below 64",
            session("  priority: 1\n  virtualNetworkId: 1\n  packetLength: 10\n"),
            "packetLength",
        ),
        ("a misspelt field", session("  priority: 1\n  virtualNetworkId: 1\n  packetLenght: 100\n"), "packetLenght"),
        (
            "sampling past 2^24",
            session("  priority: 1\n  virtualNetworkId: 1\n  sampleOneIn: 16777217\n"),
            "sampleOneIn",
        ),
        (
            "a budget of 0 (absent means unlimited)",
            session("  priority: 1\n  virtualNetworkId: 1\n  maxPacketsPerSecond: 0\n"),
            "maxPacketsPerSecond",
        ),
        (
            "sample mode",
            session("  priority: 1\n  virtualNetworkId: 1\n  sampleMode: bytes\n"),
            "sampleMode",
        ),
        ("no filter reference", "apiVersion: mirror-agent.io/v1alpha1\nkind: TrafficMirrorSession\nmetadata: {name: s}\nspec: {priority: 1, virtualNetworkId: 1, targetRef: t, sources: {}}\n".into(), "filterRef"),
        ("rule action", rule("priority: 1, action: allow"), "action"),
        ("rule protocol", rule("priority: 1, action: accept, protocol: HTTP"), "protocol"),
        ("port range", rule("priority: 1, action: accept, protocol: TCP, destinationPortRange: '80:90'"), "destinationPortRange"),
        ("CIDR", rule("priority: 1, action: accept, sourceCidrBlock: 10.0.0.0"), "sourceCidrBlock"),
        (
            "receiver without VNIs",
            "apiVersion: mirror-agent.io/v1alpha1\nkind: TrafficMirrorReceiver\nmetadata: {name: r}\nspec: {interface: eth1, virtualNetworkIds: []}\n".into(),
            "virtualNetworkIds",
        ),
        (
            "flow log traffic type",
            "apiVersion: mirror-agent.io/v1alpha1\nkind: FlowLog\nmetadata: {name: f}\nspec: {resource: {node: true}, trafficType: Everything, aggregationInterval: 1, logProjectName: p1, logTopicName: t1}\n".into(),
            "trafficType",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("k8s-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, yaml, field) in cases {
        let file = dir.join("bad.yaml");
        std::fs::write(&file, &yaml).expect("write");
        let (ok, report) = validate(&file);
        assert!(!ok, "{name}: accepted:\n{yaml}\n{report}");
        assert!(
            report.starts_with("invalid ") && report.contains(field),
            "{name}: the report names {field}: {report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
