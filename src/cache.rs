//! The response cache (`models.X.cache`): answers of deterministic requests served again
//! without a server. Exact match on a key made of the tenant (unless the model shares
//! answers across tenants), the public model and a canonical hash of the request body: every
//! generation parameter and message, keys in sorted order, numbers by value (`0` and `0.0`
//! are one temperature), the fields that change no answer (`model`, `user`, `metadata`,
//! `store`) left out. The hash is XXH3-128 with its fixed default seed: every instance of every
//! version computes the same key, so the shared tier serves the fleet.
//!
//! Two tiers: in process (moka, bounded by bytes, each entry living its model's `ttl`) and,
//! with `shared:`, Redis, read when the local tier misses and written with every store.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

use crate::fleet::SharedStore;
use crate::metrics::CacheMetrics;

/// A stored answer: the bytes the client was sent, as they were sent (an event stream's
/// `data:` events with its usage event when the client asked for it, and `[DONE]`).
#[derive(Debug)]
pub struct Entry {
    pub sse: bool,
    pub body: Bytes,
    ttl: Duration,
}

impl Entry {
    pub fn new(sse: bool, body: Bytes, ttl: Duration) -> Self {
        Self { sse, body, ttl }
    }

    /// The shared tier's form: a kind byte, then the body.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + 1);
        v.push(if self.sse { b'S' } else { b'J' });
        v.extend_from_slice(&self.body);
        v
    }

    fn decode(bytes: &[u8], ttl: Duration) -> Option<Self> {
        let (kind, body) = bytes.split_first()?;
        let sse = match kind {
            b'S' => true,
            b'J' => false,
            _ => return None,
        };
        Some(Self::new(sse, Bytes::copy_from_slice(body), ttl))
    }
}

struct PerEntry;

impl moka::Expiry<u128, Arc<Entry>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &u128,
        value: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Both tiers. Outlives runtimes (a reload keeps what is cached).
pub struct ResponseCache {
    /// Prompts' embeddings of stored answers (`cache.semantic`), in process.
    pub semantic: SemanticIndex,
    local: moka::sync::Cache<u128, Arc<Entry>>,
    shared: Option<Arc<SharedStore>>,
    stores: [prometheus::IntCounter; 2],
}

impl ResponseCache {
    pub fn new(max_bytes: usize, shared: Option<Arc<SharedStore>>, metrics: &CacheMetrics) -> Self {
        let evictions = metrics.evictions.clone();
        let local = moka::sync::Cache::builder()
            .max_capacity(max_bytes as u64)
            .weigher(|_, e: &Arc<Entry>| u32::try_from(e.body.len() + 64).unwrap_or(u32::MAX))
            .expire_after(PerEntry)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        Self {
            semantic: SemanticIndex::default(),
            local,
            shared,
            stores: [
                metrics.stores.with_label_values(&["local"]),
                metrics.stores.with_label_values(&["shared"]),
            ],
        }
    }

    fn shared_key(store: &SharedStore, key: u128) -> String {
        store.key(&format!("cache/{key:032x}"))
    }

    /// The answer stored under `key`: in process, else in the shared tier (then kept in
    /// process for what is left of its life there).
    pub async fn get(&self, key: u128) -> Option<Arc<Entry>> {
        if let Some(e) = self.local.get(&key) {
            return Some(e);
        }
        let store = self.shared.as_ref()?;
        let (bytes, ttl_ms) = store.get(&Self::shared_key(store, key)).await?;
        let entry = Arc::new(Entry::decode(&bytes, Duration::from_millis(ttl_ms))?);
        self.local.insert(key, entry.clone());
        Some(entry)
    }

    /// Stores an answer in both tiers.
    pub fn put(&self, key: u128, entry: Entry) {
        if let Some(store) = &self.shared {
            store.spawn_set(
                Self::shared_key(store, key),
                entry.encode(),
                entry.ttl.as_millis() as u64,
            );
            self.stores[1].inc();
        }
        self.local.insert(key, Arc::new(entry));
        self.stores[0].inc();
    }

    /// Bytes held in process.
    pub fn weighted_size(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.weighted_size()
    }
}

/// A remembered prompt: its embedding (unit length), the exact key its answer is under.
struct Remembered {
    vector: Box<[f32]>,
    key: u128,
    until: Instant,
}

/// Sets of generation parameters (a partition: the key of the body without its messages) kept
/// at most; the least recently used set goes first.
const PARTITIONS: u64 = 4096;

/// The semantic tier: per partition, the embeddings of the prompts whose answers are stored,
/// searched by cosine similarity. A semantic hit is an exact key found by meaning; the answer
/// itself comes from the tiers above (and is gone when they dropped it).
pub struct SemanticIndex {
    partitions: moka::sync::Cache<u128, Arc<std::sync::Mutex<VecDeque<Remembered>>>>,
}

impl Default for SemanticIndex {
    fn default() -> Self {
        Self {
            partitions: moka::sync::Cache::builder()
                .max_capacity(PARTITIONS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl SemanticIndex {
    /// The key of the stored answer whose prompt is nearest `vector` in `partition`, and its
    /// similarity, when it is at least `similarity`.
    pub fn nearest(&self, partition: u128, vector: &[f32], similarity: f32) -> Option<(u128, f32)> {
        let list = self.partitions.get(&partition)?;
        let now = Instant::now();
        let mut list = crate::lock(&list);
        list.retain(|r| r.until > now);
        list.iter()
            .filter(|r| r.vector.len() == vector.len())
            .map(|r| (r.key, dot(&r.vector, vector)))
            .filter(|(_, s)| *s >= similarity)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Remembers `vector` for the answer stored under `key` for `ttl`; at most `entries` per
    /// partition (the oldest go).
    pub fn insert(
        &self,
        partition: u128,
        vector: Box<[f32]>,
        key: u128,
        ttl: Duration,
        entries: usize,
    ) {
        let list = self.partitions.get_with(partition, || {
            Arc::new(std::sync::Mutex::new(VecDeque::new()))
        });
        let mut list = crate::lock(&list);
        list.retain(|r| r.key != key);
        while list.len() >= entries.max(1) {
            list.pop_front();
        }
        list.push_back(Remembered {
            vector,
            key,
            until: Instant::now() + ttl,
        });
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A prompt's text for its embedding: every message's text content (and a completion's
/// `prompt`), one per line; `None` when there is none.
pub fn prompt_text(body: &Value) -> Option<String> {
    let mut out = String::new();
    let mut add = |t: &str| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(t);
    };
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("content") {
            Some(Value::String(t)) => add(t),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        add(t);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(p) = body.get("prompt").and_then(Value::as_str) {
        add(p);
    }
    (!out.is_empty()).then_some(out)
}

/// The semantic tier's partition of a request: its key without the prompt (`messages`,
/// `prompt`), so that only requests with the same generation parameters share answers.
pub fn partition(scope: Option<&str>, model: &str, body: &Value) -> u128 {
    const LEFT_OUT: [&str; 6] = ["model", "user", "metadata", "store", "messages", "prompt"];
    keyed(scope, model, body, &LEFT_OUT) ^ 0x5e3a_9c1d
}

/// Whether a request's answer is the same every time: a temperature of 0, or a seed.
pub fn deterministic(body: &Value) -> bool {
    body.get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0)
        || body.get("seed").is_some_and(|s| !s.is_null())
}

/// Body members that change no answer.
const IGNORED: [&str; 4] = ["model", "user", "metadata", "store"];

/// The cache key of `body` sent by `scope` (a tenant; `None`: shared across tenants) to the
/// public model `model`.
pub fn key(scope: Option<&str>, model: &str, body: &Value) -> u128 {
    keyed(scope, model, body, &IGNORED)
}

/// [`key`] with the body's top-level members named in `left_out` left out.
fn keyed(scope: Option<&str>, model: &str, body: &Value, left_out: &[&str]) -> u128 {
    let mut h = Xxh3::new();
    match scope {
        Some(s) => {
            h.update(b"t");
            text(&mut h, s);
        }
        None => h.update(b"*"),
    }
    text(&mut h, model);
    match body.as_object() {
        Some(map) => {
            let mut members: Vec<_> = map
                .iter()
                .filter(|(k, _)| !left_out.contains(&k.as_str()))
                .collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            for (k, v) in members {
                text(&mut h, k);
                value(&mut h, v);
            }
        }
        None => value(&mut h, body),
    }
    h.digest128()
}

/// A string, length first (no two sequences of strings hash alike by moving a boundary).
fn text(h: &mut Xxh3, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn value(h: &mut Xxh3, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"T" } else { b"F" }),
        Value::Number(n) => {
            // By value: 0, 0.0 and 0e0 are one number.
            let f = n.as_f64().unwrap_or(f64::NAN);
            match n
                .as_i64()
                .or_else(|| (f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64))
            {
                Some(i) => {
                    h.update(b"i");
                    h.update(&i.to_le_bytes());
                }
                None => match n.as_u64() {
                    Some(u) => {
                        h.update(b"u");
                        h.update(&u.to_le_bytes());
                    }
                    None => {
                        h.update(b"f");
                        h.update(&f.to_bits().to_le_bytes());
                    }
                },
            }
        }
        Value::String(s) => {
            h.update(b"s");
            text(h, s);
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update(&(a.len() as u64).to_le_bytes());
            for v in a {
                value(h, v);
            }
        }
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            h.update(&(members.len() as u64).to_le_bytes());
            for (k, v) in members {
                text(h, k);
                value(h, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_key_ignores_order_number_spelling_and_fields_that_change_no_answer() {
        let a: Value = serde_json::from_str(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"alias","user":"u2"}"#,
        )
        .unwrap();
        assert_eq!(key(Some("t"), "m", &a), key(Some("t"), "m", &b));
        assert_ne!(key(Some("t"), "m", &a), key(Some("u"), "m", &a), "tenants");
        assert_ne!(key(Some("t"), "m", &a), key(None, "m", &a));
        assert_ne!(key(Some("t"), "m", &a), key(Some("t"), "n", &a), "models");
        let mut c = a.clone();
        c["max_tokens"] = json!(5);
        assert_ne!(
            key(None, "m", &a),
            key(None, "m", &c),
            "a generation parameter"
        );
        let mut d = a.clone();
        d["messages"][0]["content"] = json!("hi!");
        assert_ne!(key(None, "m", &a), key(None, "m", &d), "a message");
        // A boundary moved between two strings is another key.
        assert_ne!(
            key(Some("ab"), "c", &json!({})),
            key(Some("a"), "bc", &json!({}))
        );
    }

    /// The key is part of the fleet's contract: every instance and every version must compute
    /// the same one (a shared cache entry written by one is found by the others).
    #[test]
    fn the_key_is_stable_across_builds() {
        let body =
            json!({"model": "m", "seed": 7, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            format!("{:032x}", key(Some("team"), "m", &body)),
            "d87ceb58ce63ee12f96cc3cb256b89d6"
        );
    }

    #[test]
    fn the_nearest_remembered_prompt_above_the_similarity_wins() {
        let index = SemanticIndex::default();
        let unit = |v: [f32; 2]| {
            let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
            Box::from([v[0] / n, v[1] / n])
        };
        let ttl = Duration::from_secs(60);
        index.insert(1, unit([1.0, 0.0]), 10, ttl, 2);
        index.insert(1, unit([1.0, 0.2]), 11, ttl, 2);
        let (key, s) = index.nearest(1, &unit([1.0, 0.15]), 0.9).unwrap();
        assert_eq!(key, 11);
        assert!(s > 0.99);
        assert_eq!(index.nearest(1, &unit([0.0, 1.0]), 0.9), None, "too far");
        assert_eq!(
            index.nearest(2, &unit([1.0, 0.0]), 0.9),
            None,
            "another partition"
        );
        index.insert(1, unit([0.0, 1.0]), 12, ttl, 2);
        assert_eq!(
            index.nearest(1, &unit([1.0, 0.0]), 0.999).map(|k| k.0),
            None,
            "the oldest went"
        );
        index.insert(3, unit([1.0, 0.0]), 13, Duration::ZERO, 2);
        assert_eq!(index.nearest(3, &unit([1.0, 0.0]), 0.5), None, "expired");
    }

    #[test]
    fn the_partition_leaves_out_the_prompt_only() {
        let a = json!({"temperature": 0, "messages": [{"role": "user", "content": "a"}]});
        let b = json!({"temperature": 0, "messages": [{"role": "user", "content": "b"}]});
        let c = json!({"temperature": 0, "max_tokens": 3, "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(partition(None, "m", &a), partition(None, "m", &b));
        assert_ne!(partition(None, "m", &a), partition(None, "m", &c));
        assert_eq!(prompt_text(&a).as_deref(), Some("a"));
        let parts = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "t"}]}]});
        assert_eq!(prompt_text(&parts).as_deref(), Some("s\nt"));
        assert_eq!(prompt_text(&json!({})), None);
    }

    #[test]
    fn only_a_zero_temperature_or_a_seed_is_deterministic() {
        assert!(deterministic(&json!({"temperature": 0})));
        assert!(deterministic(&json!({"temperature": 0.7, "seed": 1})));
        assert!(!deterministic(&json!({"temperature": 0.7})));
        assert!(
            !deterministic(&json!({})),
            "OpenAI's default temperature is 1"
        );
        assert!(!deterministic(&json!({"seed": null})));
    }

    #[test]
    fn the_shared_form_round_trips() {
        let e = Entry::new(
            true,
            Bytes::from_static(b"data: x\n\n"),
            Duration::from_secs(1),
        );
        let back = Entry::decode(&e.encode(), Duration::from_secs(1)).unwrap();
        assert!(back.sse);
        assert_eq!(back.body, e.body);
        assert!(Entry::decode(b"", Duration::ZERO).is_none());
    }
}
