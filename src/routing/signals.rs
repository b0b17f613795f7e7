//! What the rules read about a request, computed on first use and at most once per decision:
//! a request that the first rule decides on its `tools` never has its conversation walked.
//! Texts are decoded into a per-thread buffer that is reused (and shrunk after a huge
//! request), so a decision allocates nothing.

use std::cell::RefCell;

use super::classify::{Known, TextScope};
use super::conversation::{self, Outline};
use super::spec::Scope;
use super::{Ask, Router};
use crate::openai::Endpoint;

/// Text buffers kept per thread between decisions.
#[derive(Default)]
pub struct Scratch {
    /// By [`Scope`], then the text of a classifier reading the last N turns.
    texts: [String; 3],
}

/// A buffer larger than this after a decision is given back (memory stays bounded by
/// configuration, not by the largest request ever seen).
const KEEP_BYTES: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let r = f(&mut s);
            for t in &mut s.texts {
                if t.capacity() > KEEP_BYTES {
                    *t = String::new();
                }
            }
            r
        }
        // Not reachable (a decision does not start another), but fresh buffers are correct.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The request as the rules of one virtual model see it.
pub struct Signals<'s, 'a> {
    pub ask: &'s Ask<'a>,
    /// Prompt bytes per token of the virtual model (its estimate of `prompt_tokens`).
    bytes_per_token: f64,
    outline: Option<Outline>,
    decoded: [bool; 2],
    scratch: &'s mut Scratch,
    router: &'s Router,
    /// Classifications made for this request so far.
    known: &'s mut Known,
    /// A classifier a condition needs that must call a model: the decision stops for it.
    pub pending: Option<u16>,
}

impl<'s, 'a> Signals<'s, 'a> {
    pub fn new(
        ask: &'s Ask<'a>,
        bytes_per_token: f64,
        scratch: &'s mut Scratch,
        router: &'s Router,
        known: &'s mut Known,
    ) -> Self {
        for t in &mut scratch.texts {
            t.clear();
        }
        Self {
            ask,
            bytes_per_token,
            outline: None,
            decoded: [false; 2],
            scratch,
            router,
            known,
            pending: None,
        }
    }

    /// Classifier `c`'s label for this request: `Some(None)` when it has none (a fallback
    /// without a fallback label), `None` while it is pending (it calls a model: the proxy
    /// runs it and decides again). A lexical classifier runs here, once per request.
    pub fn label(&mut self, c: u16) -> Option<Option<u16>> {
        if let Some(v) = self.known.get(c) {
            return Some(v.label);
        }
        let router = self.router;
        let Some(classifier) = router.classifiers.get(c) else {
            return Some(None);
        };
        if !classifier.is_local() {
            self.pending = Some(c);
            return None;
        }
        let fresh = classifier.classify_local(self.class_text(classifier.scope));
        let verdict = router.settle(self.ask, c, fresh);
        self.known.insert(c, verdict);
        Some(verdict.label)
    }

    /// What classifier `c` said, for traces.
    pub fn describe_class(&mut self, c: u16) -> String {
        let router = self.router;
        let name = router.classifiers.get(c).map_or("?", |k| k.name.as_str());
        match self.label(c) {
            None => format!("{name}: pending"),
            Some(_) => match (self.known.get(c), router.classifiers.get(c)) {
                (Some(v), Some(k)) => format!(
                    "{name}: {} ({:.2}, {})",
                    k.label_name(v.label).unwrap_or("no label"),
                    v.confidence,
                    serde_json::to_value(v.source)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                _ => format!("{name}: no label"),
            },
        }
    }

    /// The text a classifier with `scope` reads.
    pub fn class_text(&mut self, scope: TextScope) -> &str {
        match scope {
            TextScope::LastUser => self.text(Scope::LastUser),
            TextScope::Conversation { turns: 0 } => self.text(Scope::Conversation),
            TextScope::Conversation { turns } => {
                let messages = self.messages();
                let out = &mut self.scratch.texts[2];
                out.clear();
                match self.ask.endpoint {
                    Endpoint::ChatCompletions => {
                        conversation::last_turns_text(messages, turns, out)
                    }
                    _ => conversation::push_text(
                        self.ask
                            .body
                            .get(self.ask.view.prompt_span.clone())
                            .unwrap_or_default(),
                        out,
                    ),
                }
                &self.scratch.texts[2]
            }
        }
    }

    /// The raw `messages` array (empty for completions and embeddings).
    fn messages(&self) -> &'a [u8] {
        match self.ask.endpoint {
            Endpoint::ChatCompletions => self
                .ask
                .body
                .get(self.ask.view.prompt_span.clone())
                .unwrap_or_default(),
            _ => &[],
        }
    }

    fn outline(&mut self) -> &Outline {
        let messages = self.messages();
        self.outline
            .get_or_insert_with(|| conversation::outline(messages))
    }

    /// Estimated prompt tokens: the whole prompt's bytes over the model's bytes per token.
    pub fn prompt_tokens(&self) -> u64 {
        (self.ask.view.prompt_span.len() as f64 / self.bytes_per_token).ceil() as u64
    }

    /// Messages in the conversation; a completion's prompt or an embedding's input is one.
    pub fn turns(&mut self) -> u64 {
        match self.ask.endpoint {
            Endpoint::ChatCompletions => u64::from(self.outline().turns),
            _ => u64::from(!self.ask.view.prompt_span.is_empty()),
        }
    }

    pub fn tools(&self) -> bool {
        let v = self.ask.view;
        fn raw(r: Option<&serde_json::value::RawValue>) -> Option<&[u8]> {
            r.map(|r| r.get().as_bytes())
        }
        conversation::is_given(raw(v.tools))
            || conversation::is_given(raw(v.functions))
            || conversation::is_given(raw(v.tool_choice))
    }

    pub fn images(&self) -> bool {
        conversation::has_images(self.messages())
    }

    pub fn json_mode(&self) -> bool {
        conversation::is_json_mode(self.ask.view.response_format.map(|r| r.get().as_bytes()))
    }

    /// The text `keywords` and `regex` read in `scope`, decoded once.
    pub fn text(&mut self, scope: Scope) -> &str {
        let k = scope as usize;
        if !self.decoded[k] {
            self.decoded[k] = true;
            self.decode(scope);
        }
        &self.scratch.texts[k]
    }

    fn decode(&mut self, scope: Scope) {
        let ask = self.ask;
        let prompt = ask
            .body
            .get(ask.view.prompt_span.clone())
            .unwrap_or_default();
        let chat = ask.endpoint == Endpoint::ChatCompletions;
        let out = &mut self.scratch.texts[scope as usize];
        match (chat, scope) {
            (true, Scope::Conversation) => conversation::conversation_text(prompt, out),
            (true, Scope::LastUser) => {
                let outline = *self.outline();
                if let Some(content) = conversation::last_user(prompt, &outline) {
                    conversation::push_text(content, &mut self.scratch.texts[scope as usize]);
                }
            }
            (false, _) => conversation::push_text(prompt, out),
        }
    }
}
