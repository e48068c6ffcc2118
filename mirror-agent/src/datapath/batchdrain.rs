//! Reading and deleting a whole idle flow table with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, its
//! buckets split among threads.
//!
//! The kernel's walk is the drain's cost (1 M flows: a few hundred ms of one CPU, memory-bound:
//! the buckets and their scattered elements). A hash map's batch token is a bucket index, so
//! walks that start at different buckets cover disjoint parts of the table and can run at the
//! same time on different CPUs; each element is deleted under its bucket's lock, so it comes
//! out exactly once whichever walk reaches it. The threads only make the syscalls; their
//! batches come back to the caller's thread, which hands every flow to its callback (so the
//! callback needs no locking and sees flows in batches, as before).

use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::mpsc,
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use mirror_ebpf::{FlowKey, FlowValue};

/// Entries per BPF_MAP_LOOKUP_AND_DELETE_BATCH call: large enough to amortise the syscall,
/// small enough that the buffers stay at a few hundred KiB.
const BATCH: usize = 4096;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// At most this many walks at once: the walk is bound by memory, and a big node gains
/// nothing from more while its data path would lose CPUs to them.
pub const MAX_WALKS: usize = 4;

/// `union bpf_attr` for the batch commands (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One batch's buffers, sent to the caller's thread full and back empty.
struct Batch {
    keys: Vec<FlowKey>,
    values: Vec<FlowValue>,
    len: usize,
    back: mpsc::Sender<Batch>,
}

/// How many walks a drain uses: the CPUs this process may run on, at most `MAX_WALKS`.
pub fn walks() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WALKS)
}

/// Reads and deletes the whole (idle) table in `walks` concurrent walks over its buckets,
/// calling `f` for each entry on this thread. An error before any entry came out (a kernel
/// without batch operations) is returned as is, so the caller can fall back; entries already
/// handed to `f` are gone from the table, so a fallback that reads what is left counts each
/// once.
pub fn lookup_and_delete_all(
    table: &HashMap<MapData, FlowKey, FlowValue>,
    walks: usize,
    f: &mut impl FnMut(&FlowKey, &FlowValue),
) -> std::io::Result<()> {
    let fd = table.map().fd().as_fd().as_raw_fd();
    let walks = walks.clamp(1, MAX_WALKS) as u32;
    // The kernel rounds a hash map's buckets up to a power of two. Were it otherwise, the
    // split would only be uneven: the last walk runs to the table's end.
    let buckets = table
        .map()
        .info()
        .map(|i| i.max_entries().max(1).next_power_of_two())
        .unwrap_or(1);
    let share = buckets.div_ceil(walks).max(1);
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(2 * walks as usize);
        let handles: Vec<_> = (0..walks)
            .map(|i| {
                let start = i.saturating_mul(share);
                let end = if i + 1 == walks {
                    u32::MAX
                } else {
                    start.saturating_add(share)
                };
                let full = full_tx.clone();
                s.spawn(move || walk(fd, start, end, &full))
            })
            .collect();
        drop(full_tx);
        for batch in full_rx {
            for i in 0..batch.len {
                f(&batch.keys[i], &batch.values[i]);
            }
            // The walk may have finished: then its buffers simply go.
            let back = batch.back.clone();
            let _ = back.send(batch);
        }
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("drain walk panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// One walk: buckets `start` up to the batch that passes `end` (or the table's end), each
/// batch sent to `full`. Two sets of buffers, reused as they come back.
fn walk(fd: RawFd, start: u32, end: u32, full: &mpsc::SyncSender<Batch>) -> std::io::Result<()> {
    // Two sets of buffers, made now: once both are gone (the caller stopped), `recv` fails
    // instead of waiting for a buffer that cannot come back.
    let (back_tx, back_rx) = mpsc::channel::<Batch>();
    for _ in 0..2 {
        let _ = back_tx.send(Batch {
            keys: vec![FlowKey::ZERO; BATCH],
            values: vec![FlowValue::default(); BATCH],
            len: 0,
            back: back_tx.clone(),
        });
    }
    drop(back_tx);
    let mut token_in = start;
    let mut token_out: u32 = 0;
    loop {
        let mut batch = back_rx
            .recv()
            .map_err(|_| std::io::Error::other("drain consumer went away"))?;
        let mut attr = BatchAttr {
            // Bucket 0 is also where a walk without a token starts.
            in_batch: &raw const token_in as u64,
            out_batch: &raw mut token_out as u64,
            keys: batch.keys.as_mut_ptr() as u64,
            values: batch.values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with an attr that points at buffers of `count` keys and values and
        // at the two tokens, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        batch.len = (attr.count as usize).min(BATCH);
        if batch.len > 0 && full.send(batch).is_err() {
            return Err(std::io::Error::other("drain consumer went away"));
        }
        match err {
            None => {}
            // ENOENT: the table is done from `start` on (the last entries came with it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        // The token is the next bucket to read.
        if token_out >= end {
            return Ok(());
        }
        token_in = token_out;
    }
}
