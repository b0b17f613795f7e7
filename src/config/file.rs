//! The serde mirror of the YAML file and nothing else: every field optional where the file may
//! omit it, every unknown field an error. Values that need checking (addresses, durations,
//! weights, names of enums) stay strings or wide integers here so that `validate` can report
//! every problem with its YAML path instead of stopping at the first.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Public OpenAI-compatible API, `host:port`.
    pub listen: Option<String>,
    /// Admin listener (/metrics /healthz /readyz), `host:port`.
    pub admin: Option<String>,
    /// Name of an environment variable holding a bearer token the admin listener requires.
    pub admin_token_env: Option<String>,
    /// Settings of the process itself.
    #[serde(default)]
    pub server: FileServer,
    /// Client-side limits.
    #[serde(default)]
    pub limits: FileLimits,
    /// Timeouts, as `humantime` strings (`3s`, `60s`, `30m`).
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Pools of interchangeable servers, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, FilePool>,
    /// Public model names, by name.
    #[serde(default)]
    pub models: BTreeMap<String, FileModel>,
    /// `required` (default when tenants exist) or `optional` (keyless requests belong to the
    /// tenant named `anonymous`).
    pub auth: Option<String>,
    /// Tenants by name: their API key digests, models and limits.
    #[serde(default)]
    pub tenants: BTreeMap<String, FileTenant>,
    /// OpenTelemetry trace export (OTLP/HTTP). Off when absent.
    pub otel: Option<FileOtel>,
    /// Classifiers by name: labels from what a request means (`when: {class: ...}`).
    #[serde(default)]
    pub classifiers: BTreeMap<String, FileClassifier>,
    /// The store a fleet of gateways shares (Redis). Absent: limits live in the process.
    pub shared: Option<FileShared>,
}

/// `shared:` (config/shared.rs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShared {
    /// `redis://host:port/db`; no password here (see `password_env`).
    pub redis: Option<String>,
    /// Name of an environment variable holding the Redis password.
    pub password_env: Option<String>,
    /// Before every key (`switchyard:`).
    pub key_prefix: Option<String>,
    /// Longest a request waits for Redis (`5ms`).
    pub timeout: Option<String>,
    /// local (default) | open | closed: what a request gets when Redis does not answer.
    pub on_error: Option<String>,
    /// Gateways in the fleet: with `on_error: local` each takes 1/n of every limit (1).
    pub expected_instances: Option<i64>,
    /// Expiry of concurrency permits and budget reservations a gateway stops renewing (`30s`).
    pub lease: Option<String>,
}

/// `classifiers.X`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClassifier {
    /// Label → exemplars and an optional description (shown to the `llm` method).
    #[serde(default)]
    pub labels: BTreeMap<String, FileLabel>,
    /// lexical (default) | embedding | llm | ensemble.
    pub method: Option<String>,
    /// The built-in method has no settings; `lexical: {}` is accepted.
    pub lexical: Option<FileLexical>,
    pub embedding: Option<FileEmbedding>,
    pub llm: Option<FileLlm>,
    /// Weight of each method's vote: `{lexical: 1.0, embedding: 2.0, llm: 2.0}`.
    pub ensemble: Option<BTreeMap<String, f64>>,
    /// Below this confidence (0 to 1, default 0) the fallback label is used.
    pub min_confidence: Option<f64>,
    pub fallback: Option<String>,
    /// Wall time for the whole classification (default 100ms).
    pub budget: Option<String>,
    /// last_user (default) | conversation.
    pub scope: Option<String>,
    /// With `scope: conversation`: the last N messages (default: all).
    pub turns: Option<i64>,
    pub cache: Option<FileClassifierCache>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLabel {
    #[serde(default)]
    pub examples: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLexical {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEmbedding {
    pub model: String,
    pub k: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLlm {
    pub model: String,
    pub max_tokens: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClassifierCache {
    pub entries: Option<i64>,
    pub ttl: Option<String>,
}

/// `when.class`: classifier → a label or a list of labels, in the file's order (a later
/// classifier is asked only when the earlier ones matched: hierarchical classification).
#[derive(Debug, Default)]
pub struct FileClass(pub Vec<(String, FileNames)>);

impl<'de> Deserialize<'de> for FileClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = FileClass;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of classifier name to a label or a list of labels")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FileClass, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, FileNames>()? {
                    out.push(entry);
                }
                Ok(FileClass(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTenant {
    /// `sha256:<64 hex digits>` digests of the tenant's keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Public names or aliases the tenant may use; `"*"` (the default) for all.
    pub models: Option<FileModels>,
    #[serde(default)]
    pub limits: FileTenantLimits,
    #[serde(default)]
    pub budget: FileBudget,
}

/// `"*"` or a list of names.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileModels {
    One(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTenantLimits {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub concurrent_requests: Option<i64>,
    /// The same limits for one model (by public name or alias), on top of the tenant's.
    #[serde(default)]
    pub per_model: BTreeMap<String, FileLimitSet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimitSet {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub concurrent_requests: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBudget {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCost {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Worker threads; 0 or absent means one per core.
    pub threads: Option<i64>,
    /// How long SIGTERM waits for in-flight requests, e.g. `60s`.
    pub grace_period: Option<String>,
    /// Idle upstream connections kept per process (Pingora's pool); streams' connections are
    /// kept in a pool of their own, up to this many per server, for 4 s at most.
    pub upstream_keepalive_pool: Option<i64>,
    /// Access log: `stdout` (default) or `off`.
    pub access_log: Option<String>,
    /// Log level filter (`info` by default; `RUST_LOG` overrides it), e.g. `warn` or
    /// `info,pingora_core=warn`.
    pub log_level: Option<String>,
    /// Log line format on stderr: `text` (default) or `json`.
    pub log_format: Option<String>,
    /// Where the SIGQUIT socket hand-over meets the new process (`run --upgrade`).
    pub upgrade_sock: Option<String>,
    /// Browser origins allowed to call the API (CORS). Off by default: no CORS headers.
    pub cors: Option<FileCors>,
    /// TLS on the public port: PEM certificate chain and private key files (reread on
    /// reload). Off by default: plain HTTP.
    pub tls: Option<FileTls>,
    /// What an answer's `model` says: `served` (default: the name the server answered with,
    /// as it said it) or `public` (the public name of the model that answered).
    pub response_model: Option<String>,
    /// Reload the config file when its content changes, checking this often (e.g. `2s`; for
    /// mounted ConfigMaps, whose updates come with no signal). Off by default.
    pub watch_config: Option<String>,
    /// The DNS server `servers: [{dns: ...}]` asks (`host:port`); the system's by default.
    pub resolver: Option<String>,
    /// Bytes the in-process response cache holds at most (`256MiB`).
    pub cache_size: Option<String>,
    /// Where the gateway keeps what must survive a restart (budgets' spend without a shared
    /// store), e.g. `/var/lib/switchyard`. Off by default.
    pub state_dir: Option<String>,
    /// Models (names or aliases) `/readyz` requires to be servable, through their own pool or
    /// a fallback; by default readiness does not depend on any model's servers.
    #[serde(default)]
    pub ready_requires: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest request body, e.g. `8MiB`.
    pub max_body_size: Option<String>,
    /// Requests served on one client connection before it is closed.
    pub max_requests_per_connection: Option<i64>,
    /// Open connections from one client IP (more are answered 429 and closed). Off by default.
    pub connections_per_ip: Option<i64>,
    /// Open client connections in all; more are closed at once. Default: from the descriptor
    /// limit, leaving room for an upstream connection per client and the admin listener.
    pub max_connections: Option<i64>,
    /// New requests per second from one client IP, checked before the body is read. Off by
    /// default.
    pub requests_per_second_per_ip: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Receiving a whole request head (408 and close past it): from the accept for a
    /// connection's first request, from the next request's first byte on a kept-alive one.
    pub request_header: Option<String>,
    /// Reading the whole request body.
    pub request_body: Option<String>,
    /// Idle client keep-alive connection.
    pub keepalive_idle: Option<String>,
    /// Longest a write to the client may wait (a client that stopped reading).
    pub client_write: Option<String>,
    /// TCP connect to an upstream server.
    pub connect: Option<String>,
    /// Longest gap between two reads from the upstream (time to response headers, time to
    /// first token, gap between tokens).
    pub upstream_idle: Option<String>,
    /// Longest streamed response (default 30m).
    pub stream_total: Option<String>,
    /// Longest non-streamed response (default 10m).
    pub request_total: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// The model name the servers serve; written into the forwarded request.
    pub model: String,
    /// vllm | sglang | tgi | llamacpp | ollama | openai
    pub engine: Option<String>,
    /// Balancing policy; see `balance::Policy`. Default: `least_load` for GPU engines,
    /// `p2c_ewma` for `openai`.
    pub balance: Option<String>,
    #[serde(default)]
    pub servers: Vec<FileServerEntry>,
    /// Active health checks.
    #[serde(default)]
    pub health: FileHealth,
    /// Circuit breaker thresholds.
    #[serde(default)]
    pub breaker: FileBreaker,
    /// Ramp-up time of a server that came back (`0s`: none).
    pub slow_start: Option<String>,
    /// `https://` servers: the CA bundle (PEM) their certificates are checked against;
    /// the system's roots by default.
    pub tls: Option<FileUpstreamTls>,
    /// When health checks mark every server down, send to them anyway (Envoy's panic mode;
    /// default true): a health endpoint that fails under load must not take the model out.
    pub panic_mode: Option<bool>,
    /// Scraping the engine's own /metrics for `least_load`.
    #[serde(default)]
    pub engine_metrics: FileEngineMetrics,
    /// `consistent_hash`: where the session key comes from and how far over the mean a server
    /// may go.
    #[serde(default)]
    pub affinity: FileAffinity,
    /// Retries of requests a server received, as a share of the pool's in-flight requests.
    #[serde(default)]
    pub retry_budget: FileRetryBudget,
    /// Prices in dollars per million tokens, for spend and budgets.
    #[serde(default)]
    pub cost: FileCost,
    /// Environment variable holding the key sent upstream as `Authorization: Bearer`.
    pub api_key_env: Option<String>,
    /// Tokens a sequence may hold on these servers (prompt + completion); a request that
    /// cannot fit skips the pool.
    pub context_window: Option<i64>,
    /// `balance: prefix_aware`: the index size and the affinity/load trade-off.
    pub prefix: Option<FilePrefix>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrefix {
    pub blocks_per_server: Option<i64>,
    pub beta: Option<f64>,
    pub abs_threshold: Option<f64>,
    pub rel_threshold: Option<f64>,
    pub min_match: Option<i64>,
    pub kv_threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<i64>,
    pub healthy_after: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBreaker {
    pub failure_rate: Option<f64>,
    pub min_calls: Option<i64>,
    pub window: Option<String>,
    pub consecutive_failures: Option<i64>,
    pub open_for: Option<String>,
    pub max_open_for: Option<String>,
    pub half_open_probes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEngineMetrics {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAffinity {
    pub header: Option<String>,
    pub load_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetryBudget {
    pub ratio: Option<f64>,
    pub min: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServerEntry {
    /// `http://host:port` or `https://host:port`; or, in its place, `dns`.
    pub url: Option<String>,
    pub weight: Option<i64>,
    /// `host:port`: one server per address the name resolves to (A and AAAA), re-resolved
    /// every `every` (`5s`) and when the records' TTL runs out.
    pub dns: Option<String>,
    pub every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    /// The pool serving the model; a model without one is virtual and has `route`.
    pub pool: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Pools tried in order when the model's own pool has no server left to try.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Streams: longest wait for the first event (a server silent before its response
    /// header is failed over) and for each event after it. Default: `timeouts.upstream_idle`.
    pub first_token_timeout: Option<String>,
    /// Limits protecting the model whatever the tenant.
    #[serde(default)]
    pub limits: FileLimitSet,
    /// Completion tokens reserved when a request sets no `max_tokens` (default 1024).
    pub default_max_tokens: Option<i64>,
    /// Prompt bytes per token for the estimate made before the server counts (default 4).
    pub bytes_per_token: Option<f64>,
    /// A virtual model's rules: the first whose `when` holds chooses the model that answers.
    pub route: Option<Vec<FileRule>>,
    /// A virtual model's reference model: the savings metric compares with its prices.
    pub baseline: Option<String>,
    /// Mirror a sample of requests to another model; its answers are discarded.
    pub shadow: Option<FileShadow>,
    /// A virtual model's `conversation`: a conversation keeps its first labels for its later
    /// turns (keyed by x-session-id, else by its first user message).
    pub sticky: Option<String>,
    /// With `sticky: conversation`: a later turn's label replaces the kept one when it is at
    /// least this confident (0 to 1, default 0.8).
    pub switch_confidence: Option<f64>,
    /// Response cache: `{ttl: 10m, max_entry: 256KiB}` (deterministic requests only: a
    /// temperature of 0 or a seed), `always: true` or `cache: always` for every request.
    pub cache: Option<FileCache>,
}

/// `models.X.cache`: a word (`always`, `deterministic`, `off`) or the settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileCache {
    Word(String),
    Settings(FileCacheSettings),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCacheSettings {
    /// How long an answer is served from the cache (`10m`).
    pub ttl: Option<String>,
    /// Larger answers are not stored (`256KiB`).
    pub max_entry: Option<String>,
    /// Cache every request, not only deterministic ones (false).
    pub always: Option<bool>,
    /// One tenant's answer may serve another's identical request (false).
    pub shared_across_tenants: Option<bool>,
    /// Also serve an answer whose prompt means nearly the same (by embedding).
    pub semantic: Option<FileSemanticCache>,
}

/// `models.X.cache.semantic`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSemanticCache {
    /// The embedding model (a name or alias of this config) that embeds prompts.
    pub model: Option<String>,
    /// Cosine similarity from which a cached answer is reused (0.95).
    pub similarity: Option<f64>,
    /// Longest a request waits for its prompt's embedding (`100ms`); later: no semantic lookup.
    pub budget: Option<String>,
    /// Prompts remembered per set of generation parameters (1000).
    pub entries: Option<i64>,
}

/// One entry of `models.X.route`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// Conditions that must all hold; absent on the default (last) entry.
    pub when: Option<FileWhen>,
    /// A model, or a list of candidates (the best by `prefer` that fits).
    pub to: Option<FileNames>,
    /// Weighted arms between models (A/B, canary).
    pub split: Option<Vec<FileArm>>,
    /// `split`: session (x-session-id, else the body's `user`) | tenant | none.
    pub sticky: Option<String>,
    /// Candidate lists: price | latency | throughput (default price).
    pub prefer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArm {
    pub to: String,
    pub weight: i64,
}

/// A name, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileNames {
    One(String),
    List(Vec<String>),
}

impl FileNames {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::List(v) => v.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWhen {
    pub tools: Option<bool>,
    pub images: Option<bool>,
    pub json_mode: Option<bool>,
    pub stream: Option<bool>,
    pub prompt_tokens: Option<FileBounds>,
    pub max_tokens: Option<FileBounds>,
    pub turns: Option<FileBounds>,
    pub keywords: Option<Vec<String>>,
    pub regex: Option<FileNames>,
    /// What `keywords` and `regex` read: last_user (default) | conversation.
    pub scope: Option<String>,
    /// Header name → a value or a list of values.
    pub header: Option<BTreeMap<String, FileNames>>,
    pub tenant: Option<FileNames>,
    pub model_requested: Option<FileNames>,
    /// Classifier → label(s): `class: {task: code}`.
    pub class: Option<FileClass>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBounds {
    pub over: Option<i64>,
    pub under: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShadow {
    pub to: String,
    /// Share of requests mirrored (default 100).
    pub percent: Option<f64>,
    /// Mirrors in flight at most (default 8).
    pub max_inflight: Option<i64>,
}

/// `server.tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: String,
    pub key: String,
}

/// `pools.X.tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    pub ca_file: Option<String>,
}

/// `server.cors` (config/cors.rs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    /// Origins allowed to call the API, exactly as browsers send them
    /// (`https://app.example.com`), or `["*"]` for any.
    pub allow_origins: Option<Vec<String>>,
    /// Request headers a preflight may ask for; absent: whatever the preflight asks for (the
    /// OpenAI SDKs send their own `x-stainless-*` headers).
    pub allow_headers: Option<Vec<String>>,
    /// How long browsers may cache a preflight's answer (`10m` by default).
    pub max_age: Option<String>,
}

/// `otel:` (config/otel.rs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtel {
    /// The collector's OTLP/HTTP endpoint: `http://host:4318` (`/v1/traces` is added) or the
    /// full traces URL. Plain HTTP: the gateway is built without TLS, so a collector beside it
    /// (an OpenTelemetry Collector agent or sidecar) forwards over TLS where it must.
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    pub protocol: Option<String>,
    /// `service.name` of every span (`switchyard`).
    pub service_name: Option<String>,
    /// Share of traces started here that are recorded, 0..1 (1). A client's `traceparent`
    /// decides for its own traces.
    pub sample_ratio: Option<f64>,
    /// Longest a finished span waits before it is sent (`5s`, the OpenTelemetry default).
    pub batch_delay: Option<String>,
    /// Time limit of one export (`10s`).
    pub timeout: Option<String>,
}
