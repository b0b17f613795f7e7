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
//! | `spec.rs` | the typed config of rules, splits, candidates and shadows |
//! | `matchers.rs` | conditions compiled once per snapshot (keywords, regexes, ...) |
//! | `signals.rs`, `conversation.rs` | what the rules read about a request, lazily |
//! | `split.rs` | weighted rendezvous hashing of sticky keys over split arms |
//! | `select.rs` | candidates ranked by price, latency or throughput |
//! | `prefs.rs` | the request's own `models`, `provider` and TTFT target |
//! | `explain.rs` | the trace of a decision (`switchyard route`, `/admin/route`) |

pub mod conversation;
mod cost;
pub mod explain;
pub mod matchers;
pub mod prefs;
pub mod select;
mod signals;
pub mod spec;
pub mod split;

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};

pub use cost::Cost;
pub use explain::Trace;
pub use prefs::Prefs;

use crate::openai::{Endpoint, RequestView};
use explain::{
    ArmTrace, CandidateTrace, ConditionTrace, DecisionTrace, RuleTrace, SplitTrace, StepTrace,
};
use matchers::Matcher;
use select::Facts;
use signals::Signals;
use spec::{Rules, Scope, Serve, Shadow, Sort, Sticky, Target};
use split::Arm;

/// The header whose value keeps a session on one split arm (the body's `user` otherwise).
pub const SESSION_HEADER: &str = "x-session-id";

/// One step of a route: a model and one of its pools (indices into the runtime's lists).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub model: u32,
    pub pool: u32,
}

/// The steps a request tries in order, without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chain {
    steps: [Step; Chain::CAPACITY],
    len: u8,
}

impl Chain {
    /// More steps than a request may ever take attempts (6) leaves room for steps skipped
    /// because their pool has no usable server.
    pub const CAPACITY: usize = 8;

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<Step> {
        self.steps[..self.len()].get(i).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps[..self.len()].iter().copied()
    }

    fn has_pool(&self, pool: usize) -> bool {
        self.iter().any(|s| s.pool as usize == pool)
    }

    /// Adds a step unless its pool is already in the chain or the chain is full.
    fn push(&mut self, model: usize, pool: usize) -> bool {
        if self.has_pool(pool) || self.len() == Self::CAPACITY {
            return false;
        }
        self.steps[self.len()] = Step {
            model: model as u32,
            pool: pool as u32,
        };
        self.len += 1;
        true
    }

    fn extend(&mut self, other: &Chain) {
        for s in other.iter() {
            self.push(s.model as usize, s.pool as usize);
        }
    }
}

/// A routing decision: what the proxy carries through a request.
#[derive(Debug, Clone)]
pub struct Route {
    /// The public model the client named (index; virtual or not).
    pub requested: usize,
    /// Index into [`Router::decisions`]: the label and metric of this decision.
    pub decision: u32,
    /// The (model, pool) steps to try in order; never empty.
    pub chain: Chain,
    /// A model to mirror the request to (sampled by the shadow's percentage).
    pub shadow: Option<usize>,
}

/// One possible decision, with its label. Built once per snapshot, so that a request's
/// `x-switchyard-route` is a clone of a prebuilt value.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `<model>#<rule>:<reason>`, e.g. `auto#3:keywords`, `auto#5:split=b`,
    /// `auto#6:price=a`, `llama#0:direct`.
    pub label: String,
    pub header: Option<HeaderValue>,
    /// The model the request named (index).
    pub model: usize,
    /// 1-based rule; 0 for a model serving itself.
    pub rule: usize,
    /// The model the decision sends to (index).
    pub target: usize,
}

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
    pub allowed: &'a dyn Fn(usize) -> bool,
    pub prefs: &'a Prefs,
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
}

/// Why a matching rule could not take the request; the strongest reason of all is the
/// refusal when no rule can.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Blocked {
    NotAllowed,
    OverMaxPrice,
    /// Needed tokens, and the largest window seen.
    DoesNotFit(u64, u64),
}

impl Router {
    /// Compiles every virtual model's rules. Names and indices come validated.
    pub fn build(models: &[ModelDef<'_>], pools: &[PoolDef<'_>]) -> Result<Self, BuildError> {
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

    pub fn is_virtual(&self, model: usize) -> bool {
        self.models.get(model).is_some_and(|m| m.rules.is_some())
    }

    /// Decides where a request goes. With `trace`, every step of the decision is written
    /// into it (`switchyard route`, `/admin/route`); without, nothing is allocated for a
    /// request that carries no preferences.
    pub fn decide(
        &self,
        ask: &Ask<'_>,
        live: &dyn Live,
        mut trace: Option<&mut Trace>,
    ) -> Result<Route, Refusal> {
        let plan = self.models.get(ask.model).ok_or(Refusal::NoRule)?;
        if let Some(t) = trace.as_deref_mut() {
            self.describe_request(ask, plan, t);
        }
        let mut route = match &plan.rules {
            None => {
                let chain = self.chain(ask.model, ask).map_err(|b| refusal(b, ask))?;
                Route {
                    requested: ask.model,
                    decision: plan.direct,
                    chain,
                    shadow: None,
                }
            }
            Some(rules) => signals::with_scratch(|scratch| {
                let mut signals = Signals::new(ask, plan.bytes_per_token, scratch);
                self.by_rules(ask, rules, live, &mut signals, trace.as_deref_mut())
            })?,
        };
        for &m in &ask.prefs.models {
            let more = match &self.models[m].rules {
                None => self.chain(m, ask).ok(),
                Some(rules) => {
                    let sub = Ask { model: m, ..*ask };
                    signals::with_scratch(|scratch| {
                        let mut signals =
                            Signals::new(&sub, self.models[m].bytes_per_token, scratch);
                        self.by_rules(&sub, rules, live, &mut signals, None)
                    })
                    .ok()
                    .map(|r| r.chain)
                }
            };
            if let Some(more) = more {
                route.chain.extend(&more);
            }
        }
        let chosen = route.chain.get(0).map_or(ask.model, |s| s.model as usize);
        let shadow = plan.shadow.as_ref().or(self.models[chosen].shadow.as_ref());
        route.shadow = shadow
            .filter(|s| fastrand::f64() * 100.0 < s.percent)
            .map(|s| s.to);
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

    /// The first rule that holds and can take the request decides.
    fn by_rules(
        &self,
        ask: &Ask<'_>,
        rules: &[Compiled],
        live: &dyn Live,
        signals: &mut Signals<'_, '_>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Route, Refusal> {
        let mut blocked: Option<Blocked> = None;
        for (r, rule) in rules.iter().enumerate() {
            let holds = match trace.as_deref_mut() {
                None => rule.when.iter().all(|m| m.holds(signals, rule.scope)),
                Some(t) => {
                    let when: Vec<ConditionTrace> = rule
                        .when
                        .iter()
                        .map(|m| ConditionTrace {
                            condition: m.name(),
                            holds: m.holds(signals, rule.scope),
                            detail: m.explain(signals, rule.scope),
                        })
                        .collect();
                    let holds = when.iter().all(|c| c.holds);
                    t.rules.push(RuleTrace {
                        rule: r + 1,
                        conditions: rule.when.iter().map(Matcher::name).collect(),
                        when,
                        target: self.describe_target(&rule.target),
                        outcome: if holds { "matched" } else { "not matched" }.to_owned(),
                    });
                    holds
                }
            };
            if !holds {
                continue;
            }
            match self.take(ask, rule, live, trace.as_deref_mut()) {
                Ok(route) => {
                    if let Some(t) = trace.as_deref_mut() {
                        for (k, later) in rules.iter().enumerate().skip(r + 1) {
                            t.rules.push(RuleTrace {
                                rule: k + 1,
                                conditions: later.when.iter().map(Matcher::name).collect(),
                                when: Vec::new(),
                                target: self.describe_target(&later.target),
                                outcome: "not reached".to_owned(),
                            });
                        }
                    }
                    return Ok(route);
                }
                Err(why) => {
                    if let Some(rt) = trace.as_deref_mut().and_then(|t| t.rules.last_mut()) {
                        rt.outcome = format!("matched, but {}", self.describe_blocked(why));
                    }
                    blocked = Some(match blocked {
                        Some(b) if b >= why => b,
                        _ => why,
                    });
                }
            }
        }
        Err(blocked.map_or(Refusal::NoRule, |b| refusal(b, ask)))
    }

    /// The route of a rule whose conditions hold, or why it cannot take the request.
    fn take(
        &self,
        ask: &Ask<'_>,
        rule: &Compiled,
        live: &dyn Live,
        trace: Option<&mut Trace>,
    ) -> Result<Route, Blocked> {
        let route = |decision: u32, chain: Chain| Route {
            requested: ask.model,
            decision,
            chain,
            shadow: None,
        };
        match &rule.target {
            Target::Model(m) => {
                if !(ask.allowed)(*m) {
                    return Err(Blocked::NotAllowed);
                }
                Ok(route(rule.first_decision, self.chain(*m, ask)?))
            }
            Target::Split { arms, sticky } => {
                let key = match sticky {
                    Sticky::Session => ask
                        .headers
                        .get(SESSION_HEADER)
                        .map(HeaderValue::as_bytes)
                        .filter(|v| !v.is_empty())
                        .or(ask.view.user.as_deref().map(str::as_bytes))
                        .map(split::stable_hash),
                    Sticky::Tenant => ask.tenant.map(|t| split::stable_hash(t.as_bytes())),
                    Sticky::None => None,
                };
                let mut seeds = [Arm { seed: 0, weight: 0 }; 16];
                for (slot, &(m, w)) in seeds.iter_mut().zip(arms) {
                    *slot = Arm {
                        seed: self.models[m].seed,
                        weight: w,
                    };
                }
                let seeds = &seeds[..arms.len().min(16)];
                let mut blocked = Blocked::NotAllowed;
                let eligible = |i: usize| {
                    let m = arms[i].0;
                    (ask.allowed)(m) && self.chain(m, ask).is_ok()
                };
                let picked = split::pick(seeds, key, eligible);
                if let Some(t) = trace {
                    t.split = Some(SplitTrace {
                        sticky: match sticky {
                            Sticky::Session => "session",
                            Sticky::Tenant => "tenant",
                            Sticky::None => "none",
                        },
                        keyed: key.is_some(),
                        arms: arms
                            .iter()
                            .enumerate()
                            .map(|(i, &(m, w))| ArmTrace {
                                model: self.models[m].name.clone(),
                                weight: w,
                                eligible: eligible(i),
                                picked: picked == Some(i),
                            })
                            .collect(),
                    });
                }
                let Some(i) = picked else {
                    for &(m, _) in arms {
                        if (ask.allowed)(m) {
                            if let Err(b) = self.chain(m, ask) {
                                blocked = blocked.max_of(b);
                            }
                        }
                    }
                    return Err(blocked);
                };
                let m = arms[i].0;
                Ok(route(rule.first_decision + i as u32, self.chain(m, ask)?))
            }
            Target::Candidates { models, prefer } => {
                let sort = ask.prefs.sort.unwrap_or(*prefer);
                let mut facts = [Facts::default(); Chain::CAPACITY];
                let mut chains = [None::<Chain>; Chain::CAPACITY];
                let mut described = Vec::new();
                let mut n = 0;
                let mut blocked = Blocked::NotAllowed;
                for (position, &m) in models.iter().enumerate().take(Chain::CAPACITY) {
                    let allowed = (ask.allowed)(m);
                    let chain = if allowed {
                        self.chain(m, ask)
                    } else {
                        Err(Blocked::NotAllowed)
                    };
                    if trace.is_some() {
                        described.push(self.describe_candidate(ask, m, allowed, &chain, live));
                    }
                    match chain {
                        Ok(chain) => {
                            facts[n] = self.facts(ask, m, position, &chain, live);
                            chains[position] = Some(chain);
                            n += 1;
                        }
                        Err(b) => blocked = blocked.max_of(b),
                    }
                }
                let ranked = &mut facts[..n];
                select::rank(ranked, sort, ask.prefs.max_ttft_ms);
                if let Some(t) = trace {
                    // Best first, then those that cannot take the request, in list order.
                    let rank_of = |p: usize| ranked.iter().position(|f| f.position == p);
                    let mut order: Vec<(usize, CandidateTrace)> =
                        described.into_iter().enumerate().collect();
                    order.sort_by_key(|(p, _)| rank_of(*p).unwrap_or(usize::MAX));
                    t.candidates = order.into_iter().map(|(_, c)| c).collect();
                    if let Some(first) = t.candidates.first_mut().filter(|_| n > 0) {
                        first.picked = true;
                    }
                }
                let best = ranked.first().ok_or(blocked)?.position;
                let mut chain = Chain::default();
                for f in ranked.iter() {
                    if let Some(c) = &chains[f.position] {
                        chain.extend(c);
                    }
                }
                let sort_index = Sort::ALL.iter().position(|&s| s == sort).unwrap_or(0);
                let decision = rule.first_decision + (sort_index * models.len() + best) as u32;
                Ok(route(decision, chain))
            }
        }
    }

    /// A model's pools that can take the request: those whose context window holds the
    /// prompt estimate plus `max_tokens` and whose prices are within the request's maximum.
    fn chain(&self, model: usize, ask: &Ask<'_>) -> Result<Chain, Blocked> {
        let plan = &self.models[model];
        if let (Some(whole), None) = (plan.whole, ask.prefs.max_price) {
            return Ok(whole);
        }
        let needed = self.needed_tokens(model, ask);
        let mut chain = Chain::default();
        let mut blocked = Blocked::NotAllowed;
        for &p in plan.pools.iter() {
            let pool = &self.pools[p];
            if let Some(window) = pool.context_window.filter(|&w| w < needed) {
                blocked = blocked.max_of(Blocked::DoesNotFit(needed, window));
                continue;
            }
            if ask
                .prefs
                .max_price
                .is_some_and(|max| !pool.cost.within(&max))
            {
                blocked = blocked.max_of(Blocked::OverMaxPrice);
                continue;
            }
            chain.push(model, p);
        }
        if chain.is_empty() {
            Err(blocked)
        } else {
            Ok(chain)
        }
    }

    /// Tokens a request needs room for on `model`: its prompt estimate plus `max_tokens` (at
    /// least one token to generate).
    fn needed_tokens(&self, model: usize, ask: &Ask<'_>) -> u64 {
        let prompt =
            (ask.view.prompt_span.len() as f64 / self.models[model].bytes_per_token).ceil() as u64;
        prompt + ask.view.max_tokens.unwrap_or(1).max(1)
    }

    /// A candidate judged on the pool its request would go to: the first of its chain with a
    /// usable server (the first at all when none has).
    fn facts(
        &self,
        ask: &Ask<'_>,
        model: usize,
        position: usize,
        chain: &Chain,
        live: &dyn Live,
    ) -> Facts {
        let plan = &self.models[model];
        let pool = chain
            .iter()
            .find(|s| live.usable(s.pool as usize))
            .or(chain.get(0))
            .map_or(0, |s| s.pool as usize);
        let prompt = (ask.view.prompt_span.len() as f64 / plan.bytes_per_token).ceil() as u64;
        let completion = match ask.endpoint {
            Endpoint::Embeddings => 0,
            _ => ask.view.max_tokens.unwrap_or(plan.default_max_tokens),
        };
        Facts {
            position,
            pool,
            cost_e6: self.pools[pool].cost.dollars_e6(prompt, completion),
            ttft_ms: live.ttft_ms(pool),
            tokens_per_s: live.tokens_per_s(pool),
            usable: chain.iter().any(|s| live.usable(s.pool as usize)),
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

/// The refusal for the strongest reason no rule or pool could take a request.
fn refusal(b: Blocked, ask: &Ask<'_>) -> Refusal {
    match b {
        Blocked::NotAllowed => Refusal::NotAllowed,
        Blocked::OverMaxPrice => Refusal::OverMaxPrice {
            max: ask.prefs.max_price.unwrap_or_default(),
        },
        Blocked::DoesNotFit(needed, largest) => Refusal::ContextLengthExceeded { needed, largest },
    }
}

impl Blocked {
    fn max_of(self, other: Blocked) -> Blocked {
        if other > self {
            other
        } else {
            self
        }
    }
}

// Traces: only a traced decision calls these.
impl Router {
    fn describe_target(&self, target: &Target) -> String {
        let name = |m: usize| self.models[m].name.as_str();
        match target {
            Target::Model(m) => name(*m).to_owned(),
            Target::Split { arms, .. } => format!(
                "split {}",
                arms.iter()
                    .map(|&(m, w)| format!("{}:{w}", name(m)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
            Target::Candidates { models, prefer } => format!(
                "best by {} of [{}]",
                prefer.name(),
                models
                    .iter()
                    .map(|&m| name(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn describe_blocked(&self, b: Blocked) -> String {
        match b {
            Blocked::NotAllowed => "no target is allowed for this tenant".to_owned(),
            Blocked::OverMaxPrice => "every pool is over the request's max_price".to_owned(),
            Blocked::DoesNotFit(needed, window) => {
                format!("~{needed} tokens do not fit (largest context window {window})")
            }
        }
    }

    fn describe_request(&self, ask: &Ask<'_>, plan: &ModelPlan, t: &mut Trace) {
        let prefs = ask.prefs;
        t.model = plan.name.clone();
        t.requested_as = ask.name.to_owned();
        t.is_virtual = plan.rules.is_some();
        t.request = explain::RequestFacts {
            endpoint: match ask.endpoint {
                Endpoint::ChatCompletions => "chat/completions",
                Endpoint::Completions => "completions",
                Endpoint::Embeddings => "embeddings",
            },
            prompt_tokens_estimate: (ask.view.prompt_span.len() as f64 / plan.bytes_per_token)
                .ceil() as u64,
            max_tokens: ask.view.max_tokens,
            stream: ask.view.stream,
            tenant: ask.tenant.map(str::to_owned),
            models: prefs
                .models
                .iter()
                .map(|&m| self.models[m].name.clone())
                .collect(),
            sort: prefs.sort.map(Sort::name),
            max_price: prefs
                .max_price
                .map(|c| [c.input_per_mtok, c.output_per_mtok]),
            max_ttft_ms: prefs.max_ttft_ms,
        };
    }

    fn describe_candidate(
        &self,
        ask: &Ask<'_>,
        m: usize,
        allowed: bool,
        chain: &Result<Chain, Blocked>,
        live: &dyn Live,
    ) -> CandidateTrace {
        let plan = &self.models[m];
        let mut c = CandidateTrace {
            model: plan.name.clone(),
            allowed,
            fits: !matches!(chain, Err(Blocked::DoesNotFit(..))),
            within_max_price: !matches!(chain, Err(Blocked::OverMaxPrice)),
            ..Default::default()
        };
        if let Ok(chain) = chain {
            let f = self.facts(ask, m, 0, chain, live);
            let p = &self.pools[f.pool];
            c.pool = Some(p.name.clone());
            c.usable = f.usable;
            c.expected_cost_usd = Some(f.cost_e6 / 1e6);
            c.input_per_mtok = Some(p.cost.input_per_mtok);
            c.output_per_mtok = Some(p.cost.output_per_mtok);
            c.predicted_ttft_ms = f.ttft_ms;
            c.tokens_per_s = f.tokens_per_s;
            c.context_window = p.context_window;
        }
        c
    }

    fn describe_route(&self, route: &Route) -> DecisionTrace {
        let d = self.decision(route.decision);
        DecisionTrace {
            model: route
                .chain
                .get(0)
                .map_or_else(String::new, |s| self.models[s.model as usize].name.clone()),
            rule: d.map_or(0, |d| d.rule),
            route: d.map_or_else(String::new, |d| d.label.clone()),
            chain: route
                .chain
                .iter()
                .map(|s| StepTrace {
                    model: self.models[s.model as usize].name.clone(),
                    pool: self.pools[s.pool as usize].name.clone(),
                })
                .collect(),
            shadow: None,
        }
    }
}

#[cfg(test)]
mod tests;
