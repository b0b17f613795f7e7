//! What the gateway must know about a server-sent-event stream it relays, learned from the
//! chunks as they pass, without buffering them: whether the bytes sent so far end on an event
//! boundary (so an error event can be appended cleanly), whether the terminal `data: [DONE]`
//! went through, how many events went, and whether every line is one a client can parse.
//!
//! One pass over each chunk's line ends does it all ([`Lines`]); chunks are not aligned to
//! lines, so the state carries the current line's first and last bytes across chunks. What no
//! client can parse (a line that is no SSE field, a `data:` line that is no JSON value) ends
//! the stream with an error event rather than reaching the client; before a stream's first
//! event (the hold) it fails the attempt, which is then retried.

use bytes::Bytes;

/// Per-stream state; a few bytes, updated in O(chunk) without allocating.
#[derive(Debug, Clone, Default)]
pub struct SseTracker {
    lines: Lines,
    /// Complete events with data forwarded (blank-line terminated), `[DONE]` included.
    pub events: u32,
    /// `data: [DONE]` was forwarded.
    pub done: bool,
}

impl SseTracker {
    /// Notes a chunk to forward to the client; returns how many events it completed. A chunk
    /// with a malformed line is `Err(cut)`: only its bytes before `cut` (the start of the
    /// event holding that line) were noted, and only they may be forwarded.
    pub fn observe(&mut self, chunk: &[u8]) -> Result<u32, usize> {
        let saved = self.lines;
        match self.lines.feed(chunk) {
            Ok(()) => Ok(self.sync()),
            Err(cut) => {
                self.lines = saved;
                let _ = self.lines.feed(&chunk[..cut]);
                self.sync();
                Err(cut)
            }
        }
    }

    /// Takes the counts from the lines; returns the events new since the last call.
    fn sync(&mut self) -> u32 {
        let new = self.lines.events - self.events;
        self.events = self.lines.events;
        self.done = self.lines.done;
        new
    }

    /// Whether what was forwarded ends on an event boundary (or nothing was forwarded).
    pub fn at_boundary(&self) -> bool {
        self.lines.at_boundary()
    }

    /// The bytes that end an interrupted stream honestly: `before` (the well-formed start of a
    /// chunk that was not forwarded yet), a blank line if an event was cut mid-way, the error
    /// event, then `data: [DONE]`.
    pub fn interruption(&self, before: &[u8], error_json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(before.len() + error_json.len() + 32);
        out.extend_from_slice(before);
        if !self.at_boundary() {
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error_json);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// The lines of an event stream, read as they pass: fields (`data:`, `event:`, `id:`,
/// `retry:`), comments (`:`) and the blank lines that end events; each `data:` line must be
/// one JSON object or array (`[DONE]` is one). The JSON inside is not parsed: its first and
/// last bytes are checked, which catches a cut or garbled line, an HTML page, a proxy's error
/// text. A few bytes of state, one pass over the line ends, no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    /// The first bytes of the current line.
    head: [u8; 16],
    /// The current line's length so far.
    len: usize,
    /// Its last two bytes.
    tail: [u8; 2],
    /// The current event has a data line, and a `[DONE]` one.
    data: bool,
    data_done: bool,
    /// The last line ended was blank (or nothing came yet).
    blank: bool,
    /// Events with data completed.
    pub events: u32,
    /// An event of `data: [DONE]` ended (a client saw it only once its blank line came).
    pub done: bool,
}

impl Default for Lines {
    fn default() -> Self {
        Self {
            head: [0; 16],
            len: 0,
            tail: [0; 2],
            data: false,
            data_done: false,
            blank: true,
            events: 0,
            done: false,
        }
    }
}

impl Lines {
    /// Takes the next bytes of the stream. A malformed line is `Err(cut)`: `cut` is where the
    /// event holding it began in `chunk` (0 when it began in an earlier chunk).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), usize> {
        let (mut start, mut event_start) = (0, 0);
        for nl in memchr::memchr_iter(b'\n', chunk) {
            self.extend(&chunk[start..nl]);
            match self.end_line() {
                Some(true) => event_start = nl + 1,
                Some(false) => {}
                None => return Err(event_start),
            }
            start = nl + 1;
        }
        self.extend(&chunk[start..]);
        Ok(())
    }

    /// Whether the bytes so far end on an event boundary (or none came).
    pub fn at_boundary(&self) -> bool {
        self.len == 0 && self.blank
    }

    fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.len < self.head.len() {
            let n = bytes.len().min(self.head.len() - self.len);
            self.head[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        }
        match bytes {
            [.., a, b] => self.tail = [*a, *b],
            [b] => self.tail = [self.tail[1], *b],
            [] => {}
        }
        self.len = self.len.saturating_add(bytes.len());
    }

    /// Ends the current line: `Some(true)` for a blank line (an event's end), `Some(false)`
    /// for a good one, `None` for a malformed one.
    fn end_line(&mut self) -> Option<bool> {
        let cr = self.len > 0 && self.tail[1] == b'\r';
        let len = self.len - usize::from(cr);
        let head = &self.head[..len.min(self.head.len())];
        let last = if cr { self.tail[0] } else { self.tail[1] };
        let verdict = if len == 0 {
            self.events += u32::from(std::mem::take(&mut self.data));
            self.done |= std::mem::take(&mut self.data_done);
            Some(true)
        } else if let Some(value) = head.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let first = value.iter().find(|b| **b != b' ');
            let json = matches!((first, last), (Some(b'{'), b'}') | (Some(b'['), b']'));
            self.data_done |= value == b"[DONE]";
            self.data |= json;
            json.then_some(false)
        } else {
            let field = head.starts_with(b":")
                || head.starts_with(b"event:")
                || head.starts_with(b"id:")
                || head.starts_with(b"retry:");
            field.then_some(false)
        };
        self.blank = len == 0;
        self.len = 0;
        verdict
    }
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
        t.observe(STREAM).unwrap();
        assert_eq!(t.events, 3);
        assert!(t.done);
        assert!(t.at_boundary());
    }

    #[test]
    fn cut_mid_event_is_not_at_a_boundary_and_the_interruption_closes_it() {
        let mut t = SseTracker::default();
        t.observe(&STREAM[..60]).unwrap();
        assert!(!t.at_boundary());
        assert!(!t.done);
        let end = t.interruption(b"", br#"{"error":{}}"#);
        assert_eq!(&end[..], b"\n\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n");
        assert!(SseTracker::default().at_boundary());
    }

    proptest! {
        /// Any chunking of the stream gives the same counts as the whole stream.
        #[test]
        fn chunking_does_not_change_what_is_seen(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let mut t = SseTracker::default();
            for chunk in crate::openai::cut_at(STREAM, cuts) {
                t.observe(chunk).unwrap();
            }
            prop_assert_eq!(t.events, 3);
            prop_assert!(t.done);
            prop_assert!(t.at_boundary());
        }

        #[test]
        fn done_split_anywhere_is_found_and_absent_done_is_not(split in 1usize..12) {
            let mut t = SseTracker::default();
            t.observe(&b"data: [DONE]"[..split]).unwrap();
            t.observe(&b"data: [DONE]\n\n"[split..]).unwrap();
            prop_assert!(t.done);
            let mut u = SseTracker::default();
            let _ = u.observe(&b"data: [DON"[..split.min(10)]);
            let _ = u.observe(b"E\n\n");
            prop_assert!(!u.done);
        }
    }

    /// Every way of serving the events a client can parse: comments, named events, ids,
    /// CRLF line ends, a space or none after `data:`.
    const VARIED: &[u8] = b": ping\n\nevent: message\nid: 7\r\ndata: {\"a\":1}\r\n\r\n\
retry: 100\ndata:[1]\n\ndata: [DONE]\n\n";

    /// A regression from fuzz/sse: `[DONE]` counts once its event ended, so a stream cut
    /// between the line and its blank line still gets the error event.
    #[test]
    fn done_counts_once_its_event_ended() {
        let mut t = SseTracker::default();
        t.observe(b"data: [DONE]\n").unwrap();
        assert!(!t.done);
        assert_eq!(t.observe(b"\x05garbage\n"), Err(0));
        assert!(!t.done);
        let mut u = SseTracker::default();
        u.observe(b"data: [DONE]\n").unwrap();
        u.observe(b"\n").unwrap();
        assert!(u.done);
    }

    #[test]
    fn what_no_client_can_parse_is_cut_at_the_start_of_its_event() {
        let good = b"data: {\"a\":1}\n\n";
        for (bad, cut) in [
            // The simulator's `garbage` fault: an event cut inside its JSON.
            (&b"data: {\"choices\": [{\"delta\": \n\n"[..], good.len()),
            (b"<html>502 Bad Gateway</html>\n\n", good.len()),
            (b"data: hello\n\n", good.len()),
            (b"event: x\nbogus\n\n", good.len()),
        ] {
            let mut stream = good.to_vec();
            stream.extend_from_slice(bad);
            let mut t = SseTracker::default();
            assert_eq!(
                t.observe(&stream),
                Err(cut),
                "{}",
                String::from_utf8_lossy(bad)
            );
            // Only the good event was noted.
            assert_eq!(t.events, 1);
            assert!(t.at_boundary());
            // In a later chunk, the bad event's start is that chunk's start.
            let mut u = SseTracker::default();
            assert_eq!(u.observe(good), Ok(1));
            assert_eq!(u.observe(bad), Err(0));
            assert_eq!(u.events, 1);
        }
    }

    proptest! {
        #[test]
        fn well_formed_streams_pass_however_cut(cuts in proptest::collection::vec(0usize..VARIED.len(), 0..12)) {
            let mut lines = Lines::default();
            for chunk in crate::openai::cut_at(VARIED, cuts) {
                prop_assert_eq!(lines.feed(chunk), Ok(()));
            }
            // The comment-only block is no event with data.
            prop_assert_eq!(lines.events, 3);
        }
    }
}
