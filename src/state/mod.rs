//! The runtime: an immutable snapshot built from a [`Config`], swapped whole on reload.
//!
//! Building is fallible and does all the work (name resolution, peers, balancer tables,
//! metric handles, the `/v1/models` body); the request path then only indexes into it.
//! Per-server state comes from the [`Registry`], so it survives a rebuild.

pub mod discovery;
mod pool;
pub mod readiness;
mod shared;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use serde::Serialize;

pub use pool::{Pool, RetryToken, Server};
pub use shared::{ReloadError, Shared};

use crate::balance::{Policy, PrefixIndexes};
use crate::config::{Config, ConfigError};
use crate::limits::store::LocalStore;
use crate::limits::Tenants;
use crate::metrics::{Metrics, ModelMetrics};
use crate::routing::spec::Serve;
use crate::routing::{Cost, ModelDef, PoolDef, Router};
use crate::upstream::Registry;

/// A public model.
pub struct Model {
    pub name: String,
    /// The name as the `x-switchyard-model` header of the answers it gives.
    pub header: Option<http::HeaderValue>,
    /// The name as a JSON string literal (`server.response_model: public`).
    pub name_json: Bytes,
    pub first_token_timeout: Duration,
    /// Request metrics of the model as it answers from its pools (a virtual model never
    /// answers itself: `None`).
    pub metrics: Option<ModelMetrics>,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
    pub bytes_per_token: f64,
    /// Dollars spent on requests that named this model (virtual or not).
    pub cost: prometheus::Counter,
    /// A virtual model's baseline: what the same tokens would have cost at its prices.
    pub baseline: Option<(prometheus::Counter, Cost)>,
    /// Mirrors of this model's requests in flight (its `shadow`).
    pub shadows_inflight: Arc<AtomicU64>,
}

/// Everything a request needs, immutable once built.
pub struct Runtime {
    pub config: Config,
    pub router: Router,
    /// Per decision of the router (same index): its counter, for virtual models' decisions.
    pub decisions: Box<[Option<prometheus::IntCounter>]>,
    pub models: Box<[Model]>,
    pub pools: Box<[Pool]>,
    /// Prebuilt `GET /v1/models` response body (of an open gateway; tenants have their own).
    pub models_body: Bytes,
    pub tenants: Tenants,
    /// The public listener's certificate (`server.tls`).
    pub tls_cert: Option<Arc<crate::tls::CertifiedKey>>,
}

impl Runtime {
    /// Builds a runtime. Fails when a server's host name does not resolve.
    pub fn build(
        config: Config,
        registry: &Registry,
        store: &LocalStore,
        metrics: &Metrics,
        indexes: &PrefixIndexes,
        memory: &crate::routing::classify::Memory,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let tls_cert = match &config.server.tls {
            None => None,
            Some(files) => match crate::tls::load_certified_key(&files.cert, &files.key) {
                Ok(key) => Some(key),
                Err(message) => {
                    errors.push(ConfigError {
                        path: "server.tls".to_owned(),
                        message,
                    });
                    None
                }
            },
        };
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let upstream_tls = if p.servers.iter().any(|s| s.tls) {
                match crate::tls::UpstreamTls::build(p.ca_file.as_deref()) {
                    Ok(tls) => Some(tls),
                    Err(message) => {
                        errors.push(ConfigError {
                            path: format!("pools.{}.tls.ca_file", p.name),
                            message,
                        });
                        None
                    }
                }
            } else {
                None
            };
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
                        let tls_name = s.tls.then(|| crate::tls::server_name(&s.host)).flatten();
                        if s.tls && tls_name.is_none() {
                            errors.push(ConfigError {
                                path: path(),
                                message: format!("{:?} is not a name TLS can check", s.host),
                            });
                        }
                        let mut peer = peer(addr, &config);
                        if s.tls {
                            peer = crate::tls::peer(peer, &s.host, upstream_tls.as_ref());
                        }
                        servers.push(Server {
                            id: s.id.clone(),
                            host,
                            peer,
                            state,
                            tls_name,
                        })
                    }
                    None => errors.push(cannot_resolve(&p.name, i, &s.host)),
                }
            }
            let weights: Vec<u32> = p.servers.iter().map(|s| s.weight.get()).collect();
            // The pool's prefix index outlives the runtime; servers keep their slots in it.
            let prefix = (p.balance == Policy::PrefixAware)
                .then(|| {
                    let index = indexes.get(&p.name);
                    let ids: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
                    let slots = index.attach(&ids, p.policy.prefix.blocks_per_server)?;
                    Some((index, slots))
                })
                .flatten();
            pools.push(Pool {
                name: p.name.clone(),
                load_max_age_ms: p.policy.load_max_age_ms,
                served_model_json: json_string(&p.served_model),
                states: servers.iter().map(|s| s.state.clone()).collect(),
                servers: servers.into_boxed_slice(),
                balancer: p.balance.build(&weights, &p.policy, prefix),
                weights: weights.into_boxed_slice(),
                policy: p.balance,
                slow_start: p.slow_start,
                panic: p.panic_mode.then(|| metrics.pool_panic(&p.name)),
                retry_budget: p.retry_budget,
                retries_inflight: Arc::new(AtomicU64::new(0)),
                cost: p.cost,
                tls: upstream_tls.map(|t| t.client),
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
        let router = router(&config, memory.clone()).map_err(|e| {
            vec![ConfigError {
                path: format!("models.{}.route[{}].when", e.model, e.rule),
                message: e.message,
            }]
        })?;
        let models = config
            .models
            .iter()
            .map(|m| Model {
                name: m.name.clone(),
                header: http::HeaderValue::from_str(&m.name).ok(),
                name_json: json_string(&m.name),
                first_token_timeout: m.first_token_timeout,
                metrics: m
                    .serve
                    .pool()
                    .map(|p| metrics.model(&m.name, &config.pools[p].name)),
                default_max_tokens: m.default_max_tokens,
                bytes_per_token: m.bytes_per_token,
                cost: metrics.cost(&m.name),
                baseline: match &m.serve {
                    Serve::Route(rules) => rules.baseline.and_then(|b| {
                        let pool = config.models.get(b)?.serve.pool()?;
                        Some((metrics.cost_baseline(&m.name), config.pools.get(pool)?.cost))
                    }),
                    Serve::Pools { .. } => None,
                },
                shadows_inflight: Arc::default(),
            })
            .collect();
        let decisions = router
            .decisions()
            .iter()
            .map(|d| {
                (d.rule > 0).then(|| {
                    metrics.decision(
                        &config.models[d.model].name,
                        &d.rule.to_string(),
                        &config.models[d.target].name,
                    )
                })
            })
            .collect();
        Ok(Self {
            router,
            decisions,
            models_body: models_body(&config, None),
            tenants: Tenants::build(&config, store, metrics, |allowed| {
                models_body(&config, allowed)
            }),
            models,
            pools: pools.into_boxed_slice(),
            tls_cert,
            config,
        })
    }
}

/// The router of a config: names, and every virtual model's rules compiled. Opens no socket
/// (`switchyard route` builds it alone).
pub fn router(
    config: &Config,
    memory: crate::routing::classify::Memory,
) -> Result<Router, crate::routing::BuildError> {
    let models: Vec<ModelDef<'_>> = config
        .models
        .iter()
        .map(|m| ModelDef {
            name: &m.name,
            aliases: &m.aliases,
            serve: &m.serve,
            bytes_per_token: m.bytes_per_token,
            default_max_tokens: m.default_max_tokens,
            shadow: m.shadow.as_ref(),
        })
        .collect();
    let pools: Vec<PoolDef<'_>> = config
        .pools
        .iter()
        .map(|p| PoolDef {
            name: &p.name,
            context_window: p.context_window,
            cost: p.cost,
        })
        .collect();
    let model_name = |m: usize| {
        config
            .models
            .get(m)
            .map_or(String::new(), |m| m.name.clone())
    };
    let classifiers =
        crate::routing::classify::Classifiers::build(&config.classifiers, memory, &model_name);
    Router::build(&models, &pools, classifiers)
}

impl crate::routing::Live for Runtime {
    fn usable(&self, pool: usize) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|p| p.has_candidate(&|_| true))
    }

    fn ttft_ms(&self, pool: usize) -> Option<f64> {
        self.pools.get(pool)?.predicted_ttft_ms()
    }

    fn tokens_per_s(&self, pool: usize) -> Option<f64> {
        self.pools.get(pool)?.decode_rate()
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

fn cannot_resolve(pool: &str, i: usize, host: &str) -> ConfigError {
    ConfigError {
        path: format!("pools.{pool}.servers[{i}].url"),
        message: format!("cannot resolve host {host:?}"),
    }
}

/// The servers of `config` whose host does not resolve: what `run` would refuse, for `check`.
pub fn unresolved(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for p in &config.pools {
        for (i, s) in p.servers.iter().enumerate() {
            if resolve(&s.host, s.port).is_none() {
                errors.push(cannot_resolve(&p.name, i, &s.host));
            }
        }
    }
    errors
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Features;

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
            &PrefixIndexes::default(),
            &Default::default(),
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
