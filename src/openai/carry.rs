//! What the response's rewriting filters share (the usage strip, the model rename): a chunk's
//! tail held back until the next chunk shows what it is, and how a filter's output replaces a
//! body chunk (with what is held back flushed at the end of the body).

use bytes::{Bytes, BytesMut};

/// The bytes a filter held back from earlier chunks.
#[derive(Debug, Default)]
pub struct Carry(BytesMut);

impl Carry {
    /// `chunk` after what was held back (no copy when nothing was).
    pub fn join(&mut self, chunk: Bytes) -> Bytes {
        if self.0.is_empty() {
            return chunk;
        }
        self.0.extend_from_slice(&chunk);
        self.0.split().freeze()
    }

    /// Holds `rest` back for the next chunk.
    pub fn keep(&mut self, rest: &[u8]) {
        self.0.extend_from_slice(rest);
    }

    /// Whatever is held back, as it came.
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.0.is_empty()).then(|| self.0.split().freeze())
    }
}

/// A filter over a response body's chunks.
pub trait ChunkFilter {
    /// What to forward of `chunk`; a tail may wait for the next one.
    fn filter(&mut self, chunk: Bytes) -> Bytes;

    /// At the body's end: what waited.
    fn finish(&mut self) -> Option<Bytes>;

    /// Replaces `body` (a chunk of the response, `end`: the last) by what goes out.
    fn pass(&mut self, body: &mut Option<Bytes>, end: bool) {
        let mut out = body.take().map(|b| self.filter(b)).unwrap_or_default();
        if end {
            if let Some(rest) = self.finish() {
                let mut joined = BytesMut::from(&out[..]);
                joined.extend_from_slice(&rest);
                out = joined.freeze();
            }
        }
        *body = Some(out);
    }
}
