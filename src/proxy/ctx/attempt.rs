//! Tries at servers: which were tried (without allocating), the current one's guards and
//! timings, and the retry bookkeeping that decides the next.

use std::sync::Arc;
use std::time::Instant;

use crate::lifecycle::UpstreamHandle;
use crate::proxy::hold::HoldConnect;
use crate::state::RetryToken;
use crate::upstream::InflightGuard;

/// At most this many tries per pool: 1 + 2 retries (RELIABILITY.md).
pub const MAX_ATTEMPTS_PER_POOL: usize = 3;

/// At most this many tries in all, fallback pools included (Pingora's `max_retries`).
pub const MAX_ATTEMPTS: usize = 6;

/// Servers already tried for this request, as (pool, server), without allocating.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    entries: [(u16, u32); MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn contains(&self, pool: usize, server: usize) -> bool {
        self.entries[..self.len]
            .iter()
            .any(|&(p, s)| p as usize == pool && s as usize == server)
    }

    /// Tries made on `pool`.
    pub fn in_pool(&self, pool: usize) -> usize {
        self.entries[..self.len]
            .iter()
            .filter(|&&(p, _)| p as usize == pool)
            .count()
    }

    /// Records an attempt; false when the pool's or the request's cap is reached.
    pub fn push(&mut self, pool: usize, server: usize) -> bool {
        if self.len == MAX_ATTEMPTS || self.in_pool(pool) >= MAX_ATTEMPTS_PER_POOL {
            return false;
        }
        self.entries[self.len] = (pool as u16, server as u32);
        self.len += 1;
        true
    }

    /// Whether another try on `pool` is within the caps.
    pub fn can_retry(&self, pool: usize) -> bool {
        self.len < MAX_ATTEMPTS && self.in_pool(pool) < MAX_ATTEMPTS_PER_POOL
    }

    pub fn attempts(&self) -> usize {
        self.len
    }
}

/// Why an attempt was retried; a metric label.
pub type RetryReason = &'static str;

/// The current try at a server, and what earlier tries left for the next one.
#[derive(Default)]
pub struct Attempt {
    pub tried: Tried,
    /// The server of the current attempt, index into the pool's servers.
    pub server: Option<usize>,
    pub inflight: Option<InflightGuard>,
    /// The current attempt's upstream socket, registered so shutdown can end it.
    pub upstream_socket: Option<UpstreamHandle>,
    /// A stream's connector for the current attempt (hold/).
    pub hold: Option<Arc<HoldConnect>>,
    pub upstream_status: Option<u16>,
    /// When the request (headers and body) was ready to go upstream, last attempt.
    pub upstream_sent: Option<Instant>,
    /// When the upstream response header arrived.
    pub upstream_header: Option<Instant>,
    /// An upstream status the gateway chose to retry (429/502/503/504 before the first byte).
    pub retry_status: Option<u16>,
    /// Retries taken, by reason (at most one per extra attempt).
    pub retries: [Option<RetryReason>; MAX_ATTEMPTS],
    /// A retry was wanted but the pool's retry budget was spent.
    pub budget_refused: bool,
    /// Budget slots held by this request's retries; released when it ends.
    pub retry_tokens: Vec<RetryToken>,
    /// The next attempt waits a jittered backoff first (the server had the request).
    pub backoff: bool,
    /// The current attempt's outcome reached the server's breaker.
    pub outcome_recorded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_caps_attempts_per_pool_and_in_all() {
        let mut t = Tried::default();
        assert!(t.push(0, 4));
        assert!(t.push(0, 1));
        assert!(t.can_retry(0));
        assert!(t.push(0, 7));
        assert!(!t.can_retry(0));
        assert!(!t.push(0, 2), "a fourth try on one pool");
        assert!(t.contains(0, 1) && t.contains(0, 4) && t.contains(0, 7));
        assert!(!t.contains(1, 1), "same index, other pool");
        assert!(t.push(1, 0) && t.push(1, 1) && t.push(1, 2));
        assert!(!t.push(2, 0), "six in all");
        assert_eq!(t.attempts(), 6);
    }
}
