//! `models.X.route`, `.baseline` and `.shadow` → the router's typed spec, every problem at its
//! YAML path (`models.auto.route[2].to: no model named "coder"`). Names resolve to indices into
//! `Config::models`; a virtual model may only route to models served by pools, so routes
//! cannot loop, and a would-be loop is named as one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::file::{FileBounds, FileConfig, FileModel, FileNames, FileRule, FileShadow, FileWhen};
use super::values::Errors;
use super::Config;
use crate::routing::matchers;
use crate::routing::spec::{Bounds, Condition, Rule, Rules, Scope, Shadow, Sort, Sticky, Target};
use crate::routing::split::MAX_ARMS;
use crate::routing::Chain;

/// Every public name and alias of the file, resolved to the index its model will have.
pub(super) struct Names<'a> {
    file: &'a FileConfig,
    index: BTreeMap<&'a str, usize>,
    virtual_models: BTreeSet<usize>,
}

impl<'a> Names<'a> {
    pub(super) fn new(file: &'a FileConfig) -> Self {
        let mut index = BTreeMap::new();
        let mut virtual_models = BTreeSet::new();
        // Models are kept in the file's (sorted) order: this position is their index.
        for (i, (_, m)) in file.models.iter().enumerate() {
            if m.route.is_some() {
                virtual_models.insert(i);
            }
            for alias in &m.aliases {
                index.entry(alias.as_str()).or_insert(i);
            }
        }
        // A name wins over another model's alias of the same spelling (which validation
        // reports anyway).
        for (i, name) in file.models.keys().enumerate() {
            index.insert(name.as_str(), i);
        }
        Self {
            file,
            index,
            virtual_models,
        }
    }

    /// A model the request may be routed to: exists and is served by a pool.
    fn target(&self, errs: &mut Errors, path: &str, from: &str, name: &str) -> Option<usize> {
        let Some(&i) = self.index.get(name) else {
            errs.push(path, format!("no model named {name:?}"));
            return None;
        };
        if self.virtual_models.contains(&i) {
            let back = reaches(self.file, name, from);
            errs.push(
                path,
                format!(
                    "{name:?} is a virtual model; virtual models route only to models served by pools{}",
                    if back { format!(" ({name:?} routes back to {from:?}: a loop)") } else { String::new() }
                ),
            );
            return None;
        }
        Some(i)
    }
}

/// Whether `from` is reachable from `start` through virtual models' targets.
fn reaches(file: &FileConfig, start: &str, from: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_owned()];
    while let Some(name) = stack.pop() {
        if name == from {
            return true;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let model = file
            .models
            .get(&name)
            .or_else(|| file.models.values().find(|m| m.aliases.contains(&name)));
        for rule in model.and_then(|m| m.route.as_ref()).into_iter().flatten() {
            stack.extend(rule.to.iter().flat_map(FileNames::to_vec));
            stack.extend(rule.split.iter().flatten().map(|a| a.to.clone()));
        }
    }
    false
}

/// The rules of virtual model `name` (at `at` = `models.<name>`).
pub(super) fn rules(
    errs: &mut Errors,
    at: &str,
    name: &str,
    m: &FileModel,
    names: &Names<'_>,
    file: &FileConfig,
) -> Rules {
    let entries = m.route.as_deref().unwrap_or_default();
    if entries.is_empty() {
        errs.push(format!("{at}.route"), "needs at least one entry");
    }
    let mut rules = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("{at}.route[{i}]");
        let when = match &entry.when {
            None if i + 1 < entries.len() => {
                errs.push(
                    &path,
                    "only the last entry may leave out `when` (the entries after a default are never reached)",
                );
                Vec::new()
            }
            None => Vec::new(),
            Some(w) => conditions(errs, &format!("{path}.when"), w, name, m, file),
        };
        let scope = match entry.when.as_ref().and_then(|w| w.scope.as_deref()) {
            None => Scope::LastUser,
            Some(s) => Scope::from_name(s).unwrap_or_else(|| {
                errs.push(
                    format!("{path}.when.scope"),
                    format!("{s:?} is not one of: {}", Scope::NAMES.join(", ")),
                );
                Scope::LastUser
            }),
        };
        let resolve = |errs: &mut Errors, p: &str, t: &str| names.target(errs, p, name, t);
        if let Some(target) = target(errs, &path, entry, &resolve) {
            rules.push(Rule {
                when,
                scope,
                target,
            });
        }
    }
    let baseline = m
        .baseline
        .as_deref()
        .and_then(|b| names.target(errs, &format!("{at}.baseline"), name, b));
    let sticky = super::classify::sticky(errs, at, m, &rules);
    Rules {
        rules,
        baseline,
        sticky,
    }
}

fn target(
    errs: &mut Errors,
    path: &str,
    entry: &FileRule,
    resolve: &dyn Fn(&mut Errors, &str, &str) -> Option<usize>,
) -> Option<Target> {
    if entry.sticky.is_some() && entry.split.is_none() {
        errs.push(format!("{path}.sticky"), "applies to `split` only");
    }
    let list = matches!(entry.to, Some(FileNames::List(_)));
    if entry.prefer.is_some() && !list {
        errs.push(
            format!("{path}.prefer"),
            "applies to a list of candidates (`to: [a, b]`) only",
        );
    }
    match (&entry.to, &entry.split) {
        (Some(_), Some(_)) => {
            errs.push(path, "has both `to` and `split`; give one");
            None
        }
        (None, None) => {
            errs.push(
                path,
                "needs `to` (a model or a list of candidates) or `split`",
            );
            None
        }
        (Some(FileNames::One(m)), None) => {
            resolve(errs, &format!("{path}.to"), m).map(Target::Model)
        }
        (Some(FileNames::List(list)), None) => {
            if list.is_empty() || list.len() > Chain::CAPACITY {
                errs.push(
                    format!("{path}.to"),
                    format!("a candidate list has 1 to {} models", Chain::CAPACITY),
                );
            }
            let mut models = Vec::with_capacity(list.len());
            for (k, m) in list.iter().enumerate() {
                let p = format!("{path}.to[{k}]");
                if let Some(i) = resolve(errs, &p, m) {
                    if models.contains(&i) {
                        errs.push(p, format!("{m:?} is listed twice"));
                    }
                    models.push(i);
                }
            }
            let prefer = match entry.prefer.as_deref() {
                None => Sort::Price,
                Some(p) => Sort::from_name(p).unwrap_or_else(|| {
                    errs.push(
                        format!("{path}.prefer"),
                        format!("{p:?} is not one of: {}", Sort::NAMES.join(", ")),
                    );
                    Sort::Price
                }),
            };
            Some(Target::Candidates { models, prefer })
        }
        (None, Some(arms)) => {
            if arms.is_empty() || arms.len() > MAX_ARMS {
                errs.push(
                    format!("{path}.split"),
                    format!("a split has 1 to {MAX_ARMS} arms"),
                );
            }
            let mut out = Vec::with_capacity(arms.len());
            for (k, arm) in arms.iter().enumerate() {
                let p = format!("{path}.split[{k}]");
                let weight = match u32::try_from(arm.weight) {
                    Ok(w) if (1..=1_000_000).contains(&w) => w,
                    _ => {
                        errs.push(format!("{p}.weight"), "must be from 1 to 1000000");
                        1
                    }
                };
                if let Some(i) = resolve(errs, &format!("{p}.to"), &arm.to) {
                    if out.iter().any(|&(m, _)| m == i) {
                        errs.push(format!("{p}.to"), format!("{:?} is already an arm", arm.to));
                    }
                    out.push((i, weight));
                }
            }
            let sticky = match entry.sticky.as_deref() {
                None => Sticky::Session,
                Some(s) => Sticky::from_name(s).unwrap_or_else(|| {
                    errs.push(
                        format!("{path}.sticky"),
                        format!("{s:?} is not one of: {}", Sticky::NAMES.join(", ")),
                    );
                    Sticky::Session
                }),
            };
            Some(Target::Split { arms: out, sticky })
        }
    }
}

fn conditions(
    errs: &mut Errors,
    at: &str,
    w: &FileWhen,
    name: &str,
    m: &FileModel,
    file: &FileConfig,
) -> Vec<Condition> {
    let mut out = Vec::new();
    for (value, make) in [
        (w.tools, Condition::Tools as fn(bool) -> Condition),
        (w.images, Condition::Images),
        (w.json_mode, Condition::JsonMode),
        (w.stream, Condition::Stream),
    ] {
        if let Some(b) = value {
            out.push(make(b));
        }
    }
    for (field, value, make) in [
        (
            "prompt_tokens",
            &w.prompt_tokens,
            Condition::PromptTokens as fn(Bounds) -> Condition,
        ),
        ("max_tokens", &w.max_tokens, Condition::MaxTokens),
        ("turns", &w.turns, Condition::Turns),
    ] {
        if let Some(b) = value {
            out.push(make(bounds(errs, &format!("{at}.{field}"), b)));
        }
    }
    if let Some(words) = &w.keywords {
        if words.is_empty() {
            errs.push(format!("{at}.keywords"), "lists no keyword");
        }
        for (k, word) in words.iter().enumerate() {
            if word.trim().is_empty() {
                errs.push(format!("{at}.keywords[{k}]"), "must not be empty");
            }
        }
        out.push(Condition::Keywords(words.clone()));
    }
    if let Some(regex) = &w.regex {
        let patterns = regex.to_vec();
        if patterns.is_empty() {
            errs.push(format!("{at}.regex"), "lists no regular expression");
        }
        for (k, p) in patterns.iter().enumerate() {
            if let Err(e) = matchers::compile_regexes(std::slice::from_ref(p)) {
                let path = match regex {
                    FileNames::One(_) => format!("{at}.regex"),
                    FileNames::List(_) => format!("{at}.regex[{k}]"),
                };
                errs.push(path, format!("not a valid regular expression: {e}"));
            }
        }
        out.push(Condition::Regex(patterns));
    }
    if let Some(headers) = &w.header {
        if headers.is_empty() {
            errs.push(format!("{at}.header"), "names no header");
        }
        let mut wanted = Vec::with_capacity(headers.len());
        for (h, values) in headers {
            let path = format!("{at}.header.{h}");
            let values = values.to_vec();
            if values.is_empty() {
                errs.push(&path, "lists no value");
            }
            match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => wanted.push((name, values)),
                Err(_) => errs.push(&path, format!("{h:?} is not a header name")),
            }
        }
        out.push(Condition::Header(wanted));
    }
    if let Some(tenants) = &w.tenant {
        let tenants = tenants.to_vec();
        for (k, t) in tenants.iter().enumerate() {
            if !file.tenants.contains_key(t) {
                errs.push(
                    format!("{at}.tenant[{k}]"),
                    format!("no tenant named {t:?}"),
                );
            }
        }
        out.push(Condition::Tenant(tenants));
    }
    if let Some(requested) = &w.model_requested {
        let requested = requested.to_vec();
        for (k, r) in requested.iter().enumerate() {
            if r != name && !m.aliases.contains(r) {
                errs.push(
                    format!("{at}.model_requested[{k}]"),
                    format!("{r:?} is not {name:?} or one of its aliases, so it never matches"),
                );
            }
        }
        out.push(Condition::ModelRequested(requested));
    }
    // Last: the cheap conditions before it decide first, and a classifier is not asked for a
    // rule they already ruled out.
    if let Some(class) = &w.class {
        out.push(super::classify::condition(
            errs,
            &format!("{at}.class"),
            class,
            file,
        ));
    }
    if out.is_empty() {
        errs.push(
            at,
            "has no condition (leave `when` out for the default entry)",
        );
    }
    out
}

fn bounds(errs: &mut Errors, at: &str, b: &FileBounds) -> Bounds {
    let count = |errs: &mut Errors, field: &str, v: Option<i64>| match v {
        None => None,
        Some(v) => u64::try_from(v).ok().or_else(|| {
            errs.push(format!("{at}.{field}"), "must be 0 or more");
            None
        }),
    };
    let out = Bounds {
        over: count(errs, "over", b.over),
        under: count(errs, "under", b.under),
    };
    match (out.over, out.under) {
        (None, None) => errs.push(at, "needs `over`, `under` or both"),
        (Some(o), Some(u)) if u <= o.saturating_add(1) => errs.push(
            at,
            format!("no count is over {o} and under {u}, so it never matches"),
        ),
        _ => {}
    }
    out
}

/// `models.X.shadow` of model `me`.
pub(super) fn shadow(
    errs: &mut Errors,
    at: &str,
    me: usize,
    name: &str,
    s: &FileShadow,
    names: &Names<'_>,
) -> Option<Shadow> {
    let at = format!("{at}.shadow");
    let to = names.target(errs, &format!("{at}.to"), name, &s.to);
    if to == Some(me) {
        errs.push(format!("{at}.to"), "is the model itself");
    }
    let percent = s.percent.unwrap_or(100.0);
    if !(percent > 0.0 && percent <= 100.0) {
        errs.push(
            format!("{at}.percent"),
            format!("{percent} is not a share above 0 and at most 100"),
        );
    }
    let max_inflight = match s.max_inflight {
        None => 8,
        Some(n) if n > 0 => n as u64,
        Some(_) => {
            errs.push(format!("{at}.max_inflight"), "must be greater than 0");
            8
        }
    };
    Some(Shadow {
        to: to.filter(|&t| t != me)?,
        percent,
        max_inflight,
    })
}

/// The rules as `/admin/config` shows them.
pub(super) fn to_json(rules: &Rules, config: &Config) -> serde_json::Value {
    let name = |i: usize| config.models.get(i).map_or("", |m| m.name.as_str());
    json!({
        "baseline": rules.baseline.map(name),
        "rules": rules.rules.iter().map(|r| {
            let target = match &r.target {
                Target::Model(m) => json!({"to": name(*m)}),
                Target::Split { arms, sticky } => json!({
                    "split": arms.iter().map(|&(m, w)| json!({"to": name(m), "weight": w})).collect::<Vec<_>>(),
                    "sticky": Sticky::NAMES[*sticky as usize],
                }),
                Target::Candidates { models, prefer } => json!({
                    "to": models.iter().map(|&m| name(m)).collect::<Vec<_>>(),
                    "prefer": prefer.name(),
                }),
            };
            json!({
                "when": r.when.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "scope": r.scope.name(),
                "target": target,
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = "pools:\n  p:\n    model: served\n    servers: [{url: \"http://127.0.0.1:1\"}]\n  q:\n    model: other\n    servers: [{url: \"http://127.0.0.1:2\"}]\nmodels:\n  a: {pool: p}\n  b: {pool: q}\n";

    fn errors(models: &str) -> Vec<String> {
        match parse(&format!("{BASE}{models}")) {
            Ok(_) => vec![],
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_router_example_of_the_issue_is_accepted() {
        let yaml = format!(
            "{BASE}  auto:\n    aliases: [router]\n    baseline: b\n    shadow: {{to: b, percent: 5, max_inflight: 8}}\n    route:\n      - when: {{tools: true}}\n        to: b\n      - when: {{prompt_tokens: {{over: 6000}}}}\n        to: b\n      - when: {{keywords: [python, rust, compile, stack trace, function]}}\n        to: a\n      - when: {{regex: '(?i)\\bsummari[sz]e\\b', header: {{x-team: docs}}}}\n        to: a\n      - when: {{tenant: [acme]}}\n        split:\n          - {{to: a, weight: 90}}\n          - {{to: b, weight: 10}}\n        sticky: session\n      - to: [a, b]\n        prefer: price\ntenants:\n  acme: {{keys: [\"sha256:{}\"]}}\n",
            "ab".repeat(32)
        );
        let c = parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let auto = c.models.iter().find(|m| m.name == "auto").unwrap();
        let crate::routing::spec::Serve::Route(rules) = &auto.serve else {
            panic!("virtual")
        };
        assert_eq!(rules.rules.len(), 6);
        assert_eq!(rules.baseline, Some(2), "models in name order: a, auto, b");
        assert_eq!(auto.shadow.as_ref().map(|s| s.percent), Some(5.0));
        let json = c.to_json();
        assert_eq!(
            json["models"][1]["route"]["rules"][3]["when"],
            serde_json::json!(["regex", "header"])
        );
    }

    #[test]
    fn unknown_targets_loops_and_virtual_targets_are_refused_with_their_paths() {
        assert_eq!(
            errors("  v:\n    route:\n      - to: nope\n"),
            [r#"models.v.route[0].to: no model named "nope""#]
        );
        assert_eq!(
            errors("  v:\n    route:\n      - to: w\n  w:\n    route:\n      - to: v\n"),
            [
                r#"models.v.route[0].to: "w" is a virtual model; virtual models route only to models served by pools ("w" routes back to "v": a loop)"#,
                r#"models.w.route[0].to: "v" is a virtual model; virtual models route only to models served by pools ("v" routes back to "w": a loop)"#,
            ]
        );
        assert_eq!(
            errors("  v:\n    route:\n      - to: v\n"),
            [
                r#"models.v.route[0].to: "v" is a virtual model; virtual models route only to models served by pools ("v" routes back to "v": a loop)"#
            ]
        );
        assert_eq!(
            errors("  v:\n    route:\n      - split: [{to: a, weight: 1}, {to: w, weight: 0}]\n  w:\n    route:\n      - to: a\n"),
            [
                "models.v.route[0].split[1].weight: must be from 1 to 1000000",
                r#"models.v.route[0].split[1].to: "w" is a virtual model; virtual models route only to models served by pools"#,
            ]
        );
    }

    #[test]
    fn rule_mistakes_name_their_path() {
        // The regex error goes on with the parser's own explanation.
        let errs = errors("  v:\n    route:\n      - when: {regex: '(unclosed', keywords: []}\n        to: a\n      - to: a\n        prefer: price\n      - to: [a, a]\n        sticky: tenant\n");
        let want = [
            "models.v.route[0].when.keywords: lists no keyword",
            "models.v.route[0].when.regex: not a valid regular expression: ",
            "models.v.route[1]: only the last entry may leave out `when` (the entries after a default are never reached)",
            "models.v.route[1].prefer: applies to a list of candidates (`to: [a, b]`) only",
            "models.v.route[2].sticky: applies to `split` only",
            r#"models.v.route[2].to[1]: "a" is listed twice"#,
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (got, want) in errs.iter().zip(want) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
        assert_eq!(
            errors("  v:\n    route:\n      - when: {turns: {over: 3, under: 4}, tenant: [ghost], model_requested: [x], scope: all}\n        to: a\n      - when: {}\n        to: b\n"),
            [
                "models.v.route[0].when.turns: no count is over 3 and under 4, so it never matches",
                r#"models.v.route[0].when.tenant[0]: no tenant named "ghost""#,
                r#"models.v.route[0].when.model_requested[0]: "x" is not "v" or one of its aliases, so it never matches"#,
                r#"models.v.route[0].when.scope: "all" is not one of: last_user, conversation"#,
                "models.v.route[1].when: has no condition (leave `when` out for the default entry)",
            ]
        );
        assert_eq!(
            errors("  v:\n    pool: p\n    route:\n      - to: a\n  w:\n    fallback: [p]\n    route:\n      - to: a\n  x:\n    aliases: [y]\n"),
            [
                "models.v: has both `pool` and `route`: a model is served by a pool or routes to other models",
                "models.w.fallback: a virtual model has no pool to fall back from; its targets' fallbacks apply",
                "models.x: needs `pool` (served by servers) or `route` (a virtual model choosing another model)",
            ]
        );
        assert_eq!(
            errors("  v:\n    pool: p\n    baseline: b\n    shadow: {to: v, percent: 0}\n"),
            [
                "models.v.baseline: applies to virtual models (with `route`) only",
                "models.v.shadow.to: is the model itself",
                "models.v.shadow.percent: 0 is not a share above 0 and at most 100",
            ]
        );
    }
}
