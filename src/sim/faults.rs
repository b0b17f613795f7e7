//! Faults the simulator injects: for a whole run (`--fault`) or one request (`x-sim-fault`
//! header, same syntax, overriding the run's faults item by item).
//!
//! Syntax: comma-separated items — `status=503`, `retry_after=2` (sent verbatim, so an
//! HTTP-date or garbage works too), `retry_after_ms=1500`, `refuse` (close the connection
//! without an answer), `hang` (never answer), `first_token_delay_ms=500`, `die_after=5`
//! (cut the connection after 5 tokens), `stall_after=1` (streams: go silent after 1 token,
//! connection open), `garbage` (streams: a malformed event after the first token; `garbage=0`
//! in place of the first one).

use std::time::Duration;

/// The header that carries per-request faults.
pub const HEADER: &str = "x-sim-fault";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub retry_after_ms: Option<u64>,
    pub refuse: bool,
    pub hang: bool,
    pub first_token_delay: Option<Duration>,
    pub die_after: Option<u32>,
    /// Streams: after this many tokens, go silent with the connection open.
    pub stall_after: Option<u32>,
    /// Streams: a malformed event after this many tokens.
    pub garbage: Option<u32>,
}

impl Faults {
    /// Parses a fault spec; errors name the item.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Self::default();
        f.apply(spec)?;
        Ok(f)
    }

    /// Applies a spec on top of these faults.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("fault {key}: {v:?} is not a number"))
            };
            match key {
                "status" => {
                    let code = num(value)?;
                    if !(100..=599).contains(&code) {
                        return Err(format!("fault status: {code} is not an HTTP status"));
                    }
                    self.status = Some(code as u16);
                }
                "retry_after" => self.retry_after = Some(value.to_owned()),
                "retry_after_ms" => self.retry_after_ms = Some(num(value)?),
                "refuse" => self.refuse = true,
                "hang" => self.hang = true,
                "first_token_delay_ms" => {
                    self.first_token_delay = Some(Duration::from_millis(num(value)?));
                }
                "die_after" => self.die_after = Some(num(value)? as u32),
                "stall_after" => self.stall_after = Some(num(value)? as u32),
                "garbage" if value.is_empty() => self.garbage = Some(1),
                "garbage" => self.garbage = Some(num(value)? as u32),
                _ => return Err(format!("unknown fault {key:?}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_and_later_specs_override() {
        let mut f = Faults::parse("status=503, retry_after=2").unwrap();
        assert_eq!(f.status, Some(503));
        assert_eq!(f.retry_after.as_deref(), Some("2"));
        f.apply("die_after=4,garbage").unwrap();
        assert_eq!(f.die_after, Some(4));
        assert_eq!(f.garbage, Some(1));
        f.apply("garbage=0").unwrap();
        assert_eq!(f.garbage, Some(0));
        assert!(Faults::parse("status=7").is_err());
        assert!(Faults::parse("explode").is_err());
        assert!(Faults::parse("die_after=x").is_err());
    }
}
