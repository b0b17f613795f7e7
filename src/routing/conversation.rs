//! The conversation inside a request body, read only as far as a rule needs it and without
//! allocating (text is decoded into a caller's reusable buffer).
//!
//! The request view already validated the JSON and knows where `messages` is. A rule on the
//! number of turns or on the last user message must not parse a 64 KB conversation again:
//! [`outline`] walks the array's structure once, jumping over string contents with a SIMD
//! search for quotes and backslashes (most of a conversation is inside strings), counting the
//! messages and keeping the spans of the last few. The last user message is then read from
//! those spans alone. Values are walked by the same structural scan ([`members`],
//! [`elements`]): serde_json allocates a stack to skip a nested value, and its `Cow` strings
//! allocate even when nothing is escaped.

use std::ops::Range;

use crate::openai::json::{elements, is_string, member, string_end, unescape};

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
                i = string_end(messages, i);
                continue;
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

/// The raw content of the last message whose role is `user`, if any.
pub fn last_user<'a>(messages: &'a [u8], outline: &Outline) -> Option<&'a [u8]> {
    let user = |m: &'a [u8]| {
        member(m, "role")
            .is_some_and(|r| is_string(r, "user"))
            .then(|| member(m, "content"))
            .flatten()
    };
    if let Some(content) = outline
        .newest_first()
        .find_map(|span| messages.get(span).and_then(user))
    {
        return Some(content);
    }
    if outline.turns as usize <= TAIL {
        return None;
    }
    // Older than the kept spans: one pass over the whole array.
    elements(messages).filter_map(user).last()
}

/// Appends every message's text to `out`, one message per line.
pub fn conversation_text(messages: &[u8], out: &mut String) {
    for content in elements(messages).filter_map(|m| member(m, "content")) {
        if content == b"null" {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        push_text(content, out);
    }
}

/// Appends the text of the last `turns` messages to `out`, one message per line.
pub fn last_turns_text(messages: &[u8], turns: u32, out: &mut String) {
    let total = elements(messages).count();
    let skip = total.saturating_sub(turns as usize);
    for content in elements(messages)
        .skip(skip)
        .filter_map(|m| member(m, "content"))
    {
        if content == b"null" {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        push_text(content, out);
    }
}

/// The raw content of the first message whose role is `user`: what identifies a
/// conversation across its turns when the client sends no session id.
pub fn first_user(messages: &[u8]) -> Option<&[u8]> {
    elements(messages).find_map(|m| {
        member(m, "role")
            .is_some_and(|r| is_string(r, "user"))
            .then(|| member(m, "content"))
            .flatten()
    })
}

/// Appends the text of a message content (a string, or an array of parts whose `text` parts
/// count) or of a prompt (a string or an array of strings) to `out`.
pub fn push_text(content: &[u8], out: &mut String) {
    match content.first() {
        Some(b'"') => unescape(content, out),
        Some(b'[') => {
            let mut first = true;
            for part in elements(content) {
                let text = match part.first() {
                    Some(b'"') => Some(part),
                    Some(b'{') => member(part, "type")
                        .is_none_or(|k| is_string(k, "text"))
                        .then(|| member(part, "text"))
                        .flatten(),
                    _ => None,
                };
                if let Some(text) = text.filter(|t| t.first() == Some(&b'"')) {
                    if !first {
                        out.push('\n');
                    }
                    first = false;
                    unescape(text, out);
                }
            }
        }
        _ => {}
    }
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
pub fn is_given(raw: Option<&[u8]>) -> bool {
    raw.is_some_and(|v| {
        let v = v.trim_ascii();
        let empty = |open: u8, close: u8| {
            v.first() == Some(&open) && v[1..].trim_ascii_start().first() == Some(&close)
        };
        !(v == b"null" || v == b"\"none\"" || empty(b'[', b']') || empty(b'{', b'}'))
    })
}

/// Whether `response_format` asks for JSON output.
pub fn is_json_mode(response_format: Option<&[u8]>) -> bool {
    response_format
        .and_then(|r| member(r, "type"))
        .is_some_and(|k| is_string(k, "json_object") || is_string(k, "json_schema"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &[u8] {
        s.as_bytes()
    }

    #[test]
    fn the_outline_counts_messages_and_finds_the_last_user_one() {
        let m = br#"[{"role":"system","content":"be {brief}"},{"role":"user","content":"first [q]"},{"role":"assistant","content":"a \"quoted\" }"},{"role":"user","content":"second"}]"#;
        let o = outline(m);
        assert_eq!(o.turns, 4);
        assert_eq!(last_user(m, &o).unwrap(), br#""second""#);
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
        assert_eq!(last_user(m.as_bytes(), &o).unwrap(), br#""the question""#);
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
            proptest::prop_assert_eq!(last_user(&text, &o).map(|r| String::from_utf8(r.to_vec()).unwrap()), want);
        }
    }
}
