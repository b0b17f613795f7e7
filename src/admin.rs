//! The admin listener: `/metrics`, `/healthz`, `/readyz`. It listens on its own address
//! (loopback by default) and never on the public port.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::state::Gateway;

pub struct Admin {
    gateway: Arc<Gateway>,
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let get = session.req_header().method == http::Method::GET;
        match (get, session.req_header().uri.path()) {
            (true, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.gateway.metrics.render(),
            ),
            (true, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (true, "/readyz") if self.gateway.is_ready() => {
                reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            (true, "/readyz") => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready: a pool has no usable server\n".to_vec(),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
