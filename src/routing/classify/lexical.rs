//! The lexical classifier: no model, microseconds.
//!
//! Built once per snapshot from a classifier's exemplars (with each label's name and
//! description as two more exemplars). A text becomes features: its lowercased words, each
//! pair of adjacent words, and the character trigrams of words longer than three characters
//! (they match across inflections, compounds and typos: "debugging" and "debugger",
//! "übersetzen" and "übersetze"; with them, a five-letter stem feature no longer helped).
//! Letters of scripts written without spaces (Han, kana, Hangul) are words of their own, so
//! their pairs are the character bigrams those languages are usually matched by. Every
//! feature is a 64-bit hash: nothing is kept as text.
//!
//! Weights are TF-IDF over the exemplars (`idf = ln((1+N)/(1+df)) + 1`, sublinear term
//! frequency); an exemplar's vector is normalised, a label's centroid is the normalised sum
//! of its exemplars'. Each known feature keeps one row: its IDF times each label's centroid
//! weight. A request's score for a label is the sum, over its feature occurrences, of the
//! feature's row: its cosine with the centroid up to the query's norm, which is the same for
//! every label and so needs not be computed. The best label wins; the confidence is the
//! relative margin over the second, `(s1 - s2) / s1`, in [0, 1] whatever the text's length.
//!
//! Request time allocates nothing: a word is lowercased into a 64-byte stack buffer, scores
//! are a stack array, and lookups go through a table keyed by the (already uniform) hash.
//! Rows are padded to a multiple of eight labels so that adding one is a few vector adds.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Labels of one classifier at most (scores live on the stack).
pub const MAX_LABELS: usize = 64;

/// Scores added at once (a row's padding unit; divides `MAX_LABELS`).
const LANES: usize = 8;

/// Bytes of a word that count (a longer word is hashed by its first 64 bytes).
const WORD_BYTES: usize = 64;

const SEED_WORD: u64 = 0x5157_4954_4348_5744;

/// A hasher for keys that are hashes already.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

/// The lexical model of one classifier.
pub struct Lexical {
    labels: usize,
    /// Floats per row: `labels` rounded up to a multiple of [`LANES`].
    stride: usize,
    /// Feature hash → first index of its row in `rows`.
    index: Table,
    /// `stride` weights per known feature (`labels` of them, then zeros).
    rows: Box<[f32]>,
}

/// Feature hash → row offset, open addressing with linear probing in one array of pairs, at
/// most half full: a lookup reads one slot, two at times, where a `HashMap` reads its control
/// bytes and then its keys (a 2 KB message makes about 2 000 lookups, most of them in L2).
struct Table {
    mask: usize,
    len: usize,
    /// (key, row offset); key 0 is an empty slot (a feature hashing to 0 is stored as 1).
    slots: Box<[(u64, u32)]>,
}

impl Table {
    fn build(from: &ByHash<u32>) -> Self {
        let size = (from.len() * 2).next_power_of_two().max(16);
        let mut slots = vec![(0u64, 0u32); size].into_boxed_slice();
        let mask = size - 1;
        for (&key, &at) in from {
            let key = key.max(1);
            let mut i = key as usize & mask;
            while slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = (key, at);
        }
        Self {
            mask,
            len: from.len(),
            slots,
        }
    }

    #[inline]
    fn get(&self, key: u64) -> Option<u32> {
        let key = key.max(1);
        let mut i = key as usize & self.mask;
        loop {
            let (k, at) = self.slots[i];
            if k == key {
                return Some(at);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A label and how far it is ahead of the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub label: u16,
    pub confidence: f32,
}

impl Lexical {
    /// Builds the model from each label's exemplar texts (label order is the index order).
    pub fn build(labels: &[Vec<&str>]) -> Self {
        let n_labels = labels.len().min(MAX_LABELS);
        let docs: Vec<(usize, ByHash<f32>)> = labels
            .iter()
            .take(n_labels)
            .enumerate()
            .flat_map(|(l, texts)| texts.iter().map(move |t| (l, counts(t))))
            .collect();
        let mut df: ByHash<f32> = ByHash::default();
        for (_, doc) in &docs {
            for &f in doc.keys() {
                *df.entry(f).or_default() += 1.0;
            }
        }
        let n = docs.len() as f32;
        let idf = |f: u64| ((1.0 + n) / (1.0 + df.get(&f).copied().unwrap_or(0.0))).ln() + 1.0;
        let mut centroids: Vec<ByHash<f32>> = vec![ByHash::default(); n_labels];
        for (l, doc) in &docs {
            let weighted: Vec<(u64, f32)> = doc
                .iter()
                .map(|(&f, &tf)| (f, (1.0 + tf.ln()) * idf(f)))
                .collect();
            let norm = weighted.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
            if norm == 0.0 {
                continue;
            }
            for (f, w) in weighted {
                *centroids[*l].entry(f).or_default() += w / norm;
            }
        }
        let stride = n_labels.div_ceil(LANES) * LANES;
        let mut index = ByHash::default();
        let mut rows = Vec::new();
        for (l, centroid) in centroids.iter().enumerate() {
            let norm = centroid.values().map(|w| w * w).sum::<f32>().sqrt();
            if norm == 0.0 {
                continue;
            }
            for (&f, &w) in centroid {
                let at = *index.entry(f).or_insert_with(|| {
                    let at = rows.len() as u32;
                    rows.resize(rows.len() + stride, 0.0);
                    at
                });
                rows[at as usize + l] = idf(f) * w / norm;
            }
        }
        Self {
            labels: n_labels,
            stride,
            index: Table::build(&index),
            rows: rows.into_boxed_slice(),
        }
    }

    /// Features the model knows (its size is this times the label count, rounded up to
    /// [`LANES`]).
    pub fn features(&self) -> usize {
        self.index.len
    }

    /// Each label's score for `text` (into `scores`, one per label; after them, zeros up to the
    /// row padding, and the rest untouched).
    pub fn scores(&self, text: &str, scores: &mut [f32; MAX_LABELS]) {
        let stride = self.stride;
        scores[..stride].fill(0.0);
        features(text, |f| {
            if let Some(at) = self.index.get(f) {
                if let Some(row) = self.rows.get(at as usize..at as usize + stride) {
                    let lanes = scores.chunks_exact_mut(LANES).zip(row.chunks_exact(LANES));
                    for (s, w) in lanes {
                        // Fixed-size arrays, the row's read first: the compiler adds them as
                        // vectors (it cannot tell otherwise that the row and the scores do
                        // not overlap).
                        if let (Ok(s), Ok(&w)) = (
                            <&mut [f32; LANES]>::try_from(s),
                            <&[f32; LANES]>::try_from(w),
                        ) {
                            let mut sum = *s;
                            for i in 0..LANES {
                                sum[i] += w[i];
                            }
                            *s = sum;
                        }
                    }
                }
            }
        });
    }

    /// The best label for `text` and its margin; `None` when no known feature occurs.
    pub fn classify(&self, text: &str) -> Option<Scored> {
        let mut scores = [0.0f32; MAX_LABELS];
        self.scores(text, &mut scores);
        best(&scores[..self.labels])
    }
}

/// The best of `scores` and its relative margin over the second; `None` when all are zero.
pub fn best(scores: &[f32]) -> Option<Scored> {
    let (mut first, mut second) = (None::<(usize, f32)>, 0.0f32);
    for (i, &s) in scores.iter().enumerate() {
        match first {
            Some((_, top)) if s <= top => second = second.max(s),
            _ => {
                if let Some((_, top)) = first {
                    second = second.max(top);
                }
                first = Some((i, s));
            }
        }
    }
    let (label, top) = first?;
    (top > 0.0).then(|| Scored {
        label: label as u16,
        confidence: ((top - second) / top).clamp(0.0, 1.0),
    })
}

/// Feature counts of one exemplar.
fn counts(text: &str) -> ByHash<f32> {
    let mut out = ByHash::default();
    features(text, |f| *out.entry(f).or_default() += 1.0);
    out
}

/// Whether `c` belongs to a script written without spaces between words.
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF) // CJK compatibility ideographs
}

/// Calls `each` with every feature hash of `text`, in order: per word, the word, its pair
/// with the previous word, and its character n-grams.
pub fn features(text: &str, mut each: impl FnMut(u64)) {
    let mut buf = [0u8; WORD_BYTES];
    let (mut len, mut chars) = (0usize, 0usize);
    let mut prev: Option<u64> = None;
    let mut emit = |buf: &[u8], chars: usize, prev: &mut Option<u64>| {
        let word = xxh3_64_with_seed(buf, SEED_WORD);
        each(word);
        if let Some(p) = *prev {
            each(p.rotate_left(17) ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        *prev = Some(word);
        if chars > GRAM {
            grams(buf, &mut each);
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                if len < WORD_BYTES {
                    buf[len] = c.to_ascii_lowercase() as u8;
                    len += 1;
                    chars += 1;
                }
            } else if len > 0 {
                emit(&buf[..len], chars, &mut prev);
                (len, chars) = (0, 0);
            }
            continue;
        }
        if unspaced(c) {
            if len > 0 {
                emit(&buf[..len], chars, &mut prev);
                (len, chars) = (0, 0);
            }
            let mut one = [0u8; 4];
            let s = c.encode_utf8(&mut one);
            emit(s.as_bytes(), 1, &mut prev);
            continue;
        }
        if !c.is_alphanumeric() {
            if len > 0 {
                emit(&buf[..len], chars, &mut prev);
                (len, chars) = (0, 0);
            }
            continue;
        }
        for lower in c.to_lowercase() {
            let mut one = [0u8; 4];
            let s = lower.encode_utf8(&mut one).as_bytes();
            if len + s.len() <= WORD_BYTES {
                buf[len..len + s.len()].copy_from_slice(s);
                len += s.len();
                chars += 1;
            }
        }
    }
    if len > 0 {
        emit(&buf[..len], chars, &mut prev);
    }
}

/// Characters per n-gram feature (on the route_eval set's even half, with a stem feature
/// then: trigrams scored 0.857, four- and five-grams 0.829 and 0.843, none 0.819).
const GRAM: usize = 3;
const SEED_GRAM: u64 = 0x5157_4954_4348_4e47;

/// The character n-grams of a word (of more than `GRAM` characters), each a feature. A gram
/// is at most `4 * GRAM` bytes, hashed by FNV-1a and a final mix for the table's low bits
/// (xxh3's setup cost as much as the rest of the classification for inputs this short).
fn grams(word: &[u8], each: &mut impl FnMut(u64)) {
    // The byte offsets where the last `GRAM` characters started, a ring: the oldest is at
    // `seen % GRAM`.
    let mut starts = [0usize; GRAM];
    let mut seen = 0usize;
    let mut gram = |from: usize, to: usize| {
        let mut fnv = fnv::FnvHasher::with_key(SEED_GRAM);
        fnv.write(&word[from..to]);
        let mut h = fnv.finish();
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        each(h ^ (h >> 32));
    };
    for (i, &b) in word.iter().enumerate() {
        if b & 0xC0 == 0x80 {
            continue; // inside a character
        }
        let oldest = seen % GRAM;
        if seen >= GRAM {
            gram(starts[oldest], i);
        }
        starts[oldest] = i;
        seen += 1;
    }
    if seen >= GRAM {
        gram(starts[seen % GRAM], word.len());
    }
}

/// A hash of the text as the features see it (case, punctuation and spacing do not count):
/// the classification cache's key.
pub fn fingerprint(text: &str, seed: u64) -> u64 {
    let mut h = seed;
    features(text, |f| {
        h = (h ^ f).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(5)
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Lexical {
        Lexical::build(&[
            vec![
                "code",
                "fix this segfault in my C loop",
                "write a SQL query that joins orders and customers",
                "why does the borrow checker reject this rust function",
                "debugging a python exception stack trace",
            ],
            vec![
                "math",
                "solve the integral of x squared",
                "prove that the square root of two is irrational",
                "what is the derivative of sin x times x",
            ],
            vec![
                "chat",
                "hi how are you today",
                "tell me something nice about your weekend",
                "what do you think about the weather",
            ],
        ])
    }

    #[test]
    fn picks_the_label_whose_exemplars_share_words() {
        let m = model();
        let code = m.classify("My Rust function won't compile, the borrow checker complains");
        assert_eq!(code.map(|s| s.label), Some(0));
        let math = m.classify("compute the integral of 3x squared dx");
        assert_eq!(math.map(|s| s.label), Some(1));
        let chat = m.classify("Hey, how are you doing today?");
        assert_eq!(chat.map(|s| s.label), Some(2));
    }

    #[test]
    fn trigrams_match_other_forms_of_a_word() {
        let m = Lexical::build(&[vec!["debugging sessions"], vec!["holidays abroad"]]);
        assert_eq!(m.classify("my debugger crashed").map(|s| s.label), Some(0));
    }

    #[test]
    fn unknown_words_give_no_label_and_confidence_is_a_margin() {
        let m = model();
        assert_eq!(m.classify("zzqx vvbn"), None);
        assert_eq!(m.classify(""), None);
        let clear = m
            .classify("borrow checker rust function segfault")
            .map(|s| s.confidence);
        assert!(clear.is_some_and(|c| c > 0.5 && c <= 1.0), "{clear:?}");
    }

    #[test]
    fn scripts_without_spaces_match_by_characters() {
        let m = Lexical::build(&[vec!["翻译这段文字"], vec!["计算积分"]]);
        assert_eq!(m.classify("请帮我翻译").map(|s| s.label), Some(0));
        assert_eq!(m.classify("这个积分怎么算").map(|s| s.label), Some(1));
    }

    #[test]
    fn fingerprint_ignores_case_and_punctuation_only() {
        let a = fingerprint("Fix THIS   bug!", 1);
        assert_eq!(a, fingerprint("fix this bug", 1));
        assert_ne!(a, fingerprint("fix that bug", 1));
        assert_ne!(a, fingerprint("fix this bug", 2));
    }

    #[test]
    fn best_is_the_relative_margin() {
        let s = best(&[0.2, 0.8, 0.4]).map(|s| (s.label, (s.confidence * 100.0).round()));
        assert_eq!(s, Some((1, 50.0)));
        assert_eq!(best(&[0.0, 0.0]), None);
        assert_eq!(best(&[]), None);
    }
}
