//! `server.response_model: public`: the `model` of an answer (a JSON body, or every event of a
//! stream) says the public name of the model that answered instead of the name its servers
//! serve. Off by default (`served`), when nothing here runs: the answer says what the server
//! said, as OpenRouter's do.
//!
//! The value is replaced where `"model":` (spaces allowed) is followed by the served name as a
//! JSON string. `"model":` cannot occur inside a JSON string (a quote there is escaped), so a
//! match is always a key. A chunk that ends inside a possible match keeps that tail back until
//! the next chunk shows whether it is one; everything else passes as it came.

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

use super::carry::{Carry, ChunkFilter};
use std::sync::LazyLock;

const KEY: &[u8] = b"\"model\":";
static KEY_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY));
/// Spaces allowed between the key's colon and its value.
const MAX_SPACES: usize = 4;

#[derive(Debug)]
pub struct ModelRename {
    /// The served name and the public one, as JSON string literals (quotes included).
    from: Bytes,
    to: Bytes,
    carry: Carry,
}

/// How `s` (which starts at a quote) relates to a key and value to replace.
enum Match {
    No,
    /// It is one; the value ends this many bytes in.
    Yes(usize),
    /// It may be one: `s` ends too early to tell.
    Maybe,
}

impl ModelRename {
    pub fn new(from: Bytes, to: Bytes) -> Self {
        Self {
            from,
            to,
            carry: Carry::default(),
        }
    }

    fn at(&self, s: &[u8]) -> Match {
        let n = s.len().min(KEY.len());
        if s[..n] != KEY[..n] {
            return Match::No;
        }
        if s.len() <= KEY.len() {
            return Match::Maybe;
        }
        let rest = &s[KEY.len()..];
        let spaces = rest.iter().take_while(|b| **b == b' ').count();
        if spaces > MAX_SPACES {
            return Match::No;
        }
        let value = &rest[spaces..];
        let n = value.len().min(self.from.len());
        if value[..n] != self.from[..n] {
            Match::No
        } else if n < self.from.len() {
            Match::Maybe
        } else {
            Match::Yes(KEY.len() + spaces + self.from.len())
        }
    }

    /// What to forward of `chunk`.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let data = self.carry.join(chunk);
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        for at in KEY_FINDER.find_iter(&data) {
            if at < copied {
                continue;
            }
            if let Match::Yes(len) = self.at(&data[at..]) {
                let o = out.get_or_insert_with(|| BytesMut::with_capacity(data.len() + 32));
                o.extend_from_slice(&data[copied..at + KEY.len()]);
                o.extend_from_slice(&self.to);
                copied = at + len;
            }
        }
        // A possible match cut by the chunk's end waits for the next chunk.
        let window = KEY.len() + MAX_SPACES + self.from.len();
        let tail_from = data.len().saturating_sub(window).max(copied);
        let keep = memchr::memchr_iter(b'"', &data[tail_from..])
            .map(|i| tail_from + i)
            .find(|&i| matches!(self.at(&data[i..]), Match::Maybe))
            .unwrap_or(data.len());
        self.carry.keep(&data[keep..]);
        match out {
            None if keep == data.len() => data,
            None => data.slice(..keep),
            Some(mut o) => {
                o.extend_from_slice(&data[copied..keep]);
                o.freeze()
            }
        }
    }

    /// At the end: whatever was held back, as it came.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.carry.take()
    }
}

impl ChunkFilter for ModelRename {
    fn filter(&mut self, chunk: Bytes) -> Bytes {
        ModelRename::filter(self, chunk)
    }

    fn finish(&mut self) -> Option<Bytes> {
        ModelRename::finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &[u8] = b"data: {\"id\":\"x\",\"model\":\"meta/Llama-8B\",\"choices\":[{\"delta\":{\"content\":\"\\\"model\\\":\\\"meta/Llama-8B\\\"\"}}]}\n\n\
data: {\"model\": \"meta/Llama-8B\",\"choices\":[]}\n\n\
data: {\"model\":\"meta/Llama-8Bx\"}\n\ndata: [DONE]\n\n";

    fn renamer() -> ModelRename {
        ModelRename::new(
            Bytes::from_static(b"\"meta/Llama-8B\""),
            Bytes::from_static(b"\"fast\""),
        )
    }

    fn expected() -> Vec<u8> {
        // The keys' values change; the text inside the content and a longer name do not.
        String::from_utf8(STREAM.to_vec())
            .unwrap()
            .replacen("\"model\":\"meta/Llama-8B\",", "\"model\":\"fast\",", 1)
            .replacen("\"model\": \"meta/Llama-8B\"", "\"model\":\"fast\"", 1)
            .into_bytes()
    }

    #[test]
    fn the_model_key_is_renamed_and_nothing_else() {
        let mut r = renamer();
        let mut out = r.filter(Bytes::from_static(STREAM)).to_vec();
        out.extend_from_slice(&r.finish().unwrap_or_default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(expected()).unwrap()
        );
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_answer(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..16)) {
            let mut r = renamer();
            let mut out = Vec::new();
            for chunk in crate::openai::cut_at(STREAM, cuts) {
                out.extend_from_slice(&r.filter(Bytes::copy_from_slice(chunk)));
            }
            out.extend_from_slice(&r.finish().unwrap_or_default());
            prop_assert_eq!(out, expected());
        }
    }
}
