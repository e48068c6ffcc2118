//! Where the data path lives in bpffs so that it outlives the agent (SPEC section 8: a
//! restarted or upgraded agent adopts it without a gap), and the agent's own record of what it
//! pinned, kept in the state directory because bpffs holds only kernel objects.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/mirror-agent`):
//!
//! ```text
//! maps-<layout>/<MAP>          maps; <layout> fingerprints every pinned map's type, key and
//!                              value size, entries and flags, so a new layout gets new maps
//! progs-<object>-<layout>/<p>  programs; <object> fingerprints the eBPF object and the
//!                              values set in its read-only data at load (`SKB_LAYOUT`), so
//!                              the same build is adopted as is and a new one is loaded beside it
//! links/tc-<ifname>-<dir>      TCX links of sources; links/encap-<port> of tunnel devices;
//! links/flow_drop              the kfree_skb BTF tracepoint's link
//! ```
//!
//! A link stays attached while its pin exists, whatever happens to the process that made it.

use mirror_ebpf::map_names;
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The maps shared by the programs and the agent. They are pinned so that counters, flow
/// tables and the configuration in them survive the agent.
pub const PINNED_MAPS: &[&str] = &[
    map_names::SOURCES_DIRECT,
    map_names::SOURCES,
    map_names::SESSIONS,
    map_names::FILTERS,
    map_names::SESSION_STATS,
    map_names::SOURCE_STATS,
    map_names::RULE_STATS,
    map_names::FLOWS_0,
    map_names::FLOWS_1,
    map_names::FLOW_REJECTS_0,
    map_names::FLOW_REJECTS_1,
    map_names::FLOW_CACHE_0,
    map_names::FLOW_CACHE_1,
    map_names::FLOW_CTL,
    map_names::FLOW_CLOCK,
    map_names::FLOW_STATS,
    map_names::BUDGET_STATE,
    // aya-log's ring buffer: adopted programs keep logging where the new agent reads.
    "AYA_LOGS",
];

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{0} is not on a bpffs mount (mount it with `mount -t bpf bpf /sys/fs/bpf`); the data path will not survive a restart of the agent"
    )]
    NotBpffs(PathBuf),
    #[error("pin directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("parsing the eBPF object: {0}")]
    Object(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(
        "another agent is using the pin directory {0}: two agents adopting one data path would undo each other's work; stop it first, or give this one its own --pin-dir"
    )]
    InUse(PathBuf),
}

/// An exclusive hold on a pin directory for as long as it lives (`flock(2)` on the
/// directory, released by the kernel when the process dies, even by `kill -9`).
#[derive(Debug)]
pub struct PinLock(#[expect(dead_code, reason = "held for its lock, never read")] std::fs::File);

/// Takes the pin directory for this process, or says another agent has it.
pub fn lock(root: &Path) -> Result<PinLock, PinError> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(root).map_err(io_err(root))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            PinError::InUse(root.to_path_buf())
        } else {
            PinError::Io {
                path: root.to_path_buf(),
                source: e,
            }
        });
    }
    Ok(PinLock(dir))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path`, or the nearest ancestor that exists, is on bpffs.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs(2) writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// FNV-1a: a stable fingerprint across builds of the agent (std's hasher is not promised to be).
fn fnv1a(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for chunk in chunks {
        for b in *chunk {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The pin directory of this agent and the names derived from the object it runs.
#[derive(Debug, Clone)]
pub struct PinPaths {
    /// Held while any copy of the paths lives: this agent owns the directory.
    #[expect(dead_code, reason = "held for its lock, never read")]
    lock: std::sync::Arc<PinLock>,
    pub root: PathBuf,
    pub maps: PathBuf,
    pub progs: PathBuf,
    pub links: PathBuf,
}

impl PinPaths {
    /// Checks that `root` is on bpffs and creates the directories for this object, whose maps
    /// get `max_entries` overrides from the config.
    /// `globals`: the bytes of what is set in the programs' read-only data at load (the
    /// kernel's `sk_buff` layout, the agent's namespace): programs loaded with other values
    /// are not adopted.
    pub fn prepare(
        root: &Path,
        object: &[u8],
        globals: &[u8],
        max_entries: &[(&str, u32)],
    ) -> Result<PinPaths, PinError> {
        if !on_bpffs(root).map_err(io_err(root))? {
            return Err(PinError::NotBpffs(root.to_path_buf()));
        }
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let lock = lock(root)?;
        let layout = map_layout(object, max_entries)?;
        let code = fnv1a(&[object, globals]);
        let paths = PinPaths {
            lock: std::sync::Arc::new(lock),
            root: root.to_path_buf(),
            maps: root.join(format!("maps-{layout:016x}")),
            progs: root.join(format!("progs-{code:016x}-{layout:016x}")),
            links: root.join("links"),
        };
        for dir in [&paths.maps, &paths.progs, &paths.links] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(paths)
    }

    pub fn source_link(&self, ifname: &str, direction: &str) -> PathBuf {
        self.links.join(format!("tc-{ifname}-{direction}"))
    }

    pub fn encap_link(&self, port: u16) -> PathBuf {
        self.links.join(format!("encap-{port}"))
    }

    pub fn drop_link(&self) -> PathBuf {
        self.links.join("flow_drop")
    }

    /// Map and program directories of older builds or layouts. Their programs stay loaded
    /// while links still use them, so they are removed only once every link was switched.
    pub fn stale_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                (name.starts_with("maps-") || name.starts_with("progs-"))
                    && *p != self.maps
                    && *p != self.progs
            })
            .collect()
    }
}

/// Fingerprint of the pinned maps' definitions: pinned maps are reused only by an object that
/// lays them out the same way.
fn map_layout(object: &[u8], max_entries: &[(&str, u32)]) -> Result<u64, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut bytes = Vec::new();
    for &name in PINNED_MAPS {
        let map = obj.maps.get(name).ok_or(PinError::MissingMap(name))?;
        let entries = max_entries
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(map.max_entries(), |(_, v)| *v);
        bytes.extend_from_slice(name.as_bytes());
        for v in [
            map.map_type(),
            map.key_size(),
            map.value_size(),
            entries,
            map.map_flags(),
        ] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(fnv1a(&[&bytes]))
}

/// Removes a pinned object or a directory of them. A missing path is not an error: the goal
/// is that it is gone.
pub fn remove(path: &Path) -> io::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// How a TC program is attached, as far as a later agent needs to know to adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SavedLink {
    /// A TCX link pinned at this path.
    Pin { path: PathBuf },
    /// A cls_bpf filter on the clsact qdisc (it lives on without a pin).
    Netlink { priority: u16, handle: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSource {
    pub ifindex: u32,
    pub stats_slot: u32,
    pub flow_log: bool,
    pub links: [SavedLink; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedTunnel {
    pub ifindex: u32,
    pub link: SavedLink,
}

/// The agent's half of the data path: which object owns which slot, and what is attached
/// where. Written after every change (write-then-rename) so the next agent reads a whole one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedDatapath {
    /// The maps directory the slots refer to; slots are meaningless with other maps.
    pub maps: PathBuf,
    pub sessions: BTreeMap<String, u32>,
    pub filters: BTreeMap<String, u32>,
    pub rules: BTreeMap<String, u32>,
    pub sources: BTreeMap<String, SavedSource>,
    pub tunnels: BTreeMap<u16, SavedTunnel>,
    pub drop_link: Option<PathBuf>,
    /// `mirror_segment` on the segmentation device's peer.
    #[serde(default)]
    pub segment: Option<SavedTunnel>,
    /// `mirror_tx` on each uplink, by interface name.
    #[serde(default)]
    pub uplinks: BTreeMap<String, SavedTunnel>,
}

pub const STATE_FILE: &str = "datapath.json";

impl SavedDatapath {
    pub fn read(state_dir: &Path) -> io::Result<Option<SavedDatapath>> {
        let path = state_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        use std::io::Write as _;
        let path = state_dir.join(STATE_FILE);
        let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(state_dir: &Path) -> io::Result<()> {
        remove(&state_dir.join(STATE_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fingerprint_follows_map_sizes() {
        let object = crate::datapath::EBPF_OBJECT;
        let a = map_layout(object, &[]).expect("layout");
        assert_eq!(a, map_layout(object, &[]).expect("layout"));
        let b = map_layout(
            object,
            &[(map_names::FLOWS_0, 1024), (map_names::FLOWS_1, 1024)],
        )
        .expect("layout");
        assert_ne!(a, b, "a resized flow table must not reuse the old maps");
    }

    /// The names the agent asks aya for are the maps and programs the built object holds.
    #[test]
    fn map_and_program_names_match_the_object() {
        use crate::datapath::{attach, receive};
        let obj = aya_obj::Object::parse(crate::datapath::EBPF_OBJECT).expect("object parses");
        // Sections the compiler and aya-log add are not ours to name.
        let mut in_object: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.') && *m != "AYA_LOGS")
            .collect();
        in_object.sort_unstable();
        let mut named = map_names::ALL.to_vec();
        named.sort_unstable();
        assert_eq!(
            in_object, named,
            "maps in the object vs mirror_ebpf::map_names"
        );
        for pinned in PINNED_MAPS {
            assert!(
                obj.maps.contains_key(*pinned),
                "pinned map {pinned} not in the object"
            );
        }
        let mut named = vec![
            attach::PROG_INGRESS,
            attach::PROG_EGRESS,
            attach::PROG_ENCAP,
            attach::PROG_TX,
            attach::PROG_SEGMENT,
            attach::PROG_FLOW_DROP,
            receive::PROG_RECEIVE,
            receive::PROG_RECEIVE_TC,
            receive::PROG_RX_PASS,
        ];
        // The agent's object carries only what it runs; the benchmark's adds its own.
        if cfg!(feature = "bench-programs") {
            named.extend([
                "bench_empty",
                "bench_empty_tp",
                "bench_parse",
                "bench_flow_shared",
                "bench_flow_evict",
                "bench_flow_table",
                "bench_flow_percpu",
            ]);
        }
        named.sort_unstable();
        let mut in_object: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        in_object.sort_unstable();
        assert_eq!(in_object, named, "programs in the object");
    }

    #[test]
    fn saved_state_round_trips() {
        let dir = std::env::temp_dir().join(format!("pins-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut saved = SavedDatapath::default();
        saved.sessions.insert("tms-a".into(), 3);
        saved.sources.insert(
            "eth0".into(),
            SavedSource {
                ifindex: 2,
                stats_slot: 1,
                flow_log: true,
                links: [
                    SavedLink::Pin {
                        path: "/sys/fs/bpf/x/links/tc-eth0-ingress".into(),
                    },
                    SavedLink::Netlink {
                        priority: 49152,
                        handle: 1,
                    },
                ],
            },
        );
        saved.write(&dir).expect("write");
        let back = SavedDatapath::read(&dir).expect("read").expect("present");
        assert_eq!(back.sessions, saved.sessions);
        assert_eq!(back.sources["eth0"].links, saved.sources["eth0"].links);
        SavedDatapath::remove(&dir).expect("remove");
        assert!(SavedDatapath::read(&dir).expect("read").is_none());
        let _ = std::fs::remove_dir(&dir);
    }
}
