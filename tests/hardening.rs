//! The daemon under abuse and faults, as a cluster network can deliver them: slow and
//! half-sent requests, unauthenticated bodies, floods of bad input, an API server that drops
//! packets, a leader that must stop.

mod common;
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use sandwatch::app::live::Daemon;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::metrics::has;

const TOKEN: &str = "a-long-ingest-token";

async fn ingest_daemon(
    server: &TestApiServer,
    adjust: impl FnOnce(&mut sandwatch::app::live::Settings),
) -> Daemon {
    start_with(
        server,
        sandwatch::app::config::preset("offload-modal").unwrap(),
        |s| {
            s.ingest_token = Some(TOKEN.into());
            adjust(s);
        },
    )
    .await
}

/// Reads whatever the server sends until it closes or `limit` passes; `None` if it stayed
/// open and silent.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn healthz_within(d: &Daemon, limit: Duration) -> bool {
    let client = reqwest::Client::builder().timeout(limit).build().unwrap();
    client
        .get(format!("http://{}/healthz", d.addr))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_before_any_body_is_read() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server, |_| {}).await;
    // 50 clients announce a megabyte each, send a few bytes of it, and wait.
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        let auth = if i % 2 == 0 {
            "Authorization: Bearer wrong\r\n"
        } else {
            ""
        };
        c.write_all(
            format!("POST /api/v1/records HTTP/1.1\r\nHost: sandwatch\r\nContent-Length: 1048576\r\n{auth}\r\n[{{\"kind\":")
                .as_bytes(),
        )
        .await
        .unwrap();
        clients.push(c);
    }
    let started = Instant::now();
    for c in &mut clients {
        let answer = read_until_close(c, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered from the headers, without waiting for the bodies"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_bodies_are_read_at_once_and_each_within_a_deadline() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server, |s| s.ingest_body_timeout = Duration::from_secs(3)).await;
    // Six authenticated clients start a body and stall.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        c.write_all(
            format!("POST /api/v1/records HTTP/1.1\r\nHost: sandwatch\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n[").as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    let mut answers = Vec::new();
    for c in &mut stalled {
        answers.push(
            read_until_close(c, Duration::from_secs(10))
                .await
                .unwrap_or_default(),
        );
    }
    let code = |a: &String| a.split_whitespace().nth(1).unwrap_or("-").to_string();
    let mut codes: Vec<String> = answers.iter().map(code).collect();
    codes.sort();
    assert_eq!(
        codes,
        ["408", "408", "408", "408", "503", "503"],
        "four bodies read at once, each given up on at its deadline; the rest told to retry: {answers:?}"
    );
    assert!(healthz_within(&d, Duration::from_secs(1)).await);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_idle_connections_are_closed_and_health_still_answers() {
    let server = TestApiServer::start().await;
    let d = start_with(
        &server,
        sandwatch::app::config::preset("generic").unwrap(),
        |s| {
            s.http.header_timeout = Duration::from_millis(500);
        },
    )
    .await;
    let mut half = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        half.push(c);
    }
    assert!(
        healthz_within(&d, Duration::from_secs(1)).await,
        "health answers meanwhile"
    );
    for c in &mut half {
        assert!(
            read_until_close(c, Duration::from_secs(3)).await.is_some(),
            "a half-sent request is closed after the header deadline"
        );
    }
    // A keep-alive connection left idle after its request is closed too.
    let mut idle = TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_close(&mut idle, Duration::from_secs(3)).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "answered, then closed when idle: {answer:?}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped() {
    let server = TestApiServer::start().await;
    let d = start_with(
        &server,
        sandwatch::app::config::preset("generic").unwrap(),
        |s| {
            s.http.max_connections = 4;
            s.http.header_timeout = Duration::from_secs(30);
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !healthz_within(&d, Duration::from_millis(500)).await,
        "a fifth connection waits for a free slot"
    );
    drop(held.pop());
    assert!(
        healthz_within(&d, Duration::from_secs(2)).await,
        "served once a slot frees"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_hold_shutdown_up() {
    let server = TestApiServer::start().await;
    let d = start_with(
        &server,
        sandwatch::app::config::preset("generic").unwrap(),
        |s| {
            s.http.header_timeout = Duration::from_secs(60);
            s.http.shutdown_grace = Duration::from_secs(1);
        },
    )
    .await;
    wait_ready(&d, true).await;
    let mut c = TcpStream::connect(d.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert!(
        d.shutdown_within(Duration::from_secs(10)).await,
        "every task ended by itself"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the connection was dropped at the end of the grace: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_server_drops_packets_counts_the_failures_and_still_stops_in_time() {
    let server = TestApiServer::start().await;
    let proxy = support::proxy::FreezingProxy::start(server.addr()).await;
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{}", proxy.addr).parse().unwrap(),
    ))
    .unwrap();
    let c = sandwatch::app::config::load(
        "profiles:\n  - preset: generic\n    remediation:\n      actions:\n        reap_pod: { enabled: true, kubernetes: { delete_pod: true } }\n",
    )
    .unwrap();
    let settings = sandwatch::app::live::Settings {
        tick: Duration::from_millis(100),
        leader_election: Some(sandwatch::remediation::lease::Elector {
            duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
            ..sandwatch::remediation::lease::Elector::new("sandwatch-remediation", "default", "a")
        }),
        ..sandwatch::app::live::Settings::new(c, "127.0.0.1:0".parse().unwrap())
    };
    let d = Daemon::start(settings, Some(client)).await.unwrap();
    wait_for(Duration::from_secs(10), "the lease taken", || async {
        has(&metrics_text(&d).await, "sandwatch_leader 1")
    })
    .await;
    // Packets to the API server are dropped from now on (nothing is refused or closed).
    proxy.freeze();
    wait_for(
        Duration::from_secs(10),
        "the failed lease calls counted",
        || async {
            support::metrics::value(&metrics_text(&d).await, "sandwatch_lease_errors_total")
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let started = Instant::now();
    let finished = d.shutdown_within(Duration::from_secs(10)).await;
    assert!(finished, "every part of shutdown ended by itself");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "well inside the pod's 30 s grace: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_on_sigterm_while_a_client_hangs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start().await;
    let dir = std::env::temp_dir().join(format!("sandwatch-hang-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\nusers:\n- name: test\n  user: {{}}\n",
            server.url()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args([
            "run",
            "--preset",
            "generic",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(20), "ready", || async {
        matches!(reqwest::get(format!("{url}/readyz")).await, Ok(r) if r.status() == 200)
    })
    .await;
    let mut hanging = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    hanging
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still running {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ bounded answers, tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_records_gets_a_short_answer() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server, |_| {}).await;
    let body = "{\"kind\":\"job\",\"id\":\"x\"}\n".repeat(40_000);
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/records", d.addr))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["rejected_total"], 40_000);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 100);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_can_be_rotated_and_the_scheme_is_case_insensitive() {
    let server = TestApiServer::start().await;
    let file = std::env::temp_dir().join(format!("sandwatch-token-{}", std::process::id()));
    std::fs::write(&file, "first-token\n").unwrap();
    let token = sandwatch::sources::ingest::Token::file(file.clone()).unwrap();
    let d = start_with(
        &server,
        sandwatch::app::config::preset("offload-modal").unwrap(),
        |s| {
            s.ingest_token = Some(token);
        },
    )
    .await;
    let post = |auth: &'static str| {
        let url = format!("http://{}/api/v1/records?snapshot=true", d.addr);
        async move {
            reqwest::Client::new()
                .post(url)
                .header("authorization", auth)
                .body("[]")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("bearer first-token").await, 200);
    assert_eq!(post("BEARER first-token").await, 200);
    assert_eq!(post("Bearer first").await, 401);
    // The Secret is rotated (kubelet swaps the file).
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, "second-token\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(
        post("Bearer first-token").await,
        401,
        "the old token is refused"
    );
    assert_eq!(
        post("Bearer second-token").await,
        200,
        "the new one is taken"
    );
    d.shutdown().await;
    let _ = std::fs::remove_file(&file);
}

// ------------------------------------------------------------------ pushed records

async fn push(d: &Daemon, query: &str, records: &[Value]) -> Value {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/records{query}", d.addr))
        .bearer_auth(TOKEN)
        .body(serde_json::to_string(records).unwrap())
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

fn kinds_and_subjects(fs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = fs
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["kind"].as_str().unwrap(),
                f["execution"].as_str().unwrap_or("-")
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_receive_every_report_agree_and_a_new_one_waits_for_a_snapshot() {
    let server = TestApiServer::start().await;
    let a = ingest_daemon(&server, |_| {}).await;
    let b = ingest_daemon(&server, |_| {}).await;
    // Not ready before the provider's first snapshot: nothing pushed can be trusted yet.
    let (code, ready) = get(&a, "/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["sources"][0]["error"]
            .as_str()
            .unwrap()
            .contains("snapshot"),
        "{ready}"
    );
    let snapshot = [
        json!({"kind": "sandbox", "id": "sb-1", "state": "running"}),
        json!({"kind": "sandbox", "id": "sb-2", "state": "running"}),
        json!({"kind": "execution", "id": "run-1", "sandbox": "sb-1", "state": "downloading", "attempt": 1}),
        json!({"kind": "execution", "id": "run-2", "sandbox": "sb-2", "state": "downloading", "attempt": 1}),
    ];
    // The provider sends every report to every replica (the headless Service).
    for d in [&a, &b] {
        assert_eq!(push(d, "?snapshot=true", &snapshot).await["accepted"], 4);
        wait_ready(d, true).await;
        push(
            d,
            "",
            &[json!({"kind": "sandbox", "id": "sb-1", "state": "failure"})],
        )
        .await;
    }
    for d in [&a, &b] {
        wait_for(
            Duration::from_secs(5),
            "run-1 on a dead sandbox",
            || async {
                kinds_and_subjects(&findings(d).await) == ["execution_on_dead_agent run-1"]
            },
        )
        .await;
    }
    // A new snapshot that leaves run-1 and sb-1 out: they are gone, their finding resolves.
    let next = [
        json!({"kind": "sandbox", "id": "sb-2", "state": "failure"}),
        json!({"kind": "execution", "id": "run-2", "sandbox": "sb-2", "state": "downloading", "attempt": 2}),
    ];
    for d in [&a, &b] {
        let out = push(d, "?snapshot=true", &next).await;
        assert_eq!(out["snapshot"]["removed"], 2, "{out}");
    }
    for d in [&a, &b] {
        wait_for(Duration::from_secs(5), "only run-2 now", || async {
            kinds_and_subjects(&findings(d).await) == ["execution_on_dead_agent run-2"]
        })
        .await;
    }
    // A replica started now (a restart) knows nothing until the next snapshot, then the same.
    let c = ingest_daemon(&server, |_| {}).await;
    assert_eq!(get(&c, "/readyz").await.0, 503);
    push(&c, "?snapshot=true", &next).await;
    wait_for(Duration::from_secs(5), "the new replica agrees", || async {
        kinds_and_subjects(&findings(&c).await) == ["execution_on_dead_agent run-2"]
    })
    .await;
    for d in [a, b, c] {
        d.shutdown().await;
    }
}

const QUICK_INGEST: &str = r#"
profiles:
  - preset: offload-modal
    records:
      ingest:
        kinds: [sandbox, execution]
        stale_after: 1s
        max_records: 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_records_expire_go_stale_and_are_capped() {
    let server = TestApiServer::start().await;
    let d = start_with(
        &server,
        sandwatch::app::config::load(QUICK_INGEST).unwrap(),
        |s| {
            s.ingest_token = Some(TOKEN.into());
        },
    )
    .await;
    let soon = sandwatch::util::time::Ts(sandwatch::util::time::Ts::now().0 + 1500).to_string();
    let out = push(
        &d,
        "?snapshot=true",
        &[
            json!({"kind": "sandbox", "id": "sb-1", "state": "failure", "expires_at": soon}),
            json!({"kind": "execution", "id": "run-1", "sandbox": "sb-1", "state": "running"}),
            json!({"kind": "sandbox", "id": "sb-2", "state": "running"}),
            json!({"kind": "sandbox", "id": "sb-3", "state": "running"}),
        ],
    )
    .await;
    assert_eq!(out["accepted"], 3, "{out}");
    assert_eq!(out["rejected"][0]["reason"], "over_capacity", "{out}");
    wait_for(Duration::from_secs(3), "the finding", || async {
        findings(&d).await.len() == 1
    })
    .await;
    // sb-1 was not pushed again before it expired: it is gone, and so is the finding.
    wait_for(Duration::from_secs(5), "sb-1 expired", || async {
        findings(&d).await.is_empty()
    })
    .await;
    // Nothing reported for longer than stale_after: the source is stale, the daemon not ready.
    wait_ready(&d, false).await;
    let (_, ready) = get(&d, "/readyz").await;
    assert!(
        ready["sources"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no report"),
        "{ready}"
    );
    push(
        &d,
        "",
        &[json!({"kind": "sandbox", "id": "sb-2", "state": "running"})],
    )
    .await;
    wait_ready(&d, true).await;
    d.shutdown().await;
}

#[test]
fn records_pushed_and_deleted_leave_nothing_behind() {
    use sandwatch::core::engine::{Change, Engine};
    use sandwatch::model::record::RecordDoc;
    let profiles = sandwatch::app::config::preset("offload-modal")
        .unwrap()
        .profiles;
    let mut engine = Engine::new(profiles.clone());
    let change = |v: Value| {
        let doc: RecordDoc = serde_json::from_value(v).unwrap();
        Change::Record(doc.validate(&profiles).unwrap())
    };
    let t = sandwatch::util::time::Ts::from_secs(1_800_000_000);
    for i in 0..200_000 {
        engine.apply(t, change(json!({"kind": "sandbox", "id": format!("sb-{i}"), "namespace": format!("ns-{i}"), "state": format!("running")})));
    }
    assert_eq!(engine.world().footprint().records, 200_000);
    for i in 0..200_000 {
        engine.apply(t, change(json!({"kind": "sandbox", "id": format!("sb-{i}"), "namespace": format!("gone-{i}"), "deleted": true})));
    }
    let f = engine.world().footprint();
    assert_eq!(f.records, 0);
    assert!(
        f.records_capacity < 4096,
        "the records map gave its memory back: {f:?}"
    );
    assert!(
        f.strings < 2048,
        "unique namespaces are not kept once nothing refers to them: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_quickly_while_clients_read_fifty_thousand_findings() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server, |s| s.ingest_max_body = 32 << 20).await;
    let mut records = vec![json!({"kind": "sandbox", "id": "sb-dead", "state": "failure"})];
    records.extend((0..50_000).map(|i| {
        json!({"kind": "execution", "id": format!("run-{i}"), "sandbox": "sb-dead", "state": "downloading"})
    }));
    let out = push(&d, "?snapshot=true", &records).await;
    assert_eq!(out["accepted"], 50_001);
    wait_for(Duration::from_secs(30), "50,000 findings", || async {
        get(&d, "/api/v1/findings?limit=1").await.1["count"] == 50_000
    })
    .await;
    // Paged: a page holds at most `limit`, and the cursors walk every finding once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (code, page) = get(&d, &format!("/api/v1/findings?limit=5000{cursor}")).await;
        assert_eq!(code, 200);
        for f in page["findings"].as_array().unwrap() {
            assert!(seen.insert(f["execution"].as_str().unwrap().to_string()));
        }
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 50_000);
    // Sixteen clients, elsewhere (threads of their own, as other processes would be), read
    // pages as fast as they can; the kubelet's probe must still get its answer within its
    // 1 s timeout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!("http://{}/api/v1/findings", d.addr);
    let readers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..16 {
                    let (url, stop) = (url.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        let client = reqwest::Client::new();
                        let mut pages = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            if let Ok(r) = client.get(&url).send().await
                                && r.bytes().await.is_ok()
                            {
                                pages += 1;
                            }
                        }
                        pages
                    }));
                }
                let mut pages = 0;
                for t in tasks {
                    pages += t.await.unwrap_or(0);
                }
                pages
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r = probe.get(format!("http://{}/healthz", d.addr)).send().await;
        assert!(r.is_ok_and(|r| r.status() == 200), "a probe timed out");
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pages = readers.join().unwrap();
    assert!(
        pages > 16,
        "the readers were served meanwhile: {pages} pages"
    );
    eprintln!("slowest /healthz under load: {worst:?}");
    d.shutdown().await;
}
