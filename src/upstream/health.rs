//! Active health: what one probe result does to a server's health state. The probing itself
//! (HTTP GET on the engine's path, with jitter and a timeout) lives in `upstream::monitor`.
//!
//! A server starts `Unknown`, which takes traffic (as Pingora's backends start healthy). It
//! turns `Unhealthy` after `unhealthy_after` failed probes in a row, or at once when it
//! refuses connections (nothing listens: no point waiting for more evidence), and `Healthy`
//! again after `healthy_after` good probes in a row.
//!
//! While a server is down it is probed faster ([`HealthTracker::next_wait`]): after a second,
//! then backing off to the interval, and every second while it proves itself again, so that
//! a server that was refused at start is in rotation about two seconds after it listens.

use std::time::Duration;

use super::engine::Engine;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Active probing on or off (`health.enabled`); off leaves servers `Unknown`.
    pub enabled: bool,
    /// Path probed with GET; 2xx is healthy.
    pub path: String,
    /// Time between probes; each wait is randomised by ±10 %.
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

impl HealthSettings {
    /// RELIABILITY.md's defaults: every 5 s, 2 s timeout, down after 3, up after 2.
    pub fn for_engine(engine: Engine) -> Self {
        Self {
            enabled: true,
            path: default_path(engine).to_owned(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }
}

/// The health endpoint each engine serves.
pub fn default_path(engine: Engine) -> &'static str {
    match engine {
        Engine::Vllm | Engine::Sglang | Engine::Tgi | Engine::Llamacpp => "/health",
        Engine::Ollama => "/api/version",
        // Any OpenAI-compatible server lists its models.
        Engine::Openai => "/v1/models",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Gauge value: 1 healthy or unknown (takes traffic), 0 unhealthy.
    pub fn takes_traffic(self) -> bool {
        self != Self::Unhealthy
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Healthy => 1,
            Self::Unhealthy => 2,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }
}

/// The first wait after a server went down, doubled after each failed probe up to the interval.
const DOWN_PROBE_FIRST: Duration = Duration::from_secs(1);

/// The result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ok,
    /// Timeout, reset, non-2xx.
    Failed,
    /// Connection refused: nothing listens there.
    Refused,
}

/// Counts probe results into a health state.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    state: Health,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    pub fn new(state: Health) -> Self {
        Self {
            state,
            successes: 0,
            failures: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// How long to wait before the next probe: the interval while the server is up; while it
    /// is down, one second after each failure doubled per failure in a row (up to the
    /// interval), and one second while it passes probes to come back.
    pub fn next_wait(&self, settings: &HealthSettings) -> Duration {
        if self.state != Health::Unhealthy {
            return settings.interval;
        }
        let fast = if self.successes > 0 {
            DOWN_PROBE_FIRST
        } else {
            DOWN_PROBE_FIRST.saturating_mul(1 << self.failures.saturating_sub(1).min(8))
        };
        fast.min(settings.interval)
    }

    /// Records a probe; returns the new state when it changed.
    pub fn record(&mut self, probe: Probe, settings: &HealthSettings) -> Option<Health> {
        let next = match probe {
            Probe::Ok => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                match self.state {
                    Health::Unknown => Health::Healthy,
                    Health::Unhealthy if self.successes >= settings.healthy_after => {
                        Health::Healthy
                    }
                    s => s,
                }
            }
            Probe::Failed | Probe::Refused => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if probe == Probe::Refused || self.failures >= settings.unhealthy_after {
                    Health::Unhealthy
                } else {
                    self.state
                }
            }
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings::for_engine(Engine::Vllm)
    }

    #[test]
    fn down_after_n_failures_up_after_m_successes() {
        let s = settings();
        let mut t = HealthTracker::new(Health::Unknown);
        assert_eq!(t.record(Probe::Ok, &s), Some(Health::Healthy));
        assert_eq!(t.record(Probe::Failed, &s), None);
        assert_eq!(t.record(Probe::Failed, &s), None);
        assert_eq!(t.record(Probe::Failed, &s), Some(Health::Unhealthy));
        assert_eq!(t.record(Probe::Ok, &s), None);
        assert_eq!(
            t.record(Probe::Failed, &s),
            None,
            "a failure resets the count"
        );
        assert_eq!(t.record(Probe::Ok, &s), None);
        assert_eq!(t.record(Probe::Ok, &s), Some(Health::Healthy));
    }

    #[test]
    fn a_failure_between_failures_resets_nothing_but_a_success_does() {
        let s = settings();
        let mut t = HealthTracker::new(Health::Healthy);
        t.record(Probe::Failed, &s);
        t.record(Probe::Failed, &s);
        t.record(Probe::Ok, &s);
        t.record(Probe::Failed, &s);
        t.record(Probe::Failed, &s);
        assert_eq!(t.state(), Health::Healthy);
        assert_eq!(t.record(Probe::Failed, &s), Some(Health::Unhealthy));
    }

    #[test]
    fn a_refused_connection_is_down_at_once() {
        let s = settings();
        let mut t = HealthTracker::new(Health::Unknown);
        assert_eq!(t.record(Probe::Refused, &s), Some(Health::Unhealthy));
        let mut t = HealthTracker::new(Health::Healthy);
        assert_eq!(t.record(Probe::Refused, &s), Some(Health::Unhealthy));
    }

    #[test]
    fn a_server_that_is_down_is_probed_faster_until_it_is_back() {
        let s = settings();
        let mut t = HealthTracker::new(Health::Unknown);
        assert_eq!(t.next_wait(&s), s.interval);
        t.record(Probe::Refused, &s);
        let secs = |t: &HealthTracker| t.next_wait(&s).as_secs_f64();
        assert_eq!(secs(&t), 1.0);
        t.record(Probe::Refused, &s);
        assert_eq!(secs(&t), 2.0);
        t.record(Probe::Failed, &s);
        assert_eq!(secs(&t), 4.0);
        t.record(Probe::Failed, &s);
        assert_eq!(t.next_wait(&s), s.interval, "backed off to the interval");
        for _ in 0..20 {
            t.record(Probe::Failed, &s);
        }
        assert_eq!(t.next_wait(&s), s.interval);
        // Coming back: the second good probe follows the first a second later.
        t.record(Probe::Ok, &s);
        assert_eq!(secs(&t), 1.0);
        assert_eq!(t.record(Probe::Ok, &s), Some(Health::Healthy));
        assert_eq!(t.next_wait(&s), s.interval);
        // An interval under a second is never lengthened.
        let quick = HealthSettings {
            interval: Duration::from_millis(200),
            ..settings()
        };
        let mut t = HealthTracker::new(Health::Unknown);
        t.record(Probe::Refused, &quick);
        assert_eq!(t.next_wait(&quick), quick.interval);
    }

    #[test]
    fn engines_have_their_own_paths() {
        assert_eq!(default_path(Engine::Vllm), "/health");
        assert_eq!(default_path(Engine::Ollama), "/api/version");
        assert_eq!(default_path(Engine::Openai), "/v1/models");
    }
}
