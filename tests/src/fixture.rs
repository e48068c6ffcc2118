//! The agent's data path loaded in-process inside a namespace, with objects applied: what the
//! BPF_PROG_TEST_RUN fixtures and the benchmarks run their programs against.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
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

/// TC verdicts (include/uapi/linux/pkt_cls.h) as [`run`] returns them. `TC_ACT_UNSPEC` is TCX's
/// "next": the next program, then the device, handle the packet as if nobody looked.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
/// XDP verdicts (include/uapi/linux/bpf.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// A TC verdict by name, for failure messages.
pub fn tc_verdict(ret: i32) -> String {
    match ret {
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC".into(),
        TC_ACT_OK => "TC_ACT_OK".into(),
        TC_ACT_SHOT => "TC_ACT_SHOT".into(),
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT".into(),
        other => format!("TC verdict {other}"),
    }
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

/// `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex. The kernel wants data_end = the packet's length and the rest zero.
pub fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs an XDP program on `packet` arriving on `ifindex`: (verdict, frame afterwards).
pub fn try_run_xdp(prog: &Xdp, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>), String> {
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = xdp_ctx(ifindex, packet.len());
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .map_err(|e| format!("BPF_PROG_TEST_RUN failed: {e:?}"))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// A raw packet socket on one interface of the current namespace: what the wire carries
/// there, read without waiting longer than asked.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    /// Every frame arriving on `ifname` (ETH_P_ALL), non-blocking.
    pub fn open(ifname: &str) -> std::io::Result<PacketSocket> {
        use std::os::fd::FromRawFd;
        let ifindex = mirror_agent::datapath::ifindex(ifname).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no interface {ifname}"),
            )
        })?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the descriptor is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) with a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// The next frame, waiting at most `wait` for one.
    pub fn recv(&self, wait: std::time::Duration) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if ready <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: recv(2) into a buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }
}
