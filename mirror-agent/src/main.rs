//! `mirror-agent`: the node daemon. `mirror-agent run` loads the data path, reconciles the
//! configured sessions into it, and re-reads the config file on SIGHUP.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mirror_agent::{
    config::{self, FileConfig, LogFormat},
    datapath::{Datapath, TcAttachMode},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "mirror-agent", version, about = "eBPF traffic mirror agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground.
    Run(RunArgs),
}

/// Every flag can also be set in the config file (same name, underscores); flags win.
#[derive(Args, Debug)]
struct RunArgs {
    /// TOML config file (agent settings and the node's static mirror objects).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    api_socket: Option<PathBuf>,
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How programs attach to interfaces: auto (TCX on 6.6+, else clsact), tcx or clsact.
    #[arg(long, value_enum)]
    tc_attach: Option<TcAttachMode>,
}

/// Settings after merging flags over the file over built-in defaults.
#[derive(Debug)]
struct Settings {
    state_dir: PathBuf,
    #[expect(
        dead_code,
        reason = "the API server arrives with issue 3; the flag is stable now"
    )]
    api_socket: PathBuf,
    api_listen: Option<String>,
    metrics_listen: Option<String>,
    #[expect(
        dead_code,
        reason = "pinning arrives with issue 5; the flag is stable now"
    )]
    pin_dir: PathBuf,
    log_format: LogFormat,
    tc_attach: TcAttachMode,
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
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        tc_attach: args.tc_attach.or(file.tc_attach).unwrap_or_default(),
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

async fn reconcile(datapath: &mut Datapath, file: &FileConfig) -> anyhow::Result<()> {
    let objects = file.objects().context("config")?;
    let report = datapath.apply(&objects).await.context("applying")?;
    for (id, errors) in &report.errors {
        for e in errors {
            warn!(object = %id, "not applied: {e}");
        }
    }
    info!(
        sessions = objects.sessions.len(),
        sources = datapath.attached_sources().len(),
        "datapath ready"
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = load_file(args.config.as_ref())?;
    let settings = settings(&args, &file);
    init_logging(settings.log_format);
    info!(?settings, "starting");
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| format!("creating state dir {}", settings.state_dir.display()))?;
    if settings.api_listen.is_some() || settings.metrics_listen.is_some() {
        warn!("the API and metrics listeners are not part of this build yet; ignoring them");
    }

    let mut datapath = Datapath::new(settings.tc_attach).context("loading the eBPF programs")?;
    reconcile(&mut datapath, &file).await?;

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                // A bad edit keeps the running configuration rather than tearing it down.
                match load_file(args.config.as_ref()) {
                    Ok(file) => if let Err(e) = reconcile(&mut datapath, &file).await {
                        error!("reload failed, keeping the previous configuration: {e:#}");
                    },
                    Err(e) => error!("reload failed, keeping the previous configuration: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping: detaching programs and removing tunnel devices");
    datapath.shutdown().await.context("shutting down")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirror-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
