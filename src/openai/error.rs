//! The one error type of the request path, and its mapping to HTTP in one place: status,
//! OpenAI error `type` and `code`, `param`. Bodies follow OpenAI's shape
//! `{"error":{"message","type","param","code"}}` and never carry upstream addresses, prompts
//! or keys.

use bytes::Bytes;
use serde::Serialize;

/// Why the gateway answered a request itself instead of relaying an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("Unknown request URL: {method} {path}. Please check the URL and method.")]
    UnknownPath { method: String, path: String },
    #[error("Method {method} is not allowed on {path}; use {allow}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("The request body is {size} bytes, above the limit of {limit} bytes.")]
    BodyTooLarge { size: usize, limit: usize },
    #[error(
        "A request body without Content-Length may be at most {limit} bytes; send Content-Length."
    )]
    LengthRequired { limit: usize },
    #[error("Reading the request body took longer than the limit.")]
    BodyTimeout,
    /// The request head did not arrive within `timeouts.request_header`.
    #[error("The request head did not arrive in time (timeouts.request_header).")]
    HeaderTimeout,
    #[error("The request URI is {len} bytes; at most 8192 are accepted.")]
    UriTooLong { len: usize },
    #[error("The request head is over 64 KiB or has over 100 header fields; send fewer or smaller headers.")]
    HeadersTooLarge,
    /// A head no server may act on: ambiguous framing, no Host, malformed syntax.
    #[error("The request head is malformed: {reason}.")]
    MalformedHead { reason: &'static str },
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("The model `{model}` does not exist or you do not have access to it.")]
    ModelNotFound { model: String },
    #[error("This model's maximum context length is {window} tokens. However, you requested about {needed} tokens (the prompt estimate plus max_tokens). Please reduce the length of the messages or max_tokens.")]
    ContextLengthExceeded { needed: u64, window: u64 },
    #[error("No rule of model `{model}` matches this request.")]
    NoMatchingRoute { model: String },
    #[error("No model this request may go to is within its provider.max_price (prompt {prompt} $/Mtok, completion {completion} $/Mtok).")]
    OverMaxPrice { prompt: String, completion: String },
    #[error("No upstream server is available for this model right now.")]
    NoHealthyUpstream,
    #[error("The upstream server could not be reached.")]
    UpstreamUnavailable,
    #[error("The upstream server did not answer in time.")]
    UpstreamTimeout,
    #[error("The upstream server stopped before the response was complete.")]
    StreamInterrupted,
    #[error("The gateway is shutting down; retry the request.")]
    ShuttingDown,
    /// `shared.on_error: closed` while the shared store does not answer.
    #[error("The gateway cannot check this request's limits right now; retry the request.")]
    LimitsUnavailable,
    #[error("The gateway hit an internal error.")]
    Internal,
    #[error(
        "You didn't provide an API key. Send it in the Authorization header as `Bearer <key>`."
    )]
    MissingApiKey,
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    /// A tenant's or a model's limit, or a budget.
    #[error("{message}")]
    RateLimited {
        message: String,
        /// OpenAI's error type: `requests`, `tokens` or `insufficient_quota`.
        kind: &'static str,
        code: &'static str,
        retry_after_secs: u64,
        /// Whether waiting `retry_after_secs` can help (not for a request above the limit).
        retry: bool,
    },
    #[error("Too many open connections from your address; close some and retry.")]
    TooManyConnections,
    #[error("Too many requests per second from your address; slow down.")]
    IpRateLimited,
    /// A CORS preflight from an origin `server.cors` does not list.
    #[error("This origin may not call the API (server.cors.allow_origins).")]
    OriginNotAllowed,
}

/// `{"error": {...}}`
#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    /// Shorthand for a 400 about one request field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownPath { .. } | Self::ModelNotFound { .. } | Self::OverMaxPrice { .. } => {
                404
            }
            Self::ContextLengthExceeded { .. } | Self::NoMatchingRoute { .. } => 400,
            Self::MethodNotAllowed { .. } => 405,
            Self::BodyTooLarge { .. } => 413,
            Self::LengthRequired { .. } => 411,
            Self::BodyTimeout | Self::HeaderTimeout => 408,
            Self::UriTooLong { .. } => 414,
            Self::HeadersTooLarge => 431,
            Self::MalformedHead { .. } => 400,
            Self::InvalidRequest { .. } => 400,
            Self::NoHealthyUpstream | Self::ShuttingDown | Self::LimitsUnavailable => 503,
            Self::UpstreamUnavailable | Self::StreamInterrupted => 502,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
            Self::MissingApiKey | Self::InvalidApiKey => 401,
            Self::RateLimited { .. } | Self::TooManyConnections | Self::IpRateLimited => 429,
            Self::OriginNotAllowed => 403,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownPath { .. }
            | Self::MethodNotAllowed { .. }
            | Self::BodyTooLarge { .. }
            | Self::LengthRequired { .. }
            | Self::BodyTimeout
            | Self::HeaderTimeout
            | Self::UriTooLong { .. }
            | Self::HeadersTooLarge
            | Self::MalformedHead { .. }
            | Self::InvalidRequest { .. }
            | Self::ModelNotFound { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::NoMatchingRoute { .. }
            | Self::OverMaxPrice { .. }
            | Self::OriginNotAllowed => "invalid_request_error",
            Self::NoHealthyUpstream
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::StreamInterrupted => "upstream_error",
            Self::Internal | Self::ShuttingDown | Self::LimitsUnavailable => "server_error",
            Self::MissingApiKey | Self::InvalidApiKey => "authentication_error",
            Self::RateLimited { kind, .. } => kind,
            Self::TooManyConnections | Self::IpRateLimited => "requests",
        }
    }

    /// OpenAI's error `code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::UnknownPath { .. } => Some("unknown_url"),
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::LengthRequired { .. } => Some("length_required"),
            Self::BodyTimeout | Self::HeaderTimeout => Some("request_timeout"),
            Self::UriTooLong { .. } => Some("uri_too_long"),
            Self::HeadersTooLarge => Some("request_header_fields_too_large"),
            Self::MalformedHead { .. } => Some("invalid_request_head"),
            Self::InvalidRequest { .. } => None,
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            Self::NoMatchingRoute { .. } => Some("no_matching_route"),
            Self::OverMaxPrice { .. } => Some("no_model_within_max_price"),
            Self::NoHealthyUpstream => Some("no_healthy_upstream"),
            Self::UpstreamUnavailable => Some("upstream_unavailable"),
            Self::UpstreamTimeout => Some("upstream_timeout"),
            Self::StreamInterrupted => Some("upstream_stream_interrupted"),
            Self::Internal => Some("internal_error"),
            Self::ShuttingDown => Some("server_shutting_down"),
            Self::LimitsUnavailable => Some("limits_unavailable"),
            Self::MissingApiKey | Self::InvalidApiKey => Some("invalid_api_key"),
            Self::RateLimited { code, .. } => Some(code),
            Self::TooManyConnections | Self::IpRateLimited => Some("rate_limit_exceeded"),
            Self::OriginNotAllowed => Some("origin_not_allowed"),
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound { .. } | Self::NoMatchingRoute { .. } => Some("model"),
            Self::ContextLengthExceeded { .. } => Some("messages"),
            Self::OverMaxPrice { .. } => Some("provider.max_price"),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, when the answer says so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::NoHealthyUpstream
            | Self::UpstreamUnavailable
            | Self::ShuttingDown
            | Self::LimitsUnavailable
            | Self::TooManyConnections
            | Self::IpRateLimited => Some(1),
            Self::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// What `x-should-retry` says, when the answer says it: `false` when a client retry cannot
    /// help right now (every server is out of rotation, so an immediate retry would only add
    /// load); `true` when the gateway could not check the request's limits (the shared store
    /// did not answer) and a retry may well pass.
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            Self::NoHealthyUpstream | Self::RateLimited { retry: false, .. } => Some(false),
            Self::LimitsUnavailable => Some(true),
            _ => None,
        }
    }

    /// Whether the connection must be closed after answering: the request body may still be
    /// unread, and leaving it in the socket would desynchronise the next request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BodyTooLarge { .. }
                | Self::LengthRequired { .. }
                | Self::BodyTimeout
                | Self::MissingApiKey
                | Self::InvalidApiKey
                | Self::IpRateLimited
                | Self::TooManyConnections
                | Self::UriTooLong { .. }
                | Self::HeadersTooLarge
                | Self::MalformedHead { .. }
        )
    }

    /// The JSON body in OpenAI's error shape.
    /// The whole HTTP/1.1 answer, written below Pingora (the edge's refusals, before or instead
    /// of a session): status, JSON body, `Retry-After` when it has one, and `connection: close`.
    pub fn raw_answer(&self) -> Vec<u8> {
        let body = self.body();
        let status = self.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let retry = self
            .retry_after()
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{retry}connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    pub fn body(&self) -> Bytes {
        let message = self.to_string();
        let envelope = Envelope {
            error: Body {
                message: &message,
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        };
        // Serialising a struct of strings cannot fail; an empty body is the safe fallback.
        serde_json::to_vec(&envelope).map_or_else(|_| Bytes::new(), Bytes::from)
    }
}

/// Cuts client-supplied text echoed in an error to a bounded length.
pub fn echo(text: &str) -> String {
    const MAX: usize = 256;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_not_found_has_openai_shape() {
        let e = ApiError::ModelNotFound {
            model: "gpt-9".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    }

    #[test]
    fn invalid_request_names_param_and_has_null_code() {
        let e = ApiError::invalid("bad", Some("stream"));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["param"], "stream");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn echo_bounds_long_client_text_on_a_char_boundary() {
        let long = "é".repeat(300);
        let cut = echo(&long);
        assert!(cut.len() <= 256 + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
