//! The client's command line: clap types only; what each command sends is in the resource
//! modules.

use std::{fmt, marker::PhantomData, path::PathBuf};

use super::params::{RuleSpec, Tag, parse_rule_spec, parse_tag};

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
    List(ListByIds<Receiver>),
    /// Delete a receiver and its capture interfaces (DeleteTrafficMirrorReceiver).
    Delete(ById<Receiver>),
}

#[derive(clap::Subcommand, Debug)]
pub enum FlowLogCommand {
    /// Create a flow log (CreateFlowLog); prints its id.
    Create(FlowLogCreate),
    /// List flow logs (DescribeFlowLogs).
    List {
        #[arg(long = "id", value_name = "ID", help = FlowLog::IDS_HELP)]
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
    Delete(ById<FlowLog>),
    /// Start collecting again (ActiveFlowLog).
    Activate(ById<FlowLog>),
    /// Stop collecting, keep the flow log (DeactiveFlowLog).
    Deactivate(ById<FlowLog>),
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
    Delete(ById<Session>),
    /// Mirror more sources (AddSourcesToTrafficMirrorSession).
    AddSources(SessionSources),
    /// Stop mirroring sources (RemoveSourcesFromTrafficMirrorSession).
    RemoveSources(SessionSources),
}

/// The sources added to or removed from a session.
#[derive(clap::Args, Debug, Clone)]
pub struct SessionSources {
    /// Session id (tms-…).
    pub id: String,
    /// Source interfaces (TrafficMirrorSourceIds.N).
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub mutation: Mutation,
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
    #[arg(long = "id", value_name = "ID", help = Session::IDS_HELP)]
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
    List(ListByIds<Filter>),
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
    Delete(ById<Filter>),
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
    pub(super) fn list_param(self) -> &'static str {
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
    pub(super) fn as_str(self) -> &'static str {
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
    List(ListByIds<Target>),
    /// Delete a target (DeleteTrafficMirrorTarget).
    Delete(ById<Target>),
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

/// A kind of object that list and by-id subcommands name: the help shown for its ids and the
/// API parameters that carry them.
pub trait Resource: Clone + Default + fmt::Debug + Send + Sync + 'static {
    /// Help of the id argument, e.g. "Session id (tms-…)".
    const ID_HELP: &'static str;
    /// Help of `list --id`.
    const IDS_HELP: &'static str;
    /// The parameter naming one object, e.g. TrafficMirrorSessionId.
    const ID_PARAM: &'static str;
    /// The list parameter naming several, e.g. TrafficMirrorSessionIds.
    const IDS_PARAM: &'static str;
}

macro_rules! resources {
    ($($kind:ident: $id_help:literal, $ids_help:literal, $id_param:literal, $ids_param:literal;)*) => {$(
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $kind;
        impl Resource for $kind {
            const ID_HELP: &'static str = $id_help;
            const IDS_HELP: &'static str = $ids_help;
            const ID_PARAM: &'static str = $id_param;
            const IDS_PARAM: &'static str = $ids_param;
        }
    )*};
}

resources! {
    Session: "Session id (tms-…)", "Only these sessions, repeatable (TrafficMirrorSessionIds.N)",
        "TrafficMirrorSessionId", "TrafficMirrorSessionIds";
    Filter: "Filter id (tmf-…)", "Only these filters, repeatable (TrafficMirrorFilterIds.N)",
        "TrafficMirrorFilterId", "TrafficMirrorFilterIds";
    Target: "Target id (tmt-…)", "Only these targets, repeatable (TrafficMirrorTargetIds.N)",
        "TrafficMirrorTargetId", "TrafficMirrorTargetIds";
    FlowLog: "Flow log id (fl-…)", "Only these flow logs, repeatable (FlowLogIds.N)",
        "FlowLogId", "FlowLogIds";
    Receiver: "Receiver id (tmrcv-…)",
        "Only these receivers, repeatable (TrafficMirrorReceiverIds.N)",
        "TrafficMirrorReceiverId", "TrafficMirrorReceiverIds";
}

// The help comes from the resource, not a doc comment: one struct serves every resource. Doc
// comments lose their final period in clap's short help, so the constants have none.
/// Delete, activate and the like: one object by its id.
#[derive(clap::Args, Debug, Clone)]
pub struct ById<R: Resource> {
    #[arg(help = R::ID_HELP, value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub mutation: Mutation,
    #[arg(skip)]
    pub resource: PhantomData<R>,
}

/// A list action's filter by ids, and its paging.
#[derive(clap::Args, Debug, Clone)]
pub struct ListByIds<R: Resource> {
    #[arg(long = "id", value_name = "ID", help = R::IDS_HELP)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub paging: Paging,
    #[arg(skip)]
    pub resource: PhantomData<R>,
}
