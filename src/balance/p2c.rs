//! Power of two choices over a peak-EWMA of time to first byte (linkerd's balancer, also
//! Helicone's): sample two eligible servers at random and take the one with the lower cost
//! `latency × (in-flight + 1) / weight`. A slow server loses traffic at once (the EWMA jumps
//! to peaks); a busy fast one still gets its share, because in-flight requests weigh in.
//! Sampling two instead of scanning all avoids the herd that "always the best" causes when
//! many gateways or threads see the same numbers.

use super::{Balance, Candidates, Features};

/// Latency assumed for a server not measured yet, in milliseconds: low, so that a new server
/// is tried soon and gets measured, yet not zero, so that its in-flight count still weighs.
const UNMEASURED_MS: f64 = 1.0;

pub struct P2cEwma;

impl P2cEwma {
    fn cost(servers: &Candidates<'_>, i: usize) -> f64 {
        let s = &servers.states[i];
        let latency = s.ewma_ms().unwrap_or(UNMEASURED_MS).max(UNMEASURED_MS);
        latency * (s.inflight() as f64 + 1.0) / servers.weight(i)
    }
}

impl Balance for P2cEwma {
    fn pick(&self, _features: &Features, servers: &Candidates<'_>) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let a = servers.first_eligible_from(fastrand::usize(..n), None)?;
        let Some(b) = servers.first_eligible_from(fastrand::usize(..n), Some(a)) else {
            return Some(a);
        };
        Some(if Self::cost(servers, b) < Self::cost(servers, a) {
            b
        } else {
            a
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{states, tally};
    use std::time::Duration;

    #[test]
    fn a_slow_server_gets_little_traffic() {
        let s = states(3);
        s[0].observe_ttfb(Duration::from_millis(20), 1_000);
        s[1].observe_ttfb(Duration::from_millis(20), 1_000);
        s[2].observe_ttfb(Duration::from_millis(2_000), 1_000);
        let counts = tally(
            &P2cEwma,
            &Features::default(),
            &s,
            &[1, 1, 1],
            3_000,
            &|_| true,
        );
        // Two different servers are always compared, so the slow one never wins.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1_200 && counts[1] > 1_200, "{counts:?}");
    }

    #[test]
    fn in_flight_requests_weigh_in() {
        let s = states(2);
        s[0].observe_ttfb(Duration::from_millis(10), 1_000);
        s[1].observe_ttfb(Duration::from_millis(30), 1_000);
        // Five requests in flight on the fast server make it cost 60 against 30.
        let _held: Vec<_> = (0..5).map(|_| s[0].start(0)).collect();
        let counts = tally(&P2cEwma, &Features::default(), &s, &[1, 1], 100, &|_| true);
        assert_eq!(counts, vec![0, 100]);
    }

    #[test]
    fn weight_divides_the_cost_and_ineligible_servers_are_never_picked() {
        let s = states(3);
        for st in &s {
            st.observe_ttfb(Duration::from_millis(10), 1_000);
        }
        let _held: Vec<_> = (0..2).map(|_| s[1].start(0)).collect();
        // Server 1: 10 × 3 / 4 = 7.5 < server 0: 10 × 1 / 1.
        let counts = tally(&P2cEwma, &Features::default(), &s, &[1, 4, 1], 200, &|i| {
            i != 2
        });
        assert_eq!(counts, vec![0, 200, 0]);
        let none = tally(&P2cEwma, &Features::default(), &s, &[1, 1, 1], 10, &|_| {
            false
        });
        assert_eq!(none, vec![0, 0, 0]);
    }

    #[test]
    fn a_lone_eligible_server_is_picked() {
        let s = states(4);
        let counts = tally(&P2cEwma, &Features::default(), &s, &[1; 4], 50, &|i| i == 3);
        assert_eq!(counts, vec![0, 0, 0, 50]);
    }
}
