//! What every component's config validation shares: errors that name the field path and the
//! value, a collector that reports every problem at once, and durations as people write them.
//!
//! Each component (a source, remediation, the profiles) parses its own part of the YAML into a
//! spec of optional fields and validates it into settings with a [`Validator`]: a config with
//! any error never starts the engine, and `check-config` lists all of them.

use std::fmt;
use std::time::Duration;

/// One problem in a config, with the field path and the value that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors under a field path (`profiles[1]`, `remediation`).
pub struct Validator<'a> {
    at: String,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub fn new(at: impl Into<String>, errors: &'a mut Vec<ConfigError>) -> Validator<'a> {
        Validator {
            at: at.into(),
            errors,
        }
    }

    /// A validator for a part below this one (`records.postgres` under `profiles[0]`).
    pub fn at(&mut self, part: &str) -> Validator<'_> {
        Validator {
            at: format!("{}.{part}", self.at),
            errors: self.errors,
        }
    }

    pub fn err(&mut self, field: &str, message: impl Into<String>) {
        let field = if field.is_empty() {
            self.at.clone()
        } else {
            format!("{}.{field}", self.at)
        };
        self.errors.push(ConfigError {
            field,
            message: message.into(),
        });
    }

    /// How many errors have been found so far (to tell whether a part added some).
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// A duration field: `default` when absent, an error naming the value when unreadable.
    pub fn duration(&mut self, field: &str, text: Option<String>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.err(field, e.to_string());
                default
            }
        }
    }
}

/// A duration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration (write e.g. 90s, 10m, 1h30m)")]
    Syntax(String),
    #[error("{0:?} is negative; durations must be zero or more")]
    Negative(String),
}

/// Parses a duration such as `90s`, `10m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let d: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|_| DurationError::Syntax(text.to_string()))?;
    Duration::try_from(d).map_err(|_| DurationError::Negative(text.to_string()))
}

/// Whether `s` is a DNS label (a namespace or a profile name).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
