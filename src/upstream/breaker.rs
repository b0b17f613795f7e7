//! A circuit breaker per server: one state machine, time passed in (milliseconds on
//! `upstream::now_ms`'s clock), so every transition is tested without sleeping.
//!
//! ```text
//! closed ──(≥ rate failures over ≥ min_calls in the window, or `consecutive` in a row)──▶ open
//! open ──(open_for × trips elapsed, capped)──▶ half-open: `probes` requests let through
//! half-open ──(every probe succeeded)──▶ closed     half-open ──(a probe failed)──▶ open (trips+1)
//! ```
//!
//! Only server-side failures count (connect errors, resets, timeouts, 5xx); a 429 or a 503
//! that names a `Retry-After` is a cooldown the server asked for, not a failure.

use std::time::Duration;

/// Thresholds; RELIABILITY.md's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Failure share over the window that opens the breaker (0.5).
    pub failure_rate: f64,
    /// Calls in the window before the rate is trusted (20).
    pub min_calls: u32,
    /// Length of the rolling window (30 s).
    pub window: Duration,
    /// Failures in a row that open the breaker regardless of the rate (5).
    pub consecutive: u32,
    /// First open period; each re-open after a failed probe multiplies it (30 s × n).
    pub open_for: Duration,
    /// Longest open period (300 s).
    pub max_open_for: Duration,
    /// Requests let through while half-open; all must succeed to close (3).
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(30),
            consecutive: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
            probes: 3,
        }
    }
}

/// What the admin API and metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Number of buckets the rolling window is cut into.
const BUCKETS: usize = 6;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the time slice this bucket counts (`now / slice`).
    slice: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { dispatched: u32, succeeded: u32 },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    phase: Phase,
    consecutive_failures: u32,
    /// Times opened since the breaker was last closed by successful probes.
    trips: u32,
    buckets: [Bucket; BUCKETS],
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            phase: Phase::Closed,
            consecutive_failures: 0,
            trips: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Applies new thresholds (config reload); the current state is kept.
    pub fn set_settings(&mut self, settings: BreakerSettings) {
        self.settings = settings;
    }

    /// The state at `now_ms` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until_ms } if now_ms < until_ms => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a new request may be sent at `now_ms`.
    pub fn allows(&self, now_ms: u64) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until_ms } => now_ms >= until_ms,
            Phase::HalfOpen { dispatched, .. } => dispatched < self.settings.probes,
        }
    }

    /// A request was sent to the server: in half-open, it takes a probe slot.
    pub fn on_dispatch(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Open { until_ms } if now_ms >= until_ms => {
                self.phase = Phase::HalfOpen {
                    dispatched: 1,
                    succeeded: 0,
                };
            }
            Phase::HalfOpen {
                dispatched,
                succeeded,
            } => {
                self.phase = Phase::HalfOpen {
                    dispatched: dispatched + 1,
                    succeeded,
                };
            }
            _ => {}
        }
    }

    /// The server answered well. Returns the new state when it changed.
    pub fn on_success(&mut self, now_ms: u64) -> Option<BreakerState> {
        self.consecutive_failures = 0;
        match self.phase {
            Phase::Closed => {
                self.bucket(now_ms).calls += 1;
                None
            }
            Phase::HalfOpen {
                dispatched,
                succeeded,
            } => {
                let succeeded = succeeded + 1;
                if succeeded >= self.settings.probes {
                    self.close();
                    Some(BreakerState::Closed)
                } else {
                    self.phase = Phase::HalfOpen {
                        dispatched,
                        succeeded,
                    };
                    None
                }
            }
            // A late answer to a request sent before the breaker opened.
            Phase::Open { .. } => None,
        }
    }

    /// An active health probe passed. An open breaker goes half-open at once rather than at the
    /// end of its open period: a restarted server that answers its probes again gets its
    /// probe requests now, not `open_for` later (Envoy's `successful_active_health_check_uneject_host`,
    /// on by default there too). A probe request that fails opens it again, for longer.
    pub fn on_probe_passed(&mut self) -> Option<BreakerState> {
        match self.phase {
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen {
                    dispatched: 0,
                    succeeded: 0,
                };
                Some(BreakerState::HalfOpen)
            }
            Phase::Closed | Phase::HalfOpen { .. } => None,
        }
    }

    /// The server failed a request. Returns the new state when it changed.
    pub fn on_failure(&mut self, now_ms: u64) -> Option<BreakerState> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.phase {
            Phase::Closed => {
                let b = self.bucket(now_ms);
                b.calls += 1;
                b.failures += 1;
                let (calls, failures) = self.window_counts(now_ms);
                let rate_tripped = calls >= self.settings.min_calls
                    && f64::from(failures) >= self.settings.failure_rate * f64::from(calls);
                if rate_tripped || self.consecutive_failures >= self.settings.consecutive {
                    self.open(now_ms);
                    return Some(BreakerState::Open);
                }
                None
            }
            Phase::HalfOpen { .. } => {
                self.open(now_ms);
                Some(BreakerState::Open)
            }
            Phase::Open { .. } => None,
        }
    }

    fn open(&mut self, now_ms: u64) {
        self.trips = self.trips.saturating_add(1);
        let d = self
            .settings
            .open_for
            .saturating_mul(self.trips)
            .min(self.settings.max_open_for);
        self.phase = Phase::Open {
            until_ms: now_ms.saturating_add(d.as_millis() as u64),
        };
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.trips = 0;
        self.consecutive_failures = 0;
        self.buckets = [Bucket::default(); BUCKETS];
    }

    fn slice_ms(&self) -> u64 {
        (self.settings.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    /// The bucket of `now_ms`'s slice, cleared if it held an older slice.
    fn bucket(&mut self, now_ms: u64) -> &mut Bucket {
        let slice = now_ms / self.slice_ms();
        let b = &mut self.buckets[(slice % BUCKETS as u64) as usize];
        if b.slice != slice {
            *b = Bucket {
                slice,
                ..Bucket::default()
            };
        }
        b
    }

    /// Calls and failures in the window ending at `now_ms`.
    fn window_counts(&self, now_ms: u64) -> (u32, u32) {
        let current = now_ms / self.slice_ms();
        self.buckets
            .iter()
            .filter(|b| current.saturating_sub(b.slice) < BUCKETS as u64 && b.slice <= current)
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings::default())
    }

    #[test]
    fn consecutive_failures_open_it() {
        let mut b = breaker();
        for i in 0..4 {
            assert_eq!(b.on_failure(1_000 + i), None);
        }
        assert!(b.allows(1_010));
        assert_eq!(b.on_failure(1_010), Some(BreakerState::Open));
        assert!(!b.allows(1_011));
        assert_eq!(b.state(1_011), BreakerState::Open);
    }

    #[test]
    fn a_passing_health_probe_half_opens_an_open_breaker_at_once() {
        let mut b = breaker();
        assert_eq!(b.on_probe_passed(), None, "closed stays closed");
        for i in 0..5 {
            b.on_failure(1_000 + i);
        }
        assert!(!b.allows(1_010));
        assert_eq!(b.on_probe_passed(), Some(BreakerState::HalfOpen));
        // 30 s early, the probe requests go through; all three succeed and it closes.
        assert_eq!(b.state(1_010), BreakerState::HalfOpen);
        for i in 0..3 {
            assert!(b.allows(1_010 + i));
            b.on_dispatch(1_010 + i);
        }
        assert!(!b.allows(1_020), "no more than the probes");
        assert_eq!(b.on_probe_passed(), None, "half-open stays as it is");
        b.on_success(1_030);
        b.on_success(1_031);
        assert_eq!(b.on_success(1_032), Some(BreakerState::Closed));
        // A failed probe request after a passing health probe opens it again, for longer.
        for i in 0..5 {
            b.on_failure(2_000 + i);
        }
        b.on_probe_passed();
        b.on_dispatch(2_010);
        assert_eq!(b.on_failure(2_011), Some(BreakerState::Open));
        assert!(!b.allows(2_011 + 59_000), "second trip: 60 s");
        assert!(b.allows(2_011 + 60_000));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let mut b = Breaker::new(BreakerSettings {
            min_calls: 1_000,
            ..BreakerSettings::default()
        });
        for round in 0..10 {
            for i in 0..4 {
                assert_eq!(b.on_failure(round * 100 + i), None);
            }
            b.on_success(round * 100 + 50);
        }
        assert_eq!(b.state(1_000), BreakerState::Closed);
        for i in 0..5 {
            b.on_failure(2_000 + i);
        }
        assert_eq!(b.state(2_010), BreakerState::Open);
    }

    #[test]
    fn the_failure_rate_opens_it_only_with_enough_calls() {
        let mut b = breaker();
        // 18 calls alternating: 50 % failures, never two in a row.
        for i in 0..18u64 {
            if i % 2 == 0 {
                assert_eq!(b.on_failure(i), None);
            } else {
                b.on_success(i);
            }
        }
        // 19 calls, 10 failures: over the rate but under min_calls.
        assert_eq!(b.on_failure(18), None);
        b.on_success(19);
        // 21 calls, 11 failures.
        assert_eq!(b.on_failure(20), Some(BreakerState::Open));
    }

    #[test]
    fn old_calls_leave_the_window() {
        let mut b = breaker();
        for i in 0..10u64 {
            b.on_success(i * 10);
            b.on_success(i * 10 + 1);
            assert_eq!(b.on_failure(i * 10 + 2), None);
        }
        assert_eq!(b.window_counts(100), (30, 10));
        // 31 s later the old calls are gone: one failure is 1 of 1 but under min_calls.
        assert_eq!(b.on_failure(31_000), None);
        assert_eq!(b.window_counts(31_000), (1, 1));
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_when_they_succeed() {
        let mut b = breaker();
        for i in 0..5 {
            b.on_failure(i);
        }
        assert!(!b.allows(29_999));
        assert!(b.allows(30_004));
        assert_eq!(b.state(30_004), BreakerState::HalfOpen);
        for _ in 0..3 {
            assert!(b.allows(30_005));
            b.on_dispatch(30_005);
        }
        assert!(!b.allows(30_005), "only three probes at a time");
        assert_eq!(b.on_success(30_100), None);
        assert_eq!(b.on_success(30_100), None);
        assert_eq!(b.on_success(30_100), Some(BreakerState::Closed));
        assert!(b.allows(30_101));
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let mut b = breaker();
        for i in 0..5 {
            b.on_failure(i);
        }
        let mut now = 4;
        for trip in 2..=12u64 {
            let open_for = (30_000 * (trip - 1)).min(300_000);
            now += open_for;
            assert!(b.allows(now), "trip {trip}");
            b.on_dispatch(now);
            assert_eq!(b.on_failure(now), Some(BreakerState::Open));
            let expected = (30_000 * trip).min(300_000);
            assert!(!b.allows(now + expected - 1));
            assert!(b.allows(now + expected));
        }
    }
}
