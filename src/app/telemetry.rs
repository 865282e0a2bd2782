//! Logs and traces.
//!
//! Logs go through `tracing`: human-readable by default, one JSON object per line with
//! `--log-format json`. Every finding transition and every remediation is one structured event
//! with its identities (see `sinks::log` and `remediation`).
//!
//! Traces: when an OTLP endpoint is configured (the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), sandwatch's spans are exported over OTLP/HTTP
//! (protobuf) by `tracing-opentelemetry`: a `source.sync` span per initial list or full load,
//! a `finding` span from a finding's opening to its resolution, and a `remediation` span per
//! attempt, a child of its finding's span.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
}

/// Keeps the trace exporter alive; `shutdown` flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: the log layer, and the trace layer when traces are on.
    /// Call it before starting an async runtime (the exporter has its own thread).
    pub fn init(format: LogFormat, traces: Traces) -> Result<Telemetry, TelemetryError> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
