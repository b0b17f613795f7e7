//! Signals, handled instead of Pingora's default watcher, whose SIGTERM path sleeps the whole
//! grace period even when nothing is in flight.
//!
//! - SIGINT: exit at once.
//! - SIGTERM: stop accepting on the public listener (keep-alive connections close after their
//!   current request; admin stays up, `/readyz` answers 503), wait until no request is in
//!   flight or the grace period ends, then end what still runs with a `server_shutting_down`
//!   error event, and exit 0.
//! - SIGQUIT: Pingora's socket hand-over to a new process (its default behaviour).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::state::Shared;

/// How long aborted requests get to write their error event and finish.
const ABORT_WINDOW: Duration = Duration::from_secs(2);

pub struct SignalWatch {
    pub shared: Arc<Shared>,
    /// Tells the public listener to stop accepting and its sessions to wind down.
    pub drain: watch::Sender<bool>,
    pub grace: Duration,
}

impl SignalWatch {
    /// Waits until no request is in flight; returns false if `limit` passed first.
    async fn settle(&self, limit: Duration) -> bool {
        // `None`: a limit past the clock's range (the config takes any duration) never ends.
        let deadline = tokio::time::Instant::now().checked_add(limit);
        loop {
            if self.shared.lifecycle.inflight() == 0 {
                return true;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn terminate(&self) {
        let lifecycle = &self.shared.lifecycle;
        lifecycle.start_draining();
        let _ = self.drain.send(true);
        tracing::info!(
            inflight = lifecycle.inflight(),
            grace = ?self.grace,
            "SIGTERM: stopped accepting; waiting for requests in flight"
        );
        if self.settle(self.grace).await {
            tracing::info!("no request in flight; exiting");
            return;
        }
        let aborted = lifecycle.abort_all();
        tracing::warn!(
            aborted,
            "grace period over; ending the remaining requests with server_shutting_down"
        );
        if !self.settle(ABORT_WINDOW).await {
            tracing::warn!(
                left = lifecycle.inflight(),
                "requests still running after the abort window; exiting anyway"
            );
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut int), Ok(mut term), Ok(mut quit)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => {
                tokio::select! {
                    () = self.terminate() => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}
