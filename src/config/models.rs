//! `models.X` → [`Model`]: names and aliases, the pool and fallbacks or the rules of a virtual
//! model (`route.rs`), timeouts, limits and estimates, each problem at its YAML path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::file::{FileCache, FileCacheSettings, FileConfig, FileSemanticCache};
use super::values::{defaults, duration_ms, fraction, limit_set, positive, Errors};
use super::{CacheSpec, Model, Pool, SemanticSpec};
use crate::routing::spec::Serve;

/// `models:`, every public name and alias unique, each model served by a pool (with its
/// fallbacks) or by rules (a virtual model).
pub(super) fn validate(
    errs: &mut Errors,
    file: &FileConfig,
    pools: &[Pool],
    upstream_idle: Duration,
) -> Vec<Model> {
    // Every public name and alias resolves to exactly one model.
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let names = super::route::Names::new(file);
    let mut out = Vec::with_capacity(file.models.len());
    for (name, m) in &file.models {
        let at = format!("models.{name}");
        if name.trim().is_empty() {
            errs.push("models", "a model name must not be empty");
        }
        if let Some(other) = owner.insert(name, name) {
            errs.push(
                &at,
                format!("{name:?} is already an alias of model {other:?}"),
            );
        }
        for (i, alias) in m.aliases.iter().enumerate() {
            if alias.trim().is_empty() {
                errs.push(format!("{at}.aliases[{i}]"), "must not be empty");
            } else if let Some(other) = owner.insert(alias, name) {
                errs.push(
                    format!("{at}.aliases[{i}]"),
                    format!("{alias:?} is already the name or an alias of model {other:?}"),
                );
            }
        }
        let serve = match (&m.pool, &m.route) {
            (Some(_), Some(_)) => {
                errs.push(
                    &at,
                    "has both `pool` and `route`: a model is served by a pool or routes to other models",
                );
                None
            }
            (None, None) => {
                errs.push(
                    &at,
                    "needs `pool` (served by servers) or `route` (a virtual model choosing another model)",
                );
                None
            }
            (Some(pool), None) => {
                for (field, given) in [
                    ("baseline", m.baseline.is_some()),
                    ("sticky", m.sticky.is_some()),
                    ("switch_confidence", m.switch_confidence.is_some()),
                ] {
                    if given {
                        errs.push(
                            format!("{at}.{field}"),
                            "applies to virtual models (with `route`) only",
                        );
                    }
                }
                pool_and_fallbacks(errs, &at, pool, &m.fallback, pools, file)
            }
            (None, Some(_)) => {
                if !m.fallback.is_empty() {
                    errs.push(
                        format!("{at}.fallback"),
                        "a virtual model has no pool to fall back from; its targets' fallbacks apply",
                    );
                }
                Some(Serve::Route(super::route::rules(
                    errs, &at, name, m, &names, file,
                )))
            }
        };
        let shadow = m
            .shadow
            .as_ref()
            .and_then(|s| super::route::shadow(errs, &at, out.len(), name, s, &names));
        let first_token_timeout = duration_ms(
            errs,
            &format!("{at}.first_token_timeout"),
            m.first_token_timeout.as_deref(),
            upstream_idle,
        );
        let limits = limit_set(errs, &format!("{at}.limits"), &m.limits);
        let default_max_tokens = positive(
            errs,
            &format!("{at}.default_max_tokens"),
            m.default_max_tokens,
            defaults::DEFAULT_MAX_TOKENS,
        );
        let bytes_per_token = fraction(
            errs,
            &format!("{at}.bytes_per_token"),
            m.bytes_per_token,
            defaults::BYTES_PER_TOKEN,
            0.5..=64.0,
        );
        if let Some(serve) = serve {
            out.push(Model {
                name: name.clone(),
                aliases: m.aliases.clone(),
                serve,
                first_token_timeout,
                limits,
                default_max_tokens,
                bytes_per_token,
                shadow,
                cache: cache(errs, &at, m.cache.as_ref(), file),
            });
        }
    }
    out
}

/// `models.X.cache`.
fn cache(
    errs: &mut Errors,
    at: &str,
    spec: Option<&FileCache>,
    file: &FileConfig,
) -> Option<CacheSpec> {
    let at = format!("{at}.cache");
    let settings = match spec? {
        FileCache::Word(w) => match w.as_str() {
            "off" => return None,
            "always" => &FileCacheSettings {
                always: Some(true),
                ..FileCacheSettings::default()
            },
            "deterministic" | "on" => &FileCacheSettings::default(),
            other => {
                errs.push(
                    at,
                    format!("{other:?} is not one of: always, deterministic, off (or {{ttl, max_entry, always, shared_across_tenants}})"),
                );
                return None;
            }
        },
        FileCache::Settings(s) => s,
    };
    let max_entry = match settings.max_entry.as_deref() {
        None => 256 << 10,
        Some(v) => match super::values::parse_size(v) {
            Some(n) if n > 0 => n,
            _ => {
                errs.push(
                    format!("{at}.max_entry"),
                    format!("{v:?} is not a size above 0 (e.g. 256KiB)"),
                );
                0
            }
        },
    };
    Some(CacheSpec {
        ttl: super::values::duration(errs, &format!("{at}.ttl"), settings.ttl.as_deref(), 600),
        max_entry,
        always: settings.always.unwrap_or(false),
        shared_across_tenants: settings.shared_across_tenants.unwrap_or(false),
        semantic: settings
            .semantic
            .as_ref()
            .and_then(|s| semantic(errs, &format!("{at}.semantic"), s, file)),
    })
}

/// `models.X.cache.semantic`.
fn semantic(
    errs: &mut Errors,
    at: &str,
    s: &FileSemanticCache,
    file: &FileConfig,
) -> Option<SemanticSpec> {
    let Some(name) = s.model.as_deref() else {
        errs.push(
            format!("{at}.model"),
            "is required (the model that embeds prompts)",
        );
        return None;
    };
    // Models are in the file's (sorted) order; an alias names its model.
    let Some(model) = file
        .models
        .iter()
        .position(|(n, m)| n == name || m.aliases.iter().any(|a| a == name))
    else {
        errs.push(
            format!("{at}.model"),
            format!("no model or alias named {name:?}"),
        );
        return None;
    };
    let similarity = s.similarity.unwrap_or(0.95);
    if !(similarity > 0.0 && similarity <= 1.0) {
        errs.push(format!("{at}.similarity"), "must be above 0 and at most 1");
    }
    let budget = match s.budget.as_deref() {
        None => Duration::from_millis(100),
        some => super::values::duration(errs, &format!("{at}.budget"), some, 1),
    };
    Some(SemanticSpec {
        model,
        similarity: similarity as f32,
        budget,
        entries: positive(errs, &format!("{at}.entries"), s.entries, 1000) as usize,
    })
}

/// A model's pool and its fallback pools, as indices into `pools`.
fn pool_and_fallbacks(
    errs: &mut Errors,
    at: &str,
    pool_name: &str,
    fallbacks: &[String],
    pools: &[Pool],
    file: &FileConfig,
) -> Option<Serve> {
    let pool = pools.iter().position(|p| p.name == pool_name);
    if pool.is_none() && !file.pools.contains_key(pool_name) {
        errs.push(format!("{at}.pool"), format!("no pool named {pool_name:?}"));
    }
    let mut fallback = Vec::with_capacity(fallbacks.len());
    for (i, f) in fallbacks.iter().enumerate() {
        match pools.iter().position(|p| &p.name == f) {
            Some(_) if f == pool_name => {
                errs.push(format!("{at}.fallback[{i}]"), "is the model's own pool")
            }
            Some(p) if fallback.contains(&p) => errs.push(
                format!("{at}.fallback[{i}]"),
                format!("{f:?} is listed twice"),
            ),
            Some(p) => fallback.push(p),
            None if file.pools.contains_key(f) => {}
            None => errs.push(
                format!("{at}.fallback[{i}]"),
                format!("no pool named {f:?}"),
            ),
        }
    }
    Some(Serve::Pools {
        pool: pool?,
        fallback,
    })
}
