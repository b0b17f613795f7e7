//! `shared:`: the store a fleet of gateways shares (Redis) for limits, budgets and the
//! response cache. Absent: every limit lives in the process (the default).

use std::time::Duration;

use super::file::FileShared;
use super::values::{duration, env_secret, positive, Errors};

/// What a request is answered with when the shared store cannot answer within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Each instance's own buckets, each sized limit / `expected_instances`.
    Local,
    /// Admit without a limit.
    Open,
    /// Refuse: 503 with `x-should-retry: true`.
    Closed,
}

impl OnError {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A password kept out of `Debug` and `/admin/config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// `redis://host:port/db` or `redis+unix:///path/redis.sock`, with no password in it.
    pub redis: String,
    /// From the environment variable `password_env` names.
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    /// Put before every key, so that several fleets (or other programs) can share a Redis.
    pub key_prefix: String,
    /// Longest a request waits for the store before `on_error` decides.
    pub timeout: Duration,
    pub on_error: OnError,
    /// How many gateways share the limits: `on_error: local` gives each 1/n of a limit.
    pub expected_instances: u64,
    /// Concurrency permits and budget reservations expire this long after their holder last
    /// renewed them (it renews every third of it), so a crashed gateway's go back.
    pub lease: Duration,
}

impl SharedSettings {
    /// As `/admin/config` shows it: the password never.
    pub fn describe(&self) -> serde_json::Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        serde_json::json!({
            "redis": self.redis,
            "password_env": self.password_env,
            "key_prefix": self.key_prefix,
            "timeout": d(self.timeout),
            "on_error": self.on_error.name(),
            "expected_instances": self.expected_instances,
            "lease": d(self.lease),
        })
    }
}

pub(super) fn build(errs: &mut Errors, file: Option<&FileShared>) -> Option<SharedSettings> {
    let file = file?;
    let redis = match file.redis.as_deref() {
        None => {
            errs.push(
                "shared.redis",
                "is required (e.g. redis://127.0.0.1:6379/0)",
            );
            String::new()
        }
        Some(url) => {
            if let Err(message) = check_url(url) {
                errs.push("shared.redis", message);
            }
            url.to_owned()
        }
    };
    let password = file
        .password_env
        .as_deref()
        .and_then(|name| env_secret(errs, "shared.password_env", name))
        .map(Secret);
    let on_error = match file.on_error.as_deref() {
        None | Some("local") => OnError::Local,
        Some("open") => OnError::Open,
        Some("closed") => OnError::Closed,
        Some(other) => {
            errs.push(
                "shared.on_error",
                format!("{other:?} is not one of: local, open, closed"),
            );
            OnError::Local
        }
    };
    let timeout = match file.timeout.as_deref() {
        None => Duration::from_millis(5),
        some => duration(errs, "shared.timeout", some, 1),
    };
    let lease = duration(errs, "shared.lease", file.lease.as_deref(), 30);
    if lease < Duration::from_secs(3) {
        errs.push(
            "shared.lease",
            "must be at least 3s (it is renewed every third of it)",
        );
    }
    Some(SharedSettings {
        redis,
        password,
        password_env: file.password_env.clone(),
        key_prefix: file
            .key_prefix
            .clone()
            .unwrap_or_else(|| "switchyard:".to_owned()),
        timeout,
        on_error,
        expected_instances: positive(
            errs,
            "shared.expected_instances",
            file.expected_instances,
            1,
        ),
        lease,
    })
}

/// A `redis://` URL Switchyard can use, without a password (credentials come from the
/// environment, so that the config file can be shown and mounted freely).
fn check_url(url: &str) -> Result<(), String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("{url:?} is not a Redis URL (e.g. redis://127.0.0.1:6379/0): {e}"))?;
    if !["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(format!(
            "{url:?}: redis:// or redis+unix:// (a Unix socket) only; no TLS in this build: use a Redis beside the gateway or a TLS sidecar"
        ));
    }
    if info.redis_settings().password().is_some() {
        return Err(
            "a password in the URL would be shown and logged: name an environment variable holding it in shared.password_env"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const SAMPLE: &str = "pools:\n  p:\n    model: m\n    servers: [{url: \"http://127.0.0.1:1\"}]\nmodels:\n  m:\n    pool: p\n";

    fn errors(shared: &str) -> Vec<String> {
        match parse(&format!("{SAMPLE}shared:\n{shared}")) {
            Ok(_) => vec![],
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_and_a_password_only_from_the_environment() {
        let c = parse(&format!(
            "{SAMPLE}shared: {{redis: \"redis://127.0.0.1:6379/0\"}}\n"
        ))
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!(s.key_prefix, "switchyard:");
        assert_eq!(s.timeout, Duration::from_millis(5));
        assert_eq!(s.on_error, OnError::Local);
        assert_eq!(
            (s.expected_instances, s.lease),
            (1, Duration::from_secs(30))
        );
        let in_url = errors("  redis: \"redis://:hunter2@127.0.0.1:6379\"\n");
        assert!(in_url[0].contains("shared.password_env"), "{in_url:?}");
        assert!(!in_url[0].contains("hunter2"), "{in_url:?}");
        std::env::set_var("SWITCHYARD_TEST_REDIS_PASSWORD", "hunter2");
        let c = parse(&format!(
            "{SAMPLE}shared: {{redis: \"redis://127.0.0.1:6379\", password_env: SWITCHYARD_TEST_REDIS_PASSWORD}}\n"
        ))
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!(s.password, Some(Secret("hunter2".to_owned())));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.describe().to_string().contains("hunter2"));
    }

    #[test]
    fn bad_values_are_named_with_their_paths() {
        let errs = errors(
            "  redis: \"http://x\"\n  on_error: maybe\n  lease: 1s\n  expected_instances: 0\n",
        );
        for path in [
            "shared.redis",
            "shared.on_error",
            "shared.lease",
            "shared.expected_instances",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(path)), "{path}: {errs:?}");
        }
        assert!(errors("  redis: \"redis+unix:///run/redis.sock\"\n").is_empty());
        assert!(errors("  key_prefix: x\n")[0].starts_with("shared.redis"));
    }
}
