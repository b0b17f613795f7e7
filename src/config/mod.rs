//! Configuration: `file` mirrors the YAML, `validate` turns it into the typed [`Config`] below.
//! Loading is parse → validate; building the runtime from a `Config` is `state::Runtime::build`.

mod classify;
pub mod cors;
mod effective;
pub mod file;
mod load;
mod models;
pub mod otel;
mod route;
mod server;
pub mod shared;
mod tenants;
pub mod validate;
mod values;

pub use load::{load, parse, LoadError};

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::balance::{Policy, PolicySettings};
use crate::limits::budget::Period;
use crate::limits::keys::KeyDigest;
use crate::routing::spec::{Serve, Shadow};
use crate::routing::Cost;
use crate::upstream::breaker::BreakerSettings;
use crate::upstream::engine::Engine;
use crate::upstream::health::HealthSettings;

/// A validated configuration. Every field has its final type and default applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The bearer token the admin listener requires, read from the environment variable
    /// `admin_token_env` names; `None`: no token (keep admin on loopback then).
    pub admin_token: Option<String>,
    pub server: ServerSettings,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// In the file's (sorted) order; `Model::pool` indexes into it.
    pub pools: Vec<Pool>,
    pub models: Vec<Model>,
    pub auth: Auth,
    /// In the file's (sorted) order.
    pub tenants: Vec<Tenant>,
    /// `otel:`; `None`: no trace export.
    pub otel: Option<otel::OtelSettings>,
    /// `classifiers:`, in the file's (sorted) order: `Condition::Class` indexes into it.
    pub classifiers: Vec<crate::routing::classify::ClassifierSpec>,
    /// `shared:`; `None`: limits, budgets and the cache live in the process.
    pub shared: Option<shared::SharedSettings>,
}

/// Who may call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No tenants configured: anyone, without limits.
    Open,
    /// Every request needs a tenant's key.
    Required,
    /// Keyless requests belong to the tenant named [`ANONYMOUS`] (refused without one).
    Optional,
}

impl Auth {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Required => "required",
            Self::Optional => "optional",
        }
    }
}

/// The tenant keyless requests belong to under `auth: optional`.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub keys: Vec<KeyDigest>,
    /// Indices into `Config::models`; `None`: every model.
    pub models: Option<Vec<usize>>,
    pub limits: LimitSet,
    /// Limits of this tenant on one model (index into `Config::models`).
    pub per_model: Vec<(usize, LimitSet)>,
    /// Dollars per period.
    pub budget: Vec<(Period, f64)>,
}

/// Limits of one scope (a tenant, a tenant on a model, a model); `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent_requests: Option<u64>,
}

impl LimitSet {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "concurrent_requests": self.concurrent_requests,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads of the proxy service (one per core by default).
    pub threads: usize,
    /// How long SIGTERM lets in-flight requests finish.
    pub grace_period: Duration,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool: usize,
    pub access_log: AccessLog,
    /// Log filter directives (`RUST_LOG` syntax); `RUST_LOG` overrides.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Unix socket of the SIGQUIT hand-over.
    pub upgrade_sock: String,
    /// `server.cors`; `None`: no CORS headers, preflights are not answered.
    pub cors: Option<std::sync::Arc<cors::Cors>>,
    /// Models (indices into `Config::models`) `/readyz` requires to be servable.
    pub ready_requires: Vec<usize>,
    /// TLS on the public port (`server.tls`); `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// `server.response_model: public`: answers name the public model that answered.
    pub public_response_model: bool,
    /// `server.watch_config`: how often the config file is checked for a change; `None`: not.
    pub watch_config: Option<std::time::Duration>,
    /// `server.state_dir`: where budgets' spend is kept across restarts; `None`: not kept.
    pub state_dir: Option<std::path::PathBuf>,
    /// `server.resolver`: the DNS server discovery asks; `None`: the system's.
    pub resolver: Option<std::net::SocketAddr>,
    /// `server.cache_size`: bytes the in-process response cache holds at most.
    pub cache_size: usize,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON line per request on stdout.
    Stdout,
    Off,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body in bytes (413 above it). Default 8 MiB.
    pub max_body_size: usize,
    /// Requests per client connection before it is closed. Default 1000.
    pub max_requests_per_connection: u32,
    /// Open connections per client IP; `None`: no cap.
    pub connections_per_ip: Option<u64>,
    /// Open client connections in all; `None`: derived from the descriptor limit at start.
    pub max_connections: Option<u64>,
    /// New requests per second per client IP; `None`: no cap.
    pub requests_per_second_per_ip: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Receiving a whole request head (408 and close past it). Default 10 s.
    pub request_header: Duration,
    /// Reading the whole request body (408 past it). Default 30 s.
    pub request_body: Duration,
    /// Idle client keep-alive connection. Default 75 s.
    pub keepalive_idle: Duration,
    /// Longest a write to the client may wait: a client that stopped reading is cut off
    /// past it, and its upstream closed. Default 60 s.
    pub client_write: Duration,
    /// TCP connect to an upstream. Default 3 s.
    pub connect: Duration,
    /// Longest gap between two upstream reads, including the wait for the first token.
    /// Default 60 s.
    pub upstream_idle: Duration,
    /// Longest streamed response. Default 30 min.
    pub stream_total: Duration,
    /// Longest non-streamed response (the wait for its header included). Default 10 min.
    pub request_total: Duration,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    /// The model name its servers serve; replaces the public name in forwarded requests.
    pub served_model: String,
    pub engine: Engine,
    pub balance: Policy,
    pub policy: PolicySettings,
    pub servers: Vec<ServerSpec>,
    /// Names whose addresses are servers of the pool too (`servers[i].dns`).
    pub discover: Vec<DnsSource>,
    pub health: HealthSettings,
    pub breaker: BreakerSettings,
    /// Ramp-up of a server that came back; zero: none.
    pub slow_start: Duration,
    /// When every server is down by health checks, send to them anyway.
    pub panic_mode: bool,
    /// The CA bundle `https://` servers' certificates are checked against (`None`: the
    /// system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Engine /metrics scraping, for engines that have them (`None`: off).
    pub engine_metrics: Option<ScrapeSettings>,
    /// Header carrying the session key for `consistent_hash` (the body's `user` otherwise).
    pub session_header: http::HeaderName,
    pub retry_budget: RetryBudget,
    pub cost: Cost,
    /// The key sent upstream (`Authorization: Bearer`), read from `api_key_env`.
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    /// Tokens a sequence may hold (prompt + completion); `None`: not limited.
    pub context_window: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeSettings {
    pub path: String,
    pub interval: Duration,
}

/// Retries of requests a server received may be at most `ratio` of the pool's in-flight
/// requests, or `min`, whichever is more (a connect failure is not counted: nothing was sent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min: u64,
}

#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `host:port`, the server's identity across reloads and in the admin API.
    pub id: String,
    pub host: String,
    pub port: u16,
    pub weight: NonZeroU32,
    /// `https://`: TLS to the server, checked against the pool's CA, SNI from `host`.
    pub tls: bool,
    /// Found by `servers[i].dns` (the index into the pool's `discover`), not written in the file.
    pub discovered: Option<usize>,
}

/// `servers: [{dns: "host:port", every: 5s}]`: servers found by resolving a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSource {
    pub host: String,
    pub port: u16,
    pub every: Duration,
    pub weight: NonZeroU32,
}

impl DnsSource {
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl ServerSpec {
    /// The server's URL as configured (scheme, host, port).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.id)
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    /// Public name clients send.
    pub name: String,
    pub aliases: Vec<String>,
    /// Its pool and fallback pools, or the rules of a virtual model.
    pub serve: Serve,
    pub first_token_timeout: Duration,
    pub limits: LimitSet,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Prompt bytes per token for the estimate made before the server counts.
    pub bytes_per_token: f64,
    pub shadow: Option<Shadow>,
    /// `cache`: answers of this model are served from the response cache.
    pub cache: Option<CacheSpec>,
}

/// `models.X.cache`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSpec {
    pub ttl: Duration,
    /// Larger answers are not stored.
    pub max_entry: usize,
    /// Every request, not only deterministic ones (temperature 0 or a seed).
    pub always: bool,
    /// The key leaves out the tenant.
    pub shared_across_tenants: bool,
    /// `semantic`: near prompts share an answer.
    pub semantic: Option<SemanticSpec>,
}

/// `models.X.cache.semantic`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemanticSpec {
    /// Index into `Config::models` of the embedding model.
    pub model: usize,
    pub similarity: f32,
    pub budget: Duration,
    pub entries: usize,
}

/// One problem in a config file, at a YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `pools.llama-8b.servers[1].weight`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::budget::Period;

    /// The sample from the gateway-core issue, which must be accepted as written.
    pub(super) const SAMPLE: &str = r#"
listen: 127.0.0.1:8080
admin: 127.0.0.1:9090
pools:
  llama-8b:
    model: meta-llama/Llama-3.1-8B-Instruct
    engine: vllm
    balance: weighted_round_robin
    servers:
      - url: http://127.0.0.1:8001
        weight: 2
      - url: http://127.0.0.1:8002
  qwen-72b:
    model: Qwen/Qwen2.5-72B-Instruct
    engine: vllm
    servers:
      - url: http://127.0.0.1:8003
models:
  llama-3.1-8b:
    pool: llama-8b
    aliases: [fast, default]
  qwen-2.5-72b:
    pool: qwen-72b
    aliases: [smart]
"#;

    pub(super) fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(_) => vec![],
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn sample_from_the_issue_is_accepted_with_defaults() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.pools.len(), 2);
        let llama = &c.pools[c.models[0].serve.pool().unwrap()];
        assert_eq!(llama.served_model, "meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(llama.servers[0].weight.get(), 2);
        assert_eq!(llama.servers[1].weight.get(), 1);
        assert_eq!(c.limits.max_body_size, 8 << 20);
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
        assert_eq!(c.server.grace_period, Duration::from_secs(60));
    }

    #[test]
    fn watch_config_is_off_unless_given_a_period() {
        assert_eq!(parse(SAMPLE).unwrap().server.watch_config, None);
        let with = |v: &str| format!("server: {{watch_config: {v}}}\n{SAMPLE}");
        let c = parse(&with("500ms")).unwrap();
        assert_eq!(c.server.watch_config, Some(Duration::from_millis(500)));
        assert_eq!(parse(&with("off")).unwrap().server.watch_config, None);
        assert_eq!(
            errors(&with("0s")),
            ["server.watch_config: must be greater than 0"]
        );
    }

    #[test]
    fn a_models_cache_takes_a_word_or_settings_and_names_bad_values() {
        let with = |cache: &str| {
            SAMPLE.replace(
                "    aliases: [smart]\n",
                &format!("    aliases: [smart]\n    cache: {cache}\n"),
            )
        };
        let c = parse(&with("always")).unwrap();
        let spec = c.models[1].cache.unwrap();
        assert!(spec.always && !spec.shared_across_tenants);
        assert_eq!(
            (spec.ttl, spec.max_entry),
            (Duration::from_secs(600), 256 << 10)
        );
        assert_eq!(parse(&with("off")).unwrap().models[1].cache, None);
        let c = parse(&with("{ttl: 1m, semantic: {model: fast, similarity: 0.8}}")).unwrap();
        let semantic = c.models[1].cache.unwrap().semantic.unwrap();
        assert_eq!(
            (semantic.model, semantic.similarity),
            (0, 0.8),
            "an alias names its model"
        );
        let errs = errors(&with(
            "{max_entry: lots, ttl: 0s, semantic: {model: nope, similarity: 2}}",
        ));
        for path in ["cache.max_entry", "cache.ttl", "cache.semantic.model"] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("models.qwen-2.5-72b.{path}"))),
                "{path}: {errs:?}"
            );
        }
        assert!(errors(&with("sometimes"))[0].contains("always, deterministic, off"));
    }

    #[test]
    fn zero_weight_names_its_path() {
        let yaml = SAMPLE.replace(
            "- url: http://127.0.0.1:8002",
            "- url: http://127.0.0.1:8002\n        weight: 0",
        );
        assert_eq!(
            errors(&yaml),
            ["pools.llama-8b.servers[1].weight: must be greater than 0"]
        );
    }

    #[test]
    fn dangling_pool_reference_names_the_missing_pool() {
        let yaml = SAMPLE.replace("pool: qwen-72b", "pool: qwen");
        assert_eq!(
            errors(&yaml),
            [r#"models.qwen-2.5-72b.pool: no pool named "qwen""#]
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let yaml = SAMPLE
            .replace("weight: 2", "weight: -1")
            .replace("pool: qwen-72b", "pool: nope")
            .replace("[smart]", "[fast]")
            .replace("engine: vllm\n    servers", "engine: cuda\n    servers");
        let errs = errors(&yaml);
        assert_eq!(
            errs,
            [
                "pools.llama-8b.servers[0].weight: must be greater than 0",
                r#"pools.qwen-72b.engine: "cuda" is not one of: vllm, sglang, tgi, llamacpp, ollama, openai"#,
                r#"models.qwen-2.5-72b.aliases[0]: "fast" is already the name or an alias of model "llama-3.1-8b""#,
                r#"models.qwen-2.5-72b.pool: no pool named "nope""#,
            ]
        );
    }

    #[test]
    fn bad_durations_sizes_and_addresses_are_reported() {
        let yaml = format!("{SAMPLE}timeouts:\n  connect: soon\nlimits:\n  max_body_size: 0\n")
            .replace("admin: 127.0.0.1:9090", "admin: localhost");
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("admin: \"localhost\" is not an IP address"));
        assert!(errs[1].starts_with("limits.max_body_size: \"0\" is not a size"));
        assert!(errs[2].starts_with("timeouts.connect: \"soon\" is not a duration"));
    }

    #[test]
    fn log_settings_and_admin_token_variable_are_checked() {
        let yaml = format!(
            "{SAMPLE}admin_token_env: SWITCHYARD_TEST_SURELY_UNSET\nserver:\n  log_format: xml\n  log_level: \"info,,=\"\n"
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("server.log_format: \"xml\" is not one of: text, json"));
        assert!(errs[1].starts_with("server.log_level:"));
        assert!(errs[2].starts_with(
            "admin_token_env: environment variable \"SWITCHYARD_TEST_SURELY_UNSET\" is not set"
        ));
    }

    #[test]
    fn duplicate_server_in_a_pool_is_refused() {
        let yaml = SAMPLE.replace("http://127.0.0.1:8002", "http://127.0.0.1:8001");
        assert_eq!(
            errors(&yaml),
            ["pools.llama-8b.servers[1].url: 127.0.0.1:8001 is already servers[0] of this pool"]
        );
    }

    #[test]
    fn the_tenants_shape_of_the_issue_is_accepted() {
        let yaml = format!(
            "{SAMPLE}auth: required\ntenants:\n  team-a:\n    keys: [\"sha256:{}\"]\n    models: [llama-3.1-8b, fast]\n    limits:\n      requests_per_minute: 600\n      tokens_per_minute: 200000\n      concurrent_requests: 32\n    budget:\n      usd_per_day: 50\n",
            "ab".repeat(32)
        )
        .replace(
            "    balance: weighted_round_robin\n",
            "    balance: weighted_round_robin\n    cost: {input_per_mtok: 0.10, output_per_mtok: 0.20}\n",
        );
        let c = parse(&yaml).unwrap();
        assert_eq!(c.auth, Auth::Required);
        let t = &c.tenants[0];
        assert_eq!(
            t.models.as_deref(),
            Some(&[0][..]),
            "name and alias: one model"
        );
        assert_eq!(t.limits.tokens_per_minute, Some(200_000));
        assert_eq!(t.budget, [(Period::Day, 50.0)]);
        assert_eq!(c.pools[0].cost.output_per_mtok, 0.20);
    }

    #[test]
    fn tenant_mistakes_name_their_path() {
        let yaml = format!(
            "{SAMPLE}auth: sometimes\ntenants:\n  a:\n    keys: [\"sk-plain-key\", \"sha256:{d}\"]\n    models: [gpt-5]\n    limits:\n      requests_per_minute: 0\n      per_model:\n        nope: {{tokens_per_minute: 5}}\n  anonymous:\n    keys: [\"sha256:{d}\"]\n    budget: {{usd_per_month: -1}}\n",
            d = "cd".repeat(32)
        );
        assert_eq!(
            errors(&yaml),
            [
                r#"auth: "sometimes" is not one of: required, optional"#,
                r#"tenants.a.keys[0]: must be "sha256:<64 hex digits>" (a digest, never the key itself; see `switchyard key hash`)"#,
                r#"tenants.a.models[0]: no model or alias named "gpt-5""#,
                r#"tenants.a.limits.per_model.nope: no model or alias named "nope""#,
                "tenants.a.limits.requests_per_minute: must be greater than 0 (leave it out for no limit)",
                r#"tenants.anonymous.keys[0]: the same key is already a key of tenant "a""#,
                "tenants.anonymous.keys: the anonymous tenant (keyless requests under auth: optional) has no keys",
                "tenants.anonymous.budget.usd_per_month: -1 is not an amount of dollars (0 or more)",
            ]
        );
        let open = format!("{SAMPLE}auth: required\n");
        assert_eq!(
            errors(&open),
            ["auth: needs tenants (leave auth out for an open gateway without keys or limits)"]
        );
    }

    #[test]
    fn pool_without_servers_is_refused() {
        let yaml = SAMPLE.replace(
            "    servers:\n      - url: http://127.0.0.1:8003\n",
            "    servers: []\n",
        );
        assert_eq!(
            errors(&yaml),
            ["pools.qwen-72b.servers: at least one server is required"]
        );
    }

    #[test]
    fn prefix_settings_are_read_checked_and_only_for_prefix_aware() {
        let yaml = SAMPLE.replace(
            "    balance: weighted_round_robin\n",
            "    balance: prefix_aware\n    prefix: {blocks_per_server: 2048, beta: 0.2, min_match: 3}\n",
        );
        let c = parse(&yaml).unwrap();
        let p = &c.pools[c.models[0].serve.pool().unwrap()].policy.prefix;
        assert_eq!(p.blocks_per_server, 2048);
        assert!(
            !p.sized_by_engine,
            "set: the engine's size does not override it"
        );
        assert_eq!(p.beta, 0.2);
        assert_eq!(p.min_match, 3);
        assert_eq!(
            p.rel_threshold,
            crate::balance::PrefixSettings::default().rel_threshold,
            "unset: the default"
        );

        let bad = SAMPLE.replace(
            "    balance: weighted_round_robin\n",
            "    balance: prefix_aware\n    prefix: {blocks_per_server: 0, rel_threshold: 0.5, kv_threshold: 2}\n",
        );
        let errs = errors(&bad);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("pools.llama-8b.prefix.blocks_per_server: "),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("pools.llama-8b.prefix.rel_threshold: "),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("pools.llama-8b.prefix.kv_threshold: "),
            "{errs:?}"
        );

        let elsewhere = SAMPLE.replace(
            "    balance: weighted_round_robin\n",
            "    prefix: {beta: 1}\n",
        );
        assert_eq!(
            errors(&elsewhere),
            ["pools.llama-8b.prefix: applies to balance: prefix_aware only"]
        );
    }
}
