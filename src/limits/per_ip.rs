//! Per client IP: a cap on open connections and on new requests per second, both answered
//! before any request body is read. Counts live in pingora-limits' count-min sketches, so
//! memory is fixed whatever the number of client addresses (an estimate can only err high,
//! towards refusing; with 8192 slots × 4 hashes that needs thousands of busy addresses).
//!
//! The connection cap wraps the proxy's [`ServerApp`]: a connection over the cap gets a 429
//! in OpenAI's shape once its request head has arrived, and is closed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::openai::ApiError;
use crate::state::Gateway;

/// Per-IP counters, shared by every runtime (the limits come from the current config).
pub struct PerIp {
    pub(crate) connections: Inflight,
    requests: Rate,
}

impl Default for PerIp {
    fn default() -> Self {
        Self {
            connections: Inflight::new(),
            requests: Rate::new(Duration::from_secs(1)),
        }
    }
}

impl PerIp {
    /// Counts a new request from `ip`; false when it is over `per_second` this second.
    pub fn request(&self, ip: IpAddr, per_second: u64) -> bool {
        let seen = self.requests.observe(&ip, 1);
        u64::try_from(seen).unwrap_or(0) <= per_second
    }
}

/// The proxy app behind a per-IP connection cap.
pub struct ConnectionCap<A> {
    inner: Arc<A>,
    gateway: Arc<Gateway>,
}

impl<A> ConnectionCap<A> {
    pub fn new(inner: A, gateway: Arc<Gateway>) -> Self {
        Self {
            inner: Arc::new(inner),
            gateway,
        }
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limit = self.gateway.runtime().config.limits.connections_per_ip;
        let (Some(limit), Some(ip)) = (limit, peer_ip(&stream)) else {
            return self.inner.process_new(stream, shutdown).await;
        };
        let (guard, open) = self.gateway.per_ip.connections.incr(ip, 1);
        if u64::try_from(open).unwrap_or(0) > limit {
            drop(guard);
            self.gateway.metrics.reject("too_many_connections");
            refuse(stream).await;
            return None;
        }
        // The guard is held for the connection's life: its requests are served here rather
        // than handed back to the listener between them.
        let _guard = guard;
        let mut stream = stream;
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Answers 429 once the request head is in (never reading a body), then closes, draining
/// what the client still sends so that the close does not reset the answer away.
async fn refuse(mut stream: Stream) {
    const HEAD_MAX: usize = 16 * 1024;
    let wait = Duration::from_secs(1);
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while head.len() < HEAD_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let e = ApiError::TooManyConnections;
    let body = e.body();
    let mut out = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(wait, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}
