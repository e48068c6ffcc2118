//! The objects as the store keeps them and the API shows them. Values are kept in their
//! canonical text forms (validated before they are stored), so the API answers with what the
//! operator gave and the reconciler derives the data path's form from them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, Budget, FilterRule, InvalidParam, RuleSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Where an object came from: the config file re-declares its objects at every start and
/// reload; API objects live until deleted; Kubernetes objects are the node's share of the
/// cluster's custom resources, rewritten by `run --kubernetes` and read-only through the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    #[default]
    Api,
    Config,
    Kubernetes,
}

impl Origin {
    /// As the API lists it (`Origin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Config => "config",
            Origin::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub id: String,
    /// "ingress" or "egress".
    pub direction: String,
    pub priority: u16,
    /// "accept" or "drop".
    pub action: String,
    /// "ALL", "TCP", "UDP", "ICMP", "ICMPv6" or a number.
    pub protocol: String,
    /// "IPv4" or "IPv6".
    pub ip_version: String,
    pub source_cidr: String,
    pub destination_cidr: String,
    pub source_ports: String,
    pub destination_ports: String,
}

impl RuleRecord {
    /// Validates through the model and keeps the canonical spellings.
    pub fn from_spec(spec: &RuleSpec<'_>) -> Result<RuleRecord, InvalidParam> {
        let rule = FilterRule::from_spec(spec)?;
        Ok(RuleRecord::from_model(&rule))
    }

    pub fn from_model(rule: &FilterRule) -> RuleRecord {
        RuleRecord {
            id: rule.id.clone(),
            direction: rule.direction.as_str().to_string(),
            priority: rule.priority,
            action: match rule.action {
                model::Action::Accept => "accept",
                model::Action::Reject => "drop",
            }
            .to_string(),
            protocol: match rule.protocol {
                model::Protocol::All => "ALL".to_string(),
                model::Protocol::Number(model::PROTO_TCP) => "TCP".to_string(),
                model::Protocol::Number(model::PROTO_UDP) => "UDP".to_string(),
                model::Protocol::Number(model::PROTO_ICMP) => "ICMP".to_string(),
                model::Protocol::Number(model::PROTO_ICMPV6) => "ICMPv6".to_string(),
                model::Protocol::Number(n) => n.to_string(),
            },
            ip_version: match rule.ip_version {
                model::IpVersion::V4 => "IPv4",
                model::IpVersion::V6 => "IPv6",
            }
            .to_string(),
            source_cidr: rule.source_cidr.to_string(),
            destination_cidr: rule.destination_cidr.to_string(),
            source_ports: rule.source_ports.to_string(),
            destination_ports: rule.destination_ports.to_string(),
        }
    }

    pub fn spec(&self) -> RuleSpec<'_> {
        RuleSpec {
            id: &self.id,
            direction: &self.direction,
            priority: i64::from(self.priority),
            action: &self.action,
            protocol: &self.protocol,
            ip_version: Some(&self.ip_version),
            source_cidr: Some(&self.source_cidr),
            destination_cidr: Some(&self.destination_cidr),
            source_ports: Some(&self.source_ports),
            destination_ports: Some(&self.destination_ports),
        }
    }

    pub fn to_model(&self) -> Result<FilterRule, InvalidParam> {
        FilterRule::from_spec(&self.spec())
    }

    pub fn alibaba(&self, filter_id: &str) -> Value {
        json!({
            "TrafficMirrorFilterRuleId": self.id,
            "TrafficMirrorFilterId": filter_id,
            "TrafficDirection": self.direction,
            "Priority": self.priority,
            "Action": self.action,
            "Protocol": self.protocol,
            "IpVersion": self.ip_version,
            "SourceCidrBlock": self.source_cidr,
            "DestinationCidrBlock": self.destination_cidr,
            "SourcePortRange": self.source_ports,
            "DestinationPortRange": self.destination_ports,
            "TrafficMirrorFilterRuleStatus": "Created",
        })
    }

    /// Rules keep no times of their own: they carry their filter's, which every rule change
    /// updates (the SDK's model declares both).
    pub fn huawei(&self, filter: &FilterRecord, project_id: &str) -> Value {
        let filter_id = &filter.id;
        let (ethertype, protocol) = (self.ip_version.clone(), self.protocol.to_lowercase());
        json!({
            "id": self.id,
            "project_id": project_id,
            "traffic_mirror_filter_id": filter_id,
            "direction": self.direction,
            "priority": self.priority,
            "action": if self.action == "accept" { "accept" } else { "reject" },
            "protocol": if protocol == "all" { "all".to_string() } else { protocol },
            "ethertype": ethertype,
            "source_cidr_block": self.source_cidr,
            "destination_cidr_block": self.destination_cidr,
            "source_port_range": huawei_ports(&self.source_ports),
            "destination_port_range": huawei_ports(&self.destination_ports),
            "description": "",
            "created_at": filter.created_at,
            "updated_at": filter.updated_at,
        })
    }
}

/// Huawei writes port ranges `80-200` and all ports as an empty string... we keep "1-65535".
fn huawei_ports(p: &str) -> String {
    if p == "-1/-1" {
        "1-65535".to_string()
    } else {
        p.replace('/', "-")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<Tag>,
    pub rules: Vec<RuleRecord>,
    pub origin: Origin,
    pub created_at: String,
    pub updated_at: String,
}

impl FilterRecord {
    pub fn rules_in(&self, direction: &str) -> Vec<&RuleRecord> {
        let mut rules: Vec<&RuleRecord> = self
            .rules
            .iter()
            .filter(|r| r.direction == direction)
            .collect();
        rules.sort_by_key(|r| r.priority);
        rules
    }

    pub fn alibaba(&self) -> Value {
        let rules = |dir: &str| -> Vec<Value> {
            self.rules_in(dir)
                .iter()
                .map(|r| r.alibaba(&self.id))
                .collect()
        };
        json!({
            "TrafficMirrorFilterId": self.id,
            "TrafficMirrorFilterName": self.name,
            "TrafficMirrorFilterDescription": self.description,
            "TrafficMirrorFilterStatus": "Created",
            "Origin": self.origin.as_str(),
            "IngressRules": rules("ingress"),
            "EgressRules": rules("egress"),
            "Tags": tags_json(&self.tags),
            "CreationTime": self.created_at,
        })
    }

    pub fn huawei(&self, project_id: &str) -> Value {
        let rules = |dir: &str| -> Vec<Value> {
            self.rules_in(dir)
                .iter()
                .map(|r| r.huawei(self, project_id))
                .collect()
        };
        json!({
            "id": self.id,
            "project_id": project_id,
            "name": self.name,
            "description": self.description,
            "ingress_rules": rules("ingress"),
            "egress_rules": rules("egress"),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    /// "NetworkInterface" or "SLB".
    pub instance_type: String,
    /// A local interface (name or alias) whose address is the VTEP, instead of an address.
    pub instance_id: Option<String>,
    pub destination_ip: Option<String>,
    pub destination_port: u16,
    pub tags: Vec<Tag>,
    pub origin: Origin,
    pub created_at: String,
    pub updated_at: String,
}

impl TargetRecord {
    pub fn alibaba(&self) -> Value {
        json!({
            "TrafficMirrorTargetId": self.id,
            "TrafficMirrorTargetName": self.name,
            "Origin": self.origin.as_str(),
            "Description": self.description,
            "InstanceType": self.instance_type,
            "InstanceId": self.instance_id,
            "DestinationIp": self.destination_ip,
            "DestinationPort": self.destination_port,
            "Status": "Available",
            "Tags": tags_json(&self.tags),
            "CreationTime": self.created_at,
        })
    }

    /// Huawei's target type spelling.
    pub fn huawei_type(&self) -> &'static str {
        if self.instance_type == "SLB" {
            "elb"
        } else {
            "eni"
        }
    }
}

/// Session states of SPEC section 2 (and the seeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    Creating,
    Created,
    Modifying,
    Deleting,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "Creating",
            SessionState::Created => "Created",
            SessionState::Modifying => "Modifying",
            SessionState::Deleting => "Deleting",
        }
    }

    pub fn is_settled(self) -> bool {
        self == SessionState::Created
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub priority: u16,
    pub vni: u32,
    pub packet_length: Option<u32>,
    /// Budgets and sampling; records written before they existed read as unlimited.
    #[serde(default)]
    pub budget: Budget,
    pub enabled: bool,
    pub filter_id: String,
    pub target_id: String,
    /// As given: interface names, `eni-…` aliases, or globs.
    pub sources: Vec<String>,
    pub state: SessionState,
    /// Bumped by every change; the reconciler settles the state once it applied this one.
    pub generation: u64,
    /// What could not be applied at the last reconcile (e.g. a missing interface).
    pub errors: Vec<String>,
    pub tags: Vec<Tag>,
    pub origin: Origin,
    pub created_at: String,
    pub updated_at: String,
}

impl SessionRecord {
    pub fn alibaba(&self, target_type: &str) -> Value {
        let mut v = json!({
            "TrafficMirrorSessionId": self.id,
            "TrafficMirrorSessionName": self.name,
            "TrafficMirrorSessionDescription": self.description,
            "Priority": self.priority,
            "VirtualNetworkId": self.vni,
            "Enabled": self.enabled,
            "TrafficMirrorFilterId": self.filter_id,
            "TrafficMirrorTargetId": self.target_id,
            "TrafficMirrorTargetType": target_type,
            "TrafficMirrorSourceIds": self.sources,
            "TrafficMirrorSessionStatus": self.state.as_str(),
            "TrafficMirrorSessionBusinessStatus": if self.errors.is_empty() { "Normal" } else { "FailedToApply" },
            "Origin": self.origin.as_str(),
            "Tags": tags_json(&self.tags),
            "CreationTime": self.created_at,
            "UpdateTime": self.updated_at,
        });
        if let (Some(obj), Some(len)) = (v.as_object_mut(), self.packet_length) {
            obj.insert("PacketLength".into(), json!(len));
        }
        if let Some(obj) = v.as_object_mut() {
            let b = &self.budget;
            for (key, value) in [
                ("MaxPacketsPerSecond", b.max_packets_per_second),
                ("MaxBitsPerSecond", b.max_bits_per_second),
            ] {
                if let Some(value) = value {
                    obj.insert(key.into(), json!(value));
                }
            }
            obj.insert("SampleOneIn".into(), json!(b.sample_one_in.unwrap_or(1)));
            obj.insert("SampleMode".into(), json!(b.sample_mode.as_str()));
        }
        if let (Some(obj), false) = (v.as_object_mut(), self.errors.is_empty()) {
            obj.insert("TrafficMirrorSessionErrors".into(), json!(self.errors));
        }
        v
    }

    pub fn huawei(&self, project_id: &str, target_type: &str) -> Value {
        json!({
            "id": self.id,
            "project_id": project_id,
            "name": self.name,
            "description": self.description,
            "traffic_mirror_filter_id": self.filter_id,
            "traffic_mirror_sources": self.sources,
            "traffic_mirror_target_id": self.target_id,
            "traffic_mirror_target_type": target_type,
            "virtual_network_id": self.vni,
            "packet_length": self.packet_length,
            "max_packets_per_second": self.budget.max_packets_per_second,
            "max_bits_per_second": self.budget.max_bits_per_second,
            "sample_one_in": self.budget.sample_one_in.unwrap_or(1),
            "sample_mode": self.budget.sample_mode.as_str(),
            "priority": self.priority,
            "enabled": self.enabled,
            "type": "eni",
            "status": self.state.as_str(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

pub fn tags_json(tags: &[Tag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| json!({"Key": t.key, "Value": t.value}))
            .collect(),
    )
}

/// A ClientToken's first answer, replayed for the same token and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub fingerprint: String,
    pub request_id: String,
    pub status: u16,
    pub body: Value,
    /// The session whose change this request started, and the generation it set: while the
    /// session has not settled that generation, the request is still in progress.
    pub session: Option<(String, u64)>,
    pub created_unix: i64,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A new id with the seeds' prefix, e.g. `tms-` + 20 lowercase alphanumerics.
pub fn new_id(prefix: &str) -> String {
    let raw = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &raw[..20])
}

/// Flow-log states (seed 004): Creating → Active/Inactive; Deleting → gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowLogState {
    Creating,
    Active,
    Inactive,
    Deleting,
}

impl FlowLogState {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowLogState::Creating => "Creating",
            FlowLogState::Active => "Active",
            FlowLogState::Inactive => "Inactive",
            FlowLogState::Deleting => "Deleting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLogRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    /// "eni" (an interface), "subnet" (interfaces with an address in a CIDR), "vpc" (all
    /// non-loopback interfaces); from Kubernetes also "node" (every non-loopback interface
    /// and `interfaces`) and "interfaces" (only `interfaces`).
    pub resource_type: String,
    pub resource_id: String,
    /// The interfaces (names, aliases, globs) a Kubernetes flow log covers: its resource's
    /// interfaces and its pods' host interfaces, resolved by the node controller. Empty for
    /// the API's flow logs (absent in stores written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// "All", "Allow" or "Drop".
    pub traffic_type: String,
    pub log_project: String,
    pub log_topic: String,
    /// Minutes: 1, 5 or 10.
    pub aggregation_interval: u32,
    /// Seconds instead of minutes (tests and demos).
    pub interval_seconds: Option<u32>,
    /// AWS `LogFormat` (`${field} ...`); `None` is AWS's default format. Absent in stores
    /// written before it existed.
    #[serde(default)]
    pub log_format: Option<String>,
    pub state: FlowLogState,
    /// Whether the operator wants it collecting (ActiveFlowLog / DeactiveFlowLog).
    pub wanted_active: bool,
    pub generation: u64,
    /// Problems of the last reconcile or sink write (missing interface, disk full, ...).
    pub errors: Vec<String>,
    pub tags: Vec<Tag>,
    /// API flow logs in stores written before origins existed are the API's.
    #[serde(default)]
    pub origin: Origin,
    pub created_at: String,
    pub updated_at: String,
}

impl FlowLogRecord {
    pub fn interval_secs(&self) -> u64 {
        self.interval_seconds
            .map_or(u64::from(self.aggregation_interval) * 60, u64::from)
    }

    pub fn volcengine(&self) -> Value {
        json!({
            "FlowLogId": self.id,
            "FlowLogName": self.name,
            "Description": self.description,
            "ResourceType": self.resource_type,
            "ResourceId": self.resource_id,
            "TrafficType": self.traffic_type,
            "LogProjectName": self.log_project,
            "LogTopicName": self.log_topic,
            // Volcengine's SDK model reads the TLS project and topic by id; here a name is
            // the id (files under the state dir).
            "LogProjectId": self.log_project,
            "LogTopicId": self.log_topic,
            "AggregationInterval": self.aggregation_interval,
            // AWS's name: the fields of this flow log's records, in order.
            "LogFormat": self.log_format.as_deref().unwrap_or(crate::flowlog::format::DEFAULT_FORMAT),
            "Status": self.state.as_str(),
            "BusinessStatus": if self.errors.is_empty() { "Normal" } else { "Error" },
            "Errors": self.errors,
            "Tags": tags_json(&self.tags),
            "Origin": self.origin.as_str(),
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
        })
    }
}

/// A receiver (this node as a mirror target): the interface whose mirror traffic the XDP
/// program terminates, and the VNIs it hands to capture interfaces. States as a session's:
/// Creating → Created → Deleting → gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The receiving interface: a name or an `eni-…` alias.
    pub interface: String,
    pub destination_port: u16,
    /// Served VNIs, ascending; each gets the capture pair `mrx<vni>` / `mrx<vni>-in`.
    pub vnis: Vec<u32>,
    pub state: SessionState,
    pub generation: u64,
    /// What could not be applied at the last reconcile.
    pub errors: Vec<String>,
    pub tags: Vec<Tag>,
    pub origin: Origin,
    pub created_at: String,
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(budget: Budget) -> SessionRecord {
        SessionRecord {
            id: "tms-1".into(),
            name: String::new(),
            description: String::new(),
            priority: 1,
            vni: 7,
            packet_length: None,
            budget,
            enabled: true,
            filter_id: "tmf-1".into(),
            target_id: "tmt-1".into(),
            sources: vec!["eth0".into()],
            state: SessionState::Created,
            generation: 1,
            errors: Vec::new(),
            tags: Vec::new(),
            origin: Origin::Api,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn budgets_kept_by_the_store_and_old_records_read_unlimited() {
        let b = Budget {
            max_packets_per_second: Some(10_000),
            max_bits_per_second: None,
            sample_one_in: Some(100),
            sample_mode: model::SampleMode::Flow,
        };
        let stored = serde_json::to_vec(&session(b)).unwrap();
        let back: SessionRecord = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.budget, b);
        // A record written before budgets existed.
        let mut old = serde_json::to_value(session(Budget::default())).unwrap();
        old.as_object_mut().unwrap().remove("budget");
        let back: SessionRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.budget, Budget::default());
    }
}
