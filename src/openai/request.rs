//! The small typed view of a request body that routing needs, parsed once.
//!
//! The body is parsed with serde_json in one pass that borrows from the buffer: fields the
//! gateway does not need are skipped (still validated as JSON), and `model` is kept as a raw
//! slice so its byte span is known and the served name can be spliced in without
//! re-serialising a possibly megabyte-sized body.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;

/// What the gateway reads from a request body.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// The public model name as sent (unescaped).
    pub model: Cow<'a, str>,
    /// Byte range of the `model` value in the body, quotes included.
    pub model_span: Range<usize>,
    /// `stream: true` asks for server-sent events.
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// Byte range of the prompt in the body: the raw `messages`, `prompt` or `input` value
    /// (empty when there is none). Its size is the prompt-size feature; its bytes are what
    /// prefix hashes cover.
    pub prompt_span: Range<usize>,
    /// The `user` field, when it is a string (a session key for affinity).
    pub user: Option<Cow<'a, str>>,
    /// Byte range of the `stream_options` value, when present.
    pub stream_options_span: Option<Range<usize>>,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    pub include_usage: bool,
    /// `tools`, `functions`, `tool_choice` and `response_format` as sent: what the router's
    /// `tools` and `json_mode` conditions read.
    pub tools: Option<&'a RawValue>,
    pub functions: Option<&'a RawValue>,
    pub tool_choice: Option<&'a RawValue>,
    pub response_format: Option<&'a RawValue>,
    /// The request's routing preferences (`models`, `provider`, `max_ttft_ms`): read by the
    /// router and stripped before the body is forwarded, `null` included.
    pub preferences: [Option<&'a RawValue>; 3],
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    /// Kept even when `null`, so that its span is known and it can be replaced.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    functions: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    models: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    provider: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_ttft_ms: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The byte range of a value borrowed from `body`.
fn span_in(body: &[u8], raw: &RawValue) -> Option<Range<usize>> {
    let start = (raw.get().as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let end = start.checked_add(raw.get().len())?;
    (end <= body.len()).then_some(start..end)
}

impl<'a> RequestView<'a> {
    /// Parses a request body. Errors are 400s naming the offending field where there is one.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        // JSON is UTF-8 (RFC 8259); the fields the view skips are not checked by serde_json,
        // and the server would refuse what passed (found by fuzz/request).
        if let Err(e) = std::str::from_utf8(body) {
            return Err(ApiError::invalid(
                format!(
                    "The body is not valid UTF-8 (at byte {}); JSON must be.",
                    e.valid_up_to()
                ),
                None,
            ));
        }
        check_structure(body)?;
        let raw: Raw<'a> = match serde_json::from_slice(body) {
            Ok(raw) => raw,
            Err(e) => return Err(describe(body, e)),
        };
        let Some(model_raw) = raw.model else {
            return Err(ApiError::invalid(
                "you must provide a model parameter",
                Some("model"),
            ));
        };
        let model: Cow<'a, str> = serde_json::from_str(model_raw.get())
            .map_err(|_| ApiError::invalid("model must be a string", Some("model")))?;
        if model.is_empty() {
            return Err(ApiError::invalid("model must not be empty", Some("model")));
        }
        // Raw values borrow from `body`, so their offsets are pointer differences.
        let model_span = span_in(body, model_raw).ok_or(ApiError::Internal)?;
        let prompt_span = raw
            .messages
            .or(raw.prompt)
            .or(raw.input)
            .and_then(|v| span_in(body, v))
            .unwrap_or(0..0);
        let user = raw
            .user
            .and_then(|u| serde_json::from_str::<Cow<'a, str>>(u.get()).ok());
        let include_usage = raw
            .stream_options
            .and_then(|o| serde_json::from_str::<Option<StreamOptions>>(o.get()).ok())
            .flatten()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Self {
            model,
            model_span,
            stream: raw.stream.unwrap_or(false),
            max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
            prompt_span,
            user,
            stream_options_span: raw.stream_options.and_then(|o| span_in(body, o)),
            include_usage,
            tools: raw.tools,
            functions: raw.functions,
            tool_choice: raw.tool_choice,
            response_format: raw.response_format,
            preferences: [raw.models, raw.provider, raw.max_ttft_ms],
        })
    }

    /// Byte ranges of the preference values present, in the body.
    pub fn preference_spans(&self, body: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
        let base = body.as_ptr() as usize;
        self.preferences.iter().flatten().filter_map(move |raw| {
            let start = (raw.get().as_ptr() as usize).checked_sub(base)?;
            Some(start..start + raw.get().len())
        })
    }
}

/// Deepest nesting of arrays and objects accepted (serde_json limits only what it
/// deserialises, not the fields it skips).
pub const MAX_DEPTH: usize = 128;

/// One pass over the raw bytes: refuses nesting deeper than [`MAX_DEPTH`] and NUL characters
/// (`\u0000`) in strings, which upstream tokenizers and C-string code mishandle.
fn check_structure(body: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                // Inside a string only a quote or a backslash matters: a SIMD search jumps
                // over the text between them (most of a prompt).
                i += 1;
                loop {
                    // `get`: a backslash may have been the last byte.
                    let rest = body.get(i..).unwrap_or_default();
                    let Some(j) = memchr::memchr2(b'"', b'\\', rest) else {
                        return Ok(());
                    };
                    i += j;
                    if body[i] == b'"' {
                        break;
                    }
                    if body[i + 1..].starts_with(b"u0000") {
                        return Err(ApiError::invalid(
                            "strings must not contain NUL (\\u0000) characters",
                            None,
                        ));
                    }
                    // The escaped byte, whatever it is, is not the string's end.
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ApiError::invalid(
                        format!("JSON nesting deeper than {MAX_DEPTH} levels"),
                        None,
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Turns a serde_json error into a 400, naming the field when the JSON was well-formed but a
/// field had the wrong type. Runs only on the error path.
fn describe(body: &[u8], e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let param = match serde_path_to_error::deserialize::<_, Raw<'_>>(&mut de) {
                Err(pe) => {
                    let path = pe.path().to_string();
                    (path != ".").then_some(path)
                }
                Ok(_) => None,
            };
            let message = match &param {
                Some(p) => format!("invalid value for '{p}': {e}"),
                None => format!("invalid request body: {e}"),
            };
            ApiError::invalid(message, param.as_deref())
        }
        Category::Syntax | Category::Eof | Category::Io => ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        ),
    }
}

/// The body with the model value at `span` replaced by `quoted` (a JSON string literal).
pub fn replace_model(body: &[u8], span: Range<usize>, quoted: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - span.len() + quoted.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(quoted);
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

/// The body without the top-level members whose values are at `values` (each member's key,
/// colon and one separating comma go with it), and where the model value moved to. `None`
/// when a span is not a member's value.
pub fn remove_members(
    body: &[u8],
    values: &[Range<usize>],
    model_span: Range<usize>,
) -> Option<(Bytes, Range<usize>)> {
    let skip_back = |mut i: usize| {
        while i > 0 && body[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let skip_forward = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut cuts: Vec<Range<usize>> = Vec::with_capacity(values.len());
    for v in values {
        // value ← ws ← ':' ← ws ← "key"
        let colon = skip_back(v.start).checked_sub(1)?;
        (body.get(colon) == Some(&b':')).then_some(())?;
        let close = skip_back(colon).checked_sub(1)?;
        (body.get(close) == Some(&b'"')).then_some(())?;
        let mut open = close;
        loop {
            open = open.checked_sub(1)?;
            let escaped = body[..open]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count()
                % 2
                == 1;
            if body[open] == b'"' && !escaped {
                break;
            }
        }
        let before = skip_back(open).checked_sub(1)?;
        let cut = match body.get(before) {
            // `, "key": value` — the comma before goes.
            Some(b',') => before..v.end,
            // `{"key": value, ...` — the comma after goes, if any.
            Some(b'{') => {
                let after = skip_forward(v.end);
                if body.get(after) == Some(&b',') {
                    open..skip_forward(after + 1)
                } else {
                    open..v.end
                }
            }
            _ => return None,
        };
        cuts.push(cut);
    }
    cuts.sort_by_key(|c| c.start);
    // Two members at the start of the object would both claim the comma between them.
    for i in 1..cuts.len() {
        if cuts[i].start < cuts[i - 1].end {
            cuts[i].start = cuts[i - 1].end;
        }
    }
    let removed_before = |at: usize| -> usize {
        cuts.iter()
            .map(|c| c.end.min(at).saturating_sub(c.start))
            .sum()
    };
    let mut out = BytesMut::with_capacity(body.len());
    let mut at = 0;
    for c in &cuts {
        out.extend_from_slice(&body[at..c.start]);
        at = c.end;
    }
    out.extend_from_slice(&body[at..]);
    let model = model_span.start - removed_before(model_span.start)
        ..model_span.end - removed_before(model_span.end);
    Some((out.freeze(), model))
}

/// The body with `stream_options.include_usage` set to true (other stream options kept), and
/// where the model value moved to. `None` when `stream_options` is not an object or null (the
/// server will refuse the request as it is).
pub fn ask_for_usage(
    body: &[u8],
    stream_options: Option<Range<usize>>,
    model_span: Range<usize>,
) -> Option<(Bytes, Range<usize>)> {
    let (at, text) = match stream_options {
        None => {
            // Right after the opening brace; the object has a `model`, so a comma follows.
            let open = body.iter().position(|&b| b == b'{')? + 1;
            (
                open..open,
                br#""stream_options":{"include_usage":true},"#.to_vec(),
            )
        }
        Some(span) => {
            let mut options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice::<Option<_>>(body.get(span.clone())?)
                    .ok()?
                    .unwrap_or_default();
            options.insert("include_usage".to_owned(), true.into());
            (span, serde_json::to_vec(&options).ok()?)
        }
    };
    let mut out = BytesMut::with_capacity(body.len() + text.len());
    out.extend_from_slice(&body[..at.start]);
    out.extend_from_slice(&text);
    out.extend_from_slice(&body[at.end..]);
    let model = if at.start <= model_span.start {
        let shift = |i: usize| i + text.len() - at.len();
        shift(model_span.start)..shift(model_span.end)
    } else {
        model_span
    };
    Some((out.freeze(), model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_with_or_without_stream_options_and_the_model_span_follows() {
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"model":"m","stream":true}"#,
                r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
            ),
            (
                br#" {"stream_options":{"include_usage":false,"x":1},"model":"m"}"#,
                r#" {"stream_options":{"include_usage":true,"x":1},"model":"m"}"#,
            ),
            (
                br#"{"model":"m","stream_options":null}"#,
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            ),
            (
                br#"{"model":"m","stream_options":{}}"#,
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (body, want) in cases {
            let v = RequestView::parse(body).unwrap();
            assert!(!v.include_usage);
            let (out, model) = ask_for_usage(body, v.stream_options_span, v.model_span).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert_eq!(&out[model], br#""m""#);
            assert!(RequestView::parse(&out).unwrap().include_usage);
        }
        let v = RequestView::parse(br#"{"model":"m","stream_options":[1]}"#);
        assert!(v.is_ok_and(|v| ask_for_usage(
            br#"{"model":"m","stream_options":[1]}"#,
            v.stream_options_span,
            v.model_span
        )
        .is_none()));
    }

    #[test]
    fn parses_model_stream_and_max_tokens() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"fast","stream":true,"max_tokens":7}"#;
        let v = RequestView::parse(body).unwrap();
        assert_eq!(v.model, "fast");
        assert!(v.stream);
        assert_eq!(v.max_tokens, Some(7));
        assert_eq!(&body[v.model_span.clone()], br#""fast""#);
    }

    #[test]
    fn rewrites_only_the_model_value() {
        let body = br#"{"model":"fast","prompt":"\"model\":\"fast\""}"#;
        let v = RequestView::parse(body).unwrap();
        let out = replace_model(body, v.model_span, br#""meta/Llama""#);
        assert_eq!(
            &out[..],
            br#"{"model":"meta/Llama","prompt":"\"model\":\"fast\""}"#
        );
    }

    #[test]
    fn escaped_model_names_are_unescaped() {
        let v = RequestView::parse(br#"{"model":"a\u002fb"}"#).unwrap();
        assert_eq!(v.model, "a/b");
    }

    fn param_of(body: &[u8]) -> Option<String> {
        match RequestView::parse(body) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(param_of(br#"{"stream":true}"#).as_deref(), Some("model"));
        assert_eq!(param_of(br#"{"model":42}"#).as_deref(), Some("model"));
        assert_eq!(param_of(br#"{"model":null}"#).as_deref(), Some("model"));
        assert_eq!(
            param_of(br#"{"model":"m","stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(br#"{"model":"m","max_tokens":-1}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(param_of(b"{\"model\":"), None);
        assert_eq!(param_of(b"not json"), None);
    }

    /// A regression from fuzz/request: invalid UTF-8 in a field the view does not read.
    #[test]
    fn a_body_that_is_not_utf8_is_refused() {
        let body = b"{\"model\":\"a\",\"prompt\":\"hello\",\"us,r\":\"u\x97\"}";
        let e = RequestView::parse(body).unwrap_err();
        assert!(
            e.to_string().contains("not valid UTF-8 (at byte 39)"),
            "{e}"
        );
        assert!(RequestView::parse("{\"model\":\"a\",\"prompt\":\"héllo ✓\"}".as_bytes()).is_ok());
    }

    #[test]
    fn nul_in_a_string_is_refused_but_an_escaped_backslash_before_u0000_text_is_not() {
        assert!(RequestView::parse(br#"{"model":"m","prompt":"a\u0000b"}"#).is_err());
        assert!(RequestView::parse(br#"{"model":"m","prompt":"a\\u0000b"}"#).is_ok());
        assert!(RequestView::parse(br#"{"model":"m","prompt":"[[[{{{"}"#).is_ok());
    }

    #[test]
    fn duplicate_model_keys_are_refused() {
        assert!(RequestView::parse(br#"{"model":"a","model":"b"}"#).is_err());
    }

    /// The byte-at-a-time scan `check_structure` replaced: what it must agree with.
    fn check_structure_bytewise(body: &[u8]) -> Result<(), ()> {
        let (mut depth, mut in_string, mut i) = (0usize, false, 0);
        while i < body.len() {
            match (in_string, body[i]) {
                (true, b'\\') if body[i + 1..].starts_with(b"u0000") => return Err(()),
                (true, b'\\') => i += 1,
                (true, b'"') => in_string = false,
                (false, b'"') => in_string = true,
                (false, b'[' | b'{') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(());
                    }
                }
                (false, b']' | b'}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn structure_check_agrees_with_the_byte_scan(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"\""[..], b"\\", b"\\u0000", b"u0000", b"[", b"{", b"]", b"}",
                    b"\\\"", b"a", b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                ]),
                0..64,
            )
        ) {
            let body = pieces.concat();
            proptest::prop_assert_eq!(
                check_structure(&body).is_ok(),
                check_structure_bytewise(&body).is_ok()
            );
        }
    }

    #[test]
    fn nesting_deeper_than_128_is_refused() {
        let deep = format!(
            r#"{{"model":"m","x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(RequestView::parse(deep.as_bytes()).is_err());
    }
}
