//! What the kernel has attached, asked from the kernel itself (BPF_PROG_QUERY): Debian 12's
//! bpftool predates TCX and cannot list TCX programs per device.

use std::collections::BTreeSet;

use aya::programs::{SchedClassifier, TcAttachType};

use crate::netns::{NetNs, in_netns};

/// The TCX programs attached to `dev` in `ns`: (direction, program name, program id). A
/// device that does not exist, or a kernel without TCX, has none.
pub fn attached(ns: &NetNs, dev: &str) -> BTreeSet<(String, String, u32)> {
    in_netns(ns, || {
        let mut progs = BTreeSet::new();
        for (kind, attach) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            let infos = match SchedClassifier::query_tcx(dev, attach) {
                Ok((_, infos)) => infos,
                Err(_) if crate::netns::ifindex_in_current(dev).is_none() => continue,
                // A kernel without TCX (before 6.6) cannot be asked, and has none attached.
                Err(_) if !crate::kernel_at_least(6, 6) => continue,
                Err(e) => panic!("querying TCX {kind} of {dev}: {e}"),
            };
            for info in infos {
                progs.insert((
                    kind.to_string(),
                    info.name_as_str().unwrap_or_default().to_string(),
                    info.id(),
                ));
            }
        }
        progs
    })
}

/// The program ids of an `attached` set.
pub fn ids(set: &BTreeSet<(String, String, u32)>) -> BTreeSet<u32> {
    set.iter().map(|p| p.2).collect()
}

/// Whether a program with this id is still loaded anywhere in the kernel.
pub fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Raw tracepoint links (BTF tracepoints attach as those too) running a program named `name`,
/// anywhere in the kernel (tests run one at a time, so these are the running test's).
pub fn raw_tracepoint_links(name: &str) -> usize {
    let ids: BTreeSet<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| {
            matches!(
                l.link_type(),
                Ok(aya::programs::links::LinkType::RawTracePoint)
            ) && ids.contains(&l.program_id())
        })
        .count()
}
