//! The runtime: an immutable snapshot built from a [`Config`], swapped whole on reload.
//!
//! Building is fallible and does all the work (name resolution, peers, balancer tables,
//! metric handles, the `/v1/models` body); the request path then only indexes into it.
//! Per-server state comes from the [`Registry`], so it survives a rebuild.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use serde::Serialize;

use crate::balance::{Balance, Candidates, Features, Policy};
use crate::config::{Config, ConfigError, LoadError, RetryBudget};
use crate::limits::budget::Cost;
use crate::limits::per_ip::PerIp;
use crate::limits::store::LocalStore;
use crate::limits::Tenants;
use crate::metrics::{Metrics, ModelMetrics};
use crate::routing::RouteTable;
use crate::upstream::{Registry, ServerState};

/// One upstream server, ready to use.
pub struct Server {
    /// `host:port`
    pub id: String,
    /// `id` as the `Host` header of requests to it.
    pub host: http::HeaderValue,
    /// Prebuilt peer (address, timeouts); cloned into a `Box` per attempt.
    pub peer: HttpPeer,
    pub state: Arc<ServerState>,
}

/// A pool of interchangeable servers serving one model.
pub struct Pool {
    pub name: String,
    /// The served model name as a JSON string literal, spliced into forwarded bodies.
    pub served_model_json: Bytes,
    pub servers: Box<[Server]>,
    /// The servers' states and weights in server order, as the policy sees them.
    states: Box<[Arc<ServerState>]>,
    weights: Box<[u32]>,
    pub balancer: Box<dyn Balance>,
    pub policy: Policy,
    pub slow_start: Duration,
    pub retry_budget: RetryBudget,
    /// Retries of requests a server received, in flight now (see `RetryBudget`).
    pub retries_inflight: Arc<AtomicU64>,
    pub cost: Cost,
    /// `Bearer <key>` for the upstream, when the pool has a key.
    pub upstream_auth: Option<http::HeaderValue>,
}

impl Pool {
    /// Picks a usable server for which `allowed` holds (e.g. not tried yet by this request).
    /// A server in its slow start takes a request with the probability of its ramp; when
    /// that leaves none, ramping servers are taken anyway rather than failing the request.
    pub fn pick(&self, features: &Features, allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        let now = crate::upstream::now_ms();
        let usable =
            |i: usize| allowed(i) && self.servers.get(i).is_some_and(|s| s.state.is_usable(now));
        let ramped = |i: usize| {
            usable(i) && {
                let r = self.states[i].ramp(now, self.slow_start);
                r >= 1.0 || fastrand::f64() < r
            }
        };
        let mut candidates = Candidates {
            states: &self.states,
            weights: &self.weights,
            eligible: &ramped,
            now_ms: now,
        };
        if let Some(i) = self.balancer.pick(features, &candidates) {
            return Some(i);
        }
        candidates.eligible = &usable;
        self.balancer.pick(features, &candidates)
    }

    /// Whether some usable server is left for which `allowed` holds, without advancing the
    /// balancer.
    pub fn has_candidate(&self, allowed: &dyn Fn(usize) -> bool) -> bool {
        let now = crate::upstream::now_ms();
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| allowed(i) && s.state.is_usable(now))
    }

    /// Requests in flight to the pool's servers.
    pub fn inflight(&self) -> u64 {
        self.states.iter().map(|s| s.inflight()).sum()
    }

    /// Takes a slot of the retry budget, or `None` when the budget is spent.
    pub fn take_retry(&self) -> Option<RetryToken> {
        let limit = (self.retry_budget.ratio * self.inflight() as f64) as u64;
        let limit = limit.max(self.retry_budget.min);
        let taken = self.retries_inflight.fetch_add(1, Ordering::Relaxed);
        if taken >= limit {
            self.retries_inflight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryToken(self.retries_inflight.clone()))
    }
}

/// A slot of a pool's retry budget, given back on drop (when the request ends).
#[must_use]
#[derive(Debug)]
pub struct RetryToken(Arc<AtomicU64>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A public model.
pub struct Model {
    pub name: String,
    /// Index into `Runtime::pools`.
    pub pool: usize,
    /// Indices into `Runtime::pools`, tried in order when `pool` has no server left.
    pub fallback: Box<[usize]>,
    pub first_token_timeout: Duration,
    pub metrics: ModelMetrics,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
    pub bytes_per_token: f64,
}

/// Everything a request needs, immutable once built.
pub struct Runtime {
    pub config: Config,
    pub routes: RouteTable,
    pub models: Box<[Model]>,
    pub pools: Box<[Pool]>,
    /// Prebuilt `GET /v1/models` response body (of an open gateway; tenants have their own).
    pub models_body: Bytes,
    pub tenants: Tenants,
}

impl Runtime {
    /// Builds a runtime. Fails when a server's host name does not resolve.
    pub fn build(
        config: Config,
        registry: &Registry,
        store: &LocalStore,
        metrics: &Metrics,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let mut servers = Vec::with_capacity(p.servers.len());
            for (i, s) in p.servers.iter().enumerate() {
                let path = || format!("pools.{}.servers[{i}].url", p.name);
                let Ok(host) = http::HeaderValue::try_from(s.id.as_str()) else {
                    errors.push(ConfigError {
                        path: path(),
                        message: format!("{:?} is not a valid Host header", s.id),
                    });
                    continue;
                };
                match resolve(&s.host, s.port) {
                    Some(addr) => {
                        let state = registry.get(&s.id);
                        state.set_breaker_settings(&p.breaker);
                        servers.push(Server {
                            id: s.id.clone(),
                            host,
                            peer: peer(addr, &config),
                            state,
                        })
                    }
                    None => errors.push(ConfigError {
                        path: path(),
                        message: format!("cannot resolve host {:?}", s.host),
                    }),
                }
            }
            let weights: Vec<u32> = p.servers.iter().map(|s| s.weight.get()).collect();
            pools.push(Pool {
                name: p.name.clone(),
                served_model_json: json_string(&p.served_model),
                states: servers.iter().map(|s| s.state.clone()).collect(),
                servers: servers.into_boxed_slice(),
                balancer: p.balance.build(&weights, &p.policy),
                weights: weights.into_boxed_slice(),
                policy: p.balance,
                slow_start: p.slow_start,
                retry_budget: p.retry_budget,
                retries_inflight: Arc::new(AtomicU64::new(0)),
                cost: p.cost,
                upstream_auth: p.api_key.as_ref().and_then(|k| {
                    let mut v = http::HeaderValue::try_from(format!("Bearer {k}")).ok()?;
                    v.set_sensitive(true);
                    Some(v)
                }),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let models = config
            .models
            .iter()
            .map(|m| Model {
                name: m.name.clone(),
                pool: m.pool,
                fallback: m.fallback.clone().into_boxed_slice(),
                first_token_timeout: m.first_token_timeout,
                metrics: metrics.model(&m.name, &config.pools[m.pool].name),
                default_max_tokens: m.default_max_tokens,
                bytes_per_token: m.bytes_per_token,
            })
            .collect();
        Ok(Self {
            routes: RouteTable::new(&config.models),
            models_body: models_body(&config, None),
            tenants: Tenants::build(&config, store, metrics, |allowed| {
                models_body(&config, allowed)
            }),
            models,
            pools: pools.into_boxed_slice(),
            config,
        })
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

fn peer(addr: SocketAddr, config: &Config) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    let t = &config.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.upstream_idle);
    peer.options.write_timeout = Some(t.upstream_idle);
    // Idle pooled connections are closed before typical upstream keep-alive limits (vLLM's
    // uvicorn: 5 s) would close them under us.
    peer.options.idle_timeout = Some(Duration::from_secs(4));
    peer
}

fn json_string(s: &str) -> Bytes {
    serde_json::to_vec(s).map_or_else(|_| Bytes::new(), Bytes::from)
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// OpenAI's `GET /v1/models` list: every public name and every alias, each usable as `model`;
/// only the `allowed` models' (indices) when given.
fn models_body(config: &Config, allowed: Option<&[usize]>) -> Bytes {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let data = config
        .models
        .iter()
        .enumerate()
        .filter(|(i, _)| allowed.is_none_or(|a| a.contains(i)))
        .flat_map(|(_, m)| std::iter::once(&m.name).chain(&m.aliases))
        .map(|id| ModelEntry {
            id,
            object: "model",
            created,
            owned_by: "switchyard",
        })
        .collect();
    let list = ModelList {
        object: "list",
        data,
    };
    serde_json::to_vec(&list).map_or_else(|_| Bytes::new(), Bytes::from)
}

/// What the proxy and the admin listener share: the current runtime and what outlives it.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Limiter state (rate buckets, concurrency, spend); outlives runtimes.
    pub store: LocalStore,
    /// Per client IP counters.
    pub per_ip: PerIp,
    /// Access log lines not written out yet.
    pub access_log: crate::proxy::AccessLogBuffer,
    /// Streams' upstream connections kept for reuse (proxy/hold/).
    pub held: Arc<crate::proxy::HeldPool>,
    /// The file reloads read; `None` for a config that did not come from a file (the demo).
    config_path: Option<PathBuf>,
    /// Serialises reloads so that two of them cannot interleave read, build and swap.
    reloading: Mutex<()>,
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway was not started from a config file")]
    NoFile,
    #[error("{0}")]
    Load(#[from] LoadError),
}

impl ReloadError {
    /// Every problem, with its YAML path where there is one.
    pub fn errors(&self) -> Vec<ConfigError> {
        match self {
            Self::NoFile => vec![ConfigError {
                path: String::new(),
                message: self.to_string(),
            }],
            Self::Load(e) => e.errors(),
        }
    }
}

impl Gateway {
    /// Builds the first runtime; `config_path` is where reloads read from.
    pub fn new(
        config: Config,
        metrics: Metrics,
        config_path: Option<PathBuf>,
    ) -> Result<Self, Vec<ConfigError>> {
        let registry = Registry::default();
        let store = LocalStore::default();
        let runtime = Runtime::build(config, &registry, &store, &metrics)?;
        metrics.config_load(true);
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            store,
            per_ip: PerIp::default(),
            access_log: Default::default(),
            held: Default::default(),
            metrics,
            lifecycle: Default::default(),
            config_path,
            reloading: Mutex::new(()),
        })
    }

    /// Reads, validates and builds the config file, then swaps it in atomically: requests in
    /// flight keep the runtime they started with, new ones see the new one, none sees a mix.
    /// Per-server state survives for servers that stay. A bad file changes nothing.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.build_from_file();
        self.metrics.config_load(result.is_ok());
        match result {
            Ok(runtime) => {
                let old = self.runtime.load();
                for (what, before, after) in [
                    ("listen", old.config.listen, runtime.config.listen),
                    ("admin", old.config.admin, runtime.config.admin),
                ] {
                    if before != after {
                        tracing::warn!(
                            "{what} changed from {before} to {after}: listener addresses change only on restart"
                        );
                    }
                }
                self.runtime.store(Arc::new(runtime));
                drop(old);
                self.store.prune();
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(e) => {
                for err in e.errors() {
                    tracing::error!("config reload refused: {err}");
                }
                Err(e)
            }
        }
    }

    fn build_from_file(&self) -> Result<Runtime, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let config = crate::config::load(path)?;
        Runtime::build(config, &self.registry, &self.store, &self.metrics)
            .map_err(|errs| ReloadError::Load(LoadError::Invalid(errs)))
    }

    /// The current snapshot; load once per request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Whether every pool has at least one server not known to be down, and the gateway is
    /// not shutting down.
    pub fn is_ready(&self) -> bool {
        let now = crate::upstream::now_ms();
        !self.lifecycle.is_draining()
            && self
                .runtime
                .load()
                .pools
                .iter()
                .all(|p| p.servers.iter().any(|s| s.state.is_usable(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(extra: &str) -> Runtime {
        let yaml = format!(
            "pools:\n  p:\n    model: x\n{extra}    servers:\n      - url: http://127.0.0.1:9\n      - url: http://127.0.0.1:10\nmodels:\n  m:\n    pool: p\n"
        );
        let config = crate::config::parse(&yaml).unwrap();
        Runtime::build(
            config,
            &Registry::default(),
            &LocalStore::default(),
            &Metrics::new().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_retry_budget_is_a_share_of_in_flight_with_a_floor() {
        let rt = runtime("");
        let pool = &rt.pools[0];
        // Idle pool: the floor of 3.
        let tokens: Vec<_> = (0..3).map(|_| pool.take_retry().unwrap()).collect();
        assert!(pool.take_retry().is_none());
        drop(tokens);
        // 40 in flight: 20 % is 8.
        let _held: Vec<_> = (0..40)
            .map(|i| pool.servers[i % 2].state.start(0))
            .collect();
        let tokens: Vec<_> = (0..8).map(|_| pool.take_retry().unwrap()).collect();
        assert!(pool.take_retry().is_none());
        drop(tokens);
        assert!(
            pool.take_retry().is_some(),
            "slots come back when requests end"
        );
    }

    #[test]
    fn the_budget_follows_config() {
        let rt = runtime("    retry_budget:\n      ratio: 0.5\n      min: 1\n");
        let pool = &rt.pools[0];
        let _t = pool.take_retry().unwrap();
        assert!(pool.take_retry().is_none());
    }

    #[test]
    fn a_ramping_server_is_still_picked_when_it_is_the_only_one() {
        let rt = runtime("    balance: weighted_round_robin\n    slow_start: 1h\n");
        let pool = &rt.pools[0];
        let s = &pool.servers[0].state;
        s.set_health(crate::upstream::health::Health::Unhealthy, 1);
        s.set_health(
            crate::upstream::health::Health::Healthy,
            crate::upstream::now_ms(),
        );
        let f = Features::default();
        // Ramping at 10 %: of 1 000 picks between both servers it gets few…
        let n = (0..1_000)
            .filter(|_| pool.pick(&f, &|_| true) == Some(0))
            .count();
        assert!((20..=250).contains(&n), "{n}");
        // …but alone it gets every request.
        assert!((0..100).all(|_| pool.pick(&f, &|i| i == 0) == Some(0)));
    }
}
