//! Header rewriting toward the upstream, and the request id.

use std::fmt::Write as _;

use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::Ctx;
use crate::limits::{reset_text, RateHeaders};

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.
pub fn rate_limits(resp: &mut ResponseHeader, h: &RateHeaders) -> Result<()> {
    for (kind, snapshot) in [("requests", h.requests), ("tokens", h.tokens)] {
        let Some(s) = snapshot else { continue };
        resp.insert_header(format!("x-ratelimit-limit-{kind}"), s.limit)?;
        resp.insert_header(format!("x-ratelimit-remaining-{kind}"), s.remaining)?;
        resp.insert_header(format!("x-ratelimit-reset-{kind}"), reset_text(s.reset_ms))?;
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and client-supplied forwarding or credential headers:
/// none of them may reach the upstream as the client sent them.
fn is_stripped(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            // The client's API key is for the gateway; pools carry their own upstream key.
            | "authorization"
    )
}

/// The request id: the client's `x-request-id` when it is short printable ASCII, else 128
/// random bits in hex.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut id = String::with_capacity(32);
    let _ = write!(id, "{:032x}", fastrand::u128(..));
    // Hex digits are always a valid header value.
    HeaderValue::try_from(id).unwrap_or(HeaderValue::from_static("0"))
}

/// Rewrites the request for the upstream: strips hop-by-hop, forwarding and credential
/// headers (and those the client's `Connection` names), sets `Host`, `Content-Length` of the
/// buffered body, `x-request-id` and `x-forwarded-for`.
pub fn to_upstream(
    req: &mut RequestHeader,
    client: Option<&SocketAddr>,
    host: Option<&str>,
    ctx: &Ctx,
) -> Result<()> {
    // One pass over the client's headers (a handful) instead of a lookup per stripped name;
    // names are already lower case in the map.
    let connection_named = |name: &HeaderName| {
        req.headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let listed = req.headers.contains_key(header::CONNECTION);
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| is_stripped(n.as_str()) || (listed && connection_named(n)))
        .cloned()
        .collect();
    for name in &doomed {
        req.remove_header(name);
    }
    if let Some(host) = host {
        req.insert_header(header::HOST, host)?;
    }
    req.insert_header(header::CONTENT_LENGTH, ctx.body.len())?;
    if let Some(id) = &ctx.request_id {
        req.insert_header("x-request-id", id.clone())?;
    }
    if let Some(ip) = client.and_then(|c| c.as_inet()).map(|a| a.ip()) {
        req.insert_header("x-forwarded-for", ip.to_string())?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_id_is_kept_when_sane_and_replaced_otherwise() {
        let mut req = RequestHeader::build("POST", b"/v1/completions", None).unwrap();
        req.insert_header("x-request-id", "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header("x-request-id", "a b").unwrap();
        let generated = request_id(&req);
        assert_eq!(generated.len(), 32);
        assert!(generated.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn hop_by_hop_forwarding_and_credentials_are_stripped() {
        let mut req = RequestHeader::build("POST", b"/v1/completions", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("authorization", "Bearer sk-client"),
            ("transfer-encoding", "chunked"),
            ("x-custom", "kept"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        let mut ctx = Ctx::new();
        ctx.body = bytes::Bytes::from_static(b"{}");
        to_upstream(&mut req, None, Some("10.0.0.1:8000"), &ctx).unwrap();
        let h = &req.headers;
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "x-forwarded-for",
            "authorization",
            "transfer-encoding",
        ] {
            assert!(h.get(gone).is_none(), "{gone} still present");
        }
        assert_eq!(h["x-custom"], "kept");
        assert_eq!(h["host"], "10.0.0.1:8000");
        assert_eq!(h["content-length"], "2");
    }
}
