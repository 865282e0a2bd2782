//! Text from outside, made safe to show: bounded in length and with control characters
//! escaped, so that a container's termination reason, a record id or an error body can
//! neither flood a log nor forge a line in it (a newline in a reason once forged a
//! "finding resolved" line in text logs).

use std::borrow::Cow;
use std::fmt::Write as _;

/// At most this many characters of one outside string in a log line or table cell.
pub const MAX: usize = 512;

/// `s` with control characters escaped (`\n`, `\u{1b}`) and cut to [`MAX`] characters,
/// saying how much was cut.
pub fn clip(s: &str) -> Cow<'_, str> {
    let plain = s.chars().take(MAX + 1).all(|c| !c.is_control()) && s.len() <= MAX;
    if plain {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(MAX * 2));
    for (shown, c) in s.chars().enumerate() {
        if shown == MAX {
            let rest = s.chars().count() - shown;
            let _ = write!(out, "…({rest} more characters)");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(clip("OOMKilled"), "OOMKilled");
        assert_eq!(
            clip("x\nINFO finding resolved"),
            "x\\nINFO finding resolved"
        );
        assert_eq!(clip("\u{1b}[31mred"), "\\u{1b}[31mred");
        let long = "a".repeat(2000);
        let c = clip(&long);
        assert!(c.starts_with(&"a".repeat(MAX)));
        assert!(c.ends_with("…(1488 more characters)"), "{c}");
    }
}
