//! The router: from a request to a [`Route`], decided once per request.
//!
//! A public name or alias resolves to a model. A model with a pool serves itself: its route
//! is its pool, then its fallback pools. A virtual model (`models.X.route`) has rules instead:
//! the first rule whose conditions all hold sends the request to a model, a weighted split
//! between models, or the best of a candidate list by price, latency or throughput. Pools too
//! small for the request (`context_window`) or pricier than its `provider.max_price` are
//! passed over; models the tenant may not use too. The request's own `models` list adds
//! fallback models. The result is a value the proxy carries: the chain of (model, pool) steps
//! to try, the decision's label (`x-switchyard-route`), and a model to mirror it to.
//!
//! | file | what |
//! |---|---|
//! | `route.rs` | the decision as a value: [`Route`], its [`Chain`] of steps, its label |
//! | `rules.rs` | a virtual model's rules applied to a request; chains that fit |
//! | `spec.rs` | the typed config of rules, splits, candidates and shadows |
//! | `matchers.rs` | conditions compiled once per snapshot (keywords, regexes, ...) |
//! | `signals.rs`, `conversation.rs` | what the rules read about a request, lazily |
//! | `split.rs` | weighted rendezvous hashing of sticky keys over split arms |
//! | `select.rs` | candidates ranked by price, latency or throughput |
//! | `prefs.rs` | the request's own `models`, `provider` and TTFT target |
//! | `explain.rs` | the trace of a decision (`switchyard route`, `/admin/route`) |

pub mod classify;
pub mod conversation;
mod cost;
pub mod explain;
pub mod matchers;
pub mod prefs;
mod route;
mod rules;
pub mod select;
mod signals;
pub mod spec;
pub mod split;

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};

pub use cost::Cost;
pub use explain::Trace;
pub use prefs::Prefs;
pub use route::{Chain, Decision, Mirror, Route, Step};

use crate::openai::{Endpoint, RequestView};
use matchers::Matcher;
use signals::Signals;
use spec::{Rules, Scope, Serve, Shadow, Sort, Target};

/// The header whose value keeps a session on one split arm (the body's `user` otherwise).
pub const SESSION_HEADER: &str = "x-session-id";

/// Why no route could be made for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A model of the request's `models` list that does not exist or is not allowed.
    UnknownModel { name: String },
    /// The tenant may use none of the models the virtual model would route this request to.
    NotAllowed,
    /// No pool the request could go to holds its prompt estimate plus `max_tokens`.
    ContextLengthExceeded { needed: u64, largest: u64 },
    /// Every pool the request could go to is pricier than its `provider.max_price`.
    OverMaxPrice { max: Cost },
    /// No rule of the virtual model matches the request (it has no default rule).
    NoRule,
    /// A malformed preference (`models`, `provider`, TTFT target).
    BadPreference {
        param: &'static str,
        message: String,
    },
    /// Not a refusal: the decision needs this classifier's label, which needs a model call.
    /// The caller runs it ([`classify::run`]), records it in its [`classify::Known`] with
    /// [`Router::settle`] and decides again.
    Unclassified(u16),
}

/// What a decision may know about the live pools. The gateway's runtime answers from its
/// servers' state; [`Offline`] (for `switchyard route`) knows nothing.
pub trait Live {
    /// Whether some server of the pool may take a request now.
    fn usable(&self, pool: usize) -> bool;
    /// Predicted time to first token on the pool, ms (`None`: not measured yet).
    fn ttft_ms(&self, pool: usize) -> Option<f64>;
    /// Observed decode rate on the pool, tokens/s (`None`: not measured yet).
    fn tokens_per_s(&self, pool: usize) -> Option<f64>;
}

/// No live state: every pool usable, nothing measured.
pub struct Offline;

impl Live for Offline {
    fn usable(&self, _: usize) -> bool {
        true
    }
    fn ttft_ms(&self, _: usize) -> Option<f64> {
        None
    }
    fn tokens_per_s(&self, _: usize) -> Option<f64> {
        None
    }
}

/// A request as the router sees it.
pub struct Ask<'a> {
    /// The model the client named (index, resolved by [`Router::resolve`]).
    pub model: usize,
    /// The name as the client wrote it.
    pub name: &'a str,
    pub endpoint: Endpoint,
    pub view: &'a RequestView<'a>,
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    /// The caller's tenant name (`None` on an open gateway).
    pub tenant: Option<&'a str>,
    /// Whether the caller may use a model (its tenant's allow-list).
    pub allowed: &'a (dyn Fn(usize) -> bool + Sync),
    pub prefs: &'a Prefs,
    /// Whether the decision is remembered (a conversation's labels under `sticky:
    /// conversation`); a dry run only reads.
    pub remember: bool,
}

/// A model as the router is built from.
pub struct ModelDef<'a> {
    pub name: &'a str,
    pub aliases: &'a [String],
    pub serve: &'a Serve,
    pub bytes_per_token: f64,
    pub default_max_tokens: u64,
    pub shadow: Option<&'a Shadow>,
}

/// A pool as the router is built from.
pub struct PoolDef<'a> {
    pub name: &'a str,
    /// Tokens the pool's servers hold per sequence (`None`: not limited).
    pub context_window: Option<u64>,
    pub cost: Cost,
}

/// Why the router could not be built from a validated config (a regex or keyword list the
/// validation accepted but the compiler did not): `models.<model>.route[<rule>].when`.
#[derive(Debug, thiserror::Error)]
#[error("models.{model}.route[{rule}].when: {message}")]
pub struct BuildError {
    pub model: String,
    pub rule: usize,
    pub message: String,
}

struct ModelPlan {
    name: String,
    /// Own pool, then fallbacks (empty for a virtual model).
    pools: Box<[usize]>,
    /// The same as a chain, when no pool of it has a context window: a request without a
    /// price limit takes it as it is.
    whole: Option<Chain>,
    rules: Option<Box<[Compiled]>>,
    bytes_per_token: f64,
    default_max_tokens: u64,
    shadow: Option<Shadow>,
    /// The decision of a request served by this model itself.
    direct: u32,
    /// Stable hash of the name: the model's seed as a split arm.
    seed: u64,
    /// `sticky: conversation`: the confidence a later turn's label needs to switch.
    sticky: Option<f32>,
}

struct Compiled {
    when: Box<[Matcher]>,
    scope: Scope,
    target: Target,
    /// The first of this rule's decisions (targets, arms, or sorts × candidates).
    first_decision: u32,
}

struct PoolPlan {
    name: String,
    context_window: Option<u64>,
    cost: Cost,
}

/// Names, models and their compiled rules; immutable once built (one per runtime).
pub struct Router {
    by_name: HashMap<Box<str>, usize>,
    models: Box<[ModelPlan]>,
    pools: Box<[PoolPlan]>,
    decisions: Box<[Decision]>,
    /// The classifiers `class` conditions ask (`classifiers:`).
    pub classifiers: classify::Classifiers,
}

impl Router {
    /// Compiles every virtual model's rules. Names and indices come validated.
    pub fn build(
        models: &[ModelDef<'_>],
        pools: &[PoolDef<'_>],
        classifiers: classify::Classifiers,
    ) -> Result<Self, BuildError> {
        let mut by_name = HashMap::new();
        let mut decisions = Vec::new();
        let mut plans = Vec::with_capacity(models.len());
        let label = |model: usize, rule: usize, reason: &str, target: usize| {
            let label = format!("{}#{rule}:{reason}", models[model].name);
            Decision {
                header: HeaderValue::from_bytes(label.as_bytes()).ok(),
                label,
                model,
                rule,
                target,
            }
        };
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.name.into(), i);
            for alias in m.aliases {
                by_name.insert(alias.as_str().into(), i);
            }
            let direct = decisions.len() as u32;
            decisions.push(label(i, 0, "direct", i));
            let (own, rules) = match m.serve {
                Serve::Pools { pool, fallback } => (
                    std::iter::once(*pool)
                        .chain(fallback.iter().copied())
                        .collect(),
                    None,
                ),
                Serve::Route(Rules { rules, .. }) => {
                    let mut compiled = Vec::with_capacity(rules.len());
                    for (r, rule) in rules.iter().enumerate() {
                        let when = rule
                            .when
                            .iter()
                            .map(Matcher::compile)
                            .collect::<Result<Box<[_]>, _>>()
                            .map_err(|e| BuildError {
                                model: m.name.to_owned(),
                                rule: r,
                                message: e.to_string(),
                            })?;
                        let first_decision = decisions.len() as u32;
                        let n = r + 1;
                        match &rule.target {
                            Target::Model(t) => {
                                let reason = if rule.when.is_empty() {
                                    "default".to_owned()
                                } else {
                                    rule.when
                                        .iter()
                                        .map(|c| c.name())
                                        .collect::<Vec<_>>()
                                        .join("+")
                                };
                                decisions.push(label(i, n, &reason, *t));
                            }
                            Target::Split { arms, .. } => {
                                for &(t, _) in arms {
                                    let reason = format!("split={}", models[t].name);
                                    decisions.push(label(i, n, &reason, t));
                                }
                            }
                            Target::Candidates { models: list, .. } => {
                                for sort in Sort::ALL {
                                    for &t in list {
                                        let reason = format!("{}={}", sort.name(), models[t].name);
                                        decisions.push(label(i, n, &reason, t));
                                    }
                                }
                            }
                        }
                        compiled.push(Compiled {
                            when,
                            scope: rule.scope,
                            target: rule.target.clone(),
                            first_decision,
                        });
                    }
                    (Box::default(), Some(compiled.into_boxed_slice()))
                }
            };
            let unlimited = |&p: &usize| pools.get(p).is_some_and(|d| d.context_window.is_none());
            let whole = (!own.is_empty() && own.iter().all(unlimited)).then(|| {
                let mut c = Chain::default();
                for &p in own.iter() {
                    c.push(i, p);
                }
                c
            });
            plans.push(ModelPlan {
                name: m.name.to_owned(),
                whole,
                pools: own,
                rules,
                bytes_per_token: m.bytes_per_token,
                default_max_tokens: m.default_max_tokens,
                shadow: m.shadow.cloned(),
                direct,
                seed: split::stable_hash(m.name.as_bytes()),
                sticky: match m.serve {
                    Serve::Route(r) => r.sticky,
                    Serve::Pools { .. } => None,
                },
            });
        }
        Ok(Self {
            by_name,
            models: plans.into_boxed_slice(),
            pools: pools
                .iter()
                .map(|p| PoolPlan {
                    name: p.name.to_owned(),
                    context_window: p.context_window,
                    cost: p.cost,
                })
                .collect(),
            decisions: decisions.into_boxed_slice(),
            classifiers,
        })
    }

    /// The model a request names, by public name or alias (case-sensitive, as OpenAI).
    pub fn resolve(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Every decision this router can make (labels and metric label values).
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    pub fn decision(&self, id: u32) -> Option<&Decision> {
        self.decisions.get(id as usize)
    }

    /// A model's pools in order (its own, then its fallbacks; none for a virtual model).
    pub fn pools(&self, model: usize) -> &[usize] {
        self.models.get(model).map_or(&[], |m| &m.pools)
    }

    /// A model's shadow, when it has one.
    pub fn shadow(&self, model: usize) -> Option<&Shadow> {
        self.models.get(model)?.shadow.as_ref()
    }

    pub fn is_virtual(&self, model: usize) -> bool {
        self.models.get(model).is_some_and(|m| m.rules.is_some())
    }

    /// Decides where a request goes. With `trace`, every step of the decision is written
    /// into it (`switchyard route`, `/admin/route`); without, nothing is allocated for a
    /// request that carries no preferences.
    ///
    /// `known` holds the classifications made so far for this request; a lexical one made
    /// here is added to it. [`Refusal::Unclassified`] asks the caller for one that calls a
    /// model.
    pub fn decide(
        &self,
        ask: &Ask<'_>,
        live: &dyn Live,
        known: &mut classify::Known,
        mut trace: Option<&mut Trace>,
    ) -> Result<Route, Refusal> {
        let plan = self.models.get(ask.model).ok_or(Refusal::NoRule)?;
        if let Some(t) = trace.as_deref_mut() {
            self.describe_request(ask, plan, t);
        }
        let mut route = match &plan.rules {
            None => {
                let chain = self
                    .chain(ask.model, ask)
                    .map_err(|b| rules::refusal(b, ask))?;
                Route {
                    requested: ask.model as u16,
                    decision: plan.direct,
                    chain,
                    shadow: None,
                }
            }
            Some(rules) => signals::with_scratch(|scratch| {
                let mut signals = Signals::new(ask, plan.bytes_per_token, scratch, self, known);
                self.by_rules(ask, rules, live, &mut signals, trace.as_deref_mut())
            })?,
        };
        for &m in &ask.prefs.models {
            let more = match &self.models[m].rules {
                None => self.chain(m, ask).ok(),
                Some(rules) => {
                    let sub = Ask { model: m, ..*ask };
                    let routed = signals::with_scratch(|scratch| {
                        let bytes_per_token = self.models[m].bytes_per_token;
                        let mut signals = Signals::new(&sub, bytes_per_token, scratch, self, known);
                        self.by_rules(&sub, rules, live, &mut signals, None)
                    });
                    match routed {
                        Err(Refusal::Unclassified(c)) => return Err(Refusal::Unclassified(c)),
                        r => r.ok().map(|r| r.chain),
                    }
                }
            };
            if let Some(more) = more {
                route.chain.extend(&more);
            }
        }
        let chosen = route.chain.get(0).map_or(ask.model, |s| s.model as usize);
        let (of, shadow) = match (&plan.shadow, &self.models[chosen].shadow) {
            (Some(s), _) => (ask.model, Some(s)),
            (None, s) => (chosen, s.as_ref()),
        };
        route.shadow = shadow
            .filter(|s| fastrand::f64() * 100.0 < s.percent)
            .map(|s| Mirror {
                of: of as u16,
                to: s.to as u16,
            });
        if let Some(t) = trace {
            let mut d = self.describe_route(&route);
            d.shadow = shadow.map(|s| explain::ShadowTrace {
                to: self.models[s.to].name.clone(),
                percent: s.percent,
                sampled: route.shadow.is_some(),
            });
            t.decision = Some(d);
        }
        Ok(route)
    }

    /// The text classifier `c` reads in a request (for a classification that calls a model).
    pub fn class_text(&self, c: u16, ask: &Ask<'_>) -> String {
        let Some(classifier) = self.classifiers.get(c) else {
            return String::new();
        };
        let mut known = classify::Known::default();
        signals::with_scratch(|scratch| {
            let mut signals = Signals::new(ask, 4.0, scratch, self, &mut known);
            signals.class_text(classifier.scope).to_owned()
        })
    }

    /// Classifier `c`'s verdict for the request once its conversation's earlier label is
    /// applied (`sticky: conversation` on the requested virtual model): the kept label stays
    /// unless `fresh` names another with at least the switch confidence; a conversation's
    /// first confident label is kept. Without stickiness, `fresh` as it is.
    pub fn settle(&self, ask: &Ask<'_>, c: u16, fresh: classify::Verdict) -> classify::Verdict {
        let Some(plan) = self.models.get(ask.model) else {
            return fresh;
        };
        let Some(switch) = plan.sticky else {
            return fresh;
        };
        let Some(conversation) = conversation_key(ask) else {
            return fresh;
        };
        let key = conversation ^ plan.seed.rotate_left(29);
        let memory = &self.classifiers.memory.sticky;
        let mut labels = memory.get(&key).unwrap_or_default();
        let kept = labels.iter().find(|(k, _)| *k == c).map(|&(_, l)| l);
        let confident = !fresh.source.is_fallback() && fresh.confidence >= switch;
        match (kept, fresh.label) {
            (Some(old), new) if new != Some(old) && !confident => classify::Verdict {
                label: Some(old),
                source: classify::Source::Sticky,
                ..fresh
            },
            (kept, Some(new))
                if kept != Some(new) && !fresh.source.is_fallback() && ask.remember =>
            {
                labels.retain(|(k, _)| *k != c);
                labels.push((c, new));
                memory.insert(key, labels);
                fresh
            }
            _ => fresh,
        }
    }

    /// The pool name, for traces and logs.
    pub fn pool_name(&self, pool: usize) -> &str {
        self.pools.get(pool).map_or("", |p| p.name.as_str())
    }

    /// The model name, for traces and logs.
    pub fn model_name(&self, model: usize) -> &str {
        self.models.get(model).map_or("", |m| m.name.as_str())
    }
}

/// What identifies a request's conversation across turns: its `x-session-id`, else its first
/// user message (chat only).
fn conversation_key(ask: &Ask<'_>) -> Option<u64> {
    if let Some(id) = ask.headers.get(SESSION_HEADER).filter(|v| !v.is_empty()) {
        return Some(split::stable_hash(id.as_bytes()));
    }
    if ask.endpoint != Endpoint::ChatCompletions {
        return None;
    }
    let messages = ask.body.get(ask.view.prompt_span.clone())?;
    conversation::first_user(messages).map(|m| xxhash_rust::xxh3::xxh3_64(m) | 1)
}

#[cfg(test)]
mod tests;
