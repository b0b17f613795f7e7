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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Worker threads; 0 or absent means one per core.
    pub threads: Option<i64>,
    /// How long SIGTERM waits for in-flight requests, e.g. `60s`.
    pub grace_period: Option<String>,
    /// Idle upstream connections kept per process.
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest request body, e.g. `8MiB`.
    pub max_body_size: Option<String>,
    /// Requests served on one client connection before it is closed.
    pub max_requests_per_connection: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Reading the whole request body.
    pub request_body: Option<String>,
    /// Idle client keep-alive connection.
    pub keepalive_idle: Option<String>,
    /// TCP connect to an upstream server.
    pub connect: Option<String>,
    /// Longest gap between two reads from the upstream (time to response headers, time to
    /// first token, gap between tokens).
    pub upstream_idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// The model name the servers serve; written into the forwarded request.
    pub model: String,
    /// vllm | sglang | tgi | llamacpp | ollama | openai
    pub engine: Option<String>,
    /// Balancing policy; see `balance::Policy`.
    pub balance: Option<String>,
    #[serde(default)]
    pub servers: Vec<FileServerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServerEntry {
    pub url: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub pool: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}
