//! The `switchyard` command: run, check, demo, sim.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use switchyard::config::{self, LogFormat};
use switchyard::sim::{self, SimArgs};

/// An LLM inference gateway: one OpenAI-compatible API in front of self-hosted GPU servers.
#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of a running gateway: start this process, then send
        /// SIGQUIT to the old one (zero-downtime binary upgrade; see systemd/README.md).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file; print every error as `YAML path: reason`. Opens no sockets.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the routing decision for a request read from stdin, without opening any socket:
    /// each rule tried and why, the candidates, the pick. Exit 0 when the request is routed,
    /// 1 when it would be refused (the refusal is printed).
    Route {
        #[arg(short, long)]
        config: PathBuf,
        /// A request header, `NAME:VALUE` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// The tenant the request comes from (its model list applies).
        #[arg(long)]
        tenant: Option<String>,
        /// The path the request is sent to.
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// The trace as JSON (what `POST /admin/route` answers).
        #[arg(long)]
        json: bool,
    },
    /// The gateway in front of three simulated GPU servers, on the embedded demo config.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// One simulated inference server (vLLM-like API and metrics).
    Sim(SimArgs),
    /// API keys for `tenants.*.keys`.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Print the `sha256:<hex>` digest of the key read from stdin (one line; the key never
    /// goes on a command line or into the config).
    Hash,
    /// Print a new random key and, on stderr, its digest.
    New,
}

/// The demo config; its server ports are replaced by the simulators' bound ports.
const DEMO_CONFIG: &str = include_str!("../conf/demo.yaml");

/// Logs to stderr: `RUST_LOG` when set, else `level`; JSON lines or text.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo { .. } | Command::Sim(_)) {
        init_logging("info", LogFormat::Text);
    }
    let result = match cli.command {
        Command::Run { config, upgrade } => run(&config, upgrade),
        Command::Check { config } => return check(&config),
        Command::Route {
            config,
            headers,
            tenant,
            path,
            json,
        } => return route(&config, &headers, tenant.as_deref(), &path, json),
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Sim(args) => run_sim(args),
        Command::Key { action } => key(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, upgrade: bool) -> anyhow::Result<()> {
    let config = config::load(path)?;
    init_logging(&config.server.log_level, config.server.log_format);
    switchyard::app::run(config, Some(path.to_owned()), upgrade)?;
    Ok(())
}

fn check(path: &Path) -> ExitCode {
    let loaded = config::load(path).and_then(|c| {
        // `run` resolves every server's host at start: so does `check`.
        let unresolved = switchyard::state::unresolved(&c);
        if unresolved.is_empty() {
            Ok(c)
        } else {
            Err(config::LoadError::Invalid(unresolved))
        }
    });
    match loaded {
        Ok(c) => {
            println!(
                "{}: ok ({} pools, {} models, {} tenants, auth {})",
                path.display(),
                c.pools.len(),
                c.models.len(),
                c.tenants.len(),
                c.auth.name()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for err in e.errors() {
                eprintln!("{err}");
            }
            ExitCode::FAILURE
        }
    }
}

fn route(
    path: &Path,
    headers: &[String],
    tenant: Option<&str>,
    api_path: &str,
    json: bool,
) -> ExitCode {
    match dry_run(path, headers, tenant, api_path) {
        Ok((trace, routed)) => {
            if json {
                let mut v = serde_json::to_value(&trace).unwrap_or_default();
                v["status"] = routed.err().unwrap_or(200).into();
                println!("{v:#}");
            } else {
                print!("{}", trace.render());
            }
            if routed.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dry_run(
    path: &Path,
    headers: &[String],
    tenant: Option<&str>,
    api_path: &str,
) -> anyhow::Result<(switchyard::routing::Trace, Result<(), u16>)> {
    use std::io::Read as _;
    let config = config::load(path)?;
    let endpoint = switchyard::openai::Endpoint::from_path(api_path).ok_or_else(|| {
        anyhow!("{api_path:?} is not an inference path (/v1/chat/completions, /v1/completions, /v1/embeddings)")
    })?;
    let mut map = http::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header {h:?}: expected NAME:VALUE"))?;
        map.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--header {h:?}"))?,
            http::HeaderValue::from_str(value.trim()).with_context(|| format!("--header {h:?}"))?,
        );
    }
    let list = match tenant {
        None => None,
        Some(name) => Some(
            config
                .tenants
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    anyhow!(
                        "--tenant {name:?}: no tenant of that name in {}",
                        path.display()
                    )
                })?
                .models
                .clone(),
        ),
    };
    let allowed = |m: usize| {
        list.as_ref()
            .is_none_or(|l| l.as_ref().is_none_or(|l| l.contains(&m)))
    };
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("reading the request from stdin")?;
    let caller = switchyard::proxy::Caller {
        tenant,
        allowed: &allowed,
    };
    // Classifiers that call a model call the configured servers, as the gateway would.
    let shared = switchyard::state::Shared::new(config, switchyard::metrics::Metrics::new()?, None)
        .map_err(|errs| {
            anyhow!(
                "{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    let runtime = shared.runtime();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the classifiers' calls")?;
    Ok(tokio.block_on(async {
        let connector = pingora_core::connectors::http::Connector::new(None);
        for (name, result) in switchyard::proxy::call::embed_exemplars(
            &runtime,
            &connector,
            std::time::Duration::from_secs(5),
        )
        .await
        {
            if let Err(e) = result {
                eprintln!("switchyard: classifiers.{name}: exemplar vectors not computed: {e}");
            }
        }
        let backend = switchyard::proxy::call::Calls {
            runtime: &runtime,
            connector: &connector,
            request_id: None,
        };
        switchyard::proxy::dry_run(
            &runtime.router,
            &switchyard::routing::Offline,
            endpoint,
            &body,
            &map,
            &caller,
            &backend,
        )
        .await
    }))
}

fn key(action: KeyAction) -> anyhow::Result<()> {
    use std::io::Read as _;
    use switchyard::limits::keys;
    match action {
        KeyAction::Hash => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the key from stdin")?;
            let key = input.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                return Err(anyhow!(
                    "no key on stdin (e.g. `printf %s \"$KEY\" | switchyard key hash`)"
                ));
            }
            println!("{}", keys::format(&keys::digest(key.as_bytes())));
        }
        KeyAction::New => {
            let mut random = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut random))
                .context("reading /dev/urandom")?;
            let key: String = std::iter::once("sk-sy-".to_owned())
                .chain(random.iter().map(|b| format!("{b:02x}")))
                .collect();
            println!("{key}");
            eprintln!(
                "digest for the config: {}",
                keys::format(&keys::digest(key.as_bytes()))
            );
        }
    }
    Ok(())
}

fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let addr = sim::spawn(args.clone()).await.context("sim listener")?;
        tracing::info!("listening on {addr} (sim) serving {}", args.model);
        tokio::signal::ctrl_c().await.context("signal handler")?;
        Ok(())
    })
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let mut config = config::parse(DEMO_CONFIG).map_err(|errs| {
        anyhow!(
            "embedded demo config: {}",
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    config.listen = listen;
    config.admin = admin;
    // A taken port is said before the banner, with the flag that picks another.
    for (addr, flag) in [(listen, "--listen"), (admin, "--admin")] {
        if addr.port() != 0 {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                return Err(anyhow!(
                    "cannot listen on {addr} ({e}): pick another address with {flag}, e.g. \
                     `switchyard demo {flag} 127.0.0.1:0` for any free port"
                ));
            }
        }
    }

    // The simulators run on a runtime of their own; Pingora builds its runtimes itself.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    for pool in &mut config.pools {
        for server in &mut pool.servers {
            let args = SimArgs {
                listen: "127.0.0.1:0".parse()?,
                model: pool.served_model.clone(),
                max_num_seqs: 16,
                num_blocks: 4096,
                block_size: 16,
                prefill_us_per_token: 20.0,
                decode_step_ms: 25.0,
                decode_us_per_seq: 500.0,
                zero_delay: false,
                default_max_tokens: 48,
                embedding_dims: 384,
                classifier_labels: None,
                seed: u64::from(server.port),
                event_timestamps: false,
                fault: None,
            };
            let addr = rt.block_on(sim::spawn(args)).context("simulated server")?;
            tracing::info!(
                "simulated server for pool {} ({}) on {addr}",
                pool.name,
                pool.served_model
            );
            server.host = addr.ip().to_string();
            server.port = addr.port();
            server.id = addr.to_string();
        }
    }
    let models: Vec<String> = config
        .models
        .iter()
        .map(|m| format!("{} (aliases: {})", m.name, m.aliases.join(", ")))
        .collect();
    println!(
        r#"
Switchyard demo: gateway on http://{listen}/v1, admin on http://{admin}
models: {models}

  curl http://{listen}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"fast","stream":true,"messages":[{{"role":"user","content":"Hello!"}}]}}'

  routed by request (x-switchyard-route says why):
  curl -i http://{listen}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"auto","messages":[{{"role":"user","content":"Why does my Rust code not compile?"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="http://{listen}/v1", api_key="unused")
  for chunk in client.chat.completions.create(model="fast", stream=True,
          messages=[{{"role": "user", "content": "Hello!"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)

  metrics: curl http://{admin}/metrics     stop: Ctrl-C
"#,
        models = models.join("; ")
    );
    // Keep the simulators' runtime alive for as long as the gateway runs.
    let _sims = rt;
    switchyard::app::run(config, None, false)?;
    Ok(())
}

/// jemalloc instead of glibc malloc. Measured (benches/load.sh, 2 cores): glibc's arena locks
/// showed in profiles under load; mimalloc gained ~10 % req/s but held 125 KiB RSS per idle
/// stream at 10 000 streams; jemalloc matches mimalloc's throughput at 49 KiB per stream
/// (glibc: 55 KiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
