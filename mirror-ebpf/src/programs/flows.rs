//! Flow accounting for flow logs: every IP packet of a flow-logged interface, and the packets
//! the node drops (`skb:kfree_skb`), into a double-buffered flow table.
//!
//! The programs write the table `FLOW_CTL[0]` names. The agent flips it, waits until no
//! program can still be writing the old one (programs run to completion within a softirq or
//! tracepoint, far shorter than the wait), then reads and empties the idle table: nothing is
//! lost or counted twice, without batch lookup-and-delete (aya 0.14 has none).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use mirror_ebpf::{
    DEFAULT_FLOW_TABLE_SIZE, DIR_EGRESS, DIR_INGRESS, DIRECTIONS, FLOW_CTL_ACTIVE, FLOW_REJECT,
    FlowKey, FlowStats, FlowValue, MAX_SOURCES, SOURCE_FLOW_LOG, SkbLayout,
};

use super::source_config;

/// `EEXIST`: another CPU created the flow between our lookup and our insert.
const EEXIST: i32 = 17;

#[map]
static FLOWS_0: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_PREALLOC);
#[map]
static FLOWS_1: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_PREALLOC);
#[map]
static FLOW_CTL: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FLOW_STATS: PerCpuArray<FlowStats> =
    PerCpuArray::with_max_entries(MAX_SOURCES * DIRECTIONS as u32, 0);
#[map]
static SKB_LAYOUT: Array<SkbLayout> = Array::with_max_entries(1, 0);
#[inline(always)]
fn add(v: *mut FlowValue, packets: u64, bytes: u64, now: u64, tcp_flags: u32, reason: u32) {
    // SAFETY: `v` points into a map value that stays valid for the program's run; the
    // counters are shared between CPUs, hence atomic adds.
    unsafe {
        // The BPF target has no `AtomicU64::fetch_add`; the intrinsic with its result unused
        // compiles to the BPF atomic add every CPU version has.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).packets, packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, bytes);
        // Any recent time is right; racing CPUs write times microseconds apart.
        (*v).last_ns = now;
        // Flags change rarely (SYN, FIN, RST): write only when a new one appears.
        if (*v).tcp_flags & tcp_flags != tcp_flags {
            (*v).tcp_flags |= tcp_flags;
        }
        if reason != 0 {
            (*v).drop_reason = reason;
        }
    }
}

/// Adds a packet to its flow; when the table is full the loss is counted (SKIPDATA).
#[inline(always)]
pub fn account(
    key: &FlowKey,
    packets: u64,
    bytes: u64,
    tcp_flags: u32,
    reason: u32,
    stats_index: u32,
) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let active = FLOW_CTL.get(FLOW_CTL_ACTIVE).copied().unwrap_or(0);
    let table = if active == 0 { &FLOWS_0 } else { &FLOWS_1 };
    if let Some(v) = table.get_ptr_mut(key) {
        add(v, packets, bytes, now, tcp_flags, reason);
        return;
    }
    let value = FlowValue {
        packets,
        bytes,
        first_ns: now,
        last_ns: now,
        tcp_flags,
        drop_reason: reason,
    };
    match table.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(v) = table.get_ptr_mut(key) {
                add(v, packets, bytes, now, tcp_flags, reason);
            }
        }
        Err(_) => {
            if let Some(s) = FLOW_STATS.get_ptr_mut(stats_index) {
                // SAFETY: per-CPU value, only this CPU writes it.
                unsafe {
                    (*s).skipped_packets += packets;
                    (*s).skipped_flows += 1;
                }
            }
        }
    }
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Dropped packets of flow-logged interfaces become REJECT flows with the drop reason.
/// `skb:kfree_skb` fires for drops only (consumed packets go to `skb:consume_skb`).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn flow_drop(ctx: RawTracePointContext) -> i32 {
    let _ = try_flow_drop(&ctx);
    0
}

/// The kernel's `sk_buff` layout as the agent found it, if it wrote one.
#[inline(always)]
pub(crate) fn skb_layout() -> Option<&'static SkbLayout> {
    SKB_LAYOUT.get(0)
}

fn try_flow_drop(ctx: &RawTracePointContext) -> Option<()> {
    // TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let l = *SKB_LAYOUT.get(0)?;
    if l.valid == 0 || skb == 0 {
        return None;
    }
    // Only drops in the agent's own network namespace: interface indexes repeat across
    // namespaces, and the tracepoint fires for all of them.
    let dev: u64 = read(skb + l.dev as u64)?;
    if dev == 0 {
        return None;
    }
    let net: u64 = read(dev + l.dev_nd_net as u64)?;
    if net == 0 || read::<u32>(net + l.net_inum as u64)? != l.netns_inum {
        return None;
    }
    let iif: u32 = read(skb + l.skb_iif as u64)?;
    // Received packets carry their input interface; locally sent ones only their device.
    let (ifindex, direction) = if iif != 0 {
        (iif, DIR_INGRESS)
    } else {
        (read::<u32>(dev + l.dev_ifindex as u64)?, DIR_EGRESS)
    };
    let source = source_config(ifindex)?;
    if source.flags & SOURCE_FLOW_LOG == 0 {
        return None;
    }
    let head: u64 = read(skb + l.head as u64)?;
    let nh: u16 = read(skb + l.network_header as u64)?;
    let th: u16 = read(skb + l.transport_header as u64)?;
    if nh == u16::MAX {
        return None;
    }
    let ip = head + nh as u64;
    let first: [u8; 40] = read(ip)?;
    let mut key = FlowKey {
        ifindex,
        direction: direction as u8,
        ip_version: 0,
        protocol: 0,
        action: FLOW_REJECT,
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
    };
    let bytes;
    let mut first_fragment = true;
    match first[0] >> 4 {
        4 => {
            key.ip_version = 4;
            key.protocol = first[9];
            key.src[0] = u32::from_ne_bytes([first[12], first[13], first[14], first[15]]);
            key.dst[0] = u32::from_ne_bytes([first[16], first[17], first[18], first[19]]);
            bytes = u16::from_be_bytes([first[2], first[3]]) as u64;
            first_fragment = u16::from_be_bytes([first[6], first[7]]) & 0x1fff == 0;
        }
        6 => {
            key.ip_version = 6;
            // Extension headers are not walked here: the transport header offset below still
            // finds the ports, and the protocol is the first next-header.
            key.protocol = first[6];
            for i in 0..4 {
                key.src[i] = u32::from_ne_bytes([
                    first[8 + 4 * i],
                    first[9 + 4 * i],
                    first[10 + 4 * i],
                    first[11 + 4 * i],
                ]);
                key.dst[i] = u32::from_ne_bytes([
                    first[24 + 4 * i],
                    first[25 + 4 * i],
                    first[26 + 4 * i],
                    first[27 + 4 * i],
                ]);
            }
            bytes = u16::from_be_bytes([first[4], first[5]]) as u64 + 40;
        }
        _ => return None,
    }
    let mut tcp_flags = 0;
    if first_fragment && th != u16::MAX && th > nh && (key.protocol == 6 || key.protocol == 17) {
        let l4: [u8; 14] = read(head + th as u64)?;
        key.src_port = u16::from_be_bytes([l4[0], l4[1]]);
        key.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
        if key.protocol == 6 {
            tcp_flags = (l4[13] & 0x3f) as u32;
        }
    }
    account(
        &key,
        1,
        bytes,
        tcp_flags,
        reason as u32,
        source.stats_slot * DIRECTIONS as u32 + direction,
    );
    Some(())
}
