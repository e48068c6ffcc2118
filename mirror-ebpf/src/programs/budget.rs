//! A session's sampling and budgets: whether a matching packet is copied at all. Decided
//! before the clone, so a skipped copy costs a hash or a clock read and a compare-and-swap,
//! never a copy.
//!
//! The budgets are token buckets in their "virtual scheduling" form (GCRA): one word per
//! bucket holds the time at which the bucket is full again. That fits one atomic
//! compare-and-swap, so the bucket is shared by all CPUs and a budget holds exactly whatever
//! CPUs the packets arrive on (a per-CPU bucket would give each CPU the whole budget).

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::Array,
};
use mirror_ebpf::{
    BUDGET_BURST_NS, BUDGET_COST_SHIFT, BudgetState, MAX_SESSIONS, SESSION_SAMPLE_FLOW,
    SKIP_BUDGET_BITS, SKIP_BUDGET_PACKETS, SKIP_SAMPLED_OUT, SessionConfig,
};

use super::parse::Packet;

#[map]
static BUDGET_STATE: Array<BudgetState> = Array::with_max_entries(MAX_SESSIONS, 0);

/// Attempts at a compare-and-swap before the copy is given up as over budget: another CPU
/// winning every attempt means the bucket is being drained as fast as CPUs can run.
const CAS_ATTEMPTS: usize = 4;

/// Ok: copy it. Err: the `SKIP_*` reason it is not copied.
///
/// `copy_bytes` is what the copies of this packet carry on the wire, outer headers
/// included (only computed when a bit budget is set).
#[inline(always)]
pub(crate) fn admit(
    slot: u32,
    session: &SessionConfig,
    pkt: &Packet,
    segs: u32,
    copy_bytes: impl FnOnce() -> u64,
) -> Result<(), usize> {
    if session.sample_one_in > 1 {
        let draw = if session.flags & SESSION_SAMPLE_FLOW != 0 {
            flow_hash(pkt)
        } else {
            // SAFETY: no preconditions.
            unsafe { bpf_get_prandom_u32() }
        };
        // draw * N / 2^32 is 0 for one in N of the 2^32 draws (no division in the data path).
        if (u64::from(draw) * u64::from(session.sample_one_in)) >> 32 != 0 {
            return Err(SKIP_SAMPLED_OUT);
        }
    }
    if session.packet_cost == 0 && session.bit_cost == 0 {
        return Ok(());
    }
    let Some(state) = BUDGET_STATE.get_ptr_mut(slot) else {
        return Ok(());
    };
    // The coarse clock (a tick of a few ms) is a load where the precise one reads the
    // clock source; a tick is far inside the burst, so the rate is kept all the same.
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let packets_cost = (u64::from(segs) * session.packet_cost) >> BUDGET_COST_SHIFT;
    // SAFETY: a shared map value, written by other CPUs only through atomics.
    let packets_at = unsafe { &raw mut (*state).packets_full_at };
    if session.packet_cost != 0 && !take(packets_at, now, packets_cost) {
        return Err(SKIP_BUDGET_PACKETS);
    }
    if session.bit_cost != 0 {
        let bits_cost = (copy_bytes() * 8 * session.bit_cost) >> BUDGET_COST_SHIFT;
        // SAFETY: as above.
        let bits_at = unsafe { &raw mut (*state).bits_full_at };
        if !take(bits_at, now, bits_cost) {
            if session.packet_cost != 0 {
                // Give the packet budget back: this packet is not copied after all.
                // SAFETY: as above; adding the two's complement subtracts.
                unsafe {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                        packets_at,
                        packets_cost.wrapping_neg(),
                    )
                };
            }
            return Err(SKIP_BUDGET_BITS);
        }
    }
    Ok(())
}

/// Takes `cost` ns of budget from the bucket whose full-again time is at `at`.
#[inline(always)]
fn take(at: *mut u64, now: u64, cost: u64) -> bool {
    // One copy larger than the whole burst still goes when the bucket is full.
    let burst = if cost > BUDGET_BURST_NS {
        cost
    } else {
        BUDGET_BURST_NS
    };
    // SAFETY: `at` points into a map value; a torn read is impossible for an aligned u64.
    let mut seen = unsafe { core::ptr::read_volatile(at) };
    for _ in 0..CAS_ATTEMPTS {
        // An idle bucket is full: it cannot hold more than the burst.
        let from = if seen > now { seen } else { now };
        let next = from + cost;
        if next > now + burst {
            return false;
        }
        // SAFETY: aligned u64 in a map value; BPF_CMPXCHG.
        let (old, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                at, seen, next,
            )
        };
        if swapped {
            return true;
        }
        seen = old;
    }
    false
}

/// A hash of the flow that is the same for both of its directions (sums of the addresses
/// and of the ports), mixed so that its top bits are uniform (murmur3's finaliser).
#[inline(always)]
fn flow_hash(pkt: &Packet) -> u32 {
    let mut h = u32::from(pkt.protocol);
    for i in 0..4 {
        h = h.wrapping_add(
            pkt.src[i]
                .wrapping_add(pkt.dst[i])
                .rotate_left(i as u32 * 8),
        );
    }
    h = h.wrapping_add((u32::from(pkt.src_port) + u32::from(pkt.dst_port)) << 7);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}
