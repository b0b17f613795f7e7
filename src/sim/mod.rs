//! `switchyard sim`: a simulated GPU inference server for tests, benchmarks and the demo.
//!
//! OpenAI-compatible API (JSON and SSE, `usage`, `stream_options.include_usage`), `/health`,
//! `/metrics` with vLLM's names, an engine model with continuous batching and a prefix-reusing
//! KV cache (`engine`, `kv`), and faults on demand (`faults`). Output is deterministic for a
//! given seed and prompt. With zero delays it answers as fast as hyper can.

pub mod engine;
pub mod faults;
pub mod http;
pub mod kv;
pub mod meaning;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use engine::{Engine, EngineParams};
use faults::Faults;

/// Flags of one simulated server.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub listen: SocketAddr,
    /// The model name this server serves (requests naming another get 404, as vLLM does).
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub model: String,
    /// Sequences decoded together at most; the rest wait in the queue.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// KV cache size in blocks.
    #[arg(long, default_value_t = 8192)]
    pub num_blocks: u32,
    /// Tokens per KV block (a token is 4 prompt bytes).
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Prefill time per uncached prompt token, microseconds.
    #[arg(long, default_value_t = 20.0)]
    pub prefill_us_per_token: f64,
    /// Decode step time with one sequence, milliseconds.
    #[arg(long, default_value_t = 20.0)]
    pub decode_step_ms: f64,
    /// Extra decode step time per running sequence, microseconds.
    #[arg(long, default_value_t = 100.0)]
    pub decode_us_per_seq: f64,
    /// Set every delay to zero (benchmarks: the simulator must not be the bottleneck).
    #[arg(long)]
    pub zero_delay: bool,
    /// Completion length when a request sets no max_tokens.
    #[arg(long, default_value_t = 32)]
    pub default_max_tokens: u32,
    /// Dimensions of embedding vectors (a hashed bag of words and trigrams: texts that share
    /// words are near).
    #[arg(long, default_value_t = 384)]
    pub embedding_dims: usize,
    /// Answer chat requests as a classifier model would: with the label whose name or words
    /// occur most in the last user message (`code:rust|python,math:integral,chat`;
    /// `unknown` when none does).
    #[arg(long, value_parser = meaning::parse_labels)]
    pub classifier_labels: Option<meaning::Labels>,
    /// Seed of the token generator; equal seeds and prompts give equal answers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stamp every streamed chunk with `"x_sim_ts_us"`, the server's wall clock in
    /// microseconds when it was produced, and every stream's header with `x-sim-received-us`,
    /// when its request was read (the load benchmark measures per-event lag and the hops' share
    /// of the time to first event with them).
    #[arg(long)]
    pub event_timestamps: bool,
    /// Faults for every request (see `sim::faults`), e.g. `status=503,retry_after=2`.
    #[arg(long, value_parser = Faults::parse)]
    pub fault: Option<Faults>,
}

impl SimArgs {
    fn params(&self) -> EngineParams {
        let d = |us: f64| {
            if self.zero_delay {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(us.max(0.0) / 1e6)
            }
        };
        EngineParams {
            max_num_seqs: self.max_num_seqs.max(1),
            num_blocks: self.num_blocks.max(1),
            block_size: self.block_size.max(1),
            prefill_per_token: d(self.prefill_us_per_token),
            decode_step: d(self.decode_step_ms * 1e3),
            decode_per_seq: d(self.decode_us_per_seq),
        }
    }
}

/// Binds the simulator and serves it on the current runtime; returns the bound address.
pub async fn spawn(args: SimArgs) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(args.listen).await?;
    // Tokio listens with a backlog of 1024; a thousand streams starting together overflowed
    // it (a dropped connection is retried a second later). The system's maximum instead.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXALLOWABLE)?;
    let addr = listener.local_addr()?;
    let refuse = args.fault.as_ref().is_some_and(|f| f.refuse);
    let sim = Arc::new(http::Sim {
        engine: Engine::start(args.params()),
        model: args.model.clone(),
        faults: args.fault.clone().unwrap_or_default(),
        seed: args.seed,
        default_max_tokens: args.default_max_tokens.max(1),
        embedding_dims: args.embedding_dims,
        classifier_labels: args.classifier_labels.clone().map(|l| l.0),
        http_requests: Default::default(),
        connections: Default::default(),
        event_timestamps: args.event_timestamps,
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if refuse {
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            sim.connections.fetch_add(1, Ordering::Relaxed);
            let sim = sim.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| sim.clone().handle(req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
