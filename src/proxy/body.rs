//! Reading the whole request body before an upstream is chosen.
//!
//! Pingora 0.9.1 forwards a body consumed in `request_filter` only through its retry buffer,
//! which holds 64 KiB. Arming that buffer for the whole body hangs above 64 KiB, so it is armed
//! only once the remaining Content-Length fits; Pingora then replays that tail through
//! `request_body_filter(end_of_stream = true)`, where the proxy substitutes the complete body
//! it keeps. (../shared/PINGORA-NOTES.md, "Reading the body before choosing the upstream".)

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use crate::openai::ApiError;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core's HTTP/1 code).
pub const RETRY_BUFFER: usize = 64 * 1024;

/// How reading the body ended, when it did not yield a body.
#[derive(Debug)]
pub enum BodyError {
    /// Answer the client with this error.
    Reject(ApiError),
    /// The client went away mid-upload: nothing to answer (a 499 in logs).
    ClientGone,
}

/// The declared Content-Length, `Ok(None)` when absent, an error when malformed.
fn content_length(session: &Session) -> Result<Option<usize>, ApiError> {
    let Some(v) = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
    else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("malformed Content-Length", None))
}

/// Reads the complete body, at most `limit` bytes, within `deadline`.
pub async fn read(
    session: &mut Session,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let declared = content_length(session).map_err(BodyError::Reject)?;
    if let Some(size) = declared {
        if size > limit {
            return Err(BodyError::Reject(ApiError::BodyTooLarge { size, limit }));
        }
    }
    // `Expect: 100-continue`: the size is acceptable, so the client may send the body now
    // (curl otherwise waits a second before sending a body over 1 MiB).
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects && session.req_header().version == http::Version::HTTP_11 {
        session
            .write_continue_response()
            .await
            .map_err(|_| BodyError::ClientGone)?;
    }
    let mut armed = false;
    if declared.is_none_or(|n| n <= RETRY_BUFFER) {
        session.enable_retry_buffering();
        armed = true;
    }
    let mut buf = Collected::new(declared);
    let read_all = async {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| BodyError::ClientGone)?
        {
            buf.push(chunk);
            match declared {
                Some(size) if buf.len() > size => {
                    return Err(BodyError::Reject(ApiError::invalid(
                        "request body longer than its Content-Length",
                        None,
                    )))
                }
                Some(size) if !armed && size - buf.len() <= RETRY_BUFFER => {
                    session.enable_retry_buffering();
                    armed = true;
                }
                None if buf.len() > RETRY_BUFFER.min(limit) => {
                    return Err(BodyError::Reject(if limit < RETRY_BUFFER {
                        ApiError::BodyTooLarge {
                            size: buf.len(),
                            limit,
                        }
                    } else {
                        ApiError::LengthRequired {
                            limit: RETRY_BUFFER,
                        }
                    }));
                }
                _ => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, read_all).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(BodyError::Reject(ApiError::BodyTimeout)),
    }
    if declared.is_some_and(|n| n != buf.len()) {
        return Err(BodyError::ClientGone);
    }
    if !buf.is_empty() && session.get_retry_buffer().is_none() {
        // Pingora would forward headers without a body and both sides would wait forever.
        return Err(BodyError::Reject(ApiError::Internal));
    }
    Ok(buf.freeze())
}

/// The body's chunks: a body that arrives in one chunk (the usual case: it came with the
/// header) is kept as that chunk, without a copy.
struct Collected {
    first: Option<Bytes>,
    rest: BytesMut,
    declared: Option<usize>,
}

impl Collected {
    fn new(declared: Option<usize>) -> Self {
        Self {
            first: None,
            rest: BytesMut::new(),
            declared,
        }
    }

    fn push(&mut self, chunk: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(chunk);
            return;
        }
        if let Some(first) = self.first.take() {
            let total = first.len() + chunk.len();
            self.rest.reserve(self.declared.unwrap_or(total).max(total));
            self.rest.extend_from_slice(&first);
        }
        self.rest.extend_from_slice(&chunk);
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.rest.len(), Bytes::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn freeze(self) -> Bytes {
        self.first.unwrap_or_else(|| self.rest.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_is_kept_without_a_copy() {
        let chunk = Bytes::from_static(b"{\"model\":\"m\"}");
        let mut c = Collected::new(Some(chunk.len()));
        c.push(chunk.clone());
        assert_eq!(c.len(), chunk.len());
        let body = c.freeze();
        assert_eq!(body.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn chunks_are_joined_in_order() {
        let mut c = Collected::new(None);
        assert!(c.is_empty());
        for part in [&b"{\"mo"[..], b"del\":", b"\"m\"}"] {
            c.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(c.len(), 13);
        assert_eq!(&c.freeze()[..], b"{\"model\":\"m\"}");
    }
}
