//! A block-based KV cache with prefix reuse, as vLLM's automatic prefix caching works.
//!
//! A prompt is cut into blocks of `block_size` tokens; block i is identified by a chained hash
//! of block i-1's hash and its own tokens, so a hash names a whole prefix. Full prompt blocks
//! stay resident after their request ends and are reused by later prompts that share the
//! prefix; unreferenced resident blocks are evicted least-recently-used first when space is
//! needed. Unlike vLLM, a sequence reserves its worst case (prompt + max_tokens) on admission,
//! so there is no preemption to model.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Chained hashes of the full blocks of `prompt`, `block_bytes` bytes each.
pub fn block_hashes(prompt: &[u8], block_bytes: usize) -> Vec<u64> {
    let mut prev = 0u64;
    prompt
        .chunks_exact(block_bytes.max(1))
        .map(|block| {
            let mut h = DefaultHasher::new();
            prev.hash(&mut h);
            block.hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    refs: u32,
    tick: u64,
}

/// Blocks a sequence holds, returned by [`KvCache::allocate`] and given back on release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Leading prompt blocks found in the cache (shared, pinned).
    pub matched: usize,
    /// Blocks held privately (the uncached prompt tail and the generation).
    pub private: u32,
}

#[derive(Debug)]
pub struct KvCache {
    capacity: u32,
    /// Resident prompt blocks by hash.
    resident: HashMap<u64, Entry>,
    /// Unreferenced resident blocks in eviction order.
    lru: BTreeSet<(u64, u64)>,
    pinned: u32,
    private: u32,
    tick: u64,
}

impl KvCache {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            resident: HashMap::new(),
            lru: BTreeSet::new(),
            pinned: 0,
            private: 0,
            tick: 0,
        }
    }

    fn free(&self) -> u32 {
        self.capacity
            .saturating_sub(self.resident.len() as u32 + self.private)
    }

    /// Number of leading `blocks` resident now.
    pub fn matched(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|h| self.resident.contains_key(h))
            .count()
    }

    /// Reserves space for a sequence whose prompt has `blocks` and which needs `total` blocks
    /// in all; evicts unreferenced blocks as needed. `None` when it does not fit now.
    pub fn allocate(&mut self, blocks: &[u64], total: u32) -> Option<Allocation> {
        let matched = self.matched(blocks);
        let private = total.saturating_sub(matched as u32);
        // Pin first so that eviction cannot take the blocks this sequence reuses.
        for h in &blocks[..matched] {
            self.pin(*h);
        }
        while self.free() < private {
            let Some(victim) = self.lru.pop_first() else {
                self.unpin_all(&blocks[..matched]);
                return None;
            };
            self.resident.remove(&victim.1);
        }
        self.private += private;
        Some(Allocation { matched, private })
    }

    fn pin(&mut self, h: u64) {
        if let Some(e) = self.resident.get_mut(&h) {
            if e.refs == 0 {
                self.lru.remove(&(e.tick, h));
                self.pinned += 1;
            }
            e.refs += 1;
        }
    }

    fn unpin_all(&mut self, blocks: &[u64]) {
        for h in blocks {
            self.tick += 1;
            if let Some(e) = self.resident.get_mut(h) {
                e.refs = e.refs.saturating_sub(1);
                if e.refs == 0 {
                    e.tick = self.tick;
                    self.lru.insert((self.tick, *h));
                    self.pinned -= 1;
                }
            }
        }
    }

    /// Gives a sequence's blocks back. With `keep_prompt`, its full prompt blocks stay resident
    /// for reuse (a finished request); an aborted one keeps only what it had matched.
    pub fn release(&mut self, blocks: &[u64], alloc: Allocation, keep_prompt: bool) {
        self.private = self.private.saturating_sub(alloc.private);
        self.unpin_all(&blocks[..alloc.matched]);
        if keep_prompt {
            for h in &blocks[alloc.matched..] {
                if self.free() == 0 || self.resident.contains_key(h) {
                    break;
                }
                self.tick += 1;
                self.resident.insert(
                    *h,
                    Entry {
                        refs: 0,
                        tick: self.tick,
                    },
                );
                self.lru.insert((self.tick, *h));
            }
        }
    }

    /// Fraction of blocks held by running sequences (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        f64::from(self.pinned + self.private) / f64::from(self.capacity.max(1))
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_is_matched_and_divergent_suffix_is_not() {
        let a = block_hashes(&[b"x".repeat(64), b"y".repeat(64)].concat(), 64);
        let b = block_hashes(&[b"x".repeat(64), b"z".repeat(64)].concat(), 64);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        let mut kv = KvCache::new(100);
        let alloc = kv.allocate(&a, 4).unwrap();
        assert_eq!(alloc.matched, 0);
        kv.release(&a, alloc, true);
        assert_eq!(kv.matched(&b), 1);
        assert_eq!(kv.matched(&a), 2);
    }

    #[test]
    fn usage_counts_running_sequences_not_idle_cache() {
        let p = block_hashes(&b"p".repeat(256), 64);
        let mut kv = KvCache::new(10);
        let alloc = kv.allocate(&p, 6).unwrap();
        assert!((kv.usage() - 0.6).abs() < 1e-9);
        kv.release(&p, alloc, true);
        assert_eq!(kv.usage(), 0.0);
        let again = kv.allocate(&p, 6).unwrap();
        assert_eq!(again.matched, 4);
        assert_eq!(again.private, 2);
        assert!((kv.usage() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn lru_block_is_evicted_first_and_pinned_blocks_never() {
        let mut kv = KvCache::new(4);
        let old = block_hashes(&b"o".repeat(128), 64);
        let new = block_hashes(&b"n".repeat(128), 64);
        let a = kv.allocate(&old, 2).unwrap();
        kv.release(&old, a, true);
        let b = kv.allocate(&new, 2).unwrap();
        kv.release(&new, b, true);
        // Full: 4 resident. A 2-block sequence evicts the two oldest (`old`).
        let c = kv.allocate(&[], 2).unwrap();
        assert_eq!(kv.matched(&old), 0);
        assert_eq!(kv.matched(&new), 2);
        // Reuse `new` (pinned), then ask for more than what is left: refused, nothing lost.
        let d = kv.allocate(&new, 2).unwrap();
        assert_eq!(d.matched, 2);
        assert_eq!(kv.allocate(&[], 1), None);
        assert_eq!(kv.matched(&new), 2);
        kv.release(&[], c, false);
        kv.release(&new, d, false);
        assert_eq!(kv.usage(), 0.0);
    }
}
