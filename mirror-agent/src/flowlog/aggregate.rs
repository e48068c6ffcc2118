//! Drained kernel flows → one flow log's records for an interval (SPEC section 5), flow by
//! flow, so that an interval is never held in memory as a whole.
//!
//! Dropped packets were usually counted twice by the kernel: once by the source program
//! (ACCEPT, TC runs before netfilter) and once by the drop tracepoint (REJECT). A REJECT flow's
//! packets are therefore taken off the ACCEPT flow with the same interface, direction and
//! addresses, so each packet is in exactly one record. [`Twins`] does that while the flows
//! stream by: it needs every REJECT flow before any ACCEPT flow, which is the order
//! `FlowTables::drain_with` yields them in (and [`stream_pending`] for merged flows).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use mirror_ebpf::{DIR_INGRESS, FLOW_REJECT, FlowKey, FlowValue};

use super::record::{FlowAction, FlowDirection, FlowFields, FlowRecord, LogStatus};

/// Which records a flow log keeps (TrafficType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    All,
    Allow,
    Drop,
}

impl TrafficType {
    pub fn parse(s: &str) -> TrafficType {
        match s.to_ascii_lowercase().as_str() {
            "allow" => TrafficType::Allow,
            "drop" => TrafficType::Drop,
            _ => TrafficType::All,
        }
    }
}

/// Flows of one flow log merged over several drains: only those drained while its interval
/// had not ended (another flow log's interval ended first). Memory grows with its flows.
#[derive(Debug, Default)]
pub struct Pending {
    pub flows: HashMap<FlowKey, FlowValue>,
    /// Packets the kernel could not account, by interface index.
    pub skipped: HashMap<u32, u64>,
}

impl Pending {
    pub fn add(&mut self, key: FlowKey, v: FlowValue) {
        let e = self.flows.entry(key).or_insert(FlowValue {
            first_ns: v.first_ns,
            ..FlowValue::default()
        });
        crate::datapath::flowtable::merge(e, &v);
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.skipped.is_empty()
    }
}

fn addr(version: u8, words: &[u32; 4]) -> IpAddr {
    if version == 6 {
        let mut b = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    }
}

/// What the records need besides the flows.
#[derive(Clone)]
pub struct Interval<'a> {
    pub flow_log_id: &'a str,
    pub traffic: TrafficType,
    /// Interface index → name, for the interfaces the flow log covers.
    pub interfaces: &'a BTreeMap<u32, String>,
    /// Unix seconds of the interval.
    pub start: u64,
    pub end: u64,
    /// Add to a `bpf_ktime_get_ns` value to get Unix nanoseconds.
    pub mono_to_unix_ns: i128,
    pub drop_reasons: &'a BTreeMap<u64, String>,
}

fn unix_secs(mono_ns: u64, offset: i128) -> u64 {
    ((i128::from(mono_ns) + offset).max(0) / 1_000_000_000) as u64
}

/// The REJECT flows of one drain (or of one merged interval), kept until their ACCEPT twin
/// streams by. Normally few: a REJECT flood of many distinct flows makes this map as large as
/// the flood (about 60 bytes per REJECT flow).
#[derive(Debug, Default)]
pub struct Twins {
    /// REJECT key → (packets, bytes) still to take off its ACCEPT twin.
    rejects: HashMap<FlowKey, (u64, u64)>,
    accepts_seen: bool,
    /// REJECT flows that came after an ACCEPT flow: the order was broken, and their packets
    /// may be in an ACCEPT record too. Counted so that it shows instead of passing silently.
    pub late_rejects: u64,
}

impl Twins {
    /// The counts the record of `key` reports: a REJECT flow's own; an ACCEPT flow's less its
    /// REJECT twin's, `None` when no packet is left. Every REJECT flow must come before any
    /// ACCEPT flow, and each key once.
    pub fn settle(&mut self, key: &FlowKey, v: &FlowValue) -> Option<FlowValue> {
        if key.action == FLOW_REJECT {
            self.late_rejects += u64::from(self.accepts_seen);
            let e = self.rejects.entry(*key).or_default();
            e.0 += v.packets;
            e.1 += v.bytes;
            return Some(*v);
        }
        self.accepts_seen = true;
        let twin = FlowKey {
            action: FLOW_REJECT,
            ..*key
        };
        // Each ACCEPT key comes once: its twin is no longer needed afterwards.
        let Some((packets, bytes)) = self.rejects.remove(&twin) else {
            return Some(*v);
        };
        let mut a = *v;
        a.packets -= a.packets.min(packets);
        a.bytes = a.bytes.saturating_sub(bytes.min(a.bytes));
        (a.packets != 0).then_some(a)
    }

    /// REJECT flows held.
    pub fn len(&self) -> usize {
        self.rejects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rejects.is_empty()
    }
}

/// One flow log's interval turned into records flow by flow: only which covered interfaces
/// had traffic is kept, for the NODATA records that close the interval.
pub struct IntervalRecords<'a> {
    iv: Interval<'a>,
    seen: BTreeMap<u32, bool>,
}

impl<'a> IntervalRecords<'a> {
    pub fn new(iv: Interval<'a>) -> IntervalRecords<'a> {
        let seen = iv.interfaces.keys().map(|i| (*i, false)).collect();
        IntervalRecords { iv, seen }
    }

    pub fn interval(&self) -> &Interval<'a> {
        &self.iv
    }

    /// The record of one flow whose counts [`Twins::settle`] gave; `None` when the flow is
    /// not on one of the flow log's interfaces or its TrafficType leaves it out.
    pub fn record(&mut self, k: &FlowKey, v: &FlowValue) -> Option<FlowRecord> {
        let iv = &self.iv;
        let name = iv.interfaces.get(&k.ifindex)?;
        // Traffic the TrafficType leaves out still means the interface had data.
        self.seen.insert(k.ifindex, true);
        let action = if k.action == FLOW_REJECT {
            FlowAction::Reject
        } else {
            FlowAction::Accept
        };
        let keep = match iv.traffic {
            TrafficType::All => true,
            TrafficType::Allow => action == FlowAction::Accept,
            TrafficType::Drop => action == FlowAction::Reject,
        };
        if !keep {
            return None;
        }
        Some(FlowRecord {
            flow_log_id: iv.flow_log_id.to_string(),
            interface_id: name.clone(),
            ifindex: k.ifindex,
            flow: Some(FlowFields {
                srcaddr: addr(k.ip_version, &k.src),
                dstaddr: addr(k.ip_version, &k.dst),
                srcport: k.src_port,
                dstport: k.dst_port,
                protocol: k.protocol,
                packets: v.packets,
                bytes: v.bytes,
                action,
                tcp_flags: (v.tcp_flags & 0x3f) as u8,
                direction: if u32::from(k.direction) == DIR_INGRESS {
                    FlowDirection::Ingress
                } else {
                    FlowDirection::Egress
                },
                drop_reason: (action == FlowAction::Reject).then(|| {
                    iv.drop_reasons
                        .get(&u64::from(v.drop_reason))
                        .map(|n| n.trim_start_matches("SKB_DROP_REASON_").to_string())
                        .unwrap_or_else(|| v.drop_reason.to_string())
                }),
            }),
            start: unix_secs(v.first_ns, iv.mono_to_unix_ns).clamp(iv.start, iv.end),
            end: unix_secs(v.last_ns, iv.mono_to_unix_ns).clamp(iv.start, iv.end),
            log_status: LogStatus::Ok,
            skipped_packets: 0,
        })
    }

    /// The records that close the interval: SKIPDATA for each covered interface whose
    /// packets the full table could not account (`skipped`, by interface index), NODATA for
    /// each covered interface without any flow.
    pub fn finish(self, skipped: &HashMap<u32, u64>) -> Vec<FlowRecord> {
        let IntervalRecords { iv, mut seen } = self;
        let mut out = Vec::new();
        for (ifindex, n) in skipped {
            if let Some(name) = iv.interfaces.get(ifindex) {
                seen.insert(*ifindex, true);
                out.push(FlowRecord {
                    flow_log_id: iv.flow_log_id.to_string(),
                    interface_id: name.clone(),
                    ifindex: *ifindex,
                    flow: None,
                    start: iv.start,
                    end: iv.end,
                    log_status: LogStatus::SkipData,
                    skipped_packets: *n,
                });
            }
        }
        for (ifindex, had) in seen {
            if !had && let Some(name) = iv.interfaces.get(&ifindex) {
                out.push(FlowRecord {
                    flow_log_id: iv.flow_log_id.to_string(),
                    interface_id: name.clone(),
                    ifindex,
                    flow: None,
                    start: iv.start,
                    end: iv.end,
                    log_status: LogStatus::NoData,
                    skipped_packets: 0,
                });
            }
        }
        out
    }
}

/// Streams flows merged over several drains (a [`Pending`]) into `out`'s records, REJECT
/// flows first as [`Twins`] needs; `emit` gets each record. The SKIPDATA and NODATA records
/// are left to [`IntervalRecords::finish`].
pub fn stream_pending(
    pending: &Pending,
    out: &mut IntervalRecords<'_>,
    mut emit: impl FnMut(FlowRecord),
) {
    let mut twins = Twins::default();
    for rejects in [true, false] {
        for (k, v) in pending
            .flows
            .iter()
            .filter(|(k, _)| (k.action == FLOW_REJECT) == rejects)
        {
            if let Some(v) = twins.settle(k, v)
                && let Some(r) = out.record(k, &v)
            {
                emit(r);
            }
        }
    }
}

/// The whole interval's records at once, in no particular order: the interval as the runner
/// held it before it streamed (the tests, and the bench's comparison, use it).
pub fn records(pending: Pending, iv: &Interval<'_>) -> Vec<FlowRecord> {
    let mut out = IntervalRecords::new(iv.clone());
    let mut records = Vec::with_capacity(pending.flows.len());
    stream_pending(&pending, &mut out, |r| records.push(r));
    records.extend(out.finish(&pending.skipped));
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_ebpf::FLOW_ACCEPT;

    fn key(action: u8, dport: u16) -> FlowKey {
        FlowKey {
            ifindex: 2,
            direction: 0,
            ip_version: 4,
            protocol: 17,
            action,
            src: [u32::from_ne_bytes([198, 18, 0, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([198, 18, 0, 2]), 0, 0, 0],
            src_port: 1000,
            dst_port: dport,
        }
    }

    fn val(packets: u64) -> FlowValue {
        FlowValue {
            packets,
            bytes: packets * 100,
            first_ns: 1_000_000_000,
            last_ns: 2_000_000_000,
            tcp_flags: 0,
            drop_reason: 0,
        }
    }

    #[test]
    fn rejects_come_off_their_accept_twin_and_traffic_type_filters() {
        let ifs = BTreeMap::from([(2, "eth0".to_string()), (3, "eth1".to_string())]);
        let reasons = BTreeMap::from([(77, "SKB_DROP_REASON_NETFILTER_DROP".to_string())]);
        let mut p = Pending::default();
        p.add(key(FLOW_ACCEPT, 53), val(10));
        p.add(
            key(FLOW_REJECT, 53),
            FlowValue {
                drop_reason: 77,
                ..val(4)
            },
        );
        p.add(key(FLOW_ACCEPT, 80), val(3));
        let iv = Interval {
            flow_log_id: "fl-1",
            traffic: TrafficType::All,
            interfaces: &ifs,
            start: 100,
            end: 200,
            mono_to_unix_ns: 150_000_000_000,
            drop_reasons: &reasons,
        };
        let r = records(p, &iv);
        let get = |dport: u16, a: FlowAction| {
            r.iter()
                .find(|x| {
                    x.flow
                        .as_ref()
                        .is_some_and(|f| f.dstport == dport && f.action == a)
                })
                .and_then(|x| x.flow.clone())
        };
        assert_eq!(get(53, FlowAction::Accept).map(|f| f.packets), Some(6));
        let rej = get(53, FlowAction::Reject).expect("reject record");
        assert_eq!(rej.packets, 4);
        assert_eq!(rej.drop_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(get(80, FlowAction::Accept).map(|f| f.packets), Some(3));
        // eth1 saw nothing: NODATA.
        assert!(
            r.iter()
                .any(|x| x.interface_id == "eth1" && x.log_status == LogStatus::NoData)
        );
        let start = r.iter().find_map(|x| x.flow.as_ref().map(|_| x.start));
        assert_eq!(start, Some(151));
    }

    #[test]
    fn twins_in_drain_order_and_a_broken_order_is_counted() {
        let mut t = Twins::default();
        assert_eq!(
            t.settle(&key(FLOW_REJECT, 53), &val(4)).map(|v| v.packets),
            Some(4)
        );
        assert_eq!(
            t.settle(&key(FLOW_REJECT, 54), &val(2)).map(|v| v.packets),
            Some(2)
        );
        assert_eq!(t.len(), 2);
        let a = t.settle(&key(FLOW_ACCEPT, 53), &val(10)).expect("6 left");
        assert_eq!((a.packets, a.bytes), (6, 600));
        assert_eq!(
            t.settle(&key(FLOW_ACCEPT, 54), &val(2)),
            None,
            "all dropped"
        );
        assert_eq!(
            t.settle(&key(FLOW_ACCEPT, 55), &val(1)).map(|v| v.packets),
            Some(1)
        );
        assert!(t.is_empty(), "each twin used once");
        assert_eq!(t.late_rejects, 0);
        t.settle(&key(FLOW_REJECT, 56), &val(1));
        assert_eq!(t.late_rejects, 1);
    }

    #[test]
    fn drop_only_keeps_rejects_and_skipped_is_skipdata() {
        let ifs = BTreeMap::from([(2, "eth0".to_string())]);
        let reasons = BTreeMap::new();
        let mut p = Pending::default();
        p.add(key(FLOW_ACCEPT, 80), val(3));
        p.add(key(FLOW_REJECT, 81), val(2));
        p.skipped.insert(2, 9);
        let iv = Interval {
            flow_log_id: "fl-1",
            traffic: TrafficType::Drop,
            interfaces: &ifs,
            start: 0,
            end: u64::MAX,
            mono_to_unix_ns: 0,
            drop_reasons: &reasons,
        };
        let r = records(p, &iv);
        assert_eq!(r.iter().filter(|x| x.flow.is_some()).count(), 1);
        assert!(
            r.iter()
                .any(|x| x.log_status == LogStatus::SkipData && x.skipped_packets == 9)
        );
    }
}
