//! A real headless Chromium, driven over the DevTools protocol: load a URL, read what a person
//! sees (`innerText`), take a screenshot. The page under test needs no script; the test's own
//! expressions run through `Runtime.evaluate`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    _profile: PathBuf,
}

/// Chromium's path; it is required (scripts/test installs Debian's `chromium`).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    panic!("chromium is not installed: scripts/test installs Debian's chromium package");
}

impl Browser {
    /// Starts a headless Chromium with a fresh profile and attaches to its first tab.
    pub async fn start() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "sandwatch-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let port = devtools_port(&mut child);
        let targets: Value = wait_for_targets(port).await;
        let ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"))
            .to_string();
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        let mut b = Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({})).await;
        b
    }

    /// Sends a command and waits for its answer and, if `until_event` names one, for that
    /// event (other events are dropped).
    async fn call_then(&mut self, method: &str, params: Value, until_event: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(msg)).await.unwrap();
        let mut answer = None;
        let mut seen = until_event.is_none();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within 20 s"))
                .expect("devtools socket open")
                .unwrap();
            let Message::Text(text) = next else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                answer = Some(v["result"].clone());
            } else if until_event.is_some_and(|e| v["method"] == e) {
                seen = true;
            }
            if let (Some(a), true) = (&answer, seen) {
                return a.clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_then(method, params, None).await
    }

    /// Loads `url` and waits for its load event.
    pub async fn open(&mut self, url: &str) {
        self.call_then(
            "Page.navigate",
            json!({"url": url}),
            Some("Page.loadEventFired"),
        )
        .await;
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Runs `expression` (which makes the page navigate, e.g. submitting a form) and waits
    /// for the new page's load event.
    pub async fn eval_and_wait_for_load(&mut self, expression: &str) {
        self.call_then(
            "Runtime.evaluate",
            json!({"expression": expression}),
            Some("Page.loadEventFired"),
        )
        .await;
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

/// Reads Chromium's stderr until it says where DevTools listens.
fn devtools_port(child: &mut Child) -> u16 {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                let _ = tx.send(Ok(port));
            } else {
                let _ = tx.send(Err(line));
            }
        }
    });
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(port)) => return port,
            Ok(Err(line)) => said.push(line),
            Err(_) => panic!(
                "chromium did not open DevTools within 30 s:\n{}",
                said.join("\n")
            ),
        }
    }
}

async fn wait_for_targets(port: u16) -> Value {
    let url = format!("http://127.0.0.1:{port}/json/list");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(v) = r.json::<Value>().await
            && v.as_array()
                .is_some_and(|t| t.iter().any(|t| t["type"] == "page"))
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium lists no page at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
