//! Takes the usage chunk back out of a stream whose client did not ask for it.
//!
//! The gateway asks every streaming server for `stream_options.include_usage` so that it can
//! count tokens exactly. The server then adds one event before `data: [DONE]` whose `choices`
//! is empty and which carries `usage`; a client that did not ask for it must not see it.
//!
//! Complete events pass through as slices of the chunk they came in (no copy). An event cut
//! by a chunk boundary waits for its end in a small carry buffer: a client cannot act on half
//! an event anyway. Only a chunk that held the usage event is copied, once per stream.
//!
//! The usage event is recognised by `"choices":[]` together with `"usage":{`. Neither can
//! occur inside a JSON string (quotes there are escaped), so generated text cannot trigger it.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

use super::carry::{Carry, ChunkFilter};

#[derive(Debug, Default)]
pub struct UsageStrip {
    carry: Carry,
}

// Searchers built once: building one costs more than searching a short event with it.
static CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":"));
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\":"));

/// Whether an event (without its blank line) is the usage-only chunk.
fn is_usage_event(event: &[u8]) -> bool {
    has_value(&CHOICES, event, b"[]") && has_value(&USAGE, event, b"{")
}

/// Whether the key `key` finds in `event` has a value that starts with the bytes of `value`,
/// JSON white space allowed before each of them.
fn has_value(key: &Finder<'_>, event: &[u8], value: &[u8]) -> bool {
    key.find_iter(event).any(|at| {
        let mut rest = &event[at + key.needle().len()..];
        value.iter().all(|want| {
            rest = rest.trim_ascii_start();
            let found = rest.first() == Some(want);
            rest = rest.get(1..).unwrap_or_default();
            found
        })
    })
}

/// End offsets (after the blank line) of the complete events in `data`, read from its start:
/// a pair of line ends ends an event, and a third line end begins the next one (pairs do not
/// overlap, so that a run of line ends splits the same way whatever the chunking; found by
/// fuzz/sse).
fn event_ends(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut from = 0;
    memchr::memchr_iter(b'\n', data).filter_map(move |i| {
        let end = (i >= from && data.get(i + 1) == Some(&b'\n')).then_some(i + 2)?;
        from = end;
        Some(end)
    })
}

impl UsageStrip {
    /// What to forward of `chunk`: its complete events minus the usage event. The rest waits.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let data = self.carry.join(chunk);
        let mut start = 0;
        let mut kept: Option<BytesMut> = None;
        let mut last_end = 0;
        for end in event_ends(&data) {
            if is_usage_event(&data[start..end]) {
                let out = kept.get_or_insert_with(|| BytesMut::with_capacity(data.len()));
                out.extend_from_slice(&data[last_end..start]);
                last_end = end;
            }
            start = end;
        }
        self.carry.keep(&data[start..]);
        match kept {
            None if start == data.len() => data,
            None => data.slice(..start),
            Some(mut out) => {
                out.extend_from_slice(&data[last_end..start]);
                out.freeze()
            }
        }
    }

    /// At the end of the stream: whatever was held back, as the server sent it.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.carry.take()
    }
}

impl ChunkFilter for UsageStrip {
    fn filter(&mut self, chunk: Bytes) -> Bytes {
        UsageStrip::filter(self, chunk)
    }

    fn finish(&mut self) -> Option<Bytes> {
        UsageStrip::finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WITH_USAGE: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"choices\\\":[] \\\"usage\\\":{\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";

    fn without_usage() -> Vec<u8> {
        let text = std::str::from_utf8(WITH_USAGE).unwrap();
        let mut out = String::new();
        for event in text.split_inclusive("\n\n") {
            if !event.contains("\"choices\":[],") {
                out.push_str(event);
            }
        }
        out.into_bytes()
    }

    #[test]
    fn the_usage_event_is_removed_and_everything_else_kept() {
        let mut s = UsageStrip::default();
        let out = s.filter(Bytes::from_static(WITH_USAGE));
        assert_eq!(out, without_usage());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn chunks_without_the_usage_event_are_not_copied() {
        let mut s = UsageStrip::default();
        let chunk = Bytes::from_static(b"data: {\"choices\":[{}]}\n\n");
        let out = s.filter(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out, chunk);
    }

    /// A regression from fuzz/sse: runs of line ends around the usage event split the same
    /// way whatever the chunking (one was lost when the stream was cut inside the run).
    #[test]
    fn runs_of_line_ends_split_the_same_however_cut() {
        let stream: &[u8] =
            b"data: {\"a\":1}\n\n\n\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\n\nx";
        let run = |cut: usize| {
            let mut s = UsageStrip::default();
            let mut out = s.filter(Bytes::copy_from_slice(&stream[..cut])).to_vec();
            out.extend_from_slice(&s.filter(Bytes::copy_from_slice(&stream[cut..])));
            out.extend_from_slice(&s.finish().unwrap_or_default());
            out
        };
        let whole = run(stream.len());
        assert!(!whole.windows(7).any(|w| w == b"\"usage\""));
        for cut in 0..stream.len() {
            assert_eq!(run(cut), whole, "cut at {cut}");
        }
    }

    proptest! {
        /// However the stream is cut, the client gets the stream minus the usage event.
        #[test]
        fn any_chunking_gives_the_same_stream(cuts in proptest::collection::vec(0usize..WITH_USAGE.len(), 0..16)) {
            let mut s = UsageStrip::default();
            let mut out = Vec::new();
            for chunk in crate::openai::cut_at(WITH_USAGE, cuts) {
                out.extend_from_slice(&s.filter(Bytes::copy_from_slice(chunk)));
            }
            if let Some(rest) = s.finish() {
                out.extend_from_slice(&rest);
            }
            prop_assert_eq!(out, without_usage());
        }
    }
}
