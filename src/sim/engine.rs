//! The simulated inference engine: continuous batching with a waiting queue.
//!
//! One scheduler task runs steps. Each step admits waiting sequences while fewer than
//! `max_num_seqs` run and the KV cache has room (prefix-matched blocks are reused), then
//! sleeps for the step's duration — `decode_step + per_seq × running + prefill_per_token ×
//! uncached prompt tokens admitted this step` — and gives every running sequence one token.
//! A sequence whose receiver is gone (client disconnected) is aborted and frees its slot at
//! the next step, as vLLM aborts a request whose connection closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::kv::{block_hashes, Allocation, KvCache};

/// Engine parameters (from the `sim` flags).
#[derive(Debug, Clone)]
pub struct EngineParams {
    pub max_num_seqs: usize,
    pub num_blocks: u32,
    /// Tokens per KV block; the simulator's tokenizer maps 4 prompt bytes to a token.
    pub block_size: u32,
    pub prefill_per_token: Duration,
    pub decode_step: Duration,
    pub decode_per_seq: Duration,
}

/// What a sequence's receiver gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The n-th generated token (0-based).
    Token(u32),
    /// Generation finished; `cached_tokens` prompt tokens came from the prefix cache.
    Done { cached_tokens: u32 },
}

/// Counters and gauges exported on /metrics with vLLM's names.
#[derive(Debug, Default)]
pub struct Stats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub success: AtomicU64,
    pub aborted: AtomicU64,
    /// KV usage in millionths (an atomic f64 stand-in).
    pub kv_usage_ppm: AtomicU64,
}

struct Seq {
    blocks: Vec<u64>,
    prompt_tokens: u32,
    max_tokens: u32,
    generated: u32,
    alloc: Option<Allocation>,
    tx: mpsc::UnboundedSender<Event>,
}

struct Shared {
    params: EngineParams,
    waiting: Mutex<VecDeque<Seq>>,
    kv: Mutex<KvCache>,
    work: Notify,
    stats: Stats,
}

/// Handle to a running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine(Arc<Shared>);

/// Why a request cannot be scheduled at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("request needs {needed} KV blocks but the cache has {capacity}")]
pub struct TooLong {
    pub needed: u32,
    pub capacity: u32,
}

use crate::lock;

impl Engine {
    /// Starts the scheduler on the current tokio runtime.
    pub fn start(params: EngineParams) -> Self {
        let shared = Arc::new(Shared {
            kv: Mutex::new(KvCache::new(params.num_blocks)),
            params,
            waiting: Mutex::new(VecDeque::new()),
            work: Notify::new(),
            stats: Stats::default(),
        });
        tokio::spawn(run(shared.clone()));
        Self(shared)
    }

    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    pub fn params(&self) -> &EngineParams {
        &self.0.params
    }

    /// Queues a request; tokens arrive on the returned receiver. Dropping the receiver
    /// aborts the request.
    pub fn submit(
        &self,
        prompt: &[u8],
        max_tokens: u32,
    ) -> Result<mpsc::UnboundedReceiver<Event>, TooLong> {
        let p = &self.0.params;
        let block_bytes = 4 * p.block_size as usize;
        let prompt_tokens = prompt.len().div_ceil(4) as u32;
        let needed = (prompt_tokens + max_tokens).div_ceil(p.block_size.max(1));
        if needed > p.num_blocks {
            return Err(TooLong {
                needed,
                capacity: p.num_blocks,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = Seq {
            blocks: block_hashes(prompt, block_bytes),
            prompt_tokens,
            max_tokens,
            generated: 0,
            alloc: None,
            tx,
        };
        lock(&self.0.waiting).push_back(seq);
        self.0.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.0.work.notify_one();
        Ok(rx)
    }
}

async fn run(shared: Arc<Shared>) {
    let p = shared.params.clone();
    let stats = &shared.stats;
    let mut running: Vec<Seq> = Vec::with_capacity(p.max_num_seqs);
    loop {
        if running.is_empty() && lock(&shared.waiting).is_empty() {
            shared.work.notified().await;
            continue;
        }
        // Admit.
        let mut prefill_tokens = 0u32;
        {
            let mut waiting = lock(&shared.waiting);
            let mut kv = lock(&shared.kv);
            while running.len() < p.max_num_seqs {
                let Some(seq) = waiting.front_mut() else {
                    break;
                };
                if seq.tx.is_closed() {
                    waiting.pop_front();
                    stats.waiting.fetch_sub(1, Ordering::Relaxed);
                    stats.aborted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let total = (seq.prompt_tokens + seq.max_tokens).div_ceil(p.block_size.max(1));
                let Some(alloc) = kv.allocate(&seq.blocks, total) else {
                    break;
                };
                let cached = (alloc.matched as u32 * p.block_size).min(seq.prompt_tokens);
                prefill_tokens += seq.prompt_tokens - cached;
                stats
                    .prefix_queries
                    .fetch_add(u64::from(seq.prompt_tokens), Ordering::Relaxed);
                stats
                    .prefix_hits
                    .fetch_add(u64::from(cached), Ordering::Relaxed);
                stats
                    .prompt_tokens
                    .fetch_add(u64::from(seq.prompt_tokens), Ordering::Relaxed);
                seq.alloc = Some(alloc);
                if let Some(seq) = waiting.pop_front() {
                    running.push(seq);
                }
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            stats.running.store(running.len() as u64, Ordering::Relaxed);
            stats
                .kv_usage_ppm
                .store((kv.usage() * 1e6) as u64, Ordering::Relaxed);
        }
        // Run one step.
        let step = p.decode_step
            + p.decode_per_seq * running.len() as u32
            + p.prefill_per_token * prefill_tokens;
        if step.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(step).await;
        }
        // Emit one token per running sequence; retire finished and aborted ones.
        let mut kv = lock(&shared.kv);
        running.retain_mut(|seq| {
            let alloc = seq.alloc.unwrap_or(Allocation {
                matched: 0,
                private: 0,
            });
            if seq.tx.send(Event::Token(seq.generated)).is_err() {
                kv.release(&seq.blocks, alloc, false);
                stats.aborted.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            seq.generated += 1;
            stats.generation_tokens.fetch_add(1, Ordering::Relaxed);
            if seq.generated < seq.max_tokens {
                return true;
            }
            let cached = (alloc.matched as u32 * p.block_size).min(seq.prompt_tokens);
            let _ = seq.tx.send(Event::Done {
                cached_tokens: cached,
            });
            kv.release(&seq.blocks, alloc, true);
            stats.success.fetch_add(1, Ordering::Relaxed);
            false
        });
        stats.running.store(running.len() as u64, Ordering::Relaxed);
        stats
            .kv_usage_ppm
            .store((kv.usage() * 1e6) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(max_num_seqs: usize) -> EngineParams {
        EngineParams {
            max_num_seqs,
            num_blocks: 64,
            block_size: 16,
            prefill_per_token: Duration::ZERO,
            decode_step: Duration::from_millis(10),
            decode_per_seq: Duration::ZERO,
        }
    }

    async fn drain(mut rx: mpsc::UnboundedReceiver<Event>) -> (u32, u32) {
        let mut tokens = 0;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(_) => tokens += 1,
                Event::Done { cached_tokens } => return (tokens, cached_tokens),
            }
        }
        (tokens, u32::MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_arrive_one_per_step() {
        let engine = Engine::start(params(4));
        let start = tokio::time::Instant::now();
        let (tokens, _) = drain(engine.submit(b"hello", 5).unwrap()).await;
        assert_eq!(tokens, 5);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_max_num_seqs_wait_in_the_queue() {
        let engine = Engine::start(params(1));
        let start = tokio::time::Instant::now();
        let a = tokio::spawn(drain(engine.submit(b"a", 3).unwrap()));
        let b = tokio::spawn(drain(engine.submit(b"b", 3).unwrap()));
        a.await.unwrap();
        let after_a = start.elapsed();
        b.await.unwrap();
        assert_eq!(after_a, Duration::from_millis(30));
        assert_eq!(start.elapsed(), Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_prompt_hits_the_prefix_cache() {
        let engine = Engine::start(params(4));
        let prompt = b"p".repeat(64 * 3 + 10);
        let (_, first) = drain(engine.submit(&prompt, 2).unwrap()).await;
        let (_, second) = drain(engine.submit(&prompt, 2).unwrap()).await;
        assert_eq!(first, 0);
        assert_eq!(second, 48);
        assert_eq!(engine.stats().prefix_hits.load(Ordering::Relaxed), 48);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_receiver_aborts_and_frees_the_slot() {
        let engine = Engine::start(params(1));
        let rx = engine.submit(b"a", 1000).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        drop(rx);
        let (tokens, _) = drain(engine.submit(b"b", 2).unwrap()).await;
        assert_eq!(tokens, 2);
        assert_eq!(engine.stats().aborted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_request_larger_than_the_cache_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let engine = Engine::start(params(1));
            let err = engine.submit(&[b'x'; 4096], 10).unwrap_err();
            assert_eq!(err.capacity, 64);
        });
    }
}
