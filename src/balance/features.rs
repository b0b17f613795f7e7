//! Request features that policies read: the conversation's prefix as chained block hashes, and
//! the session key.
//!
//! The prefix is the conversation rendered canonically, as an engine's chat template would lay
//! it out, not the JSON bytes (two clients serialise the same conversation differently): the
//! tools, then each message's role, its text (escapes decoded; an image or other part hashed
//! raw in its place) and its tool calls, with separator bytes between them. That text is cut
//! into blocks of [`PREFIX_BLOCK_BYTES`] and each block hashed with xxh3 seeded by the
//! previous block's hash, so that entry k of the chain names the first k+1 blocks: two
//! requests share a leading run of the chain exactly as long as their shared prefix of whole
//! blocks. xxh3 is a specified algorithm, the same in every build and process, and hashes a
//! 32 KB conversation in a few microseconds.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::openai::json::{decode, elements, member, members};
use crate::openai::{Endpoint, RequestView};

/// Bytes per prefix block: about 64 tokens at 4 bytes per token, the granularity at which
/// the gateway tracks what servers hold (vLLM's blocks are 16 tokens; a coarser block keeps
/// the chain and the index small).
pub const PREFIX_BLOCK_BYTES: usize = 256;

/// Longest chain computed: 1 MiB of conversation. Beyond it, a longer shared prefix changes
/// nothing.
pub const MAX_BLOCKS: usize = 4096;

/// Separators of the canonical rendering: between fields of a message, and after a message.
const FIELD: &[u8] = b"\x1f";
const RECORD: &[u8] = b"\x1e";

/// Cuts a byte stream into blocks and chains their hashes.
struct Chain {
    buf: [u8; PREFIX_BLOCK_BYTES],
    len: usize,
    prev: u64,
    out: Vec<u64>,
}

impl Chain {
    fn new(capacity: usize) -> Self {
        Self {
            buf: [0; PREFIX_BLOCK_BYTES],
            len: 0,
            prev: 0,
            out: Vec::with_capacity(capacity.min(MAX_BLOCKS)),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.out.len() < MAX_BLOCKS {
            let take = (PREFIX_BLOCK_BYTES - self.len).min(bytes.len());
            self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if self.len == PREFIX_BLOCK_BYTES {
                self.prev = xxh3_64_with_seed(&self.buf, self.prev);
                self.out.push(self.prev);
                self.len = 0;
            }
        }
    }

    /// A JSON value: a string by its decoded text, anything else as it stands.
    fn value(&mut self, raw: &[u8]) {
        if raw.first() == Some(&b'"') {
            decode(raw, |piece| self.feed(piece.as_bytes()));
        } else {
            self.feed(raw);
        }
    }
}

/// The chained block hashes of the request's prompt, rendered canonically (see the module
/// doc). Embeddings have none: engines do not cache their prefixes.
pub fn prefix_hashes(endpoint: Endpoint, view: &RequestView<'_>, body: &[u8]) -> Vec<u64> {
    let prompt = body.get(view.prompt_span.clone()).unwrap_or_default();
    let mut chain = Chain::new(prompt.len() / PREFIX_BLOCK_BYTES);
    match endpoint {
        Endpoint::Embeddings => return Vec::new(),
        Endpoint::Completions => match prompt.first() {
            Some(b'[') => {
                for p in elements(prompt) {
                    chain.value(p);
                    chain.feed(RECORD);
                }
            }
            _ => chain.value(prompt),
        },
        Endpoint::ChatCompletions => {
            if let Some(tools) = view.tools.filter(|t| t.get() != "null") {
                chain.feed(tools.get().as_bytes());
                chain.feed(RECORD);
            }
            for m in elements(prompt) {
                if let Some(role) = member(m, "role") {
                    chain.value(role);
                }
                chain.feed(FIELD);
                match member(m, "content") {
                    Some(content) if content.first() == Some(&b'[') => {
                        for part in elements(content) {
                            let text = members(part)
                                .find(|(k, _)| *k == b"\"text\"")
                                .map(|(_, v)| v);
                            match text {
                                Some(t) => chain.value(t),
                                // An image or another part, hashed into its place.
                                None => chain.feed(part),
                            }
                        }
                    }
                    Some(content) if content != b"null" => chain.value(content),
                    _ => {}
                }
                if let Some(calls) = member(m, "tool_calls") {
                    chain.feed(FIELD);
                    chain.feed(calls);
                }
                chain.feed(RECORD);
            }
        }
    }
    chain.out
}

/// The seed of [`session_hash`]: part of the fleet's contract, never to change.
pub const SESSION_SEED: u64 = 0x5357_4954_4348_5944; // "SWITCHYD"

/// A hash of a session key (and of a server's id on the consistent-hash ring): XXH3-64 with
/// [`SESSION_SEED`], a specified algorithm with a fixed seed, so that every instance of every
/// build and version places a session on the same server (std's `DefaultHasher` promised
/// only the same build).
pub fn session_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, SESSION_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(body: &serde_json::Value) -> Vec<u64> {
        let body = serde_json::to_vec(body).unwrap();
        let view = RequestView::parse(&body).unwrap();
        prefix_hashes(Endpoint::ChatCompletions, &view, &body)
    }

    fn chat(messages: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"model": "m", "messages": messages})
    }

    #[test]
    fn a_conversations_next_turn_extends_its_chain() {
        let system = "You are a careful assistant. ".repeat(40);
        let turn1 = chat(serde_json::json!([
            {"role": "system", "content": system},
            {"role": "user", "content": "first question ".repeat(20)}]));
        let turn2 = chat(serde_json::json!([
            {"role": "system", "content": system},
            {"role": "user", "content": "first question ".repeat(20)},
            {"role": "assistant", "content": "an answer ".repeat(30)},
            {"role": "user", "content": "second question"}]));
        let (a, b) = (hashes(&turn1), hashes(&turn2));
        assert!(a.len() >= 5, "{}", a.len());
        assert!(b.len() > a.len());
        // Every whole block of turn 1 but the last (which the new messages complete
        // differently) is a prefix of turn 2's chain.
        assert_eq!(a[..a.len() - 1], b[..a.len() - 1]);
        // Another system prompt shares nothing.
        let other =
            chat(serde_json::json!([{"role": "system", "content": "Be terse. ".repeat(200)}]));
        assert_ne!(hashes(&other)[0], a[0]);
    }

    #[test]
    fn the_rendering_is_canonical_not_the_json_bytes() {
        let text = "é and \"quotes\" and a long tail ".repeat(20);
        let plain = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":{}}}]}}"#,
            serde_json::to_string(&text).unwrap()
        );
        // Key order, spacing and \u escapes of the same text.
        let escaped: String = text
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", c as u32)
                }
            })
            .collect::<String>()
            .replace('"', "\\\"");
        let other = format!(
            r#"{{ "messages" : [ {{ "content" : "{escaped}", "role" : "user" }} ], "model" : "m" }}"#
        );
        let h = |body: &str| {
            let view = RequestView::parse(body.as_bytes()).unwrap();
            prefix_hashes(Endpoint::ChatCompletions, &view, body.as_bytes())
        };
        assert!(!h(&plain).is_empty());
        assert_eq!(h(&plain), h(&other));
        // Parts: the text of text parts, an image in its place.
        let parts = chat(serde_json::json!([{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]));
        let just_text = chat(serde_json::json!([{"role": "user", "content": text}]));
        assert_eq!(hashes(&parts)[..2], hashes(&just_text)[..2]);
    }

    #[test]
    fn tools_are_part_of_the_prefix_and_long_prompts_are_capped() {
        let m = serde_json::json!([{"role": "user", "content": "x".repeat(2000)}]);
        let mut with_tools = chat(m.clone());
        with_tools["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f", "description": "d".repeat(300)}}]);
        assert_ne!(hashes(&with_tools)[0], hashes(&chat(m))[0]);
        let huge = chat(serde_json::json!([{"role": "user", "content": "y".repeat(2 << 20)}]));
        assert_eq!(hashes(&huge).len(), MAX_BLOCKS);
        let body = br#"{"model":"m","input":"embed this please, it is long enough to fill a block or two of text, surely, yes"}"#;
        let view = RequestView::parse(body).unwrap();
        assert!(prefix_hashes(Endpoint::Embeddings, &view, body).is_empty());
    }

    /// Golden values: a change here moves every session of a running fleet.
    #[test]
    fn session_hashes_are_stable_across_builds_and_versions() {
        assert_eq!(session_hash(b"user-1"), 0xded3_fe3f_9f1f_55bf);
        assert_eq!(session_hash(b""), xxh3_64_with_seed(b"", SESSION_SEED));
        assert_ne!(session_hash(b"user-1"), session_hash(b"user-2"));
    }
}
