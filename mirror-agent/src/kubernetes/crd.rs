//! The custom resources (group `mirror-agent.io`, version `v1alpha1`, cluster-scoped): the
//! clouds' mirror objects declared once for a cluster, pods as sources, and the per-node
//! state the agents report. The CRD YAML in `deploy/kubernetes/base/crds.yaml` is generated
//! from these types (`mirror-agent crds`) and a test keeps the two equal.
//!
//! The schemas carry the API's ranges and spellings, so the API server refuses a bad object
//! with a message instead of a node finding out later; what a schema cannot say (a CIDR's
//! address family against the rule's IP version, a reference to a missing filter) is checked
//! by the agent and the controller and reported in status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "mirror-agent.io";
pub const VERSION: &str = "v1alpha1";

/// Accept or drop, as the API's `Action`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Accept,
    Drop,
}

/// One filter rule: the API's fields, the API's ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    /// 1 (evaluated first) to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub priority: u32,
    pub action: RuleAction,
    /// ALL, TCP, UDP, ICMP, ICMPv6 or an IANA protocol number.
    #[serde(default = "all")]
    #[schemars(regex(
        pattern = r"^(ALL|all|TCP|tcp|UDP|udp|ICMP|icmp|ICMPv6|icmpv6|-1|[0-9]{1,3})$"
    ))]
    pub protocol: String,
    /// IPv4 or IPv6; taken from the CIDRs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(IPv4|IPv6|ipv4|ipv6)$"))]
    pub ip_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"))]
    pub source_cidr_block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"))]
    pub destination_cidr_block: Option<String>,
    /// `80/443`, `80-443`, `443` or `-1/-1` (all); TCP and UDP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(-1/-1|[0-9]{1,5}([/-][0-9]{1,5})?)$"))]
    pub source_port_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(-1/-1|[0-9]{1,5}([/-][0-9]{1,5})?)$"))]
    pub destination_port_range: Option<String>,
}

fn all() -> String {
    "ALL".into()
}

/// Which traffic a session copies. Directions are the pod's or the interface's own: an
/// ingress rule matches what a source receives.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "TrafficMirrorFilter",
    plural = "trafficmirrorfilters",
    shortname = "tmf",
    status = "ObjectStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMirrorFilterSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub description: String,
    /// Rules for traffic the source receives (at most 10, the API's default quota).
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub ingress_rules: Vec<FilterRule>,
    /// Rules for traffic the source sends.
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub egress_rules: Vec<FilterRule>,
}

/// Where copies go: a VXLAN endpoint.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "TrafficMirrorTarget",
    plural = "trafficmirrortargets",
    shortname = "tmt",
    status = "ObjectStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMirrorTargetSpec {
    /// IPv4 or IPv6 address of the VXLAN endpoint (an IDS, a collector).
    #[schemars(regex(pattern = r"^[0-9a-fA-F.:]+$"))]
    pub destination_ip: String,
    /// UDP port (default 4789).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub destination_port: Option<u16>,
}

/// What a session mirrors: interfaces of the node, and pods chosen by labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sources {
    /// Node interfaces: names, `eni-…` aliases or globs (`veth*`), as the node API takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Pods on the node whose labels match (absent: no pods). The source is the pod's
    /// host-side interface; directions stay the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only pods in namespaces whose labels match (absent: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// A mirror session: which sources, which filter, which target, how much of each packet.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "TrafficMirrorSession",
    plural = "trafficmirrorsessions",
    shortname = "tms",
    status = "SessionStatus",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.nodesApplied"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMirrorSessionSpec {
    /// 1 (first) to 32766: a packet is copied by the first matching session of its source.
    #[schemars(range(min = 1, max = 32766))]
    pub priority: u32,
    /// VXLAN VNI of the copies.
    #[schemars(range(min = 0, max = 16777215))]
    pub virtual_network_id: u32,
    /// Bytes of each packet to copy (absent: whole frames, cut only to fit the path MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 9000))]
    pub packet_length: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of a TrafficMirrorFilter.
    #[schemars(length(min = 1, max = 253))]
    pub filter_ref: String,
    /// Name of a TrafficMirrorTarget.
    #[schemars(length(min = 1, max = 253))]
    pub target_ref: String,
    pub sources: Sources,
    /// Nodes that apply the session (absent: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Most wire packets copied per second, per node (absent: unlimited). This agent's
    /// extension, as `MaxPacketsPerSecond` in the API (docs/api.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub max_packets_per_second: Option<u64>,
    /// Most bits per second the copies take on the wire, outer headers included, per node
    /// (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000_000u64))]
    pub max_bits_per_second: Option<u64>,
    /// Mirror one in this many matching packets (absent or 1: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16_777_216))]
    pub sample_one_in: Option<u32>,
    /// How the one in N is chosen: `packet` (at random, the default) or `flow` (whole flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_mode: Option<SampleMode>,
}

/// `sampleMode` of a session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleMode {
    Packet,
    Flow,
}

impl TrafficMirrorSessionSpec {
    /// The budget and sampling the node applies (the schema has checked the ranges).
    pub fn budget(&self) -> crate::model::Budget {
        crate::model::Budget {
            max_packets_per_second: self.max_packets_per_second,
            max_bits_per_second: self.max_bits_per_second,
            sample_one_in: self.sample_one_in.filter(|n| *n > 1),
            sample_mode: match self.sample_mode {
                Some(SampleMode::Flow) => crate::model::SampleMode::Flow,
                Some(SampleMode::Packet) | None => crate::model::SampleMode::Packet,
            },
        }
    }
}

fn yes() -> bool {
    true
}

/// This node as a mirror target: terminates VXLAN on an interface and hands the frames of
/// each VNI to a capture interface.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "TrafficMirrorReceiver",
    plural = "trafficmirrorreceivers",
    shortname = "tmrcv",
    status = "ObjectStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMirrorReceiverSpec {
    /// The receiving interface (name or `eni-…` alias).
    #[schemars(length(min = 1, max = 64))]
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub destination_port: Option<u16>,
    /// 1 to 64 VNIs, each 0–16777215.
    #[schemars(length(min = 1, max = 64))]
    pub virtual_network_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// What a flow log covers on each node it applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowLogResource {
    /// Every non-loopback interface of the node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node: bool,
    /// Node interfaces by name, alias or glob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Pods on the node (their host-side interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficType {
    All,
    Allow,
    Drop,
}

/// A flow log (AWS VPC Flow Logs records, written on each node it applies to).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "FlowLog",
    plural = "flowlogs",
    shortname = "fl",
    status = "ObjectStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct FlowLogSpec {
    pub resource: FlowLogResource,
    pub traffic_type: TrafficType,
    /// Minutes: 1, 5 or 10.
    #[schemars(range(min = 1, max = 10))]
    pub aggregation_interval: u32,
    /// AWS `LogFormat` (`${field} …`; absent: AWS's default format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{1,63}$"))]
    pub log_project_name: String,
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{1,63}$"))]
    pub log_topic_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// Status of objects without their own aggregation: conditions only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A session's status, aggregated over the nodes by `mirror-agent controller`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// Accepted (references and values valid), Ready (applied on every selected node),
    /// Degraded (failed on some node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub nodes_selected: u32,
    #[serde(default)]
    pub nodes_applied: u32,
    #[serde(default)]
    pub nodes_failed: u32,
}

/// One node's view, written by its agent (server-side apply, only when it changes).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mirror-agent.io",
    version = "v1alpha1",
    kind = "MirrorNodeState",
    plural = "mirrornodestates",
    status = "NodeStateStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorNodeStateSpec {
    pub node_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<NodeSessionState>,
    /// One per FlowLog selected on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flow_logs: Vec<NodeFlowLogState>,
    /// Whether the agent reaches the API server (false: it keeps applying the last objects).
    #[serde(default)]
    pub connected: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSessionState {
    /// The TrafficMirrorSession's name.
    pub name: String,
    /// Created, Modifying, FailedToApply, …: the node API's session state.
    pub state: String,
    /// fast or tunnel (docs/architecture.md).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub copy_path: String,
    /// Each resolved source: the interface, and the pod (`namespace/name`) it stands for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ResolvedSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFlowLogState {
    /// The FlowLog's name.
    pub name: String,
    /// Creating, Active, Deleting: the node API's flow-log state; NotApplied when the node
    /// could not apply it.
    pub state: String,
    /// The interfaces it records on this node (`node: true` adds every other interface),
    /// and the pod (`namespace/name`) each stands for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<ResolvedSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSource {
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// Every CRD of the group, in a stable order, as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt as _;
    let crds = [
        TrafficMirrorFilter::crd(),
        TrafficMirrorTarget::crd(),
        TrafficMirrorSession::crd(),
        TrafficMirrorReceiver::crd(),
        FlowLog::crd(),
        MirrorNodeState::crd(),
    ];
    let mut out = String::from(
        "# Generated by `mirror-agent crds` from mirror-agent/src/kubernetes/crd.rs: do not edit.\n",
    );
    for c in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&c)?);
    }
    Ok(out)
}

/// Labels of an object as the planner reads them.
pub type Labels = BTreeMap<String, String>;
