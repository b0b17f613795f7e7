//! TLS with rustls (ring): the public listener's certificate, and the client side of
//! `https://` servers.
//!
//! The listener's certificate is part of the runtime: every reload (SIGHUP, the admin call)
//! reads `server.tls.cert` and `key` again, and a file that does not load refuses the reload
//! like any other config error. Each handshake takes the current runtime's certificate
//! (`app::listener::CurrentCert`), so a renewed certificate is served to new connections at once while the
//! open ones go on undisturbed. TLS 1.2 and 1.3; ALPN offers `h2` then `http/1.1`.
//!
//! `https://` servers are checked against the pool's `tls.ca_file`, or the system's roots,
//! with the URL's host as SNI and the name checked. Whole answers go through Pingora's own
//! TLS connector (the CA per peer); streams through the hold, which speaks TLS itself below
//! its framing (proxy/hold).
//!
//! TLS is the `tls` cargo feature (`cargo build --release --features tls`). Without it the
//! crate carries no TLS code: built in, Pingora's TLS types make every request's futures larger
//! and cost plain HTTP about 5 000 instructions a request (+5 %, BENCHMARKS.md), which a
//! gateway behind a TLS-terminating load balancer should not pay. A config that asks for TLS
//! from a build without it is refused, with the path and the flag to build with.

pub use imp::*;

#[cfg(feature = "tls")]
mod imp {
    use std::io;
    use std::path::Path;
    use std::sync::Arc;

    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    pub use pingora_rustls::sign::CertifiedKey;
    pub use pingora_rustls::ClientConfig;
    use pingora_rustls::{
        load_ca_file_into_store, load_certs_and_key_files, load_platform_certs_incl_env_into_store,
        version, CryptoProvider, RootCertStore, TlsConnector,
    };
    use tokio::net::TcpStream;

    /// The name an `https://` server's certificate must carry (and the SNI).
    pub type Name = pingora_rustls::ServerName<'static>;
    /// A TLS connection to a server.
    pub type ClientStream = pingora_rustls::ClientTlsStream<TcpStream>;

    /// `host` as a name TLS can check, if it is one.
    pub fn server_name(host: &str) -> Option<Name> {
        Name::try_from(host.to_owned()).ok()
    }

    /// The TCP connection under a TLS one.
    pub fn tcp_of(s: &ClientStream) -> &TcpStream {
        s.get_ref().0
    }

    /// The same peer over TLS: SNI and the name checked from `host`, the pool's CA list.
    pub fn peer(
        plain: pingora_core::upstreams::peer::HttpPeer,
        host: &str,
        tls: Option<&UpstreamTls>,
    ) -> pingora_core::upstreams::peer::HttpPeer {
        let mut peer = pingora_core::upstreams::peer::HttpPeer::new(
            plain._address.clone(),
            true,
            host.to_owned(),
        );
        peer.options = plain.options;
        peer.options.ca = tls.and_then(|t| t.ca.clone());
        peer
    }

    /// TLS over `tcp` to the server named `name`.
    pub async fn connect(
        config: &Arc<ClientConfig>,
        name: &Name,
        tcp: TcpStream,
    ) -> io::Result<ClientStream> {
        TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await
    }

    /// Loads a PEM certificate chain and its private key.
    pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
        pingora_rustls::install_default_crypto_provider();
        let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
        let (chain, key) = load_certs_and_key_files(&cert, &key)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no certificate in {cert:?} or no private key in {key:?}"))?;
        let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("the private key cannot sign: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }

    /// The roots `https://` servers of a pool are checked against: its CA file, else the system's.
    fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => load_ca_file_into_store(path, &mut roots).map_err(|e| e.to_string())?,
            None => {
                load_platform_certs_incl_env_into_store(&mut roots).map_err(|e| e.to_string())?
            }
        }
        if roots.is_empty() {
            return Err("no CA certificate to check servers against".to_owned());
        }
        Ok(roots)
    }

    /// A pool's client side of TLS: the config the hold's connections use (HTTP/1.1), and the CA
    /// list for Pingora's peers (`None`: the system's roots, Pingora's default).
    pub struct UpstreamTls {
        pub client: Arc<ClientConfig>,
        pub ca: Option<Arc<[WrappedX509]>>,
    }

    impl UpstreamTls {
        pub fn build(ca_file: Option<&Path>) -> Result<Self, String> {
            pingora_rustls::install_default_crypto_provider();
            let roots = roots(ca_file)?;
            let mut client =
                ClientConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            // Every certificate of the file parsed as X.509 when the roots were built: wrapping
            // them again cannot fail.
            let ca = match ca_file {
                Some(path) => Some(ca_list(path)?),
                None => None,
            };
            Ok(Self {
                client: Arc::new(client),
                ca,
            })
        }
    }

    /// The certificates of a PEM CA file as Pingora's peers take them.
    fn ca_list(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut out = Vec::new();
        for item in rustls_pemfile::certs(&mut pem.as_slice()) {
            let der = item.map_err(|e| format!("{}: {e}", path.display()))?;
            // Checked by the root store first: parse_x509 panics on what is not X.509.
            RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            out.push(WrappedX509::new(der.to_vec(), parse_x509));
        }
        Ok(out.into())
    }
}

/// This build has no TLS: the same names, refusing what needs it.
#[cfg(not(feature = "tls"))]
mod imp {
    use std::io;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    const NO_TLS: &str = "this build has no TLS: build with `--features tls`";

    #[derive(Debug)]
    pub struct CertifiedKey;
    #[derive(Debug)]
    pub struct ClientConfig;
    #[derive(Debug, Clone)]
    pub struct Name;
    /// No TLS connection can exist.
    #[derive(Debug)]
    pub enum ClientStream {}

    pub fn server_name(_host: &str) -> Option<Name> {
        Some(Name)
    }

    pub fn tcp_of(s: &ClientStream) -> &TcpStream {
        match *s {}
    }

    /// Never reached: a runtime with TLS servers is refused first.
    pub fn peer(
        plain: pingora_core::upstreams::peer::HttpPeer,
        _host: &str,
        _tls: Option<&UpstreamTls>,
    ) -> pingora_core::upstreams::peer::HttpPeer {
        plain
    }

    pub async fn connect(
        _: &Arc<ClientConfig>,
        _: &Name,
        _: TcpStream,
    ) -> io::Result<ClientStream> {
        Err(io::Error::other(NO_TLS))
    }

    pub fn load_certified_key(_cert: &Path, _key: &Path) -> Result<Arc<CertifiedKey>, String> {
        Err(NO_TLS.to_owned())
    }

    pub struct UpstreamTls {
        pub client: Arc<ClientConfig>,
    }

    impl UpstreamTls {
        pub fn build(_ca_file: Option<&Path>) -> Result<Self, String> {
            Err(NO_TLS.to_owned())
        }
    }

    impl AsyncRead for ClientStream {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match *self {}
        }
    }

    impl AsyncWrite for ClientStream {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            match *self {}
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self {}
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self {}
        }
    }
}
