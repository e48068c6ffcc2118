//! One flow-log record: AWS VPC Flow Logs v5 fields for one flow, interface, direction and
//! action over one aggregation interval, and its two text encodings (JSON Lines and the AWS
//! space-separated line).

use std::{fmt::Write as _, net::IpAddr};

use serde::Serialize;

/// The flow-log format version the records follow (AWS VPC Flow Logs v5 fields).
pub const VERSION: u8 = 5;

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

/// The JSON Lines shape of a record. A struct rather than a `Value` so that file lines keep
/// the AWS field order (serde_json's map sorts keys).
#[derive(Serialize)]
struct JsonLine<'a> {
    version: u8,
    #[serde(rename = "flow-log-id")]
    flow_log_id: &'a str,
    #[serde(rename = "interface-id")]
    interface_id: &'a str,
    srcaddr: Option<IpAddr>,
    dstaddr: Option<IpAddr>,
    srcport: Option<u16>,
    dstport: Option<u16>,
    protocol: Option<u8>,
    packets: Option<u64>,
    bytes: Option<u64>,
    start: u64,
    end: u64,
    action: Option<FlowAction>,
    #[serde(rename = "log-status")]
    log_status: LogStatus,
    #[serde(rename = "tcp-flags")]
    tcp_flags: Option<u8>,
    #[serde(rename = "flow-direction")]
    flow_direction: Option<FlowDirection>,
    #[serde(rename = "type")]
    ip_type: Option<&'static str>,
    #[serde(rename = "drop-reason", skip_serializing_if = "Option::is_none")]
    drop_reason: Option<&'a str>,
    #[serde(rename = "skipped-packets", skip_serializing_if = "Option::is_none")]
    skipped_packets: Option<u64>,
}

impl FlowRecord {
    /// The AWS v5 custom-format header naming the fields of [`FlowRecord::to_aws_text`].
    pub const AWS_HEADER: &'static str = "version interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status tcp-flags flow-direction type";

    fn json_line(&self) -> JsonLine<'_> {
        let f = self.flow.as_ref();
        JsonLine {
            version: VERSION,
            flow_log_id: &self.flow_log_id,
            interface_id: &self.interface_id,
            srcaddr: f.map(|f| f.srcaddr),
            dstaddr: f.map(|f| f.dstaddr),
            srcport: f.map(|f| f.srcport),
            dstport: f.map(|f| f.dstport),
            protocol: f.map(|f| f.protocol),
            packets: f.map(|f| f.packets),
            bytes: f.map(|f| f.bytes),
            start: self.start,
            end: self.end,
            action: f.map(|f| f.action),
            log_status: self.log_status,
            tcp_flags: f.map(|f| f.tcp_flags),
            flow_direction: f.map(|f| f.direction),
            ip_type: f.map(FlowFields::ip_type),
            drop_reason: f.and_then(|f| f.drop_reason.as_deref()),
            skipped_packets: (self.log_status == LogStatus::SkipData)
                .then_some(self.skipped_packets),
        }
    }

    /// One JSON object with the AWS field names; NODATA/SKIPDATA records carry null for the
    /// flow fields (where AWS prints "-"), "drop-reason" appears when known and
    /// "skipped-packets" on SKIPDATA records.
    pub fn to_json(&self) -> serde_json::Value {
        // Strings, integers and options always serialise; Null is unreachable.
        serde_json::to_value(self.json_line()).unwrap_or(serde_json::Value::Null)
    }

    /// Appends the record as one JSON Lines line (with its newline), fields in AWS order.
    pub fn write_json_line(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *out, &self.json_line())?;
        out.push(b'\n');
        Ok(())
    }

    /// The AWS text line in the order of [`FlowRecord::AWS_HEADER`], "-" for absent fields.
    pub fn to_aws_text(&self) -> String {
        let mut s = String::with_capacity(128);
        // A field must stay one token, or every later column shifts for the reader.
        let iface =
            if self.interface_id.is_empty() || self.interface_id.contains(char::is_whitespace) {
                "-".to_string()
            } else {
                self.interface_id.clone()
            };
        // Writing into a String cannot fail.
        let _ = write!(s, "{VERSION} {iface}");
        match &self.flow {
            Some(f) => {
                let _ = write!(
                    s,
                    " {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                    f.srcaddr,
                    f.dstaddr,
                    f.srcport,
                    f.dstport,
                    f.protocol,
                    f.packets,
                    f.bytes,
                    self.start,
                    self.end,
                    f.action.as_str(),
                    self.log_status.as_str(),
                    f.tcp_flags,
                    f.direction.as_str(),
                    f.ip_type(),
                );
            }
            None => {
                let _ = write!(
                    s,
                    " - - - - - - - {} {} - {} - - -",
                    self.start,
                    self.end,
                    self.log_status.as_str()
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use serde_json::json;

    use super::*;

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

    #[test]
    fn json_ok_record_has_aws_keys_and_values() {
        let v = tcp4().to_json();
        assert_eq!(
            v,
            json!({
                "version": 5,
                "flow-log-id": "fl-abc",
                "interface-id": "eth0",
                "srcaddr": "10.0.0.1",
                "dstaddr": "10.0.0.2",
                "srcport": 49152,
                "dstport": 443,
                "protocol": 6,
                "packets": 10,
                "bytes": 840,
                "start": 1_620_140_661u64,
                "end": 1_620_140_721u64,
                "action": "ACCEPT",
                "log-status": "OK",
                "tcp-flags": 19,
                "flow-direction": "egress",
                "type": "IPv4",
            })
        );
    }

    #[test]
    fn json_reject_ipv6_carries_drop_reason() {
        let mut r = tcp4();
        let f = r.flow.as_mut().unwrap();
        f.srcaddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        f.dstaddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        f.action = FlowAction::Reject;
        f.direction = FlowDirection::Ingress;
        f.drop_reason = Some("NETFILTER_DROP".into());
        let v = r.to_json();
        assert_eq!(v["srcaddr"], "fd00::1");
        assert_eq!(v["type"], "IPv6");
        assert_eq!(v["action"], "REJECT");
        assert_eq!(v["flow-direction"], "ingress");
        assert_eq!(v["drop-reason"], "NETFILTER_DROP");
        assert!(v.get("skipped-packets").is_none());
    }

    #[test]
    fn json_nodata_and_skipdata_null_the_flow_fields() {
        let v = nodata(LogStatus::NoData, 0).to_json();
        for k in [
            "srcaddr",
            "dstaddr",
            "srcport",
            "dstport",
            "protocol",
            "packets",
            "bytes",
            "action",
            "tcp-flags",
            "flow-direction",
            "type",
        ] {
            assert_eq!(v[k], serde_json::Value::Null, "{k}");
        }
        assert_eq!(v["log-status"], "NODATA");
        assert_eq!(v["start"], 100);
        assert!(v.get("skipped-packets").is_none());
        assert!(v.get("drop-reason").is_none());

        let v = nodata(LogStatus::SkipData, 42).to_json();
        assert_eq!(v["log-status"], "SKIPDATA");
        assert_eq!(v["skipped-packets"], 42);
        assert_eq!(v["srcaddr"], serde_json::Value::Null);
    }

    #[test]
    fn json_line_keeps_aws_order_and_matches_to_json() {
        let r = tcp4();
        let mut buf = Vec::new();
        r.write_json_line(&mut buf).unwrap();
        let line = String::from_utf8(buf).unwrap();
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.starts_with(
            r#"{"version":5,"flow-log-id":"fl-abc","interface-id":"eth0","srcaddr":"10.0.0.1""#
        ));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, r.to_json());
    }

    #[test]
    fn aws_text_line() {
        assert_eq!(
            tcp4().to_aws_text(),
            "5 eth0 10.0.0.1 10.0.0.2 49152 443 6 10 840 1620140661 1620140721 ACCEPT OK 19 egress IPv4"
        );
        assert_eq!(
            nodata(LogStatus::NoData, 0).to_aws_text(),
            "5 eth1 - - - - - - - 100 160 - NODATA - - -"
        );
        assert_eq!(
            nodata(LogStatus::SkipData, 9).to_aws_text(),
            "5 eth1 - - - - - - - 100 160 - SKIPDATA - - -"
        );
        // Every line has as many columns as the header.
        let cols = FlowRecord::AWS_HEADER.split(' ').count();
        assert_eq!(tcp4().to_aws_text().split(' ').count(), cols);
        assert_eq!(
            nodata(LogStatus::NoData, 0)
                .to_aws_text()
                .split(' ')
                .count(),
            cols
        );
        let mut odd = tcp4();
        odd.interface_id = String::new();
        assert_eq!(odd.to_aws_text().split(' ').count(), cols);
    }
}
