//! The effective configuration as `GET /admin/config` shows it: every default applied, every
//! secret redacted.

use std::time::Duration;

use super::{route, AccessLog, Config, LogFormat};
use crate::routing::spec::Serve;

impl Config {
    /// The effective configuration (defaults applied) as JSON, for `GET /admin/config`.
    /// Secrets are redacted: the admin token and upstream keys are never shown; key digests
    /// are only counted.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        json!({
            "listen": self.listen.to_string(),
            "admin": self.admin.to_string(),
            "admin_token": self.admin_token.as_ref().map(|_| "<redacted>"),
            "server": {
                "threads": self.server.threads,
                "grace_period": d(self.server.grace_period),
                "upstream_keepalive_pool": self.server.upstream_keepalive_pool,
                "access_log": match self.server.access_log { AccessLog::Stdout => "stdout", AccessLog::Off => "off" },
                "log_level": self.server.log_level,
                "log_format": match self.server.log_format { LogFormat::Text => "text", LogFormat::Json => "json" },
                "upgrade_sock": self.server.upgrade_sock,
                "cors": self.server.cors.as_ref().map(|c| c.describe()),
                "tls": self.server.tls.as_ref().map(|t| json!({"cert": t.cert, "key": t.key})),
                "response_model": if self.server.public_response_model { "public" } else { "served" },
                "state_dir": self.server.state_dir,
                "cache_size": self.server.cache_size,
                "watch_config": self.server.watch_config.map(d),
                "ready_requires": self.server.ready_requires.iter().filter_map(|&i| self.models.get(i)).map(|m| m.name.as_str()).collect::<Vec<_>>(),
            },
            "limits": {
                "max_body_size": self.limits.max_body_size,
                "max_requests_per_connection": self.limits.max_requests_per_connection,
                "connections_per_ip": self.limits.connections_per_ip,
                "max_connections": self.limits.max_connections,
                "requests_per_second_per_ip": self.limits.requests_per_second_per_ip,
            },
            "otel": self.otel.as_ref().map(|o| o.describe()),
            "shared": self.shared.as_ref().map(|s| s.describe()),
            "auth": self.auth.name(),
            "tenants": self.tenants.iter().map(|t| json!({
                "name": t.name,
                "keys": t.keys.len(),
                "models": t.models.as_ref().map(|ms| ms.iter().filter_map(|&i| self.models.get(i)).map(|m| m.name.as_str()).collect::<Vec<_>>()),
                "limits": t.limits.to_json(),
                "per_model": t.per_model.iter().filter_map(|(i, l)| Some((self.models.get(*i)?.name.clone(), l.to_json()))).collect::<serde_json::Map<_, _>>(),
                "budget": t.budget.iter().map(|(p, usd)| (format!("usd_per_{}", p.name()), json!(usd))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "timeouts": {
                "request_header": d(self.timeouts.request_header),
                "request_body": d(self.timeouts.request_body),
                "keepalive_idle": d(self.timeouts.keepalive_idle),
                "client_write": d(self.timeouts.client_write),
                "connect": d(self.timeouts.connect),
                "upstream_idle": d(self.timeouts.upstream_idle),
                "stream_total": d(self.timeouts.stream_total),
                "request_total": d(self.timeouts.request_total),
            },
            "pools": self.pools.iter().map(|p| json!({
                "name": p.name,
                "model": p.served_model,
                "engine": p.engine.name(),
                "balance": p.balance.name(),
                "servers": p.servers.iter().map(|s| json!({
                    "url": s.url(),
                    "weight": s.weight.get(),
                })).collect::<Vec<_>>(),
                "health": {
                    "enabled": p.health.enabled,
                    "path": p.health.path,
                    "interval": d(p.health.interval),
                    "timeout": d(p.health.timeout),
                    "unhealthy_after": p.health.unhealthy_after,
                    "healthy_after": p.health.healthy_after,
                },
                "breaker": {
                    "failure_rate": p.breaker.failure_rate,
                    "min_calls": p.breaker.min_calls,
                    "window": d(p.breaker.window),
                    "consecutive_failures": p.breaker.consecutive,
                    "open_for": d(p.breaker.open_for),
                    "max_open_for": d(p.breaker.max_open_for),
                    "half_open_probes": p.breaker.probes,
                },
                "slow_start": d(p.slow_start),
                "panic_mode": p.panic_mode,
                "tls": {"ca_file": p.ca_file},
                "engine_metrics": p.engine_metrics.as_ref().map(|m| json!({
                    "path": m.path,
                    "interval": d(m.interval),
                })),
                "affinity": {
                    "header": p.session_header.as_str(),
                    "load_factor": p.policy.hash_load_factor,
                },
                "retry_budget": {"ratio": p.retry_budget.ratio, "min": p.retry_budget.min},
                "cost": {"input_per_mtok": p.cost.input_per_mtok, "output_per_mtok": p.cost.output_per_mtok},
                "api_key_env": p.api_key_env,
                "api_key": p.api_key.as_ref().map(|_| "<redacted>"),
                "context_window": p.context_window,
            })).collect::<Vec<_>>(),
            "models": self.models.iter().map(|m| json!({
                "name": m.name,
                "aliases": m.aliases,
                "pool": m.serve.pool().and_then(|p| self.pools.get(p)).map(|p| p.name.as_str()),
                "fallback": match &m.serve {
                    Serve::Pools { fallback, .. } => fallback.iter().filter_map(|&i| self.pools.get(i)).map(|p| p.name.as_str()).collect::<Vec<_>>(),
                    Serve::Route(_) => Vec::new(),
                },
                "route": match &m.serve {
                    Serve::Route(rules) => Some(route::to_json(rules, self)),
                    Serve::Pools { .. } => None,
                },
                "shadow": m.shadow.as_ref().map(|s| json!({
                    "to": self.models.get(s.to).map(|t| t.name.as_str()),
                    "percent": s.percent,
                    "max_inflight": s.max_inflight,
                })),
                "first_token_timeout": d(m.first_token_timeout),
                "limits": m.limits.to_json(),
                "default_max_tokens": m.default_max_tokens,
                "bytes_per_token": m.bytes_per_token,
                "cache": m.cache.map(|c| json!({
                    "ttl": d(c.ttl),
                    "max_entry": c.max_entry,
                    "always": c.always,
                    "shared_across_tenants": c.shared_across_tenants,
                    "semantic": c.semantic.map(|s| json!({
                        "model": self.models.get(s.model).map(|m| m.name.as_str()),
                        "similarity": s.similarity,
                        "budget": d(s.budget),
                        "entries": s.entries,
                    })),
                })),
            })).collect::<Vec<_>>(),
        })
    }
}
