//! Per-server state that outlives config reloads: in-flight requests and the cooldown a
//! server asked for (429/503 with Retry-After); health, breaker and latency statistics join
//! it here. A [`Registry`] hands out one [`ServerState`] per server id
//! (`host:port`), so a reload that keeps a server keeps its state.

pub mod retry_after;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds on a process-wide monotonic clock (0 = first call).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Live state of one upstream server.
#[derive(Debug, Default)]
pub struct ServerState {
    inflight: AtomicU64,
    /// `now_ms()` before which the server gets no new requests (0: none).
    cooldown_until_ms: AtomicU64,
    /// Drained by an operator: no new requests; in-flight ones finish.
    draining: AtomicBool,
}

impl ServerState {
    /// Requests currently sent to this server and not yet finished.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// Whether the server may take new requests at `now_ms` (see [`now_ms`]): not drained and
    /// not in a cooldown it asked for. Health checks and breakers will join this decision.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        !self.is_draining() && now_ms >= self.cooldown_until_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds of cooldown left at `now_ms` (0 when none).
    pub fn cooldown_left_ms(&self, now_ms: u64) -> u64 {
        self.cooldown_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drains (no new requests; in-flight ones finish) or puts the server back in rotation.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Keeps new requests away for `d` from `now_ms` (never shortens a longer cooldown).
    pub fn cool_down(&self, now_ms: u64, d: Duration) {
        let until = now_ms.saturating_add(d.as_millis() as u64);
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

/// Decrements the server's in-flight count on drop (including when the client goes away).
#[must_use = "the request counts as in flight only while the guard lives"]
#[derive(Debug)]
pub struct InflightGuard(Arc<ServerState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server states by id, shared by every runtime built from successive configs.
#[derive(Debug, Default)]
pub struct Registry {
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
}

impl Registry {
    /// The state for `id`, created on first use. Only called while building a runtime.
    pub fn get(&self, id: &str) -> Arc<ServerState> {
        let mut map = match self.servers.lock() {
            Ok(m) => m,
            // A panic while holding this lock cannot leave the map inconsistent (one insert).
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_guard_counts_until_dropped() {
        let s = Arc::new(ServerState::default());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.inflight(), 2);
        drop(a);
        assert_eq!(s.inflight(), 1);
        drop(b);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn cooldown_keeps_the_server_out_until_it_ends_and_never_shrinks() {
        let s = ServerState::default();
        assert!(s.is_usable(1_000));
        s.cool_down(1_000, Duration::from_secs(2));
        assert!(!s.is_usable(2_999));
        s.cool_down(1_500, Duration::from_millis(10));
        assert!(!s.is_usable(2_999));
        assert!(s.is_usable(3_000));
    }

    #[test]
    fn a_drained_server_takes_no_new_requests_until_undrained() {
        let s = ServerState::default();
        s.set_draining(true);
        assert!(!s.is_usable(0));
        s.set_draining(false);
        assert!(s.is_usable(0));
    }

    #[test]
    fn registry_returns_the_same_state_for_the_same_id() {
        let r = Registry::default();
        let a = r.get("10.0.0.1:8000");
        let _guard = a.start();
        assert_eq!(r.get("10.0.0.1:8000").inflight(), 1);
        assert_eq!(r.get("10.0.0.2:8000").inflight(), 0);
    }
}
