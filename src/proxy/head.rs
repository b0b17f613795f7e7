//! What a request head must be before anything acts on it (RELIABILITY.md), for what Pingora
//! lets through: a URI of at most 8 KiB (414), at most 100 header fields and 64 KiB (431), and
//! for HTTP/1 a framing no one can read two ways (`Content-Length` together with
//! `Transfer-Encoding` is refused and the connection closed, RFC 9112 §6.3) and a `Host` on
//! HTTP/1.1 (RFC 9112 §3.2). Heads Pingora cannot parse at all are answered at the edge
//! (edge.rs). Every refusal here closes the connection: the body is left unread.
//!
//! Pipelined requests are answered in order (Pingora's pipelining, turned on here for the
//! connection): without it Pingora answered the first with `keep-alive` and dropped the rest.

use http::Version;
use pingora_proxy::Session;

use crate::openai::ApiError;

pub const MAX_URI: usize = 8 * 1024;
pub const MAX_FIELDS: usize = 100;
pub const MAX_HEAD: usize = 64 * 1024;

/// Keeps the connection open for `idle` after this request, unless Pingora decided it closes
/// (the client said `close`, HTTP/1.0 without `keep-alive`, the connection's last request, an
/// ambiguous framing).
pub fn keepalive(session: &mut Session, idle: std::time::Duration) {
    let open = session
        .as_downstream()
        .as_http1()
        .is_none_or(|h1| h1.will_keepalive());
    if open {
        session.set_keepalive(Some(idle.as_secs()));
    }
}

/// Whether the raw request head has a `Content-Length` field.
fn has_content_length(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    raw.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// An HTTP/1.0 client cannot read chunked coding: an answer of unknown length goes out
/// delimited by the connection's close, and the connection closes after it.
pub fn for_http10(session: &mut Session, response: &mut pingora_http::ResponseHeader) {
    if session.req_header().version != Version::HTTP_10 {
        return;
    }
    if response
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
    {
        response.remove_header(&http::header::TRANSFER_ENCODING);
        session.set_keepalive(None);
    }
}

pub fn check(session: &mut Session) -> Result<(), ApiError> {
    let req = session.req_header();
    let uri = req.raw_path().len();
    if uri > MAX_URI {
        return Err(ApiError::UriTooLong { len: uri });
    }
    let headers = &req.headers;
    if headers.len() > MAX_FIELDS {
        return Err(ApiError::HeadersTooLarge);
    }
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if uri + size > MAX_HEAD {
        return Err(ApiError::HeadersTooLarge);
    }
    let h1 = matches!(req.version, Version::HTTP_10 | Version::HTTP_11);
    if !h1 {
        return Ok(());
    }
    // Pingora drops a Content-Length that comes with Transfer-Encoding (and closes after the
    // answer); the raw head still has it.
    if headers.contains_key(http::header::TRANSFER_ENCODING) && has_content_length(session) {
        return Err(ApiError::MalformedHead {
            reason: "Content-Length together with Transfer-Encoding",
        });
    }
    if req.version == Version::HTTP_11 && !headers.contains_key(http::header::HOST) {
        return Err(ApiError::MalformedHead {
            reason: "an HTTP/1.1 request without Host",
        });
    }
    let downstream = session.as_downstream_mut();
    if !downstream.pipelining_enabled() {
        downstream.set_pipelining_enabled(true);
    }
    Ok(())
}
