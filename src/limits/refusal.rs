//! Why a request was refused, and how the refusal's headers are written.

use super::budget::Period;
use super::RateHeaders;

/// Why a request was refused, with the headers to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub headers: RateHeaders,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    Requests {
        wait_ms: u64,
    },
    Tokens {
        wait_ms: u64,
    },
    TooLarge {
        limit: u64,
        requested: u64,
    },
    Concurrency {
        limit: u64,
    },
    Budget {
        period: Period,
        retry_after_secs: u64,
        /// It would fit but for what requests in flight hold.
        held: bool,
    },
}

impl RefusalReason {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests_per_minute",
            Self::Tokens { .. } => "tokens_per_minute",
            Self::TooLarge { .. } => "request_too_large",
            Self::Concurrency { .. } => "concurrent_requests",
            Self::Budget { .. } => "budget_exceeded",
        }
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's format, whole units):
/// `0s`, `250ms`, `1s`, `6m0s`, `1h2m3s`. Above a second it is rounded up.
pub fn reset_text(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_are_written_as_openai_does() {
        assert_eq!(reset_text(0), "0s");
        assert_eq!(reset_text(250), "250ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1001), "2s");
        assert_eq!(reset_text(360_000), "6m0s");
        assert_eq!(reset_text(3_723_000), "1h2m3s");
    }
}
