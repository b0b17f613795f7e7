//! `server.state_dir`: what must survive a restart of a gateway without a shared store, the
//! budgets' spend. Read once at start; written when it changed, every few seconds and at
//! shutdown, to a temporary file that is then renamed over the old one (a crash mid-write
//! leaves the previous file whole).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::limits::store::SavedSpend;
use crate::state::Shared;

const EVERY: Duration = Duration::from_secs(5);
const FILE: &str = "spend.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    version: u32,
    spend: SavedSpend,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Puts back the spend saved in `dir`, if any; a file that cannot be read is logged and left
/// alone (the next write replaces it).
pub fn restore(shared: &Shared, dir: &Path) {
    let file = path(dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("{}: {e}; budgets start from zero", file.display());
            return;
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(state) => {
            shared.store.restore_spend(&state.spend);
            tracing::info!(
                "{}: spend of {} budgets restored",
                file.display(),
                state.spend.len()
            );
        }
        Err(e) => tracing::warn!("{}: {e}; budgets start from zero", file.display()),
    }
}

/// Writes `spend` to `dir` atomically.
fn write(dir: &Path, spend: SavedSpend) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec(&StateFile { version: 1, spend })?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(dir))
}

/// Saves the spend now (at exit, once no request is left).
pub fn save_now(shared: &Shared) {
    if let Some(dir) = &shared.runtime().config.server.state_dir {
        if let Err(e) = write(dir, shared.store.saved_spend()) {
            tracing::warn!("server.state_dir: the spend could not be saved: {e}");
        }
    }
}

/// Saves the spend when it changed, every [`EVERY`] (and [`save_now`] at exit).
pub struct SaveState(pub Arc<Shared>);

impl SaveState {
    async fn save(&self, last: &mut Option<SavedSpend>) {
        let Some(dir) = self.0.runtime().config.server.state_dir.clone() else {
            return;
        };
        let spend = self.0.store.saved_spend();
        if last.as_ref() == Some(&spend) {
            return;
        }
        *last = Some(spend.clone());
        let result = tokio::task::spawn_blocking(move || write(&dir, spend)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!("server.state_dir: the spend could not be saved: {e}");
            *last = None;
        }
    }
}

#[async_trait]
impl BackgroundService for SaveState {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => self.save(&mut last).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
