//! The Prometheus sink: the finding series ([`findings`]), sandwatch's own health
//! ([`health`]), and the exposition `/metrics` serves and `replay --metrics-out` writes.
//!
//! Sits at the end of the flow: engine → transitions → these families → a prometheus-client
//! `Registry`. Every series carries a `shard` label (`0` when unsharded), so that whatever
//! scrapes several replicas can count each shard once: `max by (..., shard)` merges the
//! replicas of one shard (they see the same things), `sum` then adds the shards. The alert
//! rules and the dashboard are written that way.
//!
//! The exposition is OpenMetrics when the scraper asks for it (Prometheus does), else the
//! classic Prometheus text format (curl, promtool, older scrapers).

pub mod findings;
pub mod health;

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use findings::{FindingMetrics, FindingSink};
pub use health::HealthMetrics;

use crate::util::shard::Shard;

/// A registry whose every series carries this replica's `shard` label.
pub fn registry(shard: Shard) -> Registry {
    Registry::with_labels(std::iter::once((
        Cow::Borrowed("shard"),
        Cow::Owned(shard.index.to_string()),
    )))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// `sandwatch_build_info{version} 1`: a gauge, as exporters conventionally expose it (older
/// tools do not parse the OpenMetrics `info` type).
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .set(1);
    registry.register(
        "sandwatch_build_info",
        "The running sandwatch version (always 1); several versions at once mean a rollout is under way",
        info,
    );
}

/// `sandwatch_shard_ordinal` and `sandwatch_total_shards`, so that a mismatch between replicas
/// or a missing shard can be alerted on.
pub fn register_shard(registry: &mut Registry, shard: Shard) {
    let ordinal: Gauge = Gauge::default();
    ordinal.set(i64::from(shard.index));
    let total: Gauge = Gauge::default();
    total.set(i64::from(shard.total));
    registry.register(
        "sandwatch_shard_ordinal",
        "Which shard of the pods and records this replica keeps (0 to sandwatch_total_shards - 1); every ordinal must be served by a replica",
        ordinal,
    );
    registry.register(
        "sandwatch_total_shards",
        "How many shards the pods and records are split into; every replica must agree (set --total-shards alike everywhere)",
        total,
    );
}

/// The two text expositions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`
    Classic,
}

impl Exposition {
    /// What an `Accept` header asks for: OpenMetrics when it names it, else the classic
    /// format (the default of Prometheus exporters for clients that ask for nothing).
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        match accept {
            Some(a)
                if a.split(',').any(|part| {
                    let mut fields = part.split(';').map(str::trim);
                    let media = fields.next().unwrap_or_default();
                    let q_zero = fields.any(|f| f.replace(' ', "") == "q=0");
                    media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
                }) =>
            {
                Exposition::OpenMetrics
            }
            _ => Exposition::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The registry's series in the asked-for format.
pub fn encode(registry: &Registry, format: Exposition) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(match format {
        Exposition::OpenMetrics => text,
        Exposition::Classic => classic(&text),
    })
}

/// The classic text format from prometheus-client's OpenMetrics output (that crate, the
/// Prometheus project's own, writes only OpenMetrics). For the types sandwatch exposes
/// (counter, gauge, histogram) the two differ in three ways only: a counter's `# HELP` and
/// `# TYPE` name its `_total` samples, there is no `# UNIT` line, and no `# EOF`.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match descriptor {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(tag);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(Exposition::negotiate(None), Exposition::Classic);
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Classic);
        assert_eq!(
            Exposition::negotiate(Some("text/plain;version=0.0.4")),
            Exposition::Classic
        );
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Exposition::Classic
        );
    }

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total{shard=\"0\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total{shard=\"0\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
