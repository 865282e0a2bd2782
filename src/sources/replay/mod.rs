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
//! previous one's time. The input is read in chunks and decoded on threads of their own
//! (`pipeline`); one malformed value (bad JSON, wrong types, a pod without metadata, an
//! unknown record kind) is reported with its position and skipped, a small scanner finding
//! where it ends, and the replay goes on. What a value means for the engine (the clock, the
//! feeds it starts) is the replay driver's business (`app::replay`).

use std::io::Read;
use std::sync::Arc;

use memchr::{memchr, memchr_iter, memchr3};
use serde::Deserialize;

use crate::model::kubernetes::{MetaKeys, Object};
use crate::model::record::{InputError, RecordDoc};
use crate::sources::WatchType;
use crate::sources::recorded::{self, Recorded};
use crate::util::time::Ts;

mod pipeline;

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

/// Splits a byte stream into top-level JSON values without parsing them (`for_each`), or
/// decodes them on threads of their own (`for_each_decoded`, in `pipeline`).
///
/// It tracks strings, escapes and brace depth, jumping between the bytes that matter.
/// Because JSON strings cannot hold a raw newline, and because a top-level value's opening
/// brace is the only one at the start of a line in both one-per-line and pretty-printed
/// output, a value that is cut short is closed at the next line that starts with `{`, so one
/// broken value never swallows the rest.
pub struct Splitter<R> {
    reader: R,
    buf: Vec<u8>,
    /// The end of the input read into `buf` (what follows is room for the next read).
    end: usize,
    /// Bytes of `buf` already consumed.
    pos: usize,
    lines: LineCounter,
    values: u64,
    eof: bool,
    /// Bytes to ask for per read: grows from 64 KiB to 4 MiB, so small inputs stay cheap.
    block: usize,
    /// The only labels and annotations of pods that `for_each_decoded` keeps, if given.
    keep: Option<Arc<MetaKeys>>,
}

const MAX_BLOCK: usize = 4 << 20;

/// Line numbers, counted lazily: only up to where someone asks, in bulk.
struct LineCounter {
    /// The line number at byte `counted` of the buffer.
    line: u64,
    counted: usize,
}

impl LineCounter {
    /// Counts from `line`, the line of the buffer's first byte.
    fn starting_at(line: u64) -> LineCounter {
        LineCounter { line, counted: 0 }
    }

    fn at(&mut self, buf: &[u8], offset: usize) -> u64 {
        if offset > self.counted {
            self.line += memchr_iter(b'\n', &buf[self.counted..offset]).count() as u64;
            self.counted = offset;
        }
        self.line
    }
}

impl<R: Read> Splitter<R> {
    pub fn new(reader: R) -> Splitter<R> {
        Splitter {
            reader,
            buf: Vec::new(),
            end: 0,
            pos: 0,
            lines: LineCounter::starting_at(1),
            values: 0,
            eof: false,
            block: 64 << 10,
            keep: None,
        }
    }

    /// Makes `for_each_decoded` keep only these labels and annotations of the pods it
    /// decodes (those the profiles read), skipping the rest once checked.
    pub fn keeping_only(mut self, keys: MetaKeys) -> Splitter<R> {
        self.keep = Some(Arc::new(keys));
        self
    }

    /// Reads more input; returns false at the end.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.lines.at(&self.buf[..self.end], self.pos);
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.lines.counted -= self.pos;
            self.pos = 0;
        }
        let want = self.block.max(self.end);
        self.block = (self.block * 2).min(MAX_BLOCK);
        // Zeroed once: a pipe that hands out a few bytes per read costs what it hands out.
        if self.buf.len() < self.end + want {
            self.buf.resize(self.end + want, 0);
        }
        let n = loop {
            match self.reader.read(&mut self.buf[self.end..self.end + want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    fn position(&mut self, start: usize) -> Position {
        self.values += 1;
        Position {
            value: self.values,
            line: self.lines.at(&self.buf[..self.end], start),
        }
    }

    /// Calls `f` with each value's bytes and position, in order.
    pub fn for_each(&mut self, mut f: impl FnMut(&[u8], Position)) -> std::io::Result<()> {
        loop {
            match self.scan() {
                Some((start, end)) => {
                    let position = self.position(start);
                    f(&self.buf[start..end], position);
                }
                None => {
                    if !self.fill()? {
                        self.rest(|bytes, position| f(bytes, position));
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the input is a value cut short.
    fn rest(&mut self, f: impl FnOnce(&[u8], Position)) {
        if let Some((start, position)) = self.rest_start() {
            f(&self.buf[start..self.end], position);
        }
    }

    /// Where the value cut short at the end of the input starts, and its position; consumes it.
    fn rest_start(&mut self) -> Option<(usize, Position)> {
        let rest = &self.buf[self.pos..self.end];
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if skip == rest.len() {
            return None;
        }
        let start = self.pos + skip;
        let position = self.position(start);
        self.pos = self.end;
        Some((start, position))
    }

    /// Finds the next complete value in the buffer: (start, end). Consumes it.
    /// Returns `None` (consuming only whitespace) if the buffer ends inside a value.
    fn scan(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf[..self.end];
        let mut i = self.pos;
        while i < buf.len() && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        let found = if i >= buf.len() {
            None
        } else {
            value_end(buf, start, self.eof)
        };
        match found {
            Some(end) => {
                self.pos = end;
                Some((start, end))
            }
            None => {
                self.pos = start;
                None
            }
        }
    }
}

/// Where the value that starts at `start` (not whitespace) ends: a value that is not an
/// object is the rest of its line; `None` if the bytes end first and more may follow.
pub(super) fn value_end(buf: &[u8], start: usize, eof: bool) -> Option<usize> {
    if buf[start] != b'{' {
        return match memchr(b'\n', &buf[start..]) {
            Some(k) => Some(start + k),
            None if eof => Some(buf.len()),
            None => None,
        };
    }
    object_end(buf, start)
}

/// The end of the object starting at `start`: after its closing brace, or at the start of
/// the line where the next object visibly begins if this one is cut short.
fn object_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        i += memchr3(b'"', b'{', b'}', &buf[i..])?;
        match buf[i] {
            b'"' => {
                let mut j = i + 1;
                loop {
                    j += memchr3(b'"', b'\\', b'\n', &buf[j..])?;
                    match buf[j] {
                        b'\\' if j + 2 <= buf.len() => j += 2,
                        b'\\' => return None,
                        b'"' => {
                            j += 1;
                            break;
                        }
                        // A raw newline cannot be inside a JSON string: the value is
                        // broken; carry on outside the string from the newline.
                        _ => break,
                    }
                }
                i = j;
            }
            b'{' => {
                if depth > 0 && buf[i - 1] == b'\n' {
                    return Some(i);
                }
                depth += 1;
                i += 1;
            }
            _ => {
                depth = depth.saturating_sub(1);
                i += 1;
                if depth == 0 {
                    return Some(i);
                }
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Box<Object>,
}

/// One value of a replay file: a bare watch event, or an envelope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(rename = "type")]
    kind: Option<String>,
    object: Option<Box<Object>>,
    at: Option<Ts>,
    watch: Option<WatchEvent>,
    record: Option<Box<RecordDoc>>,
    /// What only a recording (`run --record`) writes.
    recording: Option<recorded::Header>,
    source: Option<recorded::Source>,
    listed: Option<recorded::Listed>,
    pod_deleted: Option<recorded::PodDeleted>,
    resume_target: Option<recorded::ResumeTarget>,
}

/// What one value means.
#[derive(Debug)]
pub enum Decoded {
    Watch {
        at: Option<Ts>,
        kind: WatchType,
        object: Box<Object>,
    },
    Record {
        at: Option<Ts>,
        doc: Box<RecordDoc>,
    },
    Tick(Ts),
    /// A watch event the replay has no use for (BOOKMARK).
    Skip,
    /// The header of a recording: its sources' changes follow as values of their own.
    Recording,
    /// A source change a recording wrote.
    Recorded {
        at: Ts,
        what: Box<Recorded>,
    },
}

/// Decodes one value. Errors name the field path and the reason.
pub fn decode(bytes: &[u8]) -> Result<Decoded, InputError> {
    match serde_json::from_slice(bytes) {
        Ok(entry) => decode_entry(entry),
        Err(e) => Err(explain(bytes, e)),
    }
}

/// A recording's own values: its header, and the source changes it wrote.
fn decode_recorded(entry: &mut Entry) -> Option<Result<Decoded, InputError>> {
    if entry.recording.take().is_some() {
        return Some(Ok(Decoded::Recording));
    }
    let what = if let Some(s) = entry.source.take() {
        Recorded::Source(s)
    } else if let Some(l) = entry.listed.take() {
        Recorded::Listed(l)
    } else if let Some(d) = entry.pod_deleted.take() {
        Recorded::PodDeleted(d)
    } else {
        Recorded::ResumeTarget(entry.resume_target.take()?)
    };
    Some(match entry.at {
        Some(at) => Ok(Decoded::Recorded {
            at,
            what: Box::new(what),
        }),
        None => Err(InputError::new(
            "missing_field",
            "at: a recorded source change needs its time",
        )),
    })
}

fn decode_entry(mut entry: Entry) -> Result<Decoded, InputError> {
    if let Some(d) = decode_recorded(&mut entry) {
        return d;
    }
    let shape_error = || {
        InputError::new(
            "invalid_value",
            "not a watch event ({\"type\", \"object\"}) or an envelope ({\"at\", \"watch\" | \"record\"})",
        )
    };
    let watch_event = |kind: String, object: Box<Object>, at: Option<Ts>| {
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
            ..
        } => watch_event(kind, object, None),
        Entry {
            kind: None,
            object: None,
            at: Some(at),
            watch,
            record,
            ..
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
    // Positions relative to this value (the error may come from a stream that began earlier).
    let e = serde_json::from_slice::<Entry>(bytes).err().unwrap_or(e);
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
