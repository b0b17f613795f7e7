//! What the simulator makes of a text's meaning, deterministically and without a model:
//! embeddings in which texts that share words are near, and a classifier's answer.
//!
//! An embedding is a hashed bag of words and character trigrams: each lowercased word adds
//! ±1 at the dimension its hash picks (the sign from another bit of the hash), each trigram
//! of the word (with boundary marks) adds ±0.5, and the vector is normalised. Texts sharing
//! words share dimensions; a misspelt or inflected word still shares most trigrams.

/// The simulated embedding of `text` in `dims` dimensions (unit length; zero for no words).
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dims.max(1)];
    let mut add = |bytes: &[u8], weight: f32| {
        let h = xxhash_rust::xxh3::xxh3_64(bytes);
        let i = (h % v.len() as u64) as usize;
        v[i] += if h >> 63 == 0 { weight } else { -weight };
    };
    for word in words(text) {
        add(word.as_bytes(), 1.0);
        let marked: Vec<char> = std::iter::once('^')
            .chain(word.chars())
            .chain(std::iter::once('$'))
            .collect();
        for tri in marked.windows(3) {
            let s: String = tri.iter().collect();
            add(s.as_bytes(), 0.5);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The lowercased words of `text`.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Labels with the words that make a simulated classifier answer them.
#[derive(Debug, Clone)]
pub struct Labels(pub Vec<(String, Vec<String>)>);

/// `--classifier-labels`: `code:rust|python,math,chat` → each label with its words (the
/// label's own name always counts).
pub fn parse_labels(spec: &str) -> Result<Labels, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, listed) = item.split_once(':').unwrap_or((item, ""));
        if name.is_empty() {
            return Err(format!("{item:?}: a label needs a name"));
        }
        let mut words = vec![name.to_lowercase()];
        words.extend(
            listed
                .split('|')
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty()),
        );
        out.push((name.to_owned(), words));
    }
    if out.is_empty() {
        return Err("no label".to_owned());
    }
    Ok(Labels(out))
}

/// The label a simulated classifier model answers for `text`: the one whose words occur most
/// often in it (the earlier label on a tie), `unknown` when none occurs.
pub fn label_for(text: &str, labels: &[(String, Vec<String>)]) -> String {
    let seen: Vec<String> = words(text).collect();
    let mut best: Option<(usize, &str)> = None;
    for (name, listed) in labels {
        let hits = seen.iter().filter(|w| listed.contains(w)).count();
        if hits > 0 && best.is_none_or(|(b, _)| hits > b) {
            best = Some((hits, name));
        }
    }
    best.map_or_else(|| "unknown".to_owned(), |(_, n)| n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn texts_sharing_words_are_nearer_than_texts_that_do_not() {
        let a = embed("fix the segfault in my rust loop", 384);
        let b = embed("my rust loop has a segfault", 384);
        let c = embed("write a poem about autumn leaves", 384);
        assert!(cos(&a, &b) > 0.5, "{}", cos(&a, &b));
        assert!(cos(&a, &c) < 0.3, "{}", cos(&a, &c));
        assert_eq!(a, embed("Fix the SEGFAULT in my rust loop!", 384));
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        assert!(embed("", 8).iter().all(|x| *x == 0.0));
    }

    #[test]
    fn labels_answer_by_their_words() {
        let labels = parse_labels("code:rust|python|bug, math:integral|equation ,chat")
            .unwrap()
            .0;
        assert_eq!(label_for("a Rust bug in python", &labels), "code");
        assert_eq!(
            label_for("solve this equation and the integral", &labels),
            "math"
        );
        assert_eq!(label_for("let's chat", &labels), "chat");
        assert_eq!(label_for("hello there", &labels), "unknown");
        assert!(parse_labels(":x").is_err());
        assert!(parse_labels(" , ").is_err());
    }
}
