//! Graceful shutdown state: requests in flight, the drain, and the upstream sockets of running
//! requests, so that what is still running when the grace period ends can be ended honestly.
//!
//! SIGTERM (see `app::shutdown`): the public listener stops accepting and keep-alive
//! connections close after their current request; in-flight requests get up to the grace
//! period; then the upstream sockets of those still running are shut down, each fails inside
//! Pingora, and `fail_to_proxy` ends its stream with a `server_shutting_down` error event.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by the proxy, the admin listener and the signal watcher.
#[derive(Debug, Default)]
pub struct Lifecycle {
    inflight: Arc<AtomicUsize>,
    draining: AtomicBool,
    aborting: AtomicBool,
    upstreams: Arc<Mutex<HashMap<u64, RawFd>>>,
    next_id: AtomicU64,
}

use crate::lock;

impl Lifecycle {
    /// Counts an API request as in flight until the guard drops.
    pub fn start_request(&self) -> RequestGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.inflight.clone())
    }

    /// API requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Remembers the upstream socket of a running request until the handle drops.
    pub fn register_upstream(&self, fd: RawFd) -> UpstreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.upstreams).insert(id, fd);
        UpstreamHandle {
            id,
            map: self.upstreams.clone(),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether requests are being ended because the grace period is over.
    pub fn is_aborting(&self) -> bool {
        self.aborting.load(Ordering::Acquire)
    }

    /// Ends every running request by shutting down its upstream socket; returns how many.
    ///
    /// A registered descriptor belongs to a request that has not finished; the listener is
    /// closed by now, so no new request can have been given a recycled number in between.
    pub fn abort_all(&self) -> usize {
        self.aborting.store(true, Ordering::Release);
        let fds: Vec<RawFd> = lock(&self.upstreams).values().copied().collect();
        for fd in &fds {
            let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Both);
        }
        fds.len()
    }
}

/// Keeps an API request counted as in flight.
#[must_use = "the request counts as in flight only while the guard lives"]
#[derive(Debug)]
pub struct RequestGuard(Arc<AtomicUsize>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps an upstream socket registered for abort.
#[must_use = "the socket is registered only while the handle lives"]
#[derive(Debug)]
pub struct UpstreamHandle {
    id: u64,
    map: Arc<Mutex<HashMap<u64, RawFd>>>,
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_in_flight_requests_and_upstreams() {
        let l = Lifecycle::default();
        let a = l.start_request();
        let b = l.start_request();
        assert_eq!(l.inflight(), 2);
        drop(a);
        assert_eq!(l.inflight(), 1);
        let h = l.register_upstream(-1);
        assert_eq!(lock(&l.upstreams).len(), 1);
        drop(h);
        assert!(lock(&l.upstreams).is_empty());
        drop(b);
        assert_eq!(l.inflight(), 0);
        assert!(!l.is_aborting());
        assert_eq!(l.abort_all(), 0);
        assert!(l.is_aborting());
    }
}
