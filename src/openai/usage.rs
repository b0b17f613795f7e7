//! Reads `usage.prompt_tokens` and `usage.completion_tokens` out of a response as its chunks
//! pass (a JSON body, or the SSE usage chunk), without buffering or allocating.
//!
//! The scanner matches the byte patterns `"prompt_tokens":` and `"completion_tokens":` and
//! parses the number after them. Such a pattern cannot occur inside a JSON string value (a
//! quote there is escaped as `\"`), so a match is always a key. The last value seen wins,
//! which is right for servers that repeat cumulative usage on every chunk. State carries
//! across chunk boundaries.

const KEYS: [&[u8]; 2] = [b"\"prompt_tokens\":", b"\"completion_tokens\":"];

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
                // Both keys start with a quote: jump to the next one (SIMD search) instead of
                // stepping through every byte of the text around them.
                let Some(i) = memchr::memchr(b'"', rest) else {
                    return;
                };
                self.step(b'"');
                rest = &rest[i + 1..];
                continue;
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

    proptest! {
        #[test]
        fn any_chunking_reads_the_same_usage(cuts in proptest::collection::vec(0usize..SSE.len(), 0..16)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut u = UsageScanner::default();
            let mut last = 0;
            for c in cuts.into_iter().chain([SSE.len()]) {
                u.observe(&SSE[last..c]);
                last = c;
            }
            prop_assert_eq!(u.prompt_tokens, Some(41));
            prop_assert_eq!(u.completion_tokens, Some(7));
        }
    }
}
