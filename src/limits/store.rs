//! Where limiter state lives.
//!
//! A runtime resolves every limit its config names to a handle once, when it is built: a
//! [`RateLimiter`], a [`Concurrency`] gauge or a [`SpendCounter`]. Requests then only call the
//! handles; nothing is looked up by name on the request path. The handles are the store
//! interface: this in-process store gives out local ones (a mutex per bucket, exact under any
//! concurrency); a shared store (Redis) gives out handles with the same methods.
//!
//! State is keyed by what the config names (tenant, model, kind of limit), so it is bounded
//! by the config, and it survives a reload that keeps the name. Entries no runtime holds any
//! more are dropped by [`LocalStore::prune`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::bucket::{Bucket, Rate, Snapshot, Take};

use crate::lock;

/// One rate limit's bucket.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// `None` until first used: a bucket starts full at the rate of its first use.
    bucket: Mutex<Option<Bucket>>,
}

impl RateLimiter {
    fn with<R>(&self, rate: Rate, now_ms: u64, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut b = lock(&self.bucket);
        f(b.get_or_insert_with(|| Bucket::full(rate, now_ms)))
    }

    pub fn take(&self, rate: Rate, cost: u64, now_ms: u64) -> Take {
        self.with(rate, now_ms, |b| b.take(rate, cost, now_ms))
    }

    /// Charges (`delta` > 0) or refunds (`delta` < 0) units after the fact.
    pub fn adjust(&self, rate: Rate, delta: i64, now_ms: u64) {
        if delta != 0 {
            self.with(rate, now_ms, |b| b.adjust(rate, delta, now_ms));
        }
    }

    pub fn snapshot(&self, rate: Rate, now_ms: u64) -> Snapshot {
        self.with(rate, now_ms, |b| b.snapshot(rate, now_ms))
    }
}

/// Requests in flight under one concurrency limit.
#[derive(Debug, Default)]
pub struct Concurrency {
    current: AtomicU64,
}

impl Concurrency {
    /// A permit when fewer than `limit` are held; never overshoots under contention.
    pub fn acquire(self: &Arc<Self>, limit: u64) -> Option<Permit> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }
}

/// A held concurrency slot, given back on drop.
#[derive(Debug)]
pub struct Permit(Arc<Concurrency>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spend in one budget period (micro-dollars), reset when the period changes, and what
/// requests in flight have reserved of it.
#[derive(Debug, Default)]
pub struct SpendCounter {
    state: Mutex<Spend>,
}

#[derive(Debug, Default)]
struct Spend {
    period: u64,
    spent: u64,
    reserved: u64,
}

impl Spend {
    /// The state in `period` (a new period starts at zero).
    fn at(&mut self, period: u64) -> &mut Self {
        if self.period != period {
            *self = Self {
                period,
                ..Self::default()
            };
        }
        self
    }
}

/// A reservation that does not fit its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// It would fit but for what requests in flight hold: retrying soon may succeed.
    pub held: bool,
}

impl SpendCounter {
    /// Spent in `period` so far.
    pub fn spent(&self, period: u64) -> u64 {
        let s = lock(&self.state);
        if s.period == period {
            s.spent
        } else {
            0
        }
    }

    /// Reserves `micros` of `period` when what is spent and reserved leaves room for it under
    /// `limit` (and the budget is not spent already).
    pub fn reserve(&self, period: u64, limit: u64, micros: u64) -> Result<(), Full> {
        let mut guard = lock(&self.state);
        let s = guard.at(period);
        let after = s.spent.saturating_add(micros);
        if s.spent >= limit || after > limit {
            return Err(Full { held: false });
        }
        if after.saturating_add(s.reserved) > limit {
            return Err(Full { held: true });
        }
        s.reserved += micros;
        Ok(())
    }

    /// Gives back `reserved` micro-dollars reserved in period `of`, and adds `spent` to
    /// period `now`.
    pub fn settle(&self, of: u64, reserved: u64, now: u64, spent: u64) {
        let mut s = lock(&self.state);
        if s.period == of {
            s.reserved = s.reserved.saturating_sub(reserved);
        }
        let s = s.at(now);
        s.spent = s.spent.saturating_add(spent);
    }

    pub fn add(&self, period: u64, micros: u64) {
        self.settle(period, 0, period, micros);
    }

    /// (period, spent) as kept across restarts.
    fn saved(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.period, s.spent)
    }

    /// Puts back what was spent in `period` before a restart (unless this period already
    /// counts more).
    fn restore(&self, period: u64, spent: u64) {
        let mut s = lock(&self.state);
        let s = s.at(period);
        s.spent = s.spent.max(spent);
    }
}

/// Budgets' spend as the state file holds it: key → (period, micro-dollars spent).
pub type SavedSpend = std::collections::BTreeMap<String, (u64, u64)>;

/// The in-process store (the default).
#[derive(Debug, Default)]
pub struct LocalStore {
    rates: Mutex<HashMap<String, Arc<RateLimiter>>>,
    gauges: Mutex<HashMap<String, Arc<Concurrency>>>,
    spend: Mutex<HashMap<String, Arc<SpendCounter>>>,
}

fn handle<T: Default>(map: &Mutex<HashMap<String, Arc<T>>>, key: &str) -> Arc<T> {
    let mut m = lock(map);
    if let Some(h) = m.get(key) {
        return h.clone();
    }
    let h = Arc::new(T::default());
    m.insert(key.to_owned(), h.clone());
    h
}

fn prune<T>(map: &Mutex<HashMap<String, Arc<T>>>) {
    lock(map).retain(|_, h| Arc::strong_count(h) > 1);
}

impl LocalStore {
    pub fn rate(&self, key: &str) -> Arc<RateLimiter> {
        handle(&self.rates, key)
    }

    pub fn concurrency(&self, key: &str) -> Arc<Concurrency> {
        handle(&self.gauges, key)
    }

    pub fn spend(&self, key: &str) -> Arc<SpendCounter> {
        handle(&self.spend, key)
    }

    /// Every budget's spend (reservations are not kept: their requests die with the process).
    pub fn saved_spend(&self) -> SavedSpend {
        lock(&self.spend)
            .iter()
            .map(|(k, c)| (k.clone(), c.saved()))
            .filter(|(_, (_, spent))| *spent > 0)
            .collect()
    }

    /// Puts back spend saved before a restart.
    pub fn restore_spend(&self, saved: &SavedSpend) {
        for (key, &(period, spent)) in saved {
            self.spend(key).restore(period, spent);
        }
    }

    /// Drops the state of limits no runtime uses any more (after a reload removed them).
    pub fn prune(&self) {
        prune(&self.rates);
        prune(&self.gauges);
        prune(&self.spend);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        lock(&self.rates).len() + lock(&self.gauges).len() + lock(&self.spend).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_state_and_prune_drops_only_unused_entries() {
        let store = LocalStore::default();
        let a = store.rate("tenant:a:rpm");
        let rate = Rate::per_minute(2);
        assert!(matches!(a.take(rate, 2, 0), Take::Granted(_)));
        let again = store.rate("tenant:a:rpm");
        assert!(matches!(again.take(rate, 1, 0), Take::Denied { .. }));
        let b = store.rate("tenant:b:rpm");
        drop(b);
        store.prune();
        assert_eq!(store.len(), 1);
        drop((a, again));
        store.prune();
        assert!(store.is_empty());
    }

    #[test]
    fn concurrency_permits_are_exact_under_contention() {
        let c = Arc::new(Concurrency::default());
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| (0..100).filter_map(|_| c.acquire(10)).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 10);
        assert_eq!(c.current(), 10);
        drop(held);
        assert_eq!(c.current(), 0);
    }

    #[test]
    fn saved_spend_comes_back_into_the_same_period_only() {
        let store = LocalStore::default();
        let day = store.spend("tenant/t/spend/day");
        day.add(7, 500);
        let _idle = store.spend("tenant/u/spend/day");
        let saved = store.saved_spend();
        assert_eq!(saved.len(), 1, "nothing spent: nothing saved");
        let after = LocalStore::default();
        let counter = after.spend("tenant/t/spend/day");
        after.restore_spend(&saved);
        assert_eq!(counter.spent(7), 500);
        assert_eq!(counter.spent(8), 0, "a new period starts empty");
    }

    #[test]
    fn spend_resets_with_the_period() {
        let s = SpendCounter::default();
        s.add(7, 500);
        s.add(7, 250);
        assert_eq!(s.spent(7), 750);
        assert_eq!(s.spent(8), 0);
        s.add(8, 1);
        assert_eq!(s.spent(8), 1);
        assert_eq!(s.spent(7), 0);
    }
}
