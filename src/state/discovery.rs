//! `servers: [{dns: "host:port", every: 5s}]`: a pool's servers from DNS. Every address the
//! name resolves to (A and AAAA) is a server; the name is resolved again every `every` and
//! when its records' TTL runs out. A change rebuilds the runtime as a reload does: requests
//! in flight keep the servers they started with (a server that disappeared is drained),
//! new requests see the new set, and a server that appeared ramps up over the pool's
//! `slow_start`. A failed lookup changes nothing (the servers stay until the name answers
//! without them); a name that has no records any more empties its part of the pool.
//!
//! Why not pingora-load-balancing's `ServiceDiscovery` and `Backends`: they keep their own
//! backend set, health and selection, beside the per-server state (breakers, engine load,
//! prefix indices, slow start) and the balancing policies the gateway already has; all that
//! is wanted from them is "resolve a name now and then", which hickory does, with the TTL
//! their DNS discovery does not read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::Shared;
use crate::config::{Config, ServerSpec};
use crate::lock;

/// How often a gateway whose config has no `dns` entry looks whether a reload added one.
const IDLE: Duration = Duration::from_secs(5);
/// Shortest wait between two lookups of one name (a TTL of 0 does not mean "spin").
const MIN_WAIT: Duration = Duration::from_millis(500);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// (pool, `host:port`) → the addresses of its last answer.
type Found = HashMap<(String, String), Vec<IpAddr>>;

/// What discovery has found; outlives runtimes.
#[derive(Default)]
pub struct Discovered {
    found: Mutex<Found>,
}

impl Discovered {
    /// Puts the discovered servers into `config`'s pools (in place of an earlier expansion's).
    pub fn expand(&self, config: &mut Config) {
        let found = lock(&self.found);
        for pool in &mut config.pools {
            pool.servers.retain(|s| s.discovered.is_none());
            for (i, source) in pool.discover.iter().enumerate() {
                let Some(addrs) = found.get(&(pool.name.clone(), source.name())) else {
                    continue;
                };
                for ip in addrs {
                    let id = SocketAddr::new(*ip, source.port).to_string();
                    if pool.servers.iter().any(|s| s.id == id) {
                        continue;
                    }
                    pool.servers.push(ServerSpec {
                        id,
                        host: ip.to_string(),
                        port: source.port,
                        weight: source.weight,
                        tls: false,
                        discovered: Some(i),
                    });
                }
            }
        }
    }

    /// Records an answer; whether it changed anything.
    fn set(&self, key: (String, String), mut addrs: Vec<IpAddr>) -> bool {
        addrs.sort_unstable();
        addrs.dedup();
        let mut found = lock(&self.found);
        if found.get(&key) == Some(&addrs) {
            return false;
        }
        found.insert(key, addrs);
        true
    }
}

fn resolver(at: Option<SocketAddr>) -> Option<TokioResolver> {
    let mut builder = match at {
        Some(addr) => TokioResolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
        None => match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("DNS discovery: the system's resolver configuration: {e}");
                return None;
            }
        },
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Every lookup asks the server: the TTL is honoured by when the next one happens.
    opts.cache_size = 0;
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = 1;
    Some(builder.build())
}

/// Resolves the pools' `dns` entries when they are due and rebuilds the runtime when an
/// answer changed.
pub struct Discover(pub Arc<Shared>);

impl Discover {
    /// One round: looks up the names that are due; returns when the next one is.
    async fn round(
        &self,
        resolver: &TokioResolver,
        due: &mut HashMap<(String, String), Instant>,
        first: &mut HashMap<(String, String), bool>,
    ) -> Instant {
        let runtime = self.0.runtime();
        let now = Instant::now();
        let mut next = now + IDLE;
        let mut appeared = Vec::new();
        let mut changed = false;
        for pool in &runtime.config.pools {
            for source in &pool.discover {
                let key = (pool.name.clone(), source.name());
                let when = due.get(&key).copied().unwrap_or(now);
                if when > now {
                    next = next.min(when);
                    continue;
                }
                let (addrs, wait) = match resolver.lookup_ip(source.host.as_str()).await {
                    Ok(answer) => {
                        let ttl = answer
                            .valid_until()
                            .saturating_duration_since(Instant::now());
                        (
                            Some(answer.iter().collect::<Vec<_>>()),
                            ttl.min(source.every),
                        )
                    }
                    Err(e) if e.is_no_records_found() => (Some(Vec::new()), source.every),
                    Err(e) => {
                        tracing::warn!(
                            "pool {}: {} did not resolve ({e}); its servers stay as they were",
                            pool.name,
                            source.name()
                        );
                        (None, source.every)
                    }
                };
                let when = now + wait.max(MIN_WAIT);
                due.insert(key.clone(), when);
                next = next.min(when);
                let Some(addrs) = addrs else { continue };
                let before: Vec<String> = pool
                    .servers
                    .iter()
                    .filter(|s| s.discovered.is_some())
                    .map(|s| s.id.clone())
                    .collect();
                if self.0.discovered.set(key.clone(), addrs.clone()) {
                    changed = true;
                    tracing::info!(
                        "pool {}: {} resolves to {addrs:?}",
                        pool.name,
                        source.name()
                    );
                    // The first answer fills the pool; later newcomers ramp up.
                    if !first.insert(key, true).unwrap_or(false) {
                        continue;
                    }
                    for ip in addrs {
                        let id = SocketAddr::new(ip, source.port).to_string();
                        if !before.contains(&id) {
                            appeared.push(id);
                        }
                    }
                } else {
                    first.insert(key, true);
                }
            }
        }
        if changed {
            if let Err(errs) = self.0.rediscover(&appeared) {
                for e in errs {
                    tracing::error!("DNS discovery: the new servers were not taken: {e}");
                }
            }
        }
        next
    }
}

#[async_trait]
impl BackgroundService for Discover {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut current: Option<(Option<SocketAddr>, TokioResolver)> = None;
        let mut due = HashMap::new();
        let mut first = HashMap::new();
        loop {
            let at = self.0.runtime().config.server.resolver;
            if current.as_ref().is_none_or(|(a, _)| *a != at) {
                current = resolver(at).map(|r| (at, r));
            }
            let next = match &current {
                Some((_, r)) => self.round(r, &mut due, &mut first).await,
                None => Instant::now() + IDLE,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
