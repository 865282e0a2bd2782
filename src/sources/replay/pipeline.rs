//! Decoding on a thread of its own while the caller's thread applies what was decoded.
//!
//! ```text
//!  decoder thread: read a block, split and decode it ──batches──▶ caller: apply, in order
//! ```
//!
//! One pass over the bytes: serde_json reads the values back to back, given complete lines
//! only; the scanner is asked where a value ends only when serde_json rejects one.

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::mpsc::{channel, sync_channel};

use memchr::memrchr;

use super::{Decoded, Entry, Position, Splitter, decode_entry, explain};
use crate::model::record::InputError;

/// Decoded values with their positions, as the decoder thread hands them over.
type Batch = Vec<(Result<Decoded, InputError>, Position)>;
/// Values per batch: handing one over may wake the other thread, which costs about as much
/// as decoding a few values.
const BATCH: usize = 128;
/// Batches decoded ahead of the caller: bounds the memory of values in flight.
const BATCHES_AHEAD: usize = 4;

impl<R: Read> Splitter<R> {
    /// Decodes each value as it splits it, on a thread of its own, while this thread applies
    /// what was decoded: `apply` gets each decoded value, in input order (or the reason it
    /// could not be decoded); when it returns an error, `rejected` gets it with the value's
    /// position. Values go across in batches; a batch is handed over early whenever the
    /// decoder is about to wait for input, so a live pipe's values are applied as they come.
    pub fn for_each_decoded(
        &mut self,
        mut apply: impl FnMut(Result<Decoded, InputError>) -> Result<(), InputError>,
        mut rejected: impl FnMut(InputError, Position),
    ) -> std::io::Result<()>
    where
        R: Send,
    {
        std::thread::scope(|s| {
            let (tx, rx) = sync_channel::<Batch>(BATCHES_AHEAD);
            let (spare_tx, spare) = channel::<Batch>();
            let worker = std::thread::Builder::new()
                .name("replay-decode".into())
                .spawn_scoped(s, move || {
                    let mut batch = Batch::with_capacity(BATCH);
                    let result = self.decode_each(&mut |item| {
                        let full = match item {
                            Some(value) => {
                                batch.push(value);
                                batch.len() == BATCH
                            }
                            None => !batch.is_empty(),
                        };
                        if !full {
                            return ControlFlow::Continue(());
                        }
                        let next = spare
                            .try_recv()
                            .unwrap_or_else(|_| Batch::with_capacity(BATCH));
                        match tx.send(std::mem::replace(&mut batch, next)) {
                            Ok(()) => ControlFlow::Continue(()),
                            // The caller is gone (it panicked): stop reading.
                            Err(_) => ControlFlow::Break(()),
                        }
                    });
                    if !batch.is_empty() {
                        let _ = tx.send(batch);
                    }
                    result
                })
                .expect("spawning the replay decoder thread");
            for mut batch in rx {
                for (value, position) in batch.drain(..) {
                    if let Err(e) = apply(value) {
                        rejected(e, position);
                    }
                }
                let _ = spare_tx.send(batch);
            }
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Splits and decodes in one pass over the bytes: serde_json reads the values back to
    /// back, and the scanner is only asked where a value ends when serde_json rejects it.
    /// `out` gets each value (or why it is bad) with its position, and `None` before each
    /// wait for more input; it stops the decoding by breaking.
    fn decode_each(
        &mut self,
        out: &mut impl FnMut(Option<(Result<Decoded, InputError>, Position)>) -> ControlFlow<()>,
    ) -> std::io::Result<()> {
        macro_rules! emit {
            ($item:expr) => {
                if out($item).is_break() {
                    return Ok(());
                }
            };
        }
        loop {
            // Values from `self.pos` on, until the buffer runs out or one is bad.
            let base = self.pos;
            let buf = &self.buf[..self.end];
            // Complete lines only, until the input has ended: a value never runs past the
            // end of the slice in one-per-line input, where serde_json would stop with an
            // error whose position it finds by counting every line before it.
            let limit = match memrchr(b'\n', &buf[base..]) {
                Some(i) if !self.eof => base + i + 1,
                _ if self.eof => buf.len(),
                _ => base,
            };
            let mut stream =
                serde_json::Deserializer::from_slice(&buf[base..limit]).into_iter::<Entry>();
            let next_start = |offset: usize| {
                offset
                    + buf[offset..]
                        .iter()
                        .take_while(|b| b.is_ascii_whitespace())
                        .count()
            };
            let (stop, bad) = loop {
                let start = next_start(base + stream.byte_offset());
                match stream.next() {
                    None => break (start, None),
                    Some(Ok(entry)) => {
                        self.values += 1;
                        let position = Position {
                            value: self.values,
                            line: self.lines.at(buf, start),
                        };
                        if out(Some((decode_entry(entry), position))).is_break() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => break (start, Some(e)),
                }
            };
            self.pos = stop;
            match bad {
                // A value ends beyond the complete lines read so far: read more and start
                // again at it. (At the end of the input, one cut short is reported below.)
                Some(e) if e.is_eof() && !self.eof => {
                    emit!(None);
                    self.fill()?;
                }
                Some(e) => {
                    if self.bad_value(e, out)?.is_break() {
                        return Ok(());
                    }
                }
                // Everything up to the limit was read.
                None => {
                    if self.eof {
                        return Ok(());
                    }
                    emit!(None);
                    self.fill()?;
                }
            }
        }
    }

    /// A value serde_json rejected: the scanner finds where it ends, and `out` gets why it is
    /// bad. Breaks at the end of the input (or when `out` does).
    fn bad_value(
        &mut self,
        e: serde_json::Error,
        out: &mut impl FnMut(Option<(Result<Decoded, InputError>, Position)>) -> ControlFlow<()>,
    ) -> std::io::Result<ControlFlow<()>> {
        if let Some((start, end)) = self.scan() {
            let position = self.position(start);
            return Ok(out(Some((
                Err(explain(&self.buf[start..end], e)),
                position,
            ))));
        }
        if out(None).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        if self.fill()? {
            return Ok(ControlFlow::Continue(()));
        }
        // It runs to the end of the input.
        if let Some((start, p)) = self.rest_start() {
            let _ = out(Some((Err(explain(&self.buf[start..self.end], e)), p)));
        }
        Ok(ControlFlow::Break(()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_BLOCK, decode};
    use super::*;

    /// A reader that hands out at most `n` bytes per read, as a pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        n: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = buf.len().min(self.n).min(self.data.len());
            buf[..k].copy_from_slice(&self.data[..k]);
            self.data = &self.data[k..];
            Ok(k)
        }
    }

    /// What `for_each_decoded` reports, as text: each value's outcome, then the rejected
    /// ones with their positions.
    fn decoded(input: &[u8], n: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        Splitter::new(Trickle { data: input, n })
            .for_each_decoded(
                |v| {
                    seen.push(match &v {
                        Ok(d) => format!("ok {d:?}"),
                        Err(e) => format!("bad {}", e.message),
                    });
                    v.map(|_| ())
                },
                |e, p| out.push(format!("rejected {} {} {}", p.value, p.line, e.message)),
            )
            .unwrap();
        seen.extend(out);
        seen
    }

    /// The same from the plain splitter and `decode`, one value at a time: the oracle.
    fn split_then_decoded(input: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        Splitter::new(input)
            .for_each(|bytes, p| match decode(bytes) {
                Ok(d) => seen.push(format!("ok {d:?}")),
                Err(e) => {
                    seen.push(format!("bad {}", e.message));
                    out.push(format!("rejected {} {} {}", p.value, p.line, e.message));
                }
            })
            .unwrap();
        seen.extend(out);
        seen
    }

    const MIXED: &str = concat!(
        "{\"at\":\"2026-01-01T00:00:00Z\"}\n",
        "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"a\",\"namespace\":\"n\"}}}\n",
        "this is not json\n",
        "{\"at\":\"2026-01-01T00:00:02Z\",\"record\":{\"kind\":\"session\",\"id\":5}}\n",
        "{\n  \"at\": \"2026-01-01T00:00:03Z\",\n  \"record\": {\"kind\": \"session\", \"id\": \"s\"}\n}\n",
        "{\"at\":\"2026-01-01T00:00:04Z\",\"record\":{\"kind\":\"sandbox\",\n",
        "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{}}}\n",
        "  {\"type\":\"DELETED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"a\",\"namespace\":\"n\"}}}",
        "{\"at\":\"2026-01-01T00:00:05Z\"}\n\n",
        "{\"at\":\"2026-01-01T00:00:06Z\",\"record\":{\"kind\":\"session\",\"id\":\"s\"",
    );

    #[test]
    fn decoding_on_a_thread_gives_what_splitting_then_decoding_gives() {
        let expected = split_then_decoded(MIXED.as_bytes());
        assert_eq!(expected.len(), 10 + 4, "{expected:#?}");
        // Reads of every small size cut values, lines and strings everywhere.
        for n in [1, 2, 3, 5, 7, 16, 64, 1 << 20] {
            assert_eq!(decoded(MIXED.as_bytes(), n), expected, "reads of {n} bytes");
        }
        // The last value ends the input without a newline.
        let tail = "{\"at\":\"2026-01-01T00:00:00Z\"}\n{\"at\":\"2026-01-01T00:00:01Z\"}";
        assert_eq!(
            decoded(tail.as_bytes(), 3),
            split_then_decoded(tail.as_bytes())
        );
        assert_eq!(decoded(tail.as_bytes(), 3).len(), 2);
    }

    /// A last value cut short inside a nested object ends where the next line starts with
    /// `{`, as a broken value anywhere else in the input does: what follows is its own value.
    #[test]
    fn a_value_cut_short_at_the_end_ends_where_a_line_starts_an_object() {
        let input = "{\"at\":\"2026-01-01T00:00:00Z\"}\n{\"type\":\"ADDED\",\"object\":\n{\"metadata\":{\"name\":\"a\"}}";
        let expected = split_then_decoded(input.as_bytes());
        for n in [1, 5, 1 << 20] {
            assert_eq!(decoded(input.as_bytes(), n), expected, "reads of {n} bytes");
        }
        let rejected: Vec<_> = expected
            .iter()
            .filter(|l| l.starts_with("rejected"))
            .collect();
        assert_eq!(rejected.len(), 2, "{expected:#?}");
        assert!(
            rejected[0].starts_with("rejected 2 2 not valid JSON"),
            "{}",
            rejected[0]
        );
        assert!(rejected[1].starts_with("rejected 3 3 "), "{}", rejected[1]);
    }

    #[test]
    fn a_value_longer_than_a_block_is_whole() {
        let big = format!(
            "{{\"at\":\"2026-01-01T00:00:00Z\",\"record\":{{\"kind\":\"session\",\"id\":\"{}\"}}}}\n",
            "x".repeat(MAX_BLOCK + 10)
        );
        let input = format!("{big}not json\n{big}");
        let expected = split_then_decoded(input.as_bytes());
        assert_eq!(expected.len(), 4);
        assert_eq!(decoded(input.as_bytes(), 1 << 20), expected);
    }

    #[test]
    fn a_read_error_ends_the_decoding_after_the_values_before_it() {
        struct Failing(Vec<u8>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut seen = 0;
        let e = Splitter::new(Failing(
            b"{\"at\":\"2026-01-01T00:00:00Z\"}\n{\"at\":".to_vec(),
        ))
        .for_each_decoded(
            |v| {
                seen += 1;
                v.map(|_| ())
            },
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        assert_eq!(seen, 1);
    }
}
