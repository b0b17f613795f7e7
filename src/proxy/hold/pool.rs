//! The pool of held streams' upstream connections (the hold, mod.rs): per upstream address, the
//! connections whose last exchange ended whole, newest last, each for [`IDLE_FOR`] at most.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::lock;

/// Longest a connection waits in the pool for its next stream: below the 5 s keep-alive
/// timeout of uvicorn (vLLM, SGLang) and of llama.cpp's server, so that a server rarely closes
/// one just as it is reused.
pub const IDLE_FOR: Duration = Duration::from_secs(4);

/// Held connections whose last exchange ended cleanly, per upstream address, newest last.
#[derive(Debug, Default)]
pub struct HeldPool {
    idle: Mutex<HashMap<std::net::SocketAddr, Vec<Idle>>>,
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    tcp: TcpStream,
    since: Instant,
}

impl HeldPool {
    /// The newest idle connection to `addr` that is still open.
    pub(super) fn take(&self, addr: std::net::SocketAddr) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() >= IDLE_FOR {
                // The rest waited longer still.
                list.clear();
                break;
            }
            // A server that closed it has left an end of stream (or bytes it had no reason
            // to send): either way it is not taken.
            if let Err(e) = c.tcp.try_read(&mut [0u8; 1]) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Some(c.tcp);
                }
            }
        }
        None
    }

    /// Keeps `tcp` for the next stream to `addr`, up to `max` per address.
    pub(super) fn put(self: &Arc<Self>, addr: std::net::SocketAddr, tcp: TcpStream, max: usize) {
        {
            let mut idle = lock(&self.idle);
            let list = idle.entry(addr).or_default();
            list.retain(|c| c.since.elapsed() < IDLE_FOR);
            if list.len() >= max {
                return;
            }
            list.push(Idle {
                tcp,
                since: Instant::now(),
            });
        }
        // Connections nobody takes are closed after IDLE_FOR even when traffic stops. (A socket
        // dropped outside any runtime, at exit, starts no sweeper.)
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let pool = Arc::downgrade(self);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(IDLE_FOR).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let mut idle = lock(&pool.idle);
                    idle.retain(|_, list| {
                        list.retain(|c| c.since.elapsed() < IDLE_FOR);
                        !list.is_empty()
                    });
                    if idle.is_empty() {
                        pool.sweeping.store(false, Ordering::Release);
                        return;
                    }
                }
            });
        }
    }

    /// Drops every idle connection to `addr` (one of them turned out closed: so may the rest).
    pub(super) fn forget(&self, addr: std::net::SocketAddr) {
        lock(&self.idle).remove(&addr);
    }

    #[cfg(test)]
    pub(super) fn idle(&self, addr: std::net::SocketAddr) -> usize {
        lock(&self.idle).get(&addr).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection nobody takes is closed after IDLE_FOR, and the sweeper stops once
    /// the pool is empty.
    #[tokio::test]
    async fn idle_connections_are_closed_after_idle_for_when_traffic_stops() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut server = accepted.unwrap().0;
        let pool = Arc::new(HeldPool::default());
        tokio::time::pause();
        pool.put(addr, tcp.unwrap(), 8);
        assert_eq!(pool.idle(addr), 1);
        tokio::time::sleep(IDLE_FOR / 2).await;
        assert_eq!(pool.idle(addr), 1, "closed before its time");
        tokio::time::sleep(IDLE_FOR).await;
        assert_eq!(pool.idle(addr), 0);
        assert!(!pool.sweeping.load(Ordering::Acquire));
        tokio::time::resume();
        let mut rest = Vec::new();
        assert_eq!(
            server.read_to_end(&mut rest).await.unwrap(),
            0,
            "the server saw it close"
        );
    }
}
