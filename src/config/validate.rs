//! File types → typed [`Config`]. Every check runs, every failure is kept, and each names the
//! YAML path it is about (`pools.llama-8b.servers[1].weight: must be greater than 0`). Nothing
//! here opens a socket or resolves a name: `switchyard check` must be safe anywhere.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use super::file::{FileConfig, FileLimits, FilePool, FileTimeouts};
use super::values::defaults;
pub use super::values::parse_size;
use super::values::{
    count, dollars, duration, duration_ms, duration_or_zero, env_secret, fraction,
    optional_positive, parse_url, positive, socket_addr, Errors,
};
use super::{
    Config, ConfigError, DnsSource, Limits, Pool, RetryBudget, ScrapeSettings, ServerSpec, Timeouts,
};
use crate::balance::{Policy, PolicySettings, PrefixSettings};
use crate::routing::Cost;
use crate::upstream::breaker::BreakerSettings;
use crate::upstream::engine::Engine;
use crate::upstream::health::HealthSettings;

/// Validates a parsed file into a [`Config`], or returns every error found.
pub fn validate(file: FileConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let listen = socket_addr(
        &mut errs,
        "listen",
        file.listen.as_deref(),
        defaults::LISTEN,
    );
    let admin = socket_addr(&mut errs, "admin", file.admin.as_deref(), defaults::ADMIN);
    if let (Some(l), Some(a)) = (listen, admin) {
        if l == a && l.port() != 0 {
            errs.push(
                "admin",
                "must differ from listen (admin never shares the public port)",
            );
        }
    }
    let mut server = super::server::settings(&mut errs, &file.server);
    let admin_token = file
        .admin_token_env
        .as_deref()
        .and_then(|name| env_secret(&mut errs, "admin_token_env", name));
    let limits = limits(&mut errs, &file.limits);
    let timeouts = timeouts(&mut errs, &file.timeouts);
    let pools: Vec<Pool> = file
        .pools
        .iter()
        .filter_map(|(name, pool)| self::pool(&mut errs, name, pool))
        .collect();
    let models = super::models::validate(&mut errs, &file, &pools, timeouts.upstream_idle);
    if file.models.is_empty() {
        errs.push("models", "at least one model is required");
    }
    // Routes hold model and pool indices as u16 (they live in every request's context).
    for (what, n) in [("pools", file.pools.len()), ("models", file.models.len())] {
        if n > usize::from(u16::MAX) {
            errs.push(
                what,
                format!("at most {} are supported (there are {n})", u16::MAX),
            );
        }
    }
    for (i, name) in file.server.ready_requires.iter().enumerate() {
        match super::tenants::model_index(&models, name) {
            Some(m) => server.ready_requires.push(m),
            None if file.models.contains_key(name.as_str()) => {}
            None => errs.push(
                format!("server.ready_requires[{i}]"),
                format!("no model or alias named {name:?}"),
            ),
        }
    }
    let (auth, tenants) = super::tenants::validate(&mut errs, &file, &models);
    let classifiers = super::classify::validate(&mut errs, &file, &models);
    let otel = super::otel::build(&mut errs, file.otel.as_ref());
    let shared = super::shared::build(&mut errs, file.shared.as_ref());

    match (listen, admin, errs.0.is_empty()) {
        (Some(listen), Some(admin), true) => Ok(Config {
            listen,
            admin,
            admin_token,
            server,
            limits,
            timeouts,
            pools,
            models,
            auth,
            tenants,
            otel,
            classifiers,
            shared,
        }),
        _ => Err(errs.0),
    }
}

/// `host:port` of a `dns` entry: a name (or an address) and a port, no scheme.
fn dns_name(text: &str) -> Result<(String, u16), String> {
    let example = "e.g. vllm.inference.svc.cluster.local:8000";
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} needs a port ({example})"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port ({example})"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("{text:?} is not host:port ({example}; no scheme)"));
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

fn limits(errs: &mut Errors, l: &FileLimits) -> Limits {
    let max_body_size = match l.max_body_size.as_deref() {
        None => defaults::MAX_BODY_SIZE,
        Some(v) => match parse_size(v) {
            Some(n) if n > 0 => n,
            _ => {
                errs.push(
                    "limits.max_body_size",
                    format!("{v:?} is not a size greater than 0 (e.g. 8MiB, 512KiB)"),
                );
                defaults::MAX_BODY_SIZE
            }
        },
    };
    let max_requests = positive(
        errs,
        "limits.max_requests_per_connection",
        l.max_requests_per_connection,
        u64::from(defaults::MAX_REQUESTS_PER_CONNECTION),
    );
    Limits {
        max_body_size,
        max_requests_per_connection: u32::try_from(max_requests).unwrap_or(u32::MAX),
        connections_per_ip: optional_positive(
            errs,
            "limits.connections_per_ip",
            l.connections_per_ip,
        ),
        requests_per_second_per_ip: optional_positive(
            errs,
            "limits.requests_per_second_per_ip",
            l.requests_per_second_per_ip,
        ),
        max_connections: optional_positive(errs, "limits.max_connections", l.max_connections),
    }
}

fn timeouts(errs: &mut Errors, t: &FileTimeouts) -> Timeouts {
    Timeouts {
        request_header: duration(
            errs,
            "timeouts.request_header",
            t.request_header.as_deref(),
            defaults::REQUEST_HEADER_SECS,
        ),
        request_body: duration(
            errs,
            "timeouts.request_body",
            t.request_body.as_deref(),
            defaults::REQUEST_BODY_SECS,
        ),
        keepalive_idle: duration(
            errs,
            "timeouts.keepalive_idle",
            t.keepalive_idle.as_deref(),
            defaults::KEEPALIVE_IDLE_SECS,
        ),
        client_write: duration(
            errs,
            "timeouts.client_write",
            t.client_write.as_deref(),
            defaults::CLIENT_WRITE_SECS,
        ),
        connect: duration(
            errs,
            "timeouts.connect",
            t.connect.as_deref(),
            defaults::CONNECT_SECS,
        ),
        upstream_idle: duration(
            errs,
            "timeouts.upstream_idle",
            t.upstream_idle.as_deref(),
            defaults::UPSTREAM_IDLE_SECS,
        ),
        stream_total: duration(
            errs,
            "timeouts.stream_total",
            t.stream_total.as_deref(),
            defaults::STREAM_TOTAL_SECS,
        ),
        request_total: duration(
            errs,
            "timeouts.request_total",
            t.request_total.as_deref(),
            defaults::REQUEST_TOTAL_SECS,
        ),
    }
}

fn pool(errs: &mut Errors, name: &str, p: &FilePool) -> Option<Pool> {
    let at = format!("pools.{name}");
    let before = errs.0.len();
    if p.model.trim().is_empty() {
        errs.push(format!("{at}.model"), "must not be empty");
    }
    let engine = match p.engine.as_deref() {
        None => Engine::Openai,
        Some(e) => Engine::from_name(e).unwrap_or_else(|| {
            errs.push(
                format!("{at}.engine"),
                format!("{e:?} is not one of: {}", Engine::NAMES.join(", ")),
            );
            Engine::Openai
        }),
    };
    // GPU engines report their queues; an unknown OpenAI-compatible server is judged by
    // its latency.
    let default_policy = if engine == Engine::Openai {
        Policy::P2cEwma
    } else {
        Policy::LeastLoad
    };
    let balance = match p.balance.as_deref() {
        None => default_policy,
        Some(b) => Policy::from_name(b).unwrap_or_else(|| {
            errs.push(
                format!("{at}.balance"),
                format!("{b:?} is not one of: {}", Policy::NAMES.join(", ")),
            );
            default_policy
        }),
    };
    let health = health(errs, &at, engine, p);
    let breaker = breaker(errs, &at, p);
    let slow_start = duration_or_zero(
        errs,
        &format!("{at}.slow_start"),
        p.slow_start.as_deref(),
        Duration::from_secs(defaults::SLOW_START_SECS),
    );
    let scrape_interval = duration_ms(
        errs,
        &format!("{at}.engine_metrics.interval"),
        p.engine_metrics.interval.as_deref(),
        Duration::from_millis(defaults::SCRAPE_INTERVAL_MS),
    );
    let engine_metrics = (p.engine_metrics.enabled.unwrap_or(true)
        && crate::upstream::engine_load::scrapes(engine))
    .then(|| ScrapeSettings {
        path: p
            .engine_metrics
            .path
            .clone()
            .unwrap_or_else(|| "/metrics".to_owned()),
        interval: scrape_interval,
    });
    let policy = PolicySettings {
        load_max_age_ms: 3 * scrape_interval.as_millis() as u64,
        hash_load_factor: fraction(
            errs,
            &format!("{at}.affinity.load_factor"),
            p.affinity.load_factor,
            PolicySettings::default().hash_load_factor,
            1.0..=100.0,
        ),
        prefix: prefix(errs, &at, balance, p),
    };
    let header = p
        .affinity
        .header
        .as_deref()
        .unwrap_or(defaults::SESSION_HEADER);
    let session_header = http::HeaderName::from_bytes(header.as_bytes()).unwrap_or_else(|_| {
        errs.push(
            format!("{at}.affinity.header"),
            format!("{header:?} is not a header name"),
        );
        http::HeaderName::from_static(defaults::SESSION_HEADER)
    });
    let retry_budget = RetryBudget {
        ratio: fraction(
            errs,
            &format!("{at}.retry_budget.ratio"),
            p.retry_budget.ratio,
            0.2,
            0.0..=1.0,
        ),
        min: positive(
            errs,
            &format!("{at}.retry_budget.min"),
            p.retry_budget.min,
            3,
        ),
    };
    let cost = Cost {
        input_per_mtok: dollars(
            errs,
            &format!("{at}.cost.input_per_mtok"),
            p.cost.input_per_mtok,
        )
        .unwrap_or(0.0),
        output_per_mtok: dollars(
            errs,
            &format!("{at}.cost.output_per_mtok"),
            p.cost.output_per_mtok,
        )
        .unwrap_or(0.0),
    };
    let api_key = p
        .api_key_env
        .as_deref()
        .and_then(|name| env_secret(errs, &format!("{at}.api_key_env"), name));
    if p.servers.is_empty() {
        errs.push(format!("{at}.servers"), "at least one server is required");
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut servers = Vec::with_capacity(p.servers.len());
    let mut discover = Vec::new();
    for (i, s) in p.servers.iter().enumerate() {
        let sat = format!("{at}.servers[{i}]");
        let weight = match s.weight {
            None => NonZeroU32::MIN,
            Some(w) if w <= 0 => {
                errs.push(format!("{sat}.weight"), "must be greater than 0");
                NonZeroU32::MIN
            }
            Some(w) if w > i64::from(defaults::MAX_WEIGHT) => {
                errs.push(
                    format!("{sat}.weight"),
                    format!("must be at most {}", defaults::MAX_WEIGHT),
                );
                NonZeroU32::MIN
            }
            Some(w) => NonZeroU32::new(w as u32).unwrap_or(NonZeroU32::MIN),
        };
        match (&s.url, &s.dns) {
            (Some(url), None) => match parse_url(url) {
                Ok((host, port, tls)) => {
                    let id = format!("{host}:{port}");
                    if let Some(first) = seen.insert(id.clone(), i) {
                        errs.push(
                            format!("{sat}.url"),
                            format!("{id} is already servers[{first}] of this pool"),
                        );
                    }
                    servers.push(ServerSpec {
                        id,
                        host,
                        port,
                        weight,
                        tls,
                        discovered: None,
                    });
                }
                Err(reason) => errs.push(format!("{sat}.url"), reason),
            },
            (None, Some(name)) => match dns_name(name) {
                Ok((host, port)) => discover.push(DnsSource {
                    host,
                    port,
                    every: duration(errs, &format!("{sat}.every"), s.every.as_deref(), 5),
                    weight,
                }),
                Err(reason) => errs.push(format!("{sat}.dns"), reason),
            },
            _ => errs.push(
                &sat,
                "needs `url` (one server) or `dns` (a name whose addresses are servers), not both",
            ),
        }
        if s.url.is_some() && s.every.is_some() {
            errs.push(format!("{sat}.every"), "only a `dns` entry is re-resolved");
        }
    }
    let context_window = optional_positive(errs, &format!("{at}.context_window"), p.context_window);
    (errs.0.len() == before).then(|| Pool {
        name: name.to_owned(),
        served_model: p.model.clone(),
        engine,
        balance,
        policy,
        servers,
        discover,
        health,
        breaker,
        slow_start,
        panic_mode: p.panic_mode.unwrap_or(true),
        ca_file: (p.tls.as_ref())
            .and_then(|t| t.ca_file.as_deref())
            .map(std::path::PathBuf::from),
        engine_metrics,
        session_header,
        retry_budget,
        cost,
        api_key,
        api_key_env: p.api_key_env.clone(),
        context_window,
    })
}

/// `pools.X.prefix`, which only `balance: prefix_aware` reads.
fn prefix(errs: &mut Errors, at: &str, balance: Policy, p: &FilePool) -> PrefixSettings {
    let d = PrefixSettings::default();
    if balance == Policy::PrefixAware && p.servers.len() > crate::balance::prefix::MAX_SERVERS {
        errs.push(
            format!("{at}.servers"),
            format!(
                "prefix_aware tracks at most {} servers per pool; split the pool",
                crate::balance::prefix::MAX_SERVERS
            ),
        );
    }
    let Some(f) = &p.prefix else { return d };
    let at = format!("{at}.prefix");
    if balance != Policy::PrefixAware {
        errs.push(&at, "applies to balance: prefix_aware only");
    }
    let blocks = positive(
        errs,
        &format!("{at}.blocks_per_server"),
        f.blocks_per_server,
        u64::from(d.blocks_per_server),
    );
    if blocks > 1 << 24 {
        errs.push(
            format!("{at}.blocks_per_server"),
            format!(
                "at most {} (16M blocks, about 4 GiB of prompt text)",
                1u64 << 24
            ),
        );
    }
    PrefixSettings {
        blocks_per_server: blocks.min(1 << 24) as u32,
        sized_by_engine: f.blocks_per_server.is_none(),
        beta: fraction(errs, &format!("{at}.beta"), f.beta, d.beta, 0.0..=100.0),
        abs_threshold: fraction(
            errs,
            &format!("{at}.abs_threshold"),
            f.abs_threshold,
            d.abs_threshold,
            0.0..=1e6,
        ),
        rel_threshold: fraction(
            errs,
            &format!("{at}.rel_threshold"),
            f.rel_threshold,
            d.rel_threshold,
            1.0..=1e6,
        ),
        min_match: positive(
            errs,
            &format!("{at}.min_match"),
            f.min_match,
            u64::from(d.min_match),
        )
        .min(u64::from(u32::MAX)) as u32,
        kv_threshold: fraction(
            errs,
            &format!("{at}.kv_threshold"),
            f.kv_threshold,
            d.kv_threshold,
            0.01..=1.0,
        ),
    }
}

fn health(errs: &mut Errors, at: &str, engine: Engine, p: &FilePool) -> HealthSettings {
    let h = &p.health;
    let d = HealthSettings::for_engine(engine);
    let at = format!("{at}.health");
    if let Some(path) = &h.path {
        if !path.starts_with('/') {
            errs.push(format!("{at}.path"), format!("{path:?} must start with /"));
        }
    }
    let settings = HealthSettings {
        enabled: h.enabled.unwrap_or(d.enabled),
        path: h.path.clone().unwrap_or(d.path),
        interval: duration_ms(
            errs,
            &format!("{at}.interval"),
            h.interval.as_deref(),
            d.interval,
        ),
        timeout: duration_ms(
            errs,
            &format!("{at}.timeout"),
            h.timeout.as_deref(),
            d.timeout,
        ),
        unhealthy_after: count(
            errs,
            format!("{at}.unhealthy_after"),
            h.unhealthy_after,
            d.unhealthy_after,
        ),
        healthy_after: count(
            errs,
            format!("{at}.healthy_after"),
            h.healthy_after,
            d.healthy_after,
        ),
    };
    settings
}

fn breaker(errs: &mut Errors, at: &str, p: &FilePool) -> BreakerSettings {
    let b = &p.breaker;
    let d = BreakerSettings::default();
    let at = format!("{at}.breaker");
    let settings = BreakerSettings {
        failure_rate: fraction(
            errs,
            &format!("{at}.failure_rate"),
            b.failure_rate,
            d.failure_rate,
            0.01..=1.0,
        ),
        min_calls: count(errs, format!("{at}.min_calls"), b.min_calls, d.min_calls),
        window: duration_ms(errs, &format!("{at}.window"), b.window.as_deref(), d.window),
        consecutive: count(
            errs,
            format!("{at}.consecutive_failures"),
            b.consecutive_failures,
            d.consecutive,
        ),
        open_for: duration_ms(
            errs,
            &format!("{at}.open_for"),
            b.open_for.as_deref(),
            d.open_for,
        ),
        max_open_for: duration_ms(
            errs,
            &format!("{at}.max_open_for"),
            b.max_open_for.as_deref(),
            d.max_open_for,
        ),
        probes: count(
            errs,
            format!("{at}.half_open_probes"),
            b.half_open_probes,
            d.probes,
        ),
    };
    if settings.max_open_for < settings.open_for {
        errs.push(
            format!("{at}.max_open_for"),
            "must not be shorter than open_for",
        );
    }
    settings
}
