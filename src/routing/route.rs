//! The decision as a value: the (model, pool) steps a request tries in order, the decision's
//! label, and its mirror. The proxy carries a [`Route`] from `request_filter` to `logging`.

use http::HeaderValue;

/// One step of a route: a model and one of its pools (indices into the runtime's lists).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub model: u16,
    pub pool: u16,
}

/// The steps a request tries in order, without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chain {
    steps: [Step; Chain::CAPACITY],
    len: u8,
}

impl Chain {
    /// More steps than a request may ever take attempts (6) leaves room for steps skipped
    /// because their pool has no usable server.
    pub const CAPACITY: usize = 8;

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<Step> {
        self.steps[..self.len()].get(i).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps[..self.len()].iter().copied()
    }

    pub(super) fn has_pool(&self, pool: usize) -> bool {
        self.iter().any(|s| s.pool as usize == pool)
    }

    /// Adds a step unless its pool is already in the chain or the chain is full.
    pub(super) fn push(&mut self, model: usize, pool: usize) -> bool {
        if self.has_pool(pool) || self.len() == Self::CAPACITY {
            return false;
        }
        // Config validation holds models and pools to u16's range.
        self.steps[self.len()] = Step {
            model: model as u16,
            pool: pool as u16,
        };
        self.len += 1;
        true
    }

    pub(super) fn extend(&mut self, other: &Chain) {
        for s in other.iter() {
            self.push(s.model as usize, s.pool as usize);
        }
    }
}

/// A routing decision: what the proxy carries through a request.
#[derive(Debug, Clone)]
pub struct Route {
    /// The public model the client named (index; virtual or not). The indices here are u16
    /// (validation holds models and pools to that range): the route lives in the request
    /// context, whose every byte each request pays for (see `proxy::ctx`).
    pub requested: u16,
    /// Index into [`Router::decisions`]: the label and metric of this decision.
    pub decision: u32,
    /// The (model, pool) steps to try in order; never empty.
    pub chain: Chain,
    /// Where to mirror the request, when its shadow's percentage drew it.
    pub shadow: Option<Mirror>,
}

/// A mirror of a request: `to` is the shadow target, `of` the model whose `shadow` it is (the
/// one the request named, else the one it was routed to), whose `max_inflight` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    pub of: u16,
    pub to: u16,
}

/// One possible decision, with its label. Built once per snapshot, so that a request's
/// `x-switchyard-route` is a clone of a prebuilt value.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `<model>#<rule>:<reason>`, e.g. `auto#3:keywords`, `auto#5:split=b`,
    /// `auto#6:price=a`, `llama#0:direct`.
    pub label: String,
    pub header: Option<HeaderValue>,
    /// The model the request named (index).
    pub model: usize,
    /// 1-based rule; 0 for a model serving itself.
    pub rule: usize,
    /// The model the decision sends to (index).
    pub target: usize,
}
