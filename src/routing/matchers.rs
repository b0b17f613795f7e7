//! Conditions compiled once per snapshot: keywords into an Aho-Corasick automaton, regular
//! expressions into one regex (all of a rule's patterns together), the rest kept as values.
//! [`Matcher::holds`] is the request path's check; [`Matcher::explain`] says why, for traces.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::meta::Regex;

use super::signals::Signals;
use super::spec::{Bounds, Condition, Scope};

/// One compiled condition.
pub enum Matcher {
    Tools(bool),
    Images(bool),
    JsonMode(bool),
    Stream(bool),
    PromptTokens(Bounds),
    MaxTokens(Bounds),
    Turns(Bounds),
    Keywords(Keywords),
    Regex(Box<Regex>, Vec<String>),
    Header(Vec<(http::HeaderName, Vec<String>)>),
    Tenant(Vec<String>),
    ModelRequested(Vec<String>),
    /// Classifier → wanted labels, in order (hierarchical: later ones only if earlier held).
    Class(Vec<(u16, Vec<u16>)>),
}

/// Why a condition could not be compiled (config validation reports it with its path).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Regex(String),
    #[error("{0}")]
    Keywords(String),
}

impl Matcher {
    pub fn compile(c: &Condition) -> Result<Self, CompileError> {
        Ok(match c {
            Condition::Tools(b) => Self::Tools(*b),
            Condition::Images(b) => Self::Images(*b),
            Condition::JsonMode(b) => Self::JsonMode(*b),
            Condition::Stream(b) => Self::Stream(*b),
            Condition::PromptTokens(b) => Self::PromptTokens(*b),
            Condition::MaxTokens(b) => Self::MaxTokens(*b),
            Condition::Turns(b) => Self::Turns(*b),
            Condition::Keywords(words) => Self::Keywords(Keywords::new(words)?),
            Condition::Regex(patterns) => {
                Self::Regex(Box::new(compile_regexes(patterns)?), patterns.clone())
            }
            Condition::Header(h) => Self::Header(h.clone()),
            Condition::Tenant(t) => Self::Tenant(t.clone()),
            Condition::ModelRequested(m) => Self::ModelRequested(m.clone()),
            Condition::Class(c) => Self::Class(c.clone()),
        })
    }

    /// The condition's config name (the reason in the route header).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tools(_) => "tools",
            Self::Images(_) => "images",
            Self::JsonMode(_) => "json_mode",
            Self::Stream(_) => "stream",
            Self::PromptTokens(_) => "prompt_tokens",
            Self::MaxTokens(_) => "max_tokens",
            Self::Turns(_) => "turns",
            Self::Keywords(_) => "keywords",
            Self::Regex(..) => "regex",
            Self::Header(_) => "header",
            Self::Tenant(_) => "tenant",
            Self::ModelRequested(_) => "model_requested",
            Self::Class(_) => "class",
        }
    }

    /// Whether the condition holds for the request.
    pub fn holds(&self, s: &mut Signals<'_, '_>, scope: Scope) -> bool {
        let ask = s.ask;
        match self {
            Self::Tools(want) => s.tools() == *want,
            Self::Images(want) => s.images() == *want,
            Self::JsonMode(want) => s.json_mode() == *want,
            Self::Stream(want) => ask.view.stream == *want,
            Self::PromptTokens(b) => b.holds(s.prompt_tokens()),
            Self::MaxTokens(b) => ask.view.max_tokens.is_some_and(|n| b.holds(n)),
            Self::Turns(b) => b.holds(s.turns()),
            Self::Keywords(k) => k.find(s.text(scope)).is_some(),
            Self::Regex(re, _) => re.is_match(s.text(scope)),
            Self::Header(wanted) => wanted.iter().all(|(name, values)| {
                ask.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| values.iter().any(|w| w == v.trim()))
            }),
            Self::Tenant(names) => ask.tenant.is_some_and(|t| names.iter().any(|n| n == t)),
            Self::ModelRequested(names) => names.iter().any(|n| n == ask.name),
            // A classifier that must call a model leaves the decision pending (Signals).
            Self::Class(wanted) => wanted
                .iter()
                .all(|(c, labels)| s.label(*c).flatten().is_some_and(|l| labels.contains(&l))),
        }
    }

    /// What the request has that this condition looks at (for traces; allocates).
    pub fn explain(&self, s: &mut Signals<'_, '_>, scope: Scope) -> String {
        let ask = s.ask;
        match self {
            Self::Tools(_) => format!("tools {}", yes_no(s.tools())),
            Self::Images(_) => format!("images {}", yes_no(s.images())),
            Self::JsonMode(_) => format!("json mode {}", yes_no(s.json_mode())),
            Self::Stream(_) => format!("stream {}", yes_no(ask.view.stream)),
            Self::PromptTokens(b) => {
                format!("~{} prompt tokens ({})", s.prompt_tokens(), bounds(b))
            }
            Self::MaxTokens(b) => match ask.view.max_tokens {
                Some(n) => format!("max_tokens {n} ({})", bounds(b)),
                None => "no max_tokens".to_owned(),
            },
            Self::Turns(b) => format!("{} turns ({})", s.turns(), bounds(b)),
            Self::Keywords(k) => match k.find(s.text(scope)) {
                Some(i) => format!("keyword {:?} in the {}", k.words[i], scope_text(scope)),
                None => format!(
                    "none of {} keywords in the {}",
                    k.words.len(),
                    scope_text(scope)
                ),
            },
            Self::Regex(re, patterns) => {
                let text = s.text(scope);
                match re.search(&regex_automata::Input::new(text)) {
                    Some(m) => format!(
                        "/{}/ matched {:?} in the {}",
                        patterns[m.pattern().as_usize()],
                        excerpt(&text[m.range()]),
                        scope_text(scope)
                    ),
                    None => format!("no match in the {}", scope_text(scope)),
                }
            }
            Self::Header(wanted) => wanted
                .iter()
                .map(
                    |(name, _)| match ask.headers.get(name).and_then(|v| v.to_str().ok()) {
                        Some(v) => format!("{name}: {:?}", excerpt(v)),
                        None => format!("no {name} header"),
                    },
                )
                .collect::<Vec<_>>()
                .join(", "),
            Self::Tenant(_) => match ask.tenant {
                Some(t) => format!("tenant {t:?}"),
                None => "no tenant".to_owned(),
            },
            Self::ModelRequested(_) => format!("requested as {:?}", ask.name),
            Self::Class(wanted) => {
                let mut parts = Vec::new();
                for (c, labels) in wanted {
                    let said = s.describe_class(*c);
                    parts.push(said);
                    let holds = s.label(*c).flatten().is_some_and(|l| labels.contains(&l));
                    if !holds {
                        break;
                    }
                }
                parts.join("; ")
            }
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "present"
    } else {
        "absent"
    }
}

fn scope_text(scope: Scope) -> &'static str {
    match scope {
        Scope::LastUser => "last user message",
        Scope::Conversation => "conversation",
    }
}

fn bounds(b: &Bounds) -> String {
    match (b.over, b.under) {
        (Some(o), Some(u)) => format!("wanted over {o} and under {u}"),
        (Some(o), None) => format!("wanted over {o}"),
        (None, Some(u)) => format!("wanted under {u}"),
        (None, None) => "any".to_owned(),
    }
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// All of a condition's patterns as one regex: a match of any is a match.
pub fn compile_regexes(patterns: &[String]) -> Result<Regex, CompileError> {
    Regex::new_many(patterns).map_err(|e| CompileError::Regex(e.to_string()))
}

/// A keyword list: any keyword, ASCII case-insensitive, as a whole word.
pub struct Keywords {
    ac: AhoCorasick,
    /// Pattern id → index into `words` (non-ASCII keywords add case variants).
    owner: Vec<usize>,
    words: Vec<String>,
}

impl Keywords {
    pub fn new(words: &[String]) -> Result<Self, CompileError> {
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let mut variants = vec![w.clone()];
            if !w.is_ascii() {
                // ASCII letters fold in the automaton; other letters match as written, all
                // lower case or all upper case.
                variants.push(w.to_lowercase());
                variants.push(w.to_uppercase());
                variants.dedup();
            }
            for v in variants {
                patterns.push(v);
                owner.push(i);
            }
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| CompileError::Keywords(e.to_string()))?;
        Ok(Self {
            ac,
            owner,
            words: words.to_vec(),
        })
    }

    /// The first keyword found as a whole word in `text`, as an index into the list.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.ac.find_overlapping_iter(text).find_map(|m| {
            let whole = !joins(
                text[..m.start()].chars().next_back(),
                text[m.range()].chars().next(),
            ) && !joins(
                text[m.end()..].chars().next(),
                text[m.range()].chars().next_back(),
            );
            whole.then(|| self.owner[m.pattern().as_usize()])
        })
    }
}

/// Whether `neighbour` continues the word whose edge character is `edge`: both are word
/// characters, and the edge is not an ideograph or kana (scripts written without spaces,
/// where any position is a word boundary).
fn joins(neighbour: Option<char>, edge: Option<char>) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    match (neighbour, edge) {
        (Some(n), Some(e)) => word(n) && word(e) && !unspaced(e) && !unspaced(n),
        _ => false,
    }
}

fn unspaced(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(words: &[&str]) -> Keywords {
        Keywords::new(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn keywords_match_whole_words_in_any_ascii_case() {
        let k = kw(&["rust", "stack trace", "c++"]);
        assert_eq!(k.find("Why does RUST say this?"), Some(0));
        assert_eq!(k.find("I trust you"), None, "inside a word");
        assert_eq!(k.find("rusty nails"), None);
        assert_eq!(k.find("here is the Stack Trace:\n..."), Some(1));
        assert_eq!(k.find("(rust)"), Some(0));
        assert_eq!(k.find("\nrust_fmt"), None, "underscore joins words");
        assert_eq!(k.find("I write C++ daily"), Some(2), "symbols at the edge");
        assert_eq!(k.find("trust rust"), Some(0), "a later whole match counts");
    }

    #[test]
    fn non_ascii_keywords_match_in_lower_upper_and_ideographic_text() {
        let k = kw(&["überweisung", "代码"]);
        assert_eq!(k.find("Die Überweisung ist da"), Some(0));
        assert_eq!(k.find("ÜBERWEISUNG!"), Some(0));
        assert_eq!(k.find("Fehlüberweisung"), None);
        assert_eq!(k.find("帮我写代码吧"), Some(1), "no spaces in Chinese");
    }

    #[test]
    fn all_patterns_of_a_regex_condition_count() {
        let re = compile_regexes(&[r"(?i)\bsummari[sz]e\b".into(), r"^tl;dr".into()]).unwrap();
        assert!(re.is_match("Please SUMMARISE this"));
        assert!(re.is_match("tl;dr please"));
        assert!(!re.is_match("summaries"));
        assert!(compile_regexes(&["(unclosed".into()]).is_err());
    }
}
