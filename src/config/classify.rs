//! `classifiers:` → the typed [`ClassifierSpec`]s, `when.class` → a condition on them, and
//! `models.X.sticky`; every problem at its YAML path. Classifiers and labels keep the file's
//! (sorted) order: that position is their index.

use std::time::Duration;

use super::file::{FileClass, FileClassifier, FileConfig, FileModel, FileNames};
use super::values::{duration, fraction, positive, Errors};
use super::Model;
use crate::routing::classify::lexical::MAX_LABELS;
use crate::routing::classify::spec::{
    CacheSpec, EmbeddingSpec, LabelSpec, LlmSpec, Method, MethodKind,
};
use crate::routing::classify::{ClassifierSpec, TextScope};
use crate::routing::spec::{Condition, Rule};

/// Classifications kept per classifier by default (`cache.entries`).
const CACHE_ENTRIES: u64 = 100_000;
/// How long a classification is kept by default (`cache.ttl`).
const CACHE_TTL: Duration = Duration::from_secs(600);
/// Wall time of a classification by default (`budget`).
const BUDGET: Duration = Duration::from_millis(100);
/// `switch_confidence` by default.
const SWITCH_CONFIDENCE: f64 = 0.8;

/// Every classifier of the file; `models` are the validated models (names and aliases).
pub(super) fn validate(
    errs: &mut Errors,
    file: &FileConfig,
    models: &[Model],
) -> Vec<ClassifierSpec> {
    if file.classifiers.len() > usize::from(u16::MAX) {
        errs.push("classifiers", "too many classifiers");
    }
    file.classifiers
        .iter()
        .map(|(name, c)| classifier(errs, &format!("classifiers.{name}"), name, c, models))
        .collect()
}

fn classifier(
    errs: &mut Errors,
    at: &str,
    name: &str,
    c: &FileClassifier,
    models: &[Model],
) -> ClassifierSpec {
    if c.labels.len() < 2 {
        errs.push(format!("{at}.labels"), "needs at least two labels");
    }
    if c.labels.len() > MAX_LABELS {
        errs.push(
            format!("{at}.labels"),
            format!("at most {MAX_LABELS} labels"),
        );
    }
    let labels: Vec<LabelSpec> = c
        .labels
        .iter()
        .map(|(label, l)| {
            if l.examples.iter().all(|e| e.trim().is_empty()) {
                errs.push(
                    format!("{at}.labels.{label}.examples"),
                    "needs at least one example",
                );
            }
            LabelSpec {
                name: label.clone(),
                examples: l.examples.clone(),
                description: l.description.clone(),
            }
        })
        .collect();
    let model = |errs: &mut Errors, path: String, wanted: &str| {
        let found = super::tenants::model_index(models, wanted);
        match found.map(|i| (i, models[i].serve.is_virtual())) {
            Some((i, false)) => Some(i),
            Some((_, true)) => {
                errs.push(path, format!("{wanted:?} is a virtual model; a classifier calls a model served by a pool"));
                None
            }
            None => {
                errs.push(path, format!("no model or alias named {wanted:?}"));
                None
            }
        }
    };
    let embedding = c.embedding.as_ref().and_then(|e| {
        let k = positive(errs, &format!("{at}.embedding.k"), e.k, 5) as usize;
        model(errs, format!("{at}.embedding.model"), &e.model)
            .map(|model| EmbeddingSpec { model, k })
    });
    let llm = c.llm.as_ref().and_then(|l| {
        let max_tokens = positive(errs, &format!("{at}.llm.max_tokens"), l.max_tokens, 8);
        model(errs, format!("{at}.llm.model"), &l.model).map(|model| LlmSpec {
            model,
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        })
    });
    let method = match c.method.as_deref() {
        None => Method::Lexical,
        Some(m) => Method::from_name(m).unwrap_or_else(|| {
            errs.push(
                format!("{at}.method"),
                format!("{m:?} is not one of: {}", Method::NAMES.join(", ")),
            );
            Method::Lexical
        }),
    };
    let configured = [true, c.embedding.is_some(), c.llm.is_some()];
    let weights = match method {
        Method::Lexical => [1.0, 0.0, 0.0],
        Method::Embedding => [0.0, 1.0, 0.0],
        Method::Llm => [0.0, 0.0, 1.0],
        Method::Ensemble => ensemble(errs, at, c, configured),
    };
    for kind in [MethodKind::Embedding, MethodKind::Llm] {
        if weights[kind as usize] > 0.0 && !configured[kind as usize] {
            errs.push(
                format!("{at}.{}", kind.name()),
                format!("method {} needs this section (its model)", method.name()),
            );
        }
    }
    if c.ensemble.is_some() && method != Method::Ensemble {
        errs.push(
            format!("{at}.ensemble"),
            "applies to `method: ensemble` only",
        );
    }
    let fallback = c.fallback.as_deref().and_then(|f| {
        let i = c.labels.keys().position(|l| l == f);
        if i.is_none() {
            errs.push(
                format!("{at}.fallback"),
                format!("{f:?} is not one of its labels"),
            );
        }
        i.map(|i| i as u16)
    });
    let scope = match (c.scope.as_deref(), c.turns) {
        (None | Some("last_user"), None) => TextScope::LastUser,
        (Some("conversation"), turns) => TextScope::Conversation {
            turns: turns.map_or(0, |t| {
                u32::try_from(positive(errs, &format!("{at}.turns"), Some(t), 1))
                    .unwrap_or(u32::MAX)
            }),
        },
        (None | Some("last_user"), Some(_)) => {
            errs.push(
                format!("{at}.turns"),
                "applies to `scope: conversation` only",
            );
            TextScope::LastUser
        }
        (Some(s), _) => {
            errs.push(
                format!("{at}.scope"),
                format!("{s:?} is not one of: last_user, conversation"),
            );
            TextScope::LastUser
        }
    };
    let cache = c.cache.as_ref().map_or(
        Some(CacheSpec {
            entries: CACHE_ENTRIES,
            ttl: CACHE_TTL,
        }),
        |k| {
            Some(CacheSpec {
                entries: positive(
                    errs,
                    &format!("{at}.cache.entries"),
                    k.entries,
                    CACHE_ENTRIES,
                ),
                ttl: duration(
                    errs,
                    &format!("{at}.cache.ttl"),
                    k.ttl.as_deref(),
                    CACHE_TTL.as_secs(),
                ),
            })
        },
    );
    let budget = match c.budget.as_deref() {
        None => BUDGET,
        Some(b) => duration(errs, &format!("{at}.budget"), Some(b), 1),
    };
    ClassifierSpec {
        name: name.to_owned(),
        labels,
        method,
        embedding,
        llm,
        weights,
        min_confidence: fraction(
            errs,
            &format!("{at}.min_confidence"),
            c.min_confidence,
            0.0,
            0.0..=1.0,
        ) as f32,
        fallback,
        budget,
        scope,
        cache,
    }
}

/// The weights of `method: ensemble`: as given, else 1 for every configured method.
fn ensemble(errs: &mut Errors, at: &str, c: &FileClassifier, configured: [bool; 3]) -> [f32; 3] {
    let Some(given) = &c.ensemble else {
        return configured.map(|on| if on { 1.0 } else { 0.0 });
    };
    let mut w = [0.0f32; 3];
    for (method, weight) in given {
        let path = format!("{at}.ensemble.{method}");
        let Some(kind) = MethodKind::ALL.into_iter().find(|k| k.name() == method) else {
            errs.push(
                path,
                format!("{method:?} is not one of: lexical, embedding, llm"),
            );
            continue;
        };
        if !weight.is_finite() || *weight < 0.0 {
            errs.push(path, "must be 0 or more");
            continue;
        }
        w[kind as usize] = *weight as f32;
    }
    if w.iter().all(|x| *x == 0.0) {
        errs.push(format!("{at}.ensemble"), "gives no method a weight above 0");
    }
    w
}

/// `when.class` at `at`.
pub(super) fn condition(
    errs: &mut Errors,
    at: &str,
    class: &FileClass,
    file: &FileConfig,
) -> Condition {
    if class.0.is_empty() {
        errs.push(at, "names no classifier");
    }
    let mut out = Vec::with_capacity(class.0.len());
    for (name, wanted) in &class.0 {
        let path = format!("{at}.{name}");
        let Some((c, classifier)) = file
            .classifiers
            .iter()
            .enumerate()
            .find(|(_, (n, _))| *n == name)
            .map(|(i, (_, c))| (i, c))
        else {
            errs.push(path, format!("no classifier named {name:?}"));
            continue;
        };
        let names = wanted.to_vec();
        if names.is_empty() {
            errs.push(&path, "lists no label");
        }
        let mut labels = Vec::with_capacity(names.len());
        for (k, label) in names.iter().enumerate() {
            match classifier.labels.keys().position(|l| l == label) {
                Some(i) => labels.push(i as u16),
                None => errs.push(
                    match wanted {
                        FileNames::One(_) => path.clone(),
                        FileNames::List(_) => format!("{path}[{k}]"),
                    },
                    format!(
                        "{label:?} is not a label of {name} ({})",
                        classifier
                            .labels
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        out.push((c as u16, labels));
    }
    Condition::Class(out)
}

/// `models.X.sticky` and `switch_confidence` of a virtual model at `at`.
pub(super) fn sticky(errs: &mut Errors, at: &str, m: &FileModel, rules: &[Rule]) -> Option<f32> {
    let switch = fraction(
        errs,
        &format!("{at}.switch_confidence"),
        m.switch_confidence,
        SWITCH_CONFIDENCE,
        0.0..=1.0,
    ) as f32;
    match m.sticky.as_deref() {
        None => {
            if m.switch_confidence.is_some() {
                errs.push(
                    format!("{at}.switch_confidence"),
                    "applies to `sticky: conversation` only",
                );
            }
            None
        }
        Some("conversation") => {
            let classifies = rules
                .iter()
                .any(|r| r.when.iter().any(|c| matches!(c, Condition::Class(_))));
            if !classifies {
                errs.push(
                    format!("{at}.sticky"),
                    "no rule has a `class` condition, so there is no label to keep",
                );
            }
            Some(switch)
        }
        Some(s) => {
            errs.push(
                format!("{at}.sticky"),
                format!("{s:?} is not one of: conversation"),
            );
            None
        }
    }
}
