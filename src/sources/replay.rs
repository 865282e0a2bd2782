//! The replay source: recorded pod watch events and records, in virtual time.
//!
//! A replay file is a sequence of JSON values (one per line, or pretty-printed over many
//! lines, as `kubectl get pods -A --watch --output-watch-events -o json` prints them), each:
//! - a bare watch event `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}`, whose time
//!   is the newest timestamp inside the object;
//! - an envelope `{"at": "<RFC3339>", "watch": <watch event>}` or `{"at": ..., "record": <record>}`;
//! - `{"at": ...}` alone, which only advances the clock.
//!
//! The clock never runs backwards: a value older than the previous one happens at the
//! previous one's time. The input is read in blocks and split into values by a small scanner
//! before any value is parsed, so one malformed value (bad JSON, wrong types, a pod without
//! metadata, an unknown record kind) is reported with its position and skipped, and the
//! replay goes on. In a replay the file is the whole truth: each feed (pods, sessions,
//! executions, sandboxes, resume targets) counts as synced from its first value.

use std::io::Read;

use serde::Deserialize;

use crate::engine::{Change, Engine};
use crate::finding::Transition;
use crate::kubernetes::Object;
use crate::profile::Profiles;
use crate::record::{InputError, RecordDoc};
use crate::sources::{WatchType, object_change};
use crate::time::Ts;
use crate::world::{Feed, SourceStatus};

/// Where a value starts in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// 1-based count of values in the input.
    pub value: u64,
    /// 1-based line of the value's first byte.
    pub line: u64,
}

/// A value that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub position: Position,
    pub error: InputError,
}

/// Splits a byte stream into top-level JSON values without parsing them.
///
/// It tracks strings, escapes and bracket depth. Because JSON strings cannot hold a raw
/// newline, and because a top-level value's opening brace is the only one at the start of a
/// line in both one-per-line and pretty-printed output, a value that is cut short is closed
/// at the next line that starts with `{`, so one broken value never swallows the rest.
pub struct Splitter<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    line: u64,
    values: u64,
    eof: bool,
    /// Bytes to ask for per read: grows from 64 KiB to 4 MiB, so small inputs stay cheap.
    block: usize,
}

const MAX_BLOCK: usize = 4 << 20;

impl<R: Read> Splitter<R> {
    pub fn new(reader: R) -> Splitter<R> {
        Splitter {
            reader,
            buf: Vec::new(),
            pos: 0,
            line: 1,
            values: 0,
            eof: false,
            block: 64 << 10,
        }
    }

    /// Reads more input; returns false at the end.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        let want = self.block.max(self.buf.len());
        self.block = (self.block * 2).min(MAX_BLOCK);
        self.buf.resize(start + want, 0);
        let n = loop {
            match self.reader.read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// Calls `f` with each value's bytes and position, in order.
    pub fn for_each(&mut self, mut f: impl FnMut(&[u8], Position)) -> std::io::Result<()> {
        loop {
            match self.scan() {
                Some((start, end, line)) => {
                    self.values += 1;
                    let position = Position {
                        value: self.values,
                        line,
                    };
                    f(&self.buf[start..end], position);
                }
                None => {
                    if !self.fill()? {
                        // Whatever is left at the end is a value cut short.
                        let rest = &self.buf[self.pos..];
                        if rest.iter().any(|b| !b.is_ascii_whitespace()) {
                            self.values += 1;
                            let start = self.pos
                                + rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                            let line = self.line
                                + self.buf[self.pos..start]
                                    .iter()
                                    .filter(|b| **b == b'\n')
                                    .count() as u64;
                            let position = Position {
                                value: self.values,
                                line,
                            };
                            self.pos = self.buf.len();
                            f(&self.buf[start..], position);
                        }
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Finds the next complete value in the buffer: (start, end, line). Consumes it.
    /// Returns `None` (consuming nothing) if the buffer ends inside a value.
    fn scan(&mut self) -> Option<(usize, usize, u64)> {
        let buf = &self.buf;
        let mut i = self.pos;
        let mut line = self.line;
        // Skip whitespace between values.
        while i < buf.len() && buf[i].is_ascii_whitespace() {
            if buf[i] == b'\n' {
                line += 1;
            }
            i += 1;
        }
        if i >= buf.len() {
            self.pos = i;
            self.line = line;
            return None;
        }
        let start = i;
        let start_line = line;
        if buf[i] != b'{' && buf[i] != b'[' {
            // Not an object: take the rest of the line as one bad value.
            while i < buf.len() && buf[i] != b'\n' {
                i += 1;
            }
            if i == buf.len() && !self.eof {
                return None;
            }
            self.pos = i;
            self.line = line;
            return Some((start, i, start_line));
        }
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escape = false;
        while i < buf.len() {
            let b = buf[i];
            if in_string {
                if escape {
                    escape = false;
                } else if b == b'\\' {
                    escape = true;
                } else if b == b'"' {
                    in_string = false;
                } else if b == b'\n' {
                    // A raw newline cannot be inside a JSON string: the value is broken.
                    in_string = false;
                    line += 1;
                }
                i += 1;
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    if depth > 0 && b == b'{' && i > start && buf[i - 1] == b'\n' {
                        // A brace at the start of a line inside a value: the value before it
                        // was cut short, and a new one begins here.
                        self.pos = i;
                        self.line = line;
                        return Some((start, i, start_line));
                    }
                    depth += 1;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.pos = i + 1;
                        self.line = line;
                        return Some((start, i + 1, start_line));
                    }
                }
                b'\n' => line += 1,
                _ => {}
            }
            i += 1;
        }
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Object,
}

/// One value of a replay file: a bare watch event, or an envelope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(rename = "type")]
    kind: Option<String>,
    object: Option<Object>,
    at: Option<Ts>,
    watch: Option<WatchEvent>,
    record: Option<RecordDoc>,
}

/// What one value means.
#[derive(Debug)]
pub enum Decoded {
    Watch {
        at: Option<Ts>,
        kind: WatchType,
        object: Object,
    },
    Record {
        at: Option<Ts>,
        doc: RecordDoc,
    },
    Tick(Ts),
    /// A watch event the replay has no use for (BOOKMARK).
    Skip,
}

/// Decodes one value. Errors name the field path and the reason.
pub fn decode(bytes: &[u8]) -> Result<Decoded, InputError> {
    let entry: Entry = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => return Err(explain(bytes, e)),
    };
    let shape_error = || {
        InputError::new(
            "invalid_value",
            "not a watch event ({\"type\", \"object\"}) or an envelope ({\"at\", \"watch\" | \"record\"})",
        )
    };
    let watch_event = |kind: String, object: Object, at: Option<Ts>| {
        if kind == "BOOKMARK" {
            return Ok(Decoded::Skip);
        }
        let kind = WatchType::parse(&kind).ok_or_else(|| {
            InputError::new(
                "invalid_value",
                format!("type: {kind:?} is not a watch event type (ADDED, MODIFIED, DELETED)"),
            )
        })?;
        Ok(Decoded::Watch { at, kind, object })
    };
    match entry {
        Entry {
            kind: Some(kind),
            object: Some(object),
            at: None,
            watch: None,
            record: None,
        } => watch_event(kind, object, None),
        Entry {
            kind: None,
            object: None,
            at: Some(at),
            watch,
            record,
        } => match (watch, record) {
            (Some(w), None) => watch_event(w.kind, w.object, Some(at)),
            (None, Some(doc)) => Ok(Decoded::Record { at: Some(at), doc }),
            (None, None) => Ok(Decoded::Tick(at)),
            (Some(_), Some(_)) => Err(InputError::new(
                "invalid_value",
                "an envelope carries either \"watch\" or \"record\", not both",
            )),
        },
        _ => Err(shape_error()),
    }
}

/// Turns a serde error into an input error naming the path (re-parsing the value once to
/// find it; the common path pays nothing for this).
fn explain(bytes: &[u8], e: serde_json::Error) -> InputError {
    if e.is_syntax() || e.is_eof() {
        return InputError::new(
            "invalid_json",
            format!(
                "not valid JSON: {} (line {} column {} of the value)",
                strip_position(&e.to_string()),
                e.line(),
                e.column()
            ),
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, Entry>(&mut de) {
        Err(pe) => {
            let path = pe.path().to_string();
            let inner = pe.into_inner();
            let msg = strip_position(&inner.to_string());
            if path.is_empty() || path == "." {
                InputError::new("invalid_value", msg)
            } else {
                InputError::new("invalid_value", format!("{path}: {msg}"))
            }
        }
        Ok(_) => InputError::new("invalid_value", strip_position(&e.to_string())),
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Counts for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub values: u64,
    pub events: u64,
    pub records: u64,
    pub rejected: u64,
}

/// Drives an engine from replay values.
pub struct Replay<'a> {
    pub engine: Engine,
    profiles: &'a Profiles,
    clock: Option<Ts>,
    started: Vec<Feed>,
    pub counts: Counts,
}

impl<'a> Replay<'a> {
    pub fn new(engine: Engine, profiles: &'a Profiles) -> Replay<'a> {
        Replay {
            engine,
            profiles,
            clock: None,
            started: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The time a value happens at: its own time, never before the previous value's.
    fn tick(&mut self, at: Option<Ts>) -> Ts {
        let t = match (self.clock, at) {
            (Some(c), Some(a)) => c.max(a),
            (Some(c), None) => c,
            (None, Some(a)) => a,
            (None, None) => Ts(0),
        };
        self.clock = Some(t);
        t
    }

    fn start_feed(&mut self, feed: Feed, at: Ts, out: &mut Vec<Transition>) {
        if !self.started.contains(&feed) {
            self.started.push(feed);
            out.extend(self.engine.apply(
                at,
                Change::Source(SourceStatus {
                    name: format!("replay:{feed:?}").to_lowercase(),
                    feeds: vec![feed],
                    synced: true,
                    fresh: true,
                }),
            ));
        }
    }

    /// Feeds one value; transitions go to `out`.
    pub fn value(&mut self, bytes: &[u8], out: &mut Vec<Transition>) -> Result<(), InputError> {
        self.counts.values += 1;
        let result = self.apply_value(bytes, out);
        if result.is_err() {
            self.counts.rejected += 1;
        }
        result
    }

    fn apply_value(&mut self, bytes: &[u8], out: &mut Vec<Transition>) -> Result<(), InputError> {
        match decode(bytes)? {
            Decoded::Skip => Ok(()),
            Decoded::Tick(at) => {
                let at = self.tick(Some(at));
                out.extend(self.engine.apply(at, Change::Tick));
                Ok(())
            }
            Decoded::Watch { at, kind, object } => {
                let at = at.or_else(|| object.newest_timestamp());
                let change = object_change(kind, object, self.profiles)?;
                let at = self.tick(at);
                self.counts.events += 1;
                if let Some((feed, change)) = change {
                    self.start_feed(feed, at, out);
                    out.extend(self.engine.apply(at, change));
                }
                Ok(())
            }
            Decoded::Record { at, doc } => {
                let change = doc.validate(self.profiles)?;
                let kind = match &change {
                    crate::record::RecordChange::Upsert(r) => r.kind,
                    crate::record::RecordChange::Delete { kind, .. } => *kind,
                };
                let at = self.tick(at);
                self.counts.records += 1;
                self.start_feed(Feed::of_record(kind), at, out);
                out.extend(self.engine.apply(at, Change::Record(change)));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &str) -> Vec<(String, Position)> {
        let mut out = Vec::new();
        Splitter::new(input.as_bytes())
            .for_each(|b, p| out.push((String::from_utf8_lossy(b).into_owned(), p)))
            .unwrap();
        out
    }

    #[test]
    fn splits_one_per_line_and_pretty_printed_values() {
        let input =
            "{\"a\":1}\n{\"b\":\"}{\\\"\"}\n{\n  \"c\": {\n    \"d\": [1, {\"e\": 2}]\n  }\n}\n";
        let v = split(input);
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].0, "{\"b\":\"}{\\\"\"}");
        assert_eq!(v[2].1, Position { value: 3, line: 3 });
        assert!(v[2].0.ends_with("}\n}"));
    }

    #[test]
    fn a_broken_value_does_not_swallow_the_next() {
        let input =
            "{\"a\": {\"b\": 1}\n{\"c\": 2}\ngarbage here\n{\"d\": \"unterminated\n{\"e\": 3}\n";
        let v = split(input);
        let texts: Vec<&str> = v.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "{\"a\": {\"b\": 1}\n",
                "{\"c\": 2}",
                "garbage here",
                "{\"d\": \"unterminated\n",
                "{\"e\": 3}"
            ]
        );
        assert_eq!(v[4].1, Position { value: 5, line: 5 });
    }

    #[test]
    fn a_value_cut_off_at_the_end_is_reported() {
        let v = split("{\"a\": 1}\n{\"b\": ");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, "{\"b\": ");
    }

    #[test]
    fn values_across_block_boundaries_are_whole() {
        let one = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1000));
        let input = one.repeat(10_000); // ~10 MB: crosses many blocks
        let mut n = 0;
        Splitter::new(input.as_bytes())
            .for_each(|b, _| {
                assert_eq!(b.len(), one.len() - 1);
                n += 1;
            })
            .unwrap();
        assert_eq!(n, 10_000);
    }

    #[test]
    fn decode_errors_name_the_field() {
        let e = decode(br#"{"at":"2026-01-01T00:00:00Z","record":{"kind":"session","id":5}}"#)
            .unwrap_err();
        assert!(e.message.starts_with("record.id:"), "{}", e.message);
        let e = decode(br#"{"type":"ADDED","object":{"kind":"Pod"}}"#).unwrap_err();
        assert!(e.message.contains("metadata"), "{}", e.message);
        let e = decode(br#"{"type":"ADDED","object":{"kind":"Pod""#).unwrap_err();
        assert_eq!(e.reason, "invalid_json");
        let e = decode(br#"{"kind":"session","id":"s"}"#).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = decode(br#"{"type":"UPSERT","object":{"metadata":{}}}"#).unwrap_err();
        assert!(e.message.contains("\"UPSERT\""), "{}", e.message);
    }
}
