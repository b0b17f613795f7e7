//! Every metric the gateway exports: names, help, labels, buckets in one place.
//!
//! Label values are bounded: model and pool names come from config, status codes from a fixed
//! list (anything else is `other`). Per-request code touches only handles resolved when a
//! runtime is built ([`ModelMetrics`]), never a label lookup.

use prometheus::{Counter, CounterVec, GaugeVec, IntGauge, IntGaugeVec, Registry, TextEncoder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

/// Status codes that get their own label value; others count as `other`.
const STATUSES: [u16; 14] = [
    200, 400, 401, 404, 405, 408, 411, 413, 429, 499, 500, 502, 503, 504,
];

/// Gateway overhead buckets in seconds: 10 µs … 50 ms.
const OVERHEAD_BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

/// Latency buckets in seconds: 1 ms … 120 s, dense where inference latencies sit.
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
    120.0,
];

mod cache;
mod classify;
mod fleet;

pub use cache::CacheMetrics;
pub use classify::ClassifyMetrics;
pub use fleet::FleetMetrics;

/// The gateway's registry and metric families.
pub struct Metrics {
    registry: Registry,
    /// Classifiers' decisions, latency, cache and fallbacks.
    pub classify: ClassifyMetrics,
    /// The shared store (`shared:`).
    pub fleet: FleetMetrics,
    /// The response cache (`models.X.cache`).
    pub cache: CacheMetrics,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    overhead: HistogramVec,
    itl: HistogramVec,
    tokens: IntCounterVec,
    /// Requests refused before routing (unknown path, bad body, unknown model).
    rejected: IntCounterVec,
    /// Config loads by result (`ok`, `error`), the initial load included.
    config_loads: IntCounterVec,
    pub build_info: IntGauge,
    /// Per-server gauges, set from live server state at every scrape.
    pub upstream_inflight: IntGaugeVec,
    pub upstream_usable: IntGaugeVec,
    pub upstream_draining: IntGaugeVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_breaker: IntGaugeVec,
    pub upstream_engine_load: GaugeVec,
    pub upstream_kv_usage: GaugeVec,
    pub upstream_ewma: GaugeVec,
    /// Retries by pool, reason and outcome (`ok`: the request then succeeded).
    retries: IntCounterVec,
    /// Upstream errors by pool and kind.
    upstream_errors: IntCounterVec,
    pool_panics: IntCounterVec,
    /// Streams the gateway ended early, by model and reason.
    streams_aborted: IntCounterVec,
    /// Tokens by tenant, model, kind and source (usage: the server's count; estimated).
    tenant_tokens: IntCounterVec,
    /// Dollars spent by tenant.
    tenant_spend: CounterVec,
    /// Requests refused by tenant and reason.
    tenant_rejections: IntCounterVec,
    /// Virtual models' decisions by model, rule and target.
    route_decisions: IntCounterVec,
    /// Dollars by requested model, and what a virtual model's baseline would have cost.
    cost: CounterVec,
    cost_baseline: CounterVec,
    /// Mirrored requests by model, target and outcome.
    shadow: IntCounterVec,
}

/// Handles of one tenant, resolved at build time (tenant and model names come from config).
pub struct TenantMetrics {
    name: String,
    /// Per model index: prompt (usage, estimated), completion (usage, estimated).
    tokens: Box<[[IntCounter; 4]]>,
    pub spend: Counter,
    rejections: IntCounterVec,
}

impl TenantMetrics {
    /// Counts tokens of a finished request; `exact`: the server reported them.
    pub fn tokens(&self, model: usize, prompt: u64, completion: u64, exact: bool) {
        if let Some(c) = self.tokens.get(model) {
            let i = usize::from(!exact);
            c[i].inc_by(prompt);
            c[2 + i].inc_by(completion);
        }
    }

    /// Counts a refused request; `reason` is a fixed label.
    pub fn reject(&self, reason: &'static str) {
        self.rejections
            .with_label_values(&[&self.name, reason])
            .inc();
    }
}

/// Handles for one (model, pool) pair, resolved at build time.
pub struct ModelMetrics {
    /// One counter per entry of `STATUSES`, then `other`.
    by_status: Box<[IntCounter]>,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub overhead: Histogram,
    /// Gap between consecutive SSE events relayed to the client.
    pub itl: Histogram,
    /// Tokens the server reported in `usage`.
    pub prompt_tokens: IntCounter,
    pub completion_tokens: IntCounter,
}

impl ModelMetrics {
    /// Counts one finished request with this HTTP status.
    pub fn count(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        if let Some(c) = self.by_status.get(i) {
            c.inc();
        }
    }
}

/// A histogram family labelled by public model and pool.
fn model_histogram(
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets),
        &["model", "pool"],
    )
}

impl Metrics {
    /// Creates and registers every family. Registration only fails on duplicate names, which
    /// this constructor rules out; such an error is returned rather than hidden.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests routed to a model, by public model, pool and HTTP status.",
            ),
            &["model", "pool", "status"],
        )?;
        let duration = model_histogram(
            "switchyard_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            LATENCY_BUCKETS.to_vec(),
        )?;
        let ttft = model_histogram(
            "switchyard_time_to_first_token_seconds",
            "Streamed responses only: time from the request's arrival to the first response body byte (the first event) from the upstream.",
            LATENCY_BUCKETS.to_vec(),
        )?;
        let overhead = model_histogram(
            "switchyard_gateway_overhead_seconds",
            "Time spent in the gateway itself per request: arrival until the request was ready for the upstream, plus upstream response header until the client's header was ready. Also sent as x-switchyard-overhead-us.",
            OVERHEAD_BUCKETS.to_vec(),
        )?;
        let itl = model_histogram(
            "switchyard_inter_token_latency_seconds",
            "Gap between consecutive server-sent events relayed to the client (events that arrive together count as 0).",
            vec![0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "switchyard_tokens_total",
                "Tokens by model, pool and kind (prompt, completion), as the server reported them in usage.",
            ),
            &["model", "pool", "kind"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "switchyard_rejected_requests_total",
                "Requests answered by the gateway before routing, by reason (error code).",
            ),
            &["reason"],
        )?;
        let config_loads = IntCounterVec::new(
            Opts::new(
                "switchyard_config_loads_total",
                "Configuration loads (start-up and reloads) by result: ok (applied) or error (refused, the old config kept serving).",
            ),
            &["result"],
        )?;
        let build_info = IntGauge::with_opts(
            Opts::new("switchyard_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        let server_gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["pool", "server"]);
        let upstream_inflight = server_gauge(
            "switchyard_upstream_inflight",
            "Requests in flight to a server.",
        )?;
        let upstream_usable = server_gauge(
            "switchyard_upstream_usable",
            "1 when a server takes new requests (not drained, not in a Retry-After cooldown).",
        )?;
        let upstream_draining = server_gauge(
            "switchyard_upstream_draining",
            "1 when an operator drained the server.",
        )?;
        let upstream_healthy = server_gauge(
            "switchyard_upstream_healthy",
            "Active health of a server: 1 healthy or not probed yet, 0 down.",
        )?;
        let upstream_breaker = server_gauge(
            "switchyard_upstream_breaker_state",
            "Circuit breaker of a server: 0 closed, 1 open, 2 half-open.",
        )?;
        let float_gauge =
            |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["pool", "server"]);
        let upstream_engine_load = float_gauge(
            "switchyard_upstream_engine_load",
            "Requests running plus waiting as the engine's own /metrics last reported them (absent without a fresh reading).",
        )?;
        let upstream_kv_usage = float_gauge(
            "switchyard_upstream_kv_cache_usage",
            "KV cache usage (0..1) as the engine last reported it (absent for engines that do not report it, such as llama.cpp and TGI).",
        )?;
        let upstream_ewma = float_gauge(
            "switchyard_upstream_ttfb_ewma_seconds",
            "Peak-EWMA of a server's time to first byte, as p2c_ewma sees it.",
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "switchyard_retries_total",
                "Attempts retried on another server before the first byte, by pool, reason (connect_refused, connect_timeout, reset, timeout, stale_connection, status_429, status_502, status_503, status_504) and outcome (ok: the request then succeeded; failed).",
            ),
            &["pool", "reason", "outcome"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_errors_total",
                "Upstream failures by pool and kind (connect_refused, connect_timeout, connect_error, reset, timeout, status_5xx).",
            ),
            &["pool", "kind"],
        )?;
        let pool_panics = IntCounterVec::new(
            Opts::new(
                "switchyard_pool_panic_total",
                "Requests sent to a pool's servers although health checks had marked every one down (pools.X.panic_mode).",
            ),
            &["pool"],
        )?;
        let streams_aborted = IntCounterVec::new(
            Opts::new(
                "switchyard_streams_aborted_total",
                "Streams that ended before the upstream finished them, by model and reason (client_disconnect, client_write_timeout, upstream_stream_interrupted, upstream_timeout, server_shutting_down).",
            ),
            &["model", "reason"],
        )?;
        let tenant_tokens = IntCounterVec::new(
            Opts::new(
                "switchyard_tenant_tokens_total",
                "Tokens by tenant, model, kind (prompt, completion) and source (usage: as the server reported them; estimated: prompt bytes and streamed events, when usage was missing).",
            ),
            &["tenant", "model", "kind", "source"],
        )?;
        let tenant_spend = CounterVec::new(
            Opts::new(
                "switchyard_tenant_spend_usd_total",
                "Dollars spent by tenant, from token counts and pools' cost.",
            ),
            &["tenant"],
        )?;
        let tenant_rejections = IntCounterVec::new(
            Opts::new(
                "switchyard_tenant_rejections_total",
                "Requests of a tenant refused by the gateway, by reason (requests_per_minute, tokens_per_minute, request_too_large, concurrent_requests, budget_exceeded, model_not_found).",
            ),
            &["tenant", "reason"],
        )?;
        let route_decisions = IntCounterVec::new(
            Opts::new(
                "switchyard_route_decisions_total",
                "Decisions of virtual models, by virtual model, rule (1-based, as in x-switchyard-route) and target model.",
            ),
            &["model", "rule", "target"],
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "switchyard_cost_usd_total",
                "Dollars the tokens of finished requests cost at the prices of the pools that served them, by the model the request named (a virtual model counts what its routed traffic cost).",
            ),
            &["model"],
        )?;
        let cost_baseline = CounterVec::new(
            Opts::new(
                "switchyard_cost_baseline_usd_total",
                "What the same tokens would have cost on a virtual model's baseline model, by virtual model; minus switchyard_cost_usd_total, the savings of routing.",
            ),
            &["model"],
        )?;
        let shadow = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_requests_total",
                "Requests mirrored to a shadow model, by model, shadow target and outcome (ok, error: failed or not 2xx, skipped: over max_inflight).",
            ),
            &["model", "target", "outcome"],
        )?;
        let classify = ClassifyMetrics::new(&registry)?;
        let fleet = FleetMetrics::new(&registry)?;
        let cache = CacheMetrics::new(&registry)?;
        for c in [&route_decisions, &shadow] {
            registry.register(Box::new(c.clone()))?;
        }
        for c in [&cost, &cost_baseline] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(tenant_spend.clone()))?;
        for c in [&tenant_tokens, &tenant_rejections] {
            registry.register(Box::new(c.clone()))?;
        }
        for c in [&retries, &upstream_errors, &pool_panics, &streams_aborted] {
            registry.register(Box::new(c.clone()))?;
        }
        for g in [&upstream_healthy, &upstream_breaker] {
            registry.register(Box::new(g.clone()))?;
        }
        for g in [&upstream_engine_load, &upstream_kv_usage, &upstream_ewma] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(itl.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(config_loads.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(upstream_inflight.clone()))?;
        registry.register(Box::new(upstream_usable.clone()))?;
        registry.register(Box::new(upstream_draining.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            ttft,
            overhead,
            itl,
            tokens,
            rejected,
            config_loads,
            build_info,
            upstream_inflight,
            upstream_usable,
            upstream_draining,
            upstream_healthy,
            upstream_breaker,
            upstream_engine_load,
            upstream_kv_usage,
            upstream_ewma,
            retries,
            upstream_errors,
            pool_panics,
            streams_aborted,
            tenant_tokens,
            tenant_spend,
            tenant_rejections,
            route_decisions,
            cost,
            cost_baseline,
            shadow,
            classify,
            fleet,
            cache,
        })
    }

    /// The counter of one decision of a virtual model.
    pub fn decision(&self, model: &str, rule: &str, target: &str) -> IntCounter {
        self.route_decisions
            .with_label_values(&[model, rule, target])
    }

    /// Dollars spent on requests naming `model`.
    pub fn cost(&self, model: &str) -> Counter {
        self.cost.with_label_values(&[model])
    }

    /// What a virtual model's traffic would have cost on its baseline.
    pub fn cost_baseline(&self, model: &str) -> Counter {
        self.cost_baseline.with_label_values(&[model])
    }

    /// Counts a mirrored request; `outcome` is ok, error or skipped.
    pub fn shadow(&self, model: &str, target: &str, outcome: &'static str) {
        self.shadow
            .with_label_values(&[model, target, outcome])
            .inc();
    }

    /// Resolves the handles of one tenant for the given models (in model index order).
    pub fn tenant<'a>(&self, name: &str, models: impl Iterator<Item = &'a str>) -> TenantMetrics {
        let tokens = models
            .map(|m| {
                let c = |kind: &str, source: &str| {
                    self.tenant_tokens
                        .with_label_values(&[name, m, kind, source])
                };
                [
                    c("prompt", "usage"),
                    c("prompt", "estimated"),
                    c("completion", "usage"),
                    c("completion", "estimated"),
                ]
            })
            .collect();
        TenantMetrics {
            name: name.to_owned(),
            tokens,
            spend: self.tenant_spend.with_label_values(&[name]),
            rejections: self.tenant_rejections.clone(),
        }
    }

    /// Resolves the handles of one model served by one pool.
    pub fn model(&self, model: &str, pool: &str) -> ModelMetrics {
        let mut by_status: Vec<IntCounter> = STATUSES
            .iter()
            .map(|s| {
                self.requests
                    .with_label_values(&[model, pool, s.to_string().as_str()])
            })
            .collect();
        by_status.push(self.requests.with_label_values(&[model, pool, "other"]));
        ModelMetrics {
            by_status: by_status.into_boxed_slice(),
            duration: self.duration.with_label_values(&[model, pool]),
            ttft: self.ttft.with_label_values(&[model, pool]),
            overhead: self.overhead.with_label_values(&[model, pool]),
            itl: self.itl.with_label_values(&[model, pool]),
            prompt_tokens: self.tokens.with_label_values(&[model, pool, "prompt"]),
            completion_tokens: self.tokens.with_label_values(&[model, pool, "completion"]),
        }
    }

    /// Counts a config load by outcome.
    pub fn config_load(&self, ok: bool) {
        self.config_loads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts a retry; `reason` is a fixed label, `ok` whether the request then succeeded.
    pub fn retry(&self, pool: &str, reason: &'static str, ok: bool) {
        self.retries
            .with_label_values(&[pool, reason, if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// Counts an upstream failure of a fixed kind.
    pub fn upstream_error(&self, pool: &str, kind: &'static str) {
        self.upstream_errors.with_label_values(&[pool, kind]).inc();
    }

    /// The counter of requests a pool sent in panic mode.
    pub fn pool_panic(&self, pool: &str) -> prometheus::IntCounter {
        self.pool_panics.with_label_values(&[pool])
    }

    /// Counts a stream the gateway ended early.
    pub fn stream_aborted(&self, model: &str, reason: &'static str) {
        self.streams_aborted
            .with_label_values(&[model, reason])
            .inc();
    }

    /// Counts a request refused before it was routed; `reason` is a fixed error code.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on invalid metric names, which are constants here.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_outside_the_list_count_as_other() {
        let m = Metrics::new().unwrap();
        let h = m.model("llama", "pool-a");
        h.count(200);
        h.count(418);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text
            .contains(r#"switchyard_requests_total{model="llama",pool="pool-a",status="200"} 1"#));
        assert!(text.contains(
            r#"switchyard_requests_total{model="llama",pool="pool-a",status="other"} 1"#
        ));
    }
}
