//! A pool of interchangeable servers as the request path uses it: its servers with their
//! prebuilt peers, its balancer, and its retry budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::balance::{Balance, Candidates, Features, Policy};
use crate::config::RetryBudget;
use crate::routing::Cost;
use crate::upstream::ServerState;

/// One upstream server, ready to use.
pub struct Server {
    /// `host:port`
    pub id: String,
    /// `id` as the `Host` header of requests to it.
    pub host: http::HeaderValue,
    /// Prebuilt peer (address, timeouts); cloned into a `Box` per attempt.
    pub peer: HttpPeer,
    pub state: Arc<ServerState>,
    /// `https://`: the name its certificate must carry (and the SNI).
    pub tls_name: Option<crate::tls::Name>,
}

/// A pool of interchangeable servers serving one model.
pub struct Pool {
    pub name: String,
    /// An engine reading older than this is ignored (three scrape intervals).
    pub load_max_age_ms: u64,
    /// The served model name as a JSON string literal, spliced into forwarded bodies.
    pub served_model_json: bytes::Bytes,
    pub servers: Box<[Server]>,
    /// The servers' states and weights in server order, as the policy sees them.
    pub(super) states: Box<[Arc<ServerState>]>,
    pub(super) weights: Box<[u32]>,
    pub balancer: Box<dyn Balance>,
    pub policy: Policy,
    pub slow_start: Duration,
    /// Panic mode (`panic_mode`): its counter; `None`: off.
    pub panic: Option<prometheus::IntCounter>,
    pub retry_budget: RetryBudget,
    /// Retries of requests a server received, in flight now (see `RetryBudget`).
    pub retries_inflight: Arc<AtomicU64>,
    pub cost: Cost,
    /// `Bearer <key>` for the upstream, when the pool has a key.
    pub upstream_auth: Option<http::HeaderValue>,
    /// The client side of TLS, when the pool has `https://` servers.
    pub tls: Option<Arc<crate::tls::ClientConfig>>,
}

impl Pool {
    /// Picks a usable server for which `allowed` holds (e.g. not tried yet by this request).
    /// A server in its slow start takes a request with the probability of its ramp; when
    /// that leaves none, ramping servers are taken anyway rather than failing the request.
    /// When health checks alone have marked every server down (panic mode, `panic_mode`),
    /// those servers are tried anyway, and counted.
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
        if let Some(i) = self.balancer.pick(features, &candidates) {
            return Some(i);
        }
        // Panic: every server is down by health checks alone; they are tried anyway.
        let panic = self.panic.as_ref().filter(|_| self.in_panic(now))?;
        let taken = |i: usize| allowed(i) && self.servers[i].state.is_usable_ignoring_health(now);
        candidates.eligible = &taken;
        let picked = self.balancer.pick(features, &candidates);
        if picked.is_some() {
            panic.inc();
        }
        picked
    }

    /// Whether the pool is in panic mode: no server usable, and some only because health
    /// checks marked them down.
    pub fn in_panic(&self, now: u64) -> bool {
        self.panic.is_some()
            && !self.servers.iter().any(|s| s.state.is_usable(now))
            && self
                .servers
                .iter()
                .any(|s| s.state.is_usable_ignoring_health(now))
    }

    /// Whether some usable server (in panic mode: one down by health checks alone) is left
    /// for which `allowed` holds, without advancing the balancer.
    pub fn has_candidate(&self, allowed: &dyn Fn(usize) -> bool) -> bool {
        let now = crate::upstream::now_ms();
        let any = |f: &dyn Fn(&ServerState) -> bool| {
            (self.servers.iter().enumerate()).any(|(i, s)| allowed(i) && f(&s.state))
        };
        any(&|s| s.is_usable(now))
            || self.in_panic(now) && any(&|s| s.is_usable_ignoring_health(now))
    }

    /// The router's prediction of the time to first token here, ms: the best of the usable
    /// servers' predictions (`None`: none measured yet).
    pub fn predicted_ttft_ms(&self) -> Option<f64> {
        let now = crate::upstream::now_ms();
        self.servers
            .iter()
            .filter(|s| s.state.is_usable(now))
            .filter_map(|s| s.state.predicted_ttft_ms(now, self.load_max_age_ms))
            .min_by(f64::total_cmp)
    }

    /// The best decode rate of the usable servers, tokens/s (`None`: none measured yet).
    pub fn decode_rate(&self) -> Option<f64> {
        let now = crate::upstream::now_ms();
        self.servers
            .iter()
            .filter(|s| s.state.is_usable(now))
            .filter_map(|s| s.state.decode_rate())
            .max_by(f64::total_cmp)
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
