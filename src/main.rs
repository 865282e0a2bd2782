//! The `sandwatch` command line: parses arguments and wires the pieces of the library.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use sandwatch::app::config::{self, PRESETS};
use sandwatch::app::live;
use sandwatch::app::replay::{self, Input, Stop};
use sandwatch::app::telemetry::{self, LogFilter, LogFormat, Telemetry, Traces};
use sandwatch::remediation::lease::Elector;
use sandwatch::sinks::report::Format;
use sandwatch::sources::ingest::Token;
use sandwatch::util::shard::Shard;
use tracing::Level;

/// Joins agent-sandbox pods with the platform's session and execution records, and reports
/// where they drift apart: agents dead behind live sidecars, executions retried against dead
/// agents, suspended sessions with nothing to resume, sessions active without an agent, and
/// leaked sandbox pods.
#[derive(Parser)]
#[command(name = "sandwatch", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error: `text` for people, `json` for one object per line (every
    /// line then is JSON, a fatal error included). Traces are exported over OTLP when
    /// OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text, global = true, env = "SANDWATCH_LOG_FORMAT")]
    log_format: LogFormatArg,
    /// Which log lines are written: a level (off, error, warn, info, debug, trace) or a filter
    /// of `TARGET=LEVEL` directives (`info,sandwatch=debug,kube=warn`). When given it wins
    /// over RUST_LOG, which is used otherwise (with the same syntax); the default is `info`.
    /// A filter that cannot be read is an error.
    #[arg(
        long,
        value_name = "LEVEL|FILTER",
        global = true,
        env = "SANDWATCH_LOG_LEVEL"
    )]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> LogFormat {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Table,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Watch a live cluster: pods (and the custom resources profiles name) through the
    /// Kubernetes API, joined with the records the profiles configure. Serves /healthz,
    /// /readyz, /api/v1/findings, /metrics and a page at / for people.
    ///
    /// Connects in-cluster with the pod's service account, or from a kubeconfig
    /// ($KUBECONFIG or ~/.kube/config, or --kubeconfig) like kubectl does.
    Run(Box<RunArgs>),
    /// Run the engine over recorded pod watch events and records, in virtual time, and print
    /// every finding transition.
    ///
    /// Each FILE is a sequence of JSON values (one per line or pretty-printed): bare watch
    /// events as `kubectl get pods -A --watch --output-watch-events -o json` prints them, or
    /// envelopes {"at": RFC3339, "watch": EVENT} / {"at": ..., "record": RECORD} / {"at": ...}.
    /// Files are read in order as one stream; `-` reads standard input. Malformed values are
    /// reported on standard error with their position, counted, and skipped.
    ///
    /// Transitions are printed as they happen, and standard output is flushed after each
    /// one unless it is a file: `kubectl get pods -A --watch --output-watch-events -o json |
    /// sandwatch replay --preset NAME -` shows findings live. The table is aligned and printed
    /// at the end when every input is a file; from a pipe or a terminal (`-`) its rows come as
    /// they happen, and a column widens when a wider cell comes. Ctrl-C (SIGINT) ends the input
    /// where it is and prints the summary of what was read.
    ///
    /// Exit status: 0; 1 on an error; 3 with --fail-on-open when findings are open at the
    /// end; 130 when interrupted by Ctrl-C (after the summary).
    Replay {
        #[command(flatten)]
        profiles: ProfileArgs,
        /// Output format: `table` for people, `json` for one object per line plus a summary.
        #[arg(long, value_enum, default_value_t = FormatArg::Table)]
        format: FormatArg,
        /// Exit with status 3 when findings are still open at the end of the input (for CI
        /// and scripts: "did this recording end healthy?").
        #[arg(long)]
        fail_on_open: bool,
        /// Also write the Prometheus text exposition of the final state to this file.
        #[arg(long, value_name = "FILE")]
        metrics_out: Option<PathBuf>,
        /// Backtest the config's remediation actions: run the live controller in the replay's
        /// virtual time (graces, the trust interlock, rate limits, resends, idempotency keys),
        /// call nothing, and print every call it would have made and a summary per action.
        #[arg(long)]
        remediation: bool,
        /// At the end, explain one subject: `pod=NAMESPACE/NAME`, `session=ID`,
        /// `execution=ID` or `sandbox=ID` (add `&profile=NAME` if ids repeat across profiles),
        /// as GET /api/v1/explain answers it live.
        #[arg(long, value_name = "SUBJECT")]
        explain: Option<String>,
        /// Replay files (`-` for standard input).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Validate a config file (or a preset) and explain every error by field and value.
    ///
    /// Warnings (records a scoped profile cannot place, a grace shorter than a source's
    /// staleness, files the config names that are not readable where it runs) are printed but
    /// do not fail the check, unless --strict.
    CheckConfig {
        /// The YAML config file (the same as --config FILE).
        #[arg(value_name = "FILE", conflicts_with_all = ["preset", "config"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        profiles: ProfileArgs,
        /// Fail (exit 1) on warnings too: run it where the daemon runs, with its Secrets mounted.
        #[arg(long)]
        strict: bool,
        /// Print the effective config on standard output instead of `OK`: every profile laid
        /// over its preset, in YAML, naming no preset. check-config accepts it as printed.
        #[arg(long)]
        print: bool,
    },
    /// List the built-in presets, or print one as a whole config file to start from
    /// (`check-config` accepts it as printed).
    Presets {
        /// A preset name to print.
        name: Option<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    profiles: ProfileArgs,
    /// Address of the HTTP endpoints.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8080",
        env = "SANDWATCH_LISTEN"
    )]
    listen: std::net::SocketAddr,
    /// Kubeconfig file to use instead of the in-cluster service account / default kubeconfig.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// How long a source may keep failing before it is reported unsynced (findings that
    /// rest on it then hold) and starts over with a full list.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    stale_after: std::time::Duration,
    /// A file holding the records database URL (a mounted Secret), for every profile with
    /// `records.postgres`; otherwise the URL comes from SANDWATCH_DATABASE_URL.
    #[arg(long, value_name = "FILE", env = "SANDWATCH_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// A file holding the bearer token of POST /api/v1/records (needed when a profile
    /// takes records from the ingest API).
    #[arg(long, value_name = "FILE", env = "SANDWATCH_INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// Largest ingest request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    ingest_max_body: usize,
    /// Remediate only while holding a Lease (several replicas: one remediates). Turn off
    /// only for a single replica without Lease RBAC.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_election: bool,
    /// The Lease's name.
    #[arg(long, value_name = "NAME", default_value = "sandwatch-remediation")]
    lease_name: String,
    /// The Lease's namespace (in a pod: its own namespace).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    lease_namespace: String,
    /// This replica's identity in the Lease (in a pod: its name).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    identity: Option<String>,
    /// Split the pods and records into this many shards (one replica, or replica set, per
    /// shard), as kube-state-metrics does; 1 keeps everything.
    #[arg(long, value_name = "N", default_value_t = 1)]
    total_shards: u32,
    /// The shard this replica keeps: a number from 0, or `auto` for the StatefulSet ordinal
    /// at the end of $POD_NAME.
    #[arg(long, value_name = "I|auto", default_value = "0")]
    shard: String,
    /// Append every input the engine applies (pods, records, source changes) to FILE as
    /// replay values: `sandwatch replay FILE` then gives the transitions this run logged.
    /// Never slows the engine: when the disk falls behind, values are dropped and counted.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// The recording rotates at this size (FILE.1, FILE.2, ...).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    record_max_bytes: u64,
    /// Old recording files kept.
    #[arg(long, value_name = "N", default_value_t = 4)]
    record_keep: usize,
}

/// Which profiles to use. One of the two is needed: there is no default profile.
#[derive(Args)]
#[group(multiple = false)]
struct ProfileArgs {
    /// Use a built-in preset: generic, sandbox-api, ambient, offload-modal (`sandwatch
    /// presets` describes them). This or --config is required.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Use the profiles of a YAML config file. This or --preset is required.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Where the profiles come from.
enum Profiles {
    File(PathBuf),
    Preset(String),
}

impl ProfileArgs {
    /// The config file or preset given, or an error naming the choices.
    fn source(&self) -> anyhow::Result<Profiles> {
        match (&self.config, &self.preset) {
            (Some(path), _) => Ok(Profiles::File(path.clone())),
            (None, Some(name)) => Ok(Profiles::Preset(name.clone())),
            (None, None) => {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
                anyhow::bail!(
                    "no profile given: pass --preset NAME (one of {}; `sandwatch presets` describes them) or --config FILE",
                    names.join(", ")
                )
            }
        }
    }

    /// The whole config: a config file, or a preset with default settings.
    fn load_config(&self) -> anyhow::Result<config::Config> {
        match self.source()? {
            Profiles::File(path) => {
                let text = read_config(&path)?;
                config::load(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))
            }
            Profiles::Preset(name) => config::preset(&name).map_err(|e| anyhow::anyhow!("{e}")),
        }
    }
}

fn read_config(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))
}

fn duration(text: &str) -> Result<std::time::Duration, config::DurationError> {
    config::parse_duration(text)
}

/// A client for the cluster: a given kubeconfig (and context), else in-cluster, else the
/// default kubeconfig, as kube-rs (and kubectl) resolve it.
async fn kube_client(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<kube::Client> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None if options.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig context")?,
        None => Config::infer()
            .await
            .context("finding the cluster: no in-cluster service account and no usable kubeconfig (set --kubeconfig or KUBECONFIG)")?,
    };
    tracing::info!(cluster = %config.cluster_url, "connecting to the Kubernetes API");
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How long `sandwatch run` may take to stop after SIGTERM before it drops what is left.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let format = LogFormat::from(cli.log_format);
    // One TLS provider for every client (kube, the database, remediation, the trace exporter).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = match LogFilter::resolve(cli.log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            telemetry::report(format, Level::ERROR, &e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match Telemetry::init_with(format, filter, Traces::from_env()) {
        Ok(t) => t,
        Err(e) => {
            let e = anyhow::Error::from(e).context("setting up logs and traces");
            telemetry::report(format, Level::ERROR, &describe(&e), &[]);
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli, format) {
        Ok(code) => code,
        Err(e) => {
            telemetry::report(format, Level::ERROR, &describe(&e), &[]);
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// An error and its causes, each told once: a cause whose text its error already shows (a
/// library's `{source}` in its own message) is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(text.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A command line clap rejects: its message, as one JSON line when JSON logs were asked for,
/// else as clap prints it. Help and version go to standard output as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if shown || !json_logs_asked() {
        e.exit();
    }
    let text = e.render().to_string();
    telemetry::report(LogFormat::Json, Level::ERROR, text.trim_end(), &[]);
    ExitCode::from(2)
}

/// Whether the command line (or SANDWATCH_LOG_FORMAT) asks for JSON logs, read without clap.
fn json_logs_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.iter().enumerate().rev().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--log-format=") {
            Some(v.to_string())
        } else if a == "--log-format" {
            args.get(i + 1).cloned()
        } else {
            None
        }
    });
    flag.or_else(|| std::env::var("SANDWATCH_LOG_FORMAT").ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("json"))
}

fn run(cli: Cli, format: LogFormat) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_daemon(*args),
        Command::Replay {
            profiles,
            format: report,
            fail_on_open,
            metrics_out,
            remediation,
            explain,
            files,
        } => {
            let explain = explain
                .map(|q| sandwatch::core::explain::Query::parse_arg(&q))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--explain: {e}"))?;
            let extras = replay::Extras {
                remediation,
                explain,
            };
            replay_files(
                &profiles,
                report.into(),
                fail_on_open,
                metrics_out,
                extras,
                files,
            )
        }
        Command::CheckConfig {
            file,
            profiles,
            strict,
            print,
        } => {
            let source = match file {
                Some(file) => Profiles::File(file),
                None => profiles.source()?,
            };
            check_config(source, strict, print, format)
        }
        Command::Presets { name } => presets(name.as_deref()),
    }
}

/// `sandwatch run`: the daemon, until SIGTERM or SIGINT.
fn run_daemon(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        profiles,
        listen,
        kubeconfig,
        context,
        stale_after,
        database_url_file,
        ingest_token_file,
        ingest_max_body,
        leader_election,
        lease_name,
        lease_namespace,
        identity,
        total_shards,
        shard,
        record,
        record_max_bytes,
        record_keep,
    } = args;
    let record = record.map(|path| live::Recording {
        path,
        max_bytes: record_max_bytes,
        keep: record_keep,
    });
    let shard = shard_of(&shard, total_shards)?;
    // Each shard remediates its own findings: one Lease per shard.
    let lease_name = if shard.total > 1 {
        format!("{lease_name}-{}", shard.index)
    } else {
        lease_name
    };
    let config = profiles.load_config()?;
    for w in config::warnings(&config) {
        tracing::warn!(field = %w.field, "{}", w.message);
    }
    let identity = identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let leader_election =
        leader_election.then(|| Elector::new(&lease_name, &lease_namespace, &identity));
    let ingest_token = ingest_token_file
        .map(Token::file)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let settings = live::Settings {
            stale_after,
            database_url_file,
            ingest_token,
            ingest_max_body,
            leader_election,
            shard,
            record,
            ..live::Settings::new(config, listen)
        };
        // A cluster only for what uses one: a profile of records alone runs without.
        let client = match settings.cluster_use() {
            Some(why) => Some(
                kube_client(kubeconfig, context)
                    .await
                    .with_context(|| format!("{why}, which needs the Kubernetes API"))?,
            ),
            None => None,
        };
        let daemon = live::Daemon::start(settings, client).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        // Well inside the pod's termination grace (30 s): calls under way finish, the
        // Lease is released if it can be, and whatever hangs is dropped.
        daemon.shutdown_within(SHUTDOWN_DEADLINE).await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    });
    // Blocking work still running (a DNS lookup, a stuck file read) does not hold the
    // exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// The shard this replica keeps, from `--shard` and `--total-shards`.
fn shard_of(shard: &str, total: u32) -> anyhow::Result<Shard> {
    let index = match shard {
        "auto" => {
            let pod = std::env::var("POD_NAME").context("--shard auto needs $POD_NAME")?;
            Shard::ordinal(&pod).map_err(|e| anyhow::anyhow!("--shard auto: {e}"))?
        }
        n => n
            .parse()
            .map_err(|_| anyhow::anyhow!("--shard {n:?} is neither a number nor `auto`"))?,
    };
    Shard::new(index, total).map_err(|e| anyhow::anyhow!(e))
}

/// Exit status of `replay --fail-on-open` when findings are open at the end.
const EXIT_OPEN_FINDINGS: u8 = 3;
/// Exit status of a replay ended by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// `sandwatch replay`: the files in order as one stream, the report on standard output.
fn replay_files(
    profiles: &ProfileArgs,
    format: Format,
    fail_on_open: bool,
    metrics_out: Option<PathBuf>,
    extras: replay::Extras,
    files: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let config = profiles.load_config()?;
    // Live input (a pipe from `kubectl get --watch`, a terminal): rows as they happen.
    let live = files.iter().any(|f| f == "-") && !is_file(io::stdin());
    let format = match format {
        Format::Table if live => Format::StreamedTable,
        f => f,
    };
    let stop = Stop::new();
    stop_on_interrupt(&stop)?;
    let mut inputs = Vec::new();
    for f in files {
        let reader: Box<dyn io::Read + Send> = if f == "-" {
            Box::new(stop.threaded(io::stdin()))
        } else {
            let file = File::open(&f).with_context(|| format!("opening {f}"))?;
            Box::new(stop.reader(file))
        };
        inputs.push(Input { name: f, reader });
    }
    // Standard output is line-buffered: each transition is out as soon as it happens. A file
    // gets a larger buffer.
    let out: Box<dyn io::Write + Send> = if is_file(io::stdout()) {
        Box::new(io::BufWriter::new(io::stdout()))
    } else {
        Box::new(io::stdout())
    };
    let outcome = replay::run_with(&config, inputs, format, out, extras)?;
    if let Some(path) = metrics_out {
        std::fs::write(&path, outcome.metrics)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if stop.is_stopped() {
        tracing::info!("interrupted: the summary covers the input read until then");
        ExitCode::from(EXIT_INTERRUPTED)
    } else if fail_on_open && outcome.open > 0 {
        ExitCode::from(EXIT_OPEN_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}

/// The first SIGINT stops the replay (its summary is still printed); a second one exits at
/// once.
fn stop_on_interrupt(stop: &Stop) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the signal handler")?;
        // Registered now, before any input is read.
        let mut interrupts = {
            let _in = runtime.enter();
            signal(SignalKind::interrupt()).context("catching SIGINT")?
        };
        let stop = stop.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                interrupts.recv().await;
                stop.stop();
                interrupts.recv().await;
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            })
        });
    }
    #[cfg(not(unix))]
    let _ = stop;
    Ok(())
}

/// Whether a standard stream is a regular file (not a terminal or a pipe).
#[cfg(unix)]
fn is_file(stream: impl std::os::fd::AsFd) -> bool {
    stream
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file())
}

#[cfg(not(unix))]
fn is_file<T>(_: T) -> bool {
    false
}

/// `sandwatch check-config`: every error by field and value, then the warnings; with
/// `print`, the effective config.
fn check_config(
    source: Profiles,
    strict: bool,
    print: bool,
    log: LogFormat,
) -> anyhow::Result<ExitCode> {
    let (label, loaded, effective) = match &source {
        Profiles::File(path) => {
            let text = read_config(path)?;
            let loaded = config::load(&text);
            let effective = print.then(|| config::effective(&text));
            (path.display().to_string(), loaded, effective)
        }
        Profiles::Preset(name) => (
            format!("preset {name}"),
            config::preset(name),
            print.then(|| config::effective_preset(name)),
        ),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            problems(log, &label, Level::ERROR, "error", &errors.0);
            return Ok(ExitCode::FAILURE);
        }
    };
    match effective {
        Some(text) => print!("{}", text.map_err(|e| anyhow::anyhow!("{e}"))?),
        None => {
            let profiles = &config.profiles;
            println!(
                "{label}: OK, {} profile(s): {}",
                profiles.len(),
                profiles.names().join(", ")
            );
        }
    }
    let warnings = config::warnings(&config);
    problems(log, &label, Level::WARN, "warning", &warnings);
    Ok(if strict && !warnings.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Config errors or warnings on standard error: a count and one indented line each as text,
/// one JSON object each (with `file` and `field`) as JSON.
fn problems(log: LogFormat, label: &str, level: Level, what: &str, list: &[config::ConfigError]) {
    if list.is_empty() {
        return;
    }
    match log {
        LogFormat::Text => {
            eprintln!("{label}: {} {what}(s)", list.len());
            for p in list {
                eprintln!("  {p}");
            }
        }
        LogFormat::Json => {
            for p in list {
                let fields = [("file", label), ("field", p.field.as_str())];
                telemetry::report(log, level, &p.to_string(), &fields);
            }
        }
    }
}

/// `sandwatch presets [NAME]`: the list, or one preset's text.
fn presets(name: Option<&str>) -> anyhow::Result<ExitCode> {
    let Some(name) = name else {
        for (name, about, _) in PRESETS {
            println!("{name:<14} {about}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let text = config::preset_file(name)
        .with_context(|| format!("unknown preset {name:?}; `sandwatch presets` lists them"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
