//! The simulator's OpenAI-compatible HTTP API (hyper, HTTP/1.1 as vLLM's uvicorn speaks it).

use std::convert::Infallible;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::engine::{Engine, Event};
use super::faults::{self, Faults};

pub type SimBody = BoxBody<Bytes, std::io::Error>;

/// Words the simulated model says; picked by a seeded generator.
const WORDS: [&str; 16] = [
    "the", "gateway", "routes", "tokens", "to", "a", "warm", "cache", "and", "streams", "every",
    "event", "on", "time", "without", "loss",
];
const SPACED: [&str; 16] = [
    " the", " gateway", " routes", " tokens", " to", " a", " warm", " cache", " and", " streams",
    " every", " event", " on", " time", " without", " loss",
];

/// One simulated server.
pub struct Sim {
    pub engine: Engine,
    pub model: String,
    pub faults: Faults,
    pub seed: u64,
    pub default_max_tokens: u32,
    pub embedding_dims: usize,
    /// Labels a classifier model answers with (`--classifier-labels`).
    pub classifier_labels: Option<Vec<(String, Vec<String>)>>,
    /// Inference requests received (any outcome), for tests and load checks.
    pub http_requests: std::sync::atomic::AtomicU64,
    /// Connections accepted (tests check the gateway reuses its upstream connections).
    pub connections: std::sync::atomic::AtomicU64,
    /// Stamp streamed chunks with the send time (`x_sim_ts_us`).
    pub event_timestamps: bool,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<SimBody> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<SimBody> {
    json_response(
        status,
        &json!({"object": "error", "message": message, "type": "BadRequestError", "code": status.as_u16()}),
    )
}

fn now_secs() -> u64 {
    now_us() / 1_000_000
}

/// Wall-clock microseconds (stamps a client on the same machine compares with its own clock).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A connection-level failure: the caller closes the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("simulated fault: {0}")]
pub struct Abort(&'static str);

impl Sim {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<SimBody>, Abort> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => Ok(full(StatusCode::OK, "text/plain", "")),
            (&Method::GET, "/metrics") => Ok(full(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics(),
            )),
            (&Method::GET, "/v1/models") => Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": self.model, "object": "model", "created": now_secs(), "owned_by": "switchyard-sim"}]}),
            )),
            (&Method::POST, "/v1/chat/completions") => self.infer(req, Kind::Chat).await,
            (&Method::POST, "/v1/completions") => self.infer(req, Kind::Completion).await,
            (&Method::POST, "/v1/embeddings") => self.infer(req, Kind::Embedding).await,
            _ => Ok(error(StatusCode::NOT_FOUND, "Not Found")),
        }
    }

    async fn infer(
        self: Arc<Self>,
        req: Request<Incoming>,
        kind: Kind,
    ) -> Result<Response<SimBody>, Abort> {
        let mut faults = self.faults.clone();
        if let Some(spec) = req
            .headers()
            .get(faults::HEADER)
            .and_then(|v| v.to_str().ok())
        {
            if let Err(e) = faults.apply(spec) {
                return Ok(error(StatusCode::BAD_REQUEST, &e));
            }
        }
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        // Tests see exactly what the gateway forwarded: `x-sim-echo: body` or `headers`.
        let echo = req
            .headers()
            .get("x-sim-echo")
            .map(|v| v.as_bytes().to_vec());
        let headers: Value = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or(""))))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|_| Abort("request body read failed"))?
            .to_bytes();
        // With stamps on, the stream's header says when the request was in: a client adds the
        // first event's lag to this to get what the hops in between cost its first token.
        let received_us = self.event_timestamps.then(now_us);
        if faults.refuse {
            return Err(Abort("refuse"));
        }
        if faults.hang {
            std::future::pending::<()>().await;
        }
        if let Some(status) = faults.status {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = error(code, "simulated error");
            if let Some(v) = faults.retry_after.as_deref().and_then(|v| v.parse().ok()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            if let Some(ms) = faults.retry_after_ms {
                resp.headers_mut()
                    .insert("retry-after-ms", http::HeaderValue::from(ms));
            }
            return Ok(resp);
        }
        match echo.as_deref() {
            Some(b"body") => return Ok(full(StatusCode::OK, "application/octet-stream", body)),
            Some(b"headers") => return Ok(json_response(StatusCode::OK, &headers)),
            _ => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return Ok(error(StatusCode::BAD_REQUEST, "body is not JSON"));
        };
        if v["model"].as_str() != Some(self.model.as_str()) {
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                &json!({"object": "error", "message": format!("The model `{}` does not exist.", v["model"].as_str().unwrap_or("")), "type": "NotFoundError", "code": 404}),
            ));
        }
        if kind == Kind::Embedding {
            return Ok(self.embed(&v["input"]));
        }
        let prompt = prompt_text(&v, kind);
        let max_tokens = v["max_completion_tokens"]
            .as_u64()
            .or_else(|| v["max_tokens"].as_u64())
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        let limit = max_tokens.unwrap_or(self.default_max_tokens).max(1);
        let rx = match self.engine.submit(prompt.as_bytes(), limit) {
            Ok(rx) => rx,
            Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
        };
        let mut h = DefaultHasher::new();
        prompt.hash(&mut h);
        let gen = Generation {
            kind,
            id: format!("{}-{:016x}", kind.id_prefix(), fastrand::u64(..)),
            created: now_secs(),
            model: self.model.clone(),
            rng: fastrand::Rng::with_seed(self.seed ^ h.finish()),
            prompt_tokens: prompt.len().div_ceil(4) as u32,
            finish_reason: if max_tokens.is_some() {
                "length"
            } else {
                "stop"
            },
            timestamps: self.event_timestamps,
            answer: match (&self.classifier_labels, kind) {
                (Some(labels), Kind::Chat) => {
                    Some(super::meaning::label_for(&last_user_text(&v), labels))
                }
                _ => None,
            },
        };
        let stream = v["stream"].as_bool().unwrap_or(false);
        if stream {
            let include_usage = v["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false);
            let body = SseBody {
                rx,
                delay: faults
                    .first_token_delay
                    .map(|d| Box::pin(tokio::time::sleep(d))),
                gen,
                include_usage,
                die_after: faults.die_after,
                stall_after: faults.stall_after,
                garbage: faults.garbage,
                sent: 0,
                dying: false,
                done: false,
            };
            let mut resp = Response::new(body.boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            if let Some(us) = received_us {
                resp.headers_mut()
                    .insert("x-sim-received-us", http::HeaderValue::from(us));
            }
            return Ok(resp);
        }
        self.complete(rx, gen, &faults).await
    }

    async fn complete(
        &self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut gen: Generation,
        faults: &Faults,
    ) -> Result<Response<SimBody>, Abort> {
        if let Some(d) = faults.first_token_delay {
            tokio::time::sleep(d).await;
        }
        let mut text = String::new();
        let mut completion = 0u32;
        let cached = loop {
            match rx.recv().await {
                Some(Event::Token(n)) => {
                    if faults.die_after == Some(completion) {
                        return Err(Abort("die_after"));
                    }
                    text.push_str(gen.word(n));
                    completion += 1;
                }
                Some(Event::Done { cached_tokens }) => break cached_tokens,
                None => return Err(Abort("engine stopped")),
            }
        };
        if let Some(label) = gen.answer.take() {
            text = label;
            completion = 1;
        }
        let usage = gen.usage(completion, cached);
        let choice = match gen.kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": gen.finish_reason})
            }
            _ => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": gen.finish_reason})
            }
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({"id": gen.id, "object": gen.kind.object(false), "created": gen.created, "model": gen.model, "choices": [choice], "usage": usage}),
        ))
    }

    /// One vector per input, as OpenAI's API answers: `input` is a string, a list of strings,
    /// or token lists.
    fn embed(&self, input: &Value) -> Response<SimBody> {
        let texts: Vec<String> = match input {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect(),
            Value::String(s) => vec![s.clone()],
            other => vec![other.to_string()],
        };
        let mut tokens = 0;
        let data: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let embedding = super::meaning::embed(text, self.embedding_dims);
                tokens += text.len().div_ceil(4);
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"object": "list", "model": self.model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        )
    }

    /// /metrics with vLLM's metric names.
    fn metrics(&self) -> String {
        let s = self.engine.stats();
        let m = &self.model;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",num_gpu_blocks=\"{}\"}} 1.0\n\
             # TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{{model_name=\"{m}\"}} {}\n\
             # TYPE vllm:request_success counter\nvllm:request_success_total{{model_name=\"{m}\"}} {}\n\
             # TYPE switchyard_sim_requests_aborted counter\nswitchyard_sim_requests_aborted_total {}\n\
             # TYPE switchyard_sim_http_requests counter\nswitchyard_sim_http_requests_total {}\n\
             # TYPE switchyard_sim_connections counter\nswitchyard_sim_connections_total {}\n",
            get(&s.running),
            get(&s.waiting),
            get(&s.kv_usage_ppm) as f64 / 1e6,
            self.engine.params().block_size,
            self.engine.params().num_blocks,
            get(&s.prefix_queries),
            get(&s.prefix_hits),
            get(&s.prompt_tokens),
            get(&s.generation_tokens),
            get(&s.success),
            get(&s.aborted),
            get(&self.http_requests),
            get(&self.connections),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
    Embedding,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl",
            Self::Completion => "cmpl",
            Self::Embedding => "embd",
        }
    }

    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Self::Chat, false) => "chat.completion",
            (Self::Chat, true) => "chat.completion.chunk",
            _ => "text_completion",
        }
    }
}

/// The prompt as the simulator's tokenizer sees it: message roles and contents, or the
/// completion prompt(s), or the embedding input(s), concatenated.
fn prompt_text(v: &Value, kind: Kind) -> String {
    let mut out = String::new();
    let mut push = |s: &str| out.push_str(s);
    match kind {
        Kind::Chat => {
            for m in v["messages"].as_array().into_iter().flatten() {
                push(m["role"].as_str().unwrap_or(""));
                push(": ");
                match &m["content"] {
                    Value::String(s) => push(s),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .for_each(&mut push),
                    _ => {}
                }
                push("\n");
            }
        }
        Kind::Completion | Kind::Embedding => {
            let field = if kind == Kind::Completion {
                "prompt"
            } else {
                "input"
            };
            match &v[field] {
                Value::String(s) => push(s),
                Value::Array(items) => items.iter().filter_map(Value::as_str).for_each(&mut push),
                _ => {}
            }
        }
    }
    out
}

/// The text of the last user message of a chat request.
fn last_user_text(v: &Value) -> String {
    let last = v["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"));
    match last.map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// What one generation needs to format its output.
struct Generation {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    rng: fastrand::Rng,
    prompt_tokens: u32,
    finish_reason: &'static str,
    timestamps: bool,
    /// A classifier model's answer, in place of generated words (whole answers only).
    answer: Option<String>,
}

impl Generation {
    fn word(&mut self, n: u32) -> &'static str {
        let i = self.rng.usize(..WORDS.len());
        // Tokens after the first carry their leading space, as BPE tokens do.
        if n == 0 {
            WORDS[i]
        } else {
            SPACED[i]
        }
    }

    fn usage(&self, completion: u32, cached: u32) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion,
               "prompt_tokens_details": {"cached_tokens": cached}})
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            _ => {
                json!({"index": 0, "text": delta["content"].as_str().unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut chunk = json!({"id": self.id, "object": self.kind.object(true), "created": self.created,
               "model": self.model, "choices": [choice]});
        if self.timestamps {
            chunk["x_sim_ts_us"] = now_us().into();
        }
        chunk
    }
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The SSE response body: one event per engine token, as it is produced.
struct SseBody {
    rx: mpsc::UnboundedReceiver<Event>,
    delay: Option<Pin<Box<Sleep>>>,
    gen: Generation,
    include_usage: bool,
    die_after: Option<u32>,
    stall_after: Option<u32>,
    garbage: Option<u32>,
    sent: u32,
    /// Set when `die_after` is reached: the body yields once, so that hyper flushes the events
    /// already sent, and fails on its next poll. hyper drops its write buffer on a body error, so
    /// failing at once would lose events that a real server would have put on the wire.
    dying: bool,
    done: bool,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.dying {
            this.done = true;
            return Poll::Ready(Some(Err(std::io::Error::other("simulated death"))));
        }
        if let Some(delay) = &mut this.delay {
            ready!(delay.as_mut().poll(cx));
            this.delay = None;
        }
        if this.stall_after == Some(this.sent) {
            // Silent for good; nothing will wake this body (the client may still hang up).
            return Poll::Pending;
        }
        let event = ready!(this.rx.poll_recv(cx));
        let text = match event {
            Some(Event::Token(n)) => {
                if this.die_after == Some(this.sent) {
                    this.dying = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let garbage = this.garbage == Some(this.sent);
                this.sent += 1;
                if garbage {
                    "data: {\"choices\": [{\"delta\": \n\n".to_owned()
                } else {
                    let word = this.gen.word(n);
                    let delta = if n == 0 {
                        json!({"role": "assistant", "content": word})
                    } else {
                        json!({"content": word})
                    };
                    sse(&this.gen.chunk(delta, None))
                }
            }
            Some(Event::Done { cached_tokens }) => {
                this.done = true;
                let mut out = sse(&this.gen.chunk(json!({}), Some(this.gen.finish_reason)));
                if this.include_usage {
                    let mut last = this.gen.chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = this.gen.usage(this.sent, cached_tokens);
                    out.push_str(&sse(&last));
                }
                out.push_str("data: [DONE]\n\n");
                out
            }
            None => {
                this.done = true;
                return Poll::Ready(Some(Err(std::io::Error::other("engine stopped"))));
            }
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
    }
}
