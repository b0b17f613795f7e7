//! `auth:` and `tenants:` → [`Auth`] and [`Tenant`]s, with every error at its YAML path.

use std::collections::HashMap;

use super::file::{FileConfig, FileModels};
use super::values::{dollars, limit_set, Errors};
use super::{Auth, Model, Tenant, ANONYMOUS};
use crate::limits::budget::Period;
use crate::limits::keys;

/// The model (index) a public name or alias names.
pub(super) fn model_index(models: &[Model], name: &str) -> Option<usize> {
    models
        .iter()
        .position(|m| m.name == name || m.aliases.iter().any(|a| a == name))
}

pub(super) fn validate(
    errs: &mut Errors,
    file: &FileConfig,
    models: &[Model],
) -> (Auth, Vec<Tenant>) {
    let auth = match file.auth.as_deref() {
        None if file.tenants.is_empty() => Auth::Open,
        None | Some("required") => Auth::Required,
        Some("optional") => Auth::Optional,
        Some(other) => {
            errs.push(
                "auth",
                format!("{other:?} is not one of: required, optional"),
            );
            Auth::Required
        }
    };
    if file.auth.is_some() && file.tenants.is_empty() {
        errs.push(
            "auth",
            "needs tenants (leave auth out for an open gateway without keys or limits)",
        );
    }
    let mut owners: HashMap<keys::KeyDigest, &str> = HashMap::new();
    let mut tenants = Vec::with_capacity(file.tenants.len());
    for (name, t) in &file.tenants {
        let at = format!("tenants.{name}");
        let mut digests = Vec::with_capacity(t.keys.len());
        for (i, k) in t.keys.iter().enumerate() {
            match keys::parse(k) {
                Ok(d) => {
                    if let Some(other) = owners.insert(d, name) {
                        errs.push(
                            format!("{at}.keys[{i}]"),
                            format!("the same key is already a key of tenant {other:?}"),
                        );
                    }
                    digests.push(d);
                }
                Err(reason) => errs.push(format!("{at}.keys[{i}]"), reason),
            }
        }
        if name == ANONYMOUS && !t.keys.is_empty() {
            errs.push(
                format!("{at}.keys"),
                "the anonymous tenant (keyless requests under auth: optional) has no keys",
            );
        }
        if name != ANONYMOUS && t.keys.is_empty() {
            errs.push(format!("{at}.keys"), "at least one key digest is required");
        }
        let names: Vec<&String> = match &t.models {
            None => vec![],
            Some(FileModels::One(one)) => vec![one],
            Some(FileModels::List(list)) => list.iter().collect(),
        };
        let all = t.models.is_none() || names.iter().any(|n| n.as_str() == "*");
        let mut allowed = Vec::new();
        for (i, n) in names.iter().enumerate().filter(|(_, n)| n.as_str() != "*") {
            let path = match &t.models {
                Some(FileModels::List(_)) => format!("{at}.models[{i}]"),
                _ => format!("{at}.models"),
            };
            match model_index(models, n) {
                Some(m) if !allowed.contains(&m) => allowed.push(m),
                Some(_) => {}
                None if file.models.contains_key(n.as_str()) => {}
                None => errs.push(path, format!("no model or alias named {n:?}")),
            }
        }
        let mut per_model = Vec::new();
        for (m, l) in &t.limits.per_model {
            let path = format!("{at}.limits.per_model.{m}");
            let set = limit_set(errs, &path, l);
            match model_index(models, m) {
                Some(i) if per_model.iter().any(|(j, _)| *j == i) => {
                    errs.push(path, "this model's limits are already set (name and alias)")
                }
                Some(i) => per_model.push((i, set)),
                None if file.models.contains_key(m.as_str()) => {}
                None => errs.push(path, format!("no model or alias named {m:?}")),
            }
        }
        let limits = limit_set(
            errs,
            &format!("{at}.limits"),
            &super::file::FileLimitSet {
                requests_per_minute: t.limits.requests_per_minute,
                tokens_per_minute: t.limits.tokens_per_minute,
                concurrent_requests: t.limits.concurrent_requests,
            },
        );
        let budget = [
            (Period::Day, "usd_per_day", t.budget.usd_per_day),
            (Period::Month, "usd_per_month", t.budget.usd_per_month),
        ]
        .into_iter()
        .filter_map(|(p, field, v)| {
            dollars(errs, &format!("{at}.budget.{field}"), v).map(|usd| (p, usd))
        })
        .collect();
        tenants.push(Tenant {
            name: name.clone(),
            keys: digests,
            models: (!all).then_some(allowed),
            limits,
            per_model,
            budget,
        });
    }
    (auth, tenants)
}
