//! Prefix-cache-aware balancing (`balance: prefix_aware`): send a request to the server that
//! most probably holds its prefix in its KV cache, unless that server is loaded; keep queues
//! even otherwise.
//!
//! **The index.** Per pool, which server recently received which prefix blocks (the chained
//! hashes of `features.rs`): a map from block hash to the set of servers holding it (a 128-bit
//! mask; a slot per server, stable across reloads), and per server a ring of the blocks it was
//! given, at most `blocks_per_server` (or, unless that is set, as many as its engine says its
//! KV cache holds: vLLM's `cache_config_info`, SGLang's `max_total_num_tokens`), evicted oldest first with a second chance for blocks
//! used since they were inserted (CLOCK, an approximation of LRU that needs no list to update
//! on a hit). A hit is one map lookup per block that also stamps the block as used. Memory is
//! bounded by `blocks_per_server` × servers, whatever the traffic. A server that leaves the
//! pool has its blocks cleared. The index learns from the decisions themselves: the chosen
//! server is assumed to hold the request's blocks from now on (optimistic insert), so a burst
//! of requests sharing a new prefix spreads only until one server owns it.
//!
//! **The decision.** For each usable server: the number of leading blocks of the request it
//! holds, and its load (the engine's running + waiting requests, moved by what the gateway
//! sent and saw finish since the reading, as `least_load` reads it). A server whose load is
//! over `max(abs_threshold, rel_threshold × mean load)` is not chosen while another is under
//! it. The others are scored `matched fraction − beta × load / (mean load + 1)`, where the
//! matched fraction counts only from `min_match` leading blocks on, and not on a server whose
//! engine reports its KV cache past `kv_threshold` (it would evict to make room); the best
//! wins, ties rotating. So a request that matches nowhere goes to the least loaded server, as
//! `least_load` would send it (never the one with the emptiest index, which is what the
//! SGLang router's cache_aware does when its balance guard trips, and which piles load up),
//! and a holder of the prefix keeps it only while its extra load is worth less than the
//! prefill it saves: with `beta` 1, a server holding the whole prompt loses it to an idle one
//! once its load is about the mean + 1 above the idle one's.
//!
//! The index is behind one mutex per pool, held for a lookup per block of the request (and
//! an insert per block the chosen server did not hold); nothing is allocated once the index is
//! warm. [`Residency`] is the seam for a precise source of the same facts (vLLM's KV cache
//! events), which this approximation stands in for.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Balance, Candidates, Features};

/// Servers a prefix-aware pool may have (the width of a block's server mask).
pub const MAX_SERVERS: usize = 128;

/// Most blocks a server may hold in the index (16M: about 4 GiB of prompt text).
pub const MAX_BLOCKS_PER_SERVER: f64 = (1u32 << 24) as f64;

/// Engine tokens per block of the index (4 bytes per token).
const TOKENS_PER_BLOCK: f64 = (super::PREFIX_BLOCK_BYTES / 4) as f64;

/// Tunables of `balance: prefix_aware` (`pools.X.prefix`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixSettings {
    /// Blocks remembered per server (each ~64 tokens): 8192 is 512k tokens, a GPU's worth.
    /// Unless set in the config, a server whose engine reports its KV cache's size gets that
    /// size instead (`sized_by_engine`).
    pub blocks_per_server: u32,
    /// Whether a server's engine-reported KV cache size sets its share of the index.
    pub sized_by_engine: bool,
    /// Weight of relative load against the matched fraction in the score.
    pub beta: f64,
    /// A server over `max(abs_threshold, rel_threshold × mean load)` loses affinity.
    pub abs_threshold: f64,
    pub rel_threshold: f64,
    /// Leading blocks a server must hold to be chosen for affinity.
    pub min_match: u32,
    /// KV cache usage (0..1, as the engine reports it) past which a server loses affinity.
    pub kv_threshold: f64,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        Self {
            blocks_per_server: 8192,
            sized_by_engine: true,
            beta: 1.0,
            abs_threshold: 4.0,
            rel_threshold: 1.25,
            min_match: 2,
            kv_threshold: 0.95,
        }
    }
}

/// Which servers hold which prefix blocks: the approximate [`PrefixIndex`], or (the seam) a
/// precise source fed by the engines' KV cache events.
pub trait Residency: Send + Sync {
    /// Writes into `depth[i]` how many leading blocks of `chain` the server in slot
    /// `slots[i]` holds, and marks the blocks found as used.
    fn depths(&self, chain: &[u64], slots: &[u8], depth: &mut [u32]);
    /// The request went to the server in `slot`: it holds `chain` from now on. `capacity`:
    /// the server's size in blocks, when known better than the pool's setting.
    fn learn(&self, slot: u8, chain: &[u64], capacity: Option<u32>);
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Slots whose server holds the block.
    servers: u128,
    /// When it was last matched or inserted (the index's clock).
    used: u64,
}

/// One server's place in the index.
#[derive(Debug, Default)]
struct Slot {
    /// The server's id (`host:port`); `None`: free.
    id: Option<Box<str>>,
    /// Blocks it may hold, when its engine said (0: the index's capacity).
    capacity: u32,
    /// Blocks given to the server, oldest first (a chain's tail before its head), with the
    /// clock when each was inserted.
    ring: VecDeque<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Index {
    blocks: Map<Block>,
    slots: Vec<Slot>,
    capacity: u32,
    clock: u64,
}

/// The prefix index of one pool; outlives runtimes (a reload keeps what servers that stay
/// hold).
#[derive(Debug, Default)]
pub struct PrefixIndex {
    inner: Mutex<Index>,
}

impl PrefixIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        crate::lock(&self.inner)
    }

    /// The slot of each server (by id, in pool order), giving new servers free slots, and the
    /// capacity per server. Slots of servers that left stay until [`Self::retain`] (the
    /// runtime being built may not be swapped in), unless a newcomer needs one: then a slot of
    /// a server not in `ids` is cleared and taken. `None` when the pool has more servers than
    /// slots.
    pub fn attach(&self, ids: &[&str], blocks_per_server: u32) -> Option<Box<[u8]>> {
        if ids.len() > MAX_SERVERS {
            return None;
        }
        let mut ix = self.lock();
        ix.capacity = blocks_per_server.max(1);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let found = ix.slots.iter().position(|s| s.id.as_deref() == Some(*id));
            let slot = match found {
                Some(s) => s,
                None => {
                    let free = ix.slots.iter().position(|s| s.id.is_none());
                    let s = match free {
                        Some(s) => s,
                        None if ix.slots.len() < MAX_SERVERS => {
                            ix.slots.push(Slot::default());
                            ix.slots.len() - 1
                        }
                        None => {
                            let gone = ix
                                .slots
                                .iter()
                                .position(|s| s.id.as_deref().is_some_and(|i| !ids.contains(&i)))?;
                            ix.forget(gone);
                            gone
                        }
                    };
                    ix.slots[s].id = Some((*id).into());
                    s
                }
            };
            out.push(slot as u8);
        }
        Some(out.into_boxed_slice())
    }

    /// Forgets the servers not in `ids` (after a reload swapped in a runtime without them):
    /// their blocks are cleared and their slots freed.
    pub fn retain(&self, ids: &[&str]) {
        let mut ix = self.lock();
        let gone: Vec<usize> = ix
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.id.as_deref().is_some_and(|id| !ids.contains(&id)))
            .map(|(i, _)| i)
            .collect();
        for s in gone {
            ix.forget(s);
        }
    }

    /// Blocks the server in `slot` is remembered to hold.
    pub fn held(&self, slot: u8) -> usize {
        self.lock()
            .slots
            .get(usize::from(slot))
            .map_or(0, |s| s.ring.len())
    }

    /// Blocks the server `id` is remembered to hold, if it has a slot (the admin API).
    pub fn held_by(&self, id: &str) -> Option<usize> {
        self.lock()
            .slots
            .iter()
            .find(|s| s.id.as_deref() == Some(id))
            .map(|s| s.ring.len())
    }
}

impl Index {
    /// Clears a slot: its server's blocks and its id.
    fn forget(&mut self, slot: usize) {
        let ring = std::mem::take(&mut self.slots[slot].ring);
        for (hash, _) in ring {
            self.clear(hash, slot);
        }
        self.slots[slot].id = None;
    }

    fn clear(&mut self, hash: u64, slot: usize) {
        if let Some(b) = self.blocks.get_mut(&hash) {
            b.servers &= !(1u128 << slot);
            if b.servers == 0 {
                self.blocks.remove(&hash);
            }
        }
    }

    /// Makes room in `slot`'s ring: the oldest block goes, unless it was used since it was
    /// inserted; then it goes to the back (at most a few times before one goes anyway).
    fn evict(&mut self, slot: usize) {
        for chance in 0..8 {
            let Some((hash, inserted)) = self.slots[slot].ring.pop_front() else {
                return;
            };
            let used = self.blocks.get(&hash).map_or(0, |b| b.used);
            if used > inserted && chance < 7 {
                let now = self.clock;
                self.slots[slot].ring.push_back((hash, now));
                continue;
            }
            self.clear(hash, slot);
            return;
        }
    }
}

impl Residency for PrefixIndex {
    fn depths(&self, chain: &[u64], slots: &[u8], depth: &mut [u32]) {
        depth.iter_mut().for_each(|d| *d = 0);
        if chain.is_empty() {
            return;
        }
        let mut ix = self.lock();
        ix.clock += 1;
        let now = ix.clock;
        let wanted = slots.iter().fold(0u128, |m, &s| m | (1u128 << s));
        let mut alive = wanted;
        let mut reached = [0u32; MAX_SERVERS];
        let mut k = 0;
        while k < chain.len() && alive != 0 {
            let held = match ix.blocks.get_mut(&chain[k]) {
                Some(b) if b.servers & alive != 0 => {
                    b.used = now;
                    b.servers & alive
                }
                _ => 0,
            };
            k += 1;
            // Servers still matching get one more block.
            let mut m = held;
            while m != 0 {
                let s = m.trailing_zeros() as usize;
                reached[s] = k as u32;
                m &= m - 1;
            }
            alive = held;
        }
        for (d, &s) in depth.iter_mut().zip(slots) {
            *d = reached[usize::from(s)];
        }
    }

    fn learn(&self, slot: u8, chain: &[u64], capacity: Option<u32>) {
        if chain.is_empty() {
            return;
        }
        let s = usize::from(slot);
        let bit = 1u128 << s;
        let mut guard = self.lock();
        let ix = &mut *guard;
        if ix.slots.len() <= s {
            return;
        }
        if let Some(c) = capacity {
            ix.slots[s].capacity = c.max(1);
        }
        let cap = match ix.slots[s].capacity {
            0 => ix.capacity as usize,
            c => c as usize,
        };
        ix.clock += 1;
        let now = ix.clock;
        // Tail first, so that the ring evicts a chain from its end, as an engine frees a
        // sequence's blocks: what stays is still a leading run that can match.
        for &hash in chain.iter().rev() {
            let b = ix.blocks.entry(hash).or_insert(Block {
                servers: 0,
                used: now,
            });
            b.used = now;
            if b.servers & bit != 0 {
                continue;
            }
            b.servers |= bit;
            while ix.slots[s].ring.len() >= cap {
                ix.evict(s);
            }
            ix.slots[s].ring.push_back((hash, now));
        }
    }
}

/// The registry of prefix indices, by pool name: what a reload re-attaches to.
#[derive(Debug, Default)]
pub struct PrefixIndexes {
    by_pool: Mutex<HashMap<String, Arc<PrefixIndex>>>,
}

impl PrefixIndexes {
    /// The index of `pool`, made on first use.
    pub fn get(&self, pool: &str) -> Arc<PrefixIndex> {
        crate::lock(&self.by_pool)
            .entry(pool.to_owned())
            .or_default()
            .clone()
    }

    /// The index of `pool`, if it has one.
    pub fn find(&self, pool: &str) -> Option<Arc<PrefixIndex>> {
        crate::lock(&self.by_pool).get(pool).cloned()
    }

    /// Keeps the indices of these pools with these servers (after a swap), drops the rest.
    pub fn retain(&self, pools: &[(&str, Vec<&str>)]) {
        let mut map = crate::lock(&self.by_pool);
        map.retain(|name, _| pools.iter().any(|(p, _)| p == name));
        for (name, ids) in pools {
            if let Some(ix) = map.get(*name) {
                ix.retain(ids);
            }
        }
    }
}

/// The policy, over one runtime's servers.
pub struct PrefixAware {
    residency: Arc<dyn Residency>,
    /// Slot of each server, in server order.
    slots: Box<[u8]>,
    settings: PrefixSettings,
    /// `least_load`'s reading age limit.
    max_age_ms: u64,
    /// Where the least-load scan starts, so that ties rotate.
    next: AtomicUsize,
}

impl PrefixAware {
    pub fn new(
        residency: Arc<dyn Residency>,
        slots: Box<[u8]>,
        settings: PrefixSettings,
        max_age_ms: u64,
    ) -> Self {
        Self {
            residency,
            slots,
            settings,
            max_age_ms,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balance for PrefixAware {
    fn pick(&self, features: &Features, servers: &Candidates<'_>) -> Option<usize> {
        let n = servers.len().min(self.slots.len()).min(MAX_SERVERS);
        if n == 0 {
            return None;
        }
        let chain = &features.prefix_hashes;
        let mut load = [0f64; MAX_SERVERS];
        let mut hot = [false; MAX_SERVERS];
        let (mut total, mut count) = (0.0, 0usize);
        for i in 0..n {
            if (servers.eligible)(i) {
                load[i] = servers.load(i, self.max_age_ms);
                hot[i] = servers.states[i]
                    .engine_load(servers.now_ms, self.max_age_ms)
                    .and_then(|(_, kv)| kv)
                    .is_some_and(|kv| kv >= self.settings.kv_threshold);
                total += load[i];
                count += 1;
            }
        }
        if count == 0 {
            return None;
        }
        let mean = total / count as f64;
        let bound = self
            .settings
            .abs_threshold
            .max(self.settings.rel_threshold * mean);
        let mut depth = [0u32; MAX_SERVERS];
        self.residency
            .depths(chain, &self.slots[..n], &mut depth[..n]);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, f64)> = None;
        let mut least: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !(servers.eligible)(i) {
                continue;
            }
            if least.is_none_or(|(_, l)| load[i] < l) {
                least = Some((i, load[i]));
            }
            if load[i] > bound {
                continue;
            }
            let matched = if depth[i] < self.settings.min_match.max(1) || hot[i] {
                0.0
            } else {
                f64::from(depth[i]) / chain.len() as f64
            };
            let score = matched - self.settings.beta * load[i] / (mean + 1.0);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
        }
        // Every server over the guard: the least loaded.
        let chosen = best.or(least).map(|(i, _)| i)?;
        let capacity = self
            .settings
            .sized_by_engine
            .then(|| servers.states[chosen].kv_capacity_tokens())
            .flatten()
            .map(|tokens| (tokens / TOKENS_PER_BLOCK).clamp(1.0, MAX_BLOCKS_PER_SERVER) as u32);
        self.residency.learn(self.slots[chosen], chain, capacity);
        Some(chosen)
    }
}

#[cfg(test)]
mod tests;
