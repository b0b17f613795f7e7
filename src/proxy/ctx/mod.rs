//! Per-request state carried through Pingora's phases, split by concern so that a feature adds
//! a field to one part: what the client sent ([`Request`]), where it goes ([`Routed`]), the
//! current try at a server ([`Attempt`]), what came back ([`Response`]) and who pays
//! ([`Tenancy`]). Dropping the context releases every guard (in-flight counts, permits, token
//! reservations, retry budget slots) on every exit path.

mod attempt;
mod request;
mod response;
mod tenancy;

use std::sync::Arc;

pub use attempt::{Attempt, RetryReason, Tried, MAX_ATTEMPTS};
pub use request::Request;
pub use response::Response;
pub use tenancy::Tenancy;

use crate::state::Runtime;

/// The request's route, once its model is known.
pub struct Routed {
    pub runtime: Arc<Runtime>,
    /// Index into `runtime.models`.
    pub model: usize,
    /// Index into `runtime.pools`: the pool of the current attempt (the model's own, or a
    /// fallback).
    pub pool: usize,
    /// How many of the model's fallback pools have been entered.
    pub fallbacks_used: usize,
}

#[derive(Default)]
pub struct Ctx {
    pub request: Request,
    pub routed: Option<Routed>,
    pub attempt: Attempt,
    pub response: Response,
    pub tenancy: Tenancy,
}
