//! What the response cache did with the request.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::cache::Entry;

/// A cacheable model's request: what the cache said, and its answer being collected.
pub struct CacheState {
    pub key: u128,
    /// `hit`, `miss` or `bypass` (the `x-switchyard-cache` answer header).
    pub result: &'static str,
    pub hit: Option<Arc<Entry>>,
    /// The answer as the client receives it, while it may still be stored.
    pub fill: Option<Fill>,
}

pub struct Fill {
    pub body: BytesMut,
    pub max: usize,
    pub ttl: Duration,
    /// With `cache.semantic`: the partition, the prompt's embedding and how many to keep.
    pub semantic: Option<(u128, Box<[f32]>, usize)>,
}
