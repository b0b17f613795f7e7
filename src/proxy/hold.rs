//! Holding a stream's response header back until its first event, so that a server that
//! answers `200 text/event-stream` at once and then stays silent can still be failed over.
//!
//! Pingora writes the response header to the client as soon as it has parsed it, and no
//! hook sits between the upstream's body and that write. So the hold happens below Pingora:
//! streaming requests connect through [`HoldConnect`] (a custom L4 connector), whose socket
//! keeps the bytes of an SSE response header to itself until at least one body byte has
//! arrived behind them. While it holds, Pingora's read of the header is still pending, so
//! the peer's read timeout (the model's `first_token_timeout`) fails the attempt *before*
//! any byte reached the client, and the usual retry path picks another server.
//!
//! These connections carry one request each (`connection: close`; a Pingora virtual socket
//! has no file descriptor, which its connection pool needs as an id); a stream lasts seconds,
//! so the extra connect costs nothing measurable. The real socket is registered with the
//! lifecycle so that the end of a shutdown grace period still cuts it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::lifecycle::{Lifecycle, UpstreamHandle};

/// Largest response header held (then it is released as is and parsing is Pingora's).
const MAX_HEADER: usize = 64 * 1024;

/// Opens upstream connections whose SSE response header waits for the first event.
#[derive(Debug)]
pub struct HoldConnect {
    connect_timeout: Duration,
    lifecycle: Arc<Lifecycle>,
}

impl HoldConnect {
    pub fn new(connect_timeout: Duration, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            connect_timeout,
            lifecycle,
        }
    }
}

#[async_trait]
impl L4Connect for HoldConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "not an IP address");
        };
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
        let registered = {
            use std::os::fd::AsRawFd;
            self.lifecycle.register_upstream(tcp.as_raw_fd())
        };
        let socket = HoldSocket {
            tcp,
            state: State::Scanning,
            buf: Vec::new(),
            _registered: registered,
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
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

#[derive(Debug)]
struct HoldSocket {
    tcp: TcpStream,
    state: State,
    buf: Vec<u8>,
    _registered: UpstreamHandle,
}

/// The end of the header (index after `\r\n\r\n`), when complete.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a complete header announces a successful event stream.
fn is_event_stream(header: &[u8]) -> bool {
    let ok = header.get(9..12) == Some(b"200".as_slice());
    let lower = header.to_ascii_lowercase();
    ok && lower
        .windows(b"text/event-stream".len())
        .any(|w| w == b"text/event-stream")
}

impl HoldSocket {
    /// What the state machine does with the bytes it has.
    fn advance(&mut self) {
        loop {
            match self.state {
                State::Scanning => match header_end(&self.buf) {
                    Some(end) if is_event_stream(&self.buf[..end]) => {
                        self.state = State::Holding { header_len: end };
                    }
                    Some(_) => self.state = State::Releasing { at: 0 },
                    None if self.buf.len() > MAX_HEADER => {
                        self.state = State::Releasing { at: 0 };
                    }
                    None => return,
                },
                State::Holding { header_len } if self.buf.len() > header_len => {
                    self.state = State::Releasing { at: 0 };
                }
                _ => return,
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
        loop {
            match this.state {
                State::Releasing { at } if at < this.buf.len() => {
                    let n = out.remaining().min(this.buf.len() - at);
                    out.put_slice(&this.buf[at..at + n]);
                    this.state = State::Releasing { at: at + n };
                    if at + n == this.buf.len() {
                        this.buf = Vec::new();
                        this.state = State::Releasing { at: 0 };
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Releasing { .. } => return Pin::new(&mut this.tcp).poll_read(cx, out),
                State::Scanning | State::Holding { .. } => {
                    let mut chunk = [0u8; 8192];
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.tcp).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            // End of stream: release what there is; Pingora judges it.
                            this.state = State::Releasing { at: 0 };
                            if this.buf.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Ok(())) => {
                            this.buf.extend_from_slice(rb.filled());
                            this.advance();
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
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl VirtualSocket for HoldSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            // Keep-alive probes matter for pooled connections; these carry one request.
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

    /// A held connection and the server side of it, on a real socket pair.
    async fn pair() -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = SocketAddr::Inet(listener.local_addr().unwrap());
        let connector = HoldConnect::new(Duration::from_secs(1), Arc::new(Lifecycle::default()));
        let (stream, accepted) = tokio::join!(connector.connect(&target), listener.accept());
        (stream.unwrap(), accepted.unwrap().0)
    }

    /// The header alone is held; a body byte releases both.
    #[tokio::test]
    async fn the_header_waits_for_the_first_body_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, mut server) = pair().await;
        let header = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        server.write_all(header).await.unwrap();
        let mut buf = [0u8; 256];
        let early = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        assert!(early.is_err(), "the header alone came through");
        server.write_all(b"data: 1\n\n").await.unwrap();
        let mut got = Vec::new();
        while got.len() < header.len() + 9 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..header.len()], header);
        assert_eq!(&got[header.len()..], b"data: 1\n\n");
    }

    #[tokio::test]
    async fn other_responses_pass_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, mut server) = pair().await;
        let header = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        server.write_all(header).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], header);
    }
}
