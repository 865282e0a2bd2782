//! Serving the HTTP endpoints with every bound a daemon exposed to a cluster network needs:
//! a cap on open connections, a deadline for a request's headers (which also closes idle
//! keep-alive connections), and a deadline for shutdown.
//!
//! `axum::serve` has none of these (a client that sends half a request line keeps its
//! connection, and graceful shutdown, open for as long as it likes), so connections are
//! served here with hyper's own HTTP/1 server: hyper reads the headers under its
//! `header_read_timeout`, the connection count is a semaphore, and on shutdown every
//! connection is asked to finish its request, then dropped once the grace has passed.
//! Request bodies are read, with their own deadline and size limit, by the one handler
//! that takes a body (the ingest API).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The bounds of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// At most this many connections are open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is
    /// closed after it.
    pub header_timeout: Duration,
    /// On shutdown, requests under way get this long to finish before their connections are
    /// dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` until `stop` is set, then shuts down within the grace.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut full_logged = false;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        if slots.available_permits() == 0 && !full_logged {
            warn!(
                max = limits.max_connections,
                "the HTTP server has reached its connection limit: further clients wait"
            );
            full_logged = true;
        } else if slots.available_permits() > limits.max_connections / 2 {
            full_logged = false;
        }
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(connection(
            stream,
            peer,
            service,
            permit,
            limits,
            stop.clone(),
        ));
        // Reap finished connections as they go, so the set stays as small as what is open.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = connections.len(),
            "closing HTTP connections that did not finish within the shutdown grace"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// One client connection: HTTP/1.1 with keep-alive and a header-read timeout; on `stop`, the
/// request under way finishes and the connection closes.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    permit: OwnedSemaphorePermit,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let _permit = permit;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stopped(&mut stop) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            // Finish the request under way, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// Resolves once `stop` is set (and holds no borrow of it afterwards).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
