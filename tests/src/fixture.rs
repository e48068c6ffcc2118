//! The agent's data path loaded in-process inside a namespace, with objects applied: what the
//! BPF_PROG_TEST_RUN fixtures and the benchmarks run their programs against.

use mirror_agent::{
    config::Objects,
    datapath::{Datapath, FlowTables, TcAttachMode},
};

use crate::netns::{NetNs, in_netns};

/// Loads the data path in `ns` (flow tables of `flow_table_size`), applies `objects` (which
/// must apply without errors), runs `f`, and shuts the data path down, all on a
/// single-threaded runtime inside the namespace.
pub fn with_datapath<T: Send>(
    ns: &NetNs,
    objects: &Objects,
    flow_table_size: u32,
    f: impl AsyncFnOnce(&mut Datapath, &mut FlowTables) -> T + Send,
) -> T {
    in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let (mut dp, mut flows) = Datapath::new(TcAttachMode::Auto, flow_table_size)
                .expect("programs load and pass the verifier");
            let report = dp.apply(objects).await.expect("apply");
            assert!(
                report.errors.is_empty(),
                "apply reported errors: {report:?}"
            );
            let out = f(&mut dp, &mut flows).await;
            dp.shutdown().await.expect("shutdown");
            out
        })
    })
}
