//! What a Pingora error means: a read timeout of the hold, a client that is gone (and why),
//! and the answer the client gets for the rest.

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::openai::ApiError;

/// A held stream's read timeout (hold/silence.rs) reaches Pingora as an I/O error of kind
/// `TimedOut` and comes back as a `ReadError`: it is a read timeout like Pingora's own.
pub(super) fn as_read_timeout(e: &mut Error) {
    let timed_out = e.esource() == &ErrorSource::Upstream
        && e.etype() == &ErrorType::ReadError
        && e.root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if timed_out {
        e.etype = ErrorType::ReadTimedout;
    }
}

/// Why the client is gone when the error says so (nothing left to answer), as the reason
/// of an aborted stream: it went away, or it stopped reading past `timeouts.client_write`.
pub(super) fn client_gone(e: &Error) -> Option<&'static str> {
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Some("client_disconnect")
        }
        ErrorType::WriteTimedout => Some("client_write_timeout"),
        _ => None,
    }
}

/// Maps a Pingora error to the answer the client gets; `None` when there is no one to answer.
pub(super) fn classify(e: &Error) -> Option<ApiError> {
    match e.esource() {
        ErrorSource::Downstream if client_gone(e).is_some() => None,
        ErrorSource::Downstream => Some(ApiError::invalid("malformed HTTP request", None)),
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => ApiError::UpstreamTimeout,
            _ => ApiError::UpstreamUnavailable,
        }),
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => ApiError::UpstreamUnavailable,
            _ => ApiError::Internal,
        }),
    }
}
