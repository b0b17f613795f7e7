//! The OpenAI-compatible API surface: which paths exist, the request view the router reads,
//! and the error bodies.

pub mod carry;
pub mod error;
pub mod json;
pub mod rename;
pub mod request;
pub mod sse;
pub mod strip;
pub mod usage;

/// `text` cut at `cuts` (any order, clamped to its length): the chunks a proptest feeds
/// to a scanner that must not care where a stream is split.
#[cfg(test)]
pub(crate) fn cut_at(text: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|c| *c = (*c).min(text.len()));
    cuts.sort_unstable();
    let mut last = 0;
    cuts.into_iter()
        .chain([text.len()])
        .map(|c| {
            let chunk = &text[last..c];
            last = c;
            chunk
        })
        .collect()
}

pub use error::ApiError;
pub use request::RequestView;

/// The endpoints the gateway routes by body `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }
}

/// What a request to the public port is, decided from method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// POST to an inference endpoint: read the body and route it.
    Inference(Endpoint),
    /// GET /v1/models, answered from config.
    ListModels,
    /// GET /v1/models/{id} (the SDKs' `models.retrieve`), answered from config.
    RetrieveModel,
    /// A known path with the wrong method.
    WrongMethod {
        allow: &'static str,
    },
    Unknown,
}

impl Target {
    pub fn classify(method: &http::Method, path: &str) -> Self {
        match (Endpoint::from_path(path), path) {
            (Some(e), _) if method == http::Method::POST => Self::Inference(e),
            (Some(_), _) => Self::WrongMethod { allow: "POST" },
            (None, "/v1/models") if method == http::Method::GET => Self::ListModels,
            (None, "/v1/models") => Self::WrongMethod { allow: "GET" },
            (None, p) if p.len() > "/v1/models/".len() && p.starts_with("/v1/models/") => {
                if method == http::Method::GET {
                    Self::RetrieveModel
                } else {
                    Self::WrongMethod { allow: "GET" }
                }
            }
            _ => Self::Unknown,
        }
    }
}
