//! A real HTTP receiver on loopback for remediation calls: it records every request and
//! answers with scripted statuses (200 once the script runs out).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: u16,
    /// When the answer went out (after the configured delay).
    pub answered_at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Hook = Arc<dyn Fn(&Received) + Send + Sync>;
/// The scripted answers: a status and an optional Retry-After.
type Script = std::collections::VecDeque<(u16, Option<String>)>;

#[derive(Clone, Default)]
struct Inner {
    log: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    hook: Arc<Mutex<Option<Hook>>>,
    delay: Arc<Mutex<std::time::Duration>>,
}

pub struct Receiver {
    pub url: String,
    inner: Inner,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Inner::default();
        let app = Router::new().fallback(receive).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, inner }
    }

    /// The next answers, in order: status, and an optional Retry-After value.
    pub fn script(&self, answers: &[(u16, Option<&str>)]) {
        let mut s = self.inner.script.lock().unwrap();
        s.extend(answers.iter().map(|(c, r)| (*c, r.map(String::from))));
    }

    /// Runs for every request before it is answered (e.g. to apply the fix to the platform).
    pub fn on_request(&self, hook: impl Fn(&Received) + Send + Sync + 'static) {
        *self.inner.hook.lock().unwrap() = Some(Arc::new(hook));
    }

    /// Answers each request only after this long (a slow receiver).
    pub fn delay(&self, d: std::time::Duration) {
        *self.inner.delay.lock().unwrap() = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.log.lock().unwrap().len()
    }
}

async fn receive(
    State(inner): State<Inner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (status, retry_after) = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, None));
    let r = Received {
        at: Instant::now(),
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
        answered: status,
        answered_at: Instant::now(),
    };
    let hook = inner.hook.lock().unwrap().clone();
    if let Some(hook) = hook {
        hook(&r);
    }
    let delay = *inner.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    inner.log.lock().unwrap().push(Received {
        answered_at: Instant::now(),
        ..r
    });
    let code = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(v) => (code, [("retry-after", v)], "scripted\n").into_response(),
        None => (code, "ok\n").into_response(),
    }
}
