//! Logs and traces.
//!
//! Logs go through `tracing`: human-readable by default, one JSON object per line with
//! `--log-format json`. Every finding transition and every remediation is one structured event
//! with its identities (see `sinks::log` and `remediation`).
//!
//! Which lines are written: `--log-level` (a level or a filter) when given, else `RUST_LOG`,
//! else `info`; a filter that cannot be read is an error naming it ([`LogFilter`]). What a
//! command reports itself (a fatal error, `check-config`'s findings) is written by
//! [`report`], in the same format and never filtered.
//!
//! Traces: when an OTLP endpoint is configured (the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), sandwatch's spans are exported over OTLP/HTTP
//! (protobuf) by `tracing-opentelemetry`: a `source.sync` span per initial list or full load,
//! a `finding` span from a finding's opening to its resolution, and a `remediation` span per
//! attempt, a child of its finding's span.

use std::io::Write;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which log lines are written.
#[derive(Debug)]
pub struct LogFilter(EnvFilter);

/// A log filter that cannot be read, and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{origin} {text:?}: {reason}")]
pub struct FilterError {
    /// `--log-level` or `RUST_LOG`.
    pub origin: &'static str,
    pub text: String,
    pub reason: String,
}

/// The levels, as `--log-level` takes them.
const LEVELS: &str = "off, error, warn, info, debug, trace";

impl LogFilter {
    /// `flag` (the `--log-level` value) when given, else `RUST_LOG` when set, else `info`.
    pub fn resolve(flag: Option<&str>) -> Result<LogFilter, FilterError> {
        if let Some(text) = flag {
            return LogFilter::level(text);
        }
        match std::env::var("RUST_LOG") {
            Ok(text) if !text.trim().is_empty() => LogFilter::env(&text),
            Err(std::env::VarError::NotUnicode(_)) => Err(FilterError {
                origin: "RUST_LOG",
                text: String::new(),
                reason: "is not UTF-8".into(),
            }),
            _ => Ok(LogFilter(EnvFilter::new("info"))),
        }
    }

    /// A `--log-level`: a level, or a filter whose every directive is a level or
    /// `TARGET=LEVEL` (`info,sandwatch=debug`). A bare word that is not a level is an error
    /// here (in `RUST_LOG` it would select a target).
    pub fn level(text: &str) -> Result<LogFilter, FilterError> {
        let error = |reason: String| FilterError {
            origin: "--log-level",
            text: text.to_string(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(error(format!("is empty; give a level ({LEVELS})")));
        }
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
                return Err(error(format!(
                    "{directive:?} is neither a level ({LEVELS}) nor TARGET=LEVEL"
                )));
            }
        }
        parse(text).map_err(error)
    }

    /// A `RUST_LOG` value, with `tracing-subscriber`'s `EnvFilter` syntax.
    pub fn env(text: &str) -> Result<LogFilter, FilterError> {
        parse(text).map_err(|reason| FilterError {
            origin: "RUST_LOG",
            text: text.to_string(),
            reason,
        })
    }
}

fn parse(text: &str) -> Result<LogFilter, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    EnvFilter::builder()
        .parse(directives.join(","))
        .map(LogFilter)
        .map_err(|e| format!("not a log filter ({e}); e.g. info,sandwatch=debug"))
}

/// One line a command reports on standard error (not a log event: no filter hides it), in
/// the log format: `sandwatch: MESSAGE` as text, one JSON object shaped like a log line
/// (`timestamp`, `level`, `message`, the fields, `target`) as JSON.
pub fn report(format: LogFormat, level: Level, message: &str, fields: &[(&str, &str)]) {
    let mut err = std::io::stderr().lock();
    let _ = match format {
        LogFormat::Text => writeln!(err, "sandwatch: {message}"),
        LogFormat::Json => {
            let line = ReportLine {
                timestamp: format!("{:.6}", jiff::Timestamp::now()),
                level: level.as_str(),
                message,
                fields: fields.iter().copied().collect(),
                target: "sandwatch",
            };
            match serde_json::to_string(&line) {
                Ok(json) => writeln!(err, "{json}"),
                Err(_) => writeln!(err, "sandwatch: {message}"),
            }
        }
    };
}

/// A [`report`] line in JSON, its keys in the order of the log lines'.
#[derive(serde::Serialize)]
struct ReportLine<'a> {
    timestamp: String,
    level: &'a str,
    message: &'a str,
    #[serde(flatten)]
    fields: std::collections::BTreeMap<&'a str, &'a str>,
    target: &'a str,
}

/// Where traces go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traces {
    Off,
    /// The standard OTEL_EXPORTER_OTLP_* environment variables say where.
    FromEnvironment,
    /// This OTLP/HTTP traces URL (…/v1/traces).
    To(String),
}

impl Traces {
    /// On when the standard environment variables name an endpoint.
    pub fn from_env() -> Traces {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        if set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Traces::FromEnvironment
        } else {
            Traces::Off
        }
    }
}

/// Why logs and traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Keeps the trace exporter alive; `shutdown` flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: the log layer, and the trace layer when traces are on.
    /// Call it before starting an async runtime (the exporter has its own thread).
    /// Lines are filtered by `RUST_LOG`, else at `info`.
    pub fn init(format: LogFormat, traces: Traces) -> Result<Telemetry, TelemetryError> {
        Telemetry::init_with(format, LogFilter::resolve(None)?, traces)
    }

    /// [`Telemetry::init`] with the filter given.
    pub fn init_with(
        format: LogFormat,
        filter: LogFilter,
        traces: Traces,
    ) -> Result<Telemetry, TelemetryError> {
        let filter = filter.0;
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let logs = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr)
                .boxed(),
        };
        let provider = match &traces {
            Traces::Off => None,
            Traces::FromEnvironment | Traces::To(_) => {
                let mut builder = SpanExporter::builder().with_http();
                if let Traces::To(url) = &traces {
                    builder = builder.with_endpoint(url.clone());
                }
                let exporter = builder.build()?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            Resource::builder()
                                .with_service_name("sandwatch")
                                .with_attribute(opentelemetry::KeyValue::new(
                                    "service.version",
                                    env!("CARGO_PKG_VERSION"),
                                ))
                                .build(),
                        )
                        .build(),
                )
            }
        };
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("sandwatch"))
                // sandwatch's own spans only, not its libraries'.
                .with_filter(Targets::new().with_target("sandwatch", Level::INFO))
        });
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(otel)
            .try_init()?;
        Ok(Telemetry { provider })
    }

    /// Exports what is buffered now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}
