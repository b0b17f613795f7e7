//! Every accepted client connection passes here: a cap on how many are open at once
//! (`limits.max_connections`, so that descriptors are left for upstream connections and the
//! admin listener), and a deadline on each request head (`timeouts.request_header`: a client
//! that sends its head a byte at a time, or nothing at all, gets 408 and is closed).
//!
//! The deadline lives in a wrapper around the client's stream ([`Guarded`]): armed at accept,
//! disarmed by the proxy once a head is parsed ([`head_done`]), idle once the answer is over
//! ([`response_done`]), and armed again by the next request's first byte on a kept-alive
//! connection (the idle wait before it is
//! `timeouts.keepalive_idle`'s, as nginx splits `keepalive_timeout` and
//! `client_header_timeout`). An h2c connection is disarmed at its preface: HTTP/2 has its own
//! limits.
//!
//! Pingora answers a head it cannot parse (bad syntax, conflicting `Content-Length`, folded
//! lines, an absolute URI, more than 256 fields) and a `CONNECT` itself, before any hook runs:
//! an empty 400 or 405 with `Server: Pingora`. The wrapper sees that answer go out while the
//! head deadline is still armed and writes OpenAI's error shape in its place (431 when the
//! head was over 64 KiB or 100 fields), counted and in the access log like any refusal.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::head::{MAX_FIELDS, MAX_HEAD};
use super::log::{self, AccessLogBuffer};
use crate::openai::ApiError;
use crate::state::Shared;

const OFF: u8 = 0;
/// A head is being received: the deadline runs.
const ARMED: u8 = 1;
/// A kept-alive connection between requests: the next byte arms the deadline.
const IDLE: u8 = 2;
/// The deadline passed: the 408 went out, reads end.
const EXPIRED: u8 = 3;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pingora's own answer to a head it refused: a 4xx naming Pingora as the server (our own
/// answers never do).
fn is_pingoras_refusal(buf: &[u8]) -> bool {
    buf.starts_with(b"HTTP/1.1 4")
        && buf.len() >= 12
        && memchr::memmem::find(buf, b"\r\nServer: Pingora\r\n").is_some()
}

/// Built once: building a searcher costs more than searching a head with it.
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// Open client connections, against the cap.
pub struct Edge {
    open: Arc<AtomicUsize>,
    max: usize,
    log: Arc<AccessLogBuffer>,
}

impl Edge {
    /// `max`: `limits.max_connections`, or derived from the descriptor limit.
    pub fn new(max: Option<u64>, log: Arc<AccessLogBuffer>) -> Self {
        let max = max.map_or_else(default_max_connections, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        });
        tracing::info!("client connections capped at {max} (limits.max_connections)");
        Self {
            open: Arc::default(),
            max,
            log,
        }
    }

    /// A new connection: counted and guarded, or refused (`None`: closed at once) over the cap.
    pub fn admit(&self, stream: Stream, shared: &Arc<Shared>) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.reject("max_connections");
            return None;
        }
        let limit = shared.runtime().config.timeouts.request_header;
        Some(Box::new(Guarded::new(
            stream,
            limit,
            self.open.clone(),
            shared.clone(),
            self.log.clone(),
        )))
    }
}

/// Half the descriptors left after 64 for the process itself (listeners, logs, the admin
/// listener and its clients): each client connection may hold an upstream one too.
fn default_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft.saturating_sub(64) / 2).max(16)
}

/// The proxy parsed a request head on this client stream: its deadline stops.
pub fn head_done(stream: Option<&Stream>) {
    if let Some(g) = stream.and_then(|s| s.as_any().downcast_ref::<Guarded>()) {
        g.state.store(OFF, Ordering::Relaxed);
    }
}

/// A request on this client stream is over: a kept-alive connection now idles (under
/// `keepalive_idle`) until its next head begins.
pub fn response_done(stream: Option<&Stream>) {
    if let Some(g) = stream.and_then(|s| s.as_any().downcast_ref::<Guarded>()) {
        let _ = g
            .state
            .compare_exchange(OFF, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A client stream with its head deadline; counted open until dropped.
pub struct Guarded {
    inner: Stream,
    state: AtomicU8,
    /// Nanoseconds after `base` at which an armed head is late.
    deadline_ns: AtomicU64,
    base: Instant,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes and line ends of the head read since the deadline was armed (its size, and about
    /// its field count, for Pingora's refusals), and whether its end was seen.
    head_bytes: usize,
    head_lines: usize,
    head_end: bool,
    open: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    log: Arc<AccessLogBuffer>,
}

impl Guarded {
    fn new(
        inner: Stream,
        limit: Duration,
        open: Arc<AtomicUsize>,
        shared: Arc<Shared>,
        log: Arc<AccessLogBuffer>,
    ) -> Self {
        let mut g = Self {
            inner,
            state: AtomicU8::new(OFF),
            deadline_ns: AtomicU64::new(0),
            base: Instant::now(),
            limit,
            sleep: None,
            head_bytes: 0,
            head_lines: 0,
            head_end: false,
            open,
            shared,
            log,
        };
        g.arm();
        g
    }

    /// Counts what a read while the deadline is armed brought.
    fn took(&mut self, bytes: &[u8]) {
        if self.head_end {
            return;
        }
        let end = HEAD_END.find(bytes).map(|i| i + 4);
        let part = &bytes[..end.unwrap_or(bytes.len())];
        let first = self.head_bytes == 0;
        self.head_bytes += part.len();
        self.head_end = end.is_some();
        // A head read whole at once in under 1 KiB cannot hold more than 256 fields (Pingora's
        // own limit, whose refusal is told 431 here; 101 to 256 are the proxy's to count):
        // the common head costs one search, not a count.
        if !(first && self.head_end && self.head_bytes <= 1024) {
            self.head_lines += memchr::memchr_iter(b'\n', part).count();
        }
    }

    fn arm(&mut self) {
        self.head_bytes = 0;
        self.head_lines = 0;
        self.head_end = false;
        let at = self.base.elapsed() + self.limit;
        self.deadline_ns.store(
            u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.state.store(ARMED, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Relaxed))
    }

    /// The head is late: a 408 if the socket takes it at once, then the end of the stream.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.swap(EXPIRED, Ordering::Relaxed) != EXPIRED {
            // Best effort: a socket that cannot take 200 bytes now is not waited for.
            let out = self.late();
            let _ = Pin::new(&mut self.inner).poll_write(cx, &out);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// The 408 a late head gets (OpenAI's error shape), counted.
    fn late(&self) -> Vec<u8> {
        let out = ApiError::HeaderTimeout.raw_answer();
        self.shared.metrics.reject("request_header_timeout");
        log::edge(&self.log, &self.shared, 408, self.limit);
        tracing::debug!("request head not received within timeouts.request_header: 408");
        out
    }

    /// Pingora's own answer to a head it refused (`status`), in OpenAI's shape, counted and
    /// logged.
    fn refusal(&self, status: &[u8]) -> Vec<u8> {
        let api = match status {
            b"405" => ApiError::MethodNotAllowed {
                method: "CONNECT".to_owned(),
                path: "this gateway".to_owned(),
                allow: "GET, POST",
            },
            _ if self.head_bytes > MAX_HEAD || self.head_lines > MAX_FIELDS + 2 => {
                ApiError::HeadersTooLarge
            }
            _ => ApiError::MalformedHead {
                reason: "it cannot be parsed (bad syntax, conflicting Content-Length, folded or invalid header lines, or an absolute URI)",
            },
        };
        let out = api.raw_answer();
        self.shared
            .metrics
            .reject(api.code().unwrap_or("invalid_request_head"));
        let waited = self
            .limit
            .saturating_sub(self.deadline().saturating_duration_since(Instant::now()));
        log::edge(&self.log, &self.shared, api.status(), waited);
        out
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.state.load(Ordering::Relaxed) {
            OFF => Pin::new(&mut self.inner).poll_read(cx, buf),
            IDLE => {
                let before = buf.filled().len();
                let r = Pin::new(&mut self.inner).poll_read(cx, buf);
                if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    self.arm();
                    self.took(&buf.filled()[before..]);
                }
                r
            }
            EXPIRED => Poll::Ready(Ok(())),
            _ => {
                // Data that is there is taken without reading the clock; the deadline is the
                // timer's to keep while the client is silent (a trickle is silent in between).
                let before = buf.filled().len();
                if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_read(cx, buf) {
                    self.took(&buf.filled()[before..]);
                    return Poll::Ready(r);
                }
                let deadline = self.deadline();
                let this = &mut *self;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => self.expire(cx),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future as _;

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.state.load(Ordering::Relaxed) {
            // Pingora refusing a head that was awaited: ours goes in
            // its place (best effort, as the 408), and the connection ends.
            ARMED if is_pingoras_refusal(buf) => {
                self.state.store(EXPIRED, Ordering::Relaxed);
                let out = self.refusal(&buf[9..12]);
                let _ = Pin::new(&mut self.inner).poll_write(cx, &out);
                Poll::Ready(Ok(buf.len()))
            }
            // What follows a refusal or a 408 of ours is not the client's to see.
            EXPIRED => Poll::Ready(Ok(buf.len())),
            _ => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.state.load(Ordering::Relaxed), ARMED | EXPIRED) {
            // Judged by `poll_write`, one slice at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

/// A TLS client connection's ALPN (h2 or http/1.1) and digest are the inner stream's.
impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Guarded {
    /// Pingora peeks for the h2c preface before anything else, waiting for its 24 bytes: that
    /// wait is the head's too. An h2c connection leaves the deadline behind.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.state.load(Ordering::Relaxed) != ARMED {
            return self.inner.try_peek(buf).await;
        }
        match tokio::time::timeout_at(self.deadline(), self.inner.try_peek(buf)).await {
            Ok(Ok(true)) => {
                if buf.starts_with(H2_PREFACE) {
                    self.state.store(OFF, Ordering::Relaxed);
                }
                Ok(true)
            }
            Ok(other) => other,
            Err(_) => {
                // Late before even 24 bytes: answered here, and Pingora closes on the error.
                self.state.store(EXPIRED, Ordering::Relaxed);
                let out = self.late();
                let write = tokio::io::AsyncWriteExt::write_all(&mut self.inner, &out);
                let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }
}
