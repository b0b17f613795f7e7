//! Consistent hashing with bounded load (Mirrokni et al., as in HAProxy's `hash-balance-factor`):
//! requests of one session go to the same server, so its prefix cache stays warm, unless that
//! server is over `factor × mean` in-flight requests, in which case the request walks on along
//! the ring to the next server under the bound. Requests without a session key go to the
//! least busy server.
//!
//! The ring has 100 points per unit of weight (at most 40 000 in all), sorted once at build.

use super::{Balance, Candidates, Features};

const POINTS_PER_WEIGHT: u32 = 100;
const MAX_POINTS: usize = 40_000;

pub struct ConsistentHash {
    /// (point, server), sorted by point.
    ring: Box<[(u64, u32)]>,
    factor: f64,
}

impl ConsistentHash {
    pub fn new(weights: &[u32], factor: f64) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let scale = (MAX_POINTS as f64 / (total * u64::from(POINTS_PER_WEIGHT)) as f64).min(1.0);
        let mut ring = Vec::new();
        for (i, &w) in weights.iter().enumerate() {
            let points = ((f64::from(w.max(1) * POINTS_PER_WEIGHT) * scale) as u32).max(1);
            for p in 0..points {
                let key = format!("{i}-{p}");
                ring.push((super::session_hash(key.as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        Self {
            ring: ring.into_boxed_slice(),
            factor: factor.max(1.0),
        }
    }

    /// The most requests a server may have in flight before a new one passes it by.
    fn bound(&self, servers: &Candidates<'_>) -> u64 {
        let (mut total, mut n) = (0u64, 0u64);
        for i in 0..servers.len() {
            if (servers.eligible)(i) {
                total += servers.states[i].inflight();
                n += 1;
            }
        }
        if n == 0 {
            return 0;
        }
        // ceil(factor × (total + 1) / n): the new request included.
        (self.factor * (total + 1) as f64 / n as f64).ceil() as u64
    }
}

impl Balance for ConsistentHash {
    fn pick(&self, features: &Features, servers: &Candidates<'_>) -> Option<usize> {
        let Some(key) = features.session else {
            return (0..servers.len())
                .filter(|&i| (servers.eligible)(i))
                .min_by_key(|&i| servers.states[i].inflight());
        };
        let bound = self.bound(servers);
        if bound == 0 {
            return None;
        }
        let start = self.ring.partition_point(|&(p, _)| p < key);
        let len = self.ring.len();
        let mut first_eligible = None;
        for k in 0..len {
            let i = self.ring[(start + k) % len].1 as usize;
            if !(servers.eligible)(i) {
                continue;
            }
            if servers.states[i].inflight() < bound {
                return Some(i);
            }
            first_eligible.get_or_insert(i);
        }
        // Every eligible server is at the bound (possible only with factor rounding): stay
        // with the session's own.
        first_eligible
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::session_hash;
    use crate::balance::testing::{states, tally};
    use proptest::prelude::*;

    fn session(key: &str) -> Features {
        Features {
            session: Some(session_hash(key.as_bytes())),
            ..Features::default()
        }
    }

    #[test]
    fn a_session_sticks_to_one_server() {
        let s = states(4);
        let b = ConsistentHash::new(&[1; 4], 1.25);
        for user in ["alice", "bob", "carol", "dave", "erin"] {
            let counts = tally(&b, &session(user), &s, &[1; 4], 20, &|_| true);
            assert_eq!(
                counts.iter().filter(|&&c| c == 20).count(),
                1,
                "{user}: {counts:?}"
            );
        }
    }

    #[test]
    fn sessions_spread_over_servers_by_weight() {
        let s = states(3);
        let b = ConsistentHash::new(&[1, 1, 2], 1.25);
        let mut counts = [0usize; 3];
        for k in 0..4_000 {
            let c = Candidates {
                states: &s,
                weights: &[1, 1, 2],
                eligible: &|_| true,
                now_ms: 0,
            };
            counts[b.pick(&session(&format!("user-{k}")), &c).unwrap()] += 1;
        }
        assert!(counts[2] > counts[0] && counts[2] > counts[1], "{counts:?}");
        assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
    }

    #[test]
    fn an_overloaded_server_passes_the_session_on() {
        let s = states(3);
        let b = ConsistentHash::new(&[1; 3], 1.25);
        let f = session("heavy-user");
        let home = tally(&b, &f, &s, &[1; 3], 1, &|_| true)
            .iter()
            .position(|&c| c == 1)
            .unwrap();
        // Home has 4 in flight, others 0: bound = ceil(1.25 × 5 / 3) = 3, so home is full.
        let _held: Vec<_> = (0..4).map(|_| s[home].start(0)).collect();
        let counts = tally(&b, &f, &s, &[1; 3], 1, &|_| true);
        assert_eq!(counts[home], 0, "{counts:?}");
        // An ineligible home passes it on too.
        let s2 = states(3);
        let counts = tally(&b, &f, &s2, &[1; 3], 5, &|i| i != home);
        assert_eq!(counts[home], 0);
        assert_eq!(counts.iter().sum::<usize>(), 5);
    }

    #[test]
    fn without_a_session_the_least_busy_server_is_picked() {
        let s = states(3);
        let _a = s[0].start(0);
        let _b = s[2].start(0);
        let b = ConsistentHash::new(&[1; 3], 1.25);
        assert_eq!(
            tally(&b, &Features::default(), &s, &[1; 3], 5, &|_| true),
            vec![0, 5, 0]
        );
    }

    proptest! {
        /// Removing a server moves only the sessions that were on it.
        #[test]
        fn removing_a_server_moves_only_its_sessions(keys in proptest::collection::vec(any::<u64>(), 50)) {
            let s = states(4);
            let b = ConsistentHash::new(&[1; 4], 1.25);
            let pick = |key: u64, eligible: &dyn Fn(usize) -> bool| {
                let f = Features { session: Some(key), ..Features::default() };
                let c = Candidates { states: &s, weights: &[1; 4], eligible, now_ms: 0 };
                b.pick(&f, &c).unwrap()
            };
            for key in keys {
                let before = pick(key, &|_| true);
                let after = pick(key, &|i| i != 3);
                if before != 3 {
                    prop_assert_eq!(before, after);
                }
            }
        }

        /// The bound holds: with requests kept in flight, no server exceeds
        /// ceil(factor × total / n) whatever the sessions.
        #[test]
        fn no_server_exceeds_the_bound(keys in proptest::collection::vec(0u64..8, 1..120)) {
            let s = states(4);
            let b = ConsistentHash::new(&[1; 4], 1.25);
            let mut held = Vec::new();
            for (n, key) in keys.iter().enumerate() {
                let f = Features { session: Some(*key), ..Features::default() };
                let c = Candidates { states: &s, weights: &[1; 4], eligible: &|_| true, now_ms: 0 };
                let i = b.pick(&f, &c).unwrap();
                held.push(s[i].start(0));
                let bound = (1.25 * (n + 1) as f64 / 4.0).ceil() as u64;
                prop_assert!(s.iter().all(|x| x.inflight() <= bound));
            }
        }
    }
}
