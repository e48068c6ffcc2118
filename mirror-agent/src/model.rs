//! The mirror objects of SPEC section 2 in validated form: what a filter rule, a target and a
//! session mean once their parameters have been checked. Both the config file and the API
//! build these; the data path encodes them into maps.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A rejected parameter: `code` is the API error code, `param` names the parameter.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{code}: {param}: {reason}")]
pub struct InvalidParam {
    pub code: &'static str,
    pub param: String,
    pub reason: String,
}

impl InvalidParam {
    pub fn new(code: &'static str, param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code,
            param: param.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => mirror_ebpf::DIR_INGRESS as usize,
            Direction::Egress => mirror_ebpf::DIR_EGRESS as usize,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl FromStr for Direction {
    type Err = InvalidParam;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ingress" => Ok(Direction::Ingress),
            "egress" => Ok(Direction::Egress),
            _ => Err(InvalidParam::new(
                "InvalidTrafficDirection.Malformed",
                "TrafficDirection",
                format!("{s:?} is not ingress or egress"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reject,
}

impl FromStr for Action {
    type Err = InvalidParam;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "accept" => Ok(Action::Accept),
            // Alibaba spells reject "drop".
            "reject" | "drop" => Ok(Action::Reject),
            _ => Err(InvalidParam::new(
                "InvalidAction.Malformed",
                "Action",
                format!("{s:?} is not accept, reject or drop"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    All,
    Number(u8),
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

impl Protocol {
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(PROTO_TCP | PROTO_UDP))
    }
}

impl FromStr for Protocol {
    type Err = InvalidParam;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            InvalidParam::new(
                "InvalidProtocol.Malformed",
                "Protocol",
                format!("{s:?} is not ALL, TCP, UDP, ICMP, ICMPv6 or a number 0-255"),
            )
        };
        match s.to_ascii_uppercase().as_str() {
            "ALL" | "-1" => Ok(Protocol::All),
            "TCP" => Ok(Protocol::Number(PROTO_TCP)),
            "UDP" => Ok(Protocol::Number(PROTO_UDP)),
            "ICMP" => Ok(Protocol::Number(PROTO_ICMP)),
            "ICMPV6" => Ok(Protocol::Number(PROTO_ICMPV6)),
            other => other.parse::<u8>().map(Protocol::Number).map_err(|_| bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl FromStr for IpVersion {
    type Err = InvalidParam;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "4" => Ok(IpVersion::V4),
            "ipv6" | "6" => Ok(IpVersion::V6),
            _ => Err(InvalidParam::new(
                "InvalidIpVersion.Malformed",
                "IpVersion",
                format!("{s:?} is not IPv4 or IPv6"),
            )),
        }
    }
}

/// An inclusive port range; `None` bounds mean "all ports" (`-1/-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { min: 1, max: 65535 };

    /// Accepts the clouds' spellings: `1/200` (Alibaba), `80-200` (Huawei), `-1/-1` (all),
    /// and a single port.
    pub fn parse(param: &str, s: &str) -> Result<PortRange, InvalidParam> {
        let bad = |why: &str| {
            InvalidParam::new(
                "InvalidPortRange.Malformed",
                param,
                format!("{s:?}: {why}; use 1/200, 80-200, 443 or -1/-1"),
            )
        };
        let s = s.trim();
        if s == "-1/-1" || s == "-1" || s.is_empty() {
            return Ok(PortRange::ALL);
        }
        let (lo, hi) = match s.split_once(['/', '-']) {
            Some((lo, hi)) => (lo, hi),
            None => (s, s),
        };
        let lo: u16 = lo.trim().parse().map_err(|_| bad("not a port number"))?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad("not a port number"))?;
        if lo == 0 || hi == 0 {
            return Err(bad("ports are 1-65535"));
        }
        if lo > hi {
            return Err(bad("the first port is above the last"));
        }
        Ok(PortRange { min: lo, max: hi })
    }

    pub fn is_all(&self) -> bool {
        *self == PortRange::ALL
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            f.write_str("-1/-1")
        } else {
            write!(f, "{}/{}", self.min, self.max)
        }
    }
}

/// One filter rule (`tmr-…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRule {
    pub id: String,
    pub direction: Direction,
    pub priority: u16,
    pub action: Action,
    pub protocol: Protocol,
    pub ip_version: IpVersion,
    pub source_cidr: IpNet,
    pub destination_cidr: IpNet,
    pub source_ports: PortRange,
    pub destination_ports: PortRange,
}

/// Parameters of a rule as text, the way the config file and the API carry them.
#[derive(Debug, Clone, Default)]
pub struct RuleSpec<'a> {
    pub id: &'a str,
    pub direction: &'a str,
    pub priority: i64,
    pub action: &'a str,
    pub protocol: &'a str,
    pub ip_version: Option<&'a str>,
    pub source_cidr: Option<&'a str>,
    pub destination_cidr: Option<&'a str>,
    pub source_ports: Option<&'a str>,
    pub destination_ports: Option<&'a str>,
}

fn parse_cidr(param: &str, s: &str) -> Result<IpNet, InvalidParam> {
    let s = s.trim();
    // A bare address is a host route.
    let net = match IpNet::from_str(s) {
        Ok(net) => net,
        Err(_) => IpAddr::from_str(s).map(IpNet::from).map_err(|_| {
            InvalidParam::new(
                "InvalidCidrBlock.Malformed",
                param,
                format!("{s:?} is not a CIDR block"),
            )
        })?,
    };
    Ok(net.trunc())
}

impl FilterRule {
    pub fn from_spec(spec: &RuleSpec<'_>) -> Result<FilterRule, InvalidParam> {
        let direction: Direction = spec.direction.parse()?;
        if !(1..=65535).contains(&spec.priority) {
            return Err(InvalidParam::new(
                "InvalidPriority.Malformed",
                "Priority",
                format!("{} is not in 1-65535", spec.priority),
            ));
        }
        let action: Action = spec.action.parse()?;
        let protocol: Protocol = spec.protocol.parse()?;
        let src = spec
            .source_cidr
            .map(|s| parse_cidr("SourceCidrBlock", s))
            .transpose()?;
        let dst = spec
            .destination_cidr
            .map(|s| parse_cidr("DestinationCidrBlock", s))
            .transpose()?;
        // The version is explicit, or follows the CIDR blocks, or defaults to IPv4 as in the
        // clouds; ICMPv6 implies IPv6.
        let ip_version = match spec.ip_version {
            Some(v) => v.parse()?,
            None => match (src, dst, protocol) {
                (Some(IpNet::V6(_)), _, _) | (_, Some(IpNet::V6(_)), _) => IpVersion::V6,
                (_, _, Protocol::Number(PROTO_ICMPV6)) => IpVersion::V6,
                _ => IpVersion::V4,
            },
        };
        let any = |v: IpVersion| match v {
            IpVersion::V4 => IpNet::from_str("0.0.0.0/0"),
            IpVersion::V6 => IpNet::from_str("::/0"),
        };
        let any =
            any(ip_version).map_err(|e| InvalidParam::new("InternalError", "", e.to_string()))?;
        let source_cidr = src.unwrap_or(any);
        let destination_cidr = dst.unwrap_or(any);
        for (param, net) in [
            ("SourceCidrBlock", source_cidr),
            ("DestinationCidrBlock", destination_cidr),
        ] {
            let matches = matches!(
                (ip_version, net),
                (IpVersion::V4, IpNet::V4(_)) | (IpVersion::V6, IpNet::V6(_))
            );
            if !matches {
                return Err(InvalidParam::new(
                    "InvalidCidrBlock.Malformed",
                    param,
                    format!("{net} does not match IpVersion {ip_version:?}"),
                ));
            }
        }
        let source_ports = spec
            .source_ports
            .map(|s| PortRange::parse("SourcePortRange", s))
            .transpose()?
            .unwrap_or(PortRange::ALL);
        let destination_ports = spec
            .destination_ports
            .map(|s| PortRange::parse("DestinationPortRange", s))
            .transpose()?
            .unwrap_or(PortRange::ALL);
        if !protocol.has_ports() {
            for (param, ports) in [
                ("SourcePortRange", source_ports),
                ("DestinationPortRange", destination_ports),
            ] {
                if !ports.is_all() {
                    return Err(InvalidParam::new(
                        "InvalidPortRange.Malformed",
                        param,
                        "port ranges apply to TCP and UDP only; use -1/-1",
                    ));
                }
            }
        }
        Ok(FilterRule {
            id: spec.id.to_string(),
            direction,
            priority: spec.priority as u16,
            action,
            protocol,
            ip_version,
            source_cidr,
            destination_cidr,
            source_ports,
            destination_ports,
        })
    }
}

/// A filter (`tmf-…`) with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub id: String,
    pub rules: Vec<FilterRule>,
}

impl Filter {
    /// Rules of one direction in evaluation order (ascending Priority).
    pub fn rules_in_order(&self, direction: Direction) -> Vec<&FilterRule> {
        let mut rules: Vec<&FilterRule> = self
            .rules
            .iter()
            .filter(|r| r.direction == direction)
            .collect();
        rules.sort_by_key(|r| r.priority);
        rules
    }
}

/// Where copies go (`tmt-…`): a remote VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// A session (`tms-…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub priority: u16,
    pub vni: u32,
    /// `None`: the whole frame, cut only where the path MTU requires it.
    pub packet_length: Option<u32>,
    pub enabled: bool,
    pub filter_id: String,
    pub target_id: String,
    /// Interface names (aliases already resolved).
    pub sources: Vec<String>,
    pub budget: Budget,
}

/// How a session picks the one in `SampleOneIn` packets it mirrors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleMode {
    /// Each packet drawn at random.
    #[default]
    Packet,
    /// By a hash of the flow (both directions alike): a flow is mirrored whole or not at all.
    Flow,
}

impl SampleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleMode::Packet => "packet",
            SampleMode::Flow => "flow",
        }
    }
}

/// This agent's extension of the clouds' sessions: what a session may cost (SPEC's sessions
/// copy everything; docs/api.md). `None` = unlimited / every packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Budget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_packets_per_second: Option<u64>,
    /// Bits of the copies on the wire, outer headers included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bits_per_second: Option<u64>,
    /// One in this many matching packets is mirrored; never 1 (that is `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_one_in: Option<u32>,
    pub sample_mode: SampleMode,
}

/// Largest `SampleOneIn`: 2^24.
pub const SAMPLE_ONE_IN_MAX: i64 = 1 << 24;
/// Largest budgets: beyond these the data path's cost arithmetic loses its precision (a
/// copy would cost under a nanosecond of budget), and no node sends that much anyway.
pub const MAX_PACKETS_PER_SECOND_MAX: i64 = 1_000_000_000;
pub const MAX_BITS_PER_SECOND_MAX: i64 = 1_000_000_000_000;

/// The budget parameters as given (absent: `None`), each checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetChange<'a> {
    pub max_packets_per_second: Option<i64>,
    pub max_bits_per_second: Option<i64>,
    pub sample_one_in: Option<i64>,
    pub sample_mode: Option<&'a str>,
}

impl Budget {
    /// `self` with the given parameters changed: a budget of 0 removes it, `SampleOneIn` 1
    /// mirrors every packet; absent parameters keep their value.
    pub fn with(self, c: BudgetChange) -> Result<Budget, InvalidParam> {
        fn rate(
            v: i64,
            max: i64,
            code: &'static str,
            param: &str,
        ) -> Result<Option<u64>, InvalidParam> {
            match v {
                0 => Ok(None),
                1.. if v <= max => Ok(Some(v as u64)),
                _ => Err(InvalidParam::new(
                    code,
                    param,
                    format!("{v} is not in 0-{max} (0: unlimited)"),
                )),
            }
        }
        let mut b = self;
        if let Some(v) = c.max_packets_per_second {
            b.max_packets_per_second = rate(
                v,
                MAX_PACKETS_PER_SECOND_MAX,
                "InvalidMaxPacketsPerSecond.Malformed",
                "MaxPacketsPerSecond",
            )?;
        }
        if let Some(v) = c.max_bits_per_second {
            b.max_bits_per_second = rate(
                v,
                MAX_BITS_PER_SECOND_MAX,
                "InvalidMaxBitsPerSecond.Malformed",
                "MaxBitsPerSecond",
            )?;
        }
        if let Some(n) = c.sample_one_in {
            if !(1..=SAMPLE_ONE_IN_MAX).contains(&n) {
                return Err(InvalidParam::new(
                    "InvalidSampleOneIn.Malformed",
                    "SampleOneIn",
                    format!("{n} is not in 1-{SAMPLE_ONE_IN_MAX} (1: every packet)"),
                ));
            }
            b.sample_one_in = (n > 1).then_some(n as u32);
        }
        if let Some(m) = c.sample_mode {
            b.sample_mode = if m.eq_ignore_ascii_case("packet") {
                SampleMode::Packet
            } else if m.eq_ignore_ascii_case("flow") {
                SampleMode::Flow
            } else {
                return Err(InvalidParam::new(
                    "InvalidSampleMode.Malformed",
                    "SampleMode",
                    format!("{m:?} is not packet or flow"),
                ));
            };
        }
        Ok(b)
    }
}

pub const SESSION_PRIORITY_MAX: i64 = 32766;
pub const VNI_MAX: i64 = 16_777_215;
pub const PACKET_LENGTH_MIN: i64 = 64;
pub const PACKET_LENGTH_MAX: i64 = 9000;

pub fn check_session_priority(p: i64) -> Result<u16, InvalidParam> {
    if (1..=SESSION_PRIORITY_MAX).contains(&p) {
        Ok(p as u16)
    } else {
        Err(InvalidParam::new(
            "InvalidPriority.Malformed",
            "Priority",
            format!("{p} is not in 1-{SESSION_PRIORITY_MAX}"),
        ))
    }
}

pub fn check_vni(v: i64) -> Result<u32, InvalidParam> {
    if (0..=VNI_MAX).contains(&v) {
        Ok(v as u32)
    } else {
        Err(InvalidParam::new(
            "InvalidVirtualNetworkId.Malformed",
            "VirtualNetworkId",
            format!("{v} is not in 0-{VNI_MAX}"),
        ))
    }
}

pub fn check_packet_length(v: i64) -> Result<u32, InvalidParam> {
    if (PACKET_LENGTH_MIN..=PACKET_LENGTH_MAX).contains(&v) {
        Ok(v as u32)
    } else {
        Err(InvalidParam::new(
            "InvalidPacketLength.Malformed",
            "PacketLength",
            format!("{v} is not in {PACKET_LENGTH_MIN}-{PACKET_LENGTH_MAX}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_parameters_checked_and_zero_removes() {
        let set = Budget::default()
            .with(BudgetChange {
                max_packets_per_second: Some(10_000),
                max_bits_per_second: Some(1_000_000),
                sample_one_in: Some(100),
                sample_mode: Some("Flow"),
            })
            .unwrap();
        assert_eq!(set.max_packets_per_second, Some(10_000));
        assert_eq!(set.sample_one_in, Some(100));
        assert_eq!(set.sample_mode, SampleMode::Flow);
        let cleared = set
            .with(BudgetChange {
                max_packets_per_second: Some(0),
                sample_one_in: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(cleared.max_packets_per_second, None);
        assert_eq!(cleared.max_bits_per_second, Some(1_000_000));
        assert_eq!(cleared.sample_one_in, None);
        for (c, code) in [
            (
                BudgetChange {
                    max_packets_per_second: Some(-1),
                    ..Default::default()
                },
                "InvalidMaxPacketsPerSecond.Malformed",
            ),
            (
                BudgetChange {
                    max_bits_per_second: Some(MAX_BITS_PER_SECOND_MAX + 1),
                    ..Default::default()
                },
                "InvalidMaxBitsPerSecond.Malformed",
            ),
            (
                BudgetChange {
                    sample_one_in: Some(SAMPLE_ONE_IN_MAX + 1),
                    ..Default::default()
                },
                "InvalidSampleOneIn.Malformed",
            ),
            (
                BudgetChange {
                    sample_one_in: Some(0),
                    ..Default::default()
                },
                "InvalidSampleOneIn.Malformed",
            ),
            (
                BudgetChange {
                    sample_mode: Some("bytes"),
                    ..Default::default()
                },
                "InvalidSampleMode.Malformed",
            ),
        ] {
            assert_eq!(Budget::default().with(c).unwrap_err().code, code);
        }
    }

    #[test]
    fn port_ranges_in_every_spelling() {
        assert_eq!(
            PortRange::parse("p", "1/200").unwrap(),
            PortRange { min: 1, max: 200 }
        );
        assert_eq!(
            PortRange::parse("p", "80-200").unwrap(),
            PortRange { min: 80, max: 200 }
        );
        assert_eq!(
            PortRange::parse("p", "443").unwrap(),
            PortRange { min: 443, max: 443 }
        );
        assert!(PortRange::parse("p", "-1/-1").unwrap().is_all());
        assert!(PortRange::parse("p", "200/1").is_err());
        assert!(PortRange::parse("p", "0/10").is_err());
        assert!(PortRange::parse("p", "a/b").is_err());
    }

    #[test]
    fn rule_validation_names_the_parameter() {
        let base = RuleSpec {
            id: "tmr-1",
            direction: "ingress",
            priority: 1,
            action: "accept",
            protocol: "TCP",
            ..Default::default()
        };
        assert!(FilterRule::from_spec(&base).is_ok());
        let e = FilterRule::from_spec(&RuleSpec {
            priority: 0,
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.code, "InvalidPriority.Malformed");
        let e = FilterRule::from_spec(&RuleSpec {
            protocol: "ICMP",
            destination_ports: Some("80/80"),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.param, "DestinationPortRange");
        let e = FilterRule::from_spec(&RuleSpec {
            ip_version: Some("IPv4"),
            source_cidr: Some("fd00::/8"),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.param, "SourceCidrBlock");
        let r = FilterRule::from_spec(&RuleSpec {
            action: "drop",
            source_cidr: Some("fd00::1/8"),
            ..base
        })
        .unwrap();
        assert_eq!(r.action, Action::Reject);
        assert_eq!(r.ip_version, IpVersion::V6);
        assert_eq!(r.source_cidr.to_string(), "fd00::/8");
    }
}
