//! How long a server asked not to be sent traffic: `retry-after-ms` (milliseconds, as OpenAI
//! and vLLM send it), else `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
//! Garbage is ignored; the result is capped so a confused server cannot take itself out for
//! hours.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest cooldown honoured.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);

/// The cooldown a response asks for, if any; `now` is the wall clock (for HTTP-dates).
pub fn cooldown(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let d = if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        (ms.is_finite() && ms > 0.0).then(|| Duration::from_secs_f64(ms.min(1e9) / 1e3))?
    } else {
        let v = text("retry-after")?;
        if let Ok(secs) = v.parse::<u64>() {
            Duration::from_secs(secs)
        } else {
            httpdate::parse_http_date(v)
                .ok()?
                .duration_since(now)
                .ok()?
        }
    };
    (!d.is_zero()).then(|| d.min(MAX_COOLDOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn seconds_milliseconds_and_http_dates_are_understood() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            cooldown(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            cooldown(
                &headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            cooldown(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn garbage_past_dates_and_zero_are_ignored_and_huge_values_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for v in ["soon", "-5", "0", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            assert_eq!(cooldown(&headers(&[("retry-after", v)]), now), None, "{v}");
        }
        assert_eq!(cooldown(&headers(&[("retry-after-ms", "NaN")]), now), None);
        assert_eq!(
            cooldown(&headers(&[("retry-after", "86400")]), now),
            Some(MAX_COOLDOWN)
        );
        assert_eq!(cooldown(&HeaderMap::new(), now), None);
    }
}
