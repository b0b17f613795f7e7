//! Choosing one server of a pool for one request.
//!
//! A [`Balance`] implementation holds only what its algorithm needs (a table, a counter);
//! per-server state that must outlive a config reload (in-flight, health) lives in
//! `upstream::ServerState` and reaches the policy through the `eligible` filter and, later,
//! through [`Features`]. One policy per file; [`Policy`] is the config-facing name.

mod wrr;

pub use wrr::SmoothWeightedRoundRobin;

/// What a policy may know about the request it places. Grows with the policies that need it
/// (prefix hashes, session key); cheap to build, borrowed from the request context.
#[derive(Debug, Default, Clone, Copy)]
pub struct Features {
    /// Size of the prompt in bytes (a token estimate is bytes / 4).
    pub prompt_bytes: usize,
}

/// A balancing algorithm over a fixed list of servers (indices `0..n`).
pub trait Balance: Send + Sync {
    /// Picks a server for a request, considering only those for which `eligible` is true
    /// (healthy, not yet tried by this request, breaker closed). Returns `None` when no
    /// eligible server is left. Must not allocate.
    fn pick(&self, features: &Features, eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// The balancing policy named in config (`pools.X.balance`); the spelling is also the metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    WeightedRoundRobin,
}

impl Policy {
    pub const NAMES: [&'static str; 1] = ["weighted_round_robin"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "weighted_round_robin" => Some(Self::WeightedRoundRobin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::WeightedRoundRobin => "weighted_round_robin",
        }
    }

    /// Builds the policy for servers with these weights (in server order).
    pub fn build(self, weights: &[u32]) -> Box<dyn Balance> {
        match self {
            Self::WeightedRoundRobin => Box::new(SmoothWeightedRoundRobin::new(weights)),
        }
    }
}
