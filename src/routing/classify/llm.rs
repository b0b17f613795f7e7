//! The llm method (Arch-Router style): a small chat model is shown the labels, with their
//! descriptions, and the text, and asked for one label name. Its answer is read leniently:
//! case, quotes, punctuation and a short preamble ("Label: code.") do not matter; an answer
//! that names no label, or more than one, is no answer.

use serde_json::json;

/// The system message listing the labels (built once per snapshot).
pub fn instructions(labels: &[(String, Option<String>)]) -> String {
    let mut s = String::from(
        "You classify a user's request. Answer with exactly one label from the list below and \
         nothing else.\nLabels:\n",
    );
    for (name, description) in labels {
        s.push_str("- ");
        s.push_str(name);
        if let Some(d) = description {
            s.push_str(": ");
            s.push_str(d);
        }
        s.push('\n');
    }
    s
}

/// Bytes of the text a model is shown at most (the head of a long message says what it is).
pub const MAX_TEXT_BYTES: usize = 4096;

/// The chat request asking `model` (its served name) to classify `text`.
pub fn request(model: &str, instructions: &str, text: &str, max_tokens: u32) -> Vec<u8> {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": instructions},
            {"role": "user", "content": &text[..end]},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": false,
    })
    .to_string()
    .into_bytes()
}

/// The assistant's text of a chat completion body.
pub fn answer(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
}

/// The label an answer names: the whole answer when it is a label name, else the one label
/// named as a word in it. `names` are the labels in order.
pub fn parse(reply: &str, names: &[String]) -> Option<u16> {
    let trimmed = reply
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '_' && c != '-');
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(trimmed)) {
        return Some(i as u16);
    }
    let lower = reply.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
        .filter(|w| !w.is_empty())
        .collect();
    let mut found = None;
    for (i, name) in names.iter().enumerate() {
        if words.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            if found.is_some() {
                return None;
            }
            found = Some(i as u16);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["code", "math", "small_talk"].map(String::from).to_vec()
    }

    #[test]
    fn answers_are_read_leniently() {
        let n = names();
        assert_eq!(parse("code", &n), Some(0));
        assert_eq!(parse("  \"Math\".\n", &n), Some(1));
        assert_eq!(parse("Label: small_talk", &n), Some(2));
        assert_eq!(parse("I think this is math.", &n), Some(1));
    }

    #[test]
    fn no_label_or_two_labels_is_no_answer() {
        let n = names();
        assert_eq!(parse("", &n), None);
        assert_eq!(parse("physics", &n), None);
        assert_eq!(parse("code or math", &n), None);
        assert_eq!(parse("codebase", &n), None);
    }

    #[test]
    fn the_request_lists_labels_and_cuts_long_text_on_a_char_boundary() {
        let i = instructions(&[
            ("code".into(), Some("programming".into())),
            ("math".into(), None),
        ]);
        assert!(i.contains("- code: programming\n- math\n"), "{i}");
        let text = "é".repeat(MAX_TEXT_BYTES);
        let body = request("m", &i, &text, 8);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let shown = v["messages"][1]["content"].as_str().unwrap();
        assert!(shown.len() <= MAX_TEXT_BYTES && !shown.is_empty());
        assert_eq!(v["max_tokens"], 8);
        assert_eq!(
            answer(br#"{"choices":[{"message":{"content":"math"}}]}"#).as_deref(),
            Some("math")
        );
    }
}
