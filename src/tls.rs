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

use std::path::Path;
use std::sync::Arc;

use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{
    load_ca_file_into_store, load_certs_and_key_files, load_platform_certs_incl_env_into_store,
    version, ClientConfig, CryptoProvider, RootCertStore,
};

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
        None => load_platform_certs_incl_env_into_store(&mut roots).map_err(|e| e.to_string())?,
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
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
