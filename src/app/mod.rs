//! Builds the Pingora server and its services from a validated [`Config`], and runs it.

mod listener;

use std::sync::Arc;

use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service as ListeningService;
use pingora_proxy::ProxyServiceBuilder;

pub use listener::BoundService;

use crate::admin::Admin;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::state::Gateway;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
}

/// Pingora's process settings, from our validated config (Pingora's own YAML reader accepts
/// unknown keys silently, so it is not used).
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        // Pingora's `max_retries` bounds tries, the first one included.
        max_retries: crate::proxy::MAX_ATTEMPTS,
        // Thread-per-core runtimes: fewer cross-thread wake-ups (measured +10 % req/s at
        // concurrency 64 on 2 cores, benches/load.sh).
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// Runs the gateway until it is told to stop (SIGINT: at once; SIGTERM: after the grace
/// period). Returns only on a start-up error.
pub fn run(config: Config) -> Result<(), StartError> {
    let metrics = Metrics::new()?;
    let listen = config.listen;
    let admin = config.admin;
    let threads = config.server.threads;
    let max_requests = config.limits.max_requests_per_connection;
    let conf = server_conf(&config);
    let gateway = Arc::new(Gateway::new(config, metrics).map_err(StartError::Config)?);

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.keepalive_request_limit = Some(max_requests);
    let api = ProxyServiceBuilder::new(&server.configuration, Proxy::new(gateway.clone()))
        .name("switchyard-api")
        .server_options(options)
        .build();
    server.add_service(BoundService::new(api, listen, "api").threads(threads));

    let admin_app = ListeningService::new("switchyard-admin".to_owned(), Admin::new(gateway));
    server.add_service(BoundService::new(admin_app, admin, "admin").threads(1));

    server.run_forever()
}
