//! A structural walk over validated JSON, without allocating: the members of an object, the
//! elements of an array, as raw byte slices of the body, and string literals decoded into a
//! caller's buffer. The request view has validated the body, so the walk only has to find
//! boundaries: it jumps over string contents with a SIMD search for quotes and backslashes.
//! serde_json would allocate a stack to skip a nested value, and owned strings for any
//! `Option<Cow<str>>`; the router and the prefix hashes read conversations through this
//! instead.

/// The index just past the string whose opening quote is at `open` (the end of `json` when
/// it is not closed).
pub fn string_end(json: &[u8], open: usize) -> usize {
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
pub fn is_string(raw: &[u8], literal: &str) -> bool {
    raw.len() == literal.len() + 2 && raw.get(1..raw.len() - 1) == Some(literal.as_bytes())
}

/// Appends the value of a JSON string literal (quotes included in `literal`) to `out`.
/// Invalid escapes, which validated JSON does not have, become U+FFFD.
pub fn unescape(literal: &[u8], out: &mut String) {
    decode(literal, |piece| out.push_str(piece));
}

/// Hands the value of a JSON string literal to `sink` in pieces: the runs between escapes as
/// they stand in the body, each escape decoded on its own.
pub fn decode(literal: &[u8], mut sink: impl FnMut(&str)) {
    let inner = literal
        .strip_prefix(b"\"")
        .and_then(|l| l.strip_suffix(b"\""))
        .unwrap_or(literal);
    let mut i = 0;
    while i < inner.len() {
        let Some(j) = memchr::memchr(b'\\', &inner[i..]) else {
            sink(&String::from_utf8_lossy(&inner[i..]));
            return;
        };
        sink(&String::from_utf8_lossy(&inner[i..i + j]));
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
        sink(c.encode_utf8(&mut [0u8; 4]));
    }
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let d = std::str::from_utf8(digits?).ok()?;
    u32::from_str_radix(d, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
