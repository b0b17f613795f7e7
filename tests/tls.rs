//! TLS on the public port and to `https://` servers, with a test CA made here: the official
//! OpenAI SDK over TLS through a gateway whose servers are themselves behind TLS (a second
//! gateway); ALPN offers h2 and http/1.1; a renewed certificate is served after a reload
//! while a connection opened before it keeps streaming; a bad certificate is refused.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::{Gateway, Sim};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A CA and a certificate it signed for localhost and 127.0.0.1, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(name: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |file: &str, pem: String| {
        let path = dir.path().join(file);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        dir,
    }
}

fn tls_yaml(pki: &Pki) -> String {
    format!(
        "server:\n  tls:\n    cert: {}\n    key: {}\n",
        pki.cert.display(),
        pki.key.display()
    )
}

/// A client that trusts only `ca`.
fn client(ca: &Path) -> reqwest::Client {
    trusting(ca).build().unwrap()
}

/// A client builder that trusts only `ca`.
fn trusting(ca: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
}

#[tokio::test]
async fn the_openai_sdk_over_tls_through_https_servers() {
    let sim = Sim::fast(SERVED);
    let front = pki("front");
    let back = pki("back");
    // The "server" behind TLS: a gateway in front of the simulator.
    let upstream = Gateway::start(&format!(
        "{}pools:\n  p:\n    model: {SERVED}\n    servers:\n      - url: {}\nmodels:\n  {SERVED}:\n    pool: p\n",
        tls_yaml(&back),
        sim.url()
    ));
    let gw = Gateway::start(&format!(
        "{}pools:\n  p:\n    model: {SERVED}\n    engine: openai\n    tls:\n      ca_file: {}\n    servers:\n      - url: https://localhost:{}\nmodels:\n  m:\n    pool: p\n",
        tls_yaml(&front),
        back.ca.display(),
        upstream.api.port()
    ));
    let base = format!("https://localhost:{}", gw.api.port());
    let ca = front.ca.display().to_string();
    let stdout = common::sdk("tls.py", &[&base], &[("SSL_CERT_FILE", &ca)]).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "chat length 4",
            "chat-stream length 5",
            "completion length 3"
        ],
        "{stdout}"
    );
    // Every call reached the simulator through both gateways, each over TLS.
    assert_eq!(sim.metric("switchyard_sim_http_requests_total").await, 3.0);
    let log = upstream.access_log_lines(3).await;
    assert!(log.iter().all(|l| l["status"] == 200), "{log:?}");
    drop(back.dir);
}

#[tokio::test]
async fn alpn_offers_h2_and_http11_and_plain_http_is_not_served() {
    let sim = Sim::fast(SERVED);
    let own = pki("alpn");
    let gw = Gateway::start(&format!(
        "{}pools:\n  p:\n    model: {SERVED}\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
        tls_yaml(&own),
        sim.url()
    ));
    let url = format!("https://localhost:{}/v1/models", gw.api.port());
    let h2 = client(&own.ca).get(&url).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    let h1 = trusting(&own.ca).http1_only().build().unwrap();
    let resp = h1.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    // A client that does not trust the CA is refused in the handshake.
    let stranger = pki("stranger");
    assert!(client(&stranger.ca).get(&url).send().await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = common::client()
        .get(format!("http://127.0.0.1:{}/v1/models", gw.api.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

/// A renewed certificate is served to new connections after a reload (SIGHUP), while a stream
/// on a connection opened before it goes on to its end; a certificate that does not load is
/// refused and the old one keeps serving.
#[tokio::test]
async fn a_reload_renews_the_certificate_without_dropping_connections() {
    let sim = Sim::paced(SERVED, 20, &[]);
    let old = pki("old");
    let yaml = |pki: &Pki| {
        format!(
            "{}pools:\n  p:\n    model: {SERVED}\n    servers:\n      - url: {}\nmodels:\n  m:\n    pool: p\n",
            tls_yaml(pki),
            sim.url()
        )
    };
    let gw = Gateway::start(&yaml(&old));
    let base = format!("https://localhost:{}", gw.api.port());
    let before = client(&old.ca);
    let stream = before
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "m", "stream": true, "max_tokens": 30,
            "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let new = pki("new");
    gw.rewrite_config(&yaml(&new));
    common::signal(gw.proc.pid(), nix::sys::signal::Signal::SIGHUP);
    gw.proc.wait_for_stderr("config reloaded", 1);
    // New connections get the new certificate: a client trusting only the new CA connects,
    // one trusting only the old one does not.
    let models = format!("{base}/v1/models");
    assert_eq!(
        client(&new.ca).get(&models).send().await.unwrap().status(),
        200
    );
    assert!(client(&old.ca).get(&models).send().await.is_err());
    // The stream opened before goes on to its end.
    let text = stream.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("error"), "{text}");
    // A key that does not go with anything: refused, the new certificate stays.
    std::fs::write(&new.key, "not a key").unwrap();
    let refused = gw.reload().await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(body.contains("server.tls"), "{body}");
    assert_eq!(
        client(&new.ca).get(&models).send().await.unwrap().status(),
        200
    );
}
