//! Just enough HTTP/1.1 framing to tell when a request, or its response, has passed through
//! a connection whole and nothing else has, so that the connection may carry another
//! exchange (the hold, mod.rs, keeps such connections for later streams), and to hand out a
//! body's payload as it passes (the hold looks for a stream's first event in it).
//!
//! A [`Message`] is fed every byte of one direction in order and answers [`Message::is_done`]:
//! a complete head, then a body framed by `Content-Length` or chunked coding, consumed to its
//! last byte. Anything it cannot frame with certainty (`Connection: close`, HTTP/1.0, a
//! response read to the end of the connection, an interim `1xx`, bytes after the end, a
//! malformed chunk) makes it unreusable for good: the connection is then closed as before,
//! never reused wrongly. The payload is still followed where the framing is known (a
//! `Connection: close` response, or one read to the close).

/// Headers the head may have; more makes the message unreusable (not an error).
const MAX_HEADERS: usize = 64;
/// Largest head buffered.
const MAX_HEAD: usize = 64 * 1024;

/// Which side wrote the message (their heads and body rules differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The head so far.
    Head(Vec<u8>),
    /// Body bytes left to a fixed length.
    Length(u64),
    Chunked(Chunk),
    /// A response body read to the end of the connection.
    UntilClose,
    Done,
    /// Framing lost (a malformed head or chunk): no payload follows.
    Broken,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the size line's hex digits (`digits`: how many so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, up to the size line's end.
    Extension {
        size: u64,
    },
    /// After the size line's `\r`.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section after the last chunk; `empty`: nothing on this line yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

/// One direction of one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    side: Side,
    state: State,
    /// Nothing seen rules out another exchange on the connection.
    reusable: bool,
}

impl Message {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Head(Vec::new()),
            reusable: true,
        }
    }

    /// Whether the message is complete and nothing followed it.
    pub fn is_done(&self) -> bool {
        self.reusable && self.state == State::Done
    }

    /// Whether the message is complete (whatever the connection may do next).
    pub fn ended(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next bytes of this direction; `payload` gets the body's bytes among them,
    /// without its framing.
    pub fn feed(&mut self, mut bytes: &[u8], mut payload: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    match frame(self.side, head) {
                        Ok(Some((len, next, reusable))) => {
                            let rest = &bytes[len - before..];
                            self.state = next;
                            self.reusable &= reusable;
                            rest
                        }
                        Ok(None) if head.len() <= MAX_HEAD => &[],
                        _ => self.broken(),
                    }
                }
                State::Length(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    payload(&bytes[..n as usize]);
                    &bytes[n as usize..]
                }
                State::Chunked(chunk) => match chunked(chunk, bytes, &mut payload) {
                    Some((rest, true)) => {
                        self.state = State::Done;
                        rest
                    }
                    Some((rest, false)) => rest,
                    None => self.broken(),
                },
                State::UntilClose => {
                    payload(bytes);
                    self.reusable = false;
                    &[]
                }
                State::Done | State::Broken => {
                    // Bytes after the end: nothing to reuse.
                    self.reusable = false;
                    &[]
                }
            };
        }
    }

    /// Framing lost for good.
    fn broken(&mut self) -> &'static [u8] {
        self.state = State::Broken;
        self.reusable = false;
        &[]
    }
}

/// Parses a complete head: its length, the body's framing and whether the connection may carry
/// another exchange. `Ok(None)`: not complete yet.
fn frame(side: Side, head: &[u8]) -> Result<Option<(usize, State, bool)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, version, status, headers) = match side {
        Side::Request => {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(head).map_err(|_| ())? {
                httparse::Status::Partial => return Ok(None),
                httparse::Status::Complete(len) => (len, req.version, None, req.headers),
            }
        }
        Side::Response => {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(head).map_err(|_| ())? {
                httparse::Status::Partial => return Ok(None),
                httparse::Status::Complete(len) => (len, resp.version, resp.code, resp.headers),
            }
        }
    };
    let mut reusable = version == Some(1);
    let (mut length, mut chunked, mut other_coding) = (None, false, false);
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                reusable = false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read to the close.
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).ok().map(str::trim);
            match (length, value.and_then(|v| v.parse::<u64>().ok())) {
                (None, Some(n)) => length = Some(n),
                (Some(old), Some(n)) if old == n => {}
                _ => return Ok(Some((len, State::Broken, false))),
            }
        }
    }
    let state = match (status, chunked, other_coding, length) {
        (Some(100..=199), ..) => State::Broken,
        (Some(204 | 304), ..) => State::Done,
        (_, true, false, None) => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
        (_, false, false, Some(0)) => State::Done,
        (_, false, false, Some(n)) => State::Length(n),
        // A request without framing has no body; a response is read to the close.
        (None, false, false, None) => State::Done,
        (Some(_), false, _, None) => State::UntilClose,
        _ => State::Broken,
    };
    let reusable = reusable && !matches!(state, State::Broken | State::UntilClose);
    Ok(Some((len, state, reusable)))
}

/// Runs the chunked decoder over `bytes`, the chunks' data to `payload`: the bytes after the
/// body's end and whether it ended, or `None` for a malformed body.
fn chunked<'a>(
    chunk: &mut Chunk,
    mut bytes: &'a [u8],
    payload: &mut impl FnMut(&[u8]),
) -> Option<(&'a [u8], bool)> {
    while let Some((&b, rest)) = bytes.split_first() {
        if let Chunk::Data { left } = chunk {
            let n = (*left).min(bytes.len() as u64);
            *left -= n;
            if *left == 0 {
                *chunk = Chunk::DataCr;
            }
            payload(&bytes[..n as usize]);
            bytes = &bytes[n as usize..];
            continue;
        }
        bytes = rest;
        *chunk = match (*chunk, b) {
            (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return None;
                }
                let d = u64::from((b as char).to_digit(16)?);
                Chunk::Size {
                    size: size << 4 | d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return None,
            (Chunk::Size { size, .. } | Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Size { size, .. }, b';' | b' ' | b'\t') => Chunk::Extension { size },
            (Chunk::Extension { size }, _) if b != b'\n' => Chunk::Extension { size },
            (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::Trailer { empty: true },
            (Chunk::SizeLf { size }, b'\n') => Chunk::Data { left: size },
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
            (Chunk::Trailer { empty }, b'\r') => Chunk::TrailerLf { empty },
            (Chunk::Trailer { .. }, b'\n') => return None,
            (Chunk::Trailer { .. }, _) => Chunk::Trailer { empty: false },
            (Chunk::TrailerLf { empty: true }, b'\n') => return Some((bytes, true)),
            (Chunk::TrailerLf { empty: false }, b'\n') => Chunk::Trailer { empty: true },
            _ => return None,
        };
    }
    Some((bytes, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every pair of points; every way must give the same answer.
    fn done_however_split(side: Side, bytes: &[u8]) -> bool {
        let mut whole = Message::new(side);
        whole.feed(bytes, |_| {});
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut m = Message::new(side);
                m.feed(&bytes[..i], |_| {});
                m.feed(&bytes[i..j], |_| {});
                m.feed(&bytes[j..], |_| {});
                assert_eq!(m.is_done(), whole.is_done(), "split at {i} and {j}");
            }
        }
        whole.is_done()
    }

    const SSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        9\r\ndata: 1\n\n\r\n10;x=y\r\ndata: [DONE]\n\n\n\n\r\n0\r\n\r\n";

    #[test]
    fn a_chunked_response_is_done_at_its_last_chunk_and_not_before() {
        assert!(done_however_split(Side::Response, SSE));
        assert!(!done_however_split(Side::Response, &SSE[..SSE.len() - 1]));
        let trailers =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-t: 1\r\n\r\n";
        assert!(done_however_split(Side::Response, trailers));
    }

    #[test]
    fn a_length_framed_message_is_done_at_its_last_byte() {
        let req =
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello";
        assert!(done_however_split(Side::Request, req));
        assert!(!done_however_split(Side::Request, &req[..req.len() - 1]));
        assert!(done_however_split(
            Side::Response,
            b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(done_however_split(
            Side::Request,
            b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"
        ));
    }

    #[test]
    fn what_cannot_be_framed_with_certainty_is_never_reused() {
        for (side, bytes) in [
            (
                Side::Response,
                &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"[..],
            ),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                Side::Response,
                b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\na",
            ),
            // Read to the close.
            (Side::Response, b"HTTP/1.1 200 OK\r\n\r\nabc"),
            (Side::Response, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\na",
            ),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
            ),
            (
                Side::Request,
                b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
            ),
            // Bytes after the end.
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab",
            ),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nX",
            ),
            // Malformed chunks.
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            ),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\naX\r\n0\r\n\r\n",
            ),
            (
                Side::Response,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            ),
            (Side::Response, b"garbage\r\n\r\n"),
        ] {
            let mut m = Message::new(side);
            m.feed(bytes, |_| {});
            assert!(!m.is_done(), "{}", String::from_utf8_lossy(bytes));
            assert!(!m.reusable, "{}", String::from_utf8_lossy(bytes));
        }
    }

    /// What a message's body holds, fed in two pieces split at `at`.
    fn payload(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut m = Message::new(Side::Response);
        let mut out = Vec::new();
        m.feed(&bytes[..at], |p| out.extend_from_slice(p));
        m.feed(&bytes[at..], |p| out.extend_from_slice(p));
        out
    }

    #[test]
    fn the_payload_comes_out_without_its_framing_however_split() {
        let by_length = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc";
        let to_close = b"HTTP/1.0 200 OK\r\n\r\nabc";
        for at in 0..=SSE.len() {
            assert_eq!(
                payload(SSE, at),
                b"data: 1\n\ndata: [DONE]\n\n\n\n",
                "split at {at}"
            );
        }
        for bytes in [&by_length[..], to_close] {
            for at in 0..=bytes.len() {
                assert_eq!(payload(bytes, at), b"abc", "split at {at}");
            }
        }
        let mut m = Message::new(Side::Response);
        m.feed(SSE, |_| {});
        assert!(m.ended() && m.is_done());
        let mut m = Message::new(Side::Response);
        m.feed(by_length, |_| {});
        assert!(m.ended() && !m.is_done());
    }
}
