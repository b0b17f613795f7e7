//! `server.cors`: which browser origins may call the API. The gateway answers preflights itself
//! and sets the CORS headers of every answer from this, never from an upstream (llama.cpp sends
//! an empty `access-control-allow-origin` on everything).

use std::time::Duration;

use super::file::FileCors;
use super::values::{duration, Errors};
use http::HeaderValue;

/// The compiled policy: the header values are built once, at load.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub max_age: HeaderValue,
}

/// Methods of the public API.
pub const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, POST, OPTIONS");
/// The gateway's response headers a browser script may read.
pub const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static(
    "x-request-id, x-switchyard-model, x-switchyard-route, x-switchyard-overhead-us, \
     retry-after, x-should-retry, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, \
     x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, \
     x-ratelimit-reset-tokens",
);

const DEFAULT_MAX_AGE_SECS: u64 = 600;

impl Cors {
    /// Whether a request from `origin` gets CORS headers.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin || self.origins.iter().any(|o| o == origin)
    }

    /// `*` allowed every origin.
    pub fn any_origin(&self) -> bool {
        self.any_origin
    }

    /// As `/admin/config` shows it.
    pub fn describe(&self) -> serde_json::Value {
        let text = |v: &HeaderValue| v.to_str().unwrap_or_default().to_owned();
        let mut origins: Vec<String> = self.origins.iter().map(text).collect();
        if self.any_origin {
            origins.push("*".to_owned());
        }
        serde_json::json!({
            "allow_origins": origins,
            "allow_headers": self.allow_headers.as_ref().map(text),
            "max_age_secs": text(&self.max_age),
        })
    }
}

pub(super) fn build(errs: &mut Errors, file: Option<&FileCors>) -> Option<Cors> {
    let file = file?;
    let origins = file.allow_origins.as_deref().unwrap_or_default();
    if origins.is_empty() {
        errs.push(
            "server.cors.allow_origins",
            "must list at least one origin (e.g. https://app.example.com), or \"*\"",
        );
    }
    let any_origin = origins.iter().any(|o| o == "*");
    let mut values = Vec::new();
    for (i, o) in origins.iter().enumerate().filter(|(_, o)| *o != "*") {
        let path = format!("server.cors.allow_origins[{i}]");
        let well_formed = ["http://", "https://"].iter().any(|s| {
            o.strip_prefix(s)
                .is_some_and(|h| !h.is_empty() && !h.contains('/'))
        });
        match HeaderValue::from_str(o) {
            Ok(v) if well_formed => values.push(v),
            _ => errs.push(
                path,
                format!("{o:?} is not an origin: scheme://host[:port], no path (e.g. https://app.example.com)"),
            ),
        }
    }
    let allow_headers = file.allow_headers.as_ref().and_then(|names| {
        let bad = names
            .iter()
            .position(|n| n.is_empty() || http::HeaderName::from_bytes(n.as_bytes()).is_err());
        if let Some(i) = bad {
            errs.push(
                format!("server.cors.allow_headers[{i}]"),
                format!("{:?} is not a header name", names[i]),
            );
            return None;
        }
        HeaderValue::from_str(&names.join(", ")).ok()
    });
    let max_age: Duration = duration(
        errs,
        "server.cors.max_age",
        file.max_age.as_deref(),
        DEFAULT_MAX_AGE_SECS,
    );
    Some(Cors {
        any_origin,
        origins: values,
        allow_headers,
        max_age: HeaderValue::from(max_age.as_secs()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> (Option<Cors>, Vec<String>) {
        let file: FileCors = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let c = build(&mut errs, Some(&file));
        (c, errs.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn origins_match_exactly_and_star_matches_all() {
        let (c, errs) = cors("allow_origins: [https://a.example, 'http://b.example:8080']");
        assert!(errs.is_empty(), "{errs:?}");
        let c = c.unwrap();
        assert!(c.allows(&HeaderValue::from_static("https://a.example")));
        assert!(c.allows(&HeaderValue::from_static("http://b.example:8080")));
        assert!(!c.allows(&HeaderValue::from_static("https://a.example.evil")));
        assert!(!c.allows(&HeaderValue::from_static("http://a.example")));
        assert!(!c.any_origin());
        assert_eq!(c.max_age, "600");
        let (c, _) =
            cors("allow_origins: ['*']\nmax_age: 1h\nallow_headers: [authorization, content-type]");
        let c = c.unwrap();
        assert!(c.allows(&HeaderValue::from_static("https://anything")));
        assert_eq!(c.max_age, "3600");
        assert_eq!(c.allow_headers.unwrap(), "authorization, content-type");
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let (_, errs) = cors("allow_origins: []");
        assert!(errs[0].contains("server.cors.allow_origins"), "{errs:?}");
        let (_, errs) =
            cors("allow_origins: [https://ok.example, 'https://x.example/path', app.example]\nallow_headers: ['bad header']\nmax_age: soon");
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("allow_origins[1]"), "{errs:?}");
        assert!(errs[1].contains("allow_origins[2]"), "{errs:?}");
        assert!(errs[2].contains("allow_headers[0]"), "{errs:?}");
        assert!(errs[3].contains("server.cors.max_age"), "{errs:?}");
    }
}
