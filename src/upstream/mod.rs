//! Per-server state that outlives config reloads: in-flight requests now; health, breaker and
//! latency statistics join it here. A [`Registry`] hands out one [`ServerState`] per server id
//! (`host:port`), so a reload that keeps a server keeps its state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Live state of one upstream server.
#[derive(Debug, Default)]
pub struct ServerState {
    inflight: AtomicU64,
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

    /// Whether the server may take traffic. Every server is usable until health checks and
    /// breakers (next issue) say otherwise.
    pub fn is_usable(&self) -> bool {
        true
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
    fn registry_returns_the_same_state_for_the_same_id() {
        let r = Registry::default();
        let a = r.get("10.0.0.1:8000");
        let _guard = a.start();
        assert_eq!(r.get("10.0.0.1:8000").inflight(), 1);
        assert_eq!(r.get("10.0.0.2:8000").inflight(), 0);
    }
}
