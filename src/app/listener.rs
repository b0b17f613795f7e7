//! A Pingora listening service whose socket the gateway binds itself, so that the bound
//! address is known (port 0 works) and logged as `listening on ADDR (label)`.
//!
//! Pingora binds inside `start_service` and never reports the address. It does, however,
//! adopt an already-listening fd that sits in its fd table under the address string — that is
//! how a SIGQUIT upgrade hands sockets over. So we bind, register the fd under the concrete
//! address, and let Pingora adopt it. An fd already in the table under the configured address
//! (an upgrade in progress) is used as is.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::listening::Service as ListeningService;
use pingora_core::services::Service;
use tokio::sync::watch;

/// Read buffer per client connection: none. Pingora's default puts a 64 KiB buffer in front
/// of the socket, and every request header was read into it and then copied into the HTTP
/// session's own buffer (bodies are read in 64 KiB chunks either way). Without it the header is
/// read once, straight into the session. Measured with 2 000 idle streams: 56.9 KiB RSS per
/// stream with a 16 KiB buffer, 52.6 KiB with none.
const READ_BUFFER: usize = 0;

/// Wraps a listening service that has no listeners yet.
pub struct BoundService<A> {
    inner: ListeningService<A>,
    addr: SocketAddr,
    label: &'static str,
    threads: Option<usize>,
    /// Stops this listener (and winds its sessions down) before Pingora's own shutdown.
    drain: Option<watch::Receiver<bool>>,
    tls: Option<TlsSettings>,
}

impl<A> BoundService<A> {
    pub fn new(inner: ListeningService<A>, addr: SocketAddr, label: &'static str) -> Self {
        Self {
            inner,
            addr,
            label,
            threads: None,
            drain: None,
            tls: None,
        }
    }

    /// Serves TLS with these settings (`None`: plain).
    pub fn tls(mut self, tls: Option<TlsSettings>) -> Self {
        self.tls = tls;
        self
    }

    /// Also stop when `drain` turns true (graceful shutdown drains the public listener
    /// while the admin listener keeps answering).
    pub fn drain_on(mut self, drain: watch::Receiver<bool>) -> Self {
        self.drain = Some(drain);
        self
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }
}

/// Binds `addr` and registers the fd in Pingora's table; returns the key Pingora will look up.
fn bind_into(fds: &ListenFds, addr: SocketAddr) -> std::io::Result<String> {
    let configured = addr.to_string();
    if addr.port() != 0 && fds.lock().get(&configured).is_some() {
        return Ok(configured);
    }
    let listener = TcpListener::bind(addr)?;
    // std listens with a backlog of 128; a burst of new connections (a thousand streams
    // starting together) overflowed it. Listening again sets the system's maximum, as
    // Pingora's own listeners have it.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXALLOWABLE)?;
    // Tokio adopts the fd as is and needs it non-blocking.
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?.to_string();
    fds.lock().add(bound.clone(), listener.into_raw_fd());
    Ok(bound)
}

/// A watch that turns true when either input does.
fn either(mut a: ShutdownWatch, mut b: watch::Receiver<bool>) -> ShutdownWatch {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            if *a.borrow() || *b.borrow() {
                let _ = tx.send(true);
                return;
            }
            tokio::select! {
                r = a.changed() => if r.is_err() { return },
                r = b.changed() => if r.is_err() { return },
            }
        }
    });
    rx
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for BoundService<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let key = match &fds {
            Some(fds) => bind_into(fds, self.addr),
            None => Ok(self.addr.to_string()),
        };
        match key {
            Ok(key) => {
                let tls = if self.tls.is_some() { " with TLS" } else { "" };
                tracing::info!("listening on {key} ({}){tls}", self.label);
                let mut listener = ListenerConfig::tcp(key.as_str())
                    .l4_buffer(L4BufferSettings::default().read(READ_BUFFER));
                if let Some(settings) = self.tls.take() {
                    listener = listener.tls(settings);
                }
                self.inner.add_listener(listener);
                let shutdown = match self.drain.take() {
                    Some(drain) => either(shutdown, drain),
                    None => shutdown,
                };
                self.inner
                    .start_service(fds, shutdown, listeners_per_fd)
                    .await;
            }
            Err(e) => {
                tracing::error!("cannot listen on {} ({}): {e}", self.addr, self.label);
                // Without its listener the gateway is useless; exit rather than run half-up.
                std::process::exit(1);
            }
        }
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }
}

#[cfg(feature = "tls")]
pub use certificate::listener_settings;

/// The public listener's certificate, the current runtime's at every handshake.
#[cfg(feature = "tls")]
mod certificate {
    use std::fmt;
    use std::sync::Arc;

    use pingora_core::listeners::tls::TlsSettings;
    use pingora_rustls::sign::CertifiedKey;
    use pingora_rustls::{ClientHello, ResolvesServerCert};

    use crate::state::Shared;

    /// Hands every handshake the current runtime's certificate.
    pub struct CurrentCert(Arc<Shared>);

    impl fmt::Debug for CurrentCert {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CurrentCert")
        }
    }

    impl ResolvesServerCert for CurrentCert {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            self.0.runtime().tls_cert.clone()
        }
    }

    /// The public listener's TLS: TLS 1.2 and 1.3 (Pingora's rustls acceptor), the current
    /// certificate, ALPN h2 then http/1.1.
    pub fn listener_settings(shared: Arc<Shared>) -> pingora_error::Result<TlsSettings> {
        // No files: the resolver gives the certificate.
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(Arc::new(CurrentCert(shared)));
        settings.enable_h2();
        Ok(settings)
    }
}
