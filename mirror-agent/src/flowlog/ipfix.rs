//! IPFIX export (RFC 7011) over UDP to one collector.
//!
//! Two templates with IANA information elements only: 256 for IPv4 flows and 257 for IPv6
//! flows. Field choices, checked against what nfdump (1.7.x) decodes:
//! - times are flowStartMilliseconds/flowEndMilliseconds (152/153): nfdump 1.7.1 ignores
//!   flowStartSeconds/flowEndSeconds (150/151), and every collector reads the millisecond ones;
//! - the interface goes into ingressInterface (10) for ingress flows and egressInterface (14)
//!   for egress flows, 0 in the other; flowDirection (61) is 0 ingress, 1 egress;
//! - the action is forwardingStatus (89) in its one-byte form (RFC 7270 reduced size):
//!   64 forwarded (ACCEPT), 128 dropped (REJECT); nfdump decodes it from 1.7.2 on.
//! - ICMP flows carry type << 8 | code in destinationTransportPort, as NetFlow exporters do.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, SystemTime},
};

use super::record::{FlowAction, FlowDirection, FlowFields, FlowRecord};

pub const IPFIX_VERSION: u16 = 10;
pub const TEMPLATE_SET_ID: u16 = 2;
pub const TEMPLATE_ID_V4: u16 = 256;
pub const TEMPLATE_ID_V6: u16 = 257;
/// Stays below a 1500-byte path MTU with IPv6 and UDP headers and some tunnel overhead.
pub const MAX_MESSAGE_BYTES: usize = 1400;
pub const DEFAULT_TEMPLATE_REFRESH: Duration = Duration::from_secs(60);
/// Templates go out again at least this often (in messages), as well as by time.
pub const TEMPLATE_REFRESH_MESSAGES: u32 = 100;

pub const FORWARDING_STATUS_FORWARDED: u8 = 64;
pub const FORWARDING_STATUS_DROPPED: u8 = 128;

const MESSAGE_HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;

/// IANA information element ids used by the templates.
mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const EGRESS_INTERFACE: u16 = 14;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const FORWARDING_STATUS: u16 = 89;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
}

/// (element id, length) of every field after the two addresses, in record order.
const COMMON_FIELDS: [(u16, u16); 12] = [
    (ie::SOURCE_TRANSPORT_PORT, 2),
    (ie::DESTINATION_TRANSPORT_PORT, 2),
    (ie::PROTOCOL_IDENTIFIER, 1),
    (ie::TCP_CONTROL_BITS, 2),
    (ie::PACKET_DELTA_COUNT, 8),
    (ie::OCTET_DELTA_COUNT, 8),
    (ie::FLOW_START_MILLISECONDS, 8),
    (ie::FLOW_END_MILLISECONDS, 8),
    (ie::INGRESS_INTERFACE, 4),
    (ie::EGRESS_INTERFACE, 4),
    (ie::FLOW_DIRECTION, 1),
    (ie::FORWARDING_STATUS, 1),
];
const COMMON_LEN: usize = 2 + 2 + 1 + 2 + 8 + 8 + 8 + 8 + 4 + 4 + 1 + 1;
pub const RECORD_LEN_V4: usize = 4 + 4 + COMMON_LEN;
pub const RECORD_LEN_V6: usize = 16 + 16 + COMMON_LEN;
const TEMPLATE_RECORD_LEN: usize = 4 + 4 * (2 + COMMON_FIELDS.len());
/// The template set announcing both templates.
pub const TEMPLATE_SET_LEN: usize = SET_HEADER_LEN + 2 * TEMPLATE_RECORD_LEN;

/// Export state carried from message to message within one transport session.
#[derive(Clone, Debug, Default)]
pub struct EncoderState {
    /// Data records exported so far, modulo 2^32 (RFC 7011 §3.1).
    sequence: u32,
    /// Messages since the last one carrying templates; `None` before any did.
    messages_since_templates: Option<u32>,
}

impl EncoderState {
    pub fn new() -> EncoderState {
        EncoderState::default()
    }

    /// The sequence number the next message will carry.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// Makes the next message carry the templates (e.g. after the collector was unreachable
    /// and may have restarted without them).
    pub fn templates_lost(&mut self) {
        self.messages_since_templates = None;
    }

    fn templates_due(&self) -> bool {
        self.messages_since_templates
            .is_none_or(|n| n >= TEMPLATE_REFRESH_MESSAGES)
    }
}

fn template_set(out: &mut Vec<u8>) {
    put_u16(out, TEMPLATE_SET_ID);
    put_u16(out, TEMPLATE_SET_LEN as u16);
    for (id, src, dst, addr_len) in [
        (
            TEMPLATE_ID_V4,
            ie::SOURCE_IPV4_ADDRESS,
            ie::DESTINATION_IPV4_ADDRESS,
            4,
        ),
        (
            TEMPLATE_ID_V6,
            ie::SOURCE_IPV6_ADDRESS,
            ie::DESTINATION_IPV6_ADDRESS,
            16,
        ),
    ] {
        put_u16(out, id);
        put_u16(out, (2 + COMMON_FIELDS.len()) as u16);
        for (ie, len) in [(src, addr_len), (dst, addr_len)]
            .into_iter()
            .chain(COMMON_FIELDS)
        {
            put_u16(out, ie);
            put_u16(out, len);
        }
    }
}

fn data_record(out: &mut Vec<u8>, r: &FlowRecord, f: &FlowFields) {
    match (f.srcaddr, f.dstaddr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    put_u16(out, f.srcport);
    put_u16(out, f.dstport);
    out.push(f.protocol);
    put_u16(out, u16::from(f.tcp_flags));
    put_u64(out, f.packets);
    put_u64(out, f.bytes);
    put_u64(out, r.start.saturating_mul(1000));
    put_u64(out, r.end.saturating_mul(1000));
    let (ingress, egress) = match f.direction {
        FlowDirection::Ingress => (r.ifindex, 0),
        FlowDirection::Egress => (0, r.ifindex),
    };
    put_u32(out, ingress);
    put_u32(out, egress);
    out.push(match f.direction {
        FlowDirection::Ingress => 0,
        FlowDirection::Egress => 1,
    });
    out.push(match f.action {
        FlowAction::Accept => FORWARDING_STATUS_FORWARDED,
        FlowAction::Reject => FORWARDING_STATUS_DROPPED,
    });
}

/// A flow with one IPv4 and one IPv6 end cannot exist on the wire; should the kernel side
/// ever hand one over, both go out as IPv6 (mapped) rather than being dropped.
fn as_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn is_v4(f: &FlowFields) -> bool {
    matches!((f.srcaddr, f.dstaddr), (IpAddr::V4(_), IpAddr::V4(_)))
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn set_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Builds one message at a time; lengths are patched in when a set or message closes.
struct MessageBuilder<'a> {
    state: &'a mut EncoderState,
    now: u32,
    domain: u32,
    out: Vec<Vec<u8>>,
    msg: Vec<u8>,
    records_in_msg: u32,
    /// (template id, offset of the set header) of the open data set.
    open_set: Option<(u16, usize)>,
}

impl MessageBuilder<'_> {
    fn start_message(&mut self, with_templates: bool) {
        let mut msg = Vec::with_capacity(MAX_MESSAGE_BYTES);
        put_u16(&mut msg, IPFIX_VERSION);
        put_u16(&mut msg, 0);
        put_u32(&mut msg, self.now);
        put_u32(&mut msg, self.state.sequence);
        put_u32(&mut msg, self.domain);
        if with_templates || self.state.templates_due() {
            template_set(&mut msg);
            self.state.messages_since_templates = Some(0);
        }
        self.msg = msg;
        self.records_in_msg = 0;
        self.open_set = None;
    }

    fn close_set(&mut self) {
        if let Some((_, at)) = self.open_set.take() {
            let len = (self.msg.len() - at) as u16;
            set_u16(&mut self.msg, at + 2, len);
        }
    }

    fn finish_message(&mut self) {
        self.close_set();
        let len = self.msg.len() as u16;
        set_u16(&mut self.msg, 2, len);
        self.state.sequence = self.state.sequence.wrapping_add(self.records_in_msg);
        if let Some(n) = self.state.messages_since_templates.as_mut() {
            *n += 1;
        }
        self.out.push(std::mem::take(&mut self.msg));
    }

    fn add(&mut self, r: &FlowRecord, f: &FlowFields) {
        let (template, len) = if is_v4(f) {
            (TEMPLATE_ID_V4, RECORD_LEN_V4)
        } else {
            (TEMPLATE_ID_V6, RECORD_LEN_V6)
        };
        let same_set = matches!(self.open_set, Some((t, _)) if t == template);
        let needed = len + if same_set { 0 } else { SET_HEADER_LEN };
        if self.msg.len() + needed > MAX_MESSAGE_BYTES {
            self.finish_message();
            self.start_message(false);
        }
        if !matches!(self.open_set, Some((t, _)) if t == template) {
            self.close_set();
            self.open_set = Some((template, self.msg.len()));
            put_u16(&mut self.msg, template);
            put_u16(&mut self.msg, 0);
        }
        data_record(&mut self.msg, r, f);
        self.records_in_msg += 1;
    }
}

/// The IPFIX messages for `records` at export time `now` (Unix seconds). Only records with
/// flow fields are exported. The first message carries the templates when `with_templates`
/// is set or the state says they are due (never sent, or 100 messages ago); with no flows
/// and templates due, one template-only message is returned.
pub fn encode_messages(
    state: &mut EncoderState,
    records: &[FlowRecord],
    now: u32,
    observation_domain: u32,
    with_templates: bool,
) -> Vec<Vec<u8>> {
    let mut b = MessageBuilder {
        state,
        now,
        domain: observation_domain,
        out: Vec::new(),
        msg: Vec::new(),
        records_in_msg: 0,
        open_set: None,
    };
    let mut flows = records
        .iter()
        .filter_map(|r| r.flow.as_ref().map(|f| (r, f)))
        .peekable();
    if flows.peek().is_none() && !(with_templates || b.state.templates_due()) {
        return Vec::new();
    }
    b.start_message(with_templates);
    for (r, f) in flows {
        b.add(r, f);
    }
    b.finish_message();
    b.out
}

/// Exports flow records to one collector over UDP.
pub struct IpfixExporter {
    socket: UdpSocket,
    collector: SocketAddr,
    observation_domain: u32,
    state: EncoderState,
    template_refresh: Duration,
    templates_sent_at: Option<SystemTime>,
}

impl IpfixExporter {
    /// A UDP socket "connected" to the collector, from an ephemeral port of the same family.
    pub fn new(collector: SocketAddr, observation_domain: u32) -> io::Result<IpfixExporter> {
        let local: SocketAddr = match collector {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(collector)?;
        Ok(IpfixExporter {
            socket,
            collector,
            observation_domain,
            state: EncoderState::new(),
            template_refresh: DEFAULT_TEMPLATE_REFRESH,
            templates_sent_at: None,
        })
    }

    /// How often templates are re-sent by time (RFC 7011 §8.4); they also go out at least
    /// every [`TEMPLATE_REFRESH_MESSAGES`] messages.
    pub fn with_template_refresh(mut self, every: Duration) -> IpfixExporter {
        self.template_refresh = every;
        self
    }

    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    pub fn sequence(&self) -> u32 {
        self.state.sequence()
    }

    /// Sends the flows among `records` and returns how many data records went out.
    pub fn send(&mut self, records: &[FlowRecord]) -> io::Result<usize> {
        self.send_at(records, SystemTime::now())
    }

    fn send_at(&mut self, records: &[FlowRecord], now: SystemTime) -> io::Result<usize> {
        let with_templates = self.templates_sent_at.is_none_or(|at| {
            // A clock stepping back must not stop the refresh.
            now.duration_since(at)
                .is_ok_and(|d| d >= self.template_refresh)
                || now < at
        });
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let messages = encode_messages(
            &mut self.state,
            records,
            secs,
            self.observation_domain,
            with_templates,
        );
        if with_templates {
            self.templates_sent_at = Some(now);
        }
        let mut sent = 0;
        for m in &messages {
            if let Err(e) = self.socket.send(m) {
                // Typically ECONNREFUSED: the collector is down; when it comes back it
                // knows no templates.
                self.state.templates_lost();
                self.templates_sent_at = None;
                return Err(e);
            }
            sent += data_records_in(m);
        }
        Ok(sent)
    }
}

/// Counts the data records in one of our messages (fixed record lengths per template).
fn data_records_in(msg: &[u8]) -> usize {
    let mut n = 0;
    let mut at = MESSAGE_HEADER_LEN;
    while at + SET_HEADER_LEN <= msg.len() {
        let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
        if len < SET_HEADER_LEN {
            break;
        }
        let body = len - SET_HEADER_LEN;
        n += match id {
            TEMPLATE_ID_V4 => body / RECORD_LEN_V4,
            TEMPLATE_ID_V6 => body / RECORD_LEN_V6,
            _ => 0,
        };
        at += len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog::record::LogStatus;

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn be64(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn flow(src: IpAddr, dst: IpAddr, i: u16) -> FlowRecord {
        FlowRecord {
            flow_log_id: "fl-1".into(),
            interface_id: "eth0".into(),
            ifindex: 7,
            flow: Some(FlowFields {
                srcaddr: src,
                dstaddr: dst,
                srcport: 40000 + i,
                dstport: 443,
                protocol: 6,
                packets: 0x0102_0304_0506_0708,
                bytes: 1500,
                action: FlowAction::Reject,
                tcp_flags: 0x1b,
                direction: FlowDirection::Egress,
                drop_reason: Some("NETFILTER_DROP".into()),
            }),
            start: 1_700_000_000,
            end: 1_700_000_060,
            log_status: LogStatus::Ok,
            skipped_packets: 0,
        }
    }

    fn v4(i: u16) -> FlowRecord {
        flow(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            i,
        )
    }

    fn v6(i: u16) -> FlowRecord {
        flow(
            IpAddr::V6("2001:db8::1".parse().unwrap()),
            IpAddr::V6("2001:db8::2".parse().unwrap()),
            i,
        )
    }

    /// (set id, set bytes including header) of every set in a message.
    fn sets(msg: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut at = MESSAGE_HEADER_LEN;
        while at < msg.len() {
            let len = be16(msg, at + 2) as usize;
            assert!(len >= 4 && at + len <= msg.len(), "set overruns message");
            out.push((be16(msg, at), &msg[at..at + len]));
            at += len;
        }
        assert_eq!(at, msg.len());
        out
    }

    #[test]
    fn template_set_layout() {
        let mut st = EncoderState::new();
        let msgs = encode_messages(&mut st, &[], 1234, 99, true);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(be16(m, 0), 10);
        assert_eq!(be16(m, 2) as usize, m.len());
        assert_eq!(be32(m, 4), 1234);
        assert_eq!(be32(m, 8), 0);
        assert_eq!(be32(m, 12), 99);
        let s = sets(m);
        assert_eq!(s.len(), 1);
        let (id, t) = s[0];
        assert_eq!(id, TEMPLATE_SET_ID);
        assert_eq!(t.len(), TEMPLATE_SET_LEN);
        assert_eq!(TEMPLATE_SET_LEN, 4 + 2 * (4 + 14 * 4));
        let fields = |at: usize| -> Vec<(u16, u16)> {
            (0..be16(t, at + 2) as usize)
                .map(|i| (be16(t, at + 4 + 4 * i), be16(t, at + 6 + 4 * i)))
                .collect()
        };
        assert_eq!(be16(t, 4), 256);
        let f4 = fields(4);
        assert_eq!(
            f4,
            [
                (8, 4),
                (12, 4),
                (7, 2),
                (11, 2),
                (4, 1),
                (6, 2),
                (2, 8),
                (1, 8),
                (152, 8),
                (153, 8),
                (10, 4),
                (14, 4),
                (61, 1),
                (89, 1)
            ]
        );
        assert_eq!(
            f4.iter().map(|f| f.1 as usize).sum::<usize>(),
            RECORD_LEN_V4
        );
        // No enterprise bit anywhere: IANA elements only.
        assert!(f4.iter().all(|f| f.0 & 0x8000 == 0));
        let at6 = 4 + 4 + 4 * 14;
        assert_eq!(be16(t, at6), 257);
        let f6 = fields(at6);
        assert_eq!(f6[0], (27, 16));
        assert_eq!(f6[1], (28, 16));
        assert_eq!(f6[2..], f4[2..]);
        assert_eq!(
            f6.iter().map(|f| f.1 as usize).sum::<usize>(),
            RECORD_LEN_V6
        );
        // Sending templates does not move the sequence number.
        assert_eq!(st.sequence(), 0);
    }

    #[test]
    fn data_record_layout_ipv4_and_ipv6() {
        let mut st = EncoderState::new();
        let mut ingress_accept = v4(1);
        {
            let f = ingress_accept.flow.as_mut().unwrap();
            f.direction = FlowDirection::Ingress;
            f.action = FlowAction::Accept;
        }
        let recs = [v4(0), ingress_accept, v6(2)];
        let msgs = encode_messages(&mut st, &recs, 5, 1, true);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(be16(m, 2) as usize, m.len());
        assert_eq!(
            m.len(),
            16 + TEMPLATE_SET_LEN + 4 + 2 * RECORD_LEN_V4 + 4 + RECORD_LEN_V6
        );
        let s = sets(m);
        assert_eq!(s.iter().map(|s| s.0).collect::<Vec<_>>(), [2, 256, 257]);
        let d4 = s[1].1;
        assert_eq!(d4.len(), 4 + 2 * RECORD_LEN_V4);
        let r = &d4[4..4 + RECORD_LEN_V4];
        assert_eq!(&r[0..4], &[192, 0, 2, 1]);
        assert_eq!(&r[4..8], &[198, 51, 100, 2]);
        assert_eq!(be16(r, 8), 40000);
        assert_eq!(be16(r, 10), 443);
        assert_eq!(r[12], 6);
        assert_eq!(be16(r, 13), 0x1b);
        assert_eq!(be64(r, 15), 0x0102_0304_0506_0708);
        assert_eq!(be64(r, 23), 1500);
        assert_eq!(be64(r, 31), 1_700_000_000_000);
        assert_eq!(be64(r, 39), 1_700_000_060_000);
        assert_eq!(be32(r, 47), 0, "egress flow: no ingress interface");
        assert_eq!(be32(r, 51), 7);
        assert_eq!(r[55], 1, "egress");
        assert_eq!(r[56], FORWARDING_STATUS_DROPPED);
        let r = &d4[4 + RECORD_LEN_V4..];
        assert_eq!(be32(r, 47), 7);
        assert_eq!(be32(r, 51), 0);
        assert_eq!(r[55], 0, "ingress");
        assert_eq!(r[56], FORWARDING_STATUS_FORWARDED);

        let d6 = s[2].1;
        assert_eq!(d6.len(), 4 + RECORD_LEN_V6);
        let r = &d6[4..];
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(&r[0..16], &a.octets());
        assert_eq!(be16(r, 32), 40002);
        assert_eq!(r[80], FORWARDING_STATUS_DROPPED);
        assert_eq!(st.sequence(), 3);
    }

    #[test]
    fn nodata_records_are_not_exported() {
        let mut st = EncoderState::new();
        let mut nodata = v4(0);
        nodata.flow = None;
        nodata.log_status = LogStatus::NoData;
        // Templates already sent: nothing at all to say.
        let _ = encode_messages(&mut st, &[], 0, 1, true);
        assert!(encode_messages(&mut st, &[nodata.clone()], 0, 1, false).is_empty());
        let msgs = encode_messages(&mut st, &[nodata, v4(1)], 0, 1, false);
        assert_eq!(msgs.len(), 1);
        assert_eq!(data_records_in(&msgs[0]), 1);
        assert_eq!(sets(&msgs[0]).len(), 1, "no templates");
    }

    #[test]
    fn splits_messages_and_counts_sequence_per_record() {
        let mut st = EncoderState::new();
        let recs: Vec<FlowRecord> = (0..100)
            .map(|i| if i % 3 == 0 { v6(i) } else { v4(i) })
            .collect();
        let msgs = encode_messages(&mut st, &recs, 77, 5, true);
        assert!(msgs.len() > 1);
        let mut expected_seq = 0u32;
        let mut ports = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(
                m.len() <= MAX_MESSAGE_BYTES,
                "message {i} is {} bytes",
                m.len()
            );
            assert_eq!(be16(m, 2) as usize, m.len());
            assert_eq!(be32(m, 8), expected_seq, "message {i}");
            let s = sets(m);
            assert_eq!(
                s[0].0 == TEMPLATE_SET_ID,
                i == 0,
                "templates only in the first"
            );
            for (id, set) in s {
                let len = match id {
                    TEMPLATE_ID_V4 => RECORD_LEN_V4,
                    TEMPLATE_ID_V6 => RECORD_LEN_V6,
                    _ => continue,
                };
                assert_eq!((set.len() - 4) % len, 0);
                for r in set[4..].chunks(len) {
                    ports.push(be16(r, len - 57 + 8));
                }
            }
            // A message is closed only when the next record no longer fits.
            if i + 1 < msgs.len() {
                assert!(m.len() + RECORD_LEN_V6 + 4 > MAX_MESSAGE_BYTES);
            }
            expected_seq += data_records_in(m) as u32;
        }
        assert_eq!(ports, (0..100).map(|i| 40000 + i).collect::<Vec<_>>());
        assert_eq!(st.sequence(), 100);
        // The next call continues the count.
        let m = encode_messages(&mut st, &[v4(0)], 78, 5, false);
        assert_eq!(be32(&m[0], 8), 100);
        assert_eq!(st.sequence(), 101);
    }

    #[test]
    fn sequence_wraps() {
        let mut st = EncoderState {
            sequence: u32::MAX,
            messages_since_templates: Some(0),
        };
        let m = encode_messages(&mut st, &[v4(0), v4(1)], 0, 1, false);
        assert_eq!(be32(&m[0], 8), u32::MAX);
        assert_eq!(st.sequence(), 1);
    }

    #[test]
    fn templates_repeat_every_100_messages() {
        let mut st = EncoderState::new();
        let mut with_templates = Vec::new();
        for i in 0..250 {
            let m = encode_messages(&mut st, &[v4(0)], 0, 1, false);
            if sets(&m[0])[0].0 == TEMPLATE_SET_ID {
                with_templates.push(i);
            }
        }
        assert_eq!(with_templates, [0, 100, 200]);
        // Also within one large batch.
        let mut st = EncoderState::new();
        let recs: Vec<FlowRecord> = (0..3000).map(v4).collect();
        let msgs = encode_messages(&mut st, &recs, 0, 1, true);
        assert!(msgs.len() > 100);
        assert_eq!(sets(&msgs[100])[0].0, TEMPLATE_SET_ID);
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES));
    }

    #[test]
    fn exporter_sends_and_refreshes_templates_by_time() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ex = IpfixExporter::new(rx.local_addr().unwrap(), 42)
            .unwrap()
            .with_template_refresh(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut buf = [0u8; 2048];
        let mut recv = || {
            let n = rx.recv(&mut buf).unwrap();
            let m = buf[..n].to_vec();
            (be32(&m, 12), sets(&m)[0].0, data_records_in(&m))
        };
        assert_eq!(ex.send_at(&[v4(0), v6(1)], t0).unwrap(), 2);
        assert_eq!(recv(), (42, TEMPLATE_SET_ID, 2));
        assert_eq!(
            ex.send_at(&[v4(2)], t0 + Duration::from_secs(59)).unwrap(),
            1
        );
        assert_eq!(recv(), (42, TEMPLATE_ID_V4, 1));
        assert_eq!(
            ex.send_at(&[v4(3)], t0 + Duration::from_secs(60)).unwrap(),
            1
        );
        assert_eq!(recv(), (42, TEMPLATE_SET_ID, 1));
        assert_eq!(ex.sequence(), 4);
    }
}
