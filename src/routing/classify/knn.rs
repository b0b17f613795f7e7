//! The embedding method: the request's vector against the exemplars' (computed through the
//! embeddings pool when the snapshot is built, kept across reloads by [`Vectors`]), k nearest
//! by cosine. A label's score is the sum of its neighbours' similarities; the vote
//! (vote.rs) normalises them.
//!
//! Exemplar vectors are keyed by a fingerprint of what produced them (the embedding model,
//! the label names and the texts). A reload that changes nothing keeps them without a call;
//! one that changes them but cannot reach the pool keeps the previous ones, labelled by name,
//! and says so (`state: stale` in /readyz).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// The exemplar vectors of one classifier.
#[derive(Debug)]
pub struct Exemplars {
    /// What they were made from ([`fingerprint`]).
    pub fingerprint: u64,
    /// Label names, by the index the rows use.
    pub labels: Vec<String>,
    /// (label index into `labels`, unit vector) per exemplar.
    pub rows: Vec<(u16, Vec<f32>)>,
}

/// Where a classifier's exemplar vectors stand.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum VectorState {
    /// Not computed yet (the first attempt is on its way).
    Loading,
    /// Vectors for the current labels and exemplars.
    Ready,
    /// The current exemplars could not be embedded; older vectors serve meanwhile.
    Stale,
    /// No vectors at all: the embedding method does not answer.
    Missing,
}

/// A classifier's exemplar vectors and their state, as /readyz shows them.
#[derive(Debug, Clone, Serialize)]
pub struct VectorStatus {
    pub state: VectorState,
    /// Exemplar vectors serving.
    pub exemplars: usize,
    /// The last attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Entry {
    vectors: Option<Arc<Exemplars>>,
    status: Option<VectorStatus>,
}

/// Exemplar vectors by classifier name; outlives snapshots (one per gateway).
#[derive(Default, Clone)]
pub struct Vectors {
    inner: Arc<RwLock<HashMap<String, Entry>>>,
}

impl Vectors {
    /// The vectors serving classifier `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Exemplars>> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(name)?.vectors.clone()
    }

    /// Whether classifier `name` has vectors made from `fingerprint`.
    pub fn is_current(&self, name: &str, fingerprint: u64) -> bool {
        self.get(name).is_some_and(|e| e.fingerprint == fingerprint)
    }

    /// Stores freshly computed vectors.
    pub fn put(&self, name: &str, exemplars: Exemplars) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_owned()).or_default();
        entry.status = Some(VectorStatus {
            state: VectorState::Ready,
            exemplars: exemplars.rows.len(),
            error: None,
        });
        entry.vectors = Some(Arc::new(exemplars));
    }

    /// Records a failed attempt; vectors made earlier keep serving.
    pub fn failed(&self, name: &str, error: String) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_owned()).or_default();
        let exemplars = entry.vectors.as_ref().map_or(0, |v| v.rows.len());
        entry.status = Some(VectorStatus {
            state: if exemplars > 0 {
                VectorState::Stale
            } else {
                VectorState::Missing
            },
            exemplars,
            error: Some(error),
        });
    }

    /// Where classifier `name`'s vectors stand, for a snapshot wanting `fingerprint`.
    pub fn status(&self, name: &str, fingerprint: u64) -> VectorStatus {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(name);
        let current = entry
            .and_then(|e| e.vectors.as_ref())
            .is_some_and(|v| v.fingerprint == fingerprint);
        match entry.and_then(|e| e.status.clone()) {
            Some(s) if current => s,
            Some(s) if s.error.is_some() => s,
            // Vectors of other exemplars, and no attempt failed yet: loading the new ones.
            _ => VectorStatus {
                state: VectorState::Loading,
                exemplars: entry
                    .and_then(|e| e.vectors.as_ref())
                    .map_or(0, |v| v.rows.len()),
                error: None,
            },
        }
    }
}

/// The fingerprint of exemplar vectors: the model that embeds them, the labels and texts.
pub fn fingerprint<'a>(model: &str, labels: impl Iterator<Item = (&'a str, &'a [String])>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(model.as_bytes());
    for (label, texts) in labels {
        h.update(&[0xff]);
        h.update(label.as_bytes());
        for t in texts {
            h.update(&[0xfe]);
            h.update(t.as_bytes());
        }
    }
    h.digest()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Scores per label of the classifier (`names`: its labels in order) for a unit `query`:
/// the similarities of the `k` nearest exemplars, summed by label. Exemplar labels that are no
/// longer among `names` (vectors kept from before a reload) are left out.
pub fn scores(exemplars: &Exemplars, names: &[String], query: &[f32], k: usize, out: &mut [f32]) {
    let mut near: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (label, v) in &exemplars.rows {
        if v.len() != query.len() {
            continue;
        }
        let Some(at) = exemplars
            .labels
            .get(usize::from(*label))
            .and_then(|n| names.iter().position(|m| m == n))
        else {
            continue;
        };
        let sim: f32 = v.iter().zip(query).map(|(a, b)| a * b).sum();
        if near.len() < k || near.last().is_some_and(|(s, _)| sim > *s) {
            let pos = near.partition_point(|(s, _)| *s >= sim);
            near.insert(pos, (sim, at));
            near.truncate(k);
        }
    }
    for (sim, at) in near {
        if let Some(o) = out.get_mut(at) {
            *o += sim.max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        normalise(&mut v);
        v
    }

    #[test]
    fn the_nearest_exemplars_decide() {
        let ex = Exemplars {
            fingerprint: 1,
            labels: vec!["a".into(), "b".into()],
            rows: vec![
                (0, unit(&[1.0, 0.0])),
                (0, unit(&[0.9, 0.1])),
                (1, unit(&[0.0, 1.0])),
                (1, unit(&[0.2, 0.9])),
            ],
        };
        let names = ["a".to_owned(), "b".to_owned()];
        let mut out = [0.0; 2];
        scores(&ex, &names, &unit(&[0.1, 1.0]), 2, &mut out);
        assert!(out[1] > 1.5 && out[0] == 0.0, "{out:?}");
        // Labels kept from an older config map by name; a vanished label is skipped.
        let renamed = ["b".to_owned(), "c".to_owned()];
        let mut out = [0.0; 2];
        scores(&ex, &renamed, &unit(&[1.0, 0.0]), 1, &mut out);
        assert!(out[0] > 0.0 && out[1] == 0.0, "{out:?}");
    }

    #[test]
    fn a_failed_refresh_keeps_the_vectors_and_says_stale() {
        let v = Vectors::default();
        assert_eq!(v.status("t", 1).state, VectorState::Loading);
        v.failed("t", "connection refused".into());
        assert_eq!(v.status("t", 1).state, VectorState::Missing);
        v.put(
            "t",
            Exemplars {
                fingerprint: 1,
                labels: vec!["a".into()],
                rows: vec![(0, vec![1.0])],
            },
        );
        assert_eq!(v.status("t", 1).state, VectorState::Ready);
        assert!(v.is_current("t", 1));
        // New exemplars (fingerprint 2): loading until an attempt fails, then stale.
        assert_eq!(v.status("t", 2).state, VectorState::Loading);
        v.failed("t", "timed out".into());
        let s = v.status("t", 2);
        assert_eq!((s.state, s.exemplars), (VectorState::Stale, 1));
        assert!(v.get("t").is_some());
    }
}
