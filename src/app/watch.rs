//! `server.watch_config`: the config is reloaded when its file's content changes. A mounted
//! Kubernetes ConfigMap is updated by swapping a symlink, with no signal to the process; the
//! file is read and hashed every period instead (no inotify: a symlink swap in a parent
//! directory, editors' rename-over and network file systems all show as a new content).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use xxhash_rust::xxh3::xxh3_64;

use crate::state::Shared;

/// How often a gateway without `watch_config` looks whether a reload turned it on.
const IDLE: Duration = Duration::from_secs(5);

/// Reloads the config when the file's content changes. A content is tried once: a refused
/// file is not retried until it changes again, and the refusal is logged as a reload's is.
pub struct ReloadOnChange(pub Arc<Shared>);

fn digest(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| xxh3_64(&bytes))
}

#[async_trait]
impl BackgroundService for ReloadOnChange {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let Some(path) = self.0.config_path().map(Path::to_path_buf) else {
            ready.notify_ready();
            return;
        };
        let mut seen = digest(&path);
        ready.notify_ready();
        loop {
            let every = self.0.runtime().config.server.watch_config;
            tokio::select! {
                _ = tokio::time::sleep(every.unwrap_or(IDLE)) => {}
                _ = shutdown.changed() => return,
            }
            if every.is_none() {
                continue;
            }
            let file = path.clone();
            let now = tokio::task::spawn_blocking(move || digest(&file))
                .await
                .ok()
                .flatten();
            // A file that cannot be read (mid-swap, removed) is looked at again next time.
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            tracing::info!("config file changed: reloading");
            let shared = self.0.clone();
            let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
        }
    }
}
