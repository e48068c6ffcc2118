//! The map ABI shared by the eBPF programs and the agent.
//!
//! Every key and value that crosses the kernel boundary is defined here once, `#[repr(C)]`,
//! with explicit padding fields so that both sides agree byte for byte. The agent enables the
//! `user` feature to get `aya::Pod` implementations; the programs use the plain types.
//!
//! Addresses and ports are kept in network byte order as they appear in the packet (read as
//! native `u32`/`u16` words), so the data path compares raw words and never swaps bytes.
#![no_std]

/// Traffic direction, relative to the source interface: ingress is what the interface receives,
/// egress is what it transmits. Used as an index, hence the small integers.
/// The object's map names: aya names a map after its `static` on the eBPF side, and the agent
/// asks for it by this name. `mirror-agent`'s tests check that this list and the built object
/// hold the same maps, so a renamed map fails a test instead of an agent start.
pub mod map_names {
    /// Source configuration by ifindex (array, ifindex < SOURCES_DIRECT_MAX).
    pub const SOURCES_DIRECT: &str = "SOURCES_DIRECT";
    /// Source configuration by ifindex (hash, for the rest).
    pub const SOURCES: &str = "SOURCES";
    /// Sessions by slot.
    pub const SESSIONS: &str = "SESSIONS";
    /// Filters (rules per direction) by slot.
    pub const FILTERS: &str = "FILTERS";
    /// Per-CPU session counters by slot and direction.
    pub const SESSION_STATS: &str = "SESSION_STATS";
    /// Per-CPU source counters by slot and direction.
    pub const SOURCE_STATS: &str = "SOURCE_STATS";
    /// Per-CPU rule hit counters by rule slot.
    pub const RULE_STATS: &str = "RULE_STATS";
    /// Flow table, first half of the double buffer.
    pub const FLOWS_0: &str = "FLOWS_0";
    /// Flow table, second half of the double buffer.
    pub const FLOWS_1: &str = "FLOWS_1";
    /// REJECT flows (the drop tracepoint), first half of the double buffer.
    pub const FLOW_REJECTS_0: &str = "FLOW_REJECTS_0";
    /// REJECT flows, second half of the double buffer.
    pub const FLOW_REJECTS_1: &str = "FLOW_REJECTS_1";
    /// Per-CPU hot cache in front of `FLOWS_0`.
    pub const FLOW_CACHE_0: &str = "FLOW_CACHE_0";
    /// Per-CPU hot cache in front of `FLOWS_1`.
    pub const FLOW_CACHE_1: &str = "FLOW_CACHE_1";
    /// Which flow table the programs write.
    pub const FLOW_CTL: &str = "FLOW_CTL";
    /// The agent's clock for flow times (CLOCK_MONOTONIC ns, refreshed every 100 ms).
    pub const FLOW_CLOCK: &str = "FLOW_CLOCK";
    /// Per-CPU flow-accounting counters (SKIPDATA).
    pub const FLOW_STATS: &str = "FLOW_STATS";
    /// Sessions' token buckets and sampling state.
    pub const BUDGET_STATE: &str = "BUDGET_STATE";
    /// Receiving interfaces.
    pub const RX_INTERFACES: &str = "RX_INTERFACES";
    /// Served VNIs.
    pub const RX_VNIS: &str = "RX_VNIS";
    /// Capture devices (devmap) of served VNIs.
    pub const RX_CAPTURE: &str = "RX_CAPTURE";
    /// Per-CPU receiver interface counters.
    pub const RX_INTERFACE_STATS: &str = "RX_INTERFACE_STATS";
    /// Per-CPU receiver counters by VNI.
    pub const RX_VNI_STATS: &str = "RX_VNI_STATS";
    /// Benchmark only (the `bench` feature): a per-CPU flow table to compare with.
    #[cfg(feature = "bench")]
    pub const BENCH_FLOWS_PERCPU: &str = "BENCH_FLOWS_PERCPU";
    /// Every map above.
    pub const ALL: &[&str] = &[
        SOURCES_DIRECT,
        SOURCES,
        SESSIONS,
        FILTERS,
        SESSION_STATS,
        SOURCE_STATS,
        RULE_STATS,
        FLOWS_0,
        FLOWS_1,
        FLOW_REJECTS_0,
        FLOW_REJECTS_1,
        FLOW_CACHE_0,
        FLOW_CACHE_1,
        FLOW_CTL,
        FLOW_CLOCK,
        FLOW_STATS,
        BUDGET_STATE,
        RX_INTERFACES,
        RX_VNIS,
        RX_CAPTURE,
        RX_INTERFACE_STATS,
        RX_VNI_STATS,
        #[cfg(feature = "bench")]
        BENCH_FLOWS_PERCPU,
    ];
}

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
pub const DIRECTIONS: usize = 2;

/// Capacity of the maps. Changing one changes the ABI: the agent and programs are built together.
pub const MAX_SOURCES: u32 = 4096;
pub const MAX_SESSIONS: u32 = 4096;
pub const MAX_FILTERS: u32 = 4096;
pub const MAX_RULE_SLOTS: u32 = 65536;
/// Default capacity of each of the two flow tables (set per agent with `flow_table_size`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// A source interface can belong to this many sessions (AWS allows 3 per ENI; we allow more).
pub const MAX_SESSIONS_PER_SOURCE: usize = 8;
/// Upper bound of the rules per direction of one filter. The configurable quota (default 10)
/// must not exceed it: the data path walks at most this many rules.
pub const MAX_RULES_PER_DIRECTION: usize = 16;
/// Ethernet + up to two VLAN tags + IPv6 + this many extension headers are parsed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Mirror copies carry this pattern in the upper 16 bits of `skb->mark` between the source
/// program and the encapsulation program, and keep it on the wire side of the VXLAN device.
/// A packet that carries it is never mirrored again (no loops when the uplink is a source).
pub const MIRROR_MARK_MAGIC: u32 = 0x4d52_0000;
pub const MIRROR_MARK_MASK: u32 = 0xffff_0000;
/// Bit 15 of the mark is the direction, bit 14 says "a copy not yet encapsulated" (set from
/// the clone until the outer headers are written; the wire copy keeps only the magic), bits
/// 0..13 the session slot.
pub const MIRROR_MARK_DIR_SHIFT: u32 = 15;
pub const MIRROR_MARK_IN_FLIGHT: u32 = 0x4000;
pub const MIRROR_MARK_SLOT_MASK: u32 = 0x3fff;

/// Bytes the copy gains on the wire beyond the inner frame: outer IPv4 (20) + UDP (8) +
/// VXLAN (8). The inner Ethernet header is part of the inner frame and counts in PacketLength.
pub const VXLAN_OVERHEAD_IPV4: u32 = 36;
/// Same with an outer IPv6 header (40).
pub const VXLAN_OVERHEAD_IPV6: u32 = 56;

/// `SourceConfig::sessions` lists session slots; this value ends the list early.
pub const NO_SESSION: u16 = u16::MAX;

/// Interfaces with an index below this are looked up in the `SOURCES_DIRECT` array (the
/// verifier inlines array lookups: a few ns), the rest in the `SOURCES` hash (a hash lookup
/// costs 20-30 ns, the largest part of the per-packet budget).
pub const SOURCES_DIRECT_MAX: u32 = 65536;

/// `SourceConfig::flags`: the entry describes an attached source. Array entries of interfaces
/// that are not sources are all zero.
pub const SOURCE_ACTIVE: u32 = 1;
/// `SourceConfig::flags`: a flow log covers this interface: the source programs count every
/// IP packet into the flow table, and the drop tracepoint counts its dropped packets.
pub const SOURCE_FLOW_LOG: u32 = 2;

/// Value of the `SOURCES_DIRECT` array (index = interface index, below
/// `SOURCES_DIRECT_MAX`) and of the `SOURCES` hash (key = larger interface indexes).
///
/// Written by the agent when a source is attached or its sessions change; read by the source
/// programs (`mirror_ingress`, `mirror_egress`) for every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// Session slots of this source in ascending session Priority. Unused entries are
    /// `NO_SESSION`; the agent keeps the used ones first.
    pub sessions: [u16; MAX_SESSIONS_PER_SOURCE],
    /// Index into `SOURCE_STATS` (times `DIRECTIONS`), stable while the source exists.
    pub stats_slot: u32,
    /// `SOURCE_ACTIVE`, `SOURCE_FLOW_LOG`.
    pub flags: u32,
}

impl SourceConfig {
    /// The value of an interface that is not a source.
    pub const INACTIVE: SourceConfig = SourceConfig {
        sessions: [NO_SESSION; MAX_SESSIONS_PER_SOURCE],
        stats_slot: 0,
        flags: 0,
    };
}

/// `SessionConfig::flags` bits.
pub const SESSION_ENABLED: u32 = 1;
/// The target is an IPv6 VTEP (`remote_ipv6`), otherwise IPv4 (`remote_ipv4`).
pub const SESSION_REMOTE_IPV6: u32 = 2;
/// `SampleMode` flow: the sampling decision comes from a hash of the flow's addresses and
/// ports (the same for both directions), so a flow is mirrored whole or not at all.
/// Otherwise each packet is drawn at random.
pub const SESSION_SAMPLE_FLOW: u32 = 4;

/// Depth of a session's budget buckets: one tenth of a second of its budget.
pub const BUDGET_BURST_NS: u64 = 100_000_000;
/// Fractional bits of the budget costs (`SessionConfig::packet_cost`, `bit_cost`): a cost is
/// nanoseconds of budget times 2^16, so a rate is kept to better than 0.01 % up to 100 Gbit/s
/// and 10 M packets/s.
pub const BUDGET_COST_SHIFT: u32 = 16;

/// Outer headers the fast path (`mirror_tx`) writes in front of a copy: Ethernet (14) +
/// IPv4 (20) + UDP (8) + VXLAN (8).
pub const FAST_PATH_HEADROOM: u32 = 50;

/// Value of the `SESSIONS` array, indexed by session slot.
///
/// Written by the agent; read by the source programs (filter, enabled, where the copy goes),
/// the segmentation program (where segments go) and the encapsulation programs (VNI, target,
/// snap length, outer headers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub flags: u32,
    /// VXLAN network identifier, 0..=16777215.
    pub vni: u32,
    /// Bytes of the original frame kept in the copy: min(PacketLength, path MTU - overhead).
    pub snaplen: u32,
    /// Slot of the filter in `FILTERS`.
    pub filter_slot: u32,
    /// Interface index of the VXLAN device (external mode) for the target's UDP port: the
    /// fallback path, used while `uplink_ifindex` is 0.
    pub tunnel_ifindex: u32,
    /// Target VTEP in host byte order, as `bpf_tunnel_key.remote_ipv4` expects.
    pub remote_ipv4: u32,
    /// Target VTEP, network byte order words, as `bpf_tunnel_key.remote_ipv6` expects.
    pub remote_ipv6: [u32; 4],
    pub ttl: u8,
    pub tos: u8,
    /// Outer UDP destination port, network byte order (fast path).
    pub port_be: u16,
    /// Fast path: the interface the route to the target leaves by, where `mirror_tx` builds
    /// the outer headers from the fields below. 0: the next hop is not resolved (or the
    /// target is IPv6), copies go through the tunnel device.
    pub uplink_ifindex: u32,
    /// The segmentation device (`mirseg`): copies of GSO super-packets and of packets whose
    /// transport checksum is left to offload go there first, so the kernel cuts them into
    /// wire segments with their checksums filled. 0: no such device.
    pub segment_ifindex: u32,
    /// Outer Ethernet destination and source addresses, as on the wire (fast path).
    pub eth_addrs: [u8; 12],
    /// Outer IPv4 source and destination, network byte order words (fast path).
    pub outer_src: u32,
    pub outer_dst: u32,
    /// `MaxPacketsPerSecond` as the nanoseconds of budget one wire packet uses, times
    /// 2^`BUDGET_COST_SHIFT` (10^9 * 2^16 / rate). 0: no packet budget.
    pub packet_cost: u64,
    /// `MaxBitsPerSecond` likewise, per bit of a copy on the wire. 0: no bit budget.
    pub bit_cost: u64,
    /// `SampleOneIn`: one in this many matching packets is mirrored. 0 and 1: all.
    pub sample_one_in: u32,
    /// Bytes a copy carries on the wire beyond its inner frame (outer Ethernet, IP, UDP,
    /// VXLAN), counted by the bit budget.
    pub copy_overhead: u32,
}

/// Value of the `BUDGET_STATE` array, indexed by session slot: the budget buckets, shared by
/// all CPUs and both directions, in the "virtual scheduling" form of a token bucket (GCRA,
/// ITU-T I.371): each word is the time at which the bucket will be full again, in
/// nanoseconds of `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE). A copy is admitted
/// while that time stays within `BUDGET_BURST_NS` of now; admitting it moves the time on by
/// the copy's cost (compare-and-swap, so CPUs never admit the same budget twice).
/// Written by the source programs; zeroed by the agent when a slot gets a new session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    pub packets_full_at: u64,
    pub bits_full_at: u64,
}

/// `Rule::action` values.
pub const ACTION_ACCEPT: u8 = 1;
pub const ACTION_REJECT: u8 = 2;

/// `Rule::flags` bits.
/// Protocol "ALL": `protocol` is ignored.
pub const RULE_ANY_PROTOCOL: u8 = 1;
/// Port ranges apply (TCP or UDP rules whose ranges are not -1/-1).
pub const RULE_MATCH_PORTS: u8 = 2;

/// `Rule::ip_version` of the slots after a direction's last rule. The programs stop at it
/// rather than at `FilterConfig::n_rules`: a bound carried from one iteration to the next
/// keeps the verifier from pruning, and it walked the rule loop of every session ~75 times
/// (580 k instructions verified for each source program, 1 s of every agent start).
pub const RULE_END: u8 = 0;

/// One filter rule in the data path's form. The agent sorts rules by ascending Priority.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: u8,
    pub protocol: u8,
    /// 4 or 6; `RULE_END` (what `Rule::EMPTY` holds) ends a direction's list.
    pub ip_version: u8,
    pub flags: u8,
    /// Inclusive port ranges, host byte order.
    pub src_port_min: u16,
    pub src_port_max: u16,
    pub dst_port_min: u16,
    pub dst_port_max: u16,
    /// Index into `RULE_STATS`, stable for the life of the rule whatever its position.
    pub stats_slot: u32,
    /// CIDR blocks as address words and mask words, network byte order. IPv4 uses word 0.
    pub src_addr: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_addr: [u32; 4],
    pub dst_mask: [u32; 4],
}

impl Rule {
    pub const EMPTY: Rule = Rule {
        action: 0,
        protocol: 0,
        ip_version: RULE_END,
        flags: 0,
        src_port_min: 0,
        src_port_max: 0,
        dst_port_min: 0,
        dst_port_max: 0,
        stats_slot: 0,
        src_addr: [0; 4],
        src_mask: [0; 4],
        dst_addr: [0; 4],
        dst_mask: [0; 4],
    };
}

/// Bits of a `PortSet`: a port stands for bit `port % PORT_SET_BITS`.
pub const PORT_SET_BITS: u32 = 1024;
const PORT_SET_WORDS: usize = (PORT_SET_BITS / 64) as usize;

/// The ports some rule of a list can match, folded to `PORT_SET_BITS` bits: a packet whose
/// port has its bit clear matches none of the rules, so the programs skip the walk (5-10 ns
/// per rule, measured). A superset: ports a multiple of `PORT_SET_BITS` apart share a
/// bit, and such a packet walks the rules as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub words: [u64; PORT_SET_WORDS],
}

impl PortSet {
    pub const EMPTY: PortSet = PortSet {
        words: [0; PORT_SET_WORDS],
    };
    pub const ALL: PortSet = PortSet {
        words: [u64::MAX; PORT_SET_WORDS],
    };

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        let bit = port as u32 & (PORT_SET_BITS - 1);
        (self.words[(bit >> 6) as usize] >> (bit & 63)) & 1 != 0
    }

    /// Adds the inclusive range `min..=max` (nothing if `min > max`).
    pub fn insert_range(&mut self, min: u16, max: u16) {
        if min > max {
            return;
        }
        if (max - min) as u32 + 1 >= PORT_SET_BITS {
            *self = PortSet::ALL;
            return;
        }
        for port in min..=max {
            let bit = port as u32 & (PORT_SET_BITS - 1);
            self.words[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
    }
}

/// The ports of one direction's rules, both sides: what the walk's prefilter tests.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulePorts {
    pub src: PortSet,
    pub dst: PortSet,
}

impl RulePorts {
    /// No rule: nothing can match.
    pub const EMPTY: RulePorts = RulePorts {
        src: PortSet::EMPTY,
        dst: PortSet::EMPTY,
    };

    /// Adds a rule's ports; a rule that does not match on ports matches every port.
    pub fn insert(&mut self, rule: &Rule) {
        if rule.flags & RULE_MATCH_PORTS == 0 {
            self.src = PortSet::ALL;
            self.dst = PortSet::ALL;
        } else {
            self.src.insert_range(rule.src_port_min, rule.src_port_max);
            self.dst.insert_range(rule.dst_port_min, rule.dst_port_max);
        }
    }

    /// False only if no rule of the list can match a packet with these ports.
    #[inline(always)]
    pub fn may_match(&self, src_port: u16, dst_port: u16) -> bool {
        self.src.contains(src_port) && self.dst.contains(dst_port)
    }
}

/// Value of the `FILTERS` array, indexed by filter slot: the rules of both directions.
///
/// Written by the agent; read by the source programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// Number of valid rules per direction (`DIR_INGRESS`, `DIR_EGRESS`); the slots after them
    /// are `Rule::EMPTY` (the programs stop at `RULE_END`).
    pub n_rules: [u32; DIRECTIONS],
    /// Per direction, the ports its rules can match (`FilterConfig::push` keeps it in step
    /// with `rules`): the programs test a packet's ports here before walking the rules.
    pub ports: [RulePorts; DIRECTIONS],
    pub rules: [[Rule; MAX_RULES_PER_DIRECTION]; DIRECTIONS],
}

impl FilterConfig {
    pub const EMPTY: FilterConfig = FilterConfig {
        n_rules: [0; DIRECTIONS],
        ports: [RulePorts::EMPTY; DIRECTIONS],
        rules: [[Rule::EMPTY; MAX_RULES_PER_DIRECTION]; DIRECTIONS],
    };

    /// Appends a rule to a direction's list (sorted by the caller); false when the list is
    /// full. The rule's ports join the direction's `ports`.
    pub fn push(&mut self, direction: usize, rule: Rule) -> bool {
        let n = self.n_rules[direction] as usize;
        if n >= MAX_RULES_PER_DIRECTION {
            return false;
        }
        self.rules[direction][n] = rule;
        self.ports[direction].insert(&rule);
        self.n_rules[direction] = n as u32 + 1;
        true
    }
}

/// Reasons a mirror copy was not sent; indexes of `SessionStats::errors`.
pub const ERR_CLONE: usize = 0;
pub const ERR_NO_SESSION: usize = 1;
pub const ERR_TRUNCATE: usize = 2;
pub const ERR_TUNNEL_KEY: usize = 3;
/// The fast path could not make room for the outer headers, or a segment could not be sent on.
pub const ERR_ENCAP: usize = 4;
pub const ERR_REASONS: usize = 5;
/// Names used in logs and metrics, same order as the `ERR_*` indexes.
pub const ERR_REASON_NAMES: [&str; ERR_REASONS] = [
    "clone_redirect",
    "session_gone",
    "truncate",
    "tunnel_key",
    "encap",
];

/// `total += per_cpu_value` for a counter struct. The fields are named in a destructuring
/// `let`, so a counter added to the struct but not here is a compile error, not a sum that
/// silently leaves it out.
macro_rules! sum_counters {
    ($ty:ident { $($field:ident),* $(,)? } $(, arrays { $($array:ident),* $(,)? })?) => {
        impl core::ops::AddAssign for $ty {
            fn add_assign(&mut self, other: Self) {
                let $ty { $($field,)* $($($array,)*)? } = other;
                $(self.$field += $field;)*
                $($(
                    for (total, value) in self.$array.iter_mut().zip($array) {
                        *total += value;
                    }
                )*)?
            }
        }
    };
}

/// Per-CPU value of `SESSION_STATS`, indexed by `slot * DIRECTIONS + direction`.
///
/// `packets`/`bytes` are written by the source programs when a copy is handed on;
/// `segmented` by the segmentation program; `copies`, `truncated` and errors past the clone
/// by the encapsulation programs (`mirror_tx`, `mirror_encap`), once per copy they send.
/// Read (and summed over CPUs) by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Wire packets mirrored: a GSO super-packet counts its `gso_segs`.
    pub packets: u64,
    /// Bytes of the original packets mirrored (before truncation), as the wire carries them.
    pub bytes: u64,
    /// Copies sent toward the target: one per wire packet (super-packets are segmented).
    pub copies: u64,
    /// Copies cut to the session's snap length.
    pub truncated: u64,
    /// Copies that went through the segmentation device: segments of GSO super-packets and
    /// packets whose checksum the kernel had to fill.
    pub segmented: u64,
    pub errors: [u64; ERR_REASONS],
    /// Wire packets that matched but were not mirrored, by `SKIP_*` reason. Decided before
    /// the clone: a skipped packet costs no copy.
    pub skipped: [u64; SKIP_REASONS],
}

sum_counters!(
    SessionStats {
        packets,
        bytes,
        copies,
        truncated,
        segmented
    },
    arrays { errors, skipped }
);

/// Reasons a matching packet was not copied; indexes of `SessionStats::skipped`.
pub const SKIP_BUDGET_PACKETS: usize = 0;
pub const SKIP_BUDGET_BITS: usize = 1;
pub const SKIP_SAMPLED_OUT: usize = 2;
pub const SKIP_REASONS: usize = 3;
/// Names used in List output and metrics, same order as the `SKIP_*` indexes.
pub const SKIP_REASON_NAMES: [&str; SKIP_REASONS] =
    ["budget_packets", "budget_bits", "sampled_out"];

/// Per-CPU value of `SOURCE_STATS`, indexed by `stats_slot * DIRECTIONS + direction`.
/// Written by the source programs, read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Wire packets seen on the source (every packet, mirrored or not).
    pub packets: u64,
    pub bytes: u64,
    /// Wire packets mirrored by one of the source's sessions.
    pub mirrored: u64,
    /// Frames that are not IPv4/IPv6 (ARP, LLDP, ...): never candidates.
    pub not_ip: u64,
    /// IP packets whose headers are short or inconsistent: passed, not matched.
    pub malformed: u64,
    /// Mirror copies seen on this interface (it is the uplink to a target): skipped.
    pub mirror_traffic: u64,
}

sum_counters!(SourceStats {
    packets,
    bytes,
    mirrored,
    not_ip,
    malformed,
    mirror_traffic
});

/// `FlowKey::action` values.
pub const FLOW_ACCEPT: u8 = 0;
pub const FLOW_REJECT: u8 = 1;

/// Key of the flow tables `FLOWS_0` / `FLOWS_1`: one flow per interface, direction and
/// action. Addresses are network-order words as in the packet; ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    /// `DIR_INGRESS` / `DIR_EGRESS`.
    pub direction: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub protocol: u8,
    /// `FLOW_ACCEPT` (seen by the source programs) or `FLOW_REJECT` (dropped, seen by the
    /// `skb:kfree_skb` tracepoint).
    pub action: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// All fields zero: an empty cache slot's key (no flow has interface index 0).
    pub const ZERO: FlowKey = FlowKey {
        ifindex: 0,
        direction: 0,
        ip_version: 0,
        protocol: 0,
        action: 0,
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
    };
}

/// Value of the flow tables and cache slots. Table counters are added atomically (a flow's
/// packets arrive on several CPUs); the agent reads an idle table only (see `FLOW_CTL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Wire packets (GSO super-packets count their segments).
    pub packets: u64,
    /// IP bytes on the wire (IP header and payload, as the IP total length counts them).
    pub bytes: u64,
    /// CLOCK_MONOTONIC of the first and last packet: `bpf_ktime_get_coarse_ns` (the clock as
    /// of the last tick, a plain read) in the source programs, `bpf_ktime_get_ns` in the drop
    /// tracepoint (tracing programs may not use the coarse one).
    pub first_ns: u64,
    pub last_ns: u64,
    /// OR of the TCP flags seen (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32).
    pub tcp_flags: u32,
    /// The kernel's `enum skb_drop_reason` of the last drop (REJECT flows).
    pub drop_reason: u32,
}

/// Slots of each CPU's flow cache (`FLOW_CACHE_0` / `FLOW_CACHE_1`), a power of two. A slot
/// is 88 bytes: 1024 slots are 88 KiB per CPU and buffer, small enough to stay in the CPU's
/// cache, large enough that a few hundred busy flows per CPU rarely collide.
pub const FLOW_CACHE_SLOTS: u32 = 1024;
/// log2 of `FLOW_CACHE_SLOTS` (the slot is the top bits of a multiplicative hash).
pub const FLOW_CACHE_BITS: u32 = 10;
const _: () = assert!(1 << FLOW_CACHE_BITS == FLOW_CACHE_SLOTS);

/// One slot of a CPU's flow cache: the flow this CPU counted last at this slot and what it
/// counted since the flow last left the cache. Only that CPU's source programs write it
/// (without atomics); a flow that needs the slot moves the old one into the shared table
/// with atomic adds. The agent reads and clears the idle buffer's slots with the idle table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCacheSlot {
    pub key: FlowKey,
    /// 0: empty; else the source's `FLOW_STATS` index + 1 (where a flow that cannot move
    /// into a full table is counted as SKIPDATA).
    pub stats: u32,
    pub value: FlowValue,
}

impl FlowCacheSlot {
    pub const EMPTY: FlowCacheSlot = FlowCacheSlot {
        key: FlowKey::ZERO,
        stats: 0,
        value: FlowValue::ZERO,
    };
}

impl FlowValue {
    /// Nothing counted (`Default`, usable in constants).
    pub const ZERO: FlowValue = FlowValue {
        packets: 0,
        bytes: 0,
        first_ns: 0,
        last_ns: 0,
        tcp_flags: 0,
        drop_reason: 0,
    };

    /// One packet (or GSO super-packet) seen at `now`: the value a new flow starts with.
    #[inline(always)]
    pub const fn first(
        packets: u64,
        bytes: u64,
        now: u64,
        tcp_flags: u32,
        drop_reason: u32,
    ) -> FlowValue {
        FlowValue {
            packets,
            bytes,
            first_ns: now,
            last_ns: now,
            tcp_flags,
            drop_reason,
        }
    }
}

/// Index 0 of the `FLOW_CTL` array: which of `FLOWS_0`/`FLOWS_1` the programs write. The
/// agent flips it, waits for programs that read the old value to finish, then drains and
/// empties the idle table, so no update is lost or counted twice.
pub const FLOW_CTL_ACTIVE: u32 = 0;

/// Per-CPU value of `FLOW_STATS`, indexed by `stats slot * DIRECTIONS + direction` of the
/// source (like `SOURCE_STATS`): what the flow table could not hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets not accounted because the active flow table was full (SKIPDATA).
    pub skipped_packets: u64,
    /// Flows that could not be created.
    pub skipped_flows: u64,
}

sum_counters!(FlowStats {
    skipped_packets,
    skipped_flows
});

/// Offsets into `struct sk_buff` and `struct net_device` for the drop tracepoint, read by
/// the agent from the kernel's BTF (the programs cannot use CO-RE here) and set as the
/// programs' global `SKB_LAYOUT` before they load. `valid` = 0 turns drop accounting off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbLayout {
    pub valid: u32,
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
    pub dev: u32,
    pub skb_iif: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (a `possible_net_t`, whose only member is `struct net *net`).
    pub dev_nd_net: u32,
    /// `net.ns.inum`: the network namespace's inode number.
    pub net_inum: u32,
    /// The agent's network namespace (inode of /proc/self/ns/net): the tracepoint fires for
    /// drops in every namespace, and interface indexes repeat across namespaces.
    pub netns_inum: u32,
    /// Byte of `sk_buff` holding the `ip_summed` bitfield, and the field's shift in it: the
    /// source programs read it to learn whether a packet's transport checksum is left to
    /// offload (`CHECKSUM_PARTIAL`). `ip_summed_valid` = 0: unknown, assumed filled.
    pub ip_summed_valid: u32,
    pub ip_summed_byte: u32,
    pub ip_summed_shift: u32,
}

/// The programs' global (read-only data, not a map) holding the kernel's `SkbLayout`.
pub const SKB_LAYOUT_GLOBAL: &str = "SKB_LAYOUT";

impl SkbLayout {
    /// No layout: drop accounting off, checksums assumed filled.
    pub const UNKNOWN: SkbLayout = SkbLayout {
        valid: 0,
        head: 0,
        network_header: 0,
        transport_header: 0,
        dev: 0,
        skb_iif: 0,
        dev_ifindex: 0,
        dev_nd_net: 0,
        net_inum: 0,
        netns_inum: 0,
        ip_summed_valid: 0,
        ip_summed_byte: 0,
        ip_summed_shift: 0,
    };
}

/// `ip_summed` value of a packet whose transport checksum is left to the device.
pub const CHECKSUM_PARTIAL: u8 = 3;

/// Receiving side (XDP): interfaces that terminate mirror traffic, and VNIs served on them.
pub const MAX_RX_INTERFACES: u32 = 64;
pub const MAX_RX_VNIS: u32 = 4096;

/// Value of the `RX_INTERFACES` hash (key = interface index): the receiving interfaces.
///
/// Written by the agent when a receiver is attached; read by `mirror_receive` for every
/// frame of that interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxInterface {
    /// UDP destination port of the mirror traffic, network byte order (as in the packet).
    pub port_be: u16,
    pub _pad: u16,
    /// Index into `RX_INTERFACE_STATS`.
    pub stats_slot: u32,
}

/// Key of the `RX_VNIS` hash: a VNI served on a receiving interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RxVniKey {
    pub ifindex: u32,
    pub vni: u32,
}

/// Value of the `RX_VNIS` hash. Written by the agent; read by `mirror_receive`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxVni {
    /// Index into `RX_CAPTURE` (the devmap entry of the capture interface) and into
    /// `RX_VNI_STATS`.
    pub slot: u32,
}

/// Per-CPU value of `RX_INTERFACE_STATS`, indexed by `RxInterface::stats_slot`: what the
/// receiving program saw on the interface before a served VNI was known.
/// Written by `mirror_receive`, read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxInterfaceStats {
    /// Every frame the program ran on.
    pub packets: u64,
    /// Frames that are not UDP to the receiver's port (passed to the stack untouched).
    pub not_mirror: u64,
    /// UDP to the port, but no room for a VXLAN header or its I flag clear (passed).
    pub malformed: u64,
    /// VXLAN for a VNI this interface does not serve (passed: a kernel VXLAN device or
    /// another program may want it).
    pub unknown_vni: u64,
}

sum_counters!(RxInterfaceStats {
    packets,
    not_mirror,
    malformed,
    unknown_vni
});

/// Per-CPU value of `RX_VNI_STATS`, indexed by `RxVni::slot`.
/// Written by `mirror_receive`, read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxVniStats {
    /// Inner frames handed to the capture interface.
    pub frames: u64,
    /// Bytes of those inner frames (outer headers not counted).
    pub bytes: u64,
    /// VXLAN of this VNI whose lengths are inconsistent or whose inner frame is shorter
    /// than an Ethernet header (passed untouched).
    pub malformed: u64,
    /// The VNI is served but its capture interface is missing from `RX_CAPTURE` (passed).
    pub no_capture: u64,
    /// The outer headers could not be removed (passed if nothing was changed yet, dropped
    /// otherwise). Transmit failures after the program returned are the kernel's to count.
    pub redirect_errors: u64,
}

sum_counters!(RxVniStats {
    frames,
    bytes,
    malformed,
    no_capture,
    redirect_errors
});

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made of integers, with explicit padding fields,
    // so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for SourceConfig {}
    unsafe impl aya::Pod for SessionConfig {}
    unsafe impl aya::Pod for BudgetState {}
    unsafe impl aya::Pod for FilterConfig {}
    unsafe impl aya::Pod for SessionStats {}
    unsafe impl aya::Pod for SourceStats {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for FlowCacheSlot {}
    unsafe impl aya::Pod for SkbLayout {}
    unsafe impl aya::Pod for RxInterface {}
    unsafe impl aya::Pod for RxVniKey {}
    unsafe impl aya::Pod for RxVni {}
    unsafe impl aya::Pod for RxInterfaceStats {}
    unsafe impl aya::Pod for RxVniStats {}

    impl SkbLayout {
        /// The value's bytes, as the programs' read-only data holds them.
        pub fn as_bytes(&self) -> &[u8] {
            // SAFETY: repr(C) u32 fields without padding (size checked below): every byte is
            // initialised.
            unsafe {
                core::slice::from_raw_parts(
                    (self as *const SkbLayout).cast::<u8>(),
                    core::mem::size_of::<SkbLayout>(),
                )
            }
        }
    }
}

// No implicit padding: each size is the sum of the fields' sizes.
const _: () = assert!(core::mem::size_of::<SourceConfig>() == 2 * MAX_SESSIONS_PER_SOURCE + 8);
const _: () =
    assert!(core::mem::size_of::<SessionConfig>() == 6 * 4 + 16 + 4 + 8 + 12 + 8 + 16 + 8);
const _: () = assert!(core::mem::size_of::<BudgetState>() == 16);
const _: () = assert!(core::mem::size_of::<Rule>() == 4 + 8 + 4 + 64);
const _: () = assert!(
    core::mem::size_of::<FilterConfig>()
        == 4 * DIRECTIONS
            + DIRECTIONS * core::mem::size_of::<RulePorts>()
            + DIRECTIONS * MAX_RULES_PER_DIRECTION * core::mem::size_of::<Rule>()
);
const _: () = assert!(core::mem::size_of::<RulePorts>() == 2 * PORT_SET_BITS as usize / 8);
const _: () = assert!(core::mem::size_of::<SessionStats>() == 8 * (5 + ERR_REASONS + SKIP_REASONS));
const _: () = assert!(core::mem::size_of::<SourceStats>() == 8 * 6);
const _: () = assert!((MAX_SESSIONS - 1) <= MIRROR_MARK_SLOT_MASK);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 4 + 4 + 32 + 4);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 4);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8 * 4 + 8);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 16);
const _: () = assert!(core::mem::size_of::<FlowCacheSlot>() == 44 + 4 + 40);
const _: () = assert!(core::mem::size_of::<SkbLayout>() == 52);
const _: () = assert!(core::mem::size_of::<RxInterface>() == 8);
const _: () = assert!(core::mem::size_of::<RxVniKey>() == 8);
const _: () = assert!(core::mem::size_of::<RxVni>() == 4);
const _: () = assert!(core::mem::size_of::<RxInterfaceStats>() == 8 * 4);
const _: () = assert!(core::mem::size_of::<RxVniStats>() == 8 * 5);

/// The mark a mirror copy carries from the source program to the encapsulation program.
#[inline(always)]
pub const fn mirror_mark(slot: u32, direction: u32) -> u32 {
    MIRROR_MARK_MAGIC
        | MIRROR_MARK_IN_FLIGHT
        | (direction << MIRROR_MARK_DIR_SHIFT)
        | (slot & MIRROR_MARK_SLOT_MASK)
}

#[inline(always)]
pub const fn is_mirror_mark(mark: u32) -> bool {
    mark & MIRROR_MARK_MASK == MIRROR_MARK_MAGIC
}
