//! The background side of upstream state: active health probes and engine /metrics scrapes,
//! one task per server and kind, kept in step with the current runtime (a reload that adds a
//! server starts its tasks; one that removes it stops them).
//!
//! Probes speak HTTP through Pingora's own connector. Each task looks its settings up in the
//! current runtime on every round, so a reload that changes an interval applies at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
use tokio::task::JoinHandle;

use crate::config::ScrapeSettings;
use crate::state::{Runtime, Shared};
use crate::upstream::engine::Engine;
use crate::upstream::engine_load;
use crate::upstream::health::{Health, HealthSettings, HealthTracker, Probe};
use crate::upstream::{now_ms, ServerState};

/// How often the set of tasks is compared with the runtime's servers.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Largest /metrics body read (vLLM's is ~30 KiB with histograms).
const MAX_METRICS_BODY: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Health,
    EngineMetrics,
}

/// Runs the probes; a Pingora background service.
pub struct Monitor {
    gateway: Arc<Shared>,
}

impl Monitor {
    pub fn new(gateway: Arc<Shared>) -> Self {
        Self { gateway }
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = Arc::new(Connector::new(None));
        let mut tasks: HashMap<(Kind, String), JoinHandle<()>> = HashMap::new();
        let vectors = tokio::spawn(vectors_loop(self.gateway.clone(), connector.clone()));
        loop {
            let runtime = self.gateway.runtime();
            let wanted = wanted(&runtime);
            tasks.retain(|key, task| {
                let keep = wanted.contains(key) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for key in wanted {
                if tasks.contains_key(&key) {
                    continue;
                }
                let gateway = self.gateway.clone();
                let connector = connector.clone();
                let (kind, id) = key.clone();
                let task = tokio::spawn(async move {
                    match kind {
                        Kind::Health => health_loop(gateway, connector, id).await,
                        Kind::EngineMetrics => scrape_loop(gateway, connector, id).await,
                    }
                });
                tasks.insert(key, task);
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        for task in tasks.values() {
            task.abort();
        }
        vectors.abort();
    }
}

/// Longest wait between two attempts at exemplar vectors that failed.
const VECTORS_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Keeps classifiers' exemplar vectors current: computed through their embedding model when
/// a runtime (the first, or a reload's) wants vectors it has not got, retried with backoff
/// (1 s doubling to 30 s) while the model cannot be reached. Old vectors serve meanwhile.
async fn vectors_loop(gateway: Arc<Shared>, connector: Arc<Connector>) {
    let mut backoff = Duration::from_secs(1);
    let mut next = tokio::time::Instant::now();
    let mut seen: Option<Arc<Runtime>> = None;
    loop {
        let runtime = gateway.runtime();
        if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &runtime)) {
            // A new runtime (a reload): its vectors are tried at once.
            next = tokio::time::Instant::now();
            backoff = Duration::from_secs(1);
            seen = Some(runtime.clone());
        }
        if tokio::time::Instant::now() >= next {
            let results =
                crate::proxy::call::embed_exemplars(&runtime, &connector, Duration::from_secs(10))
                    .await;
            let failed = results.iter().any(|(_, r)| r.is_err());
            for (name, result) in results {
                match result {
                    Ok(()) => tracing::info!(classifier = %name, "exemplar vectors computed"),
                    Err(e) => tracing::warn!(
                        classifier = %name,
                        error = %e,
                        retry_in = ?backoff,
                        "exemplar vectors not computed; the previous ones, if any, serve"
                    ),
                }
            }
            if failed {
                next = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(VECTORS_BACKOFF_MAX);
            } else {
                backoff = Duration::from_secs(1);
            }
        }
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

/// The tasks the runtime calls for.
fn wanted(runtime: &Runtime) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    for (pool, conf) in runtime.pools.iter().zip(&runtime.config.pools) {
        for s in pool.servers.iter() {
            if conf.health.enabled {
                out.push((Kind::Health, s.id.clone()));
            }
            if conf.engine_metrics.is_some() {
                out.push((Kind::EngineMetrics, s.id.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What a task needs of its server, looked up in the current runtime (first pool that has it).
struct Target {
    peer: HttpPeer,
    state: Arc<ServerState>,
    health: HealthSettings,
    scrape: Option<ScrapeSettings>,
    engine: Engine,
}

fn target(gateway: &Shared, id: &str) -> Option<Target> {
    let runtime = gateway.runtime();
    runtime
        .pools
        .iter()
        .zip(&runtime.config.pools)
        .find_map(|(pool, conf)| {
            let s = pool.servers.iter().find(|s| s.id == id)?;
            Some(Target {
                peer: s.peer.clone(),
                state: s.state.clone(),
                health: conf.health.clone(),
                scrape: conf.engine_metrics.clone(),
                engine: conf.engine,
            })
        })
}

/// `interval` ± 10 %, so that probes of many servers do not line up.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}

async fn health_loop(gateway: Arc<Shared>, connector: Arc<Connector>, id: String) {
    let Some(first) = target(&gateway, &id) else {
        return;
    };
    let mut tracker = HealthTracker::new(first.state.health());
    // The first probe comes at once: a server that is down at start-up is out within one round.
    loop {
        let Some(t) = target(&gateway, &id) else {
            return;
        };
        if !t.health.enabled {
            return;
        }
        let probe = match get(
            &connector,
            &t.peer,
            &id,
            &t.health.path,
            t.health.timeout,
            0,
        )
        .await
        {
            Ok((status, _)) if (200..300).contains(&status) => Probe::Ok,
            Ok(_) | Err(ProbeError::Failed) => Probe::Failed,
            Err(ProbeError::Refused) => Probe::Refused,
        };
        if probe == Probe::Ok && t.state.probe_passed().is_some() {
            tracing::info!(server = %id, "health check passed: circuit breaker half-open");
        }
        if let Some(health) = tracker.record(probe, &t.health) {
            t.state.set_health(health, now_ms());
            match health {
                Health::Unhealthy => {
                    tracing::warn!(server = %id, ?probe, "health check: server is down")
                }
                _ => tracing::info!(server = %id, "health check: server is {}", health.name()),
            }
        }
        tokio::time::sleep(jittered(tracker.next_wait(&t.health))).await;
    }
}

async fn scrape_loop(gateway: Arc<Shared>, connector: Arc<Connector>, id: String) {
    let mut failing = false;
    loop {
        let Some(t) = target(&gateway, &id) else {
            return;
        };
        let Some(scrape) = t.scrape else {
            return;
        };
        let timeout = scrape.interval.max(Duration::from_millis(500));
        let reading = match get(
            &connector,
            &t.peer,
            &id,
            &scrape.path,
            timeout,
            MAX_METRICS_BODY,
        )
        .await
        {
            Ok((200, body)) => engine_load::parse(t.engine, &String::from_utf8_lossy(&body)),
            _ => None,
        };
        match reading {
            Some(load) => {
                t.state.set_engine_load(load, now_ms());
                failing = false;
            }
            None => {
                if !failing {
                    tracing::debug!(server = %id, "engine metrics unavailable; balancing on in-flight requests");
                }
                failing = true;
                t.state.clear_engine_load();
            }
        }
        tokio::time::sleep(jittered(scrape.interval)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeError {
    Refused,
    Failed,
}

/// GET `path` with a total deadline; returns the status and up to `max_body` bytes of body.
async fn get(
    connector: &Connector,
    peer: &HttpPeer,
    host: &str,
    path: &str,
    deadline: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), ProbeError> {
    let attempt = async {
        let (mut session, _reused) = connector.get_http_session(peer).await.map_err(|e| {
            if matches!(e.etype(), ErrorType::ConnectRefused) {
                ProbeError::Refused
            } else {
                ProbeError::Failed
            }
        })?;
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|_| ProbeError::Failed)?;
        req.insert_header("host", host)
            .map_err(|_| ProbeError::Failed)?;
        req.insert_header("user-agent", "switchyard-probe")
            .map_err(|_| ProbeError::Failed)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|_| ProbeError::Failed)?;
        session
            .finish_request_body()
            .await
            .map_err(|_| ProbeError::Failed)?;
        session
            .read_response_header()
            .await
            .map_err(|_| ProbeError::Failed)?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|_| ProbeError::Failed)?
        {
            if body.len() + chunk.len() > max_body.max(64 * 1024) {
                // Drop the connection rather than read an unbounded body.
                return Ok((status, body.freeze()));
            }
            body.extend_from_slice(&chunk);
        }
        connector
            .release_http_session(session, peer, Some(Duration::from_secs(4)))
            .await;
        Ok((status, body.freeze()))
    };
    tokio::time::timeout(deadline, attempt)
        .await
        .unwrap_or(Err(ProbeError::Failed))
}
