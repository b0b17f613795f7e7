//! The read timeout of held streams' sockets (socket.rs), kept by the socket itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The read timeout of a held stream: a read fails once the server has sent nothing for the
/// limit since the read began (or since the server last took request bytes), as Pingora's
/// `read_timeout` does. Pingora's registers a timer on every read, one per event of a stream,
/// and that was 7 % of a stream's instructions (callgrind). This one reads the clock when a
/// read begins and keeps one timer armed per connection, moved only when it fires early.
#[derive(Debug)]
pub struct Silence {
    limit: Duration,
    /// When the read in progress began; `None` between reads.
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Silence {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            since: None,
            timer: None,
        }
    }

    /// A read begins (or goes on).
    pub fn begin(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// The read returned.
    pub fn end(&mut self) {
        self.since = None;
    }

    /// The server took request bytes: a read in progress counts from now, so the wait for
    /// the first byte of the answer starts at the request's last byte.
    pub fn progress(&mut self) {
        if self.since.is_some() {
            self.since = Some(Instant::now());
        }
    }

    /// The read is pending: an error once the server was silent for the limit; otherwise
    /// the timer wakes this task by then.
    pub fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // A limit past the clock's range (the config takes any duration) never fires.
        let Some(deadline) = self.since.and_then(|since| since.checked_add(self.limit)) else {
            return Ok(());
        };
        // Reads begin one after another, so the timer is never later than this deadline.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("upstream silent for {:?}", self.limit),
                ));
            }
            // Armed for an earlier read: move it to this one's deadline.
            timer.as_mut().reset(deadline);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_past_the_clocks_range_never_fires() {
        let mut silence = Silence::new(Duration::MAX);
        silence.begin();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(silence.check(&mut cx).is_ok());
    }
}
