//! The agent's data path loaded in-process inside a namespace, with objects applied: what the
//! BPF_PROG_TEST_RUN fixtures and the benchmarks run their programs against.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
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

/// `struct __sk_buff` offsets (include/uapi/linux/bpf.h) of the fields the test sets.
pub const SKB_CTX_LEN: usize = 192;
pub const SKB_MARK: usize = 8;
pub const SKB_IFINDEX: usize = 40;
pub const SKB_GSO_SEGS: usize = 164;
pub const SKB_GSO_SIZE: usize = 176;

pub fn skb_ctx(ifindex: u32, mark: u32, gso: Option<(u32, u32)>) -> Vec<u8> {
    let mut ctx = vec![0u8; SKB_CTX_LEN];
    ctx[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    if let Some((segs, size)) = gso {
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&segs.to_ne_bytes());
        ctx[SKB_GSO_SIZE..SKB_GSO_SIZE + 4].copy_from_slice(&size.to_ne_bytes());
    }
    ctx
}

pub fn run(prog: &SchedClassifier, packet: &[u8], ctx: &[u8]) -> (i32, Vec<u8>) {
    try_run(prog, packet, ctx).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"))
}

pub fn try_run(
    prog: &SchedClassifier,
    packet: &[u8],
    ctx: &[u8],
) -> Result<(i32, Vec<u8>), String> {
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            ..TestRunOptions::new()
        })
        .map_err(|e| format!("BPF_PROG_TEST_RUN failed: {e:?}"))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value as i32, out))
}
