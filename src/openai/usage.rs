//! Reads `usage.prompt_tokens` and `usage.completion_tokens` out of a response as its chunks
//! pass (a JSON body, or the SSE usage chunk), without buffering or allocating.
//!
//! The scanner matches the byte patterns `"prompt_tokens":` and `"completion_tokens":` and
//! parses the number after them. Such a pattern cannot occur inside a JSON string value (a
//! quote there is escaped as `\"`), so a match is always a key. The last value seen wins,
//! which is right for servers that repeat cumulative usage on every chunk. State carries
//! across chunk boundaries.

const KEYS: [&[u8]; 2] = [b"\"prompt_tokens\":", b"\"completion_tokens\":"];
/// What both keys end with, and what each has before it.
const SUFFIX: &[u8] = b"_tokens\":";
const PREFIXES: [&[u8]; 2] = [b"\"prompt", b"\"completion"];
/// The longest key: a key cut off at a chunk's end starts within its length minus one.
const LONGEST: usize = KEYS[1].len();

static SUFFIX_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(SUFFIX));

/// The first whole key in `hay`: which one, and where its value starts.
fn find_key(hay: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = SUFFIX_FINDER.find(&hay[from..]) {
        let at = from + i;
        let end = at + SUFFIX.len();
        if let Some(key) = PREFIXES.iter().position(|p| hay[..at].ends_with(p)) {
            return Some((key, end));
        }
        // `"total_tokens":`, `"cached_tokens":`, …
        from = end;
    }
    None
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Matching keys; `progress[i]` bytes of `KEYS[i]` matched so far.
    #[default]
    Keys,
    /// After a key: skipping white space, then reading digits.
    Number {
        key: usize,
        value: u64,
        digits: bool,
    },
}

/// Token counts a server reported.
#[derive(Debug, Clone, Default)]
pub struct UsageScanner {
    state: State,
    progress: [usize; 2],
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl UsageScanner {
    pub fn observe(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            if self.state == State::Keys && self.progress == [0; 2] {
                // Between keys: a SIMD search for the next whole key instead of stepping
                // through every byte (and every quote) of the text around it.
                if let Some((key, end)) = find_key(rest) {
                    self.state = State::Number {
                        key,
                        value: 0,
                        digits: false,
                    };
                    rest = &rest[end..];
                    continue;
                }
                // No whole key is left. One cut off by the chunk's end starts with a quote
                // among the last LONGEST - 1 bytes; only those are stepped through.
                let tail_start = rest.len().saturating_sub(LONGEST - 1);
                let Some(q) = memchr::memchr(b'"', &rest[tail_start..]) else {
                    return;
                };
                for &b in &rest[tail_start + q..] {
                    self.step(b);
                }
                return;
            }
            self.step(b);
            rest = tail;
        }
    }

    fn step(&mut self, b: u8) {
        if let State::Number { key, value, digits } = self.state {
            match b {
                b'0'..=b'9' => {
                    let v = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                    self.state = State::Number {
                        key,
                        value: v,
                        digits: true,
                    };
                    return;
                }
                b' ' | b'\t' | b'\r' | b'\n' if !digits => return,
                _ => {
                    if digits {
                        let slot = if key == 0 {
                            &mut self.prompt_tokens
                        } else {
                            &mut self.completion_tokens
                        };
                        *slot = Some(value);
                    }
                    self.state = State::Keys;
                    self.progress = [0; 2];
                    // Fall through: this byte may start a key.
                }
            }
        }
        for (i, key) in KEYS.iter().enumerate() {
            let p = self.progress[i];
            if key[p] == b {
                self.progress[i] = p + 1;
                if p + 1 == key.len() {
                    self.state = State::Number {
                        key: i,
                        value: 0,
                        digits: false,
                    };
                    self.progress = [0; 2];
                    return;
                }
            } else if p + 1 == key.len() && key[1] == b {
                // The key's closing quote may open the next (`"prompt_tokens"prompt_tokens":`,
                // not JSON, but the whole-chunk search matches it: found by fuzz/sse).
                self.progress[i] = 2;
            } else {
                // Keys hold a quote only first and before the colon, so a mismatch restarts
                // at 1 when the byte is a quote and at 0 otherwise.
                self.progress[i] = usize::from(b == b'"');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regression from fuzz/sse: a key's closing quote opening the next key is matched the
    /// same byte by byte as in one search.
    #[test]
    fn a_quote_that_closes_one_key_and_opens_the_next_is_seen_however_cut() {
        let text: &[u8] = b"at\"completion_tokens\"completion_tokens\":2\t";
        let mut whole = UsageScanner::default();
        whole.observe(text);
        assert_eq!(whole.completion_tokens, Some(2));
        for cut in 0..text.len() {
            let mut s = UsageScanner::default();
            s.observe(&text[..cut]);
            s.observe(&text[cut..]);
            assert_eq!(s.completion_tokens, Some(2), "cut at {cut}");
        }
    }
    use proptest::prelude::*;

    const SSE: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"prompt_tokens\\\": 99\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":41,\"completion_tokens\":7,\"total_tokens\":48,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn usage_is_read_and_escaped_text_in_content_is_not_mistaken_for_it() {
        let mut u = UsageScanner::default();
        u.observe(SSE);
        assert_eq!(u.prompt_tokens, Some(41));
        assert_eq!(u.completion_tokens, Some(7));
    }

    #[test]
    fn pretty_printed_json_and_null_usage() {
        let mut u = UsageScanner::default();
        u.observe(b"{\"usage\": {\n  \"prompt_tokens\" :1}}");
        assert_eq!(
            u.prompt_tokens, None,
            "space before the colon is not matched"
        );
        u.observe(b"{\"usage\": {\"prompt_tokens\":  12, \"completion_tokens\": null}}");
        assert_eq!(u.prompt_tokens, Some(12));
        assert_eq!(u.completion_tokens, None);
    }

    #[test]
    fn the_last_value_wins() {
        let mut u = UsageScanner::default();
        u.observe(b"{\"completion_tokens\":1}{\"completion_tokens\":2}{\"completion_tokens\":3}");
        assert_eq!(u.completion_tokens, Some(3));
    }

    /// The machine alone, one byte at a time: what `observe` must agree with.
    fn bytewise(chunks: &[&[u8]]) -> (Option<u64>, Option<u64>) {
        let mut u = UsageScanner::default();
        for &b in chunks.iter().copied().flatten() {
            u.step(b);
        }
        (u.prompt_tokens, u.completion_tokens)
    }

    /// Pieces that make near misses likely: keys, their parts, escaped keys, other `_tokens`.
    fn piece() -> impl Strategy<Value = &'static [u8]> {
        proptest::sample::select(vec![
            &b"\"prompt_tokens\":"[..],
            b"\"completion_tokens\":",
            b"\"total_tokens\":",
            b"\"cached_tokens\":",
            b"\\\"prompt_tokens\\\":",
            b"\"prompt",
            b"_tokens\":",
            b"\"",
            b":",
            b" ",
            b"12",
            b"7",
            b"null",
            b"{",
            b"}",
            b",",
            b"x",
        ])
    }

    proptest! {
        #[test]
        fn observe_agrees_with_the_byte_machine_on_any_text_and_chunking(
            pieces in proptest::collection::vec(piece(), 0..40),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let text: Vec<u8> = pieces.concat();
            let chunks = crate::openai::cut_at(&text, cuts);
            let mut u = UsageScanner::default();
            for c in &chunks {
                u.observe(c);
            }
            prop_assert_eq!((u.prompt_tokens, u.completion_tokens), bytewise(&chunks));
        }

        #[test]
        fn any_chunking_reads_the_same_usage(cuts in proptest::collection::vec(0usize..SSE.len(), 0..16)) {
            let mut u = UsageScanner::default();
            for chunk in crate::openai::cut_at(SSE, cuts) {
                u.observe(chunk);
            }
            prop_assert_eq!(u.prompt_tokens, Some(41));
            prop_assert_eq!(u.completion_tokens, Some(7));
        }
    }
}
