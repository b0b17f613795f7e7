//! The trace behind a decision: each rule tried and why it held or not, the candidates with
//! their price, predicted TTFT and fit, the split, and the pick. `switchyard route` prints it
//! as text, `POST /admin/route` returns it as JSON. Only a traced decision fills one; the
//! request path passes `None` and pays nothing for it.

use std::fmt::Write as _;

use serde::Serialize;

use super::spec::{Sort, Target};
use super::{Ask, Chain, Live, ModelPlan, Route, Router};
use crate::openai::Endpoint;

#[derive(Debug, Default, Serialize)]
pub struct Trace {
    /// The public model the request named (canonical name).
    pub model: String,
    /// The name as the client wrote it (an alias, perhaps).
    pub requested_as: String,
    #[serde(rename = "virtual")]
    pub is_virtual: bool,
    pub request: RequestFacts,
    /// Rules of a virtual model, in order (those after the deciding one as not reached).
    pub rules: Vec<RuleTrace>,
    /// The candidates of the deciding rule, best first.
    pub candidates: Vec<CandidateTrace>,
    pub split: Option<SplitTrace>,
    pub decision: Option<DecisionTrace>,
    /// Each classification the decision made, with each method's answer and time.
    pub classes: Vec<ClassTrace>,
    /// Why the request would be refused, in OpenAI's error shape.
    pub refusal: Option<serde_json::Value>,
}

/// One classifier's verdict.
#[derive(Debug, Serialize)]
pub struct ClassTrace {
    pub classifier: String,
    /// The label the rules saw (`None`: no label).
    pub label: Option<String>,
    pub confidence: f32,
    /// voted | cached | sticky | low_confidence | no_answer
    pub source: crate::routing::classify::Source,
    /// Wall time of the whole classification.
    pub micros: u32,
    pub methods: Vec<MethodTrace>,
}

/// One method's answer within a classification.
#[derive(Debug, Serialize)]
pub struct MethodTrace {
    pub method: &'static str,
    pub label: Option<String>,
    pub confidence: f32,
    pub micros: u32,
    /// Why it gave no label: timeout | error | no_vectors | no_label.
    pub failure: Option<crate::routing::classify::Failure>,
}

impl Router {
    /// The classifications of a decision, for its trace.
    pub fn describe_classes(&self, known: &crate::routing::classify::Known) -> Vec<ClassTrace> {
        use crate::routing::classify::MethodKind;
        known
            .iter()
            .filter_map(|(c, v)| {
                let k = self.classifiers.get(c)?;
                let name = |l: Option<u16>| k.label_name(l).map(str::to_owned);
                Some(ClassTrace {
                    classifier: k.name.clone(),
                    label: name(v.label),
                    confidence: v.confidence,
                    source: v.source,
                    micros: v.micros,
                    methods: MethodKind::ALL
                        .iter()
                        .zip(&v.methods)
                        .filter_map(|(kind, m)| {
                            m.map(|m| MethodTrace {
                                method: kind.name(),
                                label: name(m.label),
                                confidence: m.confidence,
                                micros: m.micros,
                                failure: m.failure,
                            })
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RequestFacts {
    pub endpoint: &'static str,
    pub prompt_tokens_estimate: u64,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub tenant: Option<String>,
    /// Preferences the request carried (`models`, `provider`, TTFT target).
    pub models: Vec<String>,
    pub sort: Option<&'static str>,
    pub max_price: Option<[f64; 2]>,
    pub max_ttft_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RuleTrace {
    /// 1-based, as in the route header.
    pub rule: usize,
    /// The rule's conditions by name (none: the default rule).
    pub conditions: Vec<&'static str>,
    /// Each condition as evaluated (empty for a rule not reached).
    pub when: Vec<ConditionTrace>,
    pub target: String,
    /// `matched`, `not matched`, `matched, but …` or `not reached`.
    pub outcome: String,
}

#[derive(Debug, Serialize)]
pub struct ConditionTrace {
    pub condition: &'static str,
    pub holds: bool,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct CandidateTrace {
    pub model: String,
    /// The first pool of its chain that fits (none: it cannot take the request).
    pub pool: Option<String>,
    pub allowed: bool,
    pub fits: bool,
    pub within_max_price: bool,
    pub usable: bool,
    pub expected_cost_usd: Option<f64>,
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    pub predicted_ttft_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub context_window: Option<u64>,
    pub picked: bool,
}

#[derive(Debug, Serialize)]
pub struct SplitTrace {
    pub sticky: &'static str,
    /// Whether the request had a key for it (without one, the arm is drawn at random).
    pub keyed: bool,
    pub arms: Vec<ArmTrace>,
}

#[derive(Debug, Serialize)]
pub struct ArmTrace {
    pub model: String,
    pub weight: u32,
    pub eligible: bool,
    pub picked: bool,
}

#[derive(Debug, Serialize)]
pub struct DecisionTrace {
    pub model: String,
    /// 1-based rule, 0 for a model that serves itself.
    pub rule: usize,
    /// The `x-switchyard-route` value.
    pub route: String,
    /// Models and pools tried in order.
    pub chain: Vec<StepTrace>,
    pub shadow: Option<ShadowTrace>,
}

#[derive(Debug, Serialize)]
pub struct ShadowTrace {
    pub to: String,
    pub percent: f64,
    /// Whether this request was drawn to be mirrored.
    pub sampled: bool,
}

#[derive(Debug, Serialize)]
pub struct StepTrace {
    pub model: String,
    pub pool: String,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl Trace {
    /// The trace as lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = &self.request;
        let _ = writeln!(
            out,
            "request: model {:?}{} ({}), {}, ~{} prompt tokens, max_tokens {}, stream {}, tenant {}",
            self.model,
            if self.requested_as == self.model {
                String::new()
            } else {
                format!(" as {:?}", self.requested_as)
            },
            if self.is_virtual { "virtual" } else { "served by pools" },
            r.endpoint,
            r.prompt_tokens_estimate,
            opt(r.max_tokens),
            r.stream,
            r.tenant.as_deref().unwrap_or("-"),
        );
        if !r.models.is_empty()
            || r.sort.is_some()
            || r.max_price.is_some()
            || r.max_ttft_ms.is_some()
        {
            let _ = writeln!(
                out,
                "preferences: models [{}], sort {}, max price {}, max ttft {}",
                r.models.join(", "),
                opt(r.sort),
                r.max_price
                    .map_or_else(|| "-".to_owned(), |[p, c]| format!("{p}/{c} $/Mtok")),
                r.max_ttft_ms
                    .map_or_else(|| "-".to_owned(), |t| format!("{t} ms")),
            );
        }
        for c in &self.classes {
            let _ = writeln!(
                out,
                "class {}: {} (confidence {:.2}, {}, {} µs)",
                c.classifier,
                c.label.as_deref().unwrap_or("no label"),
                c.confidence,
                serde_json::to_value(c.source)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                c.micros
            );
            for m in &c.methods {
                let _ = writeln!(
                    out,
                    "           {}: {} ({:.2}, {} µs){}",
                    m.method,
                    m.label.as_deref().unwrap_or("-"),
                    m.confidence,
                    m.micros,
                    m.failure
                        .and_then(|f| serde_json::to_value(f).ok())
                        .and_then(|v| v.as_str().map(|s| format!(", {s}")))
                        .unwrap_or_default()
                );
            }
        }
        for rule in &self.rules {
            let when = if rule.conditions.is_empty() {
                "default".to_owned()
            } else {
                rule.conditions.join(" + ")
            };
            let _ = writeln!(
                out,
                "rule {:>2}  when {when} → {}: {}",
                rule.rule, rule.target, rule.outcome
            );
            for c in &rule.when {
                let _ = writeln!(
                    out,
                    "           {} {}: {}",
                    if c.holds { "✓" } else { "✗" },
                    c.condition,
                    c.detail
                );
            }
        }
        if let Some(s) = &self.split {
            let _ = writeln!(
                out,
                "split (sticky {}, {}):",
                s.sticky,
                if s.keyed {
                    "keyed"
                } else {
                    "no key: drawn by weight"
                }
            );
            for a in &s.arms {
                let _ = writeln!(
                    out,
                    "  {} {:<24} weight {:>4}{}",
                    if a.picked { "→" } else { " " },
                    a.model,
                    a.weight,
                    if a.eligible { "" } else { "  (not eligible)" }
                );
            }
        }
        if !self.candidates.is_empty() {
            let _ = writeln!(
                out,
                "candidates (best first):\n    {:<24} {:<16} {:>12} {:>10} {:>10} {:>9}  notes",
                "model", "pool", "cost $", "ttft ms", "tok/s", "context"
            );
            for c in &self.candidates {
                let mut notes = Vec::new();
                for (ok, what) in [
                    (c.allowed, "not allowed"),
                    (c.fits, "does not fit"),
                    (c.within_max_price, "over max price"),
                    (c.usable, "no usable server"),
                ] {
                    if !ok {
                        notes.push(what);
                    }
                }
                let _ = writeln!(
                    out,
                    "  {} {:<24} {:<16} {:>12} {:>10} {:>10} {:>9}  {}",
                    if c.picked { "→" } else { " " },
                    c.model,
                    c.pool.as_deref().unwrap_or("-"),
                    c.expected_cost_usd
                        .map_or_else(|| "-".to_owned(), |d| format!("{d:.6}")),
                    c.predicted_ttft_ms
                        .map_or_else(|| "unknown".to_owned(), |t| format!("{t:.1}")),
                    c.tokens_per_s
                        .map_or_else(|| "unknown".to_owned(), |t| format!("{t:.1}")),
                    opt(c.context_window),
                    notes.join(", ")
                );
            }
        }
        match (&self.decision, &self.refusal) {
            (Some(d), _) => {
                let chain: Vec<String> = d
                    .chain
                    .iter()
                    .map(|s| format!("{} (pool {})", s.model, s.pool))
                    .collect();
                let _ = writeln!(
                    out,
                    "decision: {} (x-switchyard-route: {})\nchain: {}",
                    d.model,
                    d.route,
                    chain.join(" → ")
                );
                if let Some(s) = &d.shadow {
                    let _ = writeln!(
                        out,
                        "shadow: {} % to {} (this request: {})",
                        s.percent,
                        s.to,
                        if s.sampled { "mirrored" } else { "not drawn" }
                    );
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "refused: {e}");
            }
            (None, None) => {}
        }
        out
    }
}

// What a traced decision writes; only a traced decision calls these.
impl Router {
    pub(super) fn describe_target(&self, target: &Target) -> String {
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

    pub(super) fn describe_blocked(&self, b: Blocked) -> String {
        match b {
            Blocked::NotAllowed => "no target is allowed for this tenant".to_owned(),
            Blocked::OverMaxPrice => "every pool is over the request's max_price".to_owned(),
            Blocked::DoesNotFit(needed, window) => {
                format!("~{needed} tokens do not fit (largest context window {window})")
            }
        }
    }

    pub(super) fn describe_request(&self, ask: &Ask<'_>, plan: &ModelPlan, t: &mut Trace) {
        let prefs = ask.prefs;
        t.model = plan.name.clone();
        t.requested_as = ask.name.to_owned();
        t.is_virtual = plan.rules.is_some();
        t.request = RequestFacts {
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

    pub(super) fn describe_candidate(
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

    pub(super) fn describe_route(&self, route: &Route) -> DecisionTrace {
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

/// Why a matching rule could not take the request; the strongest reason of all is the
/// refusal when no rule can.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(super) enum Blocked {
    NotAllowed,
    OverMaxPrice,
    /// Needed tokens, and the largest window seen.
    DoesNotFit(u64, u64),
}

impl Blocked {
    pub(super) fn max_of(self, other: Blocked) -> Blocked {
        if other > self {
            other
        } else {
            self
        }
    }
}
