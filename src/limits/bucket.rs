//! A token bucket in exact integer arithmetic, with the time passed in (tests drive it).
//!
//! A limit of `limit` per `period` refills continuously at `limit / period` and holds at most
//! `limit`: a burst of the whole limit is allowed, then the rate. This is how OpenAI describes
//! its own limits, and what its headers report: the remaining amount, and the time until the
//! bucket is full again (`x-ratelimit-reset-*`).
//!
//! The level is kept in units of 1/`period_ms` of a token, so that one millisecond refills
//! exactly `limit` units and nothing is lost to rounding.

/// `limit` units (requests or tokens) per `period_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period_ms: u64,
}

impl Rate {
    pub const fn per_minute(limit: u64) -> Self {
        Self {
            limit,
            period_ms: 60_000,
        }
    }

    fn capacity(self) -> i128 {
        i128::from(self.limit) * i128::from(self.period_ms)
    }

    fn scaled(self, units: u64) -> i128 {
        i128::from(units) * i128::from(self.period_ms)
    }

    /// Milliseconds until `missing` scaled units have refilled, rounded up.
    fn wait_ms(self, missing: i128) -> u64 {
        if missing <= 0 || self.limit == 0 {
            return 0;
        }
        let per_ms = i128::from(self.limit);
        u64::try_from((missing + per_ms - 1) / per_ms).unwrap_or(u64::MAX)
    }
}

/// What a client is told about one limit (OpenAI's `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: u64,
    /// Whole units left now.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
}

/// The answer to a request for `cost` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Granted(Snapshot),
    /// Not now; enough will have refilled after `wait_ms`.
    Denied {
        wait_ms: u64,
        snapshot: Snapshot,
    },
    /// More than the whole limit: it can never be granted.
    TooLarge(Snapshot),
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Scaled units available; negative after usage beyond what was reserved (a debt that
    /// refills like anything else).
    level: i128,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Self {
            level: rate.capacity(),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let added = i128::from(elapsed) * i128::from(rate.limit);
        // A lowered limit (reload) clamps what was there.
        self.level = (self.level + added).min(rate.capacity());
    }

    pub fn snapshot(&mut self, rate: Rate, now_ms: u64) -> Snapshot {
        self.refill(rate, now_ms);
        let remaining = self.level.max(0) / i128::from(rate.period_ms.max(1));
        Snapshot {
            limit: rate.limit,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_ms: rate.wait_ms(rate.capacity() - self.level),
        }
    }

    /// Takes `cost` units when they are all there; never partly.
    pub fn take(&mut self, rate: Rate, cost: u64, now_ms: u64) -> Take {
        self.refill(rate, now_ms);
        let need = rate.scaled(cost);
        if cost > rate.limit {
            return Take::TooLarge(self.snapshot(rate, now_ms));
        }
        if self.level >= need {
            self.level -= need;
            return Take::Granted(self.snapshot(rate, now_ms));
        }
        Take::Denied {
            wait_ms: rate.wait_ms(need - self.level),
            snapshot: self.snapshot(rate, now_ms),
        }
    }

    /// Charges `delta` more units (positive: used beyond the reservation) or gives units back
    /// (negative). The debt is bounded by one whole limit.
    pub fn adjust(&mut self, rate: Rate, delta: i64, now_ms: u64) {
        self.refill(rate, now_ms);
        let d = i128::from(delta) * i128::from(rate.period_ms);
        self.level = (self.level - d).clamp(-rate.capacity(), rate.capacity());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RPM3: Rate = Rate::per_minute(3);

    #[test]
    fn a_full_bucket_grants_the_burst_then_denies_with_the_refill_time() {
        let mut b = Bucket::full(RPM3, 0);
        for left in [2, 1, 0] {
            match b.take(RPM3, 1, 0) {
                Take::Granted(s) => assert_eq!(s.remaining, left),
                other => panic!("{other:?}"),
            }
        }
        match b.take(RPM3, 1, 0) {
            Take::Denied { wait_ms, snapshot } => {
                assert_eq!(wait_ms, 20_000, "one request refills in 60 s / 3");
                assert_eq!(snapshot.remaining, 0);
                assert_eq!(snapshot.reset_ms, 60_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(b.take(RPM3, 1, 20_000), Take::Granted(_)));
    }

    #[test]
    fn more_than_the_limit_is_too_large_and_takes_nothing() {
        let mut b = Bucket::full(Rate::per_minute(100), 0);
        assert!(matches!(
            b.take(Rate::per_minute(100), 101, 0),
            Take::TooLarge(Snapshot { remaining: 100, .. })
        ));
    }

    #[test]
    fn refunds_fill_up_to_the_limit_and_debts_delay_the_next_grant() {
        let tpm = Rate::per_minute(1000);
        let mut b = Bucket::full(tpm, 0);
        assert!(matches!(b.take(tpm, 600, 0), Take::Granted(_)));
        b.adjust(tpm, -10_000, 0);
        assert_eq!(b.snapshot(tpm, 0).remaining, 1000, "refund is capped");
        assert!(matches!(b.take(tpm, 1000, 0), Take::Granted(_)));
        b.adjust(tpm, 500, 0);
        match b.take(tpm, 100, 0) {
            Take::Denied { wait_ms, .. } => assert_eq!(wait_ms, 36_000, "600 tokens at 1000/min"),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// However requests arrive, the units granted in a span never exceed the burst plus
        /// what refilled during the span.
        #[test]
        fn grants_never_exceed_burst_plus_refill(
            steps in proptest::collection::vec((0u64..5_000, 1u64..40), 1..200),
            limit in 1u64..100,
        ) {
            let rate = Rate::per_minute(limit);
            let mut b = Bucket::full(rate, 0);
            let (mut now, mut granted) = (0u64, 0u64);
            for (dt, cost) in steps {
                now += dt;
                if let Take::Granted(_) = b.take(rate, cost, now) {
                    granted += cost;
                }
            }
            prop_assert!(granted <= limit + limit * now / 60_000);
        }
    }
}
