//! CORS from `server.cors`: the request's `Origin` is checked once in `request_filter`;
//! every answer to an allowed origin, the upstream's and the gateway's own, carries the
//! gateway's CORS headers; preflights are answered here and never reach an upstream.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, ORIGIN, VARY,
};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::{headers, Ctx};
use crate::config::cors::{Cors, ALLOW_METHODS, EXPOSE_HEADERS};
use crate::openai::ApiError;

/// What `request_filter` does about CORS.
pub enum Check {
    /// Go on with the request.
    Pass,
    /// A preflight from an allowed origin: answer it (`preflight`).
    Preflight,
    /// A preflight from an origin not allowed.
    Refused(ApiError),
}

/// Reads the request's `Origin`; an allowed one is kept in `ctx` for the answer's headers.
pub fn check(session: &Session, cors: &Cors, ctx: &mut Ctx) -> Check {
    let req = session.req_header();
    let origin = req.headers.get(ORIGIN).filter(|o| cors.allows(o));
    ctx.request.cors_origin = origin.cloned();
    let is_preflight = req.method == http::Method::OPTIONS
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    match (is_preflight, origin) {
        (false, _) => Check::Pass,
        (true, Some(_)) => Check::Preflight,
        (true, None) => Check::Refused(ApiError::OriginNotAllowed),
    }
}

/// The headers every answer to an allowed origin carries.
pub fn answer(h: &mut HeaderMap, ctx: &Ctx) {
    if let Some(origin) = &ctx.request.cors_origin {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
        h.append(VARY, HeaderValue::from_static("origin"));
    }
}

/// `204` to a preflight from an allowed origin.
pub async fn preflight(session: &mut Session, cors: &Cors, ctx: &mut Ctx) -> Result<()> {
    let asked = session
        .req_header()
        .headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let mut resp = ResponseHeader::build_no_case(204, Some(8))?;
    headers::edit_response(&mut resp, |h| {
        answer(h, ctx);
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        if let Some(allowed) = cors.allow_headers.clone().or(asked) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
        }
        h.insert(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
        if let Some(id) = &ctx.request.request_id {
            h.insert(headers::X_REQUEST_ID, id.clone());
        }
    });
    ctx.response.answered = Some(204);
    session.write_response_header(Box::new(resp), true).await
}
