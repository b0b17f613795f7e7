//! The conversation inside a request body, read only as far as a rule needs it and without
//! allocating (text is decoded into a caller's reusable buffer).
//!
//! The request view already validated the JSON and knows where `messages` is. A rule on the
//! number of turns or on the last user message must not parse a 64 KB conversation again:
//! [`outline`] walks the array's structure once, jumping over string contents with a SIMD
//! search for quotes and backslashes (most of a conversation is inside strings), counting the
//! messages and keeping the spans of the last few. The last user message is then parsed from
//! those spans alone.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::{SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Messages whose spans the outline keeps, newest last.
const TAIL: usize = 8;

/// The shape of a `messages` array.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outline {
    /// Number of messages (objects in the array).
    pub turns: u32,
    /// Spans of the last messages within the array text, in a ring: entry `k % TAIL` is
    /// message `k`.
    tail: [(u32, u32); TAIL],
}

impl Outline {
    /// Spans of the last messages, newest first.
    fn newest_first(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let n = self.turns as usize;
        (n.saturating_sub(TAIL)..n)
            .rev()
            .map(|k| self.tail[k % TAIL])
            .map(|(a, b)| a as usize..b as usize)
    }
}

/// Counts the messages of a JSON array and keeps where the last ones are. `messages` is the
/// raw array as it stands in the (validated) body.
pub fn outline(messages: &[u8]) -> Outline {
    let mut out = Outline::default();
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut i = 0usize;
    while let Some(&b) = messages.get(i) {
        match b {
            b'"' => {
                i += 1;
                loop {
                    let rest = messages.get(i..).unwrap_or_default();
                    let Some(j) = memchr::memchr2(b'"', b'\\', rest) else {
                        return out;
                    };
                    i += j;
                    if messages[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth == 2 && b == b'{' {
                    start = i;
                }
            }
            b']' | b'}' => {
                if depth == 2 && b == b'}' {
                    let k = out.turns as usize % TAIL;
                    out.tail[k] = (start as u32, (i + 1) as u32);
                    out.turns += 1;
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// The content of the last message whose role is `user`, if any.
pub fn last_user<'a>(messages: &'a [u8], outline: &Outline) -> Option<&'a RawValue> {
    let is_user = |m: &Message<'_>| m.role.as_deref() == Some("user");
    for span in outline.newest_first() {
        let m: Message<'a> = serde_json::from_slice(messages.get(span)?).ok()?;
        if is_user(&m) {
            return m.content;
        }
    }
    if outline.turns as usize <= TAIL {
        return None;
    }
    // Older than the kept spans: one pass over the whole array.
    let mut found = None;
    each(messages, |raw| {
        if let Ok(m) = serde_json::from_str::<Message<'a>>(raw.get()) {
            if is_user(&m) {
                found = m.content;
            }
        }
    });
    found
}

/// Appends every message's text to `out`, one message per line.
pub fn conversation_text(messages: &[u8], out: &mut String) {
    each(messages, |raw| {
        if let Ok(m) = serde_json::from_str::<Message<'_>>(raw.get()) {
            if let Some(content) = m.content {
                if !out.is_empty() {
                    out.push('\n');
                }
                push_text(content, out);
            }
        }
    });
}

/// Calls `f` on each element of a JSON array (nothing when `array` is not one).
fn each<'a>(array: &'a [u8], f: impl FnMut(&'a RawValue)) {
    struct Each<F>(F);
    impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for Each<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(v) = seq.next_element::<&'de RawValue>()? {
                (self.0)(v);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(array);
    let _ = serde::Deserializer::deserialize_seq(&mut de, Each(f));
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// Appends the text of a message content (a string, or an array of parts whose `text` parts
/// count) or of a prompt (a string or an array of strings) to `out`.
pub fn push_text(content: &RawValue, out: &mut String) {
    let raw = content.get().as_bytes();
    match raw.first() {
        Some(b'"') => unescape(raw, out),
        Some(b'[') => {
            let mut first = true;
            each(raw, |part| {
                let bytes = part.get().as_bytes();
                let text = match bytes.first() {
                    Some(b'"') => Some(part),
                    Some(b'{') => serde_json::from_str::<Part<'_>>(part.get())
                        .ok()
                        .filter(|p| p.kind.as_deref().is_none_or(|k| k == "text"))
                        .and_then(|p| p.text),
                    _ => None,
                };
                if let Some(text) = text.filter(|t| t.get().starts_with('"')) {
                    if !first {
                        out.push('\n');
                    }
                    first = false;
                    unescape(text.get().as_bytes(), out);
                }
            });
        }
        _ => {}
    }
}

/// Appends the value of a JSON string literal (quotes included in `literal`) to `out`.
/// Invalid escapes, which validated JSON does not have, become U+FFFD.
pub fn unescape(literal: &[u8], out: &mut String) {
    let inner = literal
        .strip_prefix(b"\"")
        .and_then(|l| l.strip_suffix(b"\""))
        .unwrap_or(literal);
    let mut i = 0;
    while i < inner.len() {
        let Some(j) = memchr::memchr(b'\\', &inner[i..]) else {
            out.push_str(&String::from_utf8_lossy(&inner[i..]));
            return;
        };
        out.push_str(&String::from_utf8_lossy(&inner[i..i + j]));
        i += j + 1;
        let Some(&e) = inner.get(i) else { return };
        i += 1;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(inner.get(i..i + 4));
                i += 4;
                match hi {
                    Some(hi @ 0xD800..=0xDBFF) if inner.get(i..i + 2) == Some(b"\\u") => {
                        match hex4(inner.get(i + 2..i + 6)) {
                            Some(lo @ 0xDC00..=0xDFFF) => {
                                i += 6;
                                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                char::from_u32(c).unwrap_or('\u{FFFD}')
                            }
                            _ => '\u{FFFD}',
                        }
                    }
                    Some(c) => char::from_u32(c).unwrap_or('\u{FFFD}'),
                    None => '\u{FFFD}',
                }
            }
            _ => '\u{FFFD}',
        };
        out.push(c);
    }
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let d = std::str::from_utf8(digits?).ok()?;
    u32::from_str_radix(d, 16).ok()
}

/// Whether some message has an image part: `"image_url"` as a part's type or as a key. The
/// search runs over the raw text; inside a string the quotes would be escaped, so a match is
/// structure, not prose.
pub fn has_images(messages: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(b"\"image_url\"");
    finder.find_iter(messages).any(|at| {
        let before = messages[..at]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace());
        let after = messages[at + 11..]
            .iter()
            .find(|b| !b.is_ascii_whitespace());
        before == Some(&b':') || after == Some(&b':')
    })
}

/// Whether a raw JSON value is present and says something: not `null`, not an empty array or
/// object, not `"none"` (a `tool_choice` that turns tools off).
pub fn is_given(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|r| {
        let v: &str = r.get().trim();
        let empty = |open: char, close: char| {
            v.strip_prefix(open)
                .is_some_and(|rest| rest.trim_start().starts_with(close))
        };
        !(matches!(v, "null" | "\"none\"") || empty('[', ']') || empty('{', '}'))
    })
}

/// Whether `response_format` asks for JSON output.
pub fn is_json_mode(response_format: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    response_format
        .and_then(|r| serde_json::from_str::<Format<'_>>(r.get()).ok())
        .and_then(|f| f.kind)
        .is_some_and(|k| k == "json_object" || k == "json_schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_outline_counts_messages_and_finds_the_last_user_one() {
        let m = br#"[{"role":"system","content":"be {brief}"},{"role":"user","content":"first [q]"},{"role":"assistant","content":"a \"quoted\" }"},{"role":"user","content":"second"}]"#;
        let o = outline(m);
        assert_eq!(o.turns, 4);
        assert_eq!(last_user(m, &o).unwrap().get(), r#""second""#);
        let only_system = br#"[{"role":"system","content":"x"}]"#;
        assert!(last_user(only_system, &outline(only_system)).is_none());
        assert_eq!(outline(b"[]").turns, 0);
    }

    #[test]
    fn a_user_message_older_than_the_kept_spans_is_still_found() {
        let mut m = String::from(r#"[{"role":"user","content":"the question"}"#);
        for _ in 0..20 {
            m.push_str(r#",{"role":"tool","content":"result"}"#);
        }
        m.push(']');
        let o = outline(m.as_bytes());
        assert_eq!(o.turns, 21);
        assert_eq!(
            last_user(m.as_bytes(), &o).unwrap().get(),
            r#""the question""#
        );
    }

    #[test]
    fn text_comes_from_strings_and_text_parts() {
        let mut out = String::new();
        push_text(
            raw(
                r#"[{"type":"text","text":"look at"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"this"}]"#,
            ),
            &mut out,
        );
        assert_eq!(out, "look at\nthis");
        out.clear();
        push_text(raw(r#"["a prompt", "another"]"#), &mut out);
        assert_eq!(out, "a prompt\nanother");
        out.clear();
        let m = br#"[{"role":"user","content":"hi"},{"role":"assistant","content":null},{"role":"user","content":"bye"}]"#;
        conversation_text(m, &mut out);
        assert_eq!(out, "hi\nbye");
    }

    #[test]
    fn images_are_found_by_structure_not_by_prose() {
        assert!(has_images(
            br#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:"}}]}]"#
        ));
        assert!(has_images(br#"[{"content":[{"type" : "image_url" }]}]"#));
        assert!(!has_images(
            br#"[{"role":"user","content":"what is an \"image_url\" part?"}]"#
        ));
    }

    #[test]
    fn given_values_and_json_mode() {
        assert!(is_given(Some(raw(r#"[{"type":"function"}]"#))));
        assert!(!is_given(Some(raw("[ ]"))));
        assert!(!is_given(Some(raw("null"))));
        assert!(!is_given(Some(raw(r#""none""#))));
        assert!(is_given(Some(raw(r#""auto""#))));
        assert!(!is_given(None));
        assert!(is_json_mode(Some(raw(r#"{"type":"json_object"}"#))));
        assert!(is_json_mode(Some(raw(
            r#"{"type":"json_schema","json_schema":{}}"#
        ))));
        assert!(!is_json_mode(Some(raw(r#"{"type":"text"}"#))));
    }

    proptest::proptest! {
        #[test]
        fn unescape_agrees_with_serde_json(s in "\\PC{0,40}") {
            let literal = serde_json::to_string(&s).unwrap();
            let mut out = String::new();
            unescape(literal.as_bytes(), &mut out);
            proptest::prop_assert_eq!(out, s);
        }

        #[test]
        fn unescape_of_ascii_escapes_agrees_with_serde_json(
            cps in proptest::collection::vec(0u32..0x11_0000, 0..12)
        ) {
            // Every code point written as \uXXXX (surrogate pairs above the BMP).
            let mut literal = String::from("\"");
            let mut want = String::new();
            for cp in cps.into_iter().filter_map(char::from_u32) {
                want.push(cp);
                let mut units = [0u16; 2];
                for u in cp.encode_utf16(&mut units) {
                    literal.push_str(&format!("\\u{u:04x}"));
                }
            }
            literal.push('"');
            let parsed: String = serde_json::from_str(&literal).unwrap();
            let mut out = String::new();
            unescape(literal.as_bytes(), &mut out);
            proptest::prop_assert_eq!(&out, &want);
            proptest::prop_assert_eq!(out, parsed);
        }

        #[test]
        fn the_outline_counts_what_serde_counts(
            contents in proptest::collection::vec("[a-z\\[\\]{}\"\\\\ ]{0,12}", 0..20)
        ) {
            let messages: Vec<serde_json::Value> = contents
                .iter()
                .enumerate()
                .map(|(i, c)| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": c}))
                .collect();
            let text = serde_json::to_vec(&messages).unwrap();
            let o = outline(&text);
            proptest::prop_assert_eq!(o.turns as usize, contents.len());
            let want = contents.iter().enumerate().rfind(|(i, _)| i % 2 == 0).map(|(_, c)| serde_json::to_string(c).unwrap());
            proptest::prop_assert_eq!(last_user(&text, &o).map(|r| r.get().to_owned()), want);
        }
    }
}
