//! Command-line client of the agent's RPC API (docs/api.md, Alibaba style).
//!
//! Every subcommand becomes one `POST /?Action=…` with a form body, over the agent's Unix
//! socket or a TCP endpoint. Table output is for people; `-o json` prints the API's answer
//! untouched so scripts see exactly what the API said.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::OsString,
    fmt,
    io::Write,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const ENV_SOCKET: &str = "MIRROR_AGENT_API_SOCKET";
const ENV_ENDPOINT: &str = "MIRROR_AGENT_API_ENDPOINT";
const ENV_TOKEN: &str = "MIRROR_AGENT_API_TOKEN";
const ENV_ACCESS_KEY_ID: &str = "MIRROR_AGENT_ACCESS_KEY_ID";
/// Only from the environment: a command line is visible to every user.
const ENV_ACCESS_KEY_SECRET: &str = "MIRROR_AGENT_ACCESS_KEY_SECRET";

/// Generous because a mutation returns only once the data path has been reconciled; the
/// limit only exists so a wedged agent cannot hang scripts forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A misbehaving server could hand out the same NextToken forever.
const MAX_PAGES: usize = 1000;

const EXIT_OK: u8 = 0;
const EXIT_API_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;

// Where and how to reach the agent, flattened into the top-level command. A `//` comment, not
// `///`: clap would print a doc comment as the program's description. The environment is read
// by `run` rather than by clap, because the workspace builds clap without its `env` feature.
// Flags win over the environment, and `--endpoint` over `--socket`.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Connection and output")]
pub struct ClientArgs {
    /// Unix socket of the agent's API [env: MIRROR_AGENT_API_SOCKET] [default:
    /// /run/mirror-agent/api.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TCP endpoint instead of the socket, e.g. http://127.0.0.1:8080 [env:
    /// MIRROR_AGENT_API_ENDPOINT]
    #[arg(long, global = true, value_name = "URL", conflicts_with = "socket")]
    pub endpoint: Option<String>,
    /// Bearer token for the TCP endpoint; prefer the environment, command lines are visible
    /// to every user [env: MIRROR_AGENT_API_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Access key id for an agent with api_credentials: requests to the endpoint are signed
    /// as Alibaba's SDK signs them (ACS3-HMAC-SHA256); the secret comes only from
    /// MIRROR_AGENT_ACCESS_KEY_SECRET [env: MIRROR_AGENT_ACCESS_KEY_ID]
    #[arg(long, global = true, value_name = "ID")]
    pub access_key_id: Option<String>,
    /// Output: human tables, or the API's JSON answer as is.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Any API action: `call ListTrafficMirrorSessions MaxResults=10
    /// TrafficMirrorSourceIds.1=eth0`
    Call {
        /// The API action, e.g. ListTrafficMirrorSessions.
        action: String,
        /// Parameters as Key=Value (the value may contain '=').
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Mirror sessions: which sources are mirrored, through which filter, to which target.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Mirror filters and their rules.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Rules of a filter.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Mirror targets (where mirrored packets are sent).
    #[command(subcommand)]
    Target(TargetCommand),
    /// Flow logs (per-flow records of an interface, a subnet or the whole node).
    #[command(subcommand, name = "flowlog")]
    FlowLog(FlowLogCommand),
    /// Receivers: this node as a mirror target, VXLAN terminated in XDP (or TC) into capture
    /// interfaces (mrx<vni>).
    #[command(subcommand)]
    Receiver(ReceiverCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum ReceiverCommand {
    /// Create a receiver (CreateTrafficMirrorReceiver); prints its id.
    Create {
        /// The receiving interface, name or alias (NetworkInterfaceId).
        #[arg(long)]
        interface: String,
        /// A VNI to serve, repeatable (VirtualNetworkIds.N); each gets mrx<vni>.
        #[arg(long = "vni", value_name = "VNI", required = true)]
        vnis: Vec<u32>,
        /// UDP port of the mirror traffic (DestinationPort); the agent defaults to 4789.
        #[arg(long)]
        port: Option<u16>,
        /// TrafficMirrorReceiverName.
        #[arg(long)]
        name: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// KEY=VALUE tag, repeatable (Tags.N.Key/Value).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<Tag>,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// List receivers with their mode (native XDP or tc) and per-VNI counters
    /// (ListTrafficMirrorReceivers).
    List {
        /// Only these receivers, repeatable (TrafficMirrorReceiverIds.N).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Delete a receiver and its capture interfaces (DeleteTrafficMirrorReceiver).
    Delete {
        /// Receiver id (tmrcv-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum FlowLogCommand {
    /// Create a flow log (CreateFlowLog); prints its id.
    Create(FlowLogCreate),
    /// List flow logs (DescribeFlowLogs).
    List {
        /// Only these flow logs, repeatable (FlowLogIds.N).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
    },
    /// Change name, description, interval or record format (ModifyFlowLogAttribute).
    Update {
        /// Flow log id (fl-…).
        id: String,
        /// New FlowLogName.
        #[arg(long)]
        name: Option<String>,
        /// New Description.
        #[arg(long)]
        description: Option<String>,
        /// Minutes: 1, 5 or 10 (AggregationInterval).
        #[arg(long)]
        interval: Option<u32>,
        /// Record fields in AWS's syntax, e.g. '${srcaddr} ${dstaddr} ${bytes}'
        /// (LogFormat); "" returns to AWS's default format.
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Delete a flow log (DeleteFlowLog).
    Delete {
        /// Flow log id (fl-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Start collecting again (ActiveFlowLog).
    Activate {
        /// Flow log id (fl-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Stop collecting, keep the flow log (DeactiveFlowLog).
    Deactivate {
        /// Flow log id (fl-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
}

/// CreateFlowLog.
#[derive(clap::Args, Debug, Clone)]
pub struct FlowLogCreate {
    /// FlowLogName.
    #[arg(long)]
    pub name: String,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// ResourceType: eni (an interface), subnet (interfaces in a CIDR) or vpc (all).
    #[arg(long, default_value = "eni")]
    pub resource_type: String,
    /// ResourceId: interface or alias (eni), CIDR (subnet), any id (vpc).
    #[arg(long)]
    pub resource_id: String,
    /// TrafficType: All, Allow or Drop.
    #[arg(long, default_value = "All")]
    pub traffic_type: String,
    /// LogProjectName (created if missing).
    #[arg(long)]
    pub project: String,
    /// LogTopicName (must not exist yet).
    #[arg(long)]
    pub topic: String,
    /// AggregationInterval in minutes: 1, 5 or 10.
    #[arg(long)]
    pub interval: Option<u32>,
    /// Interval in seconds instead (tests and demos).
    #[arg(long)]
    pub interval_seconds: Option<u32>,
    /// Record fields in AWS's syntax, e.g. '${version} ${srcaddr} ${dstaddr} ${tcp-flags}'
    /// (LogFormat; default: AWS's default format, the version 2 fields).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// KEY=VALUE tag, repeatable (Tags.N.Key/Value).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<Tag>,
    #[command(flatten)]
    pub mutation: Mutation,
}

/// Options every mutating action accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Mutation {
    /// Idempotency token (at most 64 ASCII characters): repeating the request with the same
    /// token and parameters returns the first answer and does nothing twice (ClientToken).
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
    /// Only validate the request; nothing changes (DryRun=true).
    #[arg(long)]
    pub dry_run: bool,
}

/// Paging of list actions. Without --next-token, table output follows every page.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Paging {
    /// Page size (MaxResults).
    #[arg(long, value_name = "N")]
    pub max_results: Option<u32>,
    /// Fetch only the page starting at this token (NextToken of a previous answer).
    #[arg(long, value_name = "TOKEN")]
    pub next_token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SessionCommand {
    /// Create a session (CreateTrafficMirrorSession); prints its id.
    Create(SessionCreate),
    /// List sessions (ListTrafficMirrorSessions).
    List(SessionList),
    /// Change a session (UpdateTrafficMirrorSessionAttribute).
    Update(SessionUpdate),
    /// Delete a session (DeleteTrafficMirrorSession).
    Delete {
        /// Session id (tms-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Mirror more sources (AddSourcesToTrafficMirrorSession).
    AddSources {
        /// Session id (tms-…).
        id: String,
        /// Source interfaces (TrafficMirrorSourceIds.N).
        #[arg(required = true, value_name = "SRC")]
        sources: Vec<String>,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Stop mirroring sources (RemoveSourcesFromTrafficMirrorSession).
    RemoveSources {
        /// Session id (tms-…).
        id: String,
        /// Source interfaces (TrafficMirrorSourceIds.N).
        #[arg(required = true, value_name = "SRC")]
        sources: Vec<String>,
        #[command(flatten)]
        mutation: Mutation,
    },
}

/// CreateTrafficMirrorSession.
#[derive(clap::Args, Debug, Clone)]
pub struct SessionCreate {
    /// Priority; when sessions overlap the lowest number wins (Priority).
    #[arg(long)]
    pub priority: u32,
    /// Filter id (TrafficMirrorFilterId).
    #[arg(long, value_name = "TMF")]
    pub filter: String,
    /// Target id (TrafficMirrorTargetId).
    #[arg(long, value_name = "TMT")]
    pub target: String,
    /// VXLAN network identifier (VirtualNetworkId).
    #[arg(long)]
    pub vni: Option<u32>,
    /// Bytes of each packet to mirror; whole frames when absent (PacketLength).
    #[arg(long)]
    pub packet_length: Option<u32>,
    /// Enable the session (Enabled); `--enabled=false` sends false explicitly, without the
    /// flag the agent's default applies.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// TrafficMirrorSessionName.
    #[arg(long)]
    pub name: Option<String>,
    /// TrafficMirrorSessionDescription.
    #[arg(long)]
    pub description: Option<String>,
    /// Source interface, repeatable (TrafficMirrorSourceIds.N).
    #[arg(long = "source", value_name = "SRC")]
    pub sources: Vec<String>,
    /// Tag as KEY=VALUE (or KEY alone), repeatable (Tags.N.Key/Value).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<Tag>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub mutation: Mutation,
}

/// This agent's budget and sampling of a session (docs/api.md); on update, a budget of 0
/// removes it and `--sample-one-in 1` mirrors every packet again.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BudgetArgs {
    /// Most wire packets mirrored per second (MaxPacketsPerSecond); 0: unlimited.
    #[arg(long, value_name = "PPS")]
    pub max_packets_per_second: Option<u64>,
    /// Most bits per second the copies take on the wire, outer headers included
    /// (MaxBitsPerSecond); 0: unlimited.
    #[arg(long, value_name = "BPS")]
    pub max_bits_per_second: Option<u64>,
    /// Mirror one in N matching packets (SampleOneIn); 1: all.
    #[arg(long, value_name = "N")]
    pub sample_one_in: Option<u32>,
    /// How the one in N is chosen (SampleMode): packet (at random) or flow (whole flows).
    #[arg(long, value_name = "packet|flow")]
    pub sample_mode: Option<String>,
}

/// ListTrafficMirrorSessions.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SessionList {
    /// Only these sessions, repeatable (TrafficMirrorSessionIds.N).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Only sessions mirroring this source (TrafficMirrorSourceId).
    #[arg(long, value_name = "SRC")]
    pub source: Option<String>,
    /// Only sessions using this filter (TrafficMirrorFilterId).
    #[arg(long, value_name = "TMF")]
    pub filter: Option<String>,
    /// Only sessions sending to this target (TrafficMirrorTargetId).
    #[arg(long, value_name = "TMT")]
    pub target: Option<String>,
    /// Only sessions with this name (TrafficMirrorSessionName).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub paging: Paging,
}

/// UpdateTrafficMirrorSessionAttribute.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SessionUpdate {
    /// Session id (tms-…).
    pub id: String,
    /// Priority.
    #[arg(long)]
    pub priority: Option<u32>,
    /// VirtualNetworkId.
    #[arg(long)]
    pub vni: Option<u32>,
    /// PacketLength.
    #[arg(long)]
    pub packet_length: Option<u32>,
    /// Enabled.
    #[arg(long, value_name = "true|false")]
    pub enabled: Option<bool>,
    /// TrafficMirrorSessionName.
    #[arg(long)]
    pub name: Option<String>,
    /// TrafficMirrorSessionDescription.
    #[arg(long)]
    pub description: Option<String>,
    /// TrafficMirrorFilterId.
    #[arg(long, value_name = "TMF")]
    pub filter: Option<String>,
    /// TrafficMirrorTargetId.
    #[arg(long, value_name = "TMT")]
    pub target: Option<String>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub mutation: Mutation,
}

#[derive(clap::Subcommand, Debug)]
pub enum FilterCommand {
    /// Create a filter with its rules (CreateTrafficMirrorFilter); prints the filter id and
    /// the rule ids.
    Create(FilterCreate),
    /// List filters and their rules (ListTrafficMirrorFilters).
    List {
        /// Only these filters, repeatable (TrafficMirrorFilterIds.N).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Rename or redescribe a filter (UpdateTrafficMirrorFilterAttribute).
    Update {
        /// Filter id (tmf-…).
        id: String,
        /// TrafficMirrorFilterName.
        #[arg(long)]
        name: Option<String>,
        /// TrafficMirrorFilterDescription.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        mutation: Mutation,
    },
    /// Delete a filter (DeleteTrafficMirrorFilter).
    Delete {
        /// Filter id (tmf-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
}

/// CreateTrafficMirrorFilter.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterCreate {
    /// TrafficMirrorFilterName.
    #[arg(long)]
    pub name: Option<String>,
    /// TrafficMirrorFilterDescription.
    #[arg(long)]
    pub description: Option<String>,
    /// Ingress rule, repeatable (IngressRules.N.*): comma-separated key=value with keys
    /// priority, action, protocol, ip-version, src, dst, src-ports, dst-ports, e.g.
    /// priority=1,action=accept,protocol=TCP,dst-ports=80/80
    #[arg(long, value_name = "RULE", value_parser = parse_rule_spec)]
    pub ingress: Vec<RuleSpec>,
    /// Egress rule, repeatable (EgressRules.N.*); same syntax as --ingress.
    #[arg(long, value_name = "RULE", value_parser = parse_rule_spec)]
    pub egress: Vec<RuleSpec>,
    /// Tag as KEY=VALUE (or KEY alone), repeatable (Tags.N.Key/Value).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<Tag>,
    #[command(flatten)]
    pub mutation: Mutation,
}

#[derive(clap::Subcommand, Debug)]
pub enum RuleCommand {
    /// Add one rule to a filter (CreateTrafficMirrorFilterRules); prints the rule id.
    Add(RuleAdd),
    /// Change a rule (UpdateTrafficMirrorFilterRuleAttribute).
    Update(RuleUpdate),
    /// Delete rules of a filter (DeleteTrafficMirrorFilterRules).
    Delete {
        /// Filter id (tmf-…).
        filter: String,
        /// Rule ids (TrafficMirrorFilterRuleIds.N).
        #[arg(required = true, value_name = "RULE")]
        rules: Vec<String>,
        #[command(flatten)]
        mutation: Mutation,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn list_param(self) -> &'static str {
        match self {
            Direction::Ingress => "IngressRules",
            Direction::Egress => "EgressRules",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Accept,
    /// Alibaba spells it "drop"; the agent takes both.
    #[value(alias = "drop")]
    Reject,
}

impl RuleAction {
    fn as_str(self) -> &'static str {
        match self {
            RuleAction::Accept => "accept",
            RuleAction::Reject => "reject",
        }
    }
}

/// CreateTrafficMirrorFilterRules with one rule, as IngressRules.1.* or EgressRules.1.*.
#[derive(clap::Args, Debug, Clone)]
pub struct RuleAdd {
    /// Filter id (tmf-…).
    pub filter: String,
    /// Which packets the rule sees: ingress (received by the source) or egress (sent).
    #[arg(long, value_enum)]
    pub direction: Direction,
    /// Priority; the lowest matching number decides.
    #[arg(long)]
    pub priority: u32,
    /// accept mirrors the packets the rule matches; reject (Alibaba: drop) leaves them out.
    #[arg(long, value_enum)]
    pub action: RuleAction,
    /// ALL, TCP, UDP, ICMP, ICMPv6 or a protocol number.
    #[arg(long)]
    pub protocol: Option<String>,
    /// IpVersion (IPv4 or IPv6).
    #[arg(long)]
    pub ip_version: Option<String>,
    /// SourceCidrBlock.
    #[arg(long, value_name = "CIDR")]
    pub src: Option<String>,
    /// DestinationCidrBlock.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// SourcePortRange, e.g. 1024/65535.
    #[arg(long, value_name = "RANGE")]
    pub src_ports: Option<String>,
    /// DestinationPortRange, e.g. 80/80.
    #[arg(long, value_name = "RANGE")]
    pub dst_ports: Option<String>,
    #[command(flatten)]
    pub mutation: Mutation,
}

/// UpdateTrafficMirrorFilterRuleAttribute.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuleUpdate {
    /// Rule id (tmr-…).
    pub rule: String,
    /// Priority.
    #[arg(long)]
    pub priority: Option<u32>,
    /// RuleAction.
    #[arg(long, value_enum)]
    pub action: Option<RuleAction>,
    /// Protocol.
    #[arg(long)]
    pub protocol: Option<String>,
    /// SourceCidrBlock.
    #[arg(long, value_name = "CIDR")]
    pub src: Option<String>,
    /// DestinationCidrBlock.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// SourcePortRange.
    #[arg(long, value_name = "RANGE")]
    pub src_ports: Option<String>,
    /// DestinationPortRange.
    #[arg(long, value_name = "RANGE")]
    pub dst_ports: Option<String>,
    #[command(flatten)]
    pub mutation: Mutation,
}

#[derive(clap::Subcommand, Debug)]
pub enum TargetCommand {
    /// Create a target (CreateTrafficMirrorTarget); prints its id.
    Create(TargetCreate),
    /// List targets (ListTrafficMirrorTargets).
    List {
        /// Only these targets, repeatable (TrafficMirrorTargetIds.N).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Delete a target (DeleteTrafficMirrorTarget).
    Delete {
        /// Target id (tmt-…).
        id: String,
        #[command(flatten)]
        mutation: Mutation,
    },
}

/// CreateTrafficMirrorTarget: a remote VXLAN endpoint or a local interface.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["destination_ip", "instance_id"])))]
pub struct TargetCreate {
    /// VXLAN destination address (DestinationIp).
    #[arg(long, value_name = "IP")]
    pub destination_ip: Option<String>,
    /// VXLAN destination UDP port (DestinationPort); the agent defaults to 4789.
    #[arg(long, value_name = "PORT", conflicts_with = "instance_id")]
    pub destination_port: Option<u16>,
    /// A local interface by name or alias (InstanceId).
    #[arg(long, value_name = "IFACE")]
    pub instance_id: Option<String>,
    /// InstanceType: NetworkInterface or SLB (eni and elb are accepted too).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// TrafficMirrorTargetName.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Tag as KEY=VALUE (or KEY alone), repeatable (Tags.N.Key/Value).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<Tag>,
    #[command(flatten)]
    pub mutation: Mutation,
}

/// A resource tag; the API allows a key without a value, never the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
}

fn parse_tag(s: &str) -> Result<Tag, String> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    if key.is_empty() {
        return Err(format!("tag {s:?} has no key; expected KEY=VALUE"));
    }
    Ok(Tag {
        key: key.to_string(),
        value,
    })
}

/// One rule of `--ingress`/`--egress`: API parameter names and values, in the user's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSpec(pub Vec<(&'static str, String)>);

/// The short keys of a RULE and the API parameters they stand for.
const RULE_KEYS: [(&str, &str); 8] = [
    ("priority", "Priority"),
    ("action", "Action"),
    ("protocol", "Protocol"),
    ("ip-version", "IpVersion"),
    ("src", "SourceCidrBlock"),
    ("dst", "DestinationCidrBlock"),
    ("src-ports", "SourcePortRange"),
    ("dst-ports", "DestinationPortRange"),
];

/// Values are passed on unchecked: the agent validates them and names the parameter in its
/// error, so the client does not keep a second, drifting copy of the rules.
fn parse_rule_spec(s: &str) -> Result<RuleSpec, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("{part:?} in rule {s:?} is not key=value"));
        };
        let key = key.trim();
        let Some(&(_, param)) = RULE_KEYS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = RULE_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "unknown key {key:?} in rule {s:?}; keys are {}",
                known.join(", ")
            ));
        };
        if out.iter().any(|(p, _)| *p == param) {
            return Err(format!("key {key:?} appears twice in rule {s:?}"));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("key {key:?} has no value in rule {s:?}"));
        }
        out.push((param, value.to_string()));
    }
    Ok(RuleSpec(out))
}

/// `Key=Value` of `call`; only the first '=' separates, so values may contain '='.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("parameter {s:?} is not Key=Value")),
    }
}

/// Form parameters in the order they are sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Params(Vec<(String, String)>);

impl Params {
    fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    fn opt<T: fmt::Display>(&mut self, key: &str, value: Option<T>) {
        if let Some(v) = value {
            self.set(key, v.to_string());
        }
    }

    fn budget(&mut self, b: &BudgetArgs) {
        self.opt("MaxPacketsPerSecond", b.max_packets_per_second);
        self.opt("MaxBitsPerSecond", b.max_bits_per_second);
        self.opt("SampleOneIn", b.sample_one_in);
        self.opt("SampleMode", b.sample_mode.as_deref());
    }

    /// `Prefix.1=a&Prefix.2=b`, the list form every cloud SDK sends.
    fn list(&mut self, prefix: &str, items: &[String]) {
        for (i, item) in items.iter().enumerate() {
            self.set(format!("{prefix}.{}", i + 1), item.clone());
        }
    }

    fn tags(&mut self, tags: &[Tag]) {
        for (i, tag) in tags.iter().enumerate() {
            let n = i + 1;
            self.set(format!("Tags.{n}.Key"), tag.key.clone());
            if let Some(v) = &tag.value {
                self.set(format!("Tags.{n}.Value"), v.clone());
            }
        }
    }

    fn rules(&mut self, list: &str, rules: &[RuleSpec]) {
        for (i, rule) in rules.iter().enumerate() {
            for (param, value) in &rule.0 {
                self.set(format!("{list}.{}.{param}", i + 1), value.clone());
            }
        }
    }

    fn mutation(&mut self, m: &Mutation) {
        self.opt("ClientToken", m.client_token.as_deref());
        if m.dry_run {
            self.set("DryRun", "true");
        }
    }

    fn paging(&mut self, p: &Paging) {
        self.opt("MaxResults", p.max_results);
        self.opt("NextToken", p.next_token.as_deref());
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// What a successful answer is turned into in table mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// `call`: the answer, pretty-printed.
    Raw,
    /// `ok (RequestId …)`.
    Done,
    /// A create: the new id on stdout, the RequestId on stderr so `$(…)` captures the id.
    Created(&'static str),
    FilterCreated,
    RulesCreated,
    Sessions,
    Filters,
    Targets,
    FlowLogs,
    Receivers,
}

impl Render {
    /// The list a paged answer carries.
    fn list_field(self) -> Option<&'static str> {
        match self {
            Render::Sessions => Some("TrafficMirrorSessions"),
            Render::Filters => Some("TrafficMirrorFilters"),
            Render::Targets => Some("TrafficMirrorTargets"),
            Render::FlowLogs => Some("FlowLogs"),
            Render::Receivers => Some("TrafficMirrorReceivers"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    action: String,
    params: Params,
    render: Render,
    /// Table output of a list follows NextToken unless the user asked for one page.
    follow_pages: bool,
}

impl Plan {
    fn new(action: &str, params: Params, render: Render) -> Plan {
        Plan {
            action: action.to_string(),
            params,
            render,
            follow_pages: false,
        }
    }

    fn list(action: &str, params: Params, render: Render, paging: &Paging) -> Plan {
        Plan {
            follow_pages: paging.next_token.is_none(),
            ..Plan::new(action, params, render)
        }
    }
}

/// Turns a command into its API request; errors are usage errors.
fn plan(command: ClientCommand) -> Result<Plan, String> {
    match command {
        ClientCommand::Call { action, params } => {
            if action.is_empty() {
                return Err("the action is empty".into());
            }
            let mut p = Params::default();
            for s in &params {
                let (k, v) = parse_key_value(s)?;
                p.set(k, v);
            }
            Ok(Plan::new(&action, p, Render::Raw))
        }
        ClientCommand::Session(c) => plan_session(c),
        ClientCommand::Filter(c) => plan_filter(c),
        ClientCommand::Rule(c) => plan_rule(c),
        ClientCommand::Target(c) => plan_target(c),
        ClientCommand::FlowLog(c) => plan_flow_log(c),
        ClientCommand::Receiver(c) => Ok(plan_receiver(c)),
    }
}

fn plan_receiver(command: ReceiverCommand) -> Plan {
    let mut p = Params::default();
    match command {
        ReceiverCommand::Create {
            interface,
            vnis,
            port,
            name,
            description,
            tags,
            mutation,
        } => {
            p.set("NetworkInterfaceId", interface);
            let vnis: Vec<String> = vnis.iter().map(u32::to_string).collect();
            p.list("VirtualNetworkIds", &vnis);
            p.opt("DestinationPort", port);
            p.opt("TrafficMirrorReceiverName", name.as_deref());
            p.opt("Description", description.as_deref());
            p.tags(&tags);
            p.mutation(&mutation);
            Plan::new(
                "CreateTrafficMirrorReceiver",
                p,
                Render::Created("TrafficMirrorReceiverId"),
            )
        }
        ReceiverCommand::List { ids, paging } => {
            p.list("TrafficMirrorReceiverIds", &ids);
            p.paging(&paging);
            Plan::list("ListTrafficMirrorReceivers", p, Render::Receivers, &paging)
        }
        ReceiverCommand::Delete { id, mutation } => {
            p.set("TrafficMirrorReceiverId", id);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorReceiver", p, Render::Done)
        }
    }
}

/// One row per served VNI, so each capture interface's counters are on their own line.
fn render_receivers(receivers: &[Value]) -> String {
    let mut rows = Vec::new();
    for r in receivers {
        let captures = r
            .get("Captures")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &captures {
            rows.push(vec![
                cell(r.get("TrafficMirrorReceiverId")),
                cell(r.get("NetworkInterfaceId")),
                cell(r.get("DestinationPort")),
                cell(r.get("XdpMode")),
                cell(c.get("VirtualNetworkId")),
                cell(c.get("CaptureInterface")),
                cell(c.get("Frames")),
                cell(c.get("Bytes")),
                format!(
                    "{}/{}/{}",
                    cell(c.get("Malformed")),
                    cell(c.get("NoCaptureInterface")),
                    cell(c.get("RedirectErrors"))
                ),
                cell(r.get("TrafficMirrorReceiverStatus")),
                cell(r.get("TrafficMirrorReceiverErrors")),
            ]);
        }
    }
    table(
        &[
            "ID",
            "INTERFACE",
            "PORT",
            "MODE",
            "VNI",
            "CAPTURE",
            "FRAMES",
            "BYTES",
            "MALFORMED/NO-CAPTURE/REDIRECT-ERR",
            "STATUS",
            "ERRORS",
        ],
        &rows,
    )
}

fn plan_flow_log(command: FlowLogCommand) -> Result<Plan, String> {
    let mut p = Params::default();
    Ok(match command {
        FlowLogCommand::Create(c) => {
            p.set("FlowLogName", c.name);
            p.opt("Description", c.description.as_deref());
            p.set("ResourceType", c.resource_type);
            p.set("ResourceId", c.resource_id);
            p.set("TrafficType", c.traffic_type);
            p.set("LogProjectName", c.project);
            p.set("LogTopicName", c.topic);
            p.opt("AggregationInterval", c.interval);
            p.opt("AggregationIntervalSeconds", c.interval_seconds);
            p.opt("LogFormat", c.log_format.as_deref());
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new("CreateFlowLog", p, Render::Created("FlowLogId"))
        }
        FlowLogCommand::List { ids } => {
            p.list("FlowLogIds", &ids);
            p.set("PageSize", "100".to_string());
            Plan::new("DescribeFlowLogs", p, Render::FlowLogs)
        }
        FlowLogCommand::Update {
            id,
            name,
            description,
            interval,
            log_format,
            mutation,
        } => {
            p.set("FlowLogId", id);
            p.opt("FlowLogName", name.as_deref());
            p.opt("Description", description.as_deref());
            p.opt("AggregationInterval", interval);
            p.opt("LogFormat", log_format.as_deref());
            if p.len() == 1 {
                return Err("nothing to update: give at least one attribute".into());
            }
            p.mutation(&mutation);
            Plan::new("ModifyFlowLogAttribute", p, Render::Done)
        }
        FlowLogCommand::Delete { id, mutation } => {
            p.set("FlowLogId", id);
            p.mutation(&mutation);
            Plan::new("DeleteFlowLog", p, Render::Done)
        }
        FlowLogCommand::Activate { id, mutation } => {
            p.set("FlowLogId", id);
            p.mutation(&mutation);
            Plan::new("ActiveFlowLog", p, Render::Done)
        }
        FlowLogCommand::Deactivate { id, mutation } => {
            p.set("FlowLogId", id);
            p.mutation(&mutation);
            Plan::new("DeactiveFlowLog", p, Render::Done)
        }
    })
}

fn render_flow_logs(logs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = logs
        .iter()
        .map(|f| {
            vec![
                cell(f.get("FlowLogId")),
                cell(f.get("FlowLogName")),
                format!(
                    "{}:{}",
                    cell(f.get("ResourceType")),
                    cell(f.get("ResourceId"))
                ),
                cell(f.get("TrafficType")),
                format!(
                    "{}/{}",
                    cell(f.get("LogProjectName")),
                    cell(f.get("LogTopicName"))
                ),
                cell(f.get("AggregationInterval")),
                cell(f.get("Status")),
                cell(f.get("Errors")),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "RESOURCE",
            "TRAFFIC",
            "PROJECT/TOPIC",
            "INTERVAL",
            "STATUS",
            "ERRORS",
        ],
        &rows,
    )
}

fn plan_session(command: SessionCommand) -> Result<Plan, String> {
    let mut p = Params::default();
    Ok(match command {
        SessionCommand::Create(c) => {
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSessionDescription", c.description.as_deref());
            p.set("Priority", c.priority.to_string());
            p.opt("VirtualNetworkId", c.vni);
            p.opt("PacketLength", c.packet_length);
            p.opt("Enabled", c.enabled);
            p.set("TrafficMirrorFilterId", c.filter);
            p.set("TrafficMirrorTargetId", c.target);
            p.list("TrafficMirrorSourceIds", &c.sources);
            p.tags(&c.tags);
            p.budget(&c.budget);
            p.mutation(&c.mutation);
            Plan::new(
                "CreateTrafficMirrorSession",
                p,
                Render::Created("TrafficMirrorSessionId"),
            )
        }
        SessionCommand::List(c) => {
            p.list("TrafficMirrorSessionIds", &c.ids);
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSourceId", c.source.as_deref());
            p.opt("TrafficMirrorFilterId", c.filter.as_deref());
            p.opt("TrafficMirrorTargetId", c.target.as_deref());
            p.paging(&c.paging);
            Plan::list("ListTrafficMirrorSessions", p, Render::Sessions, &c.paging)
        }
        SessionCommand::Update(c) => {
            p.set("TrafficMirrorSessionId", c.id);
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSessionDescription", c.description.as_deref());
            p.opt("Priority", c.priority);
            p.opt("VirtualNetworkId", c.vni);
            p.opt("PacketLength", c.packet_length);
            p.opt("Enabled", c.enabled);
            p.opt("TrafficMirrorFilterId", c.filter.as_deref());
            p.opt("TrafficMirrorTargetId", c.target.as_deref());
            p.budget(&c.budget);
            if p.len() == 1 {
                return Err("nothing to update: give at least one attribute".into());
            }
            p.mutation(&c.mutation);
            Plan::new("UpdateTrafficMirrorSessionAttribute", p, Render::Done)
        }
        SessionCommand::Delete { id, mutation } => {
            p.set("TrafficMirrorSessionId", id);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorSession", p, Render::Done)
        }
        SessionCommand::AddSources {
            id,
            sources,
            mutation,
        } => {
            p.set("TrafficMirrorSessionId", id);
            p.list("TrafficMirrorSourceIds", &sources);
            p.mutation(&mutation);
            Plan::new("AddSourcesToTrafficMirrorSession", p, Render::Done)
        }
        SessionCommand::RemoveSources {
            id,
            sources,
            mutation,
        } => {
            p.set("TrafficMirrorSessionId", id);
            p.list("TrafficMirrorSourceIds", &sources);
            p.mutation(&mutation);
            Plan::new("RemoveSourcesFromTrafficMirrorSession", p, Render::Done)
        }
    })
}

fn plan_filter(command: FilterCommand) -> Result<Plan, String> {
    let mut p = Params::default();
    Ok(match command {
        FilterCommand::Create(c) => {
            p.opt("TrafficMirrorFilterName", c.name.as_deref());
            p.opt("TrafficMirrorFilterDescription", c.description.as_deref());
            p.rules("IngressRules", &c.ingress);
            p.rules("EgressRules", &c.egress);
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new("CreateTrafficMirrorFilter", p, Render::FilterCreated)
        }
        FilterCommand::List { ids, paging } => {
            p.list("TrafficMirrorFilterIds", &ids);
            p.paging(&paging);
            Plan::list("ListTrafficMirrorFilters", p, Render::Filters, &paging)
        }
        FilterCommand::Update {
            id,
            name,
            description,
            mutation,
        } => {
            p.set("TrafficMirrorFilterId", id);
            p.opt("TrafficMirrorFilterName", name.as_deref());
            p.opt("TrafficMirrorFilterDescription", description.as_deref());
            if p.len() == 1 {
                return Err("nothing to update: give --name or --description".into());
            }
            p.mutation(&mutation);
            Plan::new("UpdateTrafficMirrorFilterAttribute", p, Render::Done)
        }
        FilterCommand::Delete { id, mutation } => {
            p.set("TrafficMirrorFilterId", id);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorFilter", p, Render::Done)
        }
    })
}

fn plan_rule(command: RuleCommand) -> Result<Plan, String> {
    let mut p = Params::default();
    Ok(match command {
        RuleCommand::Add(c) => {
            let mut rule = vec![
                ("Priority", c.priority.to_string()),
                ("Action", c.action.as_str().to_string()),
            ];
            let optional = [
                ("Protocol", c.protocol),
                ("IpVersion", c.ip_version),
                ("SourceCidrBlock", c.src),
                ("DestinationCidrBlock", c.dst),
                ("SourcePortRange", c.src_ports),
                ("DestinationPortRange", c.dst_ports),
            ];
            rule.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            p.set("TrafficMirrorFilterId", c.filter);
            p.rules(c.direction.list_param(), &[RuleSpec(rule)]);
            p.mutation(&c.mutation);
            Plan::new("CreateTrafficMirrorFilterRules", p, Render::RulesCreated)
        }
        RuleCommand::Update(c) => {
            p.set("TrafficMirrorFilterRuleId", c.rule);
            p.opt("Priority", c.priority);
            p.opt("RuleAction", c.action.map(RuleAction::as_str));
            p.opt("Protocol", c.protocol.as_deref());
            p.opt("SourceCidrBlock", c.src.as_deref());
            p.opt("DestinationCidrBlock", c.dst.as_deref());
            p.opt("SourcePortRange", c.src_ports.as_deref());
            p.opt("DestinationPortRange", c.dst_ports.as_deref());
            if p.len() == 1 {
                return Err("nothing to update: give at least one attribute".into());
            }
            p.mutation(&c.mutation);
            Plan::new("UpdateTrafficMirrorFilterRuleAttribute", p, Render::Done)
        }
        RuleCommand::Delete {
            filter,
            rules,
            mutation,
        } => {
            p.set("TrafficMirrorFilterId", filter);
            p.list("TrafficMirrorFilterRuleIds", &rules);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorFilterRules", p, Render::Done)
        }
    })
}

fn plan_target(command: TargetCommand) -> Result<Plan, String> {
    let mut p = Params::default();
    Ok(match command {
        TargetCommand::Create(c) => {
            // clap's group enforces this for parsed command lines; checked again for callers
            // that build the struct themselves.
            match (&c.destination_ip, &c.instance_id) {
                (Some(_), Some(_)) => {
                    return Err("give either --destination-ip or --instance-id, not both".into());
                }
                (None, None) => return Err("give --destination-ip or --instance-id".into()),
                _ => {}
            }
            p.opt("InstanceType", c.instance_type.as_deref());
            p.opt("DestinationIp", c.destination_ip.as_deref());
            p.opt("DestinationPort", c.destination_port);
            p.opt("InstanceId", c.instance_id.as_deref());
            p.opt("TrafficMirrorTargetName", c.name.as_deref());
            p.opt("Description", c.description.as_deref());
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new(
                "CreateTrafficMirrorTarget",
                p,
                Render::Created("TrafficMirrorTargetId"),
            )
        }
        TargetCommand::List { ids, paging } => {
            p.list("TrafficMirrorTargetIds", &ids);
            p.paging(&paging);
            Plan::list("ListTrafficMirrorTargets", p, Render::Targets, &paging)
        }
        TargetCommand::Delete { id, mutation } => {
            p.set("TrafficMirrorTargetId", id);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorTarget", p, Render::Done)
        }
    })
}

/// How the agent is reached, after flags and environment are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    Unix(PathBuf),
    Tcp {
        /// `host:port`, as given (the port defaults to 80).
        authority: String,
        token: Option<String>,
        /// Signs every request when set.
        key: Option<AccessKey>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AccessKey {
    id: String,
    secret: crate::api::auth::Secret,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Unix(path) => write!(f, "socket {}", path.display()),
            Transport::Tcp { authority, .. } => write!(f, "endpoint http://{authority}"),
        }
    }
}

/// Flags win over the environment; an endpoint (flag, else environment) wins over a socket
/// from the environment but not over a `--socket` flag.
fn transport(
    args: &ClientArgs,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Transport, String> {
    let env_string = |name: &str| -> Result<Option<String>, String> {
        env(name)
            .map(|v| {
                v.into_string()
                    .map_err(|_| format!("{name} is not valid UTF-8"))
            })
            .transpose()
    };
    let endpoint = match (&args.endpoint, &args.socket) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(_)) => None,
        (None, None) => env_string(ENV_ENDPOINT)?,
    };
    if let Some(endpoint) = endpoint {
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => env_string(ENV_TOKEN)?,
        };
        let id = match &args.access_key_id {
            Some(id) => Some(id.clone()),
            None => env_string(ENV_ACCESS_KEY_ID)?,
        };
        let key = match id {
            Some(id) => {
                let secret = env_string(ENV_ACCESS_KEY_SECRET)?.ok_or_else(|| {
                    format!("access key {id}: set its secret in {ENV_ACCESS_KEY_SECRET}")
                })?;
                Some(AccessKey {
                    id,
                    secret: crate::api::auth::Secret::new(secret),
                })
            }
            None => None,
        };
        return Ok(Transport::Tcp {
            authority: parse_endpoint(&endpoint)?,
            token,
            key,
        });
    }
    let socket = args
        .socket
        .clone()
        .or_else(|| env(ENV_SOCKET).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_API_SOCKET));
    Ok(Transport::Unix(socket))
}

/// `http://host[:port][/]` to `host:port`. Only plain HTTP: TLS belongs in a proxy in front
/// of the agent, and the agent itself serves none.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let bad = |why: &str| format!("endpoint {endpoint:?}: {why}; expected http://host:port");
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad("only http is supported"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("paths, queries and user names are not supported"));
    }
    let port = if let Some(bracketed) = authority.strip_prefix('[') {
        let (_, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after ']'"))?,
            ),
        }
    } else {
        match authority.split_once(':') {
            Some(("", _)) => return Err(bad("no host")),
            Some((_, port)) => Some(port),
            None => None,
        }
    };
    match port {
        Some(p) => {
            p.parse::<u16>().map_err(|_| bad("bad port"))?;
            Ok(authority.to_string())
        }
        None => Ok(format!("{authority}:80")),
    }
}

/// Failures before the API could answer: exit code 2.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("cannot connect to the agent's {target}: {source}{hint}")]
    Connect {
        target: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("talking to the agent's {target}: {detail}")]
    Exchange { target: String, detail: String },
    #[error("the agent's {target} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { target: String },
    #[error("{0}")]
    Request(String),
}

fn connect_error(t: &Transport, source: std::io::Error) -> TransportError {
    let hint = match (t, source.kind()) {
        (Transport::Unix(_), std::io::ErrorKind::NotFound) => {
            " (is the agent running? --socket or MIRROR_AGENT_API_SOCKET choose another socket)"
        }
        (Transport::Unix(_), std::io::ErrorKind::PermissionDenied) => {
            " (the socket is mode 0600: run as the agent's user, usually root)"
        }
        (_, std::io::ErrorKind::ConnectionRefused) => " (is the agent running?)",
        _ => "",
    };
    TransportError::Connect {
        target: t.to_string(),
        source,
        hint,
    }
}

/// An HTTP answer as received.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    json: Option<Value>,
}

/// An error answer of the API, in whichever envelope it came.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiFailure {
    code: String,
    message: String,
    request_id: Option<String>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}: {}", self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (RequestId {id})")?;
        }
        Ok(())
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Reply {
        let json = serde_json::from_slice(&body).ok();
        Reply { status, body, json }
    }

    fn request_id(&self) -> Option<String> {
        let j = self.json.as_ref()?;
        str_field(j, "RequestId")
            .or_else(|| {
                j.get("ResponseMetadata")
                    .and_then(|m| str_field(m, "RequestId"))
            })
            .or_else(|| str_field(j, "request_id"))
            .map(str::to_string)
    }

    /// The API's error, if the answer is one. Besides Alibaba's flat envelope, the Volcengine
    /// and Huawei shapes are understood because `call` can ask for them.
    fn failure(&self) -> Option<ApiFailure> {
        let request_id = self.request_id();
        let j = self.json.as_ref();
        let (code, message) = j
            .and_then(|j| {
                let volc = j
                    .get("ResponseMetadata")
                    .and_then(|m| m.get("Error"))
                    .filter(|e| e.is_object());
                if let Some(e) = volc {
                    return Some((str_field(e, "Code")?, str_field(e, "Message").unwrap_or("")));
                }
                if let Some(code) = str_field(j, "Code") {
                    return Some((code, str_field(j, "Message").unwrap_or("")));
                }
                str_field(j, "error_code").map(|c| (c, str_field(j, "error_msg").unwrap_or("")))
            })
            .map(|(c, m)| (c.to_string(), m.to_string()))
            .unwrap_or_default();
        let ok = (200..300).contains(&self.status);
        if ok && code.is_empty() {
            return None;
        }
        if code.is_empty() {
            // Not one of the API's errors (a proxy, a wrong endpoint): show what came back.
            let text = String::from_utf8_lossy(&self.body);
            let first = text.lines().next().unwrap_or("").trim();
            let snippet: String = first.chars().take(200).collect();
            return Some(ApiFailure {
                code: format!("HTTP {}", self.status),
                message: if snippet.is_empty() {
                    "empty answer".to_string()
                } else {
                    snippet
                },
                request_id,
            });
        }
        Some(ApiFailure {
            code,
            message,
            request_id,
        })
    }
}

fn form(params: &Params) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.0.iter())
        .finish()
}

fn request_uri(action: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .finish();
    format!("/?{query}")
}

fn build_request(
    t: &Transport,
    action: &str,
    params: &Params,
) -> Result<Request<Full<Bytes>>, TransportError> {
    let (host, token, key) = match t {
        Transport::Unix(_) => ("mirror-agent", None, None),
        // The endpoint's own authority, so a reverse proxy in front of the agent can route.
        Transport::Tcp {
            authority,
            token,
            key,
        } => (authority.as_str(), token.as_deref(), key.as_ref()),
    };
    let body = form(params);
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(request_uri(action))
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(key) = key {
        for (name, value) in signed_headers(host, action, &body, key)? {
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                TransportError::Request(format!("the {name} header cannot carry the access key"))
            })?;
            value.set_sensitive(name == "authorization");
            builder = builder.header(name, value);
        }
    }
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            TransportError::Request("the token has characters an HTTP header cannot carry".into())
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| TransportError::Request(format!("building the request: {e}")))
}

/// The headers of Alibaba's ACS3-HMAC-SHA256 signature, as its Tea SDK sends them: the
/// action, a fresh nonce, the time, the body's hash and the Authorization. No
/// `x-acs-version`: naming Alibaba's VPC version would ask for its nested answer shapes,
/// and the CLI reads the agent's own.
fn signed_headers(
    host: &str,
    action: &str,
    body: &str,
    key: &AccessKey,
) -> Result<Vec<(String, String)>, TransportError> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .map_err(|e| TransportError::Request(format!("formatting the time: {e}")))?;
    let base = [
        ("host", host.to_string()),
        ("x-acs-action", action.to_string()),
        ("x-acs-date", date),
        (
            "x-acs-signature-nonce",
            uuid::Uuid::new_v4().simple().to_string(),
        ),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
    ];
    let query = vec![("Action".to_string(), action.to_string())];
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| *k != "host" && *k != "content-type")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    out.extend(crate::api::auth::acs3::sign_request(
        &crate::api::auth::acs3::Signing {
            method: "POST",
            query: &query,
            headers: &base,
            body: body.as_bytes(),
            access_key_id: &key.id,
            secret: key.secret.expose(),
        },
    ));
    Ok(out)
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Reply, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // The connection's own error, if any, also fails send_request, which reports it.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply::new(status, body.to_vec()))
}

async fn send(t: &Transport, action: &str, params: &Params) -> Result<Reply, TransportError> {
    let request = build_request(t, action, params)?;
    let target = t.to_string();
    let attempt = async {
        let result = match t {
            Transport::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| connect_error(t, e))?;
                exchange(TokioIo::new(stream), request).await
            }
            Transport::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| connect_error(t, e))?;
                exchange(TokioIo::new(stream), request).await
            }
        };
        result.map_err(|e| TransportError::Exchange {
            target: target.clone(),
            detail: e.to_string(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| TransportError::Timeout {
            target: target.clone(),
        })?
}

/// Runs one client command; builds its own current-thread tokio runtime. Exit codes: 0
/// success, 1 the API answered an error (`error: <Code>: <Message> (RequestId <id>)` on
/// stderr; with -o json the JSON body on stdout too), 2 usage or connection problems.
pub fn run(args: &ClientArgs, command: ClientCommand) -> ExitCode {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let code = run_with(
        args,
        command,
        &env,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

fn run_with(
    args: &ClientArgs,
    command: ClientCommand,
    env: &dyn Fn(&str) -> Option<OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let prepared = plan(command).and_then(|p| Ok((p, transport(args, env)?)));
    let (plan, transport) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "error: starting the runtime: {e}");
            return EXIT_USAGE;
        }
    };
    let result = runtime.block_on(execute(&transport, &plan, args.output));
    let _ = out.write_all(result.stdout.as_bytes());
    let _ = err.write_all(result.stderr.as_bytes());
    let _ = out.flush();
    result.code
}

/// What a command printed and how it ended; collected first so paging failures do not leave
/// half a table behind.
#[derive(Debug, Default)]
struct Outcome {
    code: u8,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn usage(message: impl fmt::Display) -> Outcome {
        Outcome {
            code: EXIT_USAGE,
            stderr: format!("error: {message}\n"),
            ..Outcome::default()
        }
    }
}

fn body_text(reply: &Reply) -> String {
    let mut s = String::from_utf8_lossy(&reply.body).into_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

async fn execute(t: &Transport, plan: &Plan, output: Output) -> Outcome {
    let mut params = plan.params.clone();
    let mut items: Vec<Value> = Vec::new();
    let mut seen_tokens = HashSet::new();
    for _ in 0..MAX_PAGES {
        let reply = match send(t, &plan.action, &params).await {
            Ok(r) => r,
            Err(e) => return Outcome::usage(e),
        };
        if let Some(f) = reply.failure() {
            return failed(&reply, f, output);
        }
        if output == Output::Json {
            let mut outcome = Outcome {
                stdout: body_text(&reply),
                ..Outcome::default()
            };
            if let Some(token) = next_token(&reply) {
                outcome.stderr = format!("more results: repeat with --next-token {token}\n");
            }
            return outcome;
        }
        let Some(field) = plan.render.list_field() else {
            return rendered(t, plan.render, &reply);
        };
        let Some(page) = reply.json.as_ref().and_then(|j| j.get(field)) else {
            return Outcome::usage(format!(
                "unexpected answer from the agent's {t}: no {field}"
            ));
        };
        items.extend(page.as_array().into_iter().flatten().cloned());
        let next = next_token(&reply);
        match next {
            Some(token) if plan.follow_pages => {
                if !seen_tokens.insert(token.clone()) {
                    return Outcome::usage(format!(
                        "the agent's {t} repeated NextToken {token:?}; giving up"
                    ));
                }
                params.0.retain(|(k, _)| k != "NextToken");
                params.set("NextToken", token);
            }
            _ => {
                let mut outcome = Outcome {
                    stdout: render_list(plan.render, &items),
                    ..Outcome::default()
                };
                if let Some(token) = next {
                    outcome.stderr = format!("more results: repeat with --next-token {token}\n");
                }
                return outcome;
            }
        }
    }
    Outcome::usage(format!(
        "the agent's {t} returned more than {MAX_PAGES} pages; giving up"
    ))
}

fn next_token(reply: &Reply) -> Option<String> {
    reply
        .json
        .as_ref()
        .and_then(|j| str_field(j, "NextToken"))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn failed(reply: &Reply, failure: ApiFailure, output: Output) -> Outcome {
    // Alibaba's dry-run convention: an error status whose code says "would have succeeded".
    if failure.code == "DryRunOperation" {
        let stdout = match output {
            Output::Json => body_text(reply),
            Output::Table => format!(
                "dry run ok: the request would have succeeded{}\n",
                request_id_suffix(reply)
            ),
        };
        return Outcome {
            code: EXIT_OK,
            stdout,
            stderr: String::new(),
        };
    }
    Outcome {
        code: EXIT_API_ERROR,
        stdout: match output {
            Output::Json => body_text(reply),
            Output::Table => String::new(),
        },
        stderr: format!("{failure}\n"),
    }
}

fn request_id_suffix(reply: &Reply) -> String {
    reply
        .request_id()
        .map(|id| format!(" (RequestId {id})"))
        .unwrap_or_default()
}

/// Table-mode output of a successful non-list answer.
fn rendered(t: &Transport, render: Render, reply: &Reply) -> Outcome {
    let ok_line = format!("ok{}\n", request_id_suffix(reply));
    let unexpected =
        |what: &str| Outcome::usage(format!("unexpected answer from the agent's {t}: {what}"));
    let Some(json) = reply.json.as_ref() else {
        if render == Render::Raw {
            // `call Format=XML …` and the like: not ours to interpret.
            return Outcome {
                stdout: body_text(reply),
                ..Outcome::default()
            };
        }
        return unexpected("not JSON");
    };
    match render {
        Render::Raw => Outcome {
            stdout: format!(
                "{}\n",
                serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())
            ),
            ..Outcome::default()
        },
        Render::Done => Outcome {
            stdout: ok_line,
            ..Outcome::default()
        },
        Render::Created(field) => match str_field(json, field) {
            Some(id) => Outcome {
                code: EXIT_OK,
                stdout: format!("{id}\n"),
                stderr: ok_line,
            },
            None => unexpected(&format!("no {field}")),
        },
        Render::FilterCreated => match str_field(json, "TrafficMirrorFilterId") {
            Some(id) => Outcome {
                code: EXIT_OK,
                stdout: format!("{id}\n{}", created_rules(json, "  ")),
                stderr: ok_line,
            },
            None => unexpected("no TrafficMirrorFilterId"),
        },
        Render::RulesCreated => Outcome {
            code: EXIT_OK,
            stdout: created_rules(json, ""),
            stderr: ok_line,
        },
        Render::Sessions
        | Render::Filters
        | Render::Targets
        | Render::FlowLogs
        | Render::Receivers => unexpected("not a list"),
    }
}

/// `IngressRules: [{InstanceId}]` and `EgressRules` of a create answer, one line per rule.
fn created_rules(json: &Value, indent: &str) -> String {
    let mut rows = Vec::new();
    for (field, direction) in [("IngressRules", "ingress"), ("EgressRules", "egress")] {
        for rule in json
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = match rule {
                Value::String(s) => s.as_str(),
                other => str_field(other, "InstanceId")
                    .or_else(|| str_field(other, "TrafficMirrorFilterRuleId"))
                    .unwrap_or("-"),
            };
            rows.push(vec![direction.to_string(), sanitize(id)]);
        }
    }
    indented(indent, &aligned_lines(None, &rows))
}

/// A cell of a table: strings as they are, numbers and booleans printed, lists
/// comma-joined, absent or empty as "-".
fn cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .filter(|s| s != "-")
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    };
    if text.is_empty() {
        "-".to_string()
    } else {
        sanitize(&text)
    }
}

/// Names come from whoever created the object; control characters would break the table or
/// drive the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Rows (and a header) in aligned columns, two spaces apart, with no borders, as kubectl
/// prints them; one line each, trailing spaces trimmed. comfy-table measures cells in terminal
/// columns, so names in Chinese (two columns a character) keep the columns straight.
fn aligned_lines(headers: Option<&[&str]>, rows: &[Vec<String>]) -> Vec<String> {
    let mut grid = comfy_table::Table::new();
    grid.load_style(comfy_table::TableStyle::new());
    if let Some(headers) = headers {
        grid.set_header(headers.to_vec());
    }
    grid.add_rows(rows.iter().cloned());
    for column in grid.column_iter_mut() {
        column.set_padding((0, 2));
    }
    grid.lines().map(|l| l.trim_end().to_string()).collect()
}

fn indented(indent: &str, lines: &[String]) -> String {
    lines.iter().map(|l| format!("{indent}{l}\n")).collect()
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    indented("", &aligned_lines(Some(headers), rows))
}

fn render_list(render: Render, items: &[Value]) -> String {
    match render {
        Render::Sessions => render_sessions(items),
        Render::Filters => render_filters(items),
        Render::Targets => render_targets(items),
        Render::FlowLogs => render_flow_logs(items),
        Render::Receivers => render_receivers(items),
        _ => String::new(),
    }
}

fn render_sessions(sessions: &[Value]) -> String {
    let has_errors = sessions.iter().any(|s| {
        s.get("TrafficMirrorSessionErrors")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
    });
    let mut headers = vec![
        "ID", "NAME", "PRIORITY", "VNI", "PKT-LEN", "ENABLED", "FILTER", "TARGET", "SOURCES",
        "STATUS", "PATH",
    ];
    // Budget columns only where a session has a budget or sampling, or skipped something.
    let has_budget = sessions
        .iter()
        .any(|s| budget_cell(s) != "-" || skipped_cell(s) != "-");
    if has_budget {
        headers.extend(["BUDGET", "SKIPPED"]);
    }
    if has_errors {
        headers.push("ERRORS");
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let mut row: Vec<String> = [
                "TrafficMirrorSessionId",
                "TrafficMirrorSessionName",
                "Priority",
                "VirtualNetworkId",
                "PacketLength",
                "Enabled",
                "TrafficMirrorFilterId",
                "TrafficMirrorTargetId",
                "TrafficMirrorSourceIds",
                "TrafficMirrorSessionStatus",
                "CopyPath",
            ]
            .iter()
            .map(|f| cell(s.get(*f)))
            .collect();
            if has_budget {
                row.push(budget_cell(s));
                row.push(skipped_cell(s));
            }
            if has_errors {
                let errors = s
                    .get("TrafficMirrorSessionErrors")
                    .and_then(Value::as_array)
                    .map(|e| {
                        e.iter()
                            .map(|x| cell(Some(x)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "-".to_string());
                row.push(errors);
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// `10000pps,1000000bps,1/100flow`, or `-` for a session that mirrors everything it matches.
fn budget_cell(s: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = s.get("MaxPacketsPerSecond").and_then(Value::as_u64) {
        parts.push(format!("{n}pps"));
    }
    if let Some(n) = s.get("MaxBitsPerSecond").and_then(Value::as_u64) {
        parts.push(format!("{n}bps"));
    }
    if let Some(n) = s
        .get("SampleOneIn")
        .and_then(Value::as_u64)
        .filter(|n| *n > 1)
    {
        let mode = s
            .get("SampleMode")
            .and_then(Value::as_str)
            .unwrap_or("packet");
        parts.push(format!("1/{n}{mode}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// Skipped packets by reason, both directions together: `budget_packets=12,sampled_out=3`.
fn skipped_cell(s: &Value) -> String {
    let Some(dirs) = s.get("SkippedPackets").and_then(Value::as_object) else {
        return "-".into();
    };
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for reasons in dirs.values().filter_map(Value::as_object) {
        for (reason, n) in reasons {
            *totals.entry(reason.as_str()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let parts: Vec<String> = totals
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn render_filters(filters: &[Value]) -> String {
    const FILTER_HEADERS: [&str; 5] = ["ID", "NAME", "INGRESS", "EGRESS", "STATUS"];
    const RULE_HEADERS: [&str; 9] = [
        "RULE-ID",
        "DIRECTION",
        "PRIORITY",
        "ACTION",
        "PROTOCOL",
        "SRC",
        "DST",
        "SRC-PORTS",
        "DST-PORTS",
    ];
    let rules_of = |f: &Value, field: &str| -> Vec<Value> {
        f.get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut filter_rows = Vec::new();
    let mut rule_rows: Vec<Vec<Vec<String>>> = Vec::new();
    for f in filters {
        let ingress = rules_of(f, "IngressRules");
        let egress = rules_of(f, "EgressRules");
        filter_rows.push(vec![
            cell(f.get("TrafficMirrorFilterId")),
            cell(f.get("TrafficMirrorFilterName")),
            ingress.len().to_string(),
            egress.len().to_string(),
            cell(f.get("TrafficMirrorFilterStatus")),
        ]);
        let rows = [("ingress", &ingress), ("egress", &egress)]
            .into_iter()
            .flat_map(|(direction, rules)| {
                rules.iter().map(move |r| {
                    let dir = match cell(r.get("TrafficDirection")).as_str() {
                        "-" => direction.to_string(),
                        d => d.to_string(),
                    };
                    vec![
                        cell(r.get("TrafficMirrorFilterRuleId")),
                        dir,
                        cell(r.get("Priority")),
                        cell(r.get("Action")),
                        cell(r.get("Protocol")),
                        cell(r.get("SourceCidrBlock")),
                        cell(r.get("DestinationCidrBlock")),
                        cell(r.get("SourcePortRange")),
                        cell(r.get("DestinationPortRange")),
                    ]
                })
            })
            .collect();
        rule_rows.push(rows);
    }
    // One width per column across all filters, and one across all rules, so every block
    // lines up with the others: two grids, whose lines are then interleaved.
    let filter_lines = aligned_lines(Some(&FILTER_HEADERS), &filter_rows);
    let all_rules: Vec<Vec<String>> = rule_rows.iter().flatten().cloned().collect();
    let rule_lines = aligned_lines(Some(&RULE_HEADERS), &all_rules);
    let (rule_header, mut rule_lines) = match rule_lines.split_first() {
        Some((header, rest)) => (header.as_str(), rest.iter()),
        None => ("", [].iter()),
    };
    let mut filter_lines = filter_lines.iter();
    let mut s = filter_lines
        .next()
        .map(|header| format!("{header}\n"))
        .unwrap_or_default();
    for (row, rules) in filter_lines.zip(&rule_rows) {
        s.push_str(&format!("{row}\n"));
        if !rules.is_empty() {
            s.push_str(&format!("  {rule_header}\n"));
            for line in rule_lines.by_ref().take(rules.len()) {
                s.push_str(&format!("  {line}\n"));
            }
        }
    }
    s
}

fn render_targets(targets: &[Value]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let destination = match (
                cell(t.get("DestinationIp")).as_str(),
                t.get("DestinationPort"),
            ) {
                ("-", _) => "-".to_string(),
                (ip, port) => {
                    let ip = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    };
                    match cell(port).as_str() {
                        "-" => ip,
                        port => format!("{ip}:{port}"),
                    }
                }
            };
            vec![
                cell(t.get("TrafficMirrorTargetId")),
                cell(t.get("TrafficMirrorTargetName")),
                cell(t.get("InstanceType")),
                cell(t.get("InstanceId")),
                destination,
                cell(t.get("Status")),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "TYPE", "INSTANCE", "DESTINATION", "STATUS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};
    use serde_json::json;
    use std::{
        io::{BufRead, BufReader, Read},
        net::TcpListener,
        os::unix::net::UnixListener,
        thread::JoinHandle,
    };

    /// The shape main.rs gives it: client flags at the top, client commands below.
    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(argv: &[&str]) -> TestCli {
        TestCli::try_parse_from(std::iter::once("mirror-agent").chain(argv.iter().copied()))
            .unwrap()
    }

    fn plan_of(argv: &[&str]) -> Plan {
        plan(parse(argv).command).unwrap()
    }

    fn pairs(plan: &Plan) -> Vec<(&str, &str)> {
        plan.params
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn clap_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn key_value_parsing() {
        assert_eq!(
            parse_key_value("MaxResults=10").unwrap(),
            ("MaxResults".into(), "10".into())
        );
        assert_eq!(
            parse_key_value("NextToken=abc==").unwrap(),
            ("NextToken".into(), "abc==".into())
        );
        assert_eq!(
            parse_key_value("Name=").unwrap(),
            ("Name".into(), "".into())
        );
        assert!(parse_key_value("MaxResults").is_err());
        assert!(parse_key_value("=x").is_err());

        let p = plan_of(&[
            "call",
            "ListTrafficMirrorSessions",
            "MaxResults=10",
            "TrafficMirrorSourceIds.1=eth0",
        ]);
        assert_eq!(p.action, "ListTrafficMirrorSessions");
        assert_eq!(p.render, Render::Raw);
        assert_eq!(
            pairs(&p),
            [("MaxResults", "10"), ("TrafficMirrorSourceIds.1", "eth0")]
        );
    }

    #[test]
    fn param_without_equals_is_a_usage_error() {
        let cli = parse(&["call", "ListTrafficMirrorSessions", "MaxResults"]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&cli.args, cli.command, &no_env, &mut out, &mut err);
        assert_eq!(code, EXIT_USAGE);
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("\"MaxResults\" is not Key=Value"), "{err}");
    }

    #[test]
    fn rule_spec_parsing() {
        let spec = parse_rule_spec(
            "priority=1,action=accept,protocol=TCP,ip-version=IPv4,src=10.0.0.0/8,dst=0.0.0.0/0,src-ports=-1/-1,dst-ports=80/80",
        )
        .unwrap();
        assert_eq!(
            spec.0,
            [
                ("Priority", "1".to_string()),
                ("Action", "accept".to_string()),
                ("Protocol", "TCP".to_string()),
                ("IpVersion", "IPv4".to_string()),
                ("SourceCidrBlock", "10.0.0.0/8".to_string()),
                ("DestinationCidrBlock", "0.0.0.0/0".to_string()),
                ("SourcePortRange", "-1/-1".to_string()),
                ("DestinationPortRange", "80/80".to_string()),
            ]
        );
        assert!(
            parse_rule_spec("priority=1,port=80")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            parse_rule_spec("priority=1,priority=2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_rule_spec("priority")
                .unwrap_err()
                .contains("not key=value")
        );
        assert!(
            parse_rule_spec("priority=")
                .unwrap_err()
                .contains("no value")
        );

        let p = plan_of(&[
            "filter",
            "create",
            "--name",
            "web",
            "--ingress",
            "priority=1,action=accept,protocol=TCP,dst-ports=80/80",
            "--ingress",
            "priority=2,action=reject,protocol=ALL",
            "--egress",
            "priority=1,action=accept,protocol=UDP,src=192.0.2.0/24",
            "--tag",
            "team=net",
        ]);
        assert_eq!(p.action, "CreateTrafficMirrorFilter");
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorFilterName", "web"),
                ("IngressRules.1.Priority", "1"),
                ("IngressRules.1.Action", "accept"),
                ("IngressRules.1.Protocol", "TCP"),
                ("IngressRules.1.DestinationPortRange", "80/80"),
                ("IngressRules.2.Priority", "2"),
                ("IngressRules.2.Action", "reject"),
                ("IngressRules.2.Protocol", "ALL"),
                ("EgressRules.1.Priority", "1"),
                ("EgressRules.1.Action", "accept"),
                ("EgressRules.1.Protocol", "UDP"),
                ("EgressRules.1.SourceCidrBlock", "192.0.2.0/24"),
                ("Tags.1.Key", "team"),
                ("Tags.1.Value", "net"),
            ]
        );
        // A bad RULE is rejected by clap, before anything is sent.
        assert!(TestCli::try_parse_from(["m", "filter", "create", "--ingress", "prio=1"]).is_err());
    }

    #[test]
    fn session_create_params() {
        let p = plan_of(&[
            "session",
            "create",
            "--priority",
            "1",
            "--filter",
            "tmf-1",
            "--target",
            "tmt-1",
            "--vni",
            "42",
            "--packet-length",
            "128",
            "--enabled",
            "--name",
            "web",
            "--description",
            "a=b",
            "--source",
            "eth0",
            "--source",
            "eth1",
            "--tag",
            "env=prod=1",
            "--tag",
            "bare",
            "--max-packets-per-second",
            "10000",
            "--sample-one-in",
            "100",
            "--sample-mode",
            "flow",
            "--client-token",
            "tok-1",
            "--dry-run",
        ]);
        assert_eq!(p.action, "CreateTrafficMirrorSession");
        assert_eq!(p.render, Render::Created("TrafficMirrorSessionId"));
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionName", "web"),
                ("TrafficMirrorSessionDescription", "a=b"),
                ("Priority", "1"),
                ("VirtualNetworkId", "42"),
                ("PacketLength", "128"),
                ("Enabled", "true"),
                ("TrafficMirrorFilterId", "tmf-1"),
                ("TrafficMirrorTargetId", "tmt-1"),
                ("TrafficMirrorSourceIds.1", "eth0"),
                ("TrafficMirrorSourceIds.2", "eth1"),
                ("Tags.1.Key", "env"),
                ("Tags.1.Value", "prod=1"),
                ("Tags.2.Key", "bare"),
                ("MaxPacketsPerSecond", "10000"),
                ("SampleOneIn", "100"),
                ("SampleMode", "flow"),
                ("ClientToken", "tok-1"),
                ("DryRun", "true"),
            ]
        );

        let minimal = plan_of(&[
            "session",
            "create",
            "--priority",
            "3",
            "--filter",
            "tmf-1",
            "--target",
            "tmt-1",
            "--enabled=false",
        ]);
        assert_eq!(
            pairs(&minimal),
            [
                ("Priority", "3"),
                ("Enabled", "false"),
                ("TrafficMirrorFilterId", "tmf-1"),
                ("TrafficMirrorTargetId", "tmt-1"),
            ]
        );
        assert!(TestCli::try_parse_from(["m", "session", "create", "--priority", "1"]).is_err());
    }

    #[test]
    fn session_update_params() {
        let p = plan_of(&[
            "session",
            "update",
            "tms-1",
            "--priority",
            "2",
            "--vni",
            "7",
            "--packet-length",
            "64",
            "--enabled",
            "false",
            "--name",
            "n",
            "--description",
            "d",
            "--filter",
            "tmf-2",
            "--target",
            "tmt-2",
            "--client-token",
            "t",
        ]);
        assert_eq!(p.action, "UpdateTrafficMirrorSessionAttribute");
        assert_eq!(p.render, Render::Done);
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionId", "tms-1"),
                ("TrafficMirrorSessionName", "n"),
                ("TrafficMirrorSessionDescription", "d"),
                ("Priority", "2"),
                ("VirtualNetworkId", "7"),
                ("PacketLength", "64"),
                ("Enabled", "false"),
                ("TrafficMirrorFilterId", "tmf-2"),
                ("TrafficMirrorTargetId", "tmt-2"),
                ("ClientToken", "t"),
            ]
        );
        assert!(plan(parse(&["session", "update", "tms-1", "--dry-run"]).command).is_err());
    }

    #[test]
    fn other_commands_params() {
        let p = plan_of(&[
            "session",
            "add-sources",
            "tms-1",
            "eth0",
            "eth1",
            "--dry-run",
        ]);
        assert_eq!(p.action, "AddSourcesToTrafficMirrorSession");
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionId", "tms-1"),
                ("TrafficMirrorSourceIds.1", "eth0"),
                ("TrafficMirrorSourceIds.2", "eth1"),
                ("DryRun", "true"),
            ]
        );
        let p = plan_of(&[
            "session", "list", "--id", "tms-1", "--id", "tms-2", "--source", "eth0",
        ]);
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionIds.1", "tms-1"),
                ("TrafficMirrorSessionIds.2", "tms-2"),
                ("TrafficMirrorSourceId", "eth0"),
            ]
        );
        assert!(p.follow_pages);
        let p = plan_of(&[
            "rule",
            "add",
            "tmf-1",
            "--direction",
            "egress",
            "--priority",
            "5",
            "--action",
            "drop",
            "--protocol",
            "UDP",
            "--dst-ports",
            "53/53",
        ]);
        assert_eq!(p.action, "CreateTrafficMirrorFilterRules");
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorFilterId", "tmf-1"),
                ("EgressRules.1.Priority", "5"),
                ("EgressRules.1.Action", "reject"),
                ("EgressRules.1.Protocol", "UDP"),
                ("EgressRules.1.DestinationPortRange", "53/53"),
            ]
        );
        let p = plan_of(&[
            "rule", "update", "tmr-1", "--action", "accept", "--src", "::/0",
        ]);
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorFilterRuleId", "tmr-1"),
                ("RuleAction", "accept"),
                ("SourceCidrBlock", "::/0"),
            ]
        );
        let p = plan_of(&["rule", "delete", "tmf-1", "tmr-1", "tmr-2"]);
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorFilterId", "tmf-1"),
                ("TrafficMirrorFilterRuleIds.1", "tmr-1"),
                ("TrafficMirrorFilterRuleIds.2", "tmr-2"),
            ]
        );
        let p = plan_of(&[
            "target",
            "create",
            "--destination-ip",
            "192.0.2.9",
            "--destination-port",
            "4790",
            "--name",
            "collector",
        ]);
        assert_eq!(
            pairs(&p),
            [
                ("DestinationIp", "192.0.2.9"),
                ("DestinationPort", "4790"),
                ("TrafficMirrorTargetName", "collector"),
            ]
        );
        assert!(TestCli::try_parse_from(["m", "target", "create"]).is_err());
        assert!(
            TestCli::try_parse_from([
                "m",
                "target",
                "create",
                "--destination-ip",
                "192.0.2.9",
                "--instance-id",
                "eth0"
            ])
            .is_err()
        );
        assert!(
            TestCli::try_parse_from([
                "m",
                "target",
                "create",
                "--instance-id",
                "eth0",
                "--destination-port",
                "1"
            ])
            .is_err()
        );
    }

    #[test]
    fn transport_resolution() {
        let cli = parse(&["session", "list"]);
        assert_eq!(
            transport(&cli.args, &no_env).unwrap(),
            Transport::Unix(PathBuf::from("/run/mirror-agent/api.sock"))
        );
        let env = |name: &str| match name {
            ENV_SOCKET => Some(OsString::from("/tmp/env.sock")),
            ENV_ENDPOINT => Some(OsString::from("http://127.0.0.1:8080/")),
            ENV_TOKEN => Some(OsString::from("secret")),
            _ => None,
        };
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Tcp {
                authority: "127.0.0.1:8080".into(),
                token: Some("secret".into()),
                key: None,
            }
        );
        // A --socket flag beats an endpoint from the environment.
        let cli = parse(&["--socket", "/tmp/x.sock", "session", "list"]);
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Unix(PathBuf::from("/tmp/x.sock"))
        );
        let cli = parse(&[
            "session",
            "list",
            "--endpoint",
            "http://[::1]",
            "--token",
            "t",
        ]);
        assert_eq!(
            transport(&cli.args, &env).unwrap(),
            Transport::Tcp {
                authority: "[::1]:80".into(),
                token: Some("t".into()),
                key: None,
            }
        );
        assert!(
            TestCli::try_parse_from([
                "m",
                "--socket",
                "a",
                "--endpoint",
                "http://h:1",
                "session",
                "list"
            ])
            .is_err()
        );
        for bad in [
            "https://h:1",
            "h:1",
            "http://",
            "http://h:port",
            "http://h:1/api",
            "http://u@h:1",
            "http://[::1",
            "http://:80",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_endpoint("HTTP://agent.local").unwrap(),
            "agent.local:80"
        );
    }

    #[test]
    fn token_header_only_over_tcp() {
        let params = Params::default();
        let tcp = Transport::Tcp {
            authority: "127.0.0.1:8080".into(),
            token: Some("s3cret".into()),
            key: None,
        };
        let req = build_request(&tcp, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.uri(), "/?Action=ListTrafficMirrorTargets");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer s3cret");
        let unix = Transport::Unix("/x".into());
        let req = build_request(&unix, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.headers()[HOST], "mirror-agent");
        assert!(req.headers().get(AUTHORIZATION).is_none());
        let bad = Transport::Tcp {
            authority: "h:1".into(),
            token: Some("a\nb".into()),
            key: None,
        };
        assert!(build_request(&bad, "X", &params).is_err());
    }

    #[test]
    fn access_key_signs_like_alibabas_sdk() {
        use crate::api::auth::{Authenticator, DEFAULT_WINDOW, Request as AuthRequest, Secret};
        let env = |name: &str| match name {
            ENV_ACCESS_KEY_SECRET => Some(OsString::from("cli-secret")),
            _ => None,
        };
        let cli = parse(&[
            "--endpoint",
            "http://127.0.0.1:8080",
            "--access-key-id",
            "cli-key",
            "target",
            "list",
        ]);
        let t = transport(&cli.args, &env).unwrap();
        assert!(!format!("{t:?}").contains("cli-secret"), "{t:?}");
        let mut params = Params::default();
        params.0.push(("MaxResults".into(), "5".into()));
        let req = build_request(&t, "ListTrafficMirrorTargets", &params).unwrap();
        assert_eq!(req.headers()["x-acs-action"], "ListTrafficMirrorTargets");
        let auth = Authenticator::new(
            [("cli-key".to_string(), Secret::new("cli-secret"))],
            None,
            DEFAULT_WINDOW,
        );
        // The body is form(params), which the signature covers.
        assert_eq!(form(&params), "MaxResults=5");
        let (parts, _) = req.into_parts();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let r = AuthRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body: b"MaxResults=5",
        };
        assert_eq!(auth.check(&r, now), Ok(()));
        // Without the secret in the environment the CLI says where it belongs.
        let none = |_: &str| None;
        let e = transport(&cli.args, &none).unwrap_err();
        assert!(e.contains(ENV_ACCESS_KEY_SECRET), "{e}");
    }

    fn sample_sessions() -> Value {
        json!({
            "RequestId": "REQ-1",
            "TotalCount": 2,
            "MaxResults": 10,
            "NextToken": "",
            "TrafficMirrorSessions": [
                {
                    "TrafficMirrorSessionId": "tms-aaa",
                    "TrafficMirrorSessionName": "web",
                    "TrafficMirrorSessionDescription": "",
                    "Priority": 1,
                    "VirtualNetworkId": 100,
                    "PacketLength": 128,
                    "Enabled": true,
                    "TrafficMirrorFilterId": "tmf-1",
                    "TrafficMirrorTargetId": "tmt-1",
                    "TrafficMirrorTargetType": "NetworkInterface",
                    "TrafficMirrorSourceIds": ["eth0", "eth1"],
                    "TrafficMirrorSessionStatus": "Created",
                    "CopyPath": "fast",
                    "TrafficMirrorSessionBusinessStatus": "Normal",
                    "Tags": [],
                    "CreationTime": "2024-01-01T00:00:00Z"
                },
                {
                    "TrafficMirrorSessionId": "tms-bbbbbb",
                    "Priority": 20,
                    "VirtualNetworkId": 7,
                    "Enabled": false,
                    "TrafficMirrorFilterId": "tmf-2",
                    "TrafficMirrorTargetId": "tmt-2",
                    "TrafficMirrorSourceIds": ["veth9"],
                    "TrafficMirrorSessionStatus": "Created",
                    "TrafficMirrorSessionBusinessStatus": "FailedToApply",
                    "TrafficMirrorSessionErrors": ["veth9: no such interface"]
                }
            ]
        })
    }

    #[test]
    fn sessions_table() {
        let answer = sample_sessions();
        let items = answer["TrafficMirrorSessions"].as_array().unwrap();
        let expected = "\
ID          NAME  PRIORITY  VNI  PKT-LEN  ENABLED  FILTER  TARGET  SOURCES    STATUS   PATH  ERRORS
tms-aaa     web   1         100  128      true     tmf-1   tmt-1   eth0,eth1  Created  fast  -
tms-bbbbbb  -     20        7    -        false    tmf-2   tmt-2   veth9      Created  -     veth9: no such interface
";
        assert_eq!(render_sessions(items), expected);
        // Without errors anywhere, no ERRORS column.
        let first = render_sessions(&items[..1]);
        assert_eq!(
            first.lines().next().unwrap().split_whitespace().last(),
            Some("PATH")
        );
        assert_eq!(
            render_sessions(&[]),
            "ID  NAME  PRIORITY  VNI  PKT-LEN  ENABLED  FILTER  TARGET  SOURCES  STATUS  PATH\n"
        );
    }

    #[test]
    fn sessions_table_shows_budgets_and_skips() {
        let mut answer = sample_sessions();
        answer["TrafficMirrorSessions"][0]["MaxPacketsPerSecond"] = json!(10000);
        answer["TrafficMirrorSessions"][0]["SampleOneIn"] = json!(100);
        answer["TrafficMirrorSessions"][0]["SampleMode"] = json!("flow");
        answer["TrafficMirrorSessions"][0]["SkippedPackets"] = json!({
            "Ingress": {"budget_packets": 5, "budget_bits": 0, "sampled_out": 7, "send_errors": 0},
            "Egress": {"budget_packets": 1, "budget_bits": 0, "sampled_out": 0, "send_errors": 0},
        });
        let items = answer["TrafficMirrorSessions"].as_array().unwrap();
        let out = render_sessions(items);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert!(header.ends_with(&["PATH", "BUDGET", "SKIPPED", "ERRORS"]));
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert!(first.contains(&"10000pps,1/100flow"), "{first:?}");
        assert!(
            first.contains(&"budget_packets=6,sampled_out=7"),
            "{first:?}"
        );
    }

    #[test]
    fn filters_table() {
        let answer = json!({
            "RequestId": "REQ-2",
            "TotalCount": 2,
            "TrafficMirrorFilters": [
                {
                    "TrafficMirrorFilterId": "tmf-1",
                    "TrafficMirrorFilterName": "web",
                    "TrafficMirrorFilterStatus": "Created",
                    "IngressRules": [{
                        "TrafficMirrorFilterRuleId": "tmr-1",
                        "TrafficMirrorFilterId": "tmf-1",
                        "TrafficDirection": "ingress",
                        "Priority": 1,
                        "Action": "accept",
                        "Protocol": "TCP",
                        "IpVersion": "IPv4",
                        "SourceCidrBlock": "0.0.0.0/0",
                        "DestinationCidrBlock": "10.0.0.0/8",
                        "SourcePortRange": "-1/-1",
                        "DestinationPortRange": "80/80",
                        "TrafficMirrorFilterRuleStatus": "Created"
                    }],
                    "EgressRules": [{
                        "TrafficMirrorFilterRuleId": "tmr-2",
                        "TrafficDirection": "egress",
                        "Priority": 10,
                        "Action": "drop",
                        "Protocol": "ALL",
                        "SourceCidrBlock": "0.0.0.0/0",
                        "DestinationCidrBlock": "0.0.0.0/0",
                        "SourcePortRange": "-1/-1",
                        "DestinationPortRange": "-1/-1"
                    }],
                    "Tags": []
                },
                {
                    "TrafficMirrorFilterId": "tmf-22",
                    "TrafficMirrorFilterStatus": "Created",
                    "IngressRules": [],
                    "EgressRules": []
                }
            ]
        });
        let items = answer["TrafficMirrorFilters"].as_array().unwrap();
        let expected = "\
ID      NAME  INGRESS  EGRESS  STATUS
tmf-1   web   1        1       Created
  RULE-ID  DIRECTION  PRIORITY  ACTION  PROTOCOL  SRC        DST         SRC-PORTS  DST-PORTS
  tmr-1    ingress    1         accept  TCP       0.0.0.0/0  10.0.0.0/8  -1/-1      80/80
  tmr-2    egress     10        drop    ALL       0.0.0.0/0  0.0.0.0/0   -1/-1      -1/-1
tmf-22  -     0        0       Created
";
        assert_eq!(render_filters(items), expected);
    }

    #[test]
    fn targets_table() {
        let items = [
            json!({"TrafficMirrorTargetId": "tmt-1", "TrafficMirrorTargetName": "c", "InstanceType": "NetworkInterface", "DestinationIp": "192.0.2.9", "DestinationPort": 4789, "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-2", "InstanceType": "NetworkInterface", "InstanceId": "eth3", "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-3", "DestinationIp": "2001:db8::1", "DestinationPort": 4789}),
        ];
        let expected = "\
ID     NAME  TYPE              INSTANCE  DESTINATION         STATUS
tmt-1  c     NetworkInterface  -         192.0.2.9:4789      Available
tmt-2  -     NetworkInterface  eth3      -                   Available
tmt-3  -     -                 -         [2001:db8::1]:4789  -
";
        assert_eq!(render_targets(&items), expected);
    }

    /// The seeds' own examples name objects in Chinese: each of those characters takes two
    /// terminal columns, and the columns after the name must still line up.
    #[test]
    fn wide_characters_keep_columns_aligned() {
        let items = [
            json!({"TrafficMirrorTargetId": "tmt-1", "TrafficMirrorTargetName": "流量镜像目标", "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-2", "TrafficMirrorTargetName": "ids", "Status": "Available"}),
        ];
        // "流量镜像目标" is 6 characters and 12 columns wide.
        let expected = "\
ID     NAME          TYPE  INSTANCE  DESTINATION  STATUS
tmt-1  流量镜像目标  -     -         -            Available
tmt-2  ids           -     -         -            Available
";
        assert_eq!(render_targets(&items), expected);
    }

    #[test]
    fn error_formatting() {
        let body = json!({
            "RequestId": "REQ-9",
            "Code": "ResourceNotFound.TrafficMirrorSession",
            "Message": "The specified session does not exist.",
            "HostId": "mirror-agent"
        });
        let reply = Reply::new(404, body.to_string().into_bytes());
        let failure = reply.failure().unwrap();
        assert_eq!(
            failure.to_string(),
            "error: ResourceNotFound.TrafficMirrorSession: The specified session does not exist. (RequestId REQ-9)"
        );
        let outcome = failed(&reply, failure.clone(), Output::Json);
        assert_eq!(outcome.code, EXIT_API_ERROR);
        assert_eq!(outcome.stdout, format!("{body}\n"));
        let outcome = failed(&reply, failure, Output::Table);
        assert!(outcome.stdout.is_empty());

        let volc = json!({"ResponseMetadata": {"RequestId": "V-1", "Error": {"Code": "InvalidParameter", "Message": "bad"}}});
        assert_eq!(
            Reply::new(400, volc.to_string().into_bytes())
                .failure()
                .unwrap()
                .to_string(),
            "error: InvalidParameter: bad (RequestId V-1)"
        );
        let html = Reply::new(502, b"<html>Bad Gateway</html>\n".to_vec());
        assert_eq!(
            html.failure().unwrap().to_string(),
            "error: HTTP 502: <html>Bad Gateway</html>"
        );
        let ok = Reply::new(200, br#"{"RequestId":"R"}"#.to_vec());
        assert!(ok.failure().is_none());

        let dry = Reply::new(400, br#"{"RequestId":"D-1","Code":"DryRunOperation","Message":"Request validation has been passed with DryRun flag set."}"#.to_vec());
        let outcome = failed(&dry, dry.failure().unwrap(), Output::Table);
        assert_eq!(outcome.code, EXIT_OK);
        assert_eq!(
            outcome.stdout,
            "dry run ok: the request would have succeeded (RequestId D-1)\n"
        );
    }

    /// Answers one HTTP/1.1 request with a canned (status, body) and returns the request's
    /// head and body.
    fn serve_one<S: Read + std::io::Write>(stream: S, status: u16, body: &str) -> (String, String) {
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
            head.push_str(&l);
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut request_body = vec![0; length];
        reader.read_exact(&mut request_body).unwrap();
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(answer.as_bytes()).unwrap();
        (head, String::from_utf8(request_body).unwrap())
    }

    /// A fake agent on a Unix socket: one connection per canned answer, in order.
    fn fake_agent(
        socket: PathBuf,
        answers: Vec<(u16, String)>,
    ) -> JoinHandle<Vec<(String, String)>> {
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            answers
                .iter()
                .map(|(status, body)| serve_one(listener.accept().unwrap().0, *status, body))
                .collect()
        })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mirror-agent-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn run_captured(argv: &[&str]) -> (u8, String, String) {
        let cli = parse(argv);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&cli.args, cli.command, &no_env, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn end_to_end_over_unix_socket() {
        let dir = temp_dir("e2e");
        let socket = dir.join("api.sock");
        let socket_arg = socket.to_str().unwrap();
        let server = fake_agent(
            socket.clone(),
            vec![
                (200, r#"{"RequestId":"R-1","TrafficMirrorSessionId":"tms-new"}"#.into()),
                (
                    404,
                    r#"{"RequestId":"R-2","Code":"ResourceNotFound.TrafficMirrorSession","Message":"no such session","HostId":"mirror-agent"}"#.into(),
                ),
                (
                    404,
                    r#"{"RequestId":"R-3","Code":"ResourceNotFound.TrafficMirrorSession","Message":"no such session","HostId":"mirror-agent"}"#.into(),
                ),
                (200, sample_sessions().to_string()),
            ],
        );

        let (code, out, err) = run_captured(&[
            "--socket",
            socket_arg,
            "session",
            "create",
            "--priority",
            "1",
            "--filter",
            "tmf-1",
            "--target",
            "tmt-1",
            "--source",
            "eth0",
            "--name",
            "a b&c",
        ]);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "tms-new\n", "ok (RequestId R-1)\n")
        );

        let (code, out, err) =
            run_captured(&["--socket", socket_arg, "session", "delete", "tms-x"]);
        assert_eq!(code, EXIT_API_ERROR);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "error: ResourceNotFound.TrafficMirrorSession: no such session (RequestId R-2)\n"
        );

        let (code, out, _) = run_captured(&[
            "-o", "json", "--socket", socket_arg, "session", "delete", "tms-y",
        ]);
        assert_eq!(code, EXIT_API_ERROR);
        assert!(out.starts_with(r#"{"RequestId":"R-3","Code""#), "{out}");

        let (code, out, _) = run_captured(&["--socket", socket_arg, "session", "list"]);
        assert_eq!(code, EXIT_OK);
        assert!(out.starts_with("ID "), "{out}");
        assert!(out.contains("tms-bbbbbb"), "{out}");

        let seen = server.join().unwrap();
        let (head, body) = &seen[0];
        assert!(
            head.starts_with("POST /?Action=CreateTrafficMirrorSession HTTP/1.1\r\n"),
            "{head}"
        );
        let head_lower = head.to_ascii_lowercase();
        assert!(head_lower.contains("host: mirror-agent\r\n"), "{head}");
        assert!(
            head_lower.contains("content-type: application/x-www-form-urlencoded\r\n"),
            "{head}"
        );
        assert_eq!(
            body,
            "TrafficMirrorSessionName=a+b%26c&Priority=1&TrafficMirrorFilterId=tmf-1&TrafficMirrorTargetId=tmt-1&TrafficMirrorSourceIds.1=eth0"
        );
        assert!(
            seen[1]
                .0
                .starts_with("POST /?Action=DeleteTrafficMirrorSession HTTP/1.1\r\n")
        );
        assert_eq!(seen[1].1, "TrafficMirrorSessionId=tms-x");
        assert_eq!(seen[3].1, "");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_socket_is_exit_2_and_named() {
        let dir = temp_dir("missing");
        let socket = dir.join("nothing.sock");
        let (code, out, err) =
            run_captured(&["--socket", socket.to_str().unwrap(), "target", "list"]);
        assert_eq!(code, EXIT_USAGE);
        assert_eq!(out, "");
        assert!(
            err.starts_with("error: cannot connect to the agent's socket "),
            "{err}"
        );
        assert!(err.contains(socket.to_str().unwrap()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn table_output_follows_pages() {
        let dir = temp_dir("pages");
        let socket = dir.join("api.sock");
        let page = |id: &str, next: &str| {
            json!({"RequestId": "R", "NextToken": next, "TrafficMirrorTargets": [{"TrafficMirrorTargetId": id}]})
                .to_string()
        };
        let server = fake_agent(
            socket.clone(),
            vec![(200, page("tmt-1", "p2")), (200, page("tmt-2", ""))],
        );
        let (code, out, err) = run_captured(&[
            "--socket",
            socket.to_str().unwrap(),
            "target",
            "list",
            "--max-results",
            "1",
        ]);
        assert_eq!((code, err.as_str()), (EXIT_OK, ""));
        assert_eq!(
            out.lines()
                .skip(1)
                .map(|l| l.split_whitespace().next().unwrap())
                .collect::<Vec<_>>(),
            ["tmt-1", "tmt-2"]
        );
        let seen = server.join().unwrap();
        assert_eq!(seen[0].1, "MaxResults=1");
        assert_eq!(seen[1].1, "MaxResults=1&NextToken=p2");

        // JSON output is one answer as is, with a hint about the rest.
        let socket = dir.join("api2.sock");
        let server = fake_agent(socket.clone(), vec![(200, page("tmt-1", "p2"))]);
        let (code, out, err) = run_captured(&[
            "--socket",
            socket.to_str().unwrap(),
            "-o",
            "json",
            "target",
            "list",
        ]);
        assert_eq!(code, EXIT_OK);
        assert_eq!(out, format!("{}\n", page("tmt-1", "p2")));
        assert_eq!(err, "more results: repeat with --next-token p2\n");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn end_to_end_over_tcp_with_token() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            serve_one(listener.accept().unwrap().0, 200, r#"{"RequestId":"R-5"}"#)
        });
        let (code, out, err) = run_captured(&[
            "--endpoint",
            &endpoint,
            "--token",
            "s3cret",
            "filter",
            "delete",
            "tmf-1",
            "--client-token",
            "ct",
        ]);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (EXIT_OK, "ok (RequestId R-5)\n", "")
        );
        let (head, body) = server.join().unwrap();
        assert!(
            head.starts_with("POST /?Action=DeleteTrafficMirrorFilter HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer s3cret\r\n"),
            "{head}"
        );
        assert_eq!(body, "TrafficMirrorFilterId=tmf-1&ClientToken=ct");
    }
}
