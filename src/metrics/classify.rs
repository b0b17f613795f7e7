//! Classifiers' metrics: decisions by label and method, latency per method, cache hits and
//! fallbacks. Label values are the config's classifier and label names (bounded by it).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::routing::classify::{Classifier, MethodKind, Source, Verdict};

/// Classification latency buckets, seconds: 10 µs … 5 s (lexical sits in the first, a model
/// call in the middle, a budget at its end).
const BUCKETS: [f64; 14] = [
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

pub struct ClassifyMetrics {
    decisions: IntCounterVec,
    seconds: HistogramVec,
    cache: IntCounterVec,
    fallbacks: IntCounterVec,
}

impl ClassifyMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "switchyard_classifier_decisions_total",
                "Classifications by classifier, method (lexical, embedding, llm; final: the label the rules saw) and label (none: no label).",
            ),
            &["classifier", "method", "label"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_classifier_seconds",
                "Time a classification took, by classifier and method (total: the wall time the request waited, at most the budget).",
            )
            .buckets(BUCKETS.to_vec()),
            &["classifier", "method"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "switchyard_classifier_cache_total",
                "Classification cache lookups of classifiers that call a model, by classifier and result (hit, miss).",
            ),
            &["classifier", "result"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_classifier_fallbacks_total",
                "Classifications that used the fallback label, by classifier and reason (no_answer: no method answered in time; low_confidence: under min_confidence).",
            ),
            &["classifier", "reason"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        Ok(Self {
            decisions,
            seconds,
            cache,
            fallbacks,
        })
    }

    /// Records one classification of `c`.
    pub fn classified(&self, c: &Classifier, v: &Verdict) {
        let name = c.name.as_str();
        let label = |l: Option<u16>| c.label_name(l).unwrap_or("none");
        self.decisions
            .with_label_values(&[name, "final", label(v.label)])
            .inc();
        self.seconds
            .with_label_values(&[name, "total"])
            .observe(f64::from(v.micros) / 1e6);
        match v.source {
            Source::Cached => {
                self.cache.with_label_values(&[name, "hit"]).inc();
                return;
            }
            Source::LowConfidence => self
                .fallbacks
                .with_label_values(&[name, "low_confidence"])
                .inc(),
            Source::NoAnswer => self.fallbacks.with_label_values(&[name, "no_answer"]).inc(),
            Source::Voted | Source::Sticky => {}
        }
        if !c.is_local() {
            self.cache.with_label_values(&[name, "miss"]).inc();
        }
        for (kind, m) in MethodKind::ALL.iter().zip(&v.methods) {
            if let Some(m) = m {
                self.decisions
                    .with_label_values(&[name, kind.name(), label(m.label)])
                    .inc();
                self.seconds
                    .with_label_values(&[name, kind.name()])
                    .observe(f64::from(m.micros) / 1e6);
            }
        }
    }
}
