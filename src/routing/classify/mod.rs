//! Classifiers: labels from what a request means, as a `when: {class: {...}}` signal.
//!
//! A classifier has labels with exemplars and up to three methods that vote (vote.rs):
//! `lexical` (lexical.rs, built in, microseconds), `embedding` (knn.rs: one /v1/embeddings
//! call, k nearest exemplars) and `llm` (llm.rs: a small chat model names a label). A
//! classifier whose only method is lexical runs inside the router's decision; one that calls
//! a model makes the decision stop and ask for it ([`super::Refusal::Unclassified`]): the
//! proxy runs it (run.rs) within its `budget`, then decides again. Classifiers run lazily,
//! only when a rule that is reached needs them, and at most once per request.
//!
//! | file | what |
//! |---|---|
//! | `spec.rs` | the typed config |
//! | `lexical.rs` | TF-IDF centroids over words, word pairs and character trigrams |
//! | `knn.rs` | exemplar vectors (kept across reloads) and k nearest neighbours |
//! | `llm.rs` | the prompt listing the labels, and the lenient reading of the answer |
//! | `vote.rs` | the weighted vote and its confidence |
//! | `run.rs` | one classification within its budget, through a [`run::Backend`] |

pub mod knn;
pub mod lexical;
pub mod llm;
pub mod run;
pub mod spec;
pub mod vote;

use std::time::Duration;

use serde::Serialize;

pub use knn::{Exemplars, VectorState, VectorStatus, Vectors};
pub use run::Backend;
pub use spec::{ClassifierSpec, Method, MethodKind, TextScope};

use lexical::Lexical;
use spec::{EmbeddingSpec, LlmSpec};

/// Why a method gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Not done within the budget.
    Timeout,
    /// The model call failed (no server, refused, an error status, an unreadable answer).
    Error,
    /// The embedding method has no exemplar vectors yet.
    NoVectors,
    /// It answered, but with no label (nothing known in the text; a reply naming none).
    NoLabel,
}

/// What one method said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodResult {
    pub label: Option<u16>,
    pub confidence: f32,
    pub micros: u32,
    pub failure: Option<Failure>,
}

/// How a classification's label came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The vote.
    Voted,
    /// The classification cache.
    Cached,
    /// The conversation's earlier label (`sticky: conversation`).
    Sticky,
    /// The fallback: the vote was below `min_confidence`.
    LowConfidence,
    /// The fallback: no method answered.
    NoAnswer,
}

impl Source {
    pub fn is_fallback(self) -> bool {
        matches!(self, Self::LowConfidence | Self::NoAnswer)
    }
}

/// One classifier's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// `None`: no label (a fallback without a `fallback` label).
    pub label: Option<u16>,
    pub confidence: f32,
    pub source: Source,
    /// Wall time of the classification, µs (cache and stickiness included).
    pub micros: u32,
    /// Each method's answer, by [`MethodKind`] index (`None`: it did not vote).
    pub methods: [Option<MethodResult>; 3],
}

/// Classifications a decision holds without allocating; more spill to the heap.
const KNOWN_INLINE: usize = 2;

/// The verdicts of one decision, by classifier index.
#[derive(Debug, Default)]
pub struct Known {
    inline: [Option<(u16, Verdict)>; KNOWN_INLINE],
    more: Vec<(u16, Verdict)>,
}

impl Known {
    pub fn get(&self, classifier: u16) -> Option<&Verdict> {
        self.iter().find(|(c, _)| *c == classifier).map(|(_, v)| v)
    }

    pub fn insert(&mut self, classifier: u16, verdict: Verdict) {
        let slot = self
            .inline
            .iter_mut()
            .find(|s| s.is_none_or(|(c, _)| c == classifier));
        match slot {
            Some(slot) => *slot = Some((classifier, verdict)),
            None => {
                self.more.retain(|(c, _)| *c != classifier);
                self.more.push((classifier, verdict));
            }
        }
    }

    /// Every verdict, in the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Verdict)> {
        self.inline
            .iter()
            .flatten()
            .chain(&self.more)
            .map(|(c, v)| (*c, v))
    }

    pub fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }
}

/// A conversation's labels so far (`sticky: conversation`): (classifier, label).
pub type StickyLabels = Vec<(u16, u16)>;

/// What classification keeps across snapshots: exemplar vectors and conversations' labels.
#[derive(Clone)]
pub struct Memory {
    pub vectors: Vectors,
    /// Conversation key → its labels; an hour after its last use a conversation is forgotten.
    pub sticky: moka::sync::Cache<u64, StickyLabels>,
}

/// Conversations whose labels are kept at most.
pub const STICKY_CONVERSATIONS: u64 = 100_000;
/// How long a conversation's labels are kept after its last turn.
pub const STICKY_IDLE: Duration = Duration::from_secs(3600);

impl Default for Memory {
    fn default() -> Self {
        Self {
            vectors: Vectors::default(),
            sticky: moka::sync::Cache::builder()
                .max_capacity(STICKY_CONVERSATIONS)
                .time_to_idle(STICKY_IDLE)
                .build(),
        }
    }
}

/// One classifier, built for a snapshot.
pub struct Classifier {
    pub name: String,
    pub labels: Vec<String>,
    pub method: Method,
    pub weights: [f32; 3],
    pub min_confidence: f32,
    pub fallback: Option<u16>,
    pub budget: Duration,
    pub scope: TextScope,
    pub embedding: Option<EmbeddingSpec>,
    pub llm: Option<LlmSpec>,
    lexical: Lexical,
    /// The llm method's system message.
    instructions: String,
    /// (label, text) of every exemplar, for the embedding method's vectors.
    pub exemplars: Vec<(u16, String)>,
    /// The fingerprint the exemplar vectors must have (model and texts).
    pub vectors_fingerprint: u64,
    cache: Option<moka::sync::Cache<u64, Verdict>>,
    /// Seed of the cache key (the classifier's place, so two never share a key).
    seed: u64,
}

impl Classifier {
    /// Builds a classifier; `model_name` names the embedding model (for the fingerprint).
    pub fn build(
        spec: &ClassifierSpec,
        index: usize,
        model_name: &dyn Fn(usize) -> String,
    ) -> Self {
        let texts: Vec<Vec<&str>> = spec
            .labels
            .iter()
            .map(|l| {
                std::iter::once(l.name.as_str())
                    .chain(l.description.as_deref())
                    .chain(l.examples.iter().map(String::as_str))
                    .collect()
            })
            .collect();
        let described: Vec<(String, Option<String>)> = spec
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.description.clone()))
            .collect();
        let exemplars = spec
            .labels
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.examples.iter().map(move |e| (i as u16, e.clone())))
            .collect();
        let embed_model = spec
            .embedding
            .as_ref()
            .map_or(String::new(), |e| model_name(e.model));
        Self {
            name: spec.name.clone(),
            labels: spec.labels.iter().map(|l| l.name.clone()).collect(),
            method: spec.method,
            weights: spec.weights,
            min_confidence: spec.min_confidence,
            fallback: spec.fallback,
            budget: spec.budget,
            scope: spec.scope,
            embedding: spec.embedding.clone(),
            llm: spec.llm.clone(),
            lexical: Lexical::build(&texts),
            instructions: llm::instructions(&described),
            exemplars,
            vectors_fingerprint: knn::fingerprint(
                &embed_model,
                spec.labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.examples.as_slice())),
            ),
            cache: spec.cache.filter(|_| !spec.is_local()).map(|c| {
                moka::sync::Cache::builder()
                    .max_capacity(c.entries)
                    .time_to_live(c.ttl)
                    .build()
            }),
            seed: 0x636c_6173_7369_6679 ^ index as u64,
        }
    }

    /// Whether only the lexical method votes (the router runs it inline).
    pub fn is_local(&self) -> bool {
        self.weights[1] == 0.0 && self.weights[2] == 0.0
    }

    pub fn label_name(&self, label: Option<u16>) -> Option<&str> {
        self.labels.get(usize::from(label?)).map(String::as_str)
    }

    /// The lexical method's answer for `text`.
    pub fn lexical(&self, text: &str) -> MethodResult {
        let started = std::time::Instant::now();
        let mut scores = [0.0; lexical::MAX_LABELS];
        self.lexical.scores(text, &mut scores);
        let best = lexical::best(&scores[..self.labels.len().min(lexical::MAX_LABELS)]);
        MethodResult {
            label: best.map(|b| b.label),
            confidence: best.map_or(0.0, |b| b.confidence),
            micros: micros(started.elapsed()),
            failure: best.is_none().then_some(Failure::NoLabel),
        }
    }

    /// The verdict of a vote (`None`: nobody answered), with `min_confidence` and the fallback
    /// applied.
    pub fn conclude(
        &self,
        vote: Option<lexical::Scored>,
        methods: [Option<MethodResult>; 3],
        micros: u32,
    ) -> Verdict {
        let (label, confidence, source) = match vote {
            None => (self.fallback, 0.0, Source::NoAnswer),
            Some(v) if v.confidence < self.min_confidence => {
                (self.fallback, v.confidence, Source::LowConfidence)
            }
            Some(v) => (Some(v.label), v.confidence, Source::Voted),
        };
        Verdict {
            label,
            confidence,
            source,
            micros,
            methods,
        }
    }

    /// The lexical-only classification of `text` (classifiers that call no model).
    pub fn classify_local(&self, text: &str) -> Verdict {
        let started = std::time::Instant::now();
        let result = self.lexical(text);
        let ballot = result.label.map(|label| {
            let said = lexical::Scored {
                label,
                confidence: result.confidence,
            };
            (self.weights[0], said)
        });
        let vote = vote::tally(self.labels.len(), ballot.as_slice());
        self.conclude(vote, [Some(result), None, None], micros(started.elapsed()))
    }

    fn cache_key(&self, text: &str) -> u64 {
        lexical::fingerprint(text, self.seed)
    }
}

/// A duration in whole microseconds, saturated.
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Every classifier of a snapshot, with what outlives it.
pub struct Classifiers {
    pub list: Box<[Classifier]>,
    pub memory: Memory,
}

impl Classifiers {
    pub fn build(
        specs: &[ClassifierSpec],
        memory: Memory,
        model_name: &dyn Fn(usize) -> String,
    ) -> Self {
        Self {
            list: specs
                .iter()
                .enumerate()
                .map(|(i, s)| Classifier::build(s, i, model_name))
                .collect(),
            memory,
        }
    }

    pub fn get(&self, index: u16) -> Option<&Classifier> {
        self.list.get(usize::from(index))
    }

    /// Where each embedding classifier's exemplar vectors stand (/readyz).
    pub fn vector_status(&self) -> Vec<(&str, VectorStatus)> {
        self.list
            .iter()
            .filter(|c| c.weights[1] > 0.0)
            .map(|c| {
                (
                    c.name.as_str(),
                    self.memory.vectors.status(&c.name, c.vectors_fingerprint),
                )
            })
            .collect()
    }
}

impl ClassifierSpec {
    /// Whether only the lexical method votes.
    pub fn is_local(&self) -> bool {
        self.weights[1] == 0.0 && self.weights[2] == 0.0
    }
}
