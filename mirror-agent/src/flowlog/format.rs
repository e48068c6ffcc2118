//! AWS VPC Flow Logs record formats (`LogFormat`): which fields a record carries, in which
//! order, and how each is written as a text column or a JSON member.
//!
//! The syntax is AWS's: `${field}` tokens separated by spaces, at least one. The default is
//! AWS's default format (the version 2 fields). Every field AWS defines is accepted; those a
//! node cannot know (ECS task metadata, sublocations, AWS service names, the egress traffic
//! path) are written as AWS writes a field that does not apply: `-` in text, `null` in JSON.
//! Three fields are this agent's own: `drop-reason`, `flow-log-id` and `skipped-packets`.

use std::{borrow::Cow, fmt::Write as _, io::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::record::{FlowAction, FlowRecord, LogStatus};

/// AWS's default format: every version 2 field, in AWS's order.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

/// Longest `LogFormat` accepted: far more than every field once (~900 characters).
pub const MAX_FORMAT_LEN: usize = 4096;

/// One field a record can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Version,
    AccountId,
    InterfaceId,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
    VpcId,
    SubnetId,
    InstanceId,
    TcpFlags,
    Type,
    PktSrcAddr,
    PktDstAddr,
    Region,
    AzId,
    SublocationType,
    SublocationId,
    PktSrcAwsService,
    PktDstAwsService,
    FlowDirection,
    TrafficPath,
    EcsClusterArn,
    EcsClusterName,
    EcsContainerInstanceArn,
    EcsContainerInstanceId,
    EcsContainerId,
    EcsSecondContainerId,
    EcsServiceName,
    EcsTaskDefinitionArn,
    EcsTaskArn,
    EcsTaskId,
    RejectReason,
    DropReason,
    FlowLogId,
    SkippedPackets,
}

/// Every field: its name in a format and the AWS version that introduced it (0 for this
/// agent's own fields, which do not raise the record's version).
const FIELDS: &[(Field, &str, u8)] = &[
    (Field::Version, "version", 2),
    (Field::AccountId, "account-id", 2),
    (Field::InterfaceId, "interface-id", 2),
    (Field::SrcAddr, "srcaddr", 2),
    (Field::DstAddr, "dstaddr", 2),
    (Field::SrcPort, "srcport", 2),
    (Field::DstPort, "dstport", 2),
    (Field::Protocol, "protocol", 2),
    (Field::Packets, "packets", 2),
    (Field::Bytes, "bytes", 2),
    (Field::Start, "start", 2),
    (Field::End, "end", 2),
    (Field::Action, "action", 2),
    (Field::LogStatus, "log-status", 2),
    (Field::VpcId, "vpc-id", 3),
    (Field::SubnetId, "subnet-id", 3),
    (Field::InstanceId, "instance-id", 3),
    (Field::TcpFlags, "tcp-flags", 3),
    (Field::Type, "type", 3),
    (Field::PktSrcAddr, "pkt-srcaddr", 3),
    (Field::PktDstAddr, "pkt-dstaddr", 3),
    (Field::Region, "region", 4),
    (Field::AzId, "az-id", 4),
    (Field::SublocationType, "sublocation-type", 4),
    (Field::SublocationId, "sublocation-id", 4),
    (Field::PktSrcAwsService, "pkt-src-aws-service", 5),
    (Field::PktDstAwsService, "pkt-dst-aws-service", 5),
    (Field::FlowDirection, "flow-direction", 5),
    (Field::TrafficPath, "traffic-path", 5),
    (Field::EcsClusterArn, "ecs-cluster-arn", 7),
    (Field::EcsClusterName, "ecs-cluster-name", 7),
    (
        Field::EcsContainerInstanceArn,
        "ecs-container-instance-arn",
        7,
    ),
    (
        Field::EcsContainerInstanceId,
        "ecs-container-instance-id",
        7,
    ),
    (Field::EcsContainerId, "ecs-container-id", 7),
    (Field::EcsSecondContainerId, "ecs-second-container-id", 7),
    (Field::EcsServiceName, "ecs-service-name", 7),
    (Field::EcsTaskDefinitionArn, "ecs-task-definition-arn", 7),
    (Field::EcsTaskArn, "ecs-task-arn", 7),
    (Field::EcsTaskId, "ecs-task-id", 7),
    (Field::RejectReason, "reject-reason", 8),
    (Field::DropReason, "drop-reason", 0),
    (Field::FlowLogId, "flow-log-id", 0),
    (Field::SkippedPackets, "skipped-packets", 0),
];

impl Field {
    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(f, _, _)| *f == self)
            .map_or("", |(_, n, _)| n)
    }

    fn version(self) -> u8 {
        FIELDS
            .iter()
            .find(|(f, _, _)| *f == self)
            .map_or(0, |(_, _, v)| *v)
    }

    fn by_name(name: &str) -> Option<Field> {
        FIELDS
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(f, _, _)| *f)
    }
}

/// Why a `LogFormat` was refused; the text is the API error's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("LogFormat names no field: give at least one ${{field}}")]
    Empty,
    #[error("LogFormat is longer than {MAX_FORMAT_LEN} characters")]
    TooLong,
    #[error("LogFormat token {0:?} is not of the form ${{field}}, fields separated by spaces")]
    Syntax(String),
    #[error("LogFormat field {0:?} is unknown (see docs/api.md for the fields)")]
    Unknown(String),
    #[error("LogFormat names field {0:?} twice")]
    Duplicate(String),
}

/// A parsed `LogFormat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFormat {
    fields: Vec<Field>,
    /// What `${version}` says: the highest AWS version among the fields (at least 2).
    version: u8,
}

impl Default for LogFormat {
    fn default() -> LogFormat {
        // The constant is valid; the unit tests parse it.
        LogFormat::parse(DEFAULT_FORMAT).unwrap_or(LogFormat {
            fields: vec![Field::Version],
            version: 2,
        })
    }
}

impl LogFormat {
    pub fn parse(text: &str) -> Result<LogFormat, FormatError> {
        if text.len() > MAX_FORMAT_LEN {
            return Err(FormatError::TooLong);
        }
        let mut fields = Vec::new();
        for token in text.split_whitespace() {
            let name = token
                .strip_prefix("${")
                .and_then(|t| t.strip_suffix('}'))
                .ok_or_else(|| FormatError::Syntax(token.to_string()))?;
            let field = Field::by_name(name).ok_or_else(|| FormatError::Unknown(name.into()))?;
            if fields.contains(&field) {
                return Err(FormatError::Duplicate(name.to_string()));
            }
            fields.push(field);
        }
        if fields.is_empty() {
            return Err(FormatError::Empty);
        }
        let version = fields.iter().map(|f| f.version()).max().unwrap_or(2).max(2);
        Ok(LogFormat { fields, version })
    }

    /// The flow log's stored `LogFormat` (`None`: AWS's default).
    pub fn from_stored(text: Option<&str>) -> Result<LogFormat, FormatError> {
        text.map_or_else(|| Ok(LogFormat::default()), LogFormat::parse)
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// The canonical `${a} ${b}` text of this format.
    pub fn text(&self) -> String {
        let names: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("${{{}}}", f.name()))
            .collect();
        names.join(" ")
    }

    /// The first line of a text file: the field names, as AWS writes them.
    pub fn header(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|f| f.name()).collect();
        names.join(" ")
    }

    /// One text line (without its newline): the fields in order, `-` where absent.
    pub fn text_line(&self, r: &FlowRecord, meta: &NodeMeta) -> String {
        let mut s = String::with_capacity(16 * self.fields.len());
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            match value(*f, self.version, r, meta) {
                Value::Absent => s.push('-'),
                // Writing into a String cannot fail.
                Value::Num(n) => {
                    let _ = write!(s, "{n}");
                }
                // A value must stay one column, or every later column shifts for the reader.
                Value::Str(v) if v.is_empty() || v.contains(char::is_whitespace) => s.push('-'),
                Value::Str(v) => s.push_str(&v),
            }
        }
        s
    }

    /// Appends one JSON Lines line (with its newline): the same fields as the text line, by
    /// name and in order, numbers as numbers, absent fields as null.
    pub fn write_json_line(
        &self,
        r: &FlowRecord,
        meta: &NodeMeta,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        out.push(b'{');
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, f.name())?;
            out.push(b':');
            match value(*f, self.version, r, meta) {
                Value::Absent => out.extend_from_slice(b"null"),
                // Writing into a Vec cannot fail.
                Value::Num(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Str(v) => serde_json::to_writer(&mut *out, v.as_ref())?,
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// What the node knows about itself for the fields AWS fills from its inventory (agent
/// configuration: `account_id`, `vpc_id`, `subnet_id`, `instance_id`, `region`, `az_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub account_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub az_id: Option<String>,
}

enum Value<'a> {
    Absent,
    Num(u64),
    Str(Cow<'a, str>),
}

fn text(v: &Option<String>) -> Value<'_> {
    v.as_deref().map_or(Value::Absent, |s| Value::Str(s.into()))
}

fn addr(a: IpAddr) -> Value<'static> {
    Value::Str(a.to_string().into())
}

fn value<'a>(f: Field, version: u8, r: &'a FlowRecord, meta: &'a NodeMeta) -> Value<'a> {
    let flow = r.flow.as_ref();
    let of_flow =
        |get: &dyn Fn(&'a super::record::FlowFields) -> Value<'a>| flow.map_or(Value::Absent, get);
    match f {
        Field::Version => Value::Num(version.into()),
        Field::AccountId => text(&meta.account_id),
        Field::InterfaceId => Value::Str(r.interface_id.as_str().into()),
        Field::SrcAddr | Field::PktSrcAddr => of_flow(&|x| addr(x.srcaddr)),
        Field::DstAddr | Field::PktDstAddr => of_flow(&|x| addr(x.dstaddr)),
        Field::SrcPort => of_flow(&|x| Value::Num(x.srcport.into())),
        Field::DstPort => of_flow(&|x| Value::Num(x.dstport.into())),
        Field::Protocol => of_flow(&|x| Value::Num(x.protocol.into())),
        Field::Packets => of_flow(&|x| Value::Num(x.packets)),
        Field::Bytes => of_flow(&|x| Value::Num(x.bytes)),
        Field::Start => Value::Num(r.start),
        Field::End => Value::Num(r.end),
        Field::Action => of_flow(&|x| Value::Str(x.action.as_str().into())),
        Field::LogStatus => Value::Str(r.log_status.as_str().into()),
        Field::VpcId => text(&meta.vpc_id),
        Field::SubnetId => text(&meta.subnet_id),
        Field::InstanceId => text(&meta.instance_id),
        Field::TcpFlags => of_flow(&|x| Value::Num(x.tcp_flags.into())),
        Field::Type => of_flow(&|x| Value::Str(x.ip_type().into())),
        Field::Region => text(&meta.region),
        Field::AzId => text(&meta.az_id),
        Field::FlowDirection => of_flow(&|x| Value::Str(x.direction.as_str().into())),
        // AWS names its own blocking features here (BPA, EC); a node's rejections are the
        // kernel's drops, so the kernel's reason is the reason.
        Field::RejectReason | Field::DropReason => of_flow(&|x| match x.action {
            FlowAction::Reject => x
                .drop_reason
                .as_deref()
                .map_or(Value::Absent, |s| Value::Str(s.into())),
            FlowAction::Accept => Value::Absent,
        }),
        Field::FlowLogId => Value::Str(r.flow_log_id.as_str().into()),
        Field::SkippedPackets => match r.log_status {
            LogStatus::SkipData => Value::Num(r.skipped_packets),
            _ => Value::Absent,
        },
        Field::SublocationType
        | Field::SublocationId
        | Field::PktSrcAwsService
        | Field::PktDstAwsService
        | Field::TrafficPath
        | Field::EcsClusterArn
        | Field::EcsClusterName
        | Field::EcsContainerInstanceArn
        | Field::EcsContainerInstanceId
        | Field::EcsContainerId
        | Field::EcsSecondContainerId
        | Field::EcsServiceName
        | Field::EcsTaskDefinitionArn
        | Field::EcsTaskArn
        | Field::EcsTaskId => Value::Absent,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use serde_json::json;

    use super::*;
    use crate::flowlog::record::{FlowDirection, FlowFields};

    fn tcp4() -> FlowRecord {
        FlowRecord {
            flow_log_id: "fl-abc".into(),
            interface_id: "eth0".into(),
            ifindex: 2,
            flow: Some(FlowFields {
                srcaddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                dstaddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                srcport: 49152,
                dstport: 443,
                protocol: 6,
                packets: 10,
                bytes: 840,
                action: FlowAction::Accept,
                tcp_flags: 2 | 16 | 1,
                direction: FlowDirection::Egress,
                drop_reason: None,
            }),
            start: 1_620_140_661,
            end: 1_620_140_721,
            log_status: LogStatus::Ok,
            skipped_packets: 0,
        }
    }

    fn udp6_dropped() -> FlowRecord {
        let mut r = tcp4();
        let f = r.flow.as_mut().unwrap();
        f.srcaddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        f.dstaddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        f.protocol = 17;
        f.tcp_flags = 0;
        f.action = FlowAction::Reject;
        f.direction = FlowDirection::Ingress;
        f.drop_reason = Some("NETFILTER_DROP".into());
        r
    }

    fn nodata(status: LogStatus, skipped: u64) -> FlowRecord {
        FlowRecord {
            flow_log_id: "fl-abc".into(),
            interface_id: "eth1".into(),
            ifindex: 3,
            flow: None,
            start: 100,
            end: 160,
            log_status: status,
            skipped_packets: skipped,
        }
    }

    fn meta() -> NodeMeta {
        NodeMeta {
            account_id: Some("123456789012".into()),
            vpc_id: Some("vpc-1".into()),
            subnet_id: Some("subnet-1".into()),
            instance_id: None,
            region: Some("cn-beijing".into()),
            az_id: Some("cn-beijing-a".into()),
        }
    }

    fn json(f: &LogFormat, r: &FlowRecord, m: &NodeMeta) -> (String, serde_json::Value) {
        let mut out = Vec::new();
        f.write_json_line(r, m, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v = serde_json::from_str(&line).unwrap();
        (line, v)
    }

    #[test]
    fn default_is_aws_version_2() {
        let f = LogFormat::default();
        assert_eq!(f.text(), DEFAULT_FORMAT);
        assert_eq!(f.version(), 2);
        assert_eq!(
            f.header(),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
        );
        assert_eq!(
            f.text_line(&tcp4(), &NodeMeta::default()),
            "2 - eth0 10.0.0.1 10.0.0.2 49152 443 6 10 840 1620140661 1620140721 ACCEPT OK"
        );
        assert_eq!(
            f.text_line(&nodata(LogStatus::NoData, 0), &meta()),
            "2 123456789012 eth1 - - - - - - - 100 160 - NODATA"
        );
    }

    #[test]
    fn version_is_the_highest_field_version() {
        let v = |s: &str| LogFormat::parse(s).unwrap().version();
        assert_eq!(v("${srcaddr}"), 2);
        assert_eq!(v("${version} ${tcp-flags}"), 3);
        assert_eq!(v("${az-id} ${tcp-flags}"), 4);
        assert_eq!(v("${flow-direction}"), 5);
        assert_eq!(v("${ecs-task-id}"), 7);
        assert_eq!(v("${reject-reason} ${srcaddr}"), 8);
        // The agent's own fields do not raise it.
        assert_eq!(v("${drop-reason} ${flow-log-id} ${skipped-packets}"), 2);
    }

    #[test]
    fn custom_order_and_every_field_of_a_tcp_flow() {
        let all: Vec<String> = FIELDS.iter().map(|(_, n, _)| format!("${{{n}}}")).collect();
        let f = LogFormat::parse(&all.join(" ")).unwrap();
        assert_eq!(f.fields().len(), FIELDS.len());
        assert_eq!(f.version(), 8);
        let line = f.text_line(&tcp4(), &meta());
        let cols: Vec<&str> = line.split(' ').collect();
        let header: Vec<&str> = f.header().leak().split(' ').collect();
        assert_eq!(cols.len(), header.len());
        let got: std::collections::BTreeMap<&str, &str> =
            header.iter().copied().zip(cols.iter().copied()).collect();
        let want = [
            ("version", "8"),
            ("account-id", "123456789012"),
            ("interface-id", "eth0"),
            ("srcaddr", "10.0.0.1"),
            ("dstaddr", "10.0.0.2"),
            ("srcport", "49152"),
            ("dstport", "443"),
            ("protocol", "6"),
            ("packets", "10"),
            ("bytes", "840"),
            ("start", "1620140661"),
            ("end", "1620140721"),
            ("action", "ACCEPT"),
            ("log-status", "OK"),
            ("vpc-id", "vpc-1"),
            ("subnet-id", "subnet-1"),
            ("instance-id", "-"),
            ("tcp-flags", "19"),
            ("type", "IPv4"),
            ("pkt-srcaddr", "10.0.0.1"),
            ("pkt-dstaddr", "10.0.0.2"),
            ("region", "cn-beijing"),
            ("az-id", "cn-beijing-a"),
            ("sublocation-type", "-"),
            ("flow-direction", "egress"),
            ("traffic-path", "-"),
            ("ecs-task-id", "-"),
            ("reject-reason", "-"),
            ("drop-reason", "-"),
            ("flow-log-id", "fl-abc"),
            ("skipped-packets", "-"),
        ];
        for (k, v) in want {
            assert_eq!(got[k], v, "{k}");
        }

        // A custom order is kept exactly, in text and in JSON.
        let f = LogFormat::parse("${dstport}  ${srcaddr} ${flow-direction} ${version}").unwrap();
        assert_eq!(f.header(), "dstport srcaddr flow-direction version");
        assert_eq!(
            f.text(),
            "${dstport} ${srcaddr} ${flow-direction} ${version}"
        );
        assert_eq!(f.text_line(&tcp4(), &meta()), "443 10.0.0.1 egress 5");
        let (line, v) = json(&f, &tcp4(), &meta());
        assert_eq!(
            line,
            "{\"dstport\":443,\"srcaddr\":\"10.0.0.1\",\"flow-direction\":\"egress\",\"version\":5}\n"
        );
        assert_eq!(
            v,
            json!({"dstport": 443, "srcaddr": "10.0.0.1", "flow-direction": "egress", "version": 5})
        );
    }

    #[test]
    fn dropped_udp6_flow_carries_reject_and_drop_reason() {
        let f = LogFormat::parse(
            "${srcaddr} ${protocol} ${action} ${type} ${tcp-flags} ${reject-reason} ${drop-reason} ${flow-direction}",
        )
        .unwrap();
        assert_eq!(
            f.text_line(&udp6_dropped(), &NodeMeta::default()),
            "fd00::1 17 REJECT IPv6 0 NETFILTER_DROP NETFILTER_DROP ingress"
        );
        let (_, v) = json(&f, &udp6_dropped(), &NodeMeta::default());
        assert_eq!(v["reject-reason"], "NETFILTER_DROP");
        assert_eq!(v["tcp-flags"], 0);
        assert_eq!(v["type"], "IPv6");
    }

    #[test]
    fn nodata_and_skipdata_write_absent_flow_fields() {
        let f = LogFormat::parse(
            "${version} ${interface-id} ${srcaddr} ${packets} ${start} ${end} ${action} ${log-status} ${skipped-packets}",
        )
        .unwrap();
        assert_eq!(
            f.text_line(&nodata(LogStatus::NoData, 0), &meta()),
            "2 eth1 - - 100 160 - NODATA -"
        );
        assert_eq!(
            f.text_line(&nodata(LogStatus::SkipData, 42), &meta()),
            "2 eth1 - - 100 160 - SKIPDATA 42"
        );
        let (_, v) = json(&f, &nodata(LogStatus::SkipData, 42), &meta());
        assert_eq!(v["srcaddr"], serde_json::Value::Null);
        assert_eq!(v["skipped-packets"], 42);
        assert_eq!(v["log-status"], "SKIPDATA");
    }

    #[test]
    fn a_value_with_whitespace_stays_one_column() {
        let f = LogFormat::parse("${interface-id} ${account-id} ${srcaddr}").unwrap();
        let mut r = tcp4();
        r.interface_id = "my if".into();
        let mut m = meta();
        m.account_id = Some(String::new());
        assert_eq!(f.text_line(&r, &m), "- - 10.0.0.1");
        // JSON keeps the value as it is.
        let (_, v) = json(&f, &r, &m);
        assert_eq!(v["interface-id"], "my if");
    }

    #[test]
    fn bad_formats_are_refused_with_the_reason() {
        let e = |s: &str| LogFormat::parse(s).unwrap_err();
        assert_eq!(e(""), FormatError::Empty);
        assert_eq!(e("   "), FormatError::Empty);
        assert_eq!(e("${srcaddr} ${nope}"), FormatError::Unknown("nope".into()));
        assert_eq!(e("srcaddr"), FormatError::Syntax("srcaddr".into()));
        assert_eq!(e("${srcaddr"), FormatError::Syntax("${srcaddr".into()));
        assert_eq!(
            e("${srcaddr},${dstaddr}"),
            FormatError::Unknown("srcaddr},${dstaddr".into())
        );
        assert_eq!(
            e("${srcaddr} ${srcaddr}"),
            FormatError::Duplicate("srcaddr".into())
        );
        assert_eq!(e(&"${srcaddr} ".repeat(1000)), FormatError::TooLong);
        assert!(e("${nope}").to_string().contains("\"nope\""));
    }
}
