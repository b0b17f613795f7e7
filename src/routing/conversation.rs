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

/// The index just past the string whose opening quote is at `open` (the end of `json` when
/// it is not closed).
fn string_end(json: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    loop {
        let rest = json.get(i..).unwrap_or_default();
        let Some(j) = memchr::memchr2(b'"', b'\\', rest) else {
            return json.len();
        };
        i += j;
        if json[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
}

/// The index just past the value that starts at or after `at` (whitespace skipped).
fn value_end(json: &[u8], at: usize) -> usize {
    let start = skip_space(json, at);
    match json.get(start) {
        Some(b'"') => string_end(json, start),
        Some(b'[' | b'{') => {
            let mut depth = 0usize;
            let mut i = start;
            while let Some(&b) = json.get(i) {
                match b {
                    b'"' => {
                        i = string_end(json, i);
                        continue;
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            json.len()
        }
        Some(_) => {
            start
                + json[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b']' | b'}') || b.is_ascii_whitespace())
                    .unwrap_or(json.len() - start)
        }
        None => json.len(),
    }
}

fn skip_space(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The elements of a JSON array, as raw values (nothing when `json` is not an array).
pub fn elements(json: &[u8]) -> impl Iterator<Item = &[u8]> {
    let start = skip_space(json, 0);
    let mut i = if json.get(start) == Some(&b'[') {
        start + 1
    } else {
        json.len()
    };
    std::iter::from_fn(move || {
        i = skip_space(json, i);
        match json.get(i) {
            None | Some(b']') => None,
            Some(b',') => {
                i = skip_space(json, i + 1);
                let end = value_end(json, i);
                let v = json.get(i..end)?;
                i = end;
                Some(v)
            }
            Some(_) => {
                let end = value_end(json, i);
                let v = json.get(i..end)?;
                i = end;
                Some(v)
            }
        }
    })
}

/// The members of a JSON object, as (raw key with its quotes, raw value) (nothing when
/// `json` is not an object).
pub fn members(json: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let start = skip_space(json, 0);
    let mut i = if json.get(start) == Some(&b'{') {
        start + 1
    } else {
        json.len()
    };
    std::iter::from_fn(move || {
        i = skip_space(json, i);
        if json.get(i) == Some(&b',') {
            i = skip_space(json, i + 1);
        }
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i);
        let key = json.get(i..key_end)?;
        let colon = skip_space(json, key_end);
        (json.get(colon) == Some(&b':')).then_some(())?;
        let value_start = skip_space(json, colon + 1);
        let end = value_end(json, value_start);
        let value = json.get(value_start..end)?;
        i = end;
        Some((key, value))
    })
}

/// The raw value of member `key` (written without escapes) of a JSON object.
pub fn member<'a>(object: &'a [u8], key: &str) -> Option<&'a [u8]> {
    members(object)
        .find(|(k, _)| is_string(k, key))
        .map(|(_, v)| v)
}

/// Whether a raw JSON value is the string `literal` (written without escapes, as every
/// client writes roles and part types).
fn is_string(raw: &[u8], literal: &str) -> bool {
    raw.len() == literal.len() + 2 && raw.get(1..raw.len() - 1) == Some(literal.as_bytes())
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
    fn members_and_elements_walk_nested_values_and_strings_with_brackets() {
        let obj = br#" { "a" : [1, {"b": "}]"}], "c":"x\"y" ,"d": null, "e": -1.5e3 } "#;
        let got: Vec<(String, String)> = members(obj)
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (r#""a""#.into(), r#"[1, {"b": "}]"}]"#.into()),
                (r#""c""#.into(), r#""x\"y""#.into()),
                (r#""d""#.into(), "null".into()),
                (r#""e""#.into(), "-1.5e3".into()),
            ]
        );
        let arr = br#"[ "a", [ ], {"x":1} ,true]"#;
        let els: Vec<&[u8]> = elements(arr).collect();
        assert_eq!(els, [&br#""a""#[..], b"[ ]", br#"{"x":1}"#, b"true"]);
        assert_eq!(elements(b"[]").count(), 0);
        assert_eq!(members(b"[1]").count(), 0, "not an object");
        assert_eq!(member(obj, "d"), Some(&b"null"[..]));
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
            proptest::prop_assert_eq!(last_user(&text, &o).map(|r| String::from_utf8(r.to_vec()).unwrap()), want);
        }
    }
}
