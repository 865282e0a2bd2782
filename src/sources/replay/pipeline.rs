//! Decoding on threads of their own while the caller's thread applies what was decoded.
//!
//! ```text
//!  reader: read, cut ──chunks──▶ decoders (one per core, up to 4) ──▶ caller: apply, in order
//! ```
//!
//! The reader cuts what it reads at its end when that ends a line; after a read that filled
//! its buffer, where its last line starting with `{` starts (where a top-level value starts
//! in one-per-line and pretty-printed output alike); after a short read, after its last
//! complete line, so that no complete value waits for more input. It counts lines. A decoder
//! reads a chunk's values back to back with serde_json; the scanner is asked where a value
//! ends only when serde_json rejects one. A cut can fall inside a value (a pretty-printed
//! value that a pipe hands over a few lines at a time): the chunk before it then ends with a
//! value that runs past its end, which the caller decodes with the next chunk's first bytes;
//! where it ends, the decoders' values take over again if one of them starts there, else the
//! caller decodes the rest of the chunk too, as one pass over the input would. So what is
//! decoded, in which order, and what is said about a bad value do not depend on where the
//! input was cut.

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use memchr::{memchr_iter, memmem, memrchr};

use super::{Decoded, Entry, LineCounter, Position, Splitter, decode_entry, explain, value_end};
use crate::model::kubernetes::{self, MetaKeys};
use crate::model::record::InputError;

/// Bytes of input from a value's start up to where the reader cut it.
struct Chunk {
    /// The bytes are `buf[start..end]`; what follows is room the next read may use.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The line of the chunk's first byte.
    first_line: u64,
    /// Nothing follows.
    eof: bool,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// Values, each with the offset where it starts in the bytes it was decoded from.
type Values = Vec<(Result<Decoded, InputError>, usize)>;

/// A decoded chunk: its values, and where what is left (a value that runs past its end)
/// starts; the chunk's length if nothing is.
struct Done {
    chunk: Chunk,
    values: Values,
    rest: usize,
}

type Job = (Chunk, SyncSender<Done>);

/// The first read asks for this much, each next one for twice as much up to [`MAX_READ`]:
/// small inputs stay cheap, large ones are cut into chunks of about a MiB.
const FIRST_READ: usize = 64 << 10;
const MAX_READ: usize = 1 << 20;
/// Chunks read ahead of the caller (decoding or decoded), and values per chunk at most (lines
/// that start with `{`): bound the memory of the values in flight.
const CHUNKS_AHEAD: usize = 4;
const MAX_VALUES: usize = 1024;

impl<R: Read> Splitter<R> {
    /// Decodes each value on threads of their own while this thread applies what was
    /// decoded: `apply` gets each decoded value, in input order (or the reason it could not
    /// be decoded); when it returns an error, `rejected` gets it with the value's position.
    /// A value is applied as soon as the read that brings its last line has returned, without
    /// waiting for more input, so a live pipe's values are applied as they come; `applied`
    /// is called after each chunk of values, when more may be a while coming.
    pub fn for_each_decoded(
        &mut self,
        mut apply: impl FnMut(Result<Decoded, InputError>) -> Result<(), InputError>,
        mut rejected: impl FnMut(InputError, Position),
        mut applied: impl FnMut(),
    ) -> std::io::Result<()>
    where
        R: Send,
    {
        let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        let reader = &mut self.reader;
        let keep = self.keep.clone();
        let (order_tx, order) = sync_channel::<Receiver<Done>>(CHUNKS_AHEAD);
        let (jobs_tx, jobs) = channel::<Job>();
        let (spare_tx, spare) = channel::<Vec<u8>>();
        let jobs = &Mutex::new(jobs);
        std::thread::scope(|s| {
            let read = std::thread::Builder::new()
                .name("replay-read".into())
                .spawn_scoped(s, move || {
                    read_chunks(reader, &spare, |chunk| {
                        let (done_tx, done) = sync_channel(1);
                        // Either fails only when the caller is gone (it panicked): stop.
                        order_tx.send(done).is_ok() && jobs_tx.send((chunk, done_tx)).is_ok()
                    })
                })
                .expect("spawning the replay reader thread");
            let workers: Vec<_> = (0..decoders)
                .map(|_| {
                    let keep = keep.clone();
                    std::thread::Builder::new()
                        .name("replay-decode".into())
                        .spawn_scoped(s, move || keeping(&keep, || decode_chunks(jobs)))
                        .expect("spawning a replay decoder thread")
                })
                .collect();
            let mut in_order = InOrder::default();
            // The caller decodes too (what a cut leaves over).
            keeping(&keep, || {
                for done in order {
                    // A decoder that panicked dropped its sender: its panic is resumed below.
                    let Ok(done) = done.recv() else {
                        break;
                    };
                    let buf = in_order.apply(done, &mut apply, &mut rejected);
                    applied();
                    // Read buffers go back to be read into again; copied-out parts are dropped.
                    if buf.len() >= MAX_READ {
                        let _ = spare_tx.send(buf);
                    }
                }
            });
            for worker in workers {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            }
            read.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Runs `f` keeping only `keep`'s labels and annotations of the pods it decodes, if given.
fn keeping<T>(keep: &Option<Arc<MetaKeys>>, f: impl FnOnce() -> T) -> T {
    match keep {
        Some(k) => kubernetes::keeping_only(k.clone(), f),
        None => f(),
    }
}

/// The caller's side: applies decoded chunks in input order.
#[derive(Default)]
struct InOrder {
    /// Values so far.
    values: u64,
    /// The bytes from where a value ran past the end of the chunk before, and their line.
    carry: Vec<u8>,
    carry_line: u64,
}

impl InOrder {
    /// Applies a chunk's values; gives its buffer back.
    fn apply(
        &mut self,
        done: Done,
        apply: &mut impl FnMut(Result<Decoded, InputError>) -> Result<(), InputError>,
        rejected: &mut impl FnMut(InputError, Position),
    ) -> Vec<u8> {
        let Done {
            chunk,
            mut values,
            rest,
        } = done;
        if self.carry.is_empty() {
            self.carry_rest(chunk.bytes(), rest, chunk.first_line);
            self.each(values, chunk.bytes(), chunk.first_line, apply, rejected);
        } else {
            // The chunk was decoded as if a value started where it begins; none does. The
            // carried value is decoded with the chunk's first bytes; where it ends, the
            // decoder's values take over if one of them starts there (from a value's start on,
            // decoding depends on nothing before it), else the rest is decoded here too.
            let mut bytes = std::mem::take(&mut self.carry);
            let carried = bytes.len();
            bytes.extend_from_slice(chunk.bytes());
            let first_line = self.carry_line;
            let mut first = Values::new();
            let next = decode_values(&bytes, chunk.eof, &mut first, 1);
            if first.is_empty() {
                // It runs past this chunk too (or only space is left).
                self.carry_rest(&bytes, next, first_line);
                return chunk.buf;
            }
            self.each(first, &bytes, first_line, apply, rejected);
            let taken_over = next
                .checked_sub(carried)
                .and_then(|at| values.iter().position(|(_, start)| *start == at));
            if let Some(i) = taken_over {
                values.drain(..i);
                self.each(values, chunk.bytes(), chunk.first_line, apply, rejected);
                self.carry_rest(chunk.bytes(), rest, chunk.first_line);
            } else {
                let mut again = Values::new();
                let rest = next + decode_block(&bytes[next..], chunk.eof, &mut again);
                let again = again.into_iter().map(|(v, at)| (v, at + next)).collect();
                self.each(again, &bytes, first_line, apply, rejected);
                self.carry_rest(&bytes, rest, first_line);
            }
        }
        chunk.buf
    }

    /// Carries `bytes[rest..]` (what is left of them) over to the next chunk.
    fn carry_rest(&mut self, bytes: &[u8], rest: usize, first_line: u64) {
        if rest < bytes.len() {
            self.carry.extend_from_slice(&bytes[rest..]);
            self.carry_line = LineCounter::starting_at(first_line).at(bytes, rest);
        }
    }

    /// Applies values decoded from `bytes`, whose first byte is on `first_line`.
    fn each(
        &mut self,
        values: Values,
        bytes: &[u8],
        first_line: u64,
        apply: &mut impl FnMut(Result<Decoded, InputError>) -> Result<(), InputError>,
        rejected: &mut impl FnMut(InputError, Position),
    ) {
        let mut lines = LineCounter::starting_at(first_line);
        for (value, at) in values {
            self.values += 1;
            if let Err(e) = apply(value) {
                let line = lines.at(bytes, at);
                rejected(
                    e,
                    Position {
                        value: self.values,
                        line,
                    },
                );
            }
        }
    }
}

/// Reads chunks and hands each to `send` (until it returns false), reusing the buffers that
/// come back on `spare`.
fn read_chunks(
    reader: &mut impl Read,
    spare: &Receiver<Vec<u8>>,
    mut send: impl FnMut(Chunk) -> bool,
) -> std::io::Result<()> {
    let mut line = 1;
    let mut want = FIRST_READ;
    let mut buf = Vec::new();
    let mut len = 0;
    let mut eof = false;
    loop {
        let mut at = 0;
        while at == 0 && !eof {
            // Zeroed once: a buffer keeps its length when it comes back.
            if buf.len() < len + want {
                buf.resize(len + want, 0);
            }
            let n = loop {
                match reader.read(&mut buf[len..len + want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The complete lines read before it are still decoded.
                        let at = memrchr(b'\n', &buf[..len]).map_or(0, |i| i + 1);
                        let first_line = line;
                        let _ = at > 0
                            && send(Chunk {
                                buf,
                                start: 0,
                                end: at,
                                first_line,
                                eof: false,
                            });
                        return Err(e);
                    }
                }
            };
            len += n;
            eof = n == 0;
            at = cut(&buf[..len], eof, n < want);
            want = (want * 2).min(MAX_READ);
        }
        let last = eof && at == len;
        let mut chunk = |buf: Vec<u8>, start: usize, end: usize, eof: bool| {
            let first_line = line;
            line += memchr_iter(b'\n', &buf[start..end]).count() as u64;
            send(Chunk {
                buf,
                start,
                end,
                first_line,
                eof,
            })
        };
        // Many small values: all but the last [`MAX_VALUES`] of them go in copies of their own.
        let mut start = 0;
        while let Some(i) = memmem::find_iter(&buf[start..at], b"\n{").nth(MAX_VALUES - 1) {
            let end = start + i + 1;
            if !chunk(buf[start..end].to_vec(), 0, end - start, false) {
                return Ok(());
            }
            start = end;
        }
        let mut next = spare.try_recv().unwrap_or_default();
        if next.len() < len - at {
            next.resize(len - at, 0);
        }
        next[..len - at].copy_from_slice(&buf[at..len]);
        if !chunk(std::mem::replace(&mut buf, next), start, at, last) || last {
            return Ok(());
        }
        len -= at;
    }
}

/// Where to cut the bytes read so far: at their end if that ends the input or a line; after
/// a read that filled what it asked for (more is likely there already), where the last line
/// that starts with `{` starts, so that a chunk ends where a value does; else (nothing more
/// may come for a while) after the last complete line, so that no complete value waits.
/// 0 if there is no complete line.
fn cut(read: &[u8], eof: bool, short: bool) -> usize {
    if eof || read.last() == Some(&b'\n') {
        return read.len();
    }
    if !short && let Some(i) = memmem::rfind(read, b"\n{") {
        return i + 1;
    }
    memrchr(b'\n', read).map_or(0, |i| i + 1)
}

/// A decoder thread: decodes the chunks it takes until there are no more.
fn decode_chunks(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((chunk, done)) = job else {
            return;
        };
        let mut values = Values::new();
        let rest = decode_block(chunk.bytes(), chunk.eof, &mut values);
        if done
            .send(Done {
                chunk,
                values,
                rest,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Decodes the values in `bytes`, which start at a value's start, into `out`: serde_json
/// reads them back to back, and the scanner is only asked where a value ends when serde_json
/// rejects it. Unless `eof`, more input may follow: only complete lines are decoded, and
/// what is left where a value runs past the end is not. Returns where what is left starts
/// (`bytes.len()` if nothing is).
fn decode_block(bytes: &[u8], eof: bool, out: &mut Values) -> usize {
    decode_values(bytes, eof, out, usize::MAX)
}

/// [`decode_block`], stopping after `max` values: then returns where the next one starts.
fn decode_values(bytes: &[u8], eof: bool, out: &mut Values, max: usize) -> usize {
    let max = out.len().saturating_add(max);
    let skip_space = |offset: usize| {
        offset
            + bytes[offset..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count()
    };
    let mut pos = skip_space(0);
    loop {
        // Complete lines only, until the input has ended: a value never runs past the end of
        // the slice in one-per-line input, where serde_json would stop with an error whose
        // position it finds by counting every line before it.
        let limit = match memrchr(b'\n', &bytes[pos..]) {
            _ if eof => bytes.len(),
            Some(i) => pos + i + 1,
            None => pos,
        };
        let mut stream =
            serde_json::Deserializer::from_slice(&bytes[pos..limit]).into_iter::<Entry>();
        let (stop, bad) = loop {
            let start = skip_space(pos + stream.byte_offset());
            if out.len() == max {
                return start;
            }
            match stream.next() {
                None => break (start, None),
                Some(Ok(entry)) => out.push((decode_entry(entry), start)),
                Some(Err(e)) => break (start, Some(e)),
            }
        };
        pos = stop;
        let Some(e) = bad else {
            // Everything up to the limit was read.
            return pos;
        };
        if e.is_eof() && !eof {
            // A value runs past the complete lines: it is what is left.
            return pos;
        }
        match value_end(bytes, pos, eof) {
            Some(end) => {
                out.push((Err(explain(&bytes[pos..end], e)), pos));
                pos = skip_space(end);
                if out.len() == max {
                    return pos;
                }
            }
            None if !eof => return pos,
            // It runs to the end of the input.
            None => {
                out.push((Err(explain(&bytes[pos..], e)), pos));
                return bytes.len();
            }
        }
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
                || {},
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

    /// The same from one pass over the whole input, uncut.
    fn one_pass_decoded(input: &[u8]) -> Vec<String> {
        let mut values = Values::new();
        assert_eq!(decode_block(input, true, &mut values), input.len());
        let mut lines = LineCounter::starting_at(1);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (n, (v, at)) in values.into_iter().enumerate() {
            match v {
                Ok(d) => seen.push(format!("ok {d:?}")),
                Err(e) => {
                    seen.push(format!("bad {}", e.message));
                    let line = lines.at(input, at);
                    out.push(format!("rejected {} {line} {}", n + 1, e.message));
                }
            }
        }
        seen.extend(out);
        seen
    }

    /// Inputs put together at random from the shapes a replay file can have, good and bad
    /// (among them a value with a line that starts with `{` inside it, where a cut may fall):
    /// however the reads cut them, decoding on threads gives what one pass gives.
    #[test]
    fn random_inputs_decode_as_the_oracle_says_whatever_the_reads() {
        const PIECES: &[&str] = &[
            "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"a\",\"namespace\":\"n\"}}}\n",
            "{\"at\":\"2026-01-01T00:00:01Z\"}\n",
            "{\n  \"at\": \"2026-01-01T00:00:03Z\",\n  \"record\": {\n    \"kind\": \"session\",\n    \"id\": \"s\"\n  }\n}\n",
            "{\n  \"type\": \"MODIFIED\",\n  \"object\": {\n    \"metadata\": {\n      \"name\": \"b\"\n    }\n  }\n}\n",
            "this is not json\n",
            "{\"at\":\"2026-01-01T00:00:04Z\",\"record\":{\"kind\":\"sandbox\",\n",
            "{\"at\":\"2026-01-01T00:00:05Z\"}\r\n",
            "   {\"at\":\"2026-01-01T00:00:06Z\"} {\"at\":\"2026-01-01T00:00:07Z\"}\n",
            "\n\n",
            "{\"at\":\"2026-01-01T00:00:08Z\",\"record\":{\"kind\":\"session\",\"id\":5}}\n",
            "{\"type\":\"ADDED\",\"object\":\n{\"metadata\":{\"name\":\"c\"}}}\n",
            "{\"at\":\"2026-01-01T00:00:09Z\",\"note\":\"a { and a } and \\\" in a string\"}\n",
            "[1, 2]\n",
            "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{}}}\n",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..60 {
            let mut input = String::new();
            for _ in 0..next(24) {
                input.push_str(PIECES[next(PIECES.len())]);
            }
            if next(3) == 0 {
                // The input ends inside a value, or without a last newline.
                let piece = PIECES[next(PIECES.len())];
                input.push_str(&piece[..next(piece.len())]);
            }
            let expected = one_pass_decoded(input.as_bytes());
            for n in [2 + next(30), 32 + next(512), 1 << 20] {
                assert_eq!(
                    decoded(input.as_bytes(), n),
                    expected,
                    "reads of {n} bytes of {input:?}"
                );
            }
        }
    }

    /// More values in one read than a chunk takes: the chunks copied out of it keep their
    /// values' order and lines.
    #[test]
    fn a_read_of_many_small_values_is_cut_into_chunks_that_keep_their_lines() {
        let mut input = String::new();
        for i in 0..(3 * MAX_VALUES + 7) {
            if i % 500 == 0 {
                input.push_str("not json\n");
            } else {
                input.push_str(&format!("{{\"at\":\"2026-01-01T00:00:{:02}Z\"}}\n", i % 60));
            }
        }
        let expected = one_pass_decoded(input.as_bytes());
        assert_eq!(
            expected
                .iter()
                .filter(|l| l.starts_with("rejected"))
                .count(),
            7
        );
        assert_eq!(decoded(input.as_bytes(), 1 << 20), expected);
    }

    /// A pipe: each read returns what one write sent, waiting for it if need be.
    struct Chan(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);

    impl Read for Chan {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1.is_empty() {
                match self.0.recv() {
                    Ok(v) => self.1 = v,
                    Err(_) => return Ok(0),
                }
            }
            let k = buf.len().min(self.1.len());
            buf[..k].copy_from_slice(&self.1[..k]);
            self.1.drain(..k);
            Ok(k)
        }
    }

    /// A complete value on a pipe is applied before any more input comes, whatever the line
    /// after it starts with.
    #[test]
    fn a_complete_value_on_a_pipe_is_applied_before_more_input_comes() {
        for (first, rest) in [
            (
                "{\"at\":\"2026-01-01T00:00:00Z\"}\n{\"at\"",
                ":\"2026-01-01T00:00:01Z\"}\n",
            ),
            (
                " {\"at\":\"2026-01-01T00:00:00Z\"}\n {\"at\"",
                ":\"2026-01-01T00:00:01Z\"}\n",
            ),
            ("{\"at\":\"2026-01-01T00:00:00Z\"}\n[1,", "2]\n"),
            ("{\"at\":\"2026-01-01T00:00:00Z\"}\n ", "\n"),
            (
                "{\n  \"at\": \"2026-01-01T00:00:00Z\"\n}\n{\n",
                "  \"at\": \"2026-01-01T00:00:01Z\"\n}\n",
            ),
        ] {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let (seen_tx, seen) = std::sync::mpsc::channel();
            tx.send(first.as_bytes().to_vec()).unwrap();
            let t = std::thread::spawn(move || {
                Splitter::new(Chan(rx, Vec::new()))
                    .for_each_decoded(
                        |_| {
                            let _ = seen_tx.send(());
                            Ok(())
                        },
                        |_, _| {},
                        || {},
                    )
                    .unwrap()
            });
            let live = seen
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok();
            tx.send(rest.as_bytes().to_vec()).unwrap();
            drop(tx);
            t.join().unwrap();
            assert!(live, "{first:?}: the first value waited for more input");
        }
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
        for input in [
            "{\"at\":\"2026-01-01T00:00:00Z\"}\n{\"at\":",
            " {\"at\":\"2026-01-01T00:00:00Z\"}\n {\"at\":",
            "{\"at\":\"2026-01-01T00:00:00Z\"}\n\"x",
        ] {
            let mut seen = 0;
            let e = Splitter::new(Failing(input.as_bytes().to_vec()))
                .for_each_decoded(
                    |v| {
                        seen += 1;
                        v.map(|_| ())
                    },
                    |_, _| {},
                    || {},
                )
                .unwrap_err();
            assert_eq!(e.to_string(), "disk on fire");
            assert_eq!(seen, 1, "{input:?}");
        }
    }
}
