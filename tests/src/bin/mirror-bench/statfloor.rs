//! The floor of a BPF-statistics measurement: empty programs on the hooks the agent's
//! programs run on (`bench_empty` on the source's TC ingress, `bench_empty_tp` on
//! `skb:kfree_skb`), measured by the same statistics over the same window. With the statistics
//! on, every program run is timed between two reads of the kernel's clock, and the time
//! recorded includes about one of those reads and the program's dispatch: an empty program
//! records exactly that. The agent's programs carry the same per run, and do not pay the
//! clock reads with the statistics off (their default). Both hooks see the same events as the
//! agent's programs, so the empty programs' total time is the floor of the agent's columns.

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, SchedClassifier, TcAttachType},
};
use mirror_tests::netns::{NetNs, in_netns};

/// The empty programs, attached while this lives.
pub struct StatFloor {
    ebpf: Ebpf,
}

/// Run time (ns) and runs of each empty program so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorReading {
    pub tc_ns: u64,
    pub tc_runs: u64,
    pub tp_ns: u64,
    pub tp_runs: u64,
}

impl FloorReading {
    /// What happened between `earlier` and this reading.
    pub fn since(self, earlier: FloorReading) -> FloorReading {
        FloorReading {
            tc_ns: self.tc_ns.saturating_sub(earlier.tc_ns),
            tc_runs: self.tc_runs.saturating_sub(earlier.tc_runs),
            tp_ns: self.tp_ns.saturating_sub(earlier.tp_ns),
            tp_runs: self.tp_runs.saturating_sub(earlier.tp_runs),
        }
    }
}

impl StatFloor {
    /// Loads the bench object's empty programs and attaches them to `iface`'s TC ingress in
    /// `ns` and to `skb:kfree_skb`.
    pub fn attach(ns: &NetNs, iface: &str) -> StatFloor {
        in_netns(ns, || {
            let mut ebpf = EbpfLoader::new()
                .load(mirror_agent::datapath::EBPF_OBJECT)
                .expect("loading the bench object");
            let tc: &mut SchedClassifier = ebpf
                .program_mut("bench_empty")
                .expect("bench_empty in the bench object")
                .try_into()
                .expect("bench_empty is a classifier");
            tc.load().expect("loading bench_empty");
            tc.attach(iface, TcAttachType::Ingress)
                .expect("attaching bench_empty");
            let btf = Btf::from_sys_fs().expect("the kernel's BTF");
            let tp: &mut BtfTracePoint = ebpf
                .program_mut("bench_empty_tp")
                .expect("bench_empty_tp in the bench object")
                .try_into()
                .expect("bench_empty_tp is a BTF tracepoint");
            tp.load("kfree_skb", &btf).expect("loading bench_empty_tp");
            tp.attach().expect("attaching bench_empty_tp");
            StatFloor { ebpf }
        })
    }

    pub fn read(&self) -> FloorReading {
        let info = |name: &str| {
            self.ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .map_or((0, 0), |i| (i.run_time().as_nanos() as u64, i.run_count()))
        };
        let (tc_ns, tc_runs) = info("bench_empty");
        let (tp_ns, tp_runs) = info("bench_empty_tp");
        FloorReading {
            tc_ns,
            tc_runs,
            tp_ns,
            tp_runs,
        }
    }
}
