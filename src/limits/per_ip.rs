//! Per client IP: a cap on open connections and on new requests per second, both answered
//! before any request body is read. Counts live in pingora-limits' count-min sketches, so
//! memory is fixed whatever the number of client addresses (an estimate can only err high,
//! towards refusing; with 8192 slots × 4 hashes that needs thousands of busy addresses).
//!
//! The connection cap that uses the connection counts is `app::connection_cap`.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;

/// Per-IP counters, shared by every runtime (the limits come from the current config).
pub struct PerIp {
    pub(crate) connections: Inflight,
    requests: Rate,
}

impl Default for PerIp {
    fn default() -> Self {
        Self {
            connections: Inflight::new(),
            requests: Rate::new(Duration::from_secs(1)),
        }
    }
}

impl PerIp {
    /// Counts a new request from `ip`; false when it is over `per_second` this second.
    pub fn request(&self, ip: IpAddr, per_second: u64) -> bool {
        let seen = self.requests.observe(&ip, 1);
        u64::try_from(seen).unwrap_or(0) <= per_second
    }
}
