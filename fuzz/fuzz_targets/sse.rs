//! The stream's readers under any chunking: the SSE tracker (events, `[DONE]`, boundary and
//! where a malformed line cuts), the usage scanner and the usage strip see the same whatever
//! the cut points, and the strip only ever takes whole usage events out.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::openai::sse::SseTracker;
use switchyard::openai::strip::UsageStrip;
use switchyard::openai::usage::UsageScanner;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunking; the rest is the stream (so the seeds read as streams).
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let (step, phase) = (usize::from(seed % 13) + 1, usize::from(seed / 13));
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in (1..stream.len()).filter(|i| (i + phase) % step == 0).chain([stream.len()]) {
        chunks.push(&stream[last..c]);
        last = c;
    }

    // Whole.
    let mut whole = SseTracker::default();
    let whole_cut = whole.observe(&stream);
    let mut scanner = UsageScanner::default();
    scanner.observe(&stream);
    let mut strip = UsageStrip::default();
    let mut stripped = strip.filter(Bytes::copy_from_slice(&stream)).to_vec();
    stripped.extend_from_slice(&strip.finish().unwrap_or_default());

    // Chunked.
    let mut tracker = SseTracker::default();
    let mut at = 0;
    let mut chunked_cut = Ok(0);
    for chunk in &chunks {
        match tracker.observe(chunk) {
            Ok(n) => chunked_cut = Ok(chunked_cut.unwrap_or(0) + n),
            Err(cut) => {
                chunked_cut = Err(at + cut);
                break;
            }
        }
        at += chunk.len();
    }
    match (whole_cut, chunked_cut) {
        (Ok(n), Ok(m)) => {
            assert_eq!(n, m);
            assert_eq!(whole.at_boundary(), tracker.at_boundary());
        }
        (Err(a), Err(b)) => {
            // The start of the bad line's event, or of the chunk it was in when the event
            // began in an earlier one (whose bytes were forwarded already).
            assert!(b == a || (b == at && at > a), "cut at {b}, whole at {a}");
        }
        (a, b) => panic!("whole {a:?}, chunked {b:?}"),
    }
    assert_eq!(whole.events, tracker.events);
    assert_eq!(whole.done, tracker.done);

    let mut s = UsageScanner::default();
    let mut st = UsageStrip::default();
    let mut out = Vec::new();
    for chunk in &chunks {
        s.observe(chunk);
        out.extend_from_slice(&st.filter(Bytes::copy_from_slice(chunk)));
    }
    out.extend_from_slice(&st.finish().unwrap_or_default());
    assert_eq!(scanner.prompt_tokens, s.prompt_tokens);
    assert_eq!(scanner.completion_tokens, s.completion_tokens);
    if stripped != out {
        let at = stripped.iter().zip(&out).take_while(|(a, b)| a == b).count();
        panic!(
            "the strip's output depends on the chunking: {} and {} bytes, first difference at {at}: {:?} / {:?}",
            stripped.len(),
            out.len(),
            String::from_utf8_lossy(&stripped[at.saturating_sub(20)..(at + 40).min(stripped.len())]),
            String::from_utf8_lossy(&out[at.saturating_sub(20)..(at + 40).min(out.len())]),
        );
    }
    assert!(out.len() <= stream.len());
});
