//! The held socket: what [`HoldConnect`](super::HoldConnect) hands Pingora for a stream. It
//! holds an SSE response header back until the stream's first complete event is behind it,
//! follows both directions' framing, keeps the read timeout (silence.rs) and, when the
//! exchange ended whole, gives the TCP connection to the pool (pool.rs) as it is dropped.
//!
//! A stream that ends, or turns out malformed, before its first event fails the attempt
//! while Pingora still waits for the header: nothing reached the client, so the request is
//! retried on another server and the failure counts against this one.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use memchr::memmem::Finder;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Conn;
use super::framing::{Message, Side};
use super::pool::HeldPool;
use super::silence::Silence;
use super::Early;
use crate::lifecycle::{Lifecycle, UpstreamHandle};
use crate::openai::sse::Lines;

/// Largest response header read; a longer one fails the attempt.
const MAX_HEADER: usize = 64 * 1024;
/// Most payload held back while waiting for the first event; more without one is malformed.
const MAX_HELD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the response header into `buf`.
    Scanning,
    /// An SSE header is complete; waiting for the first event behind it.
    Holding,
    /// Handing out `buf` from this offset, then reading straight through.
    Releasing { at: usize },
}

/// Where a connection goes back to when its exchange ended cleanly.
#[derive(Debug)]
pub(super) struct Home {
    pub pool: Arc<HeldPool>,
    pub addr: std::net::SocketAddr,
    pub max_idle: usize,
    pub lifecycle: Arc<Lifecycle>,
}

#[derive(Debug)]
pub(super) struct HoldSocket {
    /// `None` only once it went back to the pool (in `drop`).
    tcp: Option<Conn>,
    state: State,
    buf: Vec<u8>,
    /// Both directions' framing, as the bytes pass.
    request: Message,
    response: Message,
    home: Home,
    /// The payload so far, while the first event is awaited.
    first: FirstEvent,
    /// Taken from the pool rather than connected.
    reused: bool,
    early: Arc<AtomicU8>,
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
pub(super) fn closing(header: &[u8]) -> Vec<u8> {
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

/// A stream's payload while its first event is awaited.
#[derive(Debug, Default)]
struct FirstEvent {
    lines: Lines,
    seen: usize,
    /// A line no client can parse came first, or too much came without an event.
    malformed: bool,
}

impl FirstEvent {
    fn take(&mut self, payload: &[u8]) {
        if self.malformed || self.complete() {
            return;
        }
        self.seen += payload.len();
        // What follows a complete first event is the relay's to judge.
        let bad = self.lines.feed(payload).is_err() || self.seen > MAX_HELD;
        self.malformed = bad && !self.complete();
    }

    fn complete(&self) -> bool {
        self.lines.events > 0
    }
}

fn not_connected() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl HoldSocket {
    /// A socket on `tcp` (`reused`: taken from the pool), its header not read yet.
    pub(super) fn new(
        tcp: Conn,
        reused: bool,
        home: Home,
        early: Arc<AtomicU8>,
        silence: Silence,
        registered: UpstreamHandle,
    ) -> Self {
        Self {
            tcp: Some(tcp),
            state: State::Scanning,
            buf: Vec::new(),
            request: Message::new(Side::Request),
            response: Message::new(Side::Response),
            first: FirstEvent::default(),
            home,
            reused,
            early,
            silence,
            _registered: registered,
        }
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut Conn>> {
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
            self.early.store(Early::Stale as u8, Ordering::Release);
            self.home.pool.forget(self.home.addr);
        }
    }

    /// The stream failed before its first event: said to the connector, and as the read's error.
    fn no_first_event(&self, why: Early) -> io::Error {
        self.early.store(why as u8, Ordering::Release);
        match why {
            Early::Malformed => io::Error::new(
                io::ErrorKind::InvalidData,
                "the server's event stream is malformed before its first event",
            ),
            _ => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server's event stream ended before its first event",
            ),
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
                        self.buf.splice(..end, header);
                        self.state = if held {
                            State::Holding
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
                State::Holding if self.first.complete() => {
                    self.state = State::Releasing { at: 0 };
                }
                State::Holding if self.first.malformed => {
                    return Err(self.no_first_event(Early::Malformed));
                }
                State::Holding if self.response.ended() => {
                    return Err(self.no_first_event(Early::Ended));
                }
                _ => return Ok(()),
            }
        }
    }
}

impl Drop for HoldSocket {
    fn drop(&mut self) {
        if self.reusable() && !self.home.lifecycle.is_draining() {
            if let Some(tcp) = self.tcp.take().and_then(Conn::into_plain) {
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
                        self.response.feed(&out.filled()[before..], |_| {});
                    }
                    return polled;
                }
                State::Scanning | State::Holding => {
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
                            if self.state == State::Holding {
                                return Poll::Ready(Err(self.no_first_event(Early::Ended)));
                            }
                            // End of stream: release what there is; Pingora judges it.
                            self.state = State::Releasing { at: 0 };
                            if self.buf.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Ok(())) => {
                            self.response
                                .feed(rb.filled(), |payload| self.first.take(payload));
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
                this.request.feed(&buf[..*n], |_| {});
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
                    this.request.feed(&b[..take], |_| {});
                    left -= take;
                }
            }
            Poll::Ready(Err(_)) => this.failed_early(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(Conn::is_write_vectored)
    }
}

impl VirtualSocket for HoldSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match (opt, &self.tcp) {
            (VirtualSockOpt::NoDelay, Some(tcp)) => tcp.tcp().set_nodelay(true),
            // Keep-alive probes: pooled connections wait seconds at most (pool::IDLE_FOR).
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
}
