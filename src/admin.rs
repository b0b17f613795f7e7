//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`; `POST /admin/reload`. It
//! listens on its own address (loopback by default) and never on the public port.

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

impl Admin {
    /// `POST /admin/reload`: 200 when applied; 400 with every error when refused (the old
    /// config keeps serving).
    async fn reload(&self) -> Response<Vec<u8>> {
        let gateway = self.gateway.clone();
        let result = tokio::task::spawn_blocking(move || gateway.reload()).await;
        let (status, body) = match result {
            Ok(Ok(())) => (StatusCode::OK, serde_json::json!({"status": "reloaded"})),
            Ok(Err(e)) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "config refused; the previous config keeps serving",
                    "errors": e.errors().iter()
                        .map(|c| serde_json::json!({"path": c.path, "message": c.message}))
                        .collect::<Vec<_>>(),
                }),
            ),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "reload task failed", "errors": []}),
            ),
        };
        reply(status, "application/json", body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let get = session.req_header().method == http::Method::GET;
        if session.req_header().method == http::Method::POST
            && session.req_header().uri.path() == "/admin/reload"
        {
            return self.reload().await;
        }
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
