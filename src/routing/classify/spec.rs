//! The typed config of `classifiers:` (validated by `config::classify`).

use std::time::Duration;

/// One classifier: labels with exemplars, the methods that vote and how.
#[derive(Debug, Clone)]
pub struct ClassifierSpec {
    pub name: String,
    pub labels: Vec<LabelSpec>,
    pub method: Method,
    pub embedding: Option<EmbeddingSpec>,
    pub llm: Option<LlmSpec>,
    /// Weight of each method's vote, by [`MethodKind`] index; 0: the method does not vote.
    pub weights: [f32; 3],
    /// Below this confidence the `fallback` label is used.
    pub min_confidence: f32,
    /// The label used when no method answers or the vote is not confident (index into
    /// `labels`); `None`: no label, so no `class` condition on this classifier holds.
    pub fallback: Option<u16>,
    /// Wall time for the whole classification; methods later than this are left out.
    pub budget: Duration,
    pub scope: TextScope,
    /// Classifications kept by text (for classifiers that call a model).
    pub cache: Option<CacheSpec>,
}

#[derive(Debug, Clone)]
pub struct LabelSpec {
    pub name: String,
    pub examples: Vec<String>,
    pub description: Option<String>,
}

/// `classifiers.X.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Lexical,
    Embedding,
    Llm,
    Ensemble,
}

impl Method {
    pub const NAMES: [&'static str; 4] = ["lexical", "embedding", "llm", "ensemble"];

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "lexical" => Self::Lexical,
            "embedding" => Self::Embedding,
            "llm" => Self::Llm,
            "ensemble" => Self::Ensemble,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// The methods that can vote, in the order of [`ClassifierSpec::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Lexical = 0,
    Embedding = 1,
    Llm = 2,
}

impl MethodKind {
    pub const ALL: [Self; 3] = [Self::Lexical, Self::Embedding, Self::Llm];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lexical => "lexical",
            Self::Embedding => "embedding",
            Self::Llm => "llm",
        }
    }
}

/// `classifiers.X.embedding`: a public model served by a pool that answers /v1/embeddings.
#[derive(Debug, Clone)]
pub struct EmbeddingSpec {
    /// Index into `Config::models`.
    pub model: usize,
    /// Neighbours that vote (default 5).
    pub k: usize,
}

/// `classifiers.X.llm`: a small chat model asked to name one label.
#[derive(Debug, Clone)]
pub struct LlmSpec {
    pub model: usize,
    /// Tokens of its answer at most (default 8).
    pub max_tokens: u32,
}

/// Which text a classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextScope {
    /// The last user message (a completion's prompt, an embedding's input).
    LastUser,
    /// The last `turns` messages (0: all of them), one per line.
    Conversation { turns: u32 },
}

#[derive(Debug, Clone, Copy)]
pub struct CacheSpec {
    pub entries: u64,
    pub ttl: Duration,
}
