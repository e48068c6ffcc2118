//! One flow-log record: what the node knows of one flow, interface, direction and action
//! over one aggregation interval. How it is written (which fields, in which order) is the
//! flow log's `LogFormat`: see [`super::format`].

use std::net::IpAddr;

use serde::Serialize;

/// What happened to the flow's packets on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowAction {
    Accept,
    Reject,
}

impl FlowAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowAction::Accept => "ACCEPT",
            FlowAction::Reject => "REJECT",
        }
    }
}

/// Whether the record describes flows (OK), an interval without traffic (NODATA) or traffic
/// that could not be accounted because the flow table was full (SKIPDATA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogStatus {
    Ok,
    NoData,
    SkipData,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Ok => "OK",
            LogStatus::NoData => "NODATA",
            LogStatus::SkipData => "SKIPDATA",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    Ingress,
    Egress,
}

impl FlowDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowDirection::Ingress => "ingress",
            FlowDirection::Egress => "egress",
        }
    }
}

/// One record per flow, interface, direction and action per interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow log (`fl-…`) the record belongs to.
    pub flow_log_id: String,
    /// Name of the interface the flow was seen on.
    pub interface_id: String,
    pub ifindex: u32,
    /// `None` for NODATA and SKIPDATA records.
    pub flow: Option<FlowFields>,
    /// Start of the interval (or first packet), Unix seconds.
    pub start: u64,
    /// End of the interval (or last packet), Unix seconds.
    pub end: u64,
    pub log_status: LogStatus,
    /// SKIPDATA: how many packets could not be accounted (table full) in this interval.
    pub skipped_packets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowFields {
    pub srcaddr: IpAddr,
    pub dstaddr: IpAddr,
    pub srcport: u16,
    pub dstport: u16,
    /// IANA protocol number.
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub action: FlowAction,
    /// OR of the interval: FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32.
    pub tcp_flags: u8,
    pub direction: FlowDirection,
    /// Kernel drop reason name for REJECT (e.g. "NETFILTER_DROP"), from skb:kfree_skb.
    pub drop_reason: Option<String>,
}

impl FlowFields {
    /// "IPv4" or "IPv6", after the source address (both addresses of a flow share a family).
    pub fn ip_type(&self) -> &'static str {
        match self.srcaddr {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        }
    }
}
