//! Flow accounting for flow logs: every IP packet of a flow-logged interface, and the packets
//! the node drops (`skb:kfree_skb`), into double-buffered flow tables.
//!
//! The programs write the buffer `FLOW_CTL[0]` names. The agent flips it, waits until no
//! program can still be writing the old one (programs run to completion within a softirq or
//! tracepoint, far shorter than the wait), then reads and empties the idle buffer: nothing is
//! lost or counted twice.
//!
//! A packet seen by the source programs (ACCEPT) is counted in its CPU's flow cache, a
//! direct-mapped per-CPU array: a hit is a few plain adds, no hash-table lookup and no atomic.
//! A flow that needs an occupied slot moves the old one into the shared table (`FLOWS_*`, one
//! entry per flow, atomic adds). The source programs run in softirq or with bottom halves
//! disabled, so nothing else on the CPU writes the slot meanwhile. The drop tracepoint can fire
//! in process context, where a softirq could interrupt it on the same CPU, so REJECT flows go
//! straight to their own shared tables (`FLOW_REJECTS_*`), which also lets the agent read
//! every REJECT flow of a drain before the ACCEPT flows they are taken off.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use mirror_ebpf::{
    DEFAULT_FLOW_TABLE_SIZE, DIR_EGRESS, DIR_INGRESS, DIRECTIONS, FLOW_CACHE_BITS,
    FLOW_CACHE_SLOTS, FLOW_CTL_ACTIVE, FLOW_REJECT, FlowCacheSlot, FlowKey, FlowStats, FlowValue,
    MAX_SOURCES, SOURCE_FLOW_LOG, SkbLayout,
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
static FLOW_REJECTS_0: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_PREALLOC);
#[map]
static FLOW_REJECTS_1: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_PREALLOC);
#[map]
static FLOW_CACHE_0: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);
#[map]
static FLOW_CACHE_1: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);
#[map]
static FLOW_CTL: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FLOW_CLOCK: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static FLOW_STATS: PerCpuArray<FlowStats> =
    PerCpuArray::with_max_entries(MAX_SOURCES * DIRECTIONS as u32, 0);
#[map]
static SKB_LAYOUT: Array<SkbLayout> = Array::with_max_entries(1, 0);

/// Flow timestamps for the source programs: CLOCK_MONOTONIC as the agent last wrote it to
/// `FLOW_CLOCK` (every 100 ms; records carry seconds), one load where reading a clock costs a
/// helper call on every packet (12-15 ns measured, a third of the accounting). Before any
/// agent wrote it (tests, benchmarks) the coarse clock is read instead.
#[inline(always)]
fn now_ns() -> u64 {
    match FLOW_CLOCK.get(0) {
        Some(&t) if t != 0 => t,
        // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
        _ => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

#[inline(always)]
fn active_buffer() -> u32 {
    FLOW_CTL.get(FLOW_CTL_ACTIVE).copied().unwrap_or(0)
}

/// Adds counts gathered elsewhere (a cache slot, or one dropped packet) to a shared entry.
#[inline(always)]
fn add_shared(e: *mut FlowValue, v: &FlowValue) {
    // SAFETY: `e` points into a map value that stays valid for the program's run; the
    // counters are shared between CPUs, hence atomic adds.
    unsafe {
        // The BPF target has no `AtomicU64::fetch_add`; the intrinsic with its result unused
        // compiles to the BPF atomic add every CPU version has.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).packets, v.packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).bytes, v.bytes);
        // Racing CPUs write times microseconds apart; any of them is right.
        if v.first_ns < (*e).first_ns {
            (*e).first_ns = v.first_ns;
        }
        if v.last_ns > (*e).last_ns {
            (*e).last_ns = v.last_ns;
        }
        // Flags change rarely (SYN, FIN, RST): write only when a new one appears.
        if (*e).tcp_flags & v.tcp_flags != v.tcp_flags {
            (*e).tcp_flags |= v.tcp_flags;
        }
        if v.drop_reason != 0 {
            (*e).drop_reason = v.drop_reason;
        }
    }
}

/// Adds `v` to the flow's shared entry, creating it; when the table is full the packets are
/// counted as SKIPDATA under `stats_index`.
#[inline(always)]
fn add_to_table(
    table: &HashMap<FlowKey, FlowValue>,
    key: &FlowKey,
    v: &FlowValue,
    stats_index: u32,
) {
    if let Some(e) = table.get_ptr_mut(key) {
        add_shared(e, v);
        return;
    }
    match table.insert(key, *v, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(e) = table.get_ptr_mut(key) {
                add_shared(e, v);
            }
        }
        Err(_) => {
            if let Some(s) = FLOW_STATS.get_ptr_mut(stats_index) {
                // SAFETY: per-CPU value, only this CPU writes it.
                unsafe {
                    (*s).skipped_packets += v.packets;
                    (*s).skipped_flows += 1;
                }
            }
        }
    }
}

/// A flow key as the 11 words it is made of (`FlowKey` is `repr(C)`, 44 bytes, 4-aligned,
/// without padding): hashing and comparing words is a few loads and no branches, where the
/// derived comparison tests field by field.
#[inline(always)]
fn words(key: &FlowKey) -> &[u32; 11] {
    // SAFETY: same size and alignment, every bit pattern a valid u32 (checked in lib.rs).
    unsafe { &*(key as *const FlowKey).cast::<[u32; 11]>() }
}

/// The cache slot of a flow: the top bits of a multiplicative hash of its key. IPv6
/// addresses are folded by XOR first (one multiplication in all).
#[inline(always)]
fn cache_index(key: &FlowKey) -> u32 {
    let w = words(key);
    // w[0] interface, w[1] direction/version/protocol/action, w[2..6] source, w[6..10]
    // destination, w[10] ports.
    let src = w[2] ^ w[3] ^ w[4] ^ w[5];
    let dst = w[6] ^ w[7] ^ w[8] ^ w[9];
    let h = w[0] ^ w[1] ^ src ^ dst.rotate_left(16) ^ w[10].rotate_left(8);
    h.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_BITS)
}

#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (words(a), words(b));
    let mut diff = 0;
    for i in 0..11 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

/// Counts a packet the source programs saw (ACCEPT). Only for programs that run in softirq
/// or with bottom halves disabled (TC): the cache slot is written without atomics.
#[inline(always)]
pub fn account(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u32, stats_index: u32) {
    let now = now_ns();
    let active = active_buffer();
    let cache = if active == 0 {
        &FLOW_CACHE_0
    } else {
        &FLOW_CACHE_1
    };
    let table = if active == 0 { &FLOWS_0 } else { &FLOWS_1 };
    let Some(slot) = cache.get_ptr_mut(cache_index(key)) else {
        let v = FlowValue::first(packets, bytes, now, tcp_flags, 0);
        add_to_table(table, key, &v, stats_index);
        return;
    };
    // SAFETY: this CPU's slot; nothing else on this CPU runs a source program meanwhile
    // (softirq, or bottom halves disabled), and the agent touches only the idle buffer.
    let slot = unsafe { &mut *slot };
    // An empty slot's key is all zero, which no flow's is (interface indexes start at 1).
    if same_flow(&slot.key, key) {
        slot.value.packets += packets;
        slot.value.bytes += bytes;
        slot.value.last_ns = now;
        if slot.value.tcp_flags & tcp_flags != tcp_flags {
            slot.value.tcp_flags |= tcp_flags;
        }
        return;
    }
    if slot.stats != 0 {
        let old_key = slot.key;
        let old_value = slot.value;
        add_to_table(table, &old_key, &old_value, slot.stats - 1);
    }
    slot.key = *key;
    slot.stats = stats_index + 1;
    slot.value = FlowValue::first(packets, bytes, now, tcp_flags, 0);
}

/// Benchmark only: the shared table without the cache in front (the design before it).
#[cfg(feature = "bench")]
#[inline(always)]
pub fn account_table_only(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u32) {
    let now = now_ns();
    let table = if active_buffer() == 0 {
        &FLOWS_0
    } else {
        &FLOWS_1
    };
    let v = FlowValue::first(packets, bytes, now, tcp_flags, 0);
    add_to_table(table, key, &v, 0);
}

/// Benchmark only: puts another flow (the key with its ports swapped) in `key`'s cache slot,
/// so that the next `account` of `key` moves it out.
#[cfg(feature = "bench")]
#[inline(always)]
pub fn occupy_cache_slot(key: &FlowKey) {
    let cache = if active_buffer() == 0 {
        &FLOW_CACHE_0
    } else {
        &FLOW_CACHE_1
    };
    if let Some(slot) = cache.get_ptr_mut(cache_index(key)) {
        // SAFETY: this CPU's slot, as in `account`.
        let slot = unsafe { &mut *slot };
        slot.key = *key;
        slot.key.src_port = key.dst_port;
        slot.key.dst_port = key.src_port;
        slot.stats = 1;
        slot.value.packets = 1;
        slot.value.bytes = 64;
    }
}

/// Counts a dropped packet (REJECT) in the shared REJECT table, with atomics: the drop
/// tracepoint may run in process context, where a softirq on the same CPU could interrupt
/// a plain read-modify-write.
#[inline(always)]
fn account_reject(key: &FlowKey, bytes: u64, tcp_flags: u32, reason: u32, stats_index: u32) {
    // Tracing programs may not read the coarse clock (its seqlock could be held by the
    // code being traced); the precise one has the same base, a tick apart at most.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let table = if active_buffer() == 0 {
        &FLOW_REJECTS_0
    } else {
        &FLOW_REJECTS_1
    };
    let v = FlowValue::first(1, bytes, now, tcp_flags, reason);
    add_to_table(table, key, &v, stats_index);
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
    // The tracepoint fires for every drop on the host, so the cheapest test goes first: a
    // received packet names its input interface, and most drops are of interfaces without a
    // flow log (one read and one lookup). Locally sent packets only have their device.
    let iif: u32 = read(skb + l.skb_iif as u64)?;
    let (ifindex, direction, dev) = if iif != 0 {
        (iif, DIR_INGRESS, 0)
    } else {
        let dev: u64 = read(skb + l.dev as u64)?;
        if dev == 0 {
            return None;
        }
        (read::<u32>(dev + l.dev_ifindex as u64)?, DIR_EGRESS, dev)
    };
    let source = source_config(ifindex)?;
    if source.flags & SOURCE_FLOW_LOG == 0 {
        return None;
    }
    // Only drops in the agent's own network namespace: interface indexes repeat across
    // namespaces.
    let dev: u64 = if dev != 0 {
        dev
    } else {
        read(skb + l.dev as u64)?
    };
    if dev == 0 {
        return None;
    }
    let net: u64 = read(dev + l.dev_nd_net as u64)?;
    if net == 0 || read::<u32>(net + l.net_inum as u64)? != l.netns_inum {
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
    account_reject(
        &key,
        bytes,
        tcp_flags,
        reason as u32,
        source.stats_slot * DIRECTIONS as u32 + direction,
    );
    Some(())
}
