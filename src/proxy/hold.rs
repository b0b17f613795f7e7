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
//! descriptor, which the pool needs as an id), so they have a pool of their own,
//! [`HeldPool`]. The socket follows both directions' HTTP/1.1 framing (framing.rs) and tells
//! Pingora `connection: close` in every response header, so that Pingora never pools it
//! itself. When Pingora lets go of it after an exchange that ended cleanly, request and
//! response both complete to their last byte, the TCP connection goes back to the pool for
//! the next stream to the same address instead of being closed. Reuse spares a connect and
//! a close on both sides per stream; on a burst of new streams they were about a quarter of
//! the gateway's CPU (see BENCHMARKS.md).
//!
//! A pooled connection waits at most [`IDLE_FOR`](super::held_pool::IDLE_FOR), and one the
//! server has closed meanwhile is discarded when it is taken. One the server closes just as it
//! is reused fails before any response byte; the attempt is then retried as Pingora retries its
//! own reused connections (see `stale` and `error_while_proxy`). The real socket is registered
//! with the lifecycle while it carries a request, so that the end of a shutdown grace period
//! still cuts it; a draining gateway pools nothing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use memchr::memmem::Finder;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::framing::{Message, Side};
use super::held_pool::HeldPool;
use super::silence::Silence;
use crate::lifecycle::{Lifecycle, UpstreamHandle};

/// Largest response header read; a longer one fails the attempt.
const MAX_HEADER: usize = 64 * 1024;

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
    /// Set when a pooled connection turned out closed before the response began: the attempt
    /// is then retried like one on Pingora's own stale pooled connections.
    stale: Arc<AtomicBool>,
}

impl HoldConnect {
    pub fn new(
        connect_timeout: Duration,
        silence_limit: Duration,
        lifecycle: Arc<Lifecycle>,
        pool: Arc<HeldPool>,
        max_idle: usize,
    ) -> Self {
        Self {
            connect_timeout,
            silence_limit,
            lifecycle,
            pool,
            max_idle,
            stale: Arc::default(),
        }
    }

    /// Whether this attempt's connection came from the pool and was found closed by the
    /// server before any response byte.
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }
}

#[async_trait]
impl L4Connect for HoldConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "not an IP address");
        };
        let inet = *inet;
        let (tcp, reused) = match self.pool.take(inet) {
            Some(tcp) => (tcp, true),
            None => (self.open(inet).await?, false),
        };
        let registered = {
            use std::os::fd::AsRawFd;
            self.lifecycle.register_upstream(tcp.as_raw_fd())
        };
        let socket = HoldSocket {
            tcp: Some(tcp),
            state: State::Scanning,
            buf: Vec::new(),
            request: Message::new(Side::Request),
            response: Message::new(Side::Response),
            home: Home {
                pool: self.pool.clone(),
                addr: inet,
                max_idle: self.max_idle,
                lifecycle: self.lifecycle.clone(),
            },
            reused,
            stale: self.stale.clone(),
            silence: Silence::new(self.silence_limit),
            _registered: registered,
        };
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the response header into `buf`.
    Scanning,
    /// An SSE header of this length is complete; waiting for a body byte behind it.
    Holding { header_len: usize },
    /// Handing out `buf` from this offset, then reading straight through.
    Releasing { at: usize },
}

/// Where a connection goes back to when its exchange ended cleanly.
#[derive(Debug)]
struct Home {
    pool: Arc<HeldPool>,
    addr: std::net::SocketAddr,
    max_idle: usize,
    lifecycle: Arc<Lifecycle>,
}

#[derive(Debug)]
struct HoldSocket {
    /// `None` only once it went back to the pool (in `drop`).
    tcp: Option<TcpStream>,
    state: State,
    buf: Vec<u8>,
    /// Both directions' framing, as the bytes pass.
    request: Message,
    response: Message,
    home: Home,
    /// Taken from the pool rather than connected.
    reused: bool,
    stale: Arc<AtomicBool>,
    silence: Silence,
    _registered: UpstreamHandle,
}

// Searchers built once: building one costs more than searching a header with it.
static HEADER_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
static EVENT_STREAM: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"text/event-stream"));

/// The end of the header (index after `\r\n\r\n`), when complete.
fn header_end(buf: &[u8]) -> Option<usize> {
    HEADER_END.find(buf).map(|i| i + 4)
}

/// Whether a complete header announces a successful event stream.
fn is_event_stream(header: &[u8]) -> bool {
    let ok = header.get(9..12) == Some(b"200".as_slice());
    ok && EVENT_STREAM.find(&header.to_ascii_lowercase()).is_some()
}

/// The header as Pingora gets it: `connection: close`, whatever the server said, so that
/// Pingora never puts this socket in its own pool (the connection's reuse is ours).
fn closing(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + 19);
    // Each line keeps its line end; the blank line that ends the header is added back last.
    let lines = header.strip_suffix(b"\r\n").unwrap_or(header);
    for (i, line) in lines.split_inclusive(|b| *b == b'\n').enumerate() {
        let name = line
            .split(|b| *b == b':')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let hop =
            name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive");
        if i == 0 || !hop {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

fn not_connected() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl HoldSocket {
    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp.as_mut().map(Pin::new).ok_or_else(not_connected)
    }

    /// Whether request and response both passed whole, and Pingora has read every byte.
    fn reusable(&self) -> bool {
        self.request.is_done()
            && self.response.is_done()
            && self.state == State::Releasing { at: 0 }
            && self.buf.is_empty()
    }

    /// The connection failed before any response byte: a pooled one was closed by the server.
    fn failed_early(&self) {
        if self.reused && self.response == Message::new(Side::Response) {
            self.stale.store(true, Ordering::Release);
            self.home.pool.forget(self.home.addr);
        }
    }

    /// What the state machine does with the bytes it has.
    fn advance(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Scanning => match header_end(&self.buf) {
                    Some(end) => {
                        let header = closing(&self.buf[..end]);
                        let held = is_event_stream(&header);
                        let header_len = header.len();
                        self.buf.splice(..end, header);
                        self.state = if held {
                            State::Holding { header_len }
                        } else {
                            State::Releasing { at: 0 }
                        };
                    }
                    None if self.buf.len() > MAX_HEADER => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "response header over 64 KiB",
                        ));
                    }
                    None => return Ok(()),
                },
                State::Holding { header_len } if self.buf.len() > header_len => {
                    self.state = State::Releasing { at: 0 };
                }
                _ => return Ok(()),
            }
        }
    }
}

impl Drop for HoldSocket {
    fn drop(&mut self) {
        if self.reusable() && !self.home.lifecycle.is_draining() {
            if let Some(tcp) = self.tcp.take() {
                self.home.pool.put(self.home.addr, tcp, self.home.max_idle);
            }
        }
    }
}

impl AsyncRead for HoldSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.silence.begin();
        let polled = match this.read(cx, out) {
            Poll::Pending => match this.silence.check(cx) {
                Ok(()) => return Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        };
        this.silence.end();
        polled
    }
}

impl HoldSocket {
    /// The read itself: held, released or straight through, by state.
    fn read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                State::Releasing { at } if at < self.buf.len() => {
                    let n = out.remaining().min(self.buf.len() - at);
                    out.put_slice(&self.buf[at..at + n]);
                    self.state = State::Releasing { at: at + n };
                    if at + n == self.buf.len() {
                        self.buf = Vec::new();
                        self.state = State::Releasing { at: 0 };
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Releasing { .. } => {
                    let before = out.filled().len();
                    let polled = self.tcp()?.poll_read(cx, out);
                    if let Poll::Ready(Ok(())) = polled {
                        self.response.feed(&out.filled()[before..]);
                    }
                    return polled;
                }
                State::Scanning | State::Holding { .. } => {
                    // Not zeroed: the read fills what it returns (8 KiB of memset per poll
                    // showed in profiles).
                    let mut chunk = [std::mem::MaybeUninit::uninit(); 8192];
                    let mut rb = ReadBuf::uninit(&mut chunk);
                    match self.tcp()?.poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            self.failed_early();
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            self.failed_early();
                            // End of stream: release what there is; Pingora judges it.
                            self.state = State::Releasing { at: 0 };
                            if self.buf.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Ok(())) => {
                            self.response.feed(rb.filled());
                            self.buf.extend_from_slice(rb.filled());
                            self.advance()?;
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for HoldSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.tcp()?.poll_write(cx, buf);
        match &polled {
            Poll::Ready(Ok(n)) => {
                this.request.feed(&buf[..*n]);
                this.silence.progress();
            }
            Poll::Ready(Err(_)) => this.failed_early(),
            Poll::Pending => {}
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Pingora shuts down what it does not pool; a clean exchange goes to ours instead.
        if this.reusable() {
            return Poll::Ready(Ok(()));
        }
        this.tcp()?.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.tcp()?.poll_write_vectored(cx, bufs);
        match &polled {
            Poll::Ready(Ok(n)) => {
                this.silence.progress();
                let mut left = *n;
                for b in bufs {
                    let take = left.min(b.len());
                    this.request.feed(&b[..take]);
                    left -= take;
                }
            }
            Poll::Ready(Err(_)) => this.failed_early(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

impl VirtualSocket for HoldSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match (opt, &self.tcp) {
            (VirtualSockOpt::NoDelay, Some(tcp)) => tcp.set_nodelay(true),
            // Keep-alive probes: pooled connections wait seconds at most (held_pool::IDLE_FOR).
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_event_stream_header_is_held() {
        let sse = b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream\r\n\r\n";
        assert!(is_event_stream(sse));
        let json = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
        assert!(!is_event_stream(json));
        let err = b"HTTP/1.1 503 Busy\r\ncontent-type: text/event-stream\r\n\r\n";
        assert!(!is_event_stream(err));
        assert_eq!(header_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(header_end(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn pingora_is_told_to_close_whatever_the_server_said() {
        let h =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nkeep-alive: timeout=5\r\nx-a: 1\r\n\r\n";
        assert_eq!(
            closing(h),
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\nconnection: close\r\n\r\n".to_vec()
        );
    }

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
        server.write_all(b"data: 1\n\n").await.unwrap();
        let mut got = vec![0u8; closing(SSE_HEADER).len() + 9];
        stream.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(SILENCE_LIMIT * 2).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(SILENCE_LIMIT * 3 / 4).await;
            server.write_all(b"data: 2\n\n").await.unwrap();
            server
        });
        let mut event = [0u8; 9];
        stream.read_exact(&mut event).await.unwrap();
        assert_eq!(&event, b"data: 2\n\n");
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

    /// The header alone is held; a body byte releases both.
    #[tokio::test]
    async fn the_header_waits_for_the_first_body_byte() {
        let (mut stream, mut server) = pair().await;
        let header = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        server.write_all(header).await.unwrap();
        let mut buf = [0u8; 256];
        let early = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        assert!(early.is_err(), "the header alone came through");
        server.write_all(b"data: 1\n\n").await.unwrap();
        let told = closing(header);
        let got = read_n(&mut stream, told.len() + 9).await;
        assert_eq!(&got[..told.len()], told);
        assert_eq!(&got[told.len()..], b"data: 1\n\n");
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
        transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n";

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
