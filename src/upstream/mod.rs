//! Per-server state that outlives config reloads: in-flight requests, the cooldown a server
//! asked for (429/503 with Retry-After), active health, the circuit breaker, a peak-EWMA of
//! time to first byte, the load the engine reports, and when the server came back (slow
//! start). A [`Registry`] hands out one [`ServerState`] per server id (`host:port`), so a
//! reload that keeps a server keeps its state.
//!
//! Everything read on the request path is an atomic; the breaker's state machine sits behind
//! a mutex that the common case (breaker closed) never takes to decide.

pub mod breaker;
pub mod engine;
pub mod engine_load;
pub mod health;
pub mod retry_after;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use breaker::{Breaker, BreakerSettings, BreakerState};
use engine_load::EngineLoad;
use health::Health;

/// Milliseconds on a process-wide monotonic clock (0 = first call).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Decay time of the latency EWMA: a measurement counts half after ~7 s.
const EWMA_DECAY_MS: f64 = 10_000.0;

/// What a finished attempt tells about its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (any status the server meant, 4xx included).
    Success,
    /// A server-side failure: connect error, reset, timeout, 5xx without Retry-After.
    Failure,
    /// The server asked for a pause (429, or 503 with Retry-After): not its fault.
    Neutral,
}

/// Live state of one upstream server.
#[derive(Debug)]
pub struct ServerState {
    inflight: AtomicU64,
    /// `now_ms()` before which the server gets no new requests (0: none).
    cooldown_until_ms: AtomicU64,
    /// Drained by an operator: no new requests; in-flight ones finish.
    draining: AtomicBool,
    /// `Health::code()` of the active health state.
    health: AtomicU8,
    breaker: Mutex<Breaker>,
    /// `BreakerState::code()` as of the last transition; `Closed` skips the lock.
    breaker_code: AtomicU8,
    /// Peak-EWMA of time to first byte in microseconds (f64 bits; 0: not measured yet).
    ewma_us: AtomicU64,
    ewma_at_ms: AtomicU64,
    /// Streams only: EWMA of time to first token in microseconds, and of the decode rate in
    /// tokens/s (f64 bits; 0: not measured yet). The router predicts a pool's TTFT and
    /// throughput from them.
    ttft_us: AtomicU64,
    ttft_at_ms: AtomicU64,
    decode_rate: AtomicU64,
    decode_at_ms: AtomicU64,
    /// Last engine reading: running + waiting, waiting alone, and KV usage (f64 bits).
    engine_queue: AtomicU64,
    engine_waiting: AtomicU64,
    engine_kv: AtomicU64,
    /// The KV cache's size in tokens, as the engine last reported it (0: never).
    engine_kv_tokens: AtomicU64,
    /// When the reading was taken (0: never) and the gateway's in-flight count then.
    scraped_at_ms: AtomicU64,
    inflight_at_scrape: AtomicU64,
    /// When the server came back (health up, breaker closed); 0: not ramping.
    recovered_at_ms: AtomicU64,
}

impl Default for ServerState {
    fn default() -> Self {
        Self {
            inflight: AtomicU64::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            health: AtomicU8::new(Health::Unknown.code()),
            breaker: Mutex::new(Breaker::new(BreakerSettings::default())),
            breaker_code: AtomicU8::new(BreakerState::Closed.code()),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            ttft_us: AtomicU64::new(0),
            ttft_at_ms: AtomicU64::new(0),
            decode_rate: AtomicU64::new(0),
            decode_at_ms: AtomicU64::new(0),
            engine_queue: AtomicU64::new(0),
            engine_waiting: AtomicU64::new(0),
            engine_kv: AtomicU64::new(0),
            engine_kv_tokens: AtomicU64::new(0),
            scraped_at_ms: AtomicU64::new(0),
            inflight_at_scrape: AtomicU64::new(0),
            recovered_at_ms: AtomicU64::new(0),
        }
    }
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

impl ServerState {
    /// Requests currently sent to this server and not yet finished.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped; in half-open, the request
    /// is one of the breaker's probes.
    pub fn start(self: &Arc<Self>, now_ms: u64) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        if self.breaker_code.load(Ordering::Relaxed) != BreakerState::Closed.code() {
            self.lock_breaker().on_dispatch(now_ms);
        }
        InflightGuard(self.clone())
    }

    /// Whether the server may take new requests at `now_ms` (see [`now_ms`]): not drained,
    /// not in a cooldown it asked for, not known to be down, breaker not open.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.health().takes_traffic() && self.is_usable_ignoring_health(now_ms)
    }

    /// Usable but for its health checks (a pool's panic mode): not draining, not in a
    /// cooldown, and its breaker lets requests through.
    pub fn is_usable_ignoring_health(&self, now_ms: u64) -> bool {
        !self.is_draining()
            && now_ms >= self.cooldown_until_ms.load(Ordering::Relaxed)
            && (self.breaker_code.load(Ordering::Relaxed) == BreakerState::Closed.code()
                || self.lock_breaker().allows(now_ms))
    }

    /// Milliseconds of cooldown left at `now_ms` (0 when none).
    pub fn cooldown_left_ms(&self, now_ms: u64) -> u64 {
        self.cooldown_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drains (no new requests; in-flight ones finish) or puts the server back in rotation.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Keeps new requests away for `d` from `now_ms` (never shortens a longer cooldown).
    pub fn cool_down(&self, now_ms: u64, d: Duration) {
        let until = now_ms.saturating_add(d.as_millis() as u64);
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        Health::from_code(self.health.load(Ordering::Relaxed))
    }

    /// Sets the active health state; coming back from `Unhealthy` starts the slow start.
    pub fn set_health(&self, health: Health, now_ms: u64) {
        let before = Health::from_code(self.health.swap(health.code(), Ordering::Relaxed));
        if before == Health::Unhealthy && health != Health::Unhealthy {
            self.recovered_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        }
    }

    fn lock_breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker is plain data; a panic elsewhere cannot leave it half-updated.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a pool's breaker thresholds (at runtime build); the state is kept.
    pub fn set_breaker_settings(&self, settings: &BreakerSettings) {
        let mut b = self.lock_breaker();
        if b.settings() != settings {
            b.set_settings(settings.clone());
        }
    }

    pub fn breaker_state(&self, now_ms: u64) -> BreakerState {
        if self.breaker_code.load(Ordering::Relaxed) == BreakerState::Closed.code() {
            return BreakerState::Closed;
        }
        self.lock_breaker().state(now_ms)
    }

    /// Feeds one attempt's outcome to the breaker. Returns the breaker's new state when it
    /// changed (for the log); closing after probes starts the slow start.
    pub fn record(&self, outcome: Outcome, now_ms: u64) -> Option<BreakerState> {
        let closed = self.breaker_code.load(Ordering::Relaxed) == BreakerState::Closed.code();
        // Held for a few instructions: a bucket update, sometimes a transition.
        let mut b = self.lock_breaker();
        let change = match outcome {
            Outcome::Success => b.on_success(now_ms),
            Outcome::Failure => b.on_failure(now_ms),
            Outcome::Neutral => None,
        };
        if let Some(state) = change {
            self.breaker_code.store(state.code(), Ordering::Relaxed);
            if state == BreakerState::Closed && !closed {
                self.recovered_at_ms.store(now_ms.max(1), Ordering::Relaxed);
            }
        }
        change
    }

    /// An active health probe passed: an open breaker goes half-open (see
    /// [`Breaker::on_probe_passed`]). Returns the new state when it changed.
    pub fn probe_passed(&self) -> Option<BreakerState> {
        if self.breaker_code.load(Ordering::Relaxed) == BreakerState::Closed.code() {
            return None;
        }
        let change = self.lock_breaker().on_probe_passed();
        if let Some(state) = change {
            self.breaker_code.store(state.code(), Ordering::Relaxed);
        }
        change
    }

    /// A server that just joined its pool (found by DNS discovery) ramps up as one that came
    /// back does.
    pub fn start_slow_start(&self, now_ms: u64) {
        self.recovered_at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Share of traffic a recovering server may take at `now_ms`: ramps from 10 % to 100 %
    /// over `slow_start` after it came back; 1 when not ramping.
    pub fn ramp(&self, now_ms: u64, slow_start: Duration) -> f64 {
        let since = self.recovered_at_ms.load(Ordering::Relaxed);
        if since == 0 || slow_start.is_zero() {
            return 1.0;
        }
        let elapsed = now_ms.saturating_sub(since) as f64;
        let total = slow_start.as_millis() as f64;
        if elapsed >= total {
            self.recovered_at_ms.store(0, Ordering::Relaxed);
            return 1.0;
        }
        (elapsed / total).max(0.1)
    }

    /// Adds a time-to-first-byte sample to the peak-EWMA: a slower sample takes over at once,
    /// a faster one is blended in with a weight that grows with the time since the last.
    pub fn observe_ttfb(&self, sample: Duration, now_ms: u64) {
        let sample_us = sample.as_micros() as f64;
        let prev = load_f64(&self.ewma_us);
        let at = self.ewma_at_ms.swap(now_ms, Ordering::Relaxed);
        let next = if prev == 0.0 || sample_us > prev {
            sample_us
        } else {
            let w = (-(now_ms.saturating_sub(at) as f64) / EWMA_DECAY_MS).exp();
            prev * w + sample_us * (1.0 - w)
        };
        store_f64(&self.ewma_us, next);
    }

    /// The latency estimate in milliseconds (`None` before the first sample).
    pub fn ewma_ms(&self) -> Option<f64> {
        let us = load_f64(&self.ewma_us);
        (us > 0.0).then_some(us / 1000.0)
    }

    /// Adds a stream's time to first token to its EWMA (each sample's weight grows with the
    /// time since the last one, as in [`Self::observe_ttfb`], without the jump to peaks).
    pub fn observe_ttft(&self, sample: Duration, now_ms: u64) {
        blend(
            &self.ttft_us,
            &self.ttft_at_ms,
            sample.as_micros() as f64,
            now_ms,
        );
    }

    /// Time to first token of streams, EWMA in milliseconds (`None` before the first).
    pub fn ttft_ms(&self) -> Option<f64> {
        let us = load_f64(&self.ttft_us);
        (us > 0.0).then_some(us / 1000.0)
    }

    /// Adds a stream's decode rate (tokens/s after its first token) to its EWMA.
    pub fn observe_decode_rate(&self, tokens_per_s: f64, now_ms: u64) {
        if tokens_per_s.is_finite() && tokens_per_s > 0.0 {
            blend(&self.decode_rate, &self.decode_at_ms, tokens_per_s, now_ms);
        }
    }

    /// Decode rate of streams, EWMA in tokens/s (`None` before the first).
    pub fn decode_rate(&self) -> Option<f64> {
        let r = load_f64(&self.decode_rate);
        (r > 0.0).then_some(r)
    }

    /// Predicted time to first token of a new request, ms: the streams' TTFT EWMA (else the
    /// time-to-first-byte EWMA), once more for each request waiting in the engine's queue
    /// (a fresh reading no older than `max_age_ms`). `None` before any measurement.
    pub fn predicted_ttft_ms(&self, now_ms: u64, max_age_ms: u64) -> Option<f64> {
        let base = self.ttft_ms().or_else(|| self.ewma_ms())?;
        let at = self.scraped_at_ms.load(Ordering::Relaxed);
        let waiting = if at != 0 && now_ms.saturating_sub(at) <= max_age_ms {
            load_f64(&self.engine_waiting)
        } else {
            0.0
        };
        Some(base * (1.0 + waiting))
    }

    /// Stores an engine reading taken at `now_ms`.
    pub fn set_engine_load(&self, load: EngineLoad, now_ms: u64) {
        store_f64(&self.engine_queue, load.running + load.waiting);
        store_f64(&self.engine_waiting, load.waiting);
        // NaN: the engine does not report it.
        store_f64(&self.engine_kv, load.kv_usage.unwrap_or(f64::NAN));
        if load.kv_tokens > 0.0 {
            store_f64(&self.engine_kv_tokens, load.kv_tokens);
        }
        self.inflight_at_scrape
            .store(self.inflight(), Ordering::Relaxed);
        self.scraped_at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Forgets the engine reading (scrapes failing): the load falls back to in-flight.
    pub fn clear_engine_load(&self) {
        self.scraped_at_ms.store(0, Ordering::Relaxed);
    }

    /// The load `least_load` compares: the engine's running + waiting requests, moved by how
    /// the gateway's own in-flight count changed since that reading (requests sent since add,
    /// requests finished since subtract), never below that in-flight count, with its KV usage
    /// (0..1) as a tie-breaker. Without a reading no older than `max_age_ms`: the gateway's own
    /// in-flight count.
    ///
    /// Counting only what was sent since, as this did first, kept a server's load at its last
    /// reading however many of its requests had finished: between two scrapes, the servers
    /// that had been busy at the reading looked busy to the end, and the others took every
    /// new request, in turn (`benches/prefix.sh`: least_load behind round robin).
    pub fn load(&self, now_ms: u64, max_age_ms: u64) -> f64 {
        let inflight = self.inflight() as f64;
        let at = self.scraped_at_ms.load(Ordering::Relaxed);
        if at == 0 || now_ms.saturating_sub(at) > max_age_ms {
            return inflight;
        }
        let then = self.inflight_at_scrape.load(Ordering::Relaxed) as f64;
        let queue = (load_f64(&self.engine_queue) + inflight - then).max(inflight);
        queue + self.kv_usage().unwrap_or(0.0)
    }

    /// The KV usage of the last reading, if the engine reports one.
    fn kv_usage(&self) -> Option<f64> {
        Some(load_f64(&self.engine_kv)).filter(|kv| !kv.is_nan())
    }

    /// The size of the server's KV cache in tokens, once its engine reported it (it does not
    /// change while the engine runs; a stale reading still says it).
    pub fn kv_capacity_tokens(&self) -> Option<f64> {
        Some(load_f64(&self.engine_kv_tokens)).filter(|t| *t > 0.0)
    }

    /// The last engine reading, when there is a fresh one: running + waiting, and KV usage when
    /// the engine reports it.
    pub fn engine_load(&self, now_ms: u64, max_age_ms: u64) -> Option<(f64, Option<f64>)> {
        let at = self.scraped_at_ms.load(Ordering::Relaxed);
        (at != 0 && now_ms.saturating_sub(at) <= max_age_ms)
            .then(|| (load_f64(&self.engine_queue), self.kv_usage()))
    }
}

/// Blends `sample` into the EWMA at `value` last updated at `at`: the first sample is taken
/// whole; later ones weigh `1 - exp(-Δt / 10 s)`.
fn blend(value: &AtomicU64, at: &AtomicU64, sample: f64, now_ms: u64) {
    let prev = load_f64(value);
    let last = at.swap(now_ms, Ordering::Relaxed);
    let next = if prev == 0.0 {
        sample
    } else {
        let w = (-(now_ms.saturating_sub(last) as f64) / EWMA_DECAY_MS).exp();
        prev * w + sample * (1.0 - w)
    };
    store_f64(value, next);
}

/// Decrements the server's in-flight count on drop (including when the client goes away).
#[must_use = "the request counts as in flight only while the guard lives"]
#[derive(Debug)]
pub struct InflightGuard(Arc<ServerState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server states by id, shared by every runtime built from successive configs.
#[derive(Debug, Default)]
pub struct Registry {
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
}

impl Registry {
    /// The state for `id`, created on first use. Only called while building a runtime.
    pub fn get(&self, id: &str) -> Arc<ServerState> {
        let mut map = match self.servers.lock() {
            Ok(m) => m,
            // A panic while holding this lock cannot leave the map inconsistent (one insert).
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests;
