//! What the gateway must know about a server-sent-event stream it relays, learned from the
//! chunks as they pass, without buffering them: whether the bytes sent so far end on an event
//! boundary (so an error event can be appended cleanly), whether the terminal `data: [DONE]`
//! went through, and when each event arrived.
//!
//! Chunks are not aligned to events: the state carries the last bytes across chunks.

use bytes::Bytes;

const DONE: &[u8] = b"data: [DONE]";
/// Built once: building a searcher costs more than a search over a chunk.
static DONE_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(DONE));

/// Per-stream state; a few bytes, updated in O(chunk) without allocating.
#[derive(Debug, Clone, Default)]
pub struct SseTracker {
    /// The last bytes forwarded (up to the length of `data: [DONE]`), for matches that
    /// straddle chunks.
    tail: [u8; DONE.len()],
    tail_len: usize,
    /// Complete events forwarded (blank-line terminated).
    pub events: u32,
    /// `data: [DONE]` was forwarded.
    pub done: bool,
    forwarded: bool,
}

impl SseTracker {
    /// Notes a chunk forwarded to the client; returns how many events it completed.
    pub fn observe(&mut self, chunk: &[u8]) -> u32 {
        if chunk.is_empty() {
            return 0;
        }
        let before = self.events;
        self.forwarded = true;
        // Event ends: "\n\n" inside the chunk or across the chunk boundary.
        let carried = self.tail_len.checked_sub(1).map(|i| self.tail[i]);
        for i in memchr::memchr_iter(b'\n', chunk) {
            let prev = i.checked_sub(1).map_or(carried, |j| Some(chunk[j]));
            if prev == Some(b'\n') {
                self.events += 1;
            }
        }
        if !self.done {
            self.done = contains(&self.tail[..self.tail_len], chunk, &DONE_FINDER);
        }
        // Keep the last bytes of (tail ++ chunk).
        let keep = DONE.len();
        if chunk.len() >= keep {
            self.tail.copy_from_slice(&chunk[chunk.len() - keep..]);
            self.tail_len = keep;
        } else {
            let mut joined = [0u8; 2 * DONE.len()];
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..self.tail_len + chunk.len()].copy_from_slice(chunk);
            let total = self.tail_len + chunk.len();
            let start = total.saturating_sub(keep);
            self.tail_len = total - start;
            self.tail[..self.tail_len].copy_from_slice(&joined[start..total]);
        }
        self.events - before
    }

    /// Whether what was forwarded ends on an event boundary (or nothing was forwarded).
    pub fn at_boundary(&self) -> bool {
        !self.forwarded || self.tail[..self.tail_len].ends_with(b"\n\n")
    }

    /// The bytes that end an interrupted stream honestly: a blank line if an event was cut
    /// mid-way, the error event, then `data: [DONE]`.
    pub fn interruption(&self, error_json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(error_json.len() + 32);
        if !self.at_boundary() {
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error_json);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// Whether the needle occurs in `tail ++ chunk` (with `tail` shorter than the needle).
fn contains(tail: &[u8], chunk: &[u8], finder: &memchr::memmem::Finder<'_>) -> bool {
    if finder.find(chunk).is_some() {
        return true;
    }
    let needle = finder.needle();
    let Some(&last) = tail.last() else {
        return false;
    };
    // Matches that start in the tail and end in the chunk: the needle's first `split` bytes
    // end the tail, so its byte `split - 1` is the tail's last (a stream's tail usually ends
    // in a blank line, which no split matches).
    memchr::memchr_iter(last, &needle[..needle.len() - 1])
        .map(|i| i + 1)
        .any(|split| {
            split <= tail.len()
                && needle.len() - split <= chunk.len()
                && tail.ends_with(&needle[..split])
                && chunk.starts_with(&needle[split..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n\
data: [DONE]\n\n";

    #[test]
    fn whole_stream_counts_events_and_sees_done() {
        let mut t = SseTracker::default();
        t.observe(STREAM);
        assert_eq!(t.events, 3);
        assert!(t.done);
        assert!(t.at_boundary());
    }

    #[test]
    fn cut_mid_event_is_not_at_a_boundary_and_the_interruption_closes_it() {
        let mut t = SseTracker::default();
        t.observe(&STREAM[..60]);
        assert!(!t.at_boundary());
        assert!(!t.done);
        let end = t.interruption(br#"{"error":{}}"#);
        assert_eq!(&end[..], b"\n\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n");
        assert!(SseTracker::default().at_boundary());
    }

    proptest! {
        /// Any chunking of the stream gives the same counts as the whole stream.
        #[test]
        fn chunking_does_not_change_what_is_seen(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let mut t = SseTracker::default();
            for chunk in crate::openai::cut_at(STREAM, cuts) {
                t.observe(chunk);
            }
            prop_assert_eq!(t.events, 3);
            prop_assert!(t.done);
            prop_assert!(t.at_boundary());
        }

        #[test]
        fn done_split_anywhere_is_found_and_absent_done_is_not(split in 1usize..12) {
            let mut t = SseTracker::default();
            t.observe(&b"data: [DONE]"[..split]);
            t.observe(&b"data: [DONE]\n\n"[split..]);
            prop_assert!(t.done);
            let mut u = SseTracker::default();
            u.observe(&b"data: [DON"[..split.min(10)]);
            u.observe(b"E\n\n");
            prop_assert!(!u.done);
        }
    }
}
