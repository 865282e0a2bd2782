//! Instants on the engine's clock.
//!
//! The engine never reads the wall clock itself: every change arrives with the time it
//! happened at. Live sources stamp changes with wall time; the replay source stamps them with
//! the time carried by the recorded events, so a recorded day replays in seconds and always
//! gives the same findings. `Ts` is a plain count of milliseconds since the Unix epoch, small
//! enough to keep one per container in the per-pod projection.

use std::fmt;
use std::time::Duration;

/// A timestamp from outside that sandwatch will not use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{text:?} is not an RFC 3339 timestamp ({reason})")]
    Syntax { text: String, reason: String },
    #[error("{shown} is before 1970: not a plausible time")]
    Before1970 { shown: String },
    #[error(
        "{shown} is after 2100: a far-future date is taken as a sentinel or a corrupt value, not a time"
    )]
    After2100 { shown: String },
}

/// Milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

impl Ts {
    /// The current wall-clock time, for live sources.
    pub fn now() -> Ts {
        Ts(jiff::Timestamp::now().as_millisecond())
    }

    /// The earliest and latest instants accepted from outside: 1970-01-01T00:00:00Z, and
    /// 2100-01-01T00:00:00Z (a later date is a sentinel such as 9999-12-31 or a corrupt
    /// value; taken as a time it would move a replay's clock decades ahead, or keep a grace
    /// period from ever ending).
    pub const EARLIEST: Ts = Ts(0);
    pub const LATEST: Ts = Ts(4_102_444_800_000);

    /// The one timestamp parser for everything read from outside (watch events, records,
    /// replay files, the ingest API): RFC 3339 with an offset, as Kubernetes writes it
    /// (`2026-05-01T10:00:00Z`, `2026-05-01T10:00:08.123456Z`) or PostgreSQL prints it
    /// (`2026-05-01 10:00:00+00`), between [`Ts::EARLIEST`] and [`Ts::LATEST`].
    pub fn parse(text: &str) -> Result<Ts, TimeError> {
        let t = match Ts::parse_kubernetes(text.as_bytes()) {
            Some(t) => t,
            None => text
                .trim()
                .parse::<jiff::Timestamp>()
                .map(|t| Ts(t.as_millisecond()))
                .map_err(|e| TimeError::Syntax {
                    text: text.to_string(),
                    reason: e.to_string(),
                })?,
        };
        Ts::plausible(t, || format!("{text:?}"))
    }

    /// Milliseconds since the epoch from outside (a database column), within the same bounds.
    pub fn from_millis(ms: i64) -> Result<Ts, TimeError> {
        Ts::plausible(Ts(ms), || Ts(ms).to_string())
    }

    /// `t` if it is between the bounds; else an error showing it as `shown` gives it.
    fn plausible(t: Ts, shown: impl Fn() -> String) -> Result<Ts, TimeError> {
        if t < Ts::EARLIEST {
            Err(TimeError::Before1970 { shown: shown() })
        } else if t >= Ts::LATEST {
            Err(TimeError::After2100 { shown: shown() })
        } else {
            Ok(t)
        }
    }

    /// The exact form the API server writes (`2026-05-01T10:00:00Z`), without a general
    /// parser: most timestamps in a watch stream are in it. `None` for anything else.
    fn parse_kubernetes(b: &[u8]) -> Option<Ts> {
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            b[r].iter().try_fold(0i64, |n, c| {
                c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
            })
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let date = jiff::civil::Date::new(y as i16, mo as i8, d as i8).ok()?;
        let days = date
            .since(jiff::civil::Date::constant(1970, 1, 1))
            .ok()?
            .get_days();
        Some(Ts(
            (i64::from(days) * 86_400 + h * 3600 + mi * 60 + s) * 1000
        ))
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
    /// RFC 3339 in UTC, with milliseconds only when they are not zero. Years 0000-9999 are
    /// printed here (every report line and log line prints several); others go through jiff.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            let len = if self.0 % 1000 == 0 { 20 } else { 24 };
            // Only ASCII digits and separators were written.
            return f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?);
        }
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(t) if self.0 % 1000 == 0 => write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
            Ok(t) => write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")),
            Err(_) => write!(f, "@{}ms", self.0),
        }
    }
}

impl Ts {
    /// `YYYY-MM-DDTHH:MM:SSZ` in the first 20 bytes, and `YYYY-MM-DDTHH:MM:SS.mmmZ` in all 24,
    /// for years 0000 to 9999 that jiff prints (the proleptic Gregorian calendar, as jiff and RFC 3339 count).
    fn rfc3339(self) -> Option<[u8; 24]> {
        const DAY: i64 = 86_400_000;
        // From 0000-01-01 to the last instant jiff prints (late on 9999-12-30).
        if !(-62_167_219_200_000..=253_402_207_200_000).contains(&self.0) {
            return None;
        }
        let days = self.0.div_euclid(DAY);
        let ms = self.0.rem_euclid(DAY);
        // Days to a civil date (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, ms / 3_600_000);
        put(14, 2, ms / 60_000 % 60);
        put(17, 2, ms / 1000 % 60);
        put(20, 3, ms % 1000);
        if ms % 1000 == 0 {
            out[19] = b'Z';
        }
        Some(out)
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

    /// The printer against jiff's, over the years it prints and across the edges.
    #[test]
    fn prints_what_jiff_prints() {
        let jiff = |ms: i64| {
            let t = jiff::Timestamp::from_millisecond(ms).unwrap();
            if ms % 1000 == 0 {
                t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            }
        };
        let first = -62_167_219_200_000; // 0000-01-01T00:00:00Z
        let end = 253_402_207_200_001; // just past the last instant jiff prints
        let mut edges = vec![first, end - 1, 0, -1, 1, 951_782_400_000, 4_102_444_800_000];
        // A pseudo-random walk over the whole range, and every day around a few leap years.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            edges.push(first + (x % (end - first) as u64) as i64);
        }
        for year_start in [951_782_400_000i64, 4_107_542_400_000, -2_203_891_200_000] {
            for d in -400..400 {
                edges.push(year_start + d * 86_400_000 + d * 1_001);
            }
        }
        for ms in edges {
            assert_eq!(Ts(ms).to_string(), jiff(ms), "{ms}");
        }
        // Outside those years, jiff prints.
        assert_eq!(Ts(first - 1).to_string(), jiff(first - 1));
        assert_eq!(Ts(end).to_string(), format!("@{end}ms"));
    }

    #[test]
    fn parses_kubernetes_and_postgres_forms() {
        let a = Ts::parse("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(a.to_string(), "2026-05-01T10:00:00Z");
        let b = Ts::parse("2026-05-01T10:00:08.123456Z").unwrap();
        assert_eq!(b.0 - a.0, 8123);
        assert_eq!(b.to_string(), "2026-05-01T10:00:08.123Z");
        let c = Ts::parse("2026-05-01 12:00:00+02").unwrap();
        assert_eq!(c, a);
        assert!(
            Ts::parse("yesterday")
                .unwrap_err()
                .to_string()
                .contains("yesterday")
        );
        // The fast path agrees with the general parser, and rejects what it should.
        for t in [
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "2026-12-31T00:00:01Z",
            "1999-07-20T20:17:40Z",
        ] {
            let general = t.parse::<jiff::Timestamp>().unwrap().as_millisecond();
            assert_eq!(Ts::parse_kubernetes(t.as_bytes()), Some(Ts(general)), "{t}");
        }
        assert_eq!(Ts::parse_kubernetes(b"2026-02-30T00:00:00Z"), None);
        assert!(Ts::parse("2026-02-30T00:00:00Z").is_err());
        // Far-future sentinels and times before the epoch are not times.
        for bad in [
            "9999-12-31T23:59:59Z",
            "2100-01-01T00:00:00Z",
            "1969-07-20T20:17:40Z",
        ] {
            let e = Ts::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("plausible") || e.contains("far-future"),
                "{e}"
            );
        }
        assert!(Ts::parse("2099-12-31T23:59:59Z").is_ok());
        assert!(Ts::from_millis(Ts::LATEST.0).is_err());
    }
}
