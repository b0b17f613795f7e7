//! Reading single values of the file: addresses, durations, sizes, counts, limits, dollars,
//! secrets from the environment and upstream URLs. Each reports a problem at its YAML path into
//! [`Errors`] and returns a default, so that validation goes on and finds every error.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::FileLimitSet;
use super::{ConfigError, LimitSet};

/// Collects errors while walking the file.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) fn socket_addr(
    errs: &mut Errors,
    path: &str,
    value: Option<&str>,
    default: &str,
) -> Option<SocketAddr> {
    let value = value.unwrap_or(default);
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errs.push(
                path,
                format!("{value:?} is not an IP address with a port (e.g. 127.0.0.1:8080)"),
            );
            None
        }
    }
}

pub(super) fn duration(
    errs: &mut Errors,
    path: &str,
    value: Option<&str>,
    default_secs: u64,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_secs(default_secs);
    };
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errs.push(path, "must be greater than 0");
            Duration::from_secs(default_secs)
        }
        Err(e) => {
            errs.push(
                path,
                format!("{value:?} is not a duration (e.g. 3s, 500ms, 30m): {e}"),
            );
            Duration::from_secs(default_secs)
        }
    }
}

/// Like [`duration`], but `0s` is allowed (it turns the feature off).
pub(super) fn duration_or_zero(
    errs: &mut Errors,
    path: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    match value.map(humantime::parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(
                path,
                format!(
                    "{:?} is not a duration (e.g. 10s, 0s): {e}",
                    value.unwrap_or_default()
                ),
            );
            default
        }
    }
}

pub(super) fn duration_ms(
    errs: &mut Errors,
    path: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(v) => duration(errs, path, Some(v), default.as_secs().max(1)),
    }
}

pub(super) fn fraction(
    errs: &mut Errors,
    path: &str,
    value: Option<f64>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> f64 {
    match value {
        None => default,
        Some(v) if range.contains(&v) => v,
        Some(v) => {
            errs.push(
                path,
                format!("{v} is not within {}..={}", range.start(), range.end()),
            );
            default
        }
    }
}

/// Parses `8MiB`, `64KiB`, `1000`, `2MB` into bytes.
pub fn parse_size(value: &str) -> Option<usize> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: usize = digits.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// An optional limit: absent is `None`, present must be greater than 0.
pub(super) fn optional_positive(errs: &mut Errors, path: &str, value: Option<i64>) -> Option<u64> {
    match value {
        None => None,
        Some(v) if v > 0 => Some(v as u64),
        Some(_) => {
            errs.push(path, "must be greater than 0 (leave it out for no limit)");
            None
        }
    }
}

pub(super) fn limit_set(errs: &mut Errors, at: &str, l: &FileLimitSet) -> LimitSet {
    LimitSet {
        requests_per_minute: optional_positive(
            errs,
            &format!("{at}.requests_per_minute"),
            l.requests_per_minute,
        ),
        tokens_per_minute: optional_positive(
            errs,
            &format!("{at}.tokens_per_minute"),
            l.tokens_per_minute,
        ),
        concurrent_requests: optional_positive(
            errs,
            &format!("{at}.concurrent_requests"),
            l.concurrent_requests,
        ),
    }
}

/// A price or an amount of dollars: finite and not negative.
pub(super) fn dollars(errs: &mut Errors, path: &str, value: Option<f64>) -> Option<f64> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            errs.push(path, format!("{v} is not an amount of dollars (0 or more)"));
            None
        }
        v => v,
    }
}

/// The value of environment variable `name`, or an error at `path`.
pub(super) fn env_secret(errs: &mut Errors, path: &str, name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ => {
            errs.push(
                path,
                format!("environment variable {name:?} is not set or empty"),
            );
            None
        }
    }
}

pub(super) fn positive(errs: &mut Errors, path: &str, value: Option<i64>, default: u64) -> u64 {
    match value {
        None => default,
        Some(v) if v > 0 => v as u64,
        Some(_) => {
            errs.push(path, "must be greater than 0");
            default
        }
    }
}

pub(super) fn count(errs: &mut Errors, path: String, value: Option<i64>, default: u32) -> u32 {
    u32::try_from(positive(errs, &path, value, u64::from(default))).unwrap_or(u32::MAX)
}

/// Splits `http[s]://host:port[/]` into host, port and whether it is TLS. A path prefix is
/// not supported yet.
pub(super) fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!("{url:?}: a path after host:port is not supported"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} must name a port (http://host:port)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_owned(), p, tls)),
        _ => Err(format!("{url:?}: {port:?} is not a port number (1-65535)")),
    }
}

/// Defaults, from ../shared/RELIABILITY.md (what Envoy, nginx and HAProxy do).
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN: &str = "127.0.0.1:9090";
    pub const MAX_BODY_SIZE: usize = 8 * 1024 * 1024;
    pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
    pub const GRACE_PERIOD_SECS: u64 = 60;
    pub const REQUEST_BODY_SECS: u64 = 30;
    pub const REQUEST_HEADER_SECS: u64 = 10;
    pub const KEEPALIVE_IDLE_SECS: u64 = 75;
    /// nginx's `send_timeout`.
    pub const CLIENT_WRITE_SECS: u64 = 60;
    pub const CONNECT_SECS: u64 = 3;
    pub const UPSTREAM_IDLE_SECS: u64 = 60;
    pub const UPSTREAM_KEEPALIVE_POOL: usize = 1024;
    pub const LOG_LEVEL: &str = "info";
    pub const UPGRADE_SOCK: &str = "/tmp/switchyard_upgrade.sock";
    /// A weight above this makes the smooth round-robin table needlessly large.
    pub const MAX_WEIGHT: u32 = 1000;
    pub const STREAM_TOTAL_SECS: u64 = 30 * 60;
    pub const REQUEST_TOTAL_SECS: u64 = 10 * 60;
    pub const SLOW_START_SECS: u64 = 10;
    pub const SCRAPE_INTERVAL_MS: u64 = 1_000;
    pub const SESSION_HEADER: &str = "x-session-id";
    pub const DEFAULT_MAX_TOKENS: u64 = 1024;
    pub const BYTES_PER_TOKEN: f64 = 4.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn urls_need_scheme_host_and_port() {
        assert_eq!(
            parse_url("http://127.0.0.1:8001"),
            Ok(("127.0.0.1".into(), 8001, false))
        );
        assert_eq!(
            parse_url("http://gpu-1:80/"),
            Ok(("gpu-1".into(), 80, false))
        );
        assert_eq!(
            parse_url("http://[::1]:9000"),
            Ok(("::1".into(), 9000, false))
        );
        assert_eq!(parse_url("https://a:1"), Ok(("a".into(), 1, true)));
        assert!(parse_url("ftp://a:1").is_err());
        assert!(parse_url("http://a").is_err());
        assert!(parse_url("http://a:0").is_err());
        assert!(parse_url("http://a:1/v1").is_err());
    }
}
