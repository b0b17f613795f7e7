//! Header rewriting toward the upstream and toward the client, and the request id.
//!
//! Pingora's headers keep a second map with each name's original case, and every insert
//! through its API parses the name again, allocates it and updates both maps. The gateway's
//! own edits go through the plain `http` map instead ([`edit_request`], [`edit_response`]);
//! through Pingora's API they were ~4 % of the gateway's CPU per request. Header names are
//! case-insensitive (RFC 9110 §5.1); Pingora then writes standard names title-cased and the
//! rest in lower case.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::Routed;
use super::Ctx;
use crate::limits::{reset_text, RateHeaders};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_SWITCHYARD_OVERHEAD_US: HeaderName =
    HeaderName::from_static("x-switchyard-overhead-us");
/// The public model that answered, and the decision that chose it.
pub const X_SWITCHYARD_MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
pub const X_SWITCHYARD_ROUTE: HeaderName = HeaderName::from_static("x-switchyard-route");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// W3C Trace Context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-ratelimit-{limit,remaining,reset}-requests`, then the same for `-tokens`.
const RATE_LIMIT: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// Runs `edit` on the request's headers as a plain map; the case map is left behind.
pub fn edit_request<R>(req: &mut RequestHeader, edit: impl FnOnce(&mut HeaderMap) -> R) -> R {
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty));
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    out
}

/// Runs `edit` on the response's headers as a plain map; the case map and the upstream's
/// reason phrase are left behind.
pub fn edit_response<R>(resp: &mut ResponseHeader, edit: impl FnOnce(&mut HeaderMap) -> R) -> R {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    out
}

/// `x-switchyard-model` (the model of the current step) and `x-switchyard-route` (the
/// decision): prebuilt values, cloned.
pub fn route(h: &mut HeaderMap, routed: &Routed) {
    if let Some(v) = &routed.model().header {
        h.insert(X_SWITCHYARD_MODEL, v.clone());
    }
    if let Some(v) = routed.decision().and_then(|d| d.header.as_ref()) {
        h.insert(X_SWITCHYARD_ROUTE, v.clone());
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.
pub fn rate_limits(h: &mut HeaderMap, rate: &RateHeaders) {
    if rate.requests.is_none() && rate.tokens.is_none() {
        // No limit applies (an open gateway): not even the names are made.
        return;
    }
    for (names, snapshot) in RATE_LIMIT.iter().zip([rate.requests, rate.tokens]) {
        let Some(s) = snapshot else { continue };
        h.insert(names[0].clone(), HeaderValue::from(s.limit));
        h.insert(names[1].clone(), HeaderValue::from(s.remaining));
        if let Ok(v) = HeaderValue::try_from(reset_text(s.reset_ms)) {
            h.insert(names[2].clone(), v);
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), client-supplied forwarding or credential headers, and
/// the gateway's own `x-switchyard-*` (the client's routing hints are read here, not there):
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
            // The gateway holds the whole body before it sends anything.
            | "expect"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            // The client's API key is for the gateway; pools carry their own upstream key.
            | "authorization"
    ) || name.starts_with("x-switchyard-")
}

/// What an upstream's answer may not pass on to the client: hop-by-hop headers (RFC 9110
/// §7.6.1; Pingora frames the body itself, so `transfer-encoding` and `content-length` stay for
/// it), the upstream's `Server` (llama.cpp, uvicorn: the client talks to the gateway), and CORS
/// headers (an upstream's are not the gateway's policy; `server.cors` is).
fn is_upstream_only(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "upgrade"
            | "server"
    ) || name.starts_with("access-control-")
}

/// Takes out of an upstream's answer what [`is_upstream_only`] names, and the headers its
/// `Connection` names. One pass over the names; nothing is allocated when there is nothing
/// to take out but `Server`.
pub fn strip_upstream(h: &mut HeaderMap) {
    loop {
        let mut doomed: [Option<HeaderName>; 4] = Default::default();
        let mut n = 0;
        for name in h.keys() {
            if is_upstream_only(name.as_str()) {
                doomed[n] = Some(name.clone());
                n += 1;
                if n == doomed.len() {
                    break;
                }
            }
        }
        if let Some(listed) = h.get(header::CONNECTION) {
            let nominated: Vec<HeaderName> = listed
                .to_str()
                .unwrap_or_default()
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|t| !matches!(t.as_str(), "close" | "keep-alive"))
                .collect();
            for name in nominated {
                h.remove(name);
            }
        }
        for name in doomed.iter().flatten() {
            h.remove(name);
        }
        if n < doomed.len() {
            return;
        }
    }
}

/// The request id: the client's `x-request-id` when it is short printable ASCII, else 128
/// random bits in hex.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// Rewrites the request for the upstream: strips hop-by-hop, forwarding and credential
/// headers (and those the client's `Connection` names), sets `Host`, `Content-Length` of the
/// buffered body, `x-request-id`, `x-forwarded-for`, and the pool's `Authorization`.
pub fn to_upstream(
    req: &mut RequestHeader,
    client: Option<&SocketAddr>,
    upstream: Upstream<'_>,
    ctx: &Ctx,
) {
    edit_request(req, |h| {
        // One pass over the client's headers (a handful) instead of a removal per stripped
        // name; names are already lower case in the map.
        let named_by_connection = |name: &HeaderName| {
            h.get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
        };
        let listed = h.contains_key(header::CONNECTION);
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|n| is_stripped(n.as_str()) || (listed && named_by_connection(n)))
            .cloned()
            .collect();
        for name in &doomed {
            h.remove(name);
        }
        // At most six more: one growth instead of several.
        h.reserve(6);
        if let Some(host) = upstream.host {
            h.insert(header::HOST, host.clone());
        }
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(ctx.request.body.len()),
        );
        if let Some(id) = &ctx.request.request_id {
            h.insert(X_REQUEST_ID, id.clone());
        }
        if let Some(ip) = client
            .and_then(|c| c.as_inet())
            .and_then(|a| ip_text(a.ip()))
        {
            h.insert(X_FORWARDED_FOR, ip);
        }
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(key) = upstream.auth {
            h.insert(header::AUTHORIZATION, key.clone());
        }
        if let Some(tp) = upstream.traceparent {
            h.insert(TRACEPARENT, tp);
        }
    });
}

/// An address as header text; IPv4 without `fmt`, which cost ~1 000 instructions a request.
fn ip_text(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).ok();
    };
    let (mut buf, mut n) = ([0u8; 15], 0);
    for (k, o) in v4.octets().into_iter().enumerate() {
        if k > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// What the chosen server adds to the request.
pub struct Upstream<'a> {
    /// `Host`: the server's `host:port`.
    pub host: Option<&'a HeaderValue>,
    /// `Authorization: Bearer …` of the pool's key.
    pub auth: Option<&'a HeaderValue>,
    /// The attempt's span as the server's parent (`otel:` on), replacing the client's.
    pub traceparent: Option<HeaderValue>,
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

    /// A client's POST as Pingora reads it (names keep their case).
    fn client_request(path: &str, headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for &(k, v) in headers {
            req.append_header(k, v).unwrap();
        }
        req
    }

    /// The server `10.0.0.1:8000`, with the pool's key when there is one.
    fn server(auth: Option<&HeaderValue>) -> Upstream<'_> {
        static HOST: HeaderValue = HeaderValue::from_static("10.0.0.1:8000");
        Upstream {
            traceparent: None,
            host: Some(&HOST),
            auth,
        }
    }

    #[test]
    fn upstream_hop_by_hop_server_and_cors_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("server", "llama.cpp"),
            ("access-control-allow-origin", ""),
            ("access-control-expose-headers", "x"),
            ("keep-alive", "timeout=5, max=100"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-request-id", "abc"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_upstream(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "transfer-encoding", "x-request-id"]);
    }

    #[test]
    fn hop_by_hop_forwarding_and_credentials_are_stripped() {
        let mut req = client_request(
            "/v1/completions",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("x-forwarded-for", "6.6.6.6"),
                ("authorization", "Bearer sk-client"),
                ("transfer-encoding", "chunked"),
                ("x-custom", "kept"),
            ],
        );
        let mut ctx = Ctx::default();
        ctx.request.body = bytes::Bytes::from_static(b"{}");
        to_upstream(&mut req, None, server(None), &ctx);
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

    proptest::proptest! {
        #[test]
        fn ip_text_is_what_display_writes(a: u8, b: u8, c: u8, d: u8, v6: [u16; 8]) {
            for ip in [
                IpAddr::from([a, b, c, d]),
                IpAddr::from(v6),
            ] {
                let text = ip.to_string();
                proptest::prop_assert_eq!(ip_text(ip).unwrap(), text.as_str());
            }
        }
    }

    /// What goes on the wire once the header leaves Pingora's case map: every header once,
    /// the pool's key instead of the client's, the path untouched.
    #[test]
    fn the_upstream_request_is_written_whole() {
        let mut req = client_request(
            "/v1/chat/completions?x=1",
            &[
                ("Host", "gateway.example"),
                ("Content-Type", "application/json"),
                ("Content-Length", "120"),
                ("Authorization", "Bearer sk-client"),
                ("X-Request-Id", "client-id"),
                ("X-Custom", "kept"),
            ],
        );
        let mut ctx = Ctx::default();
        ctx.request.body = bytes::Bytes::from_static(b"{\"model\":\"m\"}");
        ctx.request.request_id = Some(HeaderValue::from_static("gateway-id"));
        let key = HeaderValue::from_static("Bearer sk-pool");
        let upstream = server(Some(&key));
        let client: SocketAddr = "192.0.2.7:5555"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        to_upstream(&mut req, Some(&client), upstream, &ctx);
        assert_eq!(req.raw_path(), b"/v1/chat/completions?x=1");
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let mut lines: Vec<String> = String::from_utf8(wire)
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| l.to_ascii_lowercase())
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "authorization: bearer sk-pool",
                "content-length: 13",
                "content-type: application/json",
                "host: 10.0.0.1:8000",
                "x-custom: kept",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
                "x-request-id: gateway-id",
            ]
        );
    }
}
