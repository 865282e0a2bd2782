//! Replay throughput and memory on a generated cluster.
//!
//! `cargo bench --bench replay [-- --pods N --sessions N --rounds N --keep]` (defaults: 100,000
//! of each, 3 rounds) writes a replay file of realistic pods (~7 KB of JSON each, managedFields
//! and all) and session records to a temporary directory, replays it through the real
//! pipeline (reader → decoders → engine → report and metrics sinks), and prints events/s, the
//! process's memory per tracked pod, and the JSON-scan floor (serde's `IgnoredAny` over the
//! same bytes, in memory, on one thread) for comparison. Replays and floors take turns, round
//! after round, so that a machine whose speed drifts slows both alike; the ratio is of the
//! medians, and each round's is printed too.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::time::Instant;

use sandwatch::app::config;
use sandwatch::app::replay::{self, Input};
use sandwatch::sinks::report::Format;

const POD: &str = include_str!("pod-template.json");

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Reads a line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Makes jemalloc give every freed page back to the system now (`arena.<all>.purge`).
fn purge_freed_pages() {
    const ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a documented control name, NUL-terminated, that reads and writes nothing.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, 0, "jemalloc refused to purge");
}

fn pod_json(i: usize, kind: &str, phase: &str, agent_state: &str) -> String {
    let ns = format!("agents-{}", i % 40);
    POD.replace("{NAME}", &format!("sandbox-{i:07}-7f2e91c4d0"))
        .replace("{NS}", &ns)
        .replace("{UID}", &format!("5f0c{i:08x}-1a2b-4c3d-8e9f-{i:012x}"))
        .replace("{SESSION}", &format!("session-{i:07}"))
        .replace("{PHASE}", phase)
        .replace("{AGENT_STATE}", agent_state)
        .replace("{TYPE}", kind)
        .replace('\n', "")
}

fn generate(path: &std::path::Path, pods: usize, sessions: usize) -> std::io::Result<(usize, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let running = r#"{"running":{"startedAt":"2026-05-01T10:00:04Z"}}"#;
    let oom = r#"{"terminated":{"exitCode":137,"reason":"OOMKilled","startedAt":"2026-05-01T10:00:04Z","finishedAt":"2026-05-01T11:00:00Z","containerID":"containerd://a3c9e812"}}"#;
    let mut values = 0;
    for i in 0..pods {
        writeln!(w, "{}", pod_json(i, "ADDED", "Running", running))?;
        values += 1;
    }
    for i in 0..sessions {
        let state = match i % 20 {
            0 => "suspended",
            1 => "stopped",
            _ => "running",
        };
        writeln!(
            w,
            r#"{{"at":"2026-05-01T10:30:00Z","record":{{"kind":"session","id":"session-{i:07}","namespace":"agents-{}","state":"{state}"}}}}"#,
            i % 40
        )?;
        values += 1;
    }
    // A day's churn: 1 in 10 agents OOM-killed behind their sidecar, 1 in 25 pods deleted.
    for i in (0..pods).step_by(10) {
        writeln!(w, "{}", pod_json(i, "MODIFIED", "Running", oom))?;
        values += 1;
    }
    for i in (5..pods).step_by(25) {
        writeln!(w, "{}", pod_json(i, "DELETED", "Running", running))?;
        values += 1;
    }
    writeln!(w, r#"{{"at":"2026-05-01T12:00:00Z"}}"#)?;
    // On disk before anything is timed: the kernel writing a GB back meanwhile would take
    // CPU from the replay.
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((values + 1, std::fs::metadata(path)?.len()))
}

fn main() -> anyhow::Result<()> {
    let pods = arg("--pods", 100_000);
    let sessions = arg("--sessions", 100_000);
    let dir = std::env::temp_dir().join(format!("sandwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cluster.json");
    let t = Instant::now();
    let (values, bytes) = generate(&path, pods, sessions)?;
    println!(
        "generated {values} values ({:.0} MB, {:.1} KB per pod) in {:.1?}",
        bytes as f64 / 1e6,
        POD.len() as f64 / 1e3,
        t.elapsed()
    );

    let config = config::preset("generic")?;
    let replay_once = || -> anyhow::Result<(f64, replay::Outcome<std::io::Sink>)> {
        let t = Instant::now();
        let outcome = replay::run(
            &config,
            vec![Input {
                name: path.display().to_string(),
                reader: Box::new(File::open(&path)?),
            }],
            Format::Json,
            std::io::sink(),
        )?;
        Ok((t.elapsed().as_secs_f64(), outcome))
    };
    let rss_before = status_kib("VmRSS:");
    let (first_secs, outcome) = replay_once()?;
    let peak = status_kib("VmHWM:");
    let after = status_kib("VmRSS:");
    // What the daemon settles to: jemalloc's background thread gives freed pages back a
    // second after they were freed; here they are given back at once.
    purge_freed_pages();
    let settled = status_kib("VmRSS:");
    let tracked = pods - (5..pods).step_by(25).count();
    let c = outcome.counts;
    assert_eq!(c.rejected, 0, "the generated file is valid");
    println!(
        "memory: peak RSS {:.1} MiB, {:.1} MiB at the end, {:.1} MiB before the replay; {tracked} pods and {sessions} sessions tracked, {} findings open",
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        outcome.engine.open_findings().len(),
    );
    drop(outcome);
    let per_pod = |kib: u64| (kib.saturating_sub(rss_before) * 1024) as f64 / tracked as f64;
    println!(
        "memory per tracked pod (with its session, indexes and open findings): {:.0} bytes at peak, {:.0} bytes at the end, {:.0} bytes once freed pages are given back",
        per_pod(peak),
        per_pod(after),
        per_pod(settled)
    );

    // The floor: parse every value and throw it away.
    let mut data = Vec::with_capacity(bytes as usize);
    File::open(&path)?.read_to_end(&mut data)?;
    let floor_once = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut n = 0;
        for v in serde_json::Deserializer::from_slice(&data).into_iter::<serde::de::IgnoredAny>() {
            v?;
            n += 1;
        }
        assert_eq!(n, values);
        Ok(t.elapsed().as_secs_f64())
    };
    let rounds = arg("--rounds", 3).max(1);
    let mut replays = vec![first_secs];
    let mut floors = vec![floor_once()?];
    for _ in 1..rounds {
        replays.push(replay_once()?.0);
        floors.push(floor_once()?);
    }
    let per_round: Vec<String> = replays
        .iter()
        .zip(&floors)
        .map(|(r, f)| format!("{:.0}%", 100.0 * f / r))
        .collect();
    let replay_secs = median(&replays);
    let floor_secs = median(&floors);
    println!(
        "replay: {} values ({} watch events, {} records) in {replay_secs:.2} s (median of {rounds}) = {:.0} values/s, {:.0} MB/s",
        c.values,
        c.events,
        c.records,
        c.values as f64 / replay_secs,
        bytes as f64 / 1e6 / replay_secs
    );
    println!(
        "JSON-scan floor (IgnoredAny, in memory, one thread): {values} values in {floor_secs:.2} s (median of {rounds}) = {:.0} MB/s",
        bytes as f64 / 1e6 / floor_secs,
    );
    println!(
        "replay runs at {:.0}% of the floor's speed (rounds: {})",
        100.0 * floor_secs / replay_secs,
        per_round.join(", ")
    );
    if std::env::args().any(|a| a == "--keep") {
        println!("kept {}", path.display());
    } else {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
