//! Choosing one server of a pool for one request.
//!
//! A [`Balance`] implementation holds only what its algorithm needs (a table, a ring, a
//! counter); per-server state that must outlive a config reload (in-flight, latency, engine
//! load, health) lives in `upstream::ServerState` and reaches the policy through
//! [`Candidates`]. What the policy may know about the request is in [`Features`]. One policy
//! per file; [`Policy`] is the config-facing name.

mod chash;
mod features;
mod least_load;
mod p2c;
pub mod prefix;
mod wrr;

use std::sync::Arc;

pub use chash::ConsistentHash;
pub use features::{prefix_hashes, session_hash, PREFIX_BLOCK_BYTES};
pub use least_load::LeastLoad;
pub use p2c::P2cEwma;
pub use prefix::{PrefixAware, PrefixIndex, PrefixIndexes, PrefixSettings};
pub use wrr::SmoothWeightedRoundRobin;

use crate::upstream::ServerState;

/// What a policy may know about the request it places; built once per request.
#[derive(Debug, Default, Clone)]
pub struct Features {
    /// Size of the prompt (messages, prompt or input) in bytes.
    pub prompt_bytes: usize,
    /// Estimated prompt tokens (bytes / 4).
    pub prompt_tokens: u64,
    /// Chained hashes of the conversation, rendered canonically, in blocks of
    /// [`PREFIX_BLOCK_BYTES`]: `prefix_hashes[k]` identifies the first k+1 blocks. Filled only
    /// for policies that ask for it ([`Policy::wants_prefix`]).
    pub prefix_hashes: Vec<u64>,
    /// Hash of the session key (a header, else the body's `user`), when there is one.
    pub session: Option<u64>,
}

/// The servers a policy chooses among, with their live state.
pub struct Candidates<'a> {
    pub states: &'a [Arc<ServerState>],
    /// Configured weights, in server order.
    pub weights: &'a [u32],
    /// Whether server `i` may take this request (usable, not tried yet, not held back by a
    /// slow start).
    pub eligible: &'a dyn Fn(usize) -> bool,
    pub now_ms: u64,
}

impl Candidates<'_> {
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn weight(&self, i: usize) -> f64 {
        f64::from(self.weights.get(i).copied().unwrap_or(1).max(1))
    }

    /// Server `i`'s load per unit of weight ([`ServerState::load`]), as the load-reading
    /// policies compare it.
    pub fn load(&self, i: usize, max_age_ms: u64) -> f64 {
        self.states[i].load(self.now_ms, max_age_ms) / self.weight(i)
    }

    /// The first eligible server at or after `start`, wrapping around.
    pub fn first_eligible_from(&self, start: usize, skip: Option<usize>) -> Option<usize> {
        let n = self.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| Some(i) != skip && (self.eligible)(i))
    }
}

/// A balancing algorithm over a fixed list of servers (indices `0..n`).
pub trait Balance: Send + Sync {
    /// Picks an eligible server for a request, or `None` when none is eligible. Must not
    /// allocate.
    fn pick(&self, features: &Features, servers: &Candidates<'_>) -> Option<usize>;
}

/// The balancing policy named in config (`pools.X.balance`); the spelling is also the metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    WeightedRoundRobin,
    P2cEwma,
    LeastLoad,
    ConsistentHash,
    PrefixAware,
}

/// Policy parameters from the pool's config.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    /// `least_load`: an engine reading older than this is ignored (3 scrape intervals).
    pub load_max_age_ms: u64,
    /// `consistent_hash`: a server more than this factor over the mean load passes the
    /// request on along the ring (1.25).
    pub hash_load_factor: f64,
    /// `prefix_aware`: its tunables (`pools.X.prefix`).
    pub prefix: PrefixSettings,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            load_max_age_ms: 15_000,
            hash_load_factor: 1.25,
            prefix: PrefixSettings::default(),
        }
    }
}

impl Policy {
    pub const NAMES: [&'static str; 5] = [
        "weighted_round_robin",
        "p2c_ewma",
        "least_load",
        "consistent_hash",
        "prefix_aware",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "p2c_ewma" => Self::P2cEwma,
            "least_load" => Self::LeastLoad,
            "consistent_hash" => Self::ConsistentHash,
            "prefix_aware" => Self::PrefixAware,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::P2cEwma => "p2c_ewma",
            Self::LeastLoad => "least_load",
            Self::ConsistentHash => "consistent_hash",
            Self::PrefixAware => "prefix_aware",
        }
    }

    /// Whether the request's prefix block hashes must be computed for this policy.
    pub fn wants_prefix(self) -> bool {
        self == Self::PrefixAware
    }

    /// Whether the request's session key must be read for this policy.
    pub fn wants_session(self) -> bool {
        self == Self::ConsistentHash
    }

    /// Builds the policy for servers with these weights (in server order). `prefix_aware`
    /// needs its pool's index and the servers' slots in it (else it balances by load alone).
    pub fn build(
        self,
        weights: &[u32],
        settings: &PolicySettings,
        prefix: Option<(Arc<PrefixIndex>, Box<[u8]>)>,
    ) -> Box<dyn Balance> {
        match self {
            Self::PrefixAware => match prefix {
                Some((index, slots)) => Box::new(PrefixAware::new(
                    index,
                    slots,
                    settings.prefix.clone(),
                    settings.load_max_age_ms,
                )),
                None => Box::new(LeastLoad::new(settings.load_max_age_ms)),
            },
            Self::WeightedRoundRobin => Box::new(SmoothWeightedRoundRobin::new(weights)),
            Self::P2cEwma => Box::new(P2cEwma),
            Self::LeastLoad => Box::new(LeastLoad::new(settings.load_max_age_ms)),
            Self::ConsistentHash => {
                Box::new(ConsistentHash::new(weights, settings.hash_load_factor))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Candidate sets for the policies' unit tests.
    use super::*;

    pub fn states(n: usize) -> Vec<Arc<ServerState>> {
        (0..n).map(|_| Arc::new(ServerState::default())).collect()
    }

    /// Counts how often each server is picked over `n` picks, keeping each pick in flight
    /// when `hold` is set.
    pub fn tally(
        b: &dyn Balance,
        f: &Features,
        states: &[Arc<ServerState>],
        weights: &[u32],
        n: usize,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; states.len()];
        for _ in 0..n {
            let c = Candidates {
                states,
                weights,
                eligible,
                now_ms: 1_000,
            };
            if let Some(i) = b.pick(f, &c) {
                counts[i] += 1;
            }
        }
        counts
    }
}
