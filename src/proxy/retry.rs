//! What an attempt's end means for the next one: its outcome for the server's breaker, whether
//! another attempt is possible, why it is retried (a metric label), and how long to back off.

use std::time::Duration;

use super::ctx::{self, Ctx, Routed, MAX_ATTEMPTS};
use super::Proxy;
use crate::upstream;

impl Proxy {
    /// Feeds the current attempt's outcome to its server's breaker, once per attempt.
    pub(super) fn record(&self, ctx: &mut Ctx, outcome: upstream::Outcome) {
        if std::mem::replace(&mut ctx.attempt.outcome_recorded, true) {
            return;
        }
        self.record_again(ctx, outcome);
    }

    /// Feeds an outcome even if one was recorded (a stream that died after a good header).
    pub(super) fn record_again(&self, ctx: &Ctx, outcome: upstream::Outcome) {
        let (Some(routed), Some(server)) = (&ctx.routed, ctx.attempt.server) else {
            return;
        };
        let pool = routed.pool();
        let s = &pool.servers[server];
        if let Some(state) = s.state.record(outcome, upstream::now_ms()) {
            match state {
                upstream::breaker::BreakerState::Open => tracing::warn!(
                    pool = %pool.name, server = %s.id, "circuit breaker opened"
                ),
                _ => tracing::info!(
                    pool = %pool.name, server = %s.id, "circuit breaker {}", state.name()
                ),
            }
        }
    }

    /// A stream that turned malformed after its first event: a failure of its server, counted
    /// as an upstream error.
    pub(super) fn stream_malformed(&self, ctx: &Ctx) {
        self.record_again(ctx, upstream::Outcome::Failure);
        if let Some(routed) = &ctx.routed {
            let pool = &routed.pool().name;
            self.shared.metrics.upstream_error(pool, "stream_malformed");
        }
    }

    /// Whether another attempt is possible: a server left in the current pool within its
    /// cap, or a later step of the route with a usable server.
    pub(super) fn can_try_again(&self, routed: &Routed, tried: &ctx::Tried) -> bool {
        if tried.attempts() >= MAX_ATTEMPTS {
            return false;
        }
        let pool = routed.pool_index();
        let here =
            tried.can_retry(pool) && routed.pool().has_candidate(&|i| !tried.contains(pool, i));
        here || routed
            .route
            .chain
            .iter()
            .skip(usize::from(routed.step) + 1)
            .any(|s| routed.runtime.pools[s.pool as usize].has_candidate(&|_| true))
    }

    /// Notes why the current attempt is retried (a metric label, counted at the end).
    pub(super) fn note_retry(&self, ctx: &mut Ctx, reason: ctx::RetryReason) {
        let n = ctx.attempt.tried.attempts();
        if let Some(slot) = n
            .checked_sub(1)
            .and_then(|i| ctx.attempt.retries.get_mut(i))
        {
            *slot = Some(reason);
        }
    }
}

/// Backoff before a retry of a request a server already had: full jitter over 10 ms × 2^n,
/// at most 200 ms (the next server is another machine; the wait only spreads a burst).
pub(super) fn backoff(retry: usize) -> Duration {
    let cap = (10u64 << retry.min(5)).min(200);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// The metric label of an upstream status that counts as an error or a retry reason.
pub(super) fn status_kind(status: u16) -> &'static str {
    match status {
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_other",
    }
}
