//! The response cache's metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct CacheMetrics {
    /// Lookups by model and result (hit, miss, bypass).
    pub lookups: IntCounterVec,
    /// Answers stored, by tier (local, shared).
    pub stores: IntCounterVec,
    /// Bytes the in-process tier holds (set at each scrape).
    pub bytes: IntGauge,
    /// Entries the in-process tier dropped for room (not for age).
    pub evictions: IntCounter,
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_lookups_total",
                "Response cache lookups of models with a cache, by model and result (hit, miss, bypass: the request may not be served from the cache).",
            ),
            &["model", "result"],
        )?;
        let stores = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_stores_total",
                "Answers stored in the response cache, by tier (local: in process; shared: Redis).",
            ),
            &["tier"],
        )?;
        let bytes = IntGauge::new(
            "switchyard_cache_bytes",
            "Bytes held by the in-process response cache (server.cache_size at most).",
        )?;
        let evictions = IntCounter::new(
            "switchyard_cache_evictions_total",
            "Answers the in-process response cache dropped to make room (expiry not counted).",
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(stores.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        Ok(Self {
            lookups,
            stores,
            bytes,
            evictions,
        })
    }
}
