//! What outlives a runtime: the current snapshot behind ArcSwap, per-server state, limiter
//! state, metrics and the lifecycle; and the reload that builds a new snapshot and swaps it in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::Runtime;
use crate::balance::{Policy, PrefixIndexes};
use crate::config::{Config, ConfigError, LoadError};
use crate::limits::per_ip::PerIp;
use crate::limits::store::LocalStore;
use crate::metrics::Metrics;
use crate::upstream::Registry;

/// What the proxy, the admin listener and the monitors share: the current runtime and what
/// outlives it.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Limiter state (rate buckets, concurrency, spend); outlives runtimes.
    pub store: LocalStore,
    /// The store the fleet shares (`shared:`), set up at start; a reload does not change it.
    pub fleet: Option<Arc<crate::fleet::SharedStore>>,
    /// The response cache; outlives runtimes (`server.cache_size` is read at start).
    pub cache: crate::cache::ResponseCache,
    /// Per client IP counters.
    pub per_ip: PerIp,
    /// Prefix-aware pools' indices of which server holds which prefix; outlive runtimes.
    pub prefix: PrefixIndexes,
    /// Classifiers' exemplar vectors and conversations' labels; outlive runtimes.
    pub classify: crate::routing::classify::Memory,
    /// Pools' servers found by DNS; outlive runtimes.
    pub discovered: super::discovery::Discovered,
    /// The file reloads read; `None` for a config that did not come from a file (the demo).
    config_path: Option<PathBuf>,
    /// Serialises reloads so that two of them cannot interleave read, build and swap.
    reloading: Mutex<()>,
    /// Trace export (`otel:`), set up at start; a reload does not change it.
    pub otel: Option<crate::otel::Otel>,
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway was not started from a config file")]
    NoFile,
    #[error("{0}")]
    Load(#[from] LoadError),
}

impl ReloadError {
    /// Every problem, with its YAML path where there is one.
    pub fn errors(&self) -> Vec<ConfigError> {
        match self {
            Self::NoFile => vec![ConfigError {
                path: String::new(),
                message: self.to_string(),
            }],
            Self::Load(e) => e.errors(),
        }
    }
}

impl Shared {
    /// Builds the first runtime; `config_path` is where reloads read from.
    pub fn new(
        mut config: Config,
        metrics: Metrics,
        config_path: Option<PathBuf>,
    ) -> Result<Self, Vec<ConfigError>> {
        let registry = Registry::default();
        let store = LocalStore::default();
        let prefix = PrefixIndexes::default();
        let otel = match config
            .otel
            .as_ref()
            .map(crate::otel::Otel::start)
            .transpose()
        {
            Ok(otel) => otel,
            Err(message) => {
                return Err(vec![ConfigError {
                    path: "otel".to_owned(),
                    message,
                }])
            }
        };
        let fleet = match config.shared.clone() {
            None => None,
            Some(settings) => match crate::fleet::SharedStore::new(settings, &metrics.fleet) {
                Ok(store) => Some(Arc::new(store)),
                Err(message) => {
                    return Err(vec![ConfigError {
                        path: "shared.redis".to_owned(),
                        message,
                    }])
                }
            },
        };
        let classify = crate::routing::classify::Memory::default();
        let cache_size = config.server.cache_size;
        let discovered = super::discovery::Discovered::default();
        discovered.expand(&mut config);
        let runtime = Runtime::build(config, &registry, &store, &metrics, &prefix, &classify)?;
        metrics.config_load(true);
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            store,
            discovered,
            cache: crate::cache::ResponseCache::new(cache_size, fleet.clone(), &metrics.cache),
            fleet,
            per_ip: PerIp::default(),
            prefix,
            classify,
            metrics,
            lifecycle: Default::default(),
            config_path,
            reloading: Mutex::new(()),
            otel,
        })
    }

    /// The file reloads read (`None`: the config did not come from a file).
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Reads, validates and builds the config file, then swaps it in atomically: requests in
    /// flight keep the runtime they started with, new ones see the new one, none sees a mix.
    /// Per-server state survives for servers that stay. A bad file changes nothing.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.build_from_file();
        self.swap(result)
    }

    /// Rebuilds the current config with what DNS discovery found, and swaps it in as a
    /// reload does; `appeared`: servers that joined (they ramp up over `slow_start`).
    pub fn rediscover(&self, appeared: &[String]) -> Result<(), Vec<ConfigError>> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let runtime = self.build(self.runtime().config.clone())?;
        let now = crate::upstream::now_ms();
        for id in appeared {
            self.registry.get(id).start_slow_start(now);
        }
        self.install(runtime);
        Ok(())
    }

    /// Builds a runtime of `config` with the servers DNS discovery found, on the state that
    /// outlives runtimes.
    fn build(&self, mut config: Config) -> Result<Runtime, Vec<ConfigError>> {
        self.discovered.expand(&mut config);
        Runtime::build(
            config,
            &self.registry,
            &self.store,
            &self.metrics,
            &self.prefix,
            &self.classify,
        )
    }

    /// Swaps `runtime` in, then lets go of the limiter and prefix state no runtime uses.
    fn install(&self, runtime: Runtime) {
        let runtime = Arc::new(runtime);
        self.runtime.store(runtime.clone());
        self.store.prune();
        self.prefix.retain(&prefix_pools(&runtime));
    }

    fn swap(&self, result: Result<Runtime, ReloadError>) -> Result<(), ReloadError> {
        self.metrics.config_load(result.is_ok());
        match result {
            Ok(runtime) => {
                let old = self.runtime.load();
                for (what, before, after) in [
                    ("listen", old.config.listen, runtime.config.listen),
                    ("admin", old.config.admin, runtime.config.admin),
                ] {
                    if before != after {
                        tracing::warn!(
                            "{what} changed from {before} to {after}: listener addresses change only on restart"
                        );
                    }
                }
                if self.otel.as_ref().map(|o| &o.settings) != runtime.config.otel.as_ref() {
                    tracing::warn!("otel changed: trace export is set up only at start");
                }
                if self.fleet.as_ref().map(|f| &f.settings) != runtime.config.shared.as_ref() {
                    tracing::warn!(
                        "shared changed: the shared store is set up only at start (restart to change it)"
                    );
                }
                drop(old);
                self.install(runtime);
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(e) => {
                for err in e.errors() {
                    tracing::error!("config reload refused: {err}");
                }
                Err(e)
            }
        }
    }

    fn build_from_file(&self) -> Result<Runtime, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let config = crate::config::load(path)?;
        self.build(config)
            .map_err(|errs| ReloadError::Load(LoadError::Invalid(errs)))
    }

    /// The current snapshot; load once per request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }
}

/// The prefix-aware pools of a runtime and their servers' ids: what the prefix indices keep.
fn prefix_pools(runtime: &Runtime) -> Vec<(&str, Vec<&str>)> {
    runtime
        .pools
        .iter()
        .filter(|p| p.policy == Policy::PrefixAware)
        .map(|p| {
            (
                p.name.as_str(),
                p.servers.iter().map(|s| s.id.as_str()).collect(),
            )
        })
        .collect()
}
