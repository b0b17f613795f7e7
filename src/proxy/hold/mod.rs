//! Holding a stream's response header back until its first event, so that a server that
//! answers `200 text/event-stream` at once and then stays silent can still be failed over.
//!
//! Pingora writes the response header to the client as soon as it has parsed it, and no
//! hook sits between the upstream's body and that write. So the hold happens below Pingora:
//! streaming requests connect through [`HoldConnect`] (a custom L4 connector), whose socket
//! keeps the bytes of an SSE response header to itself until at least one body byte has
//! arrived behind them. While it holds, Pingora's read of the header is still pending, so
//! the socket's read timeout (the model's `first_token_timeout`, kept by the socket itself:
//! see `silence.rs`) fails the attempt *before* any byte reached the client, and the usual
//! retry path picks another server.
//!
//! Pingora's connection pool cannot keep these connections (a virtual socket has no file
//! descriptor, which the pool needs as an id), so they have a pool of their own, [`HeldPool`]
//! (pool.rs). The socket (socket.rs) follows both directions' HTTP/1.1 framing (framing.rs)
//! and tells Pingora `connection: close` in every response header, so that Pingora never
//! pools it itself. When Pingora lets go of it after an exchange that ended cleanly, request
//! and response both complete to their last byte, the TCP connection goes back to the pool
//! for the next stream to the same address instead of being closed. Reuse spares a connect
//! and a close on both sides per stream; on a burst of new streams they were about a quarter
//! of the gateway's CPU (see BENCHMARKS.md).
//!
//! A pooled connection waits at most [`IDLE_FOR`](pool::IDLE_FOR), and one the server has
//! closed meanwhile is discarded when it is taken. One the server closes just as it is reused
//! fails before any response byte; the attempt is then retried as Pingora retries its own
//! reused connections (see `stale` and `error_while_proxy`). The real socket is registered
//! with the lifecycle while it carries a request, so that the end of a shutdown grace period
//! still cuts it; a draining gateway pools nothing.

mod conn;
mod framing;
mod pool;
mod silence;
mod socket;

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::VirtualSocketStream;
use pingora_error::{Error, ErrorType, Result};
use tokio::net::TcpStream;

use crate::lifecycle::Lifecycle;
use crate::tls::{ClientConfig, Name};
use conn::Conn;
pub use pool::HeldPool;
use silence::Silence;
use socket::{HoldSocket, Home};

/// Opens (or takes from the pool) upstream connections whose SSE response header waits for
/// the first event. One per attempt.
#[derive(Debug)]
pub struct HoldConnect {
    connect_timeout: Duration,
    /// The longest the server may stay silent while a read waits (see `silence.rs`).
    silence_limit: Duration,
    lifecycle: Arc<Lifecycle>,
    pool: Arc<HeldPool>,
    /// Idle connections kept per address.
    max_idle: usize,
    /// Set when the attempt failed before any byte reached Pingora (see [`Early`]).
    early: Arc<AtomicU8>,
    /// `https://` servers: TLS below the framing, and the name checked.
    tls: Option<(Arc<ClientConfig>, Name)>,
}

/// Why an attempt failed before any byte of its answer reached Pingora.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Early {
    /// A pooled connection turned out closed before the response began: the attempt is
    /// retried like one on Pingora's own stale pooled connections.
    Stale = 1,
    /// The event stream ended before its first event.
    Ended = 2,
    /// The event stream was malformed before its first event.
    Malformed = 3,
}

impl HoldConnect {
    pub fn new(
        connect_timeout: Duration,
        silence_limit: Duration,
        lifecycle: Arc<Lifecycle>,
        pool: Arc<HeldPool>,
        max_idle: usize,
        tls: Option<(Arc<ClientConfig>, Name)>,
    ) -> Self {
        Self {
            connect_timeout,
            silence_limit,
            lifecycle,
            pool,
            max_idle,
            early: Arc::default(),
            tls,
        }
    }

    /// Whether this attempt's connection came from the pool and was found closed by the
    /// server before any response byte.
    pub fn stale(&self) -> bool {
        self.early.load(Ordering::Acquire) == Early::Stale as u8
    }

    /// Why this attempt's stream failed before its first event (a metric label), if it did.
    pub fn no_first_event(&self) -> Option<&'static str> {
        match self.early.load(Ordering::Acquire) {
            x if x == Early::Ended as u8 => Some("stream_ended_early"),
            x if x == Early::Malformed as u8 => Some("stream_malformed"),
            _ => None,
        }
    }
}

#[async_trait]
impl L4Connect for HoldConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "not an IP address");
        };
        let inet = *inet;
        let pooled = self.tls.is_none().then(|| self.pool.take(inet)).flatten();
        let (tcp, reused) = match pooled {
            Some(tcp) => (tcp, true),
            None => (self.open(inet).await?, false),
        };
        let registered = {
            use std::os::fd::AsRawFd;
            self.lifecycle.register_upstream(tcp.as_raw_fd())
        };
        let home = Home {
            pool: self.pool.clone(),
            addr: inet,
            max_idle: self.max_idle,
            lifecycle: self.lifecycle.clone(),
        };
        let conn = match &self.tls {
            None => Conn::Tcp(tcp),
            Some((config, name)) => {
                let handshake = crate::tls::connect(config, name, tcp);
                match tokio::time::timeout(self.connect_timeout, handshake).await {
                    Err(_) => {
                        return Error::e_explain(
                            ErrorType::ConnectTimedout,
                            "TLS handshake timed out",
                        )
                    }
                    Ok(Err(e)) => {
                        return Error::e_because(ErrorType::TLSHandshakeFailure, "TLS handshake", e)
                    }
                    Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                }
            }
        };
        let silence = Silence::new(self.silence_limit);
        let socket = HoldSocket::new(conn, reused, home, self.early.clone(), silence, registered);
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

impl HoldConnect {
    async fn open(&self, inet: std::net::SocketAddr) -> Result<TcpStream> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(inet)).await {
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {inet}", self.connect_timeout),
                )
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Error::e_because(ErrorType::ConnectRefused, "connecting", e)
            }
            Ok(Err(e)) => return Error::e_because(ErrorType::ConnectError, "connecting", e),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket::closing;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    /// The silence limit of the connectors under test.
    const SILENCE_LIMIT: Duration = Duration::from_secs(30);
    const SSE_HEADER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";

    /// A server to connect to, and the connector with its pool.
    async fn setup() -> (TcpListener, SocketAddr, HoldConnect) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = SocketAddr::Inet(listener.local_addr().unwrap());
        let connector = HoldConnect::new(
            Duration::from_secs(1),
            SILENCE_LIMIT,
            Arc::new(Lifecycle::default()),
            Arc::default(),
            8,
            None,
        );
        (listener, target, connector)
    }

    /// A held connection and the server side of it, on a real socket pair, with the server
    /// and the connector that made it.
    struct Connected {
        listener: TcpListener,
        target: SocketAddr,
        connector: HoldConnect,
        stream: Stream,
        server: TcpStream,
    }

    async fn connected() -> Connected {
        let (listener, target, connector) = setup().await;
        let (stream, accepted) = tokio::join!(connector.connect(&target), listener.accept());
        Connected {
            listener,
            target,
            connector,
            stream: stream.unwrap(),
            server: accepted.unwrap().0,
        }
    }

    async fn pair() -> (Stream, TcpStream) {
        let c = connected().await;
        (c.stream, c.server)
    }

    /// Reads from `stream` until `n` bytes came.
    async fn read_n(stream: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    /// A read that must end by itself within twice the silence limit (paused time gets there
    /// at once): without the timeout, the test fails instead of waiting forever.
    async fn within_twice_the_limit<T>(read: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(SILENCE_LIMIT * 2, read)
            .await
            .expect("the read did not time out")
    }

    /// A held header and the server silent after it: the read fails once the limit passed.
    #[tokio::test(start_paused = true)]
    async fn a_read_fails_once_the_server_was_silent_for_the_limit() {
        let (mut stream, mut server) = pair().await;
        server.write_all(SSE_HEADER).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let err = within_twice_the_limit(stream.read(&mut buf))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= SILENCE_LIMIT && waited < SILENCE_LIMIT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    /// The limit counts from the start of each read: time the caller spends between reads
    /// (a slow client) is not the server's silence, and every gap has the whole limit.
    #[tokio::test(start_paused = true)]
    async fn the_silence_limit_counts_from_each_read() {
        let (mut stream, mut server) = pair().await;
        server.write_all(SSE_HEADER).await.unwrap();
        server.write_all(b"data: {}\n\n").await.unwrap();
        let mut got = vec![0u8; closing(SSE_HEADER).len() + 10];
        stream.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(SILENCE_LIMIT * 2).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(SILENCE_LIMIT * 3 / 4).await;
            server.write_all(b"data: []\n\n").await.unwrap();
            server
        });
        let mut event = [0u8; 10];
        stream.read_exact(&mut event).await.unwrap();
        assert_eq!(&event, b"data: []\n\n");
        let _server = writer.await.unwrap();
        let started = Instant::now();
        let err = within_twice_the_limit(stream.read_exact(&mut event))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= SILENCE_LIMIT);
    }

    /// The wait for the answer counts from the request's last byte: a read that began before
    /// the request was written does not count the time before.
    #[tokio::test(start_paused = true)]
    async fn the_silence_limit_counts_from_the_requests_last_byte() {
        let (stream, mut server) = pair().await;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let reader = tokio::spawn(async move {
            let started = Instant::now();
            let mut buf = [0u8; 64];
            let read = within_twice_the_limit(rd.read(&mut buf)).await;
            (read.map_err(|e| e.kind()), started.elapsed())
        });
        tokio::time::sleep(SILENCE_LIMIT * 3 / 4).await;
        wr.write_all(REQUEST).await.unwrap();
        read_n(&mut server, REQUEST.len()).await;
        let (read, waited) = reader.await.unwrap();
        assert_eq!(read.unwrap_err(), io::ErrorKind::TimedOut);
        assert!(waited >= SILENCE_LIMIT * 7 / 4, "{waited:?}");
    }

    /// The header is held, and so are a comment and half an event; the event's end releases
    /// them all.
    #[tokio::test]
    async fn the_header_waits_for_the_first_event() {
        let c = connected().await;
        let (mut stream, mut server) = (c.stream, c.server);
        let header = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        let mut buf = [0u8; 256];
        for part in [&header[..], b": ping\n\n", b"data: {}\n"] {
            server.write_all(part).await.unwrap();
            let early = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf));
            assert!(early.await.is_err(), "released before the first event");
        }
        server.write_all(b"\n").await.unwrap();
        let told = closing(header);
        let body = b": ping\n\ndata: {}\n\n";
        let got = read_n(&mut stream, told.len() + body.len()).await;
        assert_eq!(&got[..told.len()], told);
        assert_eq!(&got[told.len()..], body);
        assert_eq!(c.connector.no_first_event(), None);
    }

    /// A stream that ends, or turns malformed, before its first event fails the read while
    /// the header is still held, and says why.
    #[tokio::test]
    async fn a_stream_without_a_first_event_fails_before_its_header() {
        let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
            transfer-encoding: chunked\r\n\r\n";
        for (body, close, kind, why) in [
            (
                &b""[..],
                true,
                io::ErrorKind::UnexpectedEof,
                "stream_ended_early",
            ),
            (
                b"7\r\n: ping\n\r\n",
                true,
                io::ErrorKind::UnexpectedEof,
                "stream_ended_early",
            ),
            (
                b"0\r\n\r\n",
                false,
                io::ErrorKind::UnexpectedEof,
                "stream_ended_early",
            ),
            (
                b"e\r\n<html>oops\n\n\r\n",
                false,
                io::ErrorKind::InvalidData,
                "stream_malformed",
            ),
            (
                b"f\r\ndata: {\"a\": \n\n\r\n",
                false,
                io::ErrorKind::InvalidData,
                "stream_malformed",
            ),
        ] {
            let c = connected().await;
            let (mut stream, mut server) = (c.stream, c.server);
            server.write_all(chunked).await.unwrap();
            server.write_all(body).await.unwrap();
            if close {
                drop(server);
            } else {
                // Kept open: the verdict must not wait for the close.
                std::mem::forget(server);
            }
            let mut buf = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf));
            let err = read.await.unwrap().unwrap_err();
            assert_eq!(err.kind(), kind, "{}", String::from_utf8_lossy(body));
            assert_eq!(c.connector.no_first_event(), Some(why));
            assert!(!c.connector.stale());
        }
    }

    #[tokio::test]
    async fn other_responses_pass_at_once() {
        let (mut stream, mut server) = pair().await;
        let header = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        server.write_all(header).await.unwrap();
        let told = closing(header);
        assert_eq!(read_n(&mut stream, told.len()).await, told);
    }

    const REQUEST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        transfer-encoding: chunked\r\n\r\na\r\ndata: {}\n\n\r\n0\r\n\r\n";

    /// One exchange as Pingora runs it: request, the whole response, shutdown, drop. `cut`:
    /// the server sends that many bytes fewer.
    async fn exchange(stream: &mut Stream, server: &mut TcpStream, cut: usize) {
        stream.write_all(REQUEST).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(read_n(server, REQUEST.len()).await, REQUEST);
        server
            .write_all(&RESPONSE[..RESPONSE.len() - cut])
            .await
            .unwrap();
        let told = RESPONSE.len() + b"connection: close\r\n".len();
        read_n(stream, told - cut).await;
        stream.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_clean_exchange_leaves_the_connection_to_the_next_stream() {
        let mut c = connected().await;
        exchange(&mut c.stream, &mut c.server, 0).await;
        drop(c.stream);
        let addr = *c.target.as_inet().unwrap();
        assert_eq!(c.connector.pool.idle(addr), 1);
        // The next stream gets the same connection: no new accept, same server socket.
        let mut again = c.connector.connect(&c.target).await.unwrap();
        assert_eq!(c.connector.pool.idle(addr), 0);
        exchange(&mut again, &mut c.server, 0).await;
        let accept = tokio::time::timeout(Duration::from_millis(50), c.listener.accept()).await;
        assert!(accept.is_err(), "a second connection was opened");
        assert!(!c.connector.stale());
    }

    #[tokio::test]
    async fn an_unfinished_exchange_closes_the_connection() {
        let mut c = connected().await;
        // The last chunk's final CRLF is missing.
        exchange(&mut c.stream, &mut c.server, 2).await;
        drop(c.stream);
        assert_eq!(c.connector.pool.idle(*c.target.as_inet().unwrap()), 0);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.server.read_to_end(&mut rest)).await;
        assert_eq!(
            n.unwrap().unwrap(),
            0,
            "the server saw the connection close"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_found_closed_is_not_used_and_one_closed_in_use_is_stale() {
        let (listener, target, connector) = setup().await;
        let addr = *target.as_inet().unwrap();
        let (mut streams, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (stream, accepted) = tokio::join!(connector.connect(&target), listener.accept());
            streams.push(stream.unwrap());
            servers.push(accepted.unwrap().0);
        }
        for (stream, server) in streams.iter_mut().zip(servers.iter_mut()) {
            exchange(stream, server, 0).await;
        }
        drop(streams);
        assert_eq!(connector.pool.idle(addr), 2);
        // The newest one is closed by the server; once the end of stream is seen, it is skipped.
        let newest = servers.pop().unwrap();
        drop(newest);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut reused = connector.connect(&target).await.unwrap();
        assert_eq!(connector.pool.idle(addr), 0);
        // The older one is alive when taken and closed after the request reached the server.
        let mut server = servers.pop().unwrap();
        reused.write_all(REQUEST).await.unwrap();
        reused.flush().await.unwrap();
        read_n(&mut server, REQUEST.len()).await;
        drop(server);
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), reused.read(&mut buf)).await;
        assert_eq!(read.unwrap().unwrap_or(0), 0);
        assert!(
            connector.stale(),
            "a reused connection closed before the answer"
        );
    }
}
