//! Benchmark-only programs and maps (the `bench` feature, which `cargo xtask bench` turns on):
//! baselines and design alternatives that `mirror-bench` measures the real programs against.
//! The agent's own object is built without them, so it neither loads their maps nor carries
//! programs it never attaches.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, classifier, map},
    maps::PerCpuHashMap,
    programs::{BtfTracePointContext, TcContext},
};
use mirror_ebpf::{FLOW_ACCEPT, FlowKey, FlowValue};

use super::{
    PASS_ORIGINAL, flows,
    parse::{Parsed, parse},
};

/// Does nothing: the baseline `cargo xtask bench` measures the other programs against.
/// Never attached by the agent.
#[classifier]
pub fn bench_empty(_ctx: TcContext) -> i32 {
    PASS_ORIGINAL
}

/// Does nothing on `skb:kfree_skb`, as `flow_drop` is attached: with `bench_empty` beside the
/// source programs, the floor of a run as the kernel's BPF statistics measure it (their clock
/// reads, the dispatch), which the flow-accounting bench reads the agent's columns against.
#[btf_tracepoint(function = "kfree_skb")]
pub fn bench_empty_tp(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Benchmark only: parse and flow accounting as the agent does it; the same packet again and
/// again is a hit in this CPU's flow cache.
#[classifier]
pub fn bench_flow_shared(ctx: TcContext) -> i32 {
    bench_flow::<CACHE_HIT>(&ctx);
    PASS_ORIGINAL
}

/// Benchmark only: the agent's accounting when the packet's cache slot holds another flow,
/// every time: that flow moves into the shared table (atomic adds on its entry), this one
/// takes the slot. The worst case of the cache.
#[classifier]
pub fn bench_flow_evict(ctx: TcContext) -> i32 {
    bench_flow::<CACHE_EVICT>(&ctx);
    PASS_ORIGINAL
}

/// Benchmark only: the shared table alone, atomic adds, no cache (the design before the
/// cache).
#[classifier]
pub fn bench_flow_table(ctx: TcContext) -> i32 {
    bench_flow::<TABLE_ONLY>(&ctx);
    PASS_ORIGINAL
}

/// Benchmark only: parse and flow accounting into a per-CPU hash table (an alternative).
#[classifier]
pub fn bench_flow_percpu(ctx: TcContext) -> i32 {
    bench_flow::<PERCPU_HASH>(&ctx);
    PASS_ORIGINAL
}

const CACHE_HIT: u8 = 0;
const CACHE_EVICT: u8 = 1;
const TABLE_ONLY: u8 = 2;
const PERCPU_HASH: u8 = 3;

/// Benchmark only: parse, nothing else (the base the two flow variants are compared with).
#[classifier]
pub fn bench_parse(ctx: TcContext) -> i32 {
    if let Parsed::Ip(pkt) = parse(&ctx) {
        core::hint::black_box(pkt.ip_len);
    }
    PASS_ORIGINAL
}

#[inline(always)]
fn bench_flow<const VARIANT: u8>(ctx: &TcContext) {
    let Parsed::Ip(pkt) = parse(ctx) else {
        return;
    };
    let key = FlowKey {
        ifindex: 1,
        direction: 0,
        ip_version: pkt.ip_version,
        protocol: pkt.protocol,
        action: FLOW_ACCEPT,
        src: pkt.src,
        dst: pkt.dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
    };
    match VARIANT {
        PERCPU_HASH => account_percpu(&key, 1, pkt.ip_len as u64, pkt.tcp_flags as u32),
        TABLE_ONLY => flows::account_table_only(&key, 1, pkt.ip_len as u64, pkt.tcp_flags as u32),
        CACHE_EVICT => {
            flows::occupy_cache_slot(&key);
            flows::account(&key, 1, pkt.ip_len as u64, pkt.tcp_flags as u32, 0);
        }
        _ => flows::account(&key, 1, pkt.ip_len as u64, pkt.tcp_flags as u32, 0),
    }
}

/// The per-CPU alternative the benchmark measures the design against (never used otherwise).
#[map]
static BENCH_FLOWS_PERCPU: PerCpuHashMap<FlowKey, FlowValue> =
    PerCpuHashMap::with_max_entries(1024, 0);

/// Per-CPU flow update: no atomics, but the agent would sum every CPU's copy of each flow at
/// drain time, and memory is per CPU. Only the benchmark runs it.
#[inline(always)]
pub fn account_percpu(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u32) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = BENCH_FLOWS_PERCPU.get_ptr_mut(key) {
        // SAFETY: this CPU's copy; nothing else writes it while the program runs.
        unsafe {
            (*v).packets += packets;
            (*v).bytes += bytes;
            (*v).last_ns = now;
            (*v).tcp_flags |= tcp_flags;
        }
        return;
    }
    let value = FlowValue::first(packets, bytes, now, tcp_flags, 0);
    let _ = BENCH_FLOWS_PERCPU.insert(key, value, 0);
}
