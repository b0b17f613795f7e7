//! Admission through the shared store: the same limits as the in-process store, decided by
//! one script call for the whole request (see [`crate::fleet::scripts::ADMIT`]), and what an
//! admitted request holds there until it ends.

use std::sync::Arc;

use super::bucket::{Rate, Snapshot};
use super::budget::Period;
use super::{keep_tightest, Admission, RateHeaders, Refusal, RefusalReason, Scope, Tenant};
use crate::fleet::{SharedStore, ADMIT, SETTLE};

type RateKey = (Rate, Arc<str>);

/// A scope's limits as keys of the shared store (at their full size).
#[derive(Debug)]
pub struct SharedScope {
    pub requests: Option<(Rate, Arc<str>)>,
    pub tokens: Option<(Rate, Arc<str>)>,
    pub concurrency: Option<(u64, Arc<str>)>,
}

/// How long a period's spend is kept after it began: long enough to be read back for the
/// whole period, and a month to look at afterwards.
fn keep_secs(period: Period) -> u64 {
    match period {
        Period::Day => 32 * 86_400,
        Period::Month => 62 * 86_400,
    }
}

/// Admits in the shared store; `None` when it did not answer (the caller applies
/// `on_error`).
pub(super) async fn admit(
    store: &Arc<SharedStore>,
    scopes: &[Option<&Scope>],
    tenant: Option<&Tenant>,
    estimate: (u64, u64),
    unix_secs: u64,
) -> Option<Result<Admission, Refusal>> {
    let (tokens, micros) = estimate;
    let budgets: Vec<_> = tenant
        .map(|t| &t.budgets[..])
        .unwrap_or_default()
        .iter()
        .filter_map(|b| Some((b, b.shared.as_ref()?)))
        .collect();
    let shared: Vec<&SharedScope> = scopes
        .iter()
        .flatten()
        .filter_map(|s| s.shared.as_ref())
        .collect();
    let concurrency: Vec<_> = shared
        .iter()
        .filter_map(|s| s.concurrency.as_ref())
        .collect();
    // (rate and key, units asked, whether it counts requests)
    let rates: Vec<(&RateKey, u64, bool)> = shared
        .iter()
        .flat_map(|s| {
            [
                s.requests.as_ref().map(|r| (r, 1, true)),
                s.tokens.as_ref().map(|r| (r, tokens, false)),
            ]
        })
        .flatten()
        .collect();
    if budgets.is_empty() && concurrency.is_empty() && rates.is_empty() {
        return Some(Ok(Admission::default()));
    }
    let (lease, member) = store.member();
    let mut call = ADMIT.prepare_invoke();
    call.arg(&member)
        .arg(store.settings.lease.as_millis() as u64)
        .arg(budgets.len())
        .arg(concurrency.len())
        .arg(rates.len());
    let mut held_budgets = Vec::with_capacity(budgets.len());
    for (b, key) in &budgets {
        let (index, _) = b.period.at(unix_secs);
        let spent = format!("{key}/{index}");
        let held = format!("{key}/{index}/held");
        call.key(&spent).key(&held).arg(b.shared_limit).arg(micros);
        held_budgets.push(HeldBudget {
            period: b.period,
            key: Arc::clone(key),
            held: Arc::from(held),
            micros,
        });
    }
    for (limit, key) in &concurrency {
        call.key(key.as_ref()).arg(*limit);
    }
    for ((rate, key), cost, _) in &rates {
        call.key(key.as_ref())
            .arg(rate.limit)
            .arg(rate.period_ms)
            .arg(*cost);
    }
    let reply: Vec<i64> = store.admit(&call).await?;
    let (head, snapshots) = reply.split_at_checked(3)?;
    let mut headers = RateHeaders::default();
    for (((rate, _), _, is_requests), s) in rates.iter().zip(snapshots.chunks_exact(2)) {
        let snapshot = Snapshot {
            limit: rate.limit,
            remaining: u64::try_from(s[0]).unwrap_or(0),
            reset_ms: u64::try_from(s[1]).unwrap_or(0),
        };
        let slot = if *is_requests {
            &mut headers.requests
        } else {
            &mut headers.tokens
        };
        keep_tightest(slot, snapshot);
    }
    let index = usize::try_from(head[1] - 1).unwrap_or(0);
    let reason = match head[0] {
        0 => {
            let mut entries: Vec<crate::fleet::Lease> = held_budgets
                .iter()
                .map(|b| (b.held.clone(), format!("{member}:{}", b.micros)))
                .collect();
            entries.extend(concurrency.iter().map(|(_, k)| (k.clone(), member.clone())));
            store.hold(lease, entries);
            let hold = SharedHold {
                store: store.clone(),
                lease,
                member,
                tokens: rates
                    .iter()
                    .filter(|(_, _, is_requests)| !is_requests)
                    .map(|(r, _, _)| (*r).clone())
                    .collect(),
                budgets: held_budgets,
                concurrency: concurrency.iter().map(|(_, k)| k.clone()).collect(),
                open: true,
            };
            return Some(Ok(Admission {
                reserved: tokens,
                headers,
                shared: Some(Box::new(hold)),
                ..Admission::default()
            }));
        }
        1 => {
            let (b, _) = budgets.get(index)?;
            let held = head[2] == 1;
            RefusalReason::Budget {
                period: b.period,
                retry_after_secs: if held { 1 } else { b.period.at(unix_secs).1 },
                held,
            }
        }
        2 => RefusalReason::Concurrency {
            limit: concurrency.get(index)?.0,
        },
        3 => {
            let wait_ms = u64::try_from(head[2]).unwrap_or(0);
            if rates.get(index)?.2 {
                RefusalReason::Requests { wait_ms }
            } else {
                RefusalReason::Tokens { wait_ms }
            }
        }
        _ => RefusalReason::TooLarge {
            limit: rates.get(index)?.0 .0.limit,
            requested: tokens,
        },
    };
    if let (RefusalReason::Requests { .. }, Some(r)) = (&reason, &mut headers.requests) {
        r.remaining = 0;
    }
    Some(Err(Refusal { reason, headers }))
}

#[derive(Debug)]
struct HeldBudget {
    period: Period,
    /// The budget's key without its period.
    key: Arc<str>,
    /// The reservations of the period the request began in.
    held: Arc<str>,
    micros: u64,
}

/// What an admitted request holds in the shared store: its token reservations, budget
/// reservations and concurrency leases. Settled when the request ends; released (tokens
/// kept, as the in-process store keeps them) when dropped unsettled.
pub struct SharedHold {
    store: Arc<SharedStore>,
    lease: u64,
    member: String,
    tokens: Vec<(Rate, Arc<str>)>,
    budgets: Vec<HeldBudget>,
    concurrency: Vec<Arc<str>>,
    open: bool,
}

impl std::fmt::Debug for SharedHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHold")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl SharedHold {
    /// Charges `delta` tokens (negative: refunds), spends `micros` in the period of
    /// `unix_secs`, and gives back every reservation and lease.
    pub(super) fn settle(&mut self, delta: i64, micros: u64, unix_secs: u64) {
        if !self.open {
            return;
        }
        self.open = false;
        self.store.release(self.lease);
        let tokens: &[(Rate, Arc<str>)] = if delta == 0 { &[] } else { &self.tokens };
        if tokens.is_empty() && self.budgets.is_empty() && self.concurrency.is_empty() {
            // Nothing to settle or give back (a request limit only): no round trip.
            return;
        }
        let mut call = SETTLE.prepare_invoke();
        call.arg(&self.member)
            .arg(tokens.len())
            .arg(self.budgets.len())
            .arg(self.concurrency.len());
        for (rate, key) in tokens {
            call.key(key.as_ref())
                .arg(rate.limit)
                .arg(rate.period_ms)
                .arg(delta);
        }
        for b in &self.budgets {
            let (now, _) = b.period.at(unix_secs);
            call.key(format!("{}/{now}", b.key))
                .key(b.held.as_ref())
                .arg(micros)
                .arg(b.micros)
                .arg(keep_secs(b.period));
        }
        for key in &self.concurrency {
            call.key(key.as_ref());
        }
        self.store.spawn(call);
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        self.settle(0, 0, super::budget::unix_secs());
    }
}
