//! The shared store's metrics: whether it answers, what requests got when it did not, and
//! how long its round trips take.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// Round-trip buckets, seconds: 50 µs … 250 ms.
const BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

pub struct FleetMetrics {
    /// 1 while the shared store answers; 0 when it does not (or none is configured).
    pub up: IntGauge,
    /// Admissions the store could not answer, by what they got (`on_error`).
    pub fallbacks: IntCounterVec,
    /// Admission round trips that answered.
    pub admission_seconds: Histogram,
}

impl FleetMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let up = IntGauge::new(
            "switchyard_shared_store_up",
            "1 while the shared store (shared.redis) answers, 0 when it does not or none is configured.",
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_shared_store_fallbacks_total",
                "Admissions the shared store did not answer in shared.timeout, by what they got (local, open, closed).",
            ),
            &["on_error"],
        )?;
        let admission_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "switchyard_shared_store_admission_seconds",
                "Round trip of an admission to the shared store (one script call).",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(admission_seconds.clone()))?;
        Ok(Self {
            up,
            fallbacks,
            admission_seconds,
        })
    }
}
