//! One classification of a classifier that calls a model, within its budget.
//!
//! The cache is looked up first (keyed by the text as the lexical features see it). Then the
//! lexical method runs inline and the embedding and llm calls go out together; when the
//! budget ends, a call still out is dropped (its connection closes, freeing the server) and
//! left out of the vote. A classification where a method failed is not cached: the next
//! request tries again.

use std::time::Instant;

use async_trait::async_trait;

use super::lexical::Scored;
use super::lexical::MAX_LABELS;
use super::vote::tally;
use super::{knn, llm, micros, Classifier, Failure, MethodResult, Source, Vectors, Verdict};

/// How classification reaches models: the gateway sends through the model's pools (its
/// balancing, health and breakers).
#[async_trait]
pub trait Backend: Send + Sync {
    /// POSTs the body `body` makes from the served model name to `path` on a server of
    /// `model`'s pools; the body of a 2xx answer, or why there is none.
    async fn post(
        &self,
        model: usize,
        path: &'static str,
        body: &(dyn for<'s> Fn(&'s str) -> Vec<u8> + Sync),
    ) -> Result<Vec<u8>, String>;
}

/// Classifies `text` with every method of `c`, within its budget.
pub async fn run(c: &Classifier, vectors: &Vectors, text: &str, backend: &dyn Backend) -> Verdict {
    let started = Instant::now();
    let key = c.cache_key(text);
    if let Some(mut hit) = c.cache.as_ref().and_then(|cache| cache.get(&key)) {
        hit.source = Source::Cached;
        hit.micros = micros(started.elapsed());
        return hit;
    }
    let n = c.labels.len().min(MAX_LABELS);
    let deadline = tokio::time::Instant::now() + c.budget;
    let embedding = async {
        let spec = c.embedding.as_ref().filter(|_| c.weights[1] > 0.0)?;
        let t0 = Instant::now();
        let Some(exemplars) = vectors.get(&c.name) else {
            return Some(failed(Failure::NoVectors, t0));
        };
        let body = |served: &str| {
            serde_json::json!({"model": served, "input": text})
                .to_string()
                .into_bytes()
        };
        let call = backend.post(spec.model, "/v1/embeddings", &body);
        Some(match tokio::time::timeout_at(deadline, call).await {
            Err(_) => failed(Failure::Timeout, t0),
            Ok(Err(e)) => {
                tracing::debug!(classifier = %c.name, error = %e, "embedding call failed");
                failed(Failure::Error, t0)
            }
            Ok(Ok(answer)) => match first_vector(&answer) {
                None => failed(Failure::Error, t0),
                Some(mut q) => {
                    knn::normalise(&mut q);
                    let mut scores = vec![0.0; n];
                    knn::scores(&exemplars, &c.labels, &q, spec.k, &mut scores);
                    let best = super::lexical::best(&scores);
                    MethodResult {
                        label: best.map(|b| b.label),
                        confidence: best.map_or(0.0, |b| b.confidence),
                        micros: micros(t0.elapsed()),
                        failure: best.is_none().then_some(Failure::NoLabel),
                    }
                }
            },
        })
    };
    let model = async {
        let spec = c.llm.as_ref().filter(|_| c.weights[2] > 0.0)?;
        let t0 = Instant::now();
        let body = |served: &str| llm::request(served, &c.instructions, text, spec.max_tokens);
        let call = backend.post(spec.model, "/v1/chat/completions", &body);
        Some(match tokio::time::timeout_at(deadline, call).await {
            Err(_) => failed(Failure::Timeout, t0),
            Ok(Err(e)) => {
                tracing::debug!(classifier = %c.name, error = %e, "llm call failed");
                failed(Failure::Error, t0)
            }
            Ok(Ok(answer)) => match llm::answer(&answer) {
                None => failed(Failure::Error, t0),
                Some(reply) => {
                    let label = llm::parse(&reply, &c.labels);
                    MethodResult {
                        label,
                        confidence: if label.is_some() { 1.0 } else { 0.0 },
                        micros: micros(t0.elapsed()),
                        failure: label.is_none().then_some(Failure::NoLabel),
                    }
                }
            },
        })
    };
    let (embedding, model) = tokio::join!(embedding, model);
    let lexical = (c.weights[0] > 0.0).then(|| c.lexical(text));
    let methods = [lexical, embedding, model];
    let ballots = methods.iter().zip(c.weights).filter_map(|(m, w)| {
        let m = m.as_ref()?;
        Some((
            w,
            Scored {
                label: m.label?,
                confidence: m.confidence,
            },
        ))
    });
    let ballots: Vec<(f32, Scored)> = ballots.collect();
    let verdict = c.conclude(tally(n, &ballots), methods, micros(started.elapsed()));
    let degraded = methods.iter().flatten().any(|m| {
        matches!(
            m.failure,
            Some(Failure::Timeout | Failure::Error | Failure::NoVectors)
        )
    });
    if let Some(cache) = c.cache.as_ref().filter(|_| !degraded) {
        cache.insert(key, verdict);
    }
    verdict
}

/// Computes classifier `c`'s exemplar vectors through its embedding model (64 texts per
/// call, each call within `timeout`) and stores them; on failure the vectors made before stay.
pub async fn embed_exemplars(
    c: &Classifier,
    vectors: &Vectors,
    backend: &dyn Backend,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let spec = c
        .embedding
        .as_ref()
        .ok_or("the classifier has no embedding model")?;
    let mut rows = Vec::with_capacity(c.exemplars.len());
    for batch in c.exemplars.chunks(64) {
        let inputs: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
        let body = |served: &str| {
            serde_json::json!({"model": served, "input": inputs})
                .to_string()
                .into_bytes()
        };
        let answer =
            tokio::time::timeout(timeout, backend.post(spec.model, "/v1/embeddings", &body))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))??;
        let got = self::vectors(&answer).ok_or("the answer is not an embeddings list")?;
        if got.len() != batch.len() {
            return Err(format!("{} vectors for {} texts", got.len(), batch.len()));
        }
        for ((label, _), mut v) in batch.iter().zip(got) {
            knn::normalise(&mut v);
            rows.push((*label, v));
        }
    }
    vectors.put(
        &c.name,
        super::Exemplars {
            fingerprint: c.vectors_fingerprint,
            labels: c.labels.clone(),
            rows,
        },
    );
    Ok(())
}

fn failed(why: Failure, since: Instant) -> MethodResult {
    MethodResult {
        label: None,
        confidence: 0.0,
        micros: micros(since.elapsed()),
        failure: Some(why),
    }
}

/// The first vector of an embeddings answer (`data[0].embedding`).
pub fn first_vector(body: &[u8]) -> Option<Vec<f32>> {
    vectors(body)?.into_iter().next()
}

/// Every vector of an embeddings answer, in `index` order.
pub fn vectors(body: &[u8]) -> Option<Vec<Vec<f32>>> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        index: usize,
        embedding: Vec<f32>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Vec<Item>,
    }
    let mut a: Answer = serde_json::from_slice(body).ok()?;
    a.data.sort_by_key(|i| i.index);
    Some(a.data.into_iter().map(|i| i.embedding).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_answers_are_read_in_index_order() {
        let body =
            br#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}]}"#;
        assert_eq!(vectors(body), Some(vec![vec![1.0, 0.0], vec![0.0, 1.0]]));
        assert_eq!(first_vector(b"{}"), None);
        assert_eq!(first_vector(br#"{"data":[]}"#), None);
    }
}
