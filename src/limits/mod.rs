//! Tenants, API keys and admission: who is calling, may they use this model, and is there
//! room under their limits, the model's limits and their budget.
//!
//! A request is admitted in one step before it goes upstream: its estimated cost from every
//! budget, then concurrency permits, then one request and the estimated tokens (prompt
//! estimate + `max_tokens`) from every rate limit that applies (the tenant's, the tenant's on
//! this model, the model's). Whatever was taken is put back when a later limit refuses. When
//! the response ends, the token and cost reservations are settled to what the server reported
//! (or what was counted).

pub mod bucket;
pub mod budget;
pub mod keys;
pub mod per_ip;
mod refusal;
pub mod shared;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Auth, Config, LimitSet, ANONYMOUS};
use crate::metrics::{Metrics, TenantMetrics};
use bucket::{Rate, Snapshot, Take};
use budget::{Budget, Reservation};
pub use refusal::{reset_text, Refusal, RefusalReason};
use store::{Concurrency, LocalStore, Permit, RateLimiter};

/// Limit scopes a request can pass through: its tenant, and on each of the requested and the
/// routed-to model the tenant's per-model limits and the model's own.
const SCOPES: usize = 5;

/// One scope's limits resolved to store handles.
pub struct Scope {
    requests: Option<(Rate, Arc<RateLimiter>)>,
    tokens: Option<(Rate, Arc<RateLimiter>)>,
    concurrency: Option<(u64, Arc<Concurrency>)>,
    /// With a shared store: the same limits there (the local ones are then what each
    /// instance falls back on, 1/`expected_instances` of them).
    shared: Option<shared::SharedScope>,
}

/// A shared store's key prefix and the number of instances sharing it.
#[derive(Debug, Clone, Copy)]
pub struct Fleet<'a> {
    pub prefix: &'a str,
    pub instances: u64,
}

impl Fleet<'_> {
    /// The share of `limit` one instance falls back on (at least 1).
    fn share(self, limit: u64) -> u64 {
        limit.div_ceil(self.instances).max(1)
    }
}

impl Scope {
    /// `None` when the set has no limit.
    pub fn build(
        store: &LocalStore,
        fleet: Option<Fleet<'_>>,
        key: &str,
        set: &LimitSet,
    ) -> Option<Self> {
        if set.is_empty() {
            return None;
        }
        let local = |l: u64| fleet.map_or(l, |f| f.share(l));
        let rate = |kind: &str, limit: Option<u64>| {
            limit.map(|l| {
                (
                    Rate::per_minute(local(l)),
                    store.rate(&format!("{key}/{kind}")),
                )
            })
        };
        let shared = fleet.map(|f| {
            let name = |kind: &str| Arc::<str>::from(format!("{}{key}/{kind}", f.prefix));
            shared::SharedScope {
                requests: set
                    .requests_per_minute
                    .map(|l| (Rate::per_minute(l), name("requests_per_minute"))),
                tokens: set
                    .tokens_per_minute
                    .map(|l| (Rate::per_minute(l), name("tokens_per_minute"))),
                concurrency: set
                    .concurrent_requests
                    .map(|l| (l, name("concurrent_requests"))),
            }
        });
        Some(Self {
            requests: rate("requests_per_minute", set.requests_per_minute),
            tokens: rate("tokens_per_minute", set.tokens_per_minute),
            concurrency: set.concurrent_requests.map(|l| {
                (
                    local(l),
                    store.concurrency(&format!("{key}/concurrent_requests")),
                )
            }),
            shared,
        })
    }
}

/// A tenant, ready for the request path.
pub struct Tenant {
    pub name: Arc<str>,
    /// Per model index: may this tenant use it (`None`: every model).
    models: Option<Box<[bool]>>,
    scope: Option<Scope>,
    /// Per model index.
    per_model: Box<[Option<Scope>]>,
    budgets: Box<[Budget]>,
    /// Spend of the current day and month, counted for every tenant.
    pub metrics: TenantMetrics,
    /// `GET /v1/models` as this tenant sees it.
    pub models_body: Bytes,
}

impl Tenant {
    pub fn allows(&self, model: usize) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.get(model).copied().unwrap_or(false))
    }

    pub fn has_budget(&self) -> bool {
        !self.budgets.is_empty()
    }

    /// Counts what a request cost in the tenant's spend metric (its budgets are settled by
    /// its [`Admission`]).
    pub fn spend(&self, micros: u64) {
        if micros > 0 {
            self.metrics.spend.inc_by(micros as f64 / 1e6);
        }
    }
}

/// Why a request had no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No key, and no anonymous tenant to fall back on.
    Missing,
    /// A key no tenant owns, or a malformed Authorization header.
    Invalid,
}

/// Every tenant and the key table.
pub struct Tenants {
    pub auth: Auth,
    keys: keys::KeyTable,
    pub list: Box<[Tenant]>,
    anonymous: Option<usize>,
    /// Per model index: the model's own limits.
    models: Box<[Option<Scope>]>,
}

impl Tenants {
    /// Resolves the config's tenants and limits to handles of `store`.
    pub fn build(
        config: &Config,
        store: &LocalStore,
        metrics: &Metrics,
        models_body: impl Fn(Option<&[usize]>) -> Bytes,
    ) -> Self {
        let fleet = config.shared.as_ref().map(|s| Fleet {
            prefix: &s.key_prefix,
            instances: s.expected_instances,
        });
        let mut table = keys::KeyTable::default();
        let list: Vec<Tenant> = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                for d in &t.keys {
                    table.insert(*d, i);
                }
                let key = format!("tenant/{}", t.name);
                let mut per_model: Vec<Option<Scope>> =
                    config.models.iter().map(|_| None).collect();
                for (m, set) in &t.per_model {
                    if let (Some(slot), Some(model)) =
                        (per_model.get_mut(*m), config.models.get(*m))
                    {
                        *slot =
                            Scope::build(store, fleet, &format!("{key}/model/{}", model.name), set);
                    }
                }
                let budgets: Vec<Budget> = t
                    .budget
                    .iter()
                    .map(|&(period, usd)| {
                        let limit = (usd * 1e6).round() as u64;
                        let spend = format!("{key}/spend/{}", period.name());
                        Budget {
                            period,
                            limit: fleet.map_or(limit, |f| f.share(limit)),
                            spent: store.spend(&spend),
                            shared: fleet.map(|f| Arc::from(format!("{}{spend}", f.prefix))),
                            shared_limit: limit,
                        }
                    })
                    .collect();
                Tenant {
                    name: Arc::from(t.name.as_str()),
                    models: t.models.as_ref().map(|allowed| {
                        (0..config.models.len())
                            .map(|m| allowed.contains(&m))
                            .collect()
                    }),
                    scope: Scope::build(store, fleet, &key, &t.limits),
                    per_model: per_model.into_boxed_slice(),
                    budgets: budgets.into_boxed_slice(),
                    metrics: metrics.tenant(&t.name, config.models.iter().map(|m| m.name.as_str())),
                    models_body: models_body(t.models.as_deref()),
                }
            })
            .collect();
        let models = config
            .models
            .iter()
            .map(|m| Scope::build(store, fleet, &format!("model/{}", m.name), &m.limits))
            .collect();
        Self {
            auth: config.auth,
            keys: table,
            anonymous: list.iter().position(|t| &*t.name == ANONYMOUS),
            list: list.into_boxed_slice(),
            models,
        }
    }

    /// The tenant of a request from its `Authorization` header value; `Ok(None)` when the
    /// gateway is open (no tenants).
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Option<usize>, AuthError> {
        if self.auth == Auth::Open {
            return Ok(None);
        }
        match authorization {
            Some(value) => keys::bearer(value)
                .and_then(|key| self.keys.find(key))
                .map(Some)
                .ok_or(AuthError::Invalid),
            None if self.auth == Auth::Optional => {
                self.anonymous.map(Some).ok_or(AuthError::Missing)
            }
            None => Err(AuthError::Missing),
        }
    }

    /// The limits a request of `tenant` passes through: the tenant's, then for each model
    /// the tenant's on it and the model's own. `models` is the model the request named and
    /// the one a virtual model chose (the same twice for a model serving itself).
    fn scopes<'a>(
        &'a self,
        tenant: Option<&'a Tenant>,
        models: [usize; 2],
    ) -> [Option<&'a Scope>; SCOPES] {
        let on = |model: usize| {
            [
                tenant
                    .and_then(|t| t.per_model.get(model))
                    .and_then(Option::as_ref),
                self.models.get(model).and_then(Option::as_ref),
            ]
        };
        let [a, b] = on(models[0]);
        let [c, d] = if models[1] == models[0] {
            [None, None]
        } else {
            on(models[1])
        };
        [tenant.and_then(|t| t.scope.as_ref()), a, b, c, d]
    }

    /// Admits a request of `estimate` (tokens, micro-dollars), or says why not. `models`: the
    /// model the request named and the model it was routed to (see [`Self::scopes`]).
    pub fn admit(
        &self,
        tenant: Option<&Tenant>,
        models: [usize; 2],
        estimate: (u64, u64),
        now_ms: u64,
        unix_secs: u64,
    ) -> Result<Admission, Refusal> {
        let (tokens, micros) = estimate;
        let scopes = self.scopes(tenant, models);
        let mut admission = Admission {
            reserved: tokens,
            ..Admission::default()
        };
        let budgets = tenant.map_or(&[][..], |t| &t.budgets[..]);
        for (slot, b) in admission.budgets.iter_mut().zip(budgets) {
            match b.reserve(micros, unix_secs) {
                Ok(r) => *slot = Some(r),
                Err(full) => {
                    return Err(Refusal {
                        reason: RefusalReason::Budget {
                            period: b.period,
                            retry_after_secs: if full.held {
                                1
                            } else {
                                b.period.at(unix_secs).1
                            },
                            held: full.held,
                        },
                        headers: headers(&scopes, now_ms),
                    });
                }
            }
        }
        for (slot, scope) in admission.permits.iter_mut().zip(scopes) {
            if let Some((limit, gauge)) = scope.and_then(|s| s.concurrency.as_ref()) {
                match gauge.acquire(*limit) {
                    Some(p) => *slot = Some(p),
                    None => {
                        return Err(Refusal {
                            reason: RefusalReason::Concurrency { limit: *limit },
                            headers: headers(&scopes, now_ms),
                        })
                    }
                }
            }
        }
        let mut taken: [Option<(Rate, &Arc<RateLimiter>, u64)>; 2 * SCOPES] = Default::default();
        let (mut n, mut held) = (0, 0);
        let limiters = scopes
            .iter()
            .flat_map(|s| {
                [
                    s.and_then(|s| s.requests.as_ref()).map(|r| (r, 1, true)),
                    s.and_then(|s| s.tokens.as_ref())
                        .map(|r| (r, tokens, false)),
                ]
            })
            .flatten();
        for ((rate, limiter), cost, is_requests) in limiters {
            let refused = match limiter.take(*rate, cost, now_ms) {
                Take::Granted(s) => {
                    let slot = if is_requests {
                        &mut admission.headers.requests
                    } else {
                        &mut admission.headers.tokens
                    };
                    keep_tightest(slot, s);
                    if !is_requests {
                        admission.tokens[held] = Some((*rate, limiter.clone()));
                        held += 1;
                    }
                    taken[n] = Some((*rate, limiter, cost));
                    n += 1;
                    continue;
                }
                Take::Denied { wait_ms, .. } if is_requests => RefusalReason::Requests { wait_ms },
                Take::Denied { wait_ms, .. } => RefusalReason::Tokens { wait_ms },
                Take::TooLarge(s) => RefusalReason::TooLarge {
                    limit: s.limit,
                    requested: tokens,
                },
            };
            for (rate, limiter, cost) in taken.iter().flatten() {
                limiter.adjust(*rate, -(*cost as i64), now_ms);
            }
            let mut headers = headers(&scopes, now_ms);
            if let (RefusalReason::Requests { .. }, Some(r)) = (&refused, &mut headers.requests) {
                r.remaining = 0;
            }
            return Err(Refusal {
                reason: refused,
                headers,
            });
        }
        Ok(admission)
    }
}

impl Tenants {
    /// [`Self::admit`] through the shared store: `None` when it did not answer in time.
    pub async fn admit_shared(
        &self,
        store: &Arc<crate::fleet::SharedStore>,
        tenant: Option<&Tenant>,
        models: [usize; 2],
        estimate: (u64, u64),
        unix_secs: u64,
    ) -> Option<Result<Admission, Refusal>> {
        let scopes = self.scopes(tenant, models);
        shared::admit(store, &scopes, tenant, estimate, unix_secs).await
    }
}

/// Keeps the limit with the least remaining (the one a client runs into first).
fn keep_tightest(slot: &mut Option<Snapshot>, s: Snapshot) {
    if slot.is_none_or(|cur| (s.remaining, s.limit) < (cur.remaining, cur.limit)) {
        *slot = Some(s);
    }
}

/// The headers of a request that took nothing.
fn headers(scopes: &[Option<&Scope>; SCOPES], now_ms: u64) -> RateHeaders {
    let mut h = RateHeaders::default();
    for s in scopes.iter().flatten() {
        if let Some((rate, l)) = &s.requests {
            keep_tightest(&mut h.requests, l.snapshot(*rate, now_ms));
        }
        if let Some((rate, l)) = &s.tokens {
            keep_tightest(&mut h.tokens, l.snapshot(*rate, now_ms));
        }
    }
    h
}

/// What `x-ratelimit-*` reports: the tightest request and token limits of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Snapshot>,
    pub tokens: Option<Snapshot>,
}

/// What an admitted request holds until it ends: concurrency permits (released on drop), and
/// its token and cost reservations (settled with [`Admission::settle`], given back on drop).
#[derive(Debug, Default)]
pub struct Admission {
    reserved: u64,
    tokens: [Option<(Rate, Arc<RateLimiter>)>; SCOPES],
    permits: [Option<Permit>; SCOPES],
    /// One per budget of the tenant (a day's and a month's).
    budgets: [Option<Reservation>; 2],
    pub headers: RateHeaders,
    /// What it holds in the shared store, when it was admitted there.
    shared: Option<Box<shared::SharedHold>>,
}

impl Admission {
    /// Whether it holds anything to settle or release (no limit applied: nothing).
    pub fn holds(&self) -> bool {
        self.tokens.iter().any(Option::is_some)
            || self.permits.iter().any(Option::is_some)
            || self.budgets.iter().any(Option::is_some)
            || self.shared.is_some()
    }

    /// Replaces the reservations by the tokens actually used and what they cost.
    pub fn settle(&mut self, used: u64, micros: u64, now_ms: u64, unix_secs: u64) {
        let delta = used as i64 - self.reserved as i64;
        for (rate, limiter) in self.tokens.iter().flatten() {
            limiter.adjust(*rate, delta, now_ms);
        }
        self.reserved = used;
        if let Some(hold) = &mut self.shared {
            hold.settle(delta, micros, unix_secs);
        }
        for b in self.budgets.iter_mut().flatten() {
            b.settle(micros, unix_secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::Period;

    fn tenants(yaml_tail: &str) -> (Tenants, LocalStore) {
        let yaml = format!(
            "pools:\n  p:\n    model: m\n    servers: [{{url: \"http://127.0.0.1:1\"}}]\nmodels:\n  a:\n    pool: p\n    aliases: [a2]\n  b:\n    pool: p\n{yaml_tail}"
        );
        let config = crate::config::parse(&yaml).unwrap();
        let store = LocalStore::default();
        let metrics = Metrics::new().unwrap();
        let t = Tenants::build(&config, &store, &metrics, |_| Bytes::new());
        (t, store)
    }

    const KEY_A: &str = "sha256:f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0";

    #[test]
    fn keys_identify_tenants_and_optional_auth_falls_back_to_anonymous() {
        let (t, _) = tenants(&format!(
            "auth: optional\ntenants:\n  team:\n    keys: [\"{KEY_A}\"]\n  anonymous:\n    models: [b]\n"
        ));
        // Tenants are in name order: anonymous, team.
        assert_eq!(t.identify(Some(b"Bearer sk-test")), Ok(Some(1)));
        assert_eq!(t.identify(Some(b"Bearer sk-nope")), Err(AuthError::Invalid));
        assert_eq!(t.identify(None), Ok(Some(0)));
        assert!(t.list[0].allows(1) && !t.list[0].allows(0));
        assert!(t.list[1].allows(0) && t.list[1].allows(1));
        let (required, _) = tenants(&format!("tenants:\n  team:\n    keys: [\"{KEY_A}\"]\n"));
        assert_eq!(required.identify(None), Err(AuthError::Missing));
    }

    #[test]
    fn a_refusal_puts_back_what_earlier_limits_took() {
        let (t, _) = tenants(&format!(
            "tenants:\n  team:\n    keys: [\"{KEY_A}\"]\n    limits:\n      requests_per_minute: 10\n      per_model:\n        a2: {{tokens_per_minute: 100}}\n"
        ));
        let team = Some(&t.list[0]);
        let ok = t.admit(team, [0, 0], (60, 0), 0, 0).unwrap();
        assert_eq!(ok.headers.requests.unwrap().remaining, 9);
        assert_eq!(ok.headers.tokens.unwrap().remaining, 40);
        let refused = t.admit(team, [0, 0], (60, 0), 0, 0).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Tokens { wait_ms: 12_000 });
        assert_eq!(
            refused.headers.requests.unwrap().remaining,
            9,
            "request put back"
        );
        let too_large = t.admit(team, [0, 0], (101, 0), 0, 0).unwrap_err();
        assert_eq!(
            too_large.reason,
            RefusalReason::TooLarge {
                limit: 100,
                requested: 101
            }
        );
        // Model b has no per-model limit: only the tenant's requests count.
        let b = t.admit(team, [1, 1], (10_000, 0), 0, 0).unwrap();
        assert_eq!(b.headers.requests.unwrap().remaining, 8);
        assert_eq!(b.headers.tokens, None);
    }

    #[test]
    fn a_routed_request_passes_the_limits_of_the_model_it_named_and_of_the_one_it_got() {
        // `a` stands for a virtual model here: the tenant's limit on it, and the limits on `b`
        // (the tenant's and the model's own), all apply to one request named `a`, sent to `b`.
        let (t, _) = tenants(&format!(
            "    limits: {{concurrent_requests: 1}}\ntenants:\n  team:\n    keys: [\"{KEY_A}\"]\n    limits:\n      per_model:\n        a: {{requests_per_minute: 3}}\n        b: {{tokens_per_minute: 100}}\n"
        ));
        let team = Some(&t.list[0]);
        let held = t.admit(team, [0, 1], (60, 0), 0, 0).unwrap();
        assert_eq!(held.headers.requests.unwrap().remaining, 2, "a's requests");
        assert_eq!(held.headers.tokens.unwrap().remaining, 40, "b's tokens");
        assert_eq!(
            t.admit(team, [0, 1], (1, 0), 0, 0).unwrap_err().reason,
            RefusalReason::Concurrency { limit: 1 },
            "b's own concurrency"
        );
        drop(held);
        assert_eq!(
            t.admit(team, [0, 1], (60, 0), 0, 0).unwrap_err().reason,
            RefusalReason::Tokens { wait_ms: 12_000 },
            "b's tokens, though a's requests are left"
        );
        // Named `b` directly: b's scopes once, not twice.
        let direct = t.admit(team, [1, 1], (40, 0), 0, 0).unwrap();
        assert_eq!(direct.headers.tokens.unwrap().remaining, 0);
    }

    #[test]
    fn settling_refunds_or_charges_the_difference() {
        let (t, _) = tenants(&format!(
            "tenants:\n  team:\n    keys: [\"{KEY_A}\"]\n    limits: {{tokens_per_minute: 1000}}\n"
        ));
        let team = Some(&t.list[0]);
        let mut a = t.admit(team, [0, 0], (900, 0), 0, 0).unwrap();
        a.settle(100, 0, 0, 0);
        let b = t.admit(team, [0, 0], (0, 0), 0, 0).unwrap();
        assert_eq!(b.headers.tokens.unwrap().remaining, 900);
    }

    #[test]
    fn concurrency_permits_are_released_with_the_admission() {
        let (t, _) = tenants(&format!(
            "tenants:\n  team:\n    keys: [\"{KEY_A}\"]\n    limits: {{concurrent_requests: 1}}\n"
        ));
        let team = Some(&t.list[0]);
        let held = t.admit(team, [0, 0], (1, 0), 0, 0).unwrap();
        assert_eq!(
            t.admit(team, [0, 0], (1, 0), 0, 0).unwrap_err().reason,
            RefusalReason::Concurrency { limit: 1 }
        );
        drop(held);
        assert!(t.admit(team, [0, 0], (1, 0), 0, 0).is_ok());
    }

    #[test]
    fn a_budget_refuses_what_it_cannot_cover_until_the_period_ends() {
        let (t, _) = tenants(&format!(
            "tenants:\n  team:\n    keys: [\"{KEY_A}\"]\n    budget: {{usd_per_day: 1}}\n"
        ));
        let team = &t.list[0];
        let now = 1_795_266_000; // 13:00 UTC
        let (day, _) = Period::Day.at(now);
        team.budgets[0].spent.add(day, 999_000);
        let in_flight = t.admit(Some(team), [0, 0], (1, 600), 0, now).unwrap();
        let refusal = |micros| {
            t.admit(Some(team), [0, 0], (1, micros), 0, now)
                .unwrap_err()
        };
        assert_eq!(
            refusal(600).reason,
            RefusalReason::Budget {
                period: Period::Day,
                retry_after_secs: 1,
                held: true
            },
            "it fits once the request in flight has ended"
        );
        drop(in_flight);
        assert!(t.admit(Some(team), [0, 0], (1, 1000), 0, now).is_ok());
        assert_eq!(
            refusal(1001).reason,
            RefusalReason::Budget {
                period: Period::Day,
                retry_after_secs: 11 * 3600,
                held: false
            }
        );
        team.budgets[0].spent.add(day, 1000);
        assert!(
            matches!(refusal(0).reason, RefusalReason::Budget { held: false, .. }),
            "spent"
        );
        assert!(
            t.admit(Some(team), [0, 0], (1, 0), 0, now + 11 * 3600)
                .is_ok(),
            "next day"
        );
    }
}
