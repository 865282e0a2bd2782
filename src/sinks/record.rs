//! `run --record FILE`: every input the engine applies, appended to FILE as replay values, so
//! that `sandwatch replay FILE` gives exactly the transitions the live run logged.
//!
//! A sink at the engine's input: the engine task hands each change (with the instant it was
//! applied at) to [`Recorder::change`], which encodes it and queues it without waiting; a
//! thread of its own writes the queue out. A full queue (a slow disk) drops the value and
//! counts it (`sandwatch_record_values_total{outcome="dropped"}`): the engine never waits on
//! the recording. The file rotates at `max_bytes` (FILE.1, FILE.2, ... up to `keep` old
//! files), and every file starts with a header, so each one replays on its own.
//!
//! The values (see the README's replay format): pods as watch events of the slim projection,
//! records and tombstones, and the source changes a replay cannot infer — `pod_deleted`,
//! `listed` (a full list's survivors), `resume_target`, `source` (synced, fresh, error) — plus
//! `{"at"}` ticks that fired timers.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::core::engine::Change;
use crate::model::profile::Profiles;
use crate::model::record::RecordChange;
use crate::util::time::Ts;

/// Values waiting for the writer at most.
const QUEUE: usize = 16_384;

/// The first value of every recording file.
pub const HEADER: &str = r#"{"recording":{"version":1}}"#;

type Outcomes = Family<Vec<(&'static str, &'static str)>, Counter>;

/// The engine's side of a recording.
pub struct Recorder {
    /// `None` once dropped: the writer then ends after what is queued.
    queue: Option<SyncSender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    values: Outcomes,
    profiles: std::sync::Arc<Profiles>,
}

/// The recording file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("--record {path}: {source}")]
pub struct RecordError {
    path: String,
    source: std::io::Error,
}

impl Recorder {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn start(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        profiles: std::sync::Arc<Profiles>,
        registry: &mut Registry,
    ) -> Result<Recorder, RecordError> {
        let values = Outcomes::default();
        for outcome in ["written", "dropped", "failed"] {
            let _ = values.get_or_create(&vec![("outcome", outcome)]);
        }
        registry.register(
            "sandwatch_record_values",
            "Inputs of the engine given to the recording (--record), by outcome: written, dropped (the writer fell behind; the engine does not wait), failed (the disk refused)",
            values.clone(),
        );
        let mut file = Rotating::open(path, max_bytes, keep).map_err(|source| RecordError {
            path: path.display().to_string(),
            source,
        })?;
        let (queue, rx) = sync_channel(QUEUE);
        let counts = values.clone();
        let writer = std::thread::Builder::new()
            .name("sandwatch-record".into())
            .spawn(move || write_all(&mut file, rx, &counts))
            .map_err(|source| RecordError {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Recorder {
            queue: Some(queue),
            writer: Some(writer),
            values,
            profiles,
        })
    }

    /// Records one change applied at `at`. `Tick`s are recorded only when `fired` (a timer
    /// opened or resolved something then).
    pub fn change(&self, at: Ts, change: &Change, fired: bool) {
        let Some(value) = self.value(at, change, fired) else {
            return;
        };
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        let Some(queue) = &self.queue else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(line) {
            self.values
                .get_or_create(&vec![("outcome", "dropped")])
                .inc();
        }
    }

    fn value(&self, at: Ts, change: &Change, fired: bool) -> Option<Value> {
        let name = |p| self.profiles.get(p).name.to_string();
        let body = match change {
            Change::PodUpserted(obj) => json!({"watch": {"type": "MODIFIED", "object": obj}}),
            Change::PodDeleted {
                namespace,
                name,
                uid,
            } => json!({"pod_deleted": {"namespace": namespace, "name": name, "uid": uid}}),
            Change::Record(RecordChange::Upsert(r)) => json!({"record": {
                "kind": r.kind.as_str(), "id": r.id, "profile": name(r.profile), "state": r.state,
                "namespace": r.namespace, "pod": r.pod, "session": r.session, "sandbox": r.sandbox,
                "attempt": r.attempt, "updated_at": r.updated_at, "deadline": r.deadline,
            }}),
            Change::Record(RecordChange::Delete {
                kind,
                profile,
                namespace,
                id,
            }) => json!({"record": {
                "kind": kind.as_str(), "id": id, "profile": name(*profile), "namespace": namespace,
                "deleted": true,
            }}),
            Change::ResumeTarget {
                profile,
                namespace,
                name: target,
                exists,
            } => json!({"resume_target": {
                "profile": name(*profile), "namespace": namespace, "name": target, "exists": exists,
            }}),
            Change::Listed {
                feed,
                profile,
                namespace,
                listed,
            } => {
                let mut objects: Vec<[&str; 2]> = listed
                    .iter()
                    .map(|(n, o)| [n.as_str(), o.as_str()])
                    .collect();
                objects.sort_unstable();
                json!({"listed": {
                    "feed": feed.as_str(), "profile": name(*profile), "namespace": namespace,
                    "objects": objects,
                }})
            }
            Change::Source(s) => json!({"source": {
                "name": s.name, "profile": s.profile.map(name),
                "feeds": s.feeds.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
                "namespace": s.namespace, "synced": s.synced, "fresh": s.fresh, "error": s.error,
            }}),
            Change::Tick if fired => json!({}),
            Change::Tick => return None,
        };
        let mut v = body;
        v.as_object_mut()?.insert("at".into(), json!(at));
        Some(v)
    }
}

impl Drop for Recorder {
    /// Ends the recording: what is queued is written and flushed before this returns (the
    /// queue is bounded, so this is too).
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: writes what comes, flushing once the queue is empty.
fn write_all(file: &mut Rotating, rx: Receiver<Vec<u8>>, values: &Outcomes) {
    while let Ok(line) = rx.recv() {
        let mut batch = vec![line];
        batch.extend(rx.try_iter().take(1024));
        for line in batch {
            let outcome = match file.write(&line) {
                Ok(()) => "written",
                Err(e) => {
                    tracing::warn!(error = %e, "writing the recording failed: this value is lost");
                    "failed"
                }
            };
            values.get_or_create(&vec![("outcome", outcome)]).inc();
        }
        if let Err(e) = file.flush() {
            tracing::warn!(error = %e, "flushing the recording failed");
        }
    }
    let _ = file.flush();
}

/// A file that rotates at a size, keeping a bounded number of old ones.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    out: BufWriter<File>,
    size: u64,
}

impl Rotating {
    fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        let mut r = Rotating {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1024),
            keep,
            out: BufWriter::new(file),
            size,
        };
        if size == 0 {
            r.header()?;
        }
        Ok(r)
    }

    fn header(&mut self) -> std::io::Result<()> {
        self.out.write_all(HEADER.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += HEADER.len() as u64 + 1;
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size + line.len() as u64 > self.max_bytes && self.size > HEADER.len() as u64 + 1 {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// FILE becomes FILE.1, FILE.1 becomes FILE.2, ...; the oldest beyond `keep` goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let old = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(old(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(old(n), old(n + 1));
            }
            std::fs::rename(&self.path, old(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        self.header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = std::env::temp_dir().join(format!("sandwatch-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.json");
        let mut r = Rotating::open(&path, 1024, 2).unwrap();
        let line = format!(
            "{{\"at\":\"2026-05-01T10:00:00Z\",\"pad\":\"{}\"}}\n",
            "x".repeat(200)
        );
        for _ in 0..40 {
            r.write(line.as_bytes()).unwrap();
        }
        r.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["rec.json", "rec.json.1", "rec.json.2"]);
        for n in &names {
            let text = std::fs::read_to_string(dir.join(n)).unwrap();
            assert!(text.starts_with(HEADER), "{n} starts with the header");
            assert!(text.len() <= 1024, "{n}: {} bytes", text.len());
        }
    }
}
