//! A virtual model's rules applied to a request: the first rule whose conditions hold and
//! whose target can take the request decides. A target is a model, a split (split.rs) or a
//! candidate list (select.rs); a model's chain keeps only the pools whose context window holds
//! the request and whose prices are within its maximum. When no rule can take the request, the
//! strongest reason one could not is the refusal: too large before too dear before not allowed.

use http::HeaderValue;

use super::explain::{ArmTrace, Blocked, CandidateTrace, ConditionTrace, RuleTrace, SplitTrace};
use super::matchers::Matcher;
use super::select::{self, Facts};
use super::signals::Signals;
use super::spec::{Sort, Sticky, Target};
use super::split::{self, Arm};
use super::{Ask, Chain, Compiled, Live, Refusal, Route, Router, Trace, SESSION_HEADER};
use crate::openai::Endpoint;

impl Router {
    /// The first rule that holds and can take the request decides.
    pub(super) fn by_rules(
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
            if let Some(c) = signals.pending {
                return Err(Refusal::Unclassified(c));
            }
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
    pub(super) fn take(
        &self,
        ask: &Ask<'_>,
        rule: &Compiled,
        live: &dyn Live,
        trace: Option<&mut Trace>,
    ) -> Result<Route, Blocked> {
        let route = |decision: u32, chain: Chain| Route {
            requested: ask.model as u16,
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
                let mut seeds = [Arm { seed: 0, weight: 0 }; split::MAX_ARMS];
                for (slot, &(m, w)) in seeds.iter_mut().zip(arms) {
                    *slot = Arm {
                        seed: self.models[m].seed,
                        weight: w,
                    };
                }
                let seeds = &seeds[..arms.len().min(split::MAX_ARMS)];
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
    pub(super) fn chain(&self, model: usize, ask: &Ask<'_>) -> Result<Chain, Blocked> {
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
    pub(super) fn needed_tokens(&self, model: usize, ask: &Ask<'_>) -> u64 {
        let prompt =
            (ask.view.prompt_span.len() as f64 / self.models[model].bytes_per_token).ceil() as u64;
        prompt + ask.view.max_tokens.unwrap_or(1).max(1)
    }

    /// A candidate judged on the pool its request would go to: the first of its chain with a
    /// usable server (the first at all when none has).
    pub(super) fn facts(
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
}

/// The refusal for the strongest reason no rule or pool could take a request.
pub(super) fn refusal(b: Blocked, ask: &Ask<'_>) -> Refusal {
    match b {
        Blocked::NotAllowed => Refusal::NotAllowed,
        Blocked::OverMaxPrice => Refusal::OverMaxPrice {
            max: ask.prefs.max_price.unwrap_or_default(),
        },
        Blocked::DoesNotFit(needed, largest) => Refusal::ContextLengthExceeded { needed, largest },
    }
}
