//! Least load: the server with the smallest load per unit of weight, where load is what the
//! engine itself reports (requests running + waiting, scraped from its /metrics by
//! `upstream::monitor`) moved by the requests the gateway sent and saw finish since that
//! reading (`ServerState::load`), with its KV cache usage as a tie-breaker. Engines without metrics (Ollama), or whose reading is
//! stale, are compared by the gateway's own in-flight count. Equal loads rotate.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, Candidates, Features};

pub struct LeastLoad {
    /// Readings older than this are ignored.
    max_age_ms: u64,
    /// Where the scan starts, so that ties do not always go to the first server.
    next: AtomicUsize,
}

impl LeastLoad {
    pub fn new(max_age_ms: u64) -> Self {
        Self {
            max_age_ms,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balance for LeastLoad {
    fn pick(&self, _features: &Features, servers: &Candidates<'_>) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !(servers.eligible)(i) {
                continue;
            }
            let load = servers.load(i, self.max_age_ms);
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{states, tally};
    use crate::upstream::engine_load::EngineLoad;

    fn reading(queue: f64, kv: f64) -> EngineLoad {
        EngineLoad {
            running: queue,
            waiting: 0.0,
            kv_usage: Some(kv),
            kv_tokens: 0.0,
        }
    }

    #[test]
    fn the_shortest_engine_queue_wins() {
        let s = states(3);
        s[0].set_engine_load(reading(8.0, 0.1), 900);
        s[1].set_engine_load(reading(2.0, 0.1), 900);
        s[2].set_engine_load(reading(5.0, 0.1), 900);
        let counts = tally(
            &LeastLoad::new(5_000),
            &Features::default(),
            &s,
            &[1; 3],
            10,
            &|_| true,
        );
        assert_eq!(counts, vec![0, 10, 0]);
    }

    #[test]
    fn requests_sent_since_the_reading_count() {
        let s = states(2);
        s[0].set_engine_load(reading(2.0, 0.0), 900);
        s[1].set_engine_load(reading(4.0, 0.0), 900);
        let b = LeastLoad::new(5_000);
        let mut held = Vec::new();
        let mut counts = [0; 2];
        for _ in 0..6 {
            let c = Candidates {
                states: &s,
                weights: &[1, 1],
                eligible: &|_| true,
                now_ms: 1_000,
            };
            let i = b.pick(&Features::default(), &c).unwrap();
            counts[i] += 1;
            held.push(s[i].start(1_000));
        }
        // 2 + 4 = 6 and 4 + 2 = 6: the gateway filled the gap, then alternated.
        assert_eq!(counts, [4, 2]);
    }

    #[test]
    fn kv_usage_breaks_ties_and_weight_divides() {
        let s = states(2);
        s[0].set_engine_load(reading(3.0, 0.9), 900);
        s[1].set_engine_load(reading(3.0, 0.2), 900);
        let b = LeastLoad::new(5_000);
        assert_eq!(
            tally(&b, &Features::default(), &s, &[1, 1], 10, &|_| true),
            vec![0, 10]
        );
        assert_eq!(
            tally(&b, &Features::default(), &s, &[3, 1], 10, &|_| true),
            vec![10, 0]
        );
    }

    #[test]
    fn without_readings_it_is_least_in_flight_and_ties_rotate() {
        let s = states(3);
        let _a = s[0].start(0);
        let counts = tally(
            &LeastLoad::new(5_000),
            &Features::default(),
            &s,
            &[1; 3],
            100,
            &|i| i != 2,
        );
        assert_eq!(counts, vec![0, 100, 0]);
        let s = states(3);
        let counts = tally(
            &LeastLoad::new(5_000),
            &Features::default(),
            &s,
            &[1; 3],
            99,
            &|_| true,
        );
        assert_eq!(counts, vec![33, 33, 33]);
    }

    #[test]
    fn a_stale_reading_is_ignored() {
        let s = states(2);
        s[0].set_engine_load(reading(50.0, 0.0), 10);
        let _b = s[1].start(0);
        // At now = 1 000 the reading is 990 ms old: over a 500 ms limit, so 0 vs 1 in flight.
        let counts = tally(
            &LeastLoad::new(500),
            &Features::default(),
            &s,
            &[1, 1],
            10,
            &|_| true,
        );
        assert_eq!(counts, vec![10, 0]);
    }
}
