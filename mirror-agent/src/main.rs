//! `mirror-agent`: the node daemon. `mirror-agent run` loads the data path, reconciles the
//! configured sessions into it, and re-reads the config file on SIGHUP.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mirror_agent::{
    api::server,
    btf, cli,
    config::{self, FileConfig, LogFormat},
    datapath::{self, CopyPathMode, Datapath, FlowTableSpec, Persistence, TcAttachMode},
    declared, flowlog, links,
    reconciler::Reconciler,
    service::Service,
    store::Store,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "mirror-agent", version, about = "eBPF traffic mirror agent")]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground.
    Run(RunArgs),
    /// Remove every program, link, map, pin and tunnel device an agent left running (after
    /// SIGTERM the data path stays up for the next agent), then exit. Stop the agent first.
    Cleanup(CleanupArgs),
    /// Print the Kubernetes custom resource definitions (YAML) of the mirror objects, as
    /// `kubectl apply -f -` takes them.
    Crds,
    /// Run the cluster controller: one replica at a time (a Lease) writes each
    /// TrafficMirrorSession's status (Accepted, Ready, Degraded, node counts) from the
    /// nodes' MirrorNodeStates.
    Controller(ControllerArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

// The subcommand's description is the `Run` variant's doc comment; this one would be ignored.
#[derive(Args, Debug)]
#[command(
    after_help = "Every flag can also be set in the config file (same name, with `_`); flags win over the file."
)]
struct RunArgs {
    /// TOML config file (agent settings and the node's static mirror objects).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the agent keeps its state, created if missing [default: /var/lib/mirror-agent].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The API's Unix socket, mode 0600 [default: /run/mirror-agent/api.sock].
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Also serve the API over TCP on this address; an address other than loopback needs
    /// api_credentials or MIRROR_AGENT_API_TOKEN.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// bpffs directory where programs, links and maps are pinned so they outlive the agent.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT detach and remove everything instead of leaving the data path
    /// running for the next agent.
    #[arg(long)]
    detach_on_exit: bool,
    /// Keep the kernel's BPF run-time statistics on (host-wide; costs two clock reads per
    /// BPF program run) for the mirror_bpf_program_* metrics.
    #[arg(long)]
    bpf_stats: bool,
    /// Log lines as text or JSON; the level comes from RUST_LOG (default info) [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How programs attach to interfaces: auto (TCX on 6.6+, else clsact), tcx or clsact.
    #[arg(long, value_enum)]
    tc_attach: Option<TcAttachMode>,
    /// Which way copies take: auto (outer headers built in eBPF on the uplink where the
    /// next hop is known, the kernel's VXLAN device otherwise) or tunnel (always the device).
    #[arg(long, value_enum)]
    copy_path: Option<CopyPathMode>,
    /// Also apply this node's share of the cluster's mirror custom resources (in-cluster
    /// service account, or KUBECONFIG), and report it in the node's MirrorNodeState.
    #[arg(long)]
    kubernetes: bool,
    /// The node's name in Kubernetes mode [default: $NODE_NAME, from the downward API].
    #[arg(long)]
    node_name: Option<String>,
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// This replica's name in the Lease [default: $POD_NAME, else the host name].
    #[arg(long)]
    identity: Option<String>,
    /// The namespace of the Lease [default: $POD_NAMESPACE, else mirror-agent].
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Log lines as text or JSON; the level comes from RUST_LOG (default info) [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// `mirror-agent controller`: runs until SIGTERM or SIGINT.
async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format.unwrap_or_default());
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let identity = args
        .identity
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .context("--identity, POD_NAME or HOSTNAME is needed for the Lease")?;
    let lease_namespace = args
        .lease_namespace
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| "mirror-agent".into());
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    info!(%identity, %lease_namespace, "controller starting");
    let task = tokio::spawn(
        mirror_agent::kubernetes::controller::Controller {
            client,
            lease_namespace,
            identity,
            stop,
        }
        .run(),
    );
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    task.await.context("controller task")?;
    Ok(())
}

#[derive(Args, Debug)]
struct CleanupArgs {
    /// The config file the agent ran with (for state_dir, pin_dir and api_socket).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The agent's state directory, if not the config's or /var/lib/mirror-agent.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The agent's bpffs pin directory, if not the config's or /sys/fs/bpf/mirror-agent.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// The agent's API socket (cleanup refuses while an agent answers there), if not the
    /// config's or /run/mirror-agent/api.sock.
    #[arg(long)]
    api_socket: Option<PathBuf>,
}

/// `mirror-agent cleanup`: refuses while an agent answers on the socket (it would re-create
/// what we remove), then removes what agents left running.
async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let file = load_file(args.config.as_ref())?;
    let run = RunArgs {
        config: None,
        state_dir: args.state_dir,
        api_socket: args.api_socket,
        api_listen: None,
        metrics_listen: None,
        pin_dir: args.pin_dir,
        detach_on_exit: false,
        bpf_stats: false,
        log_format: None,
        tc_attach: None,
        copy_path: None,
        kubernetes: false,
        node_name: None,
    };
    let settings = settings(&run, &file);
    if tokio::net::UnixStream::connect(&settings.api_socket)
        .await
        .is_ok()
    {
        anyhow::bail!(
            "an agent is running (it answers on {}); stop it first",
            settings.api_socket.display()
        );
    }
    let removed = datapath::cleanup(&Persistence {
        pin_dir: settings.pin_dir.clone(),
        state_dir: settings.state_dir.clone(),
    })
    .await
    .context("cleanup")?;
    if removed.is_empty() {
        println!("nothing to remove");
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}

/// Settings after merging flags over the file over built-in defaults.
#[derive(Debug)]
struct Settings {
    state_dir: PathBuf,
    api_socket: PathBuf,
    api_listen: Option<String>,
    metrics_listen: Option<String>,
    pin_dir: PathBuf,
    detach_on_exit: bool,
    bpf_stats: bool,
    log_format: LogFormat,
    tc_attach: TcAttachMode,
    copy_path: CopyPathMode,
}

fn settings(args: &RunArgs, file: &FileConfig) -> Settings {
    Settings {
        state_dir: args
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| config::DEFAULT_STATE_DIR.into()),
        api_socket: args
            .api_socket
            .clone()
            .or_else(|| file.api_socket.clone())
            .unwrap_or_else(|| config::DEFAULT_API_SOCKET.into()),
        api_listen: args
            .api_listen
            .map(|a| a.to_string())
            .or_else(|| file.api_listen.clone()),
        metrics_listen: args
            .metrics_listen
            .map(|a| a.to_string())
            .or_else(|| file.metrics_listen.clone()),
        pin_dir: args
            .pin_dir
            .clone()
            .or_else(|| file.pin_dir.clone())
            .unwrap_or_else(|| config::DEFAULT_PIN_DIR.into()),
        detach_on_exit: args.detach_on_exit || file.detach_on_exit.unwrap_or(false),
        bpf_stats: args.bpf_stats || file.bpf_stats.unwrap_or(false),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        tc_attach: args.tc_attach.or(file.tc_attach).unwrap_or_default(),
        copy_path: args.copy_path.or(file.copy_path).unwrap_or_default(),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_file(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    match path {
        Some(p) => Ok(FileConfig::load(p)?),
        None => Ok(FileConfig::default()),
    }
}

/// Re-reads the config file into the store and waits for the reconciler to apply it.
async fn declare(
    store: &Store,
    svc: &Service,
    file: &FileConfig,
    started: &AtomicU64,
    passes: &mut tokio::sync::watch::Receiver<u64>,
) -> anyhow::Result<()> {
    let changes = {
        let _guard = svc.write_lock.lock().await;
        declared::sync(store, file).context("config")?
    };
    // The first pass to start after the commit reads it.
    let wanted = started.load(Ordering::SeqCst) + 1;
    svc.trigger();
    while *passes.borrow_and_update() < wanted {
        passes.changed().await.context("reconciler stopped")?;
    }
    let snap = svc.snapshot().map_err(|e| anyhow::anyhow!("{e}"))?;
    for s in &snap.sessions {
        for e in &s.errors {
            warn!(session = %s.id, "not applied: {e}");
        }
    }
    info!(changes, sessions = snap.sessions.len(), "datapath ready");
    Ok(())
}

/// Where `sk_buff.ip_summed` lives, so the source programs can tell a packet whose checksum
/// is left to offload. A 2-bit field that does not fit one byte is left unknown.
fn with_ip_summed(mut layout: mirror_ebpf::SkbLayout, btf: &btf::Btf) -> mirror_ebpf::SkbLayout {
    match btf.member_bits("sk_buff", "ip_summed") {
        Ok((bit, 2)) if bit % 8 <= 6 => {
            layout.ip_summed_valid = 1;
            layout.ip_summed_byte = (bit / 8) as u32;
            layout.ip_summed_shift = (bit % 8) as u32;
        }
        other => warn!(
            ?other,
            "sk_buff.ip_summed not found as a 2-bit field: copies of locally generated packets may carry unfilled checksums"
        ),
    }
    layout
}

/// `sk_buff`/`net_device` field offsets and drop-reason names from the kernel's BTF.
fn drop_layout() -> anyhow::Result<(
    mirror_ebpf::SkbLayout,
    std::collections::BTreeMap<u64, String>,
)> {
    let btf = btf::Btf::from_file(std::path::Path::new("/sys/kernel/btf/vmlinux"))?;
    let layout = mirror_ebpf::SkbLayout {
        valid: 1,
        head: btf.member_offset("sk_buff", "head")?,
        network_header: btf.member_offset("sk_buff", "network_header")?,
        transport_header: btf.member_offset("sk_buff", "transport_header")?,
        dev: btf.member_offset("sk_buff", "dev")?,
        skb_iif: btf.member_offset("sk_buff", "skb_iif")?,
        dev_ifindex: btf.member_offset("net_device", "ifindex")?,
        // possible_net_t is an anonymous struct holding only `struct net *net`.
        dev_nd_net: btf.member_offset("net_device", "nd_net")?,
        net_inum: btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?,
        netns_inum: {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata("/proc/self/ns/net")?.ino() as u32
        },
        ..Default::default()
    };
    let layout = with_ip_summed(layout, &btf);
    let reasons = btf.enum_values("skb_drop_reason").unwrap_or_default();
    Ok((layout, reasons))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Installed first: a SIGTERM that arrives while the agent starts (a test or a kubelet that
    // stops it as soon as its API answers) must take the orderly exit below, not the default
    // action that kills the process and skips `--detach-on-exit`.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let file = load_file(args.config.as_ref())?;
    let settings = settings(&args, &file);
    init_logging(settings.log_format);
    info!(?settings, "starting");
    // Checked before anything is loaded: a DaemonSet without the downward API fails at once.
    let node_name = if args.kubernetes || file.kubernetes.unwrap_or(false) {
        let name = args
            .node_name
            .clone()
            .or_else(|| file.node_name.clone())
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .context(
                "--kubernetes needs --node-name or NODE_NAME (the downward API's spec.nodeName)",
            )?;
        Some(name)
    } else {
        None
    };
    let store = Store::open(&settings.state_dir)
        .with_context(|| format!("opening the store in {}", settings.state_dir.display()))?;
    let token = file
        .api_token
        .clone()
        .or_else(|| std::env::var("MIRROR_AGENT_API_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let creds = file.api_credentials.as_ref();
    let keys = match creds {
        Some(c) => c.load()?,
        None => Vec::new(),
    };
    let api_auth = Arc::new(mirror_agent::api::auth::Authenticator::new(
        keys,
        token.clone().map(mirror_agent::api::auth::Secret::new),
        creds
            .map(|c| c.window())
            .unwrap_or(mirror_agent::api::auth::DEFAULT_WINDOW),
    ));

    let health = Arc::new(mirror_agent::metrics::Health::default());
    let kernel = mirror_agent::kernel::KernelReport::probe();
    if let Ok(names) = std::env::var(mirror_agent::kernel::PRETEND_MISSING_ENV) {
        warn!(
            "{}={names}: acting as if the kernel lacked these features",
            mirror_agent::kernel::PRETEND_MISSING_ENV
        );
    }
    info!(
        release = %kernel.release,
        "kernel features: {}",
        kernel.summary()
    );
    for line in kernel.degradations() {
        warn!("{line}");
        health.add_fault(false, line);
    }
    if settings.tc_attach == TcAttachMode::Auto && !kernel.has(mirror_agent::kernel::TCX) {
        info!("no TCX in this kernel (6.6+): attaching the TC programs with clsact");
    }
    // The programs are loaded with the kernel's sk_buff layout (BTF); without it, flow logs
    // have no REJECT records and copies of locally generated packets are not checksummed.
    let kernel_btf = drop_layout();
    if let Err(e) = &kernel_btf {
        warn!("no sk_buff layout from the kernel's BTF: {e:#}");
    }
    let skb_layout = kernel_btf
        .as_ref()
        .map(|(layout, _)| *layout)
        .unwrap_or(mirror_ebpf::SkbLayout::UNKNOWN);
    let (mut datapath, flow_tables, opened) = Datapath::open(
        settings.tc_attach,
        FlowTableSpec {
            entries: file
                .flow_table_size
                .unwrap_or(mirror_ebpf::DEFAULT_FLOW_TABLE_SIZE),
            prealloc: file.flow_table_prealloc.unwrap_or(false),
        },
        &skb_layout,
        &Persistence {
            pin_dir: settings.pin_dir.clone(),
            state_dir: settings.state_dir.clone(),
        },
    )
    .context("loading the eBPF programs")?;
    if let Some(why) = &opened.unpinned {
        health.add_fault(false, why.clone());
    }
    datapath.set_copy_path(settings.copy_path);
    let mut loaded: Vec<(&str, bool)> = Vec::new();
    for name in datapath::attach::TC_PROGRAMS {
        let rejected = opened.rejected.get(name);
        loaded.push((name, rejected.is_none()));
        if let Some(why) = rejected {
            health.add_fault(true, format!("program {name} {why}"));
        }
    }
    if opened.adopted > 0 {
        info!(
            links = opened.adopted,
            "adopted the data path an earlier agent left running"
        );
    }
    // Dropped packets become REJECT flows; without BTF the rest of flow logging still works.
    let mut no_reject_records = None;
    let drop_reasons = match kernel
        .drop_accounting()
        .map_err(anyhow::Error::msg)
        .and(kernel_btf)
    {
        Ok((_, reasons)) => {
            let ok = match datapath.enable_drop_accounting() {
                Ok(()) => true,
                Err(e) => {
                    warn!("drop accounting unavailable: {e}");
                    health.add_fault(false, format!("drop accounting unavailable: {e}"));
                    no_reject_records = Some(e.to_string());
                    false
                }
            };
            loaded.push((datapath::PROG_FLOW_DROP, ok));
            reasons
        }
        Err(e) => {
            warn!("drop accounting unavailable: {e:#}");
            no_reject_records = Some(format!("{e:#}"));
            Default::default()
        }
    };
    let (connection, netlink, _) = rtnetlink::new_connection().context("rtnetlink")?;
    tokio::spawn(connection);
    let link_cache = Arc::new(RwLock::new(
        links::dump(&netlink).await.context("listing interfaces")?,
    ));
    let link_events = match links::watch() {
        Ok(rx) => Some(rx),
        Err(e) => {
            warn!(
                "cannot follow interface changes ({e}); glob sources are resolved at changes only"
            );
            None
        }
    };
    let wake = Arc::new(Notify::new());
    let mut svc = Service::new(
        store.clone(),
        file.rule_quota(),
        file.source_quota.unwrap_or(config::DEFAULT_SOURCE_QUOTA),
        file.aliases.clone(),
        file.region.clone().unwrap_or_else(|| "local".to_string()),
        Arc::clone(&link_cache),
        Arc::clone(&wake),
    );
    svc.no_reject_records = no_reject_records;
    let svc = Arc::new(svc);
    svc.metrics
        .datapath_pinned
        .set(i64::from(opened.unpinned.is_none()));
    for f in &kernel.features {
        svc.metrics
            .kernel_feature
            .with_label_values(&[f.name])
            .set(i64::from(f.present));
    }
    for (name, ok) in loaded {
        svc.metrics
            .program_loaded
            .with_label_values(&[name])
            .set(i64::from(ok));
    }
    let plan = Arc::new(RwLock::new(flowlog::runner::Plan::default()));
    let (passes_tx, mut passes) = tokio::sync::watch::channel(0u64);
    let started = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controller_netlink = netlink.clone();
    let reconciler = Reconciler {
        svc: Arc::clone(&svc),
        datapath,
        wake,
        link_events,
        netlink,
        links: link_cache,
        delay: Duration::from_millis(file.reconcile_delay_ms.unwrap_or(0)),
        started: Arc::clone(&started),
        passes: passes_tx,
        plan: Arc::clone(&plan),
        metrics: Arc::clone(&svc.metrics),
        stop: stop_rx.clone(),
    };
    let reconciler = tokio::spawn(reconciler.run());
    let (ticks_tx, _ticks) = tokio::sync::watch::channel(0u64);
    let mut flow_tables = flow_tables;
    let flow_clock = datapath::flowtable::FlowClock::take(&mut flow_tables)
        .map(|clock| tokio::spawn(clock.run(stop_rx.clone())));
    let runner = flowlog::runner::Runner {
        tables: flow_tables,
        plan,
        status: Arc::clone(&svc.flow_log_status),
        state_dir: settings.state_dir.clone(),
        format: match file.flow_log_format.as_deref() {
            Some("aws") => flowlog::files::FileFormat::AwsText,
            _ => flowlog::files::FileFormat::JsonLines,
        },
        meta: flowlog::format::NodeMeta {
            account_id: file.account_id.clone(),
            vpc_id: file.vpc_id.clone(),
            subnet_id: file.subnet_id.clone(),
            instance_id: file.instance_id.clone(),
            region: file.region.clone(),
            az_id: file.az_id.clone(),
        },
        ipfix: file.ipfix_collector,
        drop_reasons,
        tick: Duration::from_millis(file.flow_drain_ms.unwrap_or(1000).max(100)),
        stop: stop_rx.clone(),
        ticks: ticks_tx,
        metrics: Arc::clone(&svc.metrics),
    };
    let runner = tokio::spawn(runner.run());

    let unix = server::bind_unix(&settings.api_socket)?;
    tokio::spawn({
        let app = server::router(Arc::clone(&svc), None);
        async move {
            if let Err(e) = axum::serve(mirror_agent::api::lenient::Lenient(unix), app).await {
                error!("API socket server stopped: {e}");
            }
        }
    });
    if let Some(addr) = &settings.api_listen {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("api_listen {addr:?} is not ADDR:PORT"))?;
        let tcp = server::bind_tcp(addr, &api_auth).await?;
        let app = server::router(Arc::clone(&svc), Some(Arc::clone(&api_auth)));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(mirror_agent::api::lenient::Lenient(tcp), app).await {
                error!("API TCP server stopped: {e}");
            }
        });
    }

    if let Some(addr) = &settings.metrics_listen {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("metrics_listen {addr:?} is not ADDR:PORT"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        info!(%addr, "metrics listening");
        let app = server::metrics_router(Arc::clone(&svc.metrics), Arc::clone(&health));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!("metrics server stopped: {e}");
            }
        });
    }
    // BPF run-time statistics for mirror_bpf_program_*: on only when asked (host-wide, and
    // every program run then reads the clock twice), and then kept on while the agent runs.
    let _bpf_stats = if settings.bpf_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!("BPF run-time statistics unavailable: {e}");
                None
            }
        }
    } else {
        None
    };

    declare(&store, &svc, &file, &started, &mut passes).await?;
    health
        .reconciled
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let controller = match node_name {
        Some(node) => {
            // The store keeps the last plan: until the API server answers, it is applied.
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster service account or KUBECONFIG)")?;
            let connection =
                mirror_agent::kubernetes::node::Connection::new(&svc, Arc::clone(&health))
                    .context("mirror_kubernetes_connected")?;
            info!(%node, "Kubernetes mode: watching the mirror resources and this node's pods");
            Some(tokio::spawn(
                mirror_agent::kubernetes::node::NodeController {
                    client,
                    node,
                    svc: Arc::clone(&svc),
                    netlink: controller_netlink,
                    connection,
                    rule_quota: file.rule_quota(),
                    stop: stop_rx.clone(),
                }
                .run(),
            ))
        }
        None => None,
    };

    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                // A bad edit keeps the running configuration rather than tearing it down.
                match load_file(args.config.as_ref()) {
                    Ok(file) => if let Err(e) = declare(&store, &svc, &file, &started, &mut passes).await {
                        error!("reload failed, keeping the previous configuration: {e:#}");
                    },
                    Err(e) => error!("reload failed, keeping the previous configuration: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = stop_tx.send(true);
    if let Some(c) = controller {
        let _ = c.await;
    }
    let _ = runner.await;
    if let Some(c) = flow_clock {
        let _ = c.await;
    }
    let mut datapath = reconciler.await.context("reconciler task")?;
    if settings.detach_on_exit || !datapath.is_pinned() {
        info!("stopping: detaching programs, removing tunnel devices and pins");
        datapath.shutdown().await.context("shutting down")?;
    } else {
        info!(
            pin_dir = %settings.pin_dir.display(),
            "stopping: the data path keeps running for the next agent (`mirror-agent cleanup` removes it)"
        );
        datapath.leave().context("saving the data path state")?;
    }
    let _ = std::fs::remove_file(&settings.api_socket);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client builds its own small runtime; only the daemon needs the multi-threaded one.
    let args = match cli.command {
        Command::Client(c) => return cli::run(&cli.client, c),
        Command::Crds => {
            return match mirror_agent::kubernetes::crd::crds_yaml() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mirror-agent: CRDs: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Controller(args) => {
            return exit(
                tokio::runtime::Runtime::new()
                    .context("starting the runtime")
                    .and_then(|rt| rt.block_on(controller(args))),
            );
        }
        Command::Run(args) => args,
        Command::Cleanup(args) => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")
                .and_then(|rt| rt.block_on(cleanup(args)));
            return exit(result);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirror-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit(runtime.block_on(run(args)))
}

/// A command's outcome as the process's exit status, the error (with its causes) on stderr.
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory as _;

    /// Every `--help` and `-h` text, of the top-level command and of each subcommand at any
    /// depth, with its command path.
    fn every_help() -> Vec<(String, String)> {
        fn walk(command: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
            out.push((path.clone(), command.render_long_help().to_string()));
            out.push((path.clone(), command.render_help().to_string()));
            for sub in command.get_subcommands_mut() {
                let name = format!("{path} {}", sub.get_name());
                walk(sub, name, out);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut out = Vec::new();
        walk(&mut command, "mirror-agent".into(), &mut out);
        out
    }

    /// Help is for the operator: maintainers' notes (rustdoc links, the source files a doc
    /// comment talks about) must not leak into it through a `///` clap reads as `about`.
    #[test]
    fn help_texts_are_written_for_the_operator() {
        let helps = every_help();
        assert!(helps.len() > 40, "only {} help texts found", helps.len());
        let source_file = |text: &str| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .any(|word| word.len() > 3 && word.ends_with(".rs"))
        };
        for (path, text) in &helps {
            for leak in ["[`", "`]", "](", "crate::", "Self::", "flattened"] {
                assert!(
                    !text.contains(leak),
                    "`{path} --help` contains {leak:?}, a maintainer's note:\n{text}"
                );
            }
            assert!(
                !source_file(text),
                "`{path} --help` names a source file:\n{text}"
            );
        }
    }

    /// A flag without a line of help leaves the operator guessing what it does.
    #[test]
    fn every_flag_and_value_says_what_it_does() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "mirror-agent", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:#?}");
    }

    #[test]
    fn top_level_help_opens_with_what_the_program_is() {
        let text = Cli::command().render_long_help().to_string();
        assert!(
            text.starts_with("eBPF traffic mirror agent"),
            "mirror-agent --help opens with:\n{text}"
        );
    }
}
