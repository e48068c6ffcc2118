//! BPF_PROG_TEST_RUN fixtures for flow accounting: the source program counts into its CPU's
//! flow cache in front of the shared table, and the agent's drain must give back every
//! packet exactly once, each flow once, REJECT flows first.
//!
//! Kernel requirements: root (CAP_BPF, CAP_NET_ADMIN) to load programs and create a network
//! namespace; BPF_PROG_TEST_RUN for sched_cls with `ifindex` in the context (5.x+);
//! `bpf_ktime_get_coarse_ns` (5.11+).

use std::collections::BTreeMap;

use aya::programs::SchedClassifier;
use mirror_agent::{
    config::Objects,
    datapath::{self, PROG_INGRESS},
};
use mirror_ebpf::{
    FLOW_ACCEPT, FLOW_CACHE_SLOTS, FLOW_REJECT, FlowKey, FlowValue, MAX_SOURCES, SOURCE_FLOW_LOG,
    SourceConfig,
};
use mirror_tests::{
    fixture::{TC_ACT_UNSPEC, run, skb_ctx, tc_verdict, with_datapath},
    packets::{L4, frame, v4},
    topology::quiet_netns,
};

const STATS_SLOT: u32 = MAX_SOURCES - 1;

/// The i-th test flow: UDP from a distinct source address and port.
fn flow_packet(i: u32) -> Vec<u8> {
    let src = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    frame(
        v4(&src, "198.18.9.9"),
        L4::Udp {
            sport: 1000 + (i % 50_000) as u16,
            dport: 53,
        },
    )
    .payload(10)
    .build()
}

/// (source address word, source port) of a drained flow, to match it to its test flow.
fn id(k: &FlowKey) -> (u32, u16) {
    (k.src[0], k.src_port)
}

fn expected_id(i: u32) -> (u32, u16) {
    (
        u32::from_ne_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        1000 + (i % 50_000) as u16,
    )
}

/// Sends `packets_of(i)` packets of each of `flows` flows, interleaved so that flows keep
/// taking each other's cache slots, then drains: every flow once, exact counts. (The drain
/// walks the table with one thread per CPU, each from its share of the buckets: the flows of
/// every share come out once.)
fn send_and_check(
    prog: &SchedClassifier,
    ctx: &[u8],
    tables: &mut datapath::FlowTables,
    flows: u32,
    packets_of: impl Fn(u32) -> u32,
) {
    let packets: Vec<Vec<u8>> = (0..flows).map(flow_packet).collect();
    let rounds = (0..flows).map(&packets_of).max().unwrap_or(0);
    for round in 0..rounds {
        for (i, p) in packets.iter().enumerate() {
            if round < packets_of(i as u32) {
                let (verdict, out) = run(prog, p, ctx);
                assert_eq!(
                    verdict,
                    TC_ACT_UNSPEC,
                    "verdict {} for flow {i}",
                    tc_verdict(verdict)
                );
                assert_eq!(&out, p, "the original is untouched");
            }
        }
    }
    let mut seen: BTreeMap<(u32, u16), FlowValue> = BTreeMap::new();
    let skipped = tables
        .drain_with(
            std::time::Duration::from_millis(10),
            &[STATS_SLOT],
            |k, v| {
                assert_eq!(k.action, FLOW_ACCEPT);
                assert!(seen.insert(id(k), *v).is_none(), "flow {k:?} drained twice");
            },
        )
        .expect("drain");
    assert!(skipped.is_empty(), "nothing skipped: {skipped:?}");
    assert_eq!(seen.len(), flows as usize, "every flow drained");
    for i in 0..flows {
        let v = seen
            .get(&expected_id(i))
            .unwrap_or_else(|| panic!("flow {i} missing"));
        let n = u64::from(packets_of(i));
        assert_eq!(v.packets, n, "packets of flow {i}");
        assert_eq!(
            v.bytes,
            n * (packets[i as usize].len() as u64 - 14),
            "IP bytes of flow {i}"
        );
        assert!(
            v.first_ns <= v.last_ns && v.first_ns > 0,
            "times of flow {i}: {v:?}"
        );
    }
}

/// Loads the data path in a fresh namespace with flow tables of `table_size`, makes its
/// interface `ifname` a flow-logged source, and runs `f` with the ingress program, the
/// context of a packet arriving there, the source's interface index and the flow tables.
fn with_flow_logged_source(
    prefix: &str,
    ifname: &str,
    peer: &str,
    addr: &str,
    table_size: u32,
    f: impl FnOnce(&SchedClassifier, &[u8], u32, &mut datapath::FlowTables) + Send,
) {
    let ns = quiet_netns(prefix, &[(ifname, peer, addr)]);
    with_datapath(&ns, &Objects::default(), table_size, async |dp, tables| {
        let ifindex = datapath::ifindex(ifname).expect("source interface");
        dp.maps
            .set_source(
                ifindex,
                SourceConfig {
                    stats_slot: STATS_SLOT,
                    flags: SOURCE_FLOW_LOG,
                    ..SourceConfig::INACTIVE
                },
            )
            .expect("flow-logged source");
        let ctx = skb_ctx(ifindex, 0, None);
        let prog = dp.program(PROG_INGRESS).expect("ingress program");
        f(prog, &ctx, ifindex, tables);
    });
}

#[test]
fn flow_cache_counts_every_packet_once_and_the_drain_gives_each_flow_once() {
    with_flow_logged_source(
        "ffx",
        "ff0",
        "ff1",
        "198.18.206.1/24",
        65536,
        |prog, ctx, _, tables| {
            // A few flows: each stays in its slot (hits), the drain reads them from the caches.
            send_and_check(prog, ctx, tables, 7, |i| i + 1);
            // Four times as many flows as slots: slots change hands all the time, so most
            // packets move a flow into the shared table; counts stay exact.
            send_and_check(prog, ctx, tables, 4 * FLOW_CACHE_SLOTS, |i| 1 + i % 3);
            // The buffer used first, cleared by the first drain, is used again after two flips.
            send_and_check(prog, ctx, tables, 100, |_| 2);
        },
    );
}

#[test]
fn a_full_table_counts_what_it_cannot_hold() {
    with_flow_logged_source(
        "ffs",
        "fs0",
        "fs1",
        "198.18.207.1/24",
        64,
        |prog, ctx, _, tables| {
            let flows = 4 * FLOW_CACHE_SLOTS;
            for i in 0..flows {
                run(prog, &flow_packet(i), ctx);
            }
            let mut counted = 0u64;
            let mut distinct = std::collections::BTreeSet::new();
            let skipped = tables
                .drain_with(
                    std::time::Duration::from_millis(10),
                    &[STATS_SLOT],
                    |k, v| {
                        counted += v.packets;
                        assert!(distinct.insert(id(k)), "flow {k:?} drained twice");
                    },
                )
                .expect("drain");
            let skipped: u64 = skipped.iter().map(|(_, n)| n).sum();
            assert!(skipped > 0, "a 64-flow table cannot take {flows} flows");
            assert_eq!(
                counted + skipped,
                u64::from(flows),
                "every packet is counted or reported as skipped"
            );
        },
    );
}

#[test]
fn the_drain_gives_reject_flows_before_accept_flows() {
    with_flow_logged_source(
        "ffr",
        "fr0",
        "fr1",
        "198.18.208.1/24",
        4096,
        |prog, ctx, ifindex, tables| {
            for i in 0..50 {
                run(prog, &flow_packet(i), ctx);
            }
            // REJECT flows as the drop tracepoint writes them (it cannot be driven by TEST_RUN).
            let active = tables.active().expect("active buffer") as usize;
            for i in 0..50u32 {
                let key = FlowKey {
                    ifindex,
                    direction: 0,
                    ip_version: 4,
                    protocol: 17,
                    action: FLOW_REJECT,
                    src: [expected_id(i).0, 0, 0, 0],
                    dst: [u32::from_ne_bytes([198, 18, 9, 9]), 0, 0, 0],
                    src_port: expected_id(i).1,
                    dst_port: 53,
                };
                let value = FlowValue {
                    packets: 1,
                    bytes: 38,
                    first_ns: 1,
                    last_ns: 1,
                    tcp_flags: 0,
                    drop_reason: 2,
                };
                tables.buffers[active]
                    .rejects
                    .insert(key, value, 0)
                    .expect("REJECT flow");
            }
            let mut order = Vec::new();
            tables
                .drain_with(
                    std::time::Duration::from_millis(10),
                    &[STATS_SLOT],
                    |k, _| order.push(k.action),
                )
                .expect("drain");
            assert_eq!(order.len(), 100);
            assert!(
                order[..50].iter().all(|a| *a == FLOW_REJECT)
                    && order[50..].iter().all(|a| *a == FLOW_ACCEPT),
                "REJECT flows first: {order:?}"
            );
        },
    );
}
