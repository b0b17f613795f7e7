//! Per-request state carried through Pingora's phases, split by concern so that a feature adds
//! a field to one part: what the client sent ([`Request`]), where it goes ([`Routed`]), the
//! current try at a server ([`Attempt`]), what came back ([`Response`]) and who pays
//! ([`Tenancy`]). Dropping the context releases every guard (in-flight counts, permits, token
//! reservations, retry budget slots) on every exit path.

mod attempt;
mod cache;
mod request;
mod response;
mod tenancy;
mod trace;

use std::sync::Arc;

pub use attempt::{Attempt, RetryReason, Tried, MAX_ATTEMPTS};
pub use cache::{CacheState, Fill};
pub use request::Request;
pub use response::Response;
pub use tenancy::Tenancy;
pub use trace::{AttemptSpan, Trace};

use crate::routing::{Decision, Route, Step};
use crate::state::{Model, Pool, Runtime};

/// The request's route, once decided: the runtime it was decided on (the request keeps it to
/// the end, across reloads) and where in the route's chain the current attempt is.
pub struct Routed {
    pub runtime: Arc<Runtime>,
    pub route: Route,
    /// Index into `route.chain`: the step (model, pool) of the current attempt.
    pub step: u8,
}

impl Routed {
    fn current(&self) -> Step {
        self.route
            .chain
            .get(usize::from(self.step))
            .unwrap_or_default()
    }

    /// Index into `runtime.models` of the model answering at this step (never virtual).
    pub fn model_index(&self) -> usize {
        self.current().model as usize
    }

    /// Index into `runtime.pools` of the current attempt's pool.
    pub fn pool_index(&self) -> usize {
        self.current().pool as usize
    }

    pub fn model(&self) -> &Model {
        &self.runtime.models[self.model_index()]
    }

    pub fn pool(&self) -> &Pool {
        &self.runtime.pools[self.pool_index()]
    }

    /// The model the client named (virtual or not).
    pub fn requested(&self) -> &Model {
        &self.runtime.models[usize::from(self.route.requested)]
    }

    /// The decision's label and metric.
    pub fn decision(&self) -> Option<&Decision> {
        self.runtime.router.decision(self.route.decision)
    }
}

#[derive(Default)]
pub struct Ctx {
    pub request: Request,
    pub routed: Option<Routed>,
    pub attempt: Attempt,
    pub response: Response,
    pub tenancy: Tenancy,
    /// `Some` when `otel:` is on.
    pub trace: Option<Box<Trace>>,
    /// `Some` when the requested model has a response cache.
    pub cache: Option<Box<CacheState>>,
}
