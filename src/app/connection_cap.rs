//! The edge of the public port (proxy/edge.rs: the cap on open connections and the request-head
//! deadline) and the per-IP connection cap (`limits.connections_per_ip`), wrapped around the proxy's
//! [`ServerApp`]: a connection over the cap gets a 429 in OpenAI's shape once its request head
//! has arrived, and is closed. The counts live in [`crate::limits::per_ip::PerIp`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::openai::ApiError;
use crate::proxy::edge::Edge;
use crate::state::Shared;

/// The proxy app behind a per-IP connection cap.
pub struct ConnectionCap<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    /// The cap on open connections and the request-head deadline.
    edge: Edge,
}

impl<A> ConnectionCap<A> {
    pub fn new(inner: A, shared: Arc<Shared>, log: Arc<crate::proxy::AccessLogBuffer>) -> Self {
        let edge = Edge::new(shared.runtime().config.limits.max_connections, log);
        Self {
            inner: Arc::new(inner),
            shared,
            edge,
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
        // Over the cap: closed at once.
        let stream = self.edge.admit(stream, &self.shared)?;
        let limit = self.shared.runtime().config.limits.connections_per_ip;
        let (Some(limit), Some(ip)) = (limit, peer_ip(&stream)) else {
            return self.inner.process_new(stream, shutdown).await;
        };
        let (guard, open) = self.shared.per_ip.connections.incr(ip, 1);
        if u64::try_from(open).unwrap_or(0) > limit {
            drop(guard);
            self.shared.metrics.reject("too_many_connections");
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
    let out = ApiError::TooManyConnections.raw_answer();
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
