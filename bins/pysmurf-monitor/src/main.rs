//! `pysmurf-monitor`: the pysmurf monitor OCS agent (agent class
//! `PysmurfMonitor`). Argument parsing, logging, signals and exit codes over
//! `monitor-core`; everything else lives in the libraries.

#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    reason = "doc comments here are clap help texts: <working dir> and [default: …] are prose"
)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use file_registration::{Recorder, WaitPolicy};
use files_db::{DbTarget, FilesDb};
use monitor_core::{bind_udp, IpNet, Monitor, OpsConfig, PipelineOptions};
use ocs_feed::{Agent, HasSiteArgs, SiteArgs, SiteConfig, SiteError};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

const AGENT_CLASS: &str = "PysmurfMonitor";

/// Site values used when no site file gives them: those of a local OCS set-up
/// (`ocs-local-support`), so the monitor starts with no configuration at all.
const DEFAULT_SITE: [(&str, &str); 4] = [
    ("--site-hub", "ws://127.0.0.1:8001/ws"),
    ("--site-realm", "test_realm"),
    ("--address-root", "observatory"),
    ("--instance-id", "pysmurf-monitor"),
];

/// The pysmurf monitor OCS agent: records the files the pysmurf publisher
/// announces over UDP in the pysmurf_files table (or, with --db-path, in
/// SupRsync's database as socs 0.6 does), and relays session and metadata
/// messages to OCS feeds.
///
/// The database is SupRsync's SQLite file when --db-path is given; otherwise
/// MariaDB when --db-url or any MYSQL_* variable (MYSQL_HOST, MYSQL_PORT,
/// MYSQL_DATABASE, MYSQL_USER, MYSQL_PASSWORD) is given; otherwise the SQLite
/// file pysmurf_files.db in the working directory.
#[derive(Debug, Parser)]
#[command(name = "pysmurf-monitor", version)]
struct Args {
    #[command(flatten)]
    site: SiteArgs,

    /// UDP port the pysmurf publisher sends to.
    #[arg(long, default_value_t = 8200)]
    udp_port: u16,

    /// Address to receive on; the default, ::, is every interface, IPv4 and IPv6.
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    udp_host: IpAddr,

    /// Create the pysmurf_files table if it is missing (True/False, as OCS site files write it).
    #[arg(long, default_value = "True", value_parser = parse_python_bool, action = clap::ArgAction::Set)]
    create_table: bool,

    /// Database URL (mysql://USER@HOST:PORT/DB or sqlite://PATH); overrides MYSQL_*.
    /// Put the password in MYSQL_PASSWORD, not here.
    #[arg(long, value_name = "URL", conflicts_with = "db_path")]
    db_url: Option<String>,

    /// SupRsync's SQLite database (socs 0.6's flag; socs's default is
    /// /data/so/databases/suprsync.db): when given, files are recorded in its supersync_v0
    /// table, as socs 0.6's PysmurfMonitor records them, instead of pysmurf_files_v1.
    #[arg(long, value_name = "PATH")]
    db_path: Option<PathBuf>,

    /// Log every SQL statement run on SupRsync's database, at info (socs 0.6's flag).
    #[arg(long)]
    echo_sql: bool,

    /// Do not start the run process at startup (socs 0.6's flag). Files are recorded
    /// regardless; run(test_mode=True) returns once everything received is processed.
    #[arg(long)]
    test_mode: bool,

    /// Directory of the spool (registrations not yet committed) and the dead-letter file
    /// [default: <working dir>/pysmurf_monitor_spool].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,

    /// Accept datagrams only from these networks (comma-separated CIDRs, e.g.
    /// 127.0.0.0/8,10.10.0.0/16) [default: everyone].
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    allow_from: Vec<IpNet>,

    /// Only hash files under these directories (repeatable); symlinks and '..' are resolved
    /// first [default: anywhere].
    #[arg(long, value_name = "DIR")]
    data_root: Vec<PathBuf>,

    /// Seconds to wait for an announced file that does not exist yet before dead-lettering it.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    file_wait: f64,

    /// Log line format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    log_format: LogFormat,
}

impl HasSiteArgs for Args {
    fn site_args(&self) -> &SiteArgs {
        &self.site
    }
}

/// `True`/`False`/`true`/`false`/`1`/`0`: site files pass Python values.
fn parse_python_bool(value: &str) -> Result<bool, String> {
    match value {
        "True" | "true" | "1" => Ok(true),
        "False" | "false" | "0" => Ok(false),
        other => Err(format!("expected True or False, got {other:?}")),
    }
}

fn main() -> ExitCode {
    let (args, site) = match parse_args() {
        Ok(parsed) => parsed,
        Err(SiteError::Args(err)) => err.exit(),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    // ocs's name, `<log dir>/<address root>.<instance id>.log`, a relative log dir taken from
    // `--working-dir` (from the current directory when there is none; ocs writes no file then).
    let log_file = site.log_file().or_else(|| {
        let dir = site.log_dir.as_ref()?;
        Some(dir.join(format!("{}.log", site.agent_address())))
    });
    if let Err(err) = init_logging(args.log_format, log_file.as_deref()) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, site)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, and also appends to `log_file` when `--log-dir` (or the
/// site file's `log-dir`) is given, as OCS agents do.
/// `RUST_LOG` filters as usual; OCS's `LOGLEVEL` is honoured as a plain level.
fn init_logging(format: LogFormat, log_file: Option<&std::path::Path>) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    use tracing_subscriber::prelude::*;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            let level = std::env::var("LOGLEVEL").unwrap_or_else(|_| "info".to_owned());
            tracing_subscriber::EnvFilter::try_new(level.to_lowercase())
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, ansi) = match log_file {
        Some(path) => {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let file = std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                })
                .map_err(|err| format!("cannot open the log file {}: {err}", path.display()))?;
            (
                BoxMakeWriter::new(std::io::stderr.and(std::sync::Arc::new(file))),
                false,
            )
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    Ok(())
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// OCS's argument rules; with no site file at all, the local defaults fill
/// in what the command line leaves out.
fn parse_args() -> Result<(Args, SiteConfig), SiteError> {
    let argv: Vec<String> = std::env::args().collect();
    match ocs_feed::parse_args_from::<Args, _, _>(AGENT_CLASS, &argv) {
        Err(SiteError::Missing {
            site_file: None, ..
        }) => {
            let mut with_defaults = argv.clone();
            for (flag, value) in DEFAULT_SITE {
                let given = argv
                    .iter()
                    .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
                if !given {
                    with_defaults.extend([flag.to_owned(), value.to_owned()]);
                }
            }
            ocs_feed::parse_args_from::<Args, _, _>(AGENT_CLASS, &with_defaults)
        }
        other => other,
    }
}

async fn run(args: Args, site: SiteConfig) -> Result<()> {
    let working_dir = site
        .working_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    // First: a port another process has is a refusal to start, before anything else.
    let udp_addr = SocketAddr::new(args.udp_host, args.udp_port);
    let socket = bind_udp(udp_addr).with_context(|| format!("cannot listen on UDP {udp_addr}"))?;
    let target = match &args.db_path {
        Some(path) => DbTarget::suprsync(path, args.echo_sql),
        None => DbTarget::resolve(
            args.db_url.as_deref(),
            &working_dir.join("pysmurf_files.db"),
        )?,
    };
    let db = FilesDb::connect_lazy(&target).await?;
    tracing::info!(database = %target, agent = %site.agent_address(), hub = %site.hub_url, "starting pysmurf-monitor");
    if args.create_table {
        // Before the pipeline: files must land even if the router never answers
        // (the `init` task only runs once the agent has joined).
        match db.create_table().await {
            Ok(outcome) => tracing::info!(?outcome, table = db.table(), "table checked"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot create the table yet; will retry on insert")
            }
        }
    }

    let spool_dir = args
        .spool_dir
        .clone()
        .unwrap_or_else(|| working_dir.join("pysmurf_monitor_spool"));
    let options = PipelineOptions {
        wait_policy: WaitPolicy {
            give_up_after: Duration::try_from_secs_f64(args.file_wait)
                .context("--file-wait must be a non-negative number of seconds")?,
            ..WaitPolicy::default()
        },
        data_roots: args.data_root.clone(),
        allow_from: monitor_core::AllowList::new(args.allow_from.clone()),
        create_missing_table: args.create_table,
        ..PipelineOptions::default()
    };

    let agent = Agent::new(AGENT_CLASS, site.clone());
    let recorder = Recorder::this_program(&site.address_root, &site.instance_id);
    let ops = OpsConfig {
        create_table: args.create_table,
        test_mode: args.test_mode,
    };
    let monitor = Monitor::builder(db, recorder, spool_dir.clone())
        .options(options)
        .ocs_agent(&agent, ops)
        .build()
        .await
        .with_context(|| format!("cannot start the pipeline (spool {})", spool_dir.display()))?;
    // The handlers are in place before the line below, which tells a supervisor (or a test)
    // that the monitor is up: a SIGTERM sent at once must stop it cleanly, not kill it.
    let shutdown = CancellationToken::new();
    let term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let usr1 = signal(SignalKind::user_defined1()).context("cannot install the SIGUSR1 handler")?;
    tokio::spawn(cancel_on_signal(term, int, shutdown.clone()));
    tokio::spawn(log_counters_on_sigusr1(usr1, monitor.stats()));
    tracing::info!(udp = %socket.local_addr()?, spool = %spool_dir.display(), "receiving");
    let agent_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = agent.run(shutdown.clone()).await;
            if result.is_err() {
                // e.g. another agent already has this instance-id: stop, as OCS does.
                shutdown.cancel();
            }
            result
        })
    };
    let pipeline = monitor.run(socket, shutdown.clone()).await;
    // A pipeline that stopped on its own stops the agent too, and the process
    // exits non-zero so that systemd or docker restarts it.
    shutdown.cancel();
    let agent = agent_task.await.context("the OCS agent task failed")?;
    pipeline
        .context("the pipeline stopped (what it held is in the spool); exiting to be restarted")?;
    agent.context("OCS agent")?;
    Ok(())
}

/// SIGUSR1 logs every counter (`counters={...}`, as the final log line
/// does): the numbers of `run`'s session data, without a router.
async fn log_counters_on_sigusr1(
    mut usr1: Signal,
    stats: std::sync::Arc<monitor_core::MonitorStats>,
) {
    while usr1.recv().await.is_some() {
        let counters = serde_json::Value::Object(stats.snapshot());
        tracing::info!(%counters, "SIGUSR1: counters");
    }
}

/// SIGINT or SIGTERM cancels `shutdown` (the pipeline then drains and exits 0).
async fn cancel_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
