//! Live mode on a large cluster: the real daemon against the test API server.
//!
//! `cargo bench --bench live [-- --pods N --events N]` (defaults: 100,000 pods, 200 events)
//! fills the in-process test API server (tests/support/apiserver.rs, which pages lists with
//! `limit`/`continue` as kube-apiserver does) with realistic pods (the replay benchmark's
//! ~8 KB template, managedFields and all), then prints:
//! - the time from starting the daemon (`sandwatch run`'s `Daemon`, generic preset) to
//!   `/readyz` answering 200, its initial list read in pages of 500;
//! - the resident memory the daemon added per pod, against a kube-runtime reflector of typed
//!   `Pod`s (what a controller keeps by default) over the same pods, measured the same way
//!   in the same run;
//! - event-to-finding latency: `--events` pods get their agent OOM-killed one at a time (a
//!   status update, as the kubelet writes it), each timed from the write to the daemon's
//!   opened transition; p50 and p99;
//! - how long a `/metrics` scrape takes, and how many series it has.
//!
//! Memory is the growth of this process's RSS, so the server's own pods are stored before
//! anything is measured.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::Value;

use sandwatch::app::live::{Daemon, Settings};
use sandwatch::model::finding::Event;
use support::apiserver::TestApiServer;

const POD: &str = include_str!("pod-template.json");
const RUNNING: &str = r#"{"running":{"startedAt":"2026-05-01T10:00:04Z"}}"#;
const OOM: &str = r#"{"terminated":{"exitCode":137,"reason":"OOMKilled","startedAt":"2026-05-01T10:00:04Z","finishedAt":"2026-05-01T11:00:00Z","containerID":"containerd://a3c9e812"}}"#;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn name(i: usize) -> String {
    format!("sandbox-{i:07}-7f2e91c4d0")
}

fn namespace(i: usize) -> String {
    format!("agents-{}", i % 40)
}

/// Pod `i` as the API server stores it.
fn pod(i: usize, agent_state: &str) -> Value {
    let text = POD
        .replace("{NAME}", &name(i))
        .replace("{NS}", &namespace(i))
        .replace("{UID}", &format!("5f0c{i:08x}-1a2b-4c3d-8e9f-{i:012x}"))
        .replace("{SESSION}", &format!("session-{i:07}"))
        .replace("{PHASE}", "Running")
        .replace("{AGENT_STATE}", agent_state)
        .replace("{TYPE}", "ADDED")
        .replace('\n', "");
    let mut event: Value = serde_json::from_str(&text).expect("the template is JSON");
    let mut obj = event["object"].take();
    // The server keeps its own resourceVersion.
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    obj
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", daemon.addr))
        .await
        .expect("HTTP to the daemon");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Lists every pod once, page by page, so that the server's own work for a list is in this
/// process's memory before the clients' is measured.
async fn warm_up(server: &TestApiServer) -> anyhow::Result<()> {
    let mut token = String::new();
    loop {
        let url = format!("{}/api/v1/pods?limit=500&continue={token}", server.url());
        let page: Value = reqwest::get(url).await?.json().await?;
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok(()),
        }
    }
}

/// Starts the daemon and waits for it to be ready; returns it and the time that took.
async fn start_daemon(server: &TestApiServer) -> anyhow::Result<(Daemon, Duration)> {
    let config = sandwatch::app::config::preset("generic")?;
    let settings = Settings {
        tick: Duration::from_millis(100),
        ..Settings::new(config, "127.0.0.1:0".parse()?)
    };
    let t = Instant::now();
    let daemon = Daemon::start(settings, Some(server.client())).await?;
    let deadline = t + Duration::from_secs(600);
    while get(&daemon, "/readyz").await.0 != 200 {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not get ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((daemon, t.elapsed()))
}

/// A reflector of typed Pods over the same server: the memory it added once it holds every
/// pod, and the time it took.
async fn reflector_memory(server: &TestApiServer, pods: usize) -> (u64, Duration) {
    let before = rss();
    let t = Instant::now();
    let (store, writer) = reflector::store::<Pod>();
    let api: Api<Pod> = Api::all(server.client());
    let task = tokio::spawn(
        reflector(writer, watcher(api, watcher::Config::default()))
            .applied_objects()
            .for_each(|_| futures::future::ready(())),
    );
    let _ = store.wait_until_ready().await;
    while store.len() < pods {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t.elapsed();
    let added = rss().saturating_sub(before);
    task.abort();
    drop(store);
    (added, took)
}

/// OOM-kills the agent of `events` pods one at a time; the latency of each finding.
async fn latencies(
    server: &TestApiServer,
    daemon: &Daemon,
    pods: usize,
    events: usize,
) -> Vec<Duration> {
    let mut rx = daemon.transitions();
    let oom: Value = serde_json::from_str(OOM).expect("JSON");
    let mut out = Vec::with_capacity(events);
    for k in 0..events {
        let i = k * (pods / events.max(1)).max(1) % pods;
        let mut current = server
            .get("", "v1", "pods", &namespace(i), &name(i))
            .expect("the pod exists");
        current["status"]["containerStatuses"][0]["state"] = oom.clone();
        let sent = Instant::now();
        server.update(current);
        let want = name(i);
        loop {
            let t = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a finding within 10 s")
                .expect("transitions");
            if t.event == Event::Opened && t.finding.finding.pod.as_deref() == Some(want.as_str()) {
                break;
            }
        }
        out.push(sent.elapsed());
    }
    out.sort();
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pods = arg("--pods", 100_000).max(1);
    let events = arg("--events", 200).min(pods);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start().await;
    let t = Instant::now();
    for i in 0..pods {
        server.create(pod(i, RUNNING));
    }
    println!(
        "stored {pods} pods in the test API server in {:.1?}",
        t.elapsed()
    );

    warm_up(&server).await?;
    let before = rss();
    let (daemon, ready) = start_daemon(&server).await?;
    let daemon_bytes = rss().saturating_sub(before);
    println!(
        "daemon: ready in {:.2} s (initial list in pages of 500)",
        ready.as_secs_f64()
    );

    let (reflector_bytes, reflector_took) = reflector_memory(&server, pods).await;
    let per_pod = |b: u64| b as f64 / pods as f64 / 1024.0;
    println!(
        "memory per pod: daemon {:.2} KiB, kube-runtime reflector of typed Pods {:.1} KiB (holding all after {:.2} s): {:.0}x less",
        per_pod(daemon_bytes),
        per_pod(reflector_bytes),
        reflector_took.as_secs_f64(),
        reflector_bytes as f64 / daemon_bytes.max(1) as f64
    );

    let l = latencies(&server, &daemon, pods, events).await;
    if !l.is_empty() {
        println!(
            "event to finding ({} events, one at a time): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.len(),
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            ms(l[l.len() - 1])
        );
    }

    let mut scrapes = Vec::new();
    let mut series = 0;
    for _ in 0..21 {
        let t = Instant::now();
        let (status, text) = get(&daemon, "/metrics").await;
        scrapes.push(t.elapsed());
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        series = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
    }
    scrapes.sort();
    println!(
        "/metrics scrape: {:.2} ms (median of {}), {series} series",
        ms(percentile(&scrapes, 0.5)),
        scrapes.len()
    );
    daemon.shutdown().await;
    Ok(())
}
