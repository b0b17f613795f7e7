//! `server:`: the process, its logs and its public port.

use super::file::FileServer;
use super::values::{defaults, duration, positive, Errors};
use super::{AccessLog, LogFormat, ServerSettings};

pub(super) fn settings(errs: &mut Errors, s: &FileServer) -> ServerSettings {
    let threads = match s.threads {
        None | Some(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n) if n > 0 => n as usize,
        Some(_) => {
            errs.push("server.threads", "must be 0 (one per core) or greater");
            1
        }
    };
    let access_log = match s.access_log.as_deref() {
        None | Some("stdout") => AccessLog::Stdout,
        Some("off") => AccessLog::Off,
        Some(other) => {
            errs.push(
                "server.access_log",
                format!("{other:?} is not one of: stdout, off"),
            );
            AccessLog::Stdout
        }
    };
    let log_format = match s.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.push(
                "server.log_format",
                format!("{other:?} is not one of: text, json"),
            );
            LogFormat::Text
        }
    };
    let log_level = s
        .log_level
        .clone()
        .unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        errs.push(
            "server.log_level",
            format!("{log_level:?} is not a log filter (e.g. info, warn, info,pingora_core=warn)"),
        );
    }
    ServerSettings {
        log_level,
        log_format,
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| defaults::UPGRADE_SOCK.to_owned()),
        threads,
        grace_period: duration(
            errs,
            "server.grace_period",
            s.grace_period.as_deref(),
            defaults::GRACE_PERIOD_SECS,
        ),
        upstream_keepalive_pool: positive(
            errs,
            "server.upstream_keepalive_pool",
            s.upstream_keepalive_pool,
            defaults::UPSTREAM_KEEPALIVE_POOL as u64,
        ) as usize,
        access_log,
        cors: super::cors::build(errs, s.cors.as_ref()).map(std::sync::Arc::new),
        // Resolved once the models are (see `validate`).
        ready_requires: Vec::new(),
        public_response_model: match s.response_model.as_deref() {
            None | Some("served") => false,
            Some("public") => true,
            Some(other) => {
                errs.push(
                    "server.response_model",
                    format!("{other:?} is not one of: served, public"),
                );
                false
            }
        },
        watch_config: match s.watch_config.as_deref() {
            None | Some("off") => None,
            every => Some(duration(errs, "server.watch_config", every, 2)),
        },
        state_dir: s.state_dir.as_ref().map(Into::into),
        resolver: s.resolver.as_deref().and_then(|r| match r.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errs.push(
                    "server.resolver",
                    format!("{r:?} is not an ip:port (e.g. 10.96.0.10:53)"),
                );
                None
            }
        }),
        cache_size: match s.cache_size.as_deref() {
            None => 256 << 20,
            Some(v) => super::values::parse_size(v).unwrap_or_else(|| {
                errs.push(
                    "server.cache_size",
                    format!("{v:?} is not a size (e.g. 256MiB)"),
                );
                0
            }),
        },
        // Read when a runtime is built (a reload rereads them).
        tls: s.tls.as_ref().map(|t| super::TlsFiles {
            cert: t.cert.clone().into(),
            key: t.key.clone().into(),
        }),
    }
}
