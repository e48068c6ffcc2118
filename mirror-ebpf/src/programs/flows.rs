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

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::MaybeUninit,
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
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
/// The kernel's `sk_buff` layout, set by the agent before loading (`SKB_LAYOUT_GLOBAL`). A
/// global rather than a map: it lives in the object's read-only data, which the kernel
/// freezes, so the verifier knows every offset as a constant and the drop tracepoint (a BTF
/// program) reads the `sk_buff` and its device with plain loads, where offsets from a map
/// need a helper call per field (measured: ~700 ns per accounted drop with eleven of them).
#[unsafe(no_mangle)]
pub(crate) static SKB_LAYOUT: SkbLayout = SkbLayout::UNKNOWN;

/// One field of `SKB_LAYOUT`: a volatile read, so the compiler cannot fold the placeholder
/// the object is built with.
#[inline(always)]
pub(crate) fn layout(field: &'static u32) -> u32 {
    // SAFETY: a read of a field of a static.
    unsafe { read_volatile(field) }
}

/// A field of `SKB_LAYOUT` by name: `skb_layout!(dev)`.
macro_rules! skb_layout {
    ($field:ident) => {
        $crate::programs::flows::layout(&$crate::programs::flows::SKB_LAYOUT.$field)
    };
}
pub(crate) use skb_layout;

/// Flow timestamps for the source programs: CLOCK_MONOTONIC as the agent last wrote it to
/// `FLOW_CLOCK` (every 100 ms; records carry seconds), one load where reading a clock costs a
/// helper call on every packet (12-15 ns measured, a third of the accounting). Before any
/// agent wrote it (tests, benchmarks) the coarse clock is read instead.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    agent_clock().unwrap_or_else(|| unsafe { bpf_ktime_get_coarse_ns() })
}

/// `now_ns` for the drop tracepoint. Tracing programs may not read the coarse clock (its
/// seqlock could be held by the code being traced); the precise one has the same base, a tick
/// apart at most, and is read only before the agent's clock is there.
#[inline(always)]
fn now_ns_tracing() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    agent_clock().unwrap_or_else(|| unsafe { bpf_ktime_get_ns() })
}

/// `FLOW_CLOCK`, once the agent has written it.
#[inline(always)]
fn agent_clock() -> Option<u64> {
    FLOW_CLOCK.get(0).copied().filter(|&t| t != 0)
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

/// `add_to_table` on buffer `active`'s table, `t0` or `t1`. A call for each, not one call
/// for whichever: the verifier inlines a hash lookup (a direct call, where the helper goes
/// through the map's operations) only where every path brings the same map.
#[inline(always)]
fn add_to_buffer(
    [t0, t1]: [&HashMap<FlowKey, FlowValue>; 2],
    active: u32,
    key: &FlowKey,
    v: &FlowValue,
    stats_index: u32,
) {
    if active == 0 {
        add_to_table(t0, key, v, stats_index);
    } else {
        add_to_table(t1, key, v, stats_index);
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
    // A lookup per map, each naming its map: the verifier inlines a per-CPU array lookup
    // (6.10+) only where the map is the same on every path, and a helper call costs more than
    // the rest of a cache hit.
    let index = cache_index(key);
    let slot = if active == 0 {
        FLOW_CACHE_0.get_ptr_mut(index)
    } else {
        FLOW_CACHE_1.get_ptr_mut(index)
    };
    let Some(slot) = slot else {
        let v = FlowValue::first(packets, bytes, now, tcp_flags, 0);
        add_to_buffer([&FLOWS_0, &FLOWS_1], active, key, &v, stats_index);
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
        add_to_buffer(
            [&FLOWS_0, &FLOWS_1],
            active,
            &old_key,
            &old_value,
            slot.stats - 1,
        );
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
    let v = FlowValue::first(packets, bytes, now, tcp_flags, 0);
    add_to_buffer([&FLOWS_0, &FLOWS_1], active_buffer(), key, &v, 0);
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
    let now = now_ns_tracing();
    let v = FlowValue::first(1, bytes, now, tcp_flags, reason);
    add_to_buffer(
        [&FLOW_REJECTS_0, &FLOW_REJECTS_1],
        active_buffer(),
        key,
        &v,
        stats_index,
    );
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// A field of a kernel object the program got from the kernel with its BTF type (the
/// tracepoint's `sk_buff`, or a pointer read from one): a plain load, which the verifier
/// checks against the type (the offset is a constant from `SKB_LAYOUT`) and which reads 0
/// instead of faulting should the object be gone.
#[inline(always)]
fn field<T: Copy>(object: u64, offset: u32) -> T {
    // SAFETY: see above; the JIT guards the load.
    unsafe {
        read_volatile(
            (object as *const u8)
                .wrapping_add(offset as usize)
                .cast::<T>(),
        )
    }
}

/// Dropped packets of flow-logged interfaces become REJECT flows with the drop reason.
/// `skb:kfree_skb` fires for drops only (consumed packets go to `skb:consume_skb`). A BTF
/// tracepoint (5.5+): its `sk_buff` argument is typed, so its fields are plain loads.
#[btf_tracepoint(function = "kfree_skb")]
pub fn flow_drop(ctx: BtfTracePointContext) -> i32 {
    let _ = try_flow_drop(&ctx);
    0
}

/// 32-bit words read from the network header on: an IPv6 header and the first 16 bytes of a
/// transport header right after it (an IPv4 header without options and its transport header
/// fit too), so most drops need one read of the packet. Words, not bytes: addresses are
/// copied whole (they stay in network order, as `FlowKey` keeps them) and fields are shifts
/// of a word, where a byte array costs a load and a spill per byte.
const DROP_WORDS: usize = 14;

/// Bytes `at..at + 2` of `w` (network order) as a number.
#[inline(always)]
fn be16(w: &[u32; DROP_WORDS], at: usize) -> u16 {
    // Little-endian words: byte `at` is bits 8 * (at % 4) of word at / 4.
    u16::from_be((w[at / 4] >> (8 * (at % 4))) as u16)
}

/// Byte `at` of `w`.
#[inline(always)]
fn byte(w: &[u32; DROP_WORDS], at: usize) -> u8 {
    (w[at / 4] >> (8 * (at % 4))) as u8
}

/// Reads `DROP_WORDS` words at `src` into `w` (left uninitialised before: zeroing them
/// first would be a call to the BPF target's memset, a loop of byte stores).
#[inline(always)]
fn read_words(src: u64, w: &mut MaybeUninit<[u32; DROP_WORDS]>) -> Option<&[u32; DROP_WORDS]> {
    // SAFETY: the helper writes all `size` bytes of `w` or fails (and then zeroes them); on a
    // bad source address it fails cleanly.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            w.as_mut_ptr().cast(),
            (DROP_WORDS * 4) as u32,
            src as *const core::ffi::c_void,
        )
    };
    // SAFETY: written in full above.
    (ret == 0).then(|| unsafe { w.assume_init_ref() })
}

fn try_flow_drop(ctx: &BtfTracePointContext) -> Option<()> {
    // TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    if skb_layout!(valid) == 0 || skb == 0 {
        return None;
    }
    // The tracepoint fires for every drop on the host, so the cheapest test goes first: a
    // received packet names its input interface, and most drops are of interfaces without a
    // flow log (one load and one lookup). Locally sent packets only have their device.
    let iif: u32 = field(skb, skb_layout!(skb_iif));
    let dev: u64 = field(skb, skb_layout!(dev));
    let (ifindex, direction) = if iif != 0 {
        (iif, DIR_INGRESS)
    } else {
        if dev == 0 {
            return None;
        }
        (field::<u32>(dev, skb_layout!(dev_ifindex)), DIR_EGRESS)
    };
    let source = source_config(ifindex)?;
    if source.flags & SOURCE_FLOW_LOG == 0 || dev == 0 {
        return None;
    }
    // Only drops in the agent's own network namespace: interface indexes repeat across
    // namespaces.
    let net: u64 = field(dev, skb_layout!(dev_nd_net));
    if net == 0 || field::<u32>(net, skb_layout!(net_inum)) != skb_layout!(netns_inum) {
        return None;
    }
    let nh: u16 = field(skb, skb_layout!(network_header));
    let th: u16 = field(skb, skb_layout!(transport_header));
    if nh == u16::MAX {
        return None;
    }
    // `head` points to bytes, not to a type the verifier can check loads against: the
    // packet itself is read with the helper.
    let head: u64 = read(skb + skb_layout!(head) as u64)?;
    let mut buf = MaybeUninit::uninit();
    let w = read_words(head + nh as u64, &mut buf)?;
    // A zero the compiler cannot see: stores of a known zero next to each other become a call
    // to the BPF target's memset (a loop of byte stores).
    let zero = core::hint::black_box(0u32);
    let (ip_version, protocol, src, dst, bytes, first_fragment, l4_at) = match byte(w, 0) >> 4 {
        4 => (
            4,
            byte(w, 9),
            [w[3], zero, zero, zero],
            [w[4], zero, zero, zero],
            be16(w, 2) as u64,
            be16(w, 6) & 0x1fff == 0,
            20,
        ),
        // Extension headers are not walked here: the transport header offset below still
        // finds the ports, and the protocol is the first next-header.
        6 => (
            6,
            byte(w, 6),
            [w[2], w[3], w[4], w[5]],
            [w[6], w[7], w[8], w[9]],
            be16(w, 4) as u64 + 40,
            true,
            40,
        ),
        _ => return None,
    };
    let mut key = FlowKey {
        ifindex,
        direction: direction as u8,
        ip_version,
        protocol,
        action: FLOW_REJECT,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
    };
    let mut tcp_flags = 0;
    if first_fragment && th != u16::MAX && th > nh && (protocol == 6 || protocol == 17) {
        // The transport header is in what was read when the IP header has no options or
        // extensions (nearly always); otherwise it is read on its own.
        // Constant offsets in each case: the verifier reads a stack slot it can name.
        let (src_port, dst_port, flags) = match (th - nh) as usize {
            20 if l4_at == 20 => (be16(w, 20), be16(w, 22), byte(w, 33)),
            40 if l4_at == 40 => (be16(w, 40), be16(w, 42), byte(w, 53)),
            _ => {
                let mut buf = MaybeUninit::uninit();
                let l4 = read_words(head + th as u64, &mut buf)?;
                (be16(l4, 0), be16(l4, 2), byte(l4, 13))
            }
        };
        key.src_port = src_port;
        key.dst_port = dst_port;
        if protocol == 6 {
            tcp_flags = (flags & 0x3f) as u32;
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
