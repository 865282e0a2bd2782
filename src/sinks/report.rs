//! The replay report: each finding transition, for a program (`json`) or a person (`table`).
//!
//! Sits at the end of the replay flow: replay source → engine → transitions → this sink →
//! standard output. JSON prints one object per line as transitions happen, then a summary
//! object. The table is printed at the end with aligned columns and a one-line summary; the
//! streamed table (for live input) prints each row as its transition happens, under a header,
//! and cannot know the widths of rows still to come: a column is as wide as the widest cell
//! seen so far (a wider cell shifts the columns after it, and the rows after it; rows already
//! printed stay as they were).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::model::finding::{Event, FindingKind, Transition};
use crate::model::view::FindingView;
use crate::util::time::Ts;

/// How the report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    /// Aligned, at the end.
    Table,
    /// Row by row, as transitions happen.
    StreamedTable,
}

/// One transition of the JSON report: the event and its time, then the finding's fields.
struct Line<'a> {
    event: Event,
    at: Ts,
    finding: FindingView<'a>,
    detection_latency_seconds: Option<f64>,
}

impl Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let latency = usize::from(self.detection_latency_seconds.is_some());
        let mut m = s.serialize_struct("Line", 2 + FindingView::FIELDS + latency)?;
        m.serialize_field("event", &self.event)?;
        m.serialize_field("at", &self.at)?;
        self.finding.fields(&mut m)?;
        if let Some(l) = &self.detection_latency_seconds {
            m.serialize_field("detection_latency_seconds", l)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Summary {
    event: &'static str,
    open: BTreeMap<&'static str, u64>,
    opened_total: u64,
    resolved_total: u64,
    retries_after_death_total: u64,
    events: u64,
    records: u64,
    rejected: u64,
}

/// What the input held, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub events: u64,
    pub records: u64,
    pub rejected: u64,
}

/// The table's columns.
const HEADER: [&str; 9] = [
    "AT",
    "EVENT",
    "KIND",
    "PROFILE",
    "POD",
    "SESSION",
    "EXECUTION",
    "REASON",
    "DETAIL",
];

/// The width a streamed column starts at: room for an RFC 3339 time, `resolved`, any kind,
/// and the common profile names and reasons, so that rows seldom have to widen a column.
fn initial_widths() -> [usize; 9] {
    let kind = FindingKind::ALL
        .iter()
        .map(|k| k.as_str().len())
        .max()
        .unwrap_or(0);
    let mut w = HEADER.map(str::len);
    w[0] = "2026-01-01T00:00:00Z".len();
    w[1] = "resolved".len();
    w[2] = w[2].max(kind);
    w[3] = 12;
    w[7] = 12;
    w
}

pub struct Report<W: Write> {
    out: W,
    format: Format,
    /// The rows of a table printed at the end.
    rows: Vec<[String; 9]>,
    /// The table's column widths so far, and whether its header is out.
    widths: [usize; 9],
    header_written: bool,
    opened: u64,
    resolved: u64,
    retries: u64,
    open: BTreeMap<&'static str, u64>,
    /// The first write that failed; reported by [`Report::finish`].
    error: Option<io::Error>,
    /// A JSON line is put together here and written at once: one write per line, not one
    /// per field (each of which would lock standard output).
    line: Vec<u8>,
}

impl<W: Write> super::TransitionSink for Report<W> {
    fn transition(&mut self, t: &Transition) {
        if self.error.is_none() {
            self.error = self.write(t).err();
        }
    }
}

impl<W: Write> Report<W> {
    pub fn new(out: W, format: Format) -> Report<W> {
        Report {
            out,
            format,
            rows: Vec::new(),
            widths: match format {
                Format::StreamedTable => initial_widths(),
                _ => HEADER.map(str::len),
            },
            header_written: false,
            opened: 0,
            resolved: 0,
            retries: 0,
            open: FindingKind::ALL.iter().map(|k| (k.as_str(), 0)).collect(),
            error: None,
            line: Vec::new(),
        }
    }

    fn write(&mut self, t: &Transition) -> io::Result<()> {
        let kind = t.finding.finding.kind.as_str();
        match t.event {
            Event::Opened => {
                self.opened += 1;
                self.retries += t.finding.retries_after_death;
                *self.open.entry(kind).or_default() += 1;
            }
            Event::Updated => {
                self.retries += t.new_retries;
                return Ok(());
            }
            Event::Resolved => {
                self.resolved += 1;
                *self.open.entry(kind).or_default() -= 1;
            }
        }
        let view = FindingView::new(&t.finding, t.at);
        match self.format {
            Format::Json => {
                let line = Line {
                    event: t.event,
                    at: t.at,
                    finding: view,
                    detection_latency_seconds: (t.event == Event::Opened)
                        .then(|| t.detection_latency_secs())
                        .flatten(),
                };
                self.line.clear();
                serde_json::to_writer(&mut self.line, &line)?;
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            }
            Format::Table => {
                let row = row(t, &view);
                self.widen(&row);
                self.rows.push(row);
                Ok(())
            }
            Format::StreamedTable => {
                let row = row(t, &view);
                self.widen(&row);
                self.header()?;
                self.line(&row)
            }
        }
    }

    fn widen(&mut self, row: &[String; 9]) {
        for (w, cell) in self.widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    /// The header, before the first row (or alone, when there is no row).
    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            self.line(&HEADER.map(String::from))?;
        }
        Ok(())
    }

    /// One line of the table, its cells padded to the column widths.
    fn line(&mut self, row: &[String; 9]) -> io::Result<()> {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(self.widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }

    /// How many findings are open now.
    pub fn open_total(&self) -> u64 {
        self.open.values().sum()
    }

    /// Writes the summary (and the table, or the streamed table's header when no row printed
    /// it), or the first write error.
    pub fn finish(mut self, counts: &Totals) -> io::Result<W> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match self.format {
            Format::Json => {
                let summary = Summary {
                    event: "summary",
                    open: self.open.clone(),
                    opened_total: self.opened,
                    resolved_total: self.resolved,
                    retries_after_death_total: self.retries,
                    events: counts.events,
                    records: counts.records,
                    rejected: counts.rejected,
                };
                serde_json::to_writer(&mut self.out, &summary)?;
                writeln!(self.out)?;
            }
            Format::Table | Format::StreamedTable => {
                self.header()?;
                for row in std::mem::take(&mut self.rows) {
                    self.line(&row)?;
                }
                let open: Vec<String> = self
                    .open
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                writeln!(
                    self.out,
                    "\n{} opened, {} resolved, {} still open{}; {} retries after death; {} watch events, {} records, {} rejected",
                    self.opened,
                    self.resolved,
                    self.open_total(),
                    if open.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", open.join(", "))
                    },
                    self.retries,
                    counts.events,
                    counts.records,
                    counts.rejected
                )?;
            }
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A row of the table. Cells come from outside: escaped and bounded, so that no value can
/// break the table or forge a line.
fn row(t: &Transition, v: &FindingView<'_>) -> [String; 9] {
    let clip = |s: &str| crate::util::text::clip(s).into_owned();
    let dash = |s: Option<&str>| s.map_or_else(|| "-".to_string(), clip);
    let target = match (v.namespace, v.pod) {
        (Some(ns), Some(p)) => format!("{}/{}", clip(ns), clip(p)),
        (None, Some(p)) => clip(p),
        _ => "-".to_string(),
    };
    let mut detail = Vec::new();
    if let Some(c) = v.container {
        detail.push(format!("container={}", clip(c)));
    }
    if let Some(x) = v.exit_code {
        detail.push(format!("exit={x}"));
    }
    if let Some(s) = v.state {
        detail.push(format!("state={}", clip(s)));
    }
    if v.retries_after_death > 0 {
        detail.push(format!("retries={}", v.retries_after_death));
    }
    if t.event == Event::Resolved {
        detail.push(format!("open_for={}s", v.open_for_seconds));
    }
    let work = match (v.execution, v.sandbox) {
        (Some(e), Some(s)) => format!("{}@{}", clip(e), clip(s)),
        (Some(e), None) => clip(e),
        (None, s) => dash(s),
    };
    [
        t.at.to_string(),
        format!("{:?}", t.event).to_lowercase(),
        v.kind.to_string(),
        clip(v.profile),
        target,
        dash(v.session),
        work,
        clip(v.reason),
        detail.join(" "),
    ]
}
