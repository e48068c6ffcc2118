//! Drained kernel flows → one flow log's records for an interval (SPEC section 5).
//!
//! Dropped packets were usually counted twice by the kernel: once by the source program
//! (ACCEPT, TC runs before netfilter) and once by the drop tracepoint (REJECT). A REJECT flow's
//! packets are therefore taken off the ACCEPT flow with the same interface, direction and
//! addresses, so each packet is in exactly one record.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use mirror_ebpf::{DIR_INGRESS, FLOW_ACCEPT, FLOW_REJECT, FlowKey, FlowValue};

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

/// Flows of one flow log accumulated over its interval.
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
        e.packets += v.packets;
        e.bytes += v.bytes;
        e.first_ns = e.first_ns.min(v.first_ns);
        e.last_ns = e.last_ns.max(v.last_ns);
        e.tcp_flags |= v.tcp_flags;
        if v.drop_reason != 0 {
            e.drop_reason = v.drop_reason;
        }
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

pub fn records(pending: Pending, iv: &Interval<'_>) -> Vec<FlowRecord> {
    let mut flows = pending.flows;
    // Take dropped packets off their ACCEPT twin.
    let rejects: Vec<(FlowKey, FlowValue)> = flows
        .iter()
        .filter(|(k, _)| k.action == FLOW_REJECT)
        .map(|(k, v)| (*k, *v))
        .collect();
    for (k, v) in rejects {
        let twin = FlowKey {
            action: FLOW_ACCEPT,
            ..k
        };
        let emptied = match flows.get_mut(&twin) {
            Some(a) => {
                let n = a.packets.min(v.packets);
                a.packets -= n;
                a.bytes = a.bytes.saturating_sub(v.bytes.min(a.bytes));
                a.packets == 0
            }
            None => false,
        };
        if emptied {
            flows.remove(&twin);
        }
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<u32, bool> = iv.interfaces.keys().map(|i| (*i, false)).collect();
    let mut keys: Vec<&FlowKey> = flows.keys().collect();
    keys.sort();
    for k in keys {
        let v = &flows[k];
        let Some(name) = iv.interfaces.get(&k.ifindex) else {
            continue;
        };
        seen.insert(k.ifindex, true);
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
            continue;
        }
        out.push(FlowRecord {
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
        });
    }
    for (ifindex, n) in &pending.skipped {
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

#[cfg(test)]
mod tests {
    use super::*;

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
