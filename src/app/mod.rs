//! Builds the Pingora server and its services from a validated [`Config`], and runs it.

mod connection_cap;
mod listener;
mod monitor;
mod shutdown;
mod state_file;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};

use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service as ListeningService;

pub use listener::BoundService;

use crate::admin::Admin;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy::{AccessLogBuffer, HeldPool, Proxy};
use crate::state::Shared;

/// The composition root: what the gateway's services share. Modules below `app` never reach up
/// to it; each service is handed the parts it uses.
pub struct Gateway {
    /// The current runtime and what outlives it (state, limits, metrics, lifecycle).
    pub shared: Arc<Shared>,
    /// Access log lines not written out yet.
    pub access_log: Arc<AccessLogBuffer>,
    /// Streams' upstream connections kept for reuse (proxy/hold/).
    pub held: Arc<HeldPool>,
}

impl Gateway {
    /// Builds the first runtime; `config_path` is where reloads read from.
    pub fn new(
        config: Config,
        metrics: Metrics,
        config_path: Option<PathBuf>,
    ) -> Result<Self, Vec<ConfigError>> {
        Ok(Self {
            shared: Arc::new(Shared::new(config, metrics, config_path)?),
            access_log: Default::default(),
            held: Default::default(),
        })
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("TLS: {0}")]
    Tls(#[from] Box<pingora_error::Error>),
}

/// Pingora's process settings, from our validated config (Pingora's own YAML reader accepts
/// unknown keys silently, so it is not used).
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        // The grace period is ours (app::shutdown waits only while requests are in flight);
        // Pingora's own is a fixed sleep.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        // Pingora's `max_retries` bounds tries, the first one included.
        max_retries: crate::proxy::MAX_ATTEMPTS,
        upgrade_sock: config.server.upgrade_sock.clone(),
        // Work-stealing runtimes (Pingora's default). Measured on 2 cores against a canned
        // upstream: thread-per-core gives ~5 % more req/s at concurrency 64 but adds ~45 µs to
        // the p50 at concurrency 1 (pooled upstream connections stay on the reactor of the
        // thread that opened them); added latency matters more to an inference gateway.
        work_stealing: true,
        ..ServerConf::default()
    }
}

/// Runs the gateway until it is told to stop (SIGINT: at once; SIGTERM: after the grace
/// period); SIGHUP reloads `config_path`. Returns only on a start-up error.
///
/// With `upgrade`, the listening sockets are taken over from a running gateway that receives
/// SIGQUIT (Pingora's hand-over through `server.upgrade_sock`).
pub fn run(config: Config, config_path: Option<PathBuf>, upgrade: bool) -> Result<(), StartError> {
    let metrics = Metrics::new()?;
    let listen = config.listen;
    let admin = config.admin;
    let threads = config.server.threads;
    let grace = config.server.grace_period;
    let max_requests = config.limits.max_requests_per_connection;
    let conf = server_conf(&config);
    let gateway = Gateway::new(config, metrics, config_path).map_err(StartError::Config)?;
    let shared = &gateway.shared;

    let opt = upgrade.then(|| pingora_core::server::configuration::Opt {
        upgrade: true,
        ..Default::default()
    });
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut options = HttpServerOptions::default();
    // HTTP/2 in clear text (prior knowledge) without TLS; with it, ALPN says h2 (a TLS stream
    // cannot be peeked at for the preface, and Pingora then takes every client for h2c).
    options.h2c = shared.runtime().config.server.tls.is_none();
    options.keepalive_request_limit = Some(max_requests);
    let mut proxy = pingora_proxy::http_proxy(
        &server.configuration,
        Proxy::new(
            shared.clone(),
            gateway.access_log.clone(),
            gateway.held.clone(),
        ),
    );
    proxy.server_options = Some(options);
    // Behind the per-IP connection cap (limits.connections_per_ip; a pass-through when off).
    let api = ListeningService::new(
        "switchyard-api".to_owned(),
        connection_cap::ConnectionCap::new(proxy, shared.clone(), gateway.access_log.clone()),
    );
    let (drain, drained) = tokio::sync::watch::channel(false);
    // TLS on the public port (server.tls): whether it is on is decided at start; the
    // certificate is the current runtime's at each handshake (a reload renews it).
    #[cfg(feature = "tls")]
    let tls = match shared.runtime().config.server.tls {
        Some(_) => Some(listener::listener_settings(shared.clone())?),
        None => None,
    };
    // Without the feature a config with server.tls was refused when its runtime was built.
    #[cfg(not(feature = "tls"))]
    let tls = None;
    let api = server.add_service(
        BoundService::new(api, listen, "api")
            .threads(threads)
            .tls(tls)
            .drain_on(drained),
    );

    let admin_app =
        ListeningService::new("switchyard-admin".to_owned(), Admin::new(shared.clone()));
    let admin = server.add_service(BoundService::new(admin_app, admin, "admin").threads(1));
    server.add_service(background_service(
        "upstream health and load",
        monitor::Monitor::new(shared.clone()),
    ));
    // The listeners open (and say so) only once SIGHUP is handled: a reload sent as soon as
    // the gateway is up must not meet SIGHUP's default action, termination.
    let reload = server.add_service(background_service(
        "reload on SIGHUP",
        ReloadOnHangup(shared.clone()),
    ));
    api.add_dependency(&reload);
    admin.add_dependency(&reload);
    // Likewise, the file's first content is known before anyone can be told the gateway is up.
    let watch = server.add_service(background_service(
        "reload on file change",
        watch::ReloadOnChange(shared.clone()),
    ));
    api.add_dependency(&watch);
    admin.add_dependency(&watch);
    if let Some(dir) = &shared.runtime().config.server.state_dir {
        state_file::restore(shared, dir);
    }
    server.add_service(background_service(
        "DNS discovery",
        crate::state::discovery::Discover(shared.clone()),
    ));
    server.add_service(background_service(
        "state file",
        state_file::SaveState(shared.clone()),
    ));
    if let Some(store) = &shared.fleet {
        server.add_service(background_service(
            "shared store",
            SharedStoreSupervisor(store.clone()),
        ));
    }
    server.add_service(background_service(
        "access log flush",
        AccessLogFlush(gateway.access_log.clone()),
    ));

    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown::SignalWatch {
            shared: shared.clone(),
            drain,
            grace,
        }),
    });
    gateway.access_log.flush();
    state_file::save_now(&gateway.shared);
    if let Some(otel) = &gateway.shared.otel {
        otel.shutdown();
    }
    std::process::exit(0)
}

/// Writes out the access log's buffered lines every [`crate::proxy::ACCESS_LOG_FLUSH_EVERY`],
/// so that a quiet gateway's lines do not wait for a full batch.
struct AccessLogFlush(Arc<AccessLogBuffer>);

#[async_trait]
impl BackgroundService for AccessLogFlush {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::proxy::ACCESS_LOG_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.flush(),
                _ = shutdown.changed() => {
                    self.0.flush();
                    return;
                }
            }
        }
    }
}

/// Connects to the shared store, reconnects with backoff and renews leases.
struct SharedStoreSupervisor(Arc<crate::fleet::SharedStore>);

#[async_trait]
impl BackgroundService for SharedStoreSupervisor {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.supervise(shutdown).await;
    }
}

/// Reloads the config on SIGHUP (`systemctl reload`). Installing the handler also keeps
/// SIGHUP's default action, termination, from stopping the gateway.
struct ReloadOnHangup(Arc<Shared>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: pingora_core::services::ServiceReadyNotifier,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let hangups = signal(SignalKind::hangup());
        ready.notify_ready();
        let mut hangups = match hangups {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let shared = self.0.clone();
                    // Reading and building touch the file system and DNS: off the runtime.
                    let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
