//! Requests the gateway makes on its own behalf through a model's pools: mirrors (shadow.rs)
//! and classifications (`routing::classify`). Servers are picked by the pool's policy among
//! usable servers (health, breaker, drain), count the request in flight, and feed its outcome
//! to the breaker, as a client's request would.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;

use crate::routing::classify::Backend;
use crate::state::{Pool, Runtime, Server};
use crate::upstream::{self, Outcome};

/// Bytes of an answer a classification reads at most.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Sends `body` to `path` on `server` and reads the answer to its end, each chunk given to
/// `on_chunk`; the status, or `Err` when the exchange failed.
pub async fn exchange(
    connector: &Connector,
    server: &Server,
    pool: &Pool,
    path: &[u8],
    body: Bytes,
    request_id: Option<&http::HeaderValue>,
    on_chunk: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u16, ()> {
    let (mut session, _reused) = connector
        .get_http_session(&server.peer)
        .await
        .map_err(|_| ())?;
    let mut req = RequestHeader::build("POST", path, None).map_err(|_| ())?;
    super::headers::edit_request(&mut req, |h| {
        h.insert(http::header::HOST, server.host.clone());
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, body.len().into());
        if let Some(id) = request_id {
            h.insert(super::headers::X_REQUEST_ID, id.clone());
        }
        if let Some(key) = &pool.upstream_auth {
            h.insert(http::header::AUTHORIZATION, key.clone());
        }
    });
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|_| ())?;
    session
        .write_request_body(body, true)
        .await
        .map_err(|_| ())?;
    session.finish_request_body().await.map_err(|_| ())?;
    session.read_response_header().await.map_err(|_| ())?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    while let Some(chunk) = session.read_response_body().await.map_err(|_| ())? {
        on_chunk(&chunk);
    }
    connector
        .release_http_session(session, &server.peer, Some(Duration::from_secs(4)))
        .await;
    Ok(status)
}

/// Classifications' model calls through the runtime's pools.
pub struct Calls<'a> {
    pub runtime: &'a Runtime,
    pub connector: &'a Connector,
    /// The client request's id, sent along so the servers' logs tie the call to it.
    pub request_id: Option<&'a http::HeaderValue>,
}

#[async_trait]
impl Backend for Calls<'_> {
    async fn post(
        &self,
        model: usize,
        path: &'static str,
        body: &(dyn for<'s> Fn(&'s str) -> Vec<u8> + Sync),
    ) -> Result<Vec<u8>, String> {
        let rt = self.runtime;
        let features = crate::balance::Features::default();
        let mut tried: Option<(usize, usize)> = None;
        let mut why = "no usable server".to_owned();
        // One attempt, and one more on another server when the first failed before a 2xx.
        for _ in 0..2 {
            let picked = rt.router.pools(model).iter().find_map(|&p| {
                let pool = &rt.pools[p];
                let skip = |s: usize| tried != Some((p, s));
                pool.pick(&features, &skip).map(|s| (p, s))
            });
            let Some((p, s)) = picked else { break };
            tried = Some((p, s));
            let (pool, server) = (&rt.pools[p], &rt.pools[p].servers[s]);
            let served: String =
                serde_json::from_slice(&pool.served_model_json).unwrap_or_default();
            let _inflight = server.state.start(upstream::now_ms());
            let mut answer = Vec::new();
            let mut over = false;
            let mut keep = |chunk: &[u8]| {
                if answer.len() + chunk.len() <= MAX_ANSWER_BYTES {
                    answer.extend_from_slice(chunk);
                } else {
                    over = true;
                }
            };
            let result = exchange(
                self.connector,
                server,
                pool,
                path.as_bytes(),
                Bytes::from(body(&served)),
                self.request_id,
                &mut keep,
            )
            .await;
            let fault = match result {
                Ok(status) => matches!(status, 500 | 502..=504),
                Err(()) => true,
            };
            server.state.record(
                if fault {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                upstream::now_ms(),
            );
            match result {
                Ok(status) if (200..300).contains(&status) && !over => return Ok(answer),
                Ok(status) if (200..300).contains(&status) => {
                    return Err(format!(
                        "{}: answer over {MAX_ANSWER_BYTES} bytes",
                        server.id
                    ))
                }
                Ok(status) => why = format!("{}: status {status}", server.id),
                Err(()) => why = format!("{}: the exchange failed", server.id),
            }
        }
        Err(why)
    }
}

/// Computes the exemplar vectors of every embedding classifier of `runtime` whose vectors are
/// not current (per call within `timeout`); each classifier's name and, when it failed, why.
/// Vectors made before stay when a classifier fails.
pub async fn embed_exemplars(
    runtime: &Runtime,
    connector: &Connector,
    timeout: Duration,
) -> Vec<(String, Result<(), String>)> {
    let classifiers = &runtime.router.classifiers;
    let vectors = &classifiers.memory.vectors;
    let backend = Calls {
        runtime,
        connector,
        request_id: None,
    };
    let mut out = Vec::new();
    for c in classifiers.list.iter().filter(|c| c.weights[1] > 0.0) {
        if vectors.is_current(&c.name, c.vectors_fingerprint) {
            continue;
        }
        let result =
            crate::routing::classify::run::embed_exemplars(c, vectors, &backend, timeout).await;
        if let Err(e) = &result {
            vectors.failed(&c.name, e.clone());
        }
        out.push((c.name.clone(), result));
    }
    out
}
