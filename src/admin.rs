//! The admin listener. It listens on its own address (loopback by default) and never on the
//! public port.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while the gateway serves (not draining, every `server.ready_requires` model servable), else 503; JSON with every pool's and model's state |
//! | `POST /admin/reload` | reload the config file (see `Gateway::reload`) |
//! | `GET /admin/servers` | pools and their servers' live state |
//! | `POST /admin/pools/{pool}/servers/{host:port}/drain` (`/undrain`) | no new requests to that server (in-flight ones finish), or back in rotation; survives reloads |
//! | `GET /admin/config` | the effective config, defaults applied, secrets redacted |
//! | `POST /admin/route` | the routing decision a request would get against the live state, traced (body: the request; headers: its headers; `?tenant=NAME`, `?path=/v1/...`) |
//!
//! With `admin_token_env` set, every path but the two health probes requires
//! `Authorization: Bearer <token>` (401 otherwise).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::state::Shared;

pub struct Admin {
    shared: Arc<Shared>,
    /// Connections of the classifications a dry run makes.
    calls: pingora_core::connectors::http::Connector,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            calls: pingora_core::connectors::http::Connector::new(None),
        }
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

/// Compares without stopping at the first difference, so timing does not reveal how much of
/// a guess was right (the length still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", body.to_string().into_bytes())
}

impl Admin {
    /// Whether the request carries the configured admin token (`admin_token_env`); always
    /// true when none is configured. Health probes are exempt (see `response`).
    fn authorized(&self, session: &ServerSession) -> bool {
        let runtime = self.shared.runtime();
        let Some(token) = runtime.config.admin_token.as_deref() else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }

    /// Per-server gauges from live state; reset first so servers a reload removed disappear.
    fn set_server_gauges(&self) {
        let m = &self.shared.metrics;
        let runtime = self.shared.runtime();
        let now = crate::upstream::now_ms();
        m.cache
            .bytes
            .set(i64::try_from(self.shared.cache.weighted_size()).unwrap_or(i64::MAX));
        m.upstream_inflight.reset();
        m.upstream_usable.reset();
        m.upstream_draining.reset();
        m.upstream_healthy.reset();
        m.upstream_breaker.reset();
        m.upstream_engine_load.reset();
        m.upstream_kv_usage.reset();
        m.upstream_ewma.reset();
        for (pool, spec) in runtime.pools.iter().zip(&runtime.config.pools) {
            let max_age = spec.policy.load_max_age_ms;
            for s in pool.servers.iter() {
                let labels = [pool.name.as_str(), s.id.as_str()];
                m.upstream_inflight
                    .with_label_values(&labels)
                    .set(s.state.inflight() as i64);
                m.upstream_usable
                    .with_label_values(&labels)
                    .set(i64::from(s.state.is_usable(now)));
                m.upstream_draining
                    .with_label_values(&labels)
                    .set(i64::from(s.state.is_draining()));
                m.upstream_healthy
                    .with_label_values(&labels)
                    .set(i64::from(s.state.health().takes_traffic()));
                m.upstream_breaker
                    .with_label_values(&labels)
                    .set(i64::from(s.state.breaker_state(now).code()));
                if let Some((queue, kv)) = s.state.engine_load(now, max_age) {
                    m.upstream_engine_load.with_label_values(&labels).set(queue);
                    // Absent, not 0, when the engine does not report it (llama.cpp, TGI).
                    if let Some(kv) = kv {
                        m.upstream_kv_usage.with_label_values(&labels).set(kv);
                    }
                }
                if let Some(ms) = s.state.ewma_ms() {
                    m.upstream_ewma.with_label_values(&labels).set(ms / 1000.0);
                }
            }
        }
    }

    /// `GET /admin/servers`. `healthy` is `null` while a server has not been probed yet (or
    /// probing is off); `load` is `null` without a fresh engine reading, `ewma_ms` before the
    /// first measured response: not measured rather than made up. `prefix_blocks`: the
    /// prefix blocks a `prefix_aware` pool remembers the server holds (`null` elsewhere).
    fn servers(&self) -> serde_json::Value {
        use crate::upstream::health::Health;
        use serde_json::json;
        let runtime = self.shared.runtime();
        let now = crate::upstream::now_ms();
        let pools: Vec<_> = runtime
            .pools
            .iter()
            .zip(&runtime.config.pools)
            .map(|(pool, spec)| {
                let prefix = self.shared.prefix.find(&pool.name);
                let servers: Vec<_> = pool
                    .servers
                    .iter()
                    .zip(&spec.servers)
                    .map(|(s, sspec)| {
                        let health = s.state.health();
                        let reading = s.state.engine_load(now, spec.policy.load_max_age_ms);
                        json!({
                            "id": s.id,
                            "url": sspec.url(),
                            "healthy": (health != Health::Unknown).then_some(health == Health::Healthy),
                            "health": health.name(),
                            "breaker": s.state.breaker_state(now).name(),
                            "usable": s.state.is_usable(now),
                            "inflight": s.state.inflight(),
                            "load": reading.map(|(queue, _)| queue),
                            "kv_cache_usage": reading.and_then(|(_, kv)| kv),
                            "ewma_ms": s.state.ewma_ms().map(|ms| (ms * 1000.0).round() / 1000.0),
                            "weight": sspec.weight.get(),
                            "draining": s.state.is_draining(),
                            "cooldown_ms": s.state.cooldown_left_ms(now),
                            "prefix_blocks": prefix.as_ref().and_then(|ix| ix.held_by(&s.id)),
                            "dns": sspec.discovered.and_then(|i| spec.discover.get(i)).map(|d| d.name()),
                            "ramp": s.state.ramp(now, spec.slow_start),
                        })
                    })
                    .collect();
                json!({"name": pool.name, "model": spec.served_model, "balance": spec.balance.name(), "servers": servers})
            })
            .collect();
        json!({ "pools": pools })
    }

    /// `POST /admin/pools/{pool}/servers/{id}/drain` or `/undrain`.
    fn drain(&self, path: &str) -> Response<Vec<u8>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (pool_name, id, draining) = match parts.as_slice() {
            ["admin", "pools", pool, "servers", id, "drain"] => (*pool, *id, true),
            ["admin", "pools", pool, "servers", id, "undrain"] => (*pool, *id, false),
            _ => {
                return json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "not found"}),
                )
            }
        };
        let runtime = self.shared.runtime();
        let server = runtime
            .pools
            .iter()
            .find(|p| p.name == pool_name)
            .and_then(|p| p.servers.iter().find(|s| s.id == id));
        match server {
            Some(s) => {
                s.state.set_draining(draining);
                tracing::info!(
                    pool = pool_name,
                    server = id,
                    draining,
                    "server drain state changed"
                );
                json(
                    StatusCode::OK,
                    &serde_json::json!({"pool": pool_name, "server": id, "draining": draining}),
                )
            }
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": format!("no server {id} in pool {pool_name}")}),
            ),
        }
    }

    /// `POST /admin/route`: the decision the body (a request) would get now, as a trace; the
    /// answer is 200 with `status` saying what the client would get (200: routed).
    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let runtime = self.shared.runtime();
        let limit = runtime.config.limits.max_body_size;
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= limit => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({"error": format!("a request body is at most {limit} bytes")}),
                    )
                }
                Ok(None) => break,
                Err(_) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "could not read the request body"}),
                    )
                }
            }
        }
        let req = session.req_header();
        let query = |key: &str| {
            req.uri.query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_owned())
            })
        };
        let path = query("path").unwrap_or_else(|| "/v1/chat/completions".to_owned());
        let Some(endpoint) = crate::openai::Endpoint::from_path(&path) else {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("{path:?} is not an inference path (/v1/chat/completions, /v1/completions, /v1/embeddings)")}),
            );
        };
        let tenant = match query("tenant") {
            None => None,
            Some(name) => match runtime.tenants.list.iter().find(|t| *t.name == *name) {
                Some(t) => Some(t),
                None => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": format!("no tenant named {name:?}")}),
                    )
                }
            },
        };
        let allowed = |m: usize| tenant.is_none_or(|t| t.allows(m));
        let caller = crate::proxy::Caller {
            tenant: tenant.map(|t| &*t.name),
            allowed: &allowed,
        };
        let backend = crate::proxy::call::Calls {
            runtime: &runtime,
            connector: &self.calls,
            request_id: None,
        };
        let (trace, result) = crate::proxy::dry_run(
            &runtime.router,
            &*runtime,
            endpoint,
            &body,
            &req.headers,
            &caller,
            &backend,
        )
        .await;
        let mut out = serde_json::to_value(&trace).unwrap_or_default();
        out["status"] = result.err().unwrap_or(200).into();
        json(StatusCode::OK, &out)
    }

    /// `POST /admin/reload`: 200 when applied; 400 with every error when refused (the old
    /// config keeps serving).
    async fn reload(&self) -> Response<Vec<u8>> {
        let shared = self.shared.clone();
        let result = tokio::task::spawn_blocking(move || shared.reload()).await;
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
        let post = session.req_header().method == http::Method::POST;
        let path = session.req_header().uri.path().to_owned();
        let probe = matches!(path.as_str(), "/healthz" | "/readyz");
        if !probe && !self.authorized(session) {
            let mut resp = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "missing or wrong admin bearer token"}),
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        match (post, path.as_str()) {
            (true, "/admin/reload") => return self.reload().await,
            (true, "/admin/route") => return self.route(session).await,
            (true, p) if p.starts_with("/admin/pools/") => return self.drain(p),
            _ => {}
        }
        match (get, path.as_str()) {
            (true, "/admin/servers") => return json(StatusCode::OK, &self.servers()),
            (true, "/admin/config") => {
                return json(StatusCode::OK, &self.shared.runtime().config.to_json())
            }
            _ => {}
        }
        match (get, path.as_str()) {
            (true, "/metrics") => {
                self.set_server_gauges();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.render(),
                )
            }
            (true, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (true, "/readyz") => {
                let (ready, body) = crate::state::readiness::readiness(&self.shared);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, &body)
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
