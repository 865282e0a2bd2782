//! Instants on the engine's clock.
//!
//! The engine never reads the wall clock itself: every change arrives with the time it
//! happened at. Live sources stamp changes with wall time; the replay source stamps them with
//! the time carried by the recorded events, so a recorded day replays in seconds and always
//! gives the same findings. `Ts` is a plain count of milliseconds since the Unix epoch, small
//! enough to keep one per container in the per-pod projection.

use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

impl Ts {
    /// The current wall-clock time, for live sources.
    pub fn now() -> Ts {
        Ts(jiff::Timestamp::now().as_millisecond())
    }

    /// Parses an RFC 3339 timestamp such as Kubernetes writes (`2026-05-01T10:00:00Z`,
    /// `2026-05-01T10:00:08.123456Z`) or PostgreSQL prints (`2026-05-01 10:00:00+00`).
    pub fn parse(text: &str) -> Result<Ts, String> {
        text.trim()
            .parse::<jiff::Timestamp>()
            .map(|t| Ts(t.as_millisecond()))
            .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp ({e})"))
    }

    pub fn from_secs(secs: i64) -> Ts {
        Ts(secs.saturating_mul(1000))
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub fn saturating_add(self, d: Duration) -> Ts {
        Ts(self
            .0
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Seconds from `earlier` to `self`, never negative.
    pub fn secs_since(self, earlier: Ts) -> f64 {
        (self.0.saturating_sub(earlier.0)).max(0) as f64 / 1000.0
    }
}

impl fmt::Display for Ts {
    /// RFC 3339 in UTC, with milliseconds only when they are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(t) if self.0 % 1000 == 0 => write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
            Ok(t) => write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")),
            Err(_) => write!(f, "@{}ms", self.0),
        }
    }
}

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Decodes an RFC 3339 string without allocating; the error names the value.
impl<'de> serde::Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ts, E> {
                Ts::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_and_postgres_forms() {
        let a = Ts::parse("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(a.to_string(), "2026-05-01T10:00:00Z");
        let b = Ts::parse("2026-05-01T10:00:08.123456Z").unwrap();
        assert_eq!(b.0 - a.0, 8123);
        assert_eq!(b.to_string(), "2026-05-01T10:00:08.123Z");
        let c = Ts::parse("2026-05-01 12:00:00+02").unwrap();
        assert_eq!(c, a);
        assert!(Ts::parse("yesterday").unwrap_err().contains("yesterday"));
    }
}
