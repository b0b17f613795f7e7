//! Black-box harness: the real `switchyard` binary on port 0, simulator upstreams started as
//! `switchyard sim` processes, addresses read from their `listening on ADDR (label)` log lines.
//! Nothing sleeps to wait for a server: a process is usable once its line has been read.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod canned;
pub mod redis;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// How long a process may take to print its listening lines.
const STARTUP: Duration = Duration::from_secs(30);

/// A child process killed on drop, with its stderr (and stdout) lines collected.
pub struct Proc {
    child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stderr holds `n` lines containing `text` (log lines reach us through a
    /// pipe); panics after 10 s.
    pub fn wait_for_stderr(&self, text: &str, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let count = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count();
            if count >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {n}x {text:?} in stderr:\n{}",
                self.stderr.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit status (for processes expected to exit on their own).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }

    /// The exit status if the process exits within `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Collects lines of `r` into `sink`, forwarding each to `tx` while anyone listens.
fn pump(
    r: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
}

/// Starts `switchyard ARGS` and waits until it has logged `listening on ADDR (label)` for
/// every label; returns the process and the addresses in label order.
pub fn spawn(args: &[&str], labels: &[&str]) -> (Proc, Vec<SocketAddr>) {
    spawn_env(args, labels, &[])
}

/// `spawn` with extra environment variables.
pub fn spawn_env(args: &[&str], labels: &[&str], env: &[(&str, &str)]) -> (Proc, Vec<SocketAddr>) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    let mut found: Vec<Option<SocketAddr>> = vec![None; labels.len()];
    let proc = start(cmd, &format!("switchyard {args:?}"), STARTUP, |line| {
        for (i, label) in labels.iter().enumerate() {
            let suffix = format!(" ({label})");
            if let Some(pos) = line.find("listening on ") {
                let rest = &line[pos + "listening on ".len()..];
                if let Some(addr) = rest.split(' ').next() {
                    if rest[addr.len()..].starts_with(&suffix) {
                        found[i] = Some(addr.parse().expect("address in log line"));
                    }
                }
            }
        }
        found.iter().all(Option::is_some)
    });
    (proc, found.into_iter().map(Option::unwrap).collect())
}

/// Starts `cmd` with its output collected, and returns once `ready` said yes to one of its
/// stderr lines; panics, with what it logged, when that takes longer than `limit`.
pub fn start(
    mut cmd: Command,
    what: &str,
    limit: Duration,
    mut ready: impl FnMut(&str) -> bool,
) -> Proc {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    pump(child.stdout.take().unwrap(), stdout.clone(), None);
    pump(child.stderr.take().unwrap(), stderr.clone(), Some(tx));
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if ready(&line) => break,
            Ok(_) => {}
            Err(_) => panic!(
                "{what} did not log that it is ready; stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            ),
        }
    }
    Proc {
        child,
        stdout,
        stderr,
    }
}

/// A simulated inference server process.
pub struct Sim {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Sim {
    /// `switchyard sim` on a free port, serving `model`, with extra flags.
    pub fn start(model: &str, extra: &[&str]) -> Self {
        Self::start_at(model, "127.0.0.1:0".parse().unwrap(), extra)
    }

    /// `start` on a given address (a server that comes up where a gateway already points).
    pub fn start_at(model: &str, addr: SocketAddr, extra: &[&str]) -> Self {
        let listen = addr.to_string();
        let mut args = vec!["sim", "--listen", &listen, "--model", model];
        args.extend_from_slice(extra);
        let (proc, addrs) = spawn(&args, &["sim"]);
        Self {
            proc,
            addr: addrs[0],
        }
    }

    /// A fast simulator: no engine delays.
    pub fn fast(model: &str) -> Self {
        Self::start(model, &["--zero-delay"])
    }

    /// A simulator that makes one token every `step_ms` whatever the batch, with no prefill
    /// delay, and extra flags.
    pub fn paced(model: &str, step_ms: u32, extra: &[&str]) -> Self {
        let step = step_ms.to_string();
        let mut args = vec![
            "--decode-step-ms",
            &step,
            "--decode-us-per-seq",
            "0",
            "--prefill-us-per-token",
            "0",
        ];
        args.extend_from_slice(extra);
        Self::start(model, &args)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Keeps the server busy: `n` completions of `max_tokens` sent straight to it (not through
    /// a gateway), running until their tasks are aborted or end.
    pub fn occupy(
        &self,
        model: &str,
        n: usize,
        max_tokens: u32,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let url = format!("{}/v1/completions", self.url());
        (0..n)
            .map(|_| {
                let url = url.clone();
                let body =
                    serde_json::json!({"model": model, "prompt": "x", "max_tokens": max_tokens});
                tokio::spawn(async move {
                    let _ = client().post(url).json(&body).send().await;
                })
            })
            .collect()
    }

    /// Reads one counter or gauge from the simulator's /metrics.
    /// Waits until at least `n` requests are running on it (a request the test started
    /// has reached the engine); panics after 10 s.
    pub async fn wait_running(&self, n: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.metric("vllm:num_requests_running").await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} requests ever ran"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = get_text(&format!("{}/metrics", self.url())).await;
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in sim metrics:\n{text}"))
    }
}

/// Polls a Prometheus endpoint until `name` reads `expected` (metrics are recorded after the
/// response is sent, so a reader can be a moment early); returns the last text read.
pub async fn metric_eventually(url: &str, name: &str, expected: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = get_text(url).await;
        if metric_value(&text, name) == Some(expected) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {expected}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of the first sample whose name (with labels) starts with `name`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A gateway process on port 0 with a config file written for it.
pub struct Gateway {
    pub proc: Proc,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Runs the gateway on `yaml`, in which `listen` and `admin` are set to port 0 here.
    pub fn start(yaml: &str) -> Self {
        Self::start_env(yaml, &[])
    }

    /// `start` with extra environment variables for the gateway.
    pub fn start_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("switchyard.yaml");
        write_config(&path, yaml);
        let (proc, addrs) = spawn_env(
            &["run", "-c", path.to_str().unwrap()],
            &["api", "admin"],
            env,
        );
        Self {
            proc,
            api: addrs[0],
            admin: addrs[1],
            config: path,
            _dir: dir,
        }
    }

    /// Replaces the config file (for reload tests); same port-0 listeners as at start.
    pub fn rewrite_config(&self, yaml: &str) {
        write_config(&self.config, yaml);
    }

    /// A gateway with one model `m` (alias `m-alias`) served by these servers as pool `p`
    /// under the served name `served`; `extra` is appended to the YAML.
    pub fn single(served: &str, servers: &[String], extra: &str) -> Self {
        let list: String = servers
            .iter()
            .map(|s| format!("      - url: {s}\n"))
            .collect();
        Self::start(&format!(
            "pools:\n  p:\n    model: {served}\n    engine: vllm\n    servers:\n{list}models:\n  m:\n    pool: p\n    aliases: [m-alias]\n{extra}"
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// POSTs a JSON body to the public port.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A one-token completion for `model`; returns the status.
    pub async fn tiny_completion(&self, model: &str) -> u16 {
        let body = serde_json::json!({"model": model, "prompt": "x", "max_tokens": 1});
        let resp = self.post("/v1/completions", &body).await;
        let status = resp.status().as_u16();
        resp.bytes().await.unwrap();
        status
    }

    /// `POST /admin/reload` on the admin port.
    pub async fn reload(&self) -> reqwest::Response {
        client()
            .post(self.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
    }

    /// Waits (10 s at most) until `/admin/servers` shows an engine reading of server `i` of
    /// the first pool whose load satisfies `pred`: the gateway has scraped it.
    pub async fn wait_server_load(&self, i: usize, pred: impl Fn(f64) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let servers = get_json(&self.admin_url("/admin/servers")).await;
            let load = servers["pools"][0]["servers"][i]["load"].as_f64();
            if load.is_some_and(&pred) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "load never as wanted: {servers}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The access log once it has at least `n` lines (it reaches us through a pipe).
    pub async fn access_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.access_log();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The access log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.proc
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Writes a config with port-0 listeners, atomically (a reload never reads half a file).
fn write_config(path: &std::path::Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{yaml}"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends a signal to a process (no dependency on a `kill` binary).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

/// GETs a URL and returns its body as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GETs a URL and parses its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An HTTP/2 cleartext (prior knowledge) client.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Asserts an OpenAI-shaped error body and returns it.
pub async fn openai_error(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json"));
    let v: serde_json::Value = resp.json().await.unwrap();
    let e = &v["error"];
    assert!(e["message"].is_string(), "message in {v}");
    assert!(e["type"].is_string(), "type in {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param/code in {v}"
    );
    v
}

/// `sha256:<hex>` of a key, as `switchyard key hash` prints it.
pub fn key_digest(key: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["key", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(key.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `tests/sdk/SCRIPT` (the official OpenAI Python SDK) with `args` and extra environment,
/// off the async runtime; returns its stdout once it succeeded (panics with both outputs
/// otherwise).
pub async fn sdk(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(path)
            .args(args)
            .envs(env)
            .output()
            .expect("python3 is required for this test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}
