use super::*;
use crate::balance::testing::states;
use crate::upstream::engine_load::EngineLoad;
use crate::upstream::ServerState;

/// A chain of `n` blocks that shares its first `shared` blocks with every chain of the same
/// `family` (a system prompt) and is unique after them.
fn chain(family: u64, shared: usize, unique: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|k| {
            if (k as usize) < shared {
                family << 32 | k
            } else {
                1 << 63 | unique << 32 | k
            }
        })
        .collect()
}

fn index(ids: &[&str], cap: u32) -> (Arc<PrefixIndex>, Box<[u8]>) {
    let ix = Arc::new(PrefixIndex::default());
    let slots = ix.attach(ids, cap).unwrap();
    (ix, slots)
}

fn depths(ix: &PrefixIndex, chain: &[u64], slots: &[u8]) -> Vec<u32> {
    let mut d = vec![0; slots.len()];
    ix.depths(chain, slots, &mut d);
    d
}

#[test]
fn a_server_matches_the_leading_blocks_it_was_given() {
    let (ix, slots) = index(&["a:1", "b:1"], 100);
    let c = chain(1, 5, 1, 8);
    ix.learn(slots[0], &c, None);
    assert_eq!(depths(&ix, &c, &slots), [8, 0]);
    // Same system prompt, another user: the shared blocks only.
    assert_eq!(depths(&ix, &chain(1, 5, 2, 8), &slots), [5, 0]);
    // A later block held does not count past a miss.
    let mut gap = c.clone();
    gap[2] = 99;
    assert_eq!(depths(&ix, &gap, &slots), [2, 0]);
    assert_eq!(depths(&ix, &[], &slots), [0, 0]);
    // Learning the same chain again holds nothing twice.
    ix.learn(slots[0], &c, None);
    assert_eq!(ix.held(slots[0]), 8);
}

#[test]
fn a_full_server_forgets_the_tail_of_a_chain_first_and_keeps_what_was_used() {
    let (ix, slots) = index(&["a:1"], 4);
    let long = chain(1, 6, 1, 6);
    ix.learn(slots[0], &long, None);
    assert_eq!(ix.held(slots[0]), 4);
    // The head stayed: a leading run still matches.
    assert_eq!(depths(&ix, &long, &slots), [4]);

    // A second chain pushes out blocks, but the first chain's (just matched) blocks get a
    // second chance over the second chain's older ones.
    let (ix, slots) = index(&["a:1"], 6);
    let hot = chain(1, 3, 1, 3);
    ix.learn(slots[0], &hot, None);
    ix.learn(slots[0], &chain(2, 3, 2, 3), None);
    assert_eq!(depths(&ix, &hot, &slots), [3]);
    ix.learn(slots[0], &chain(3, 3, 3, 3), None);
    assert_eq!(depths(&ix, &hot, &slots), [3], "used blocks survive");
    assert_eq!(
        depths(&ix, &chain(2, 3, 2, 3), &slots),
        [0],
        "unused ones went"
    );
    assert_eq!(ix.held(slots[0]), 6);
}

#[test]
fn a_server_whose_engine_reports_its_kv_cache_holds_that_much() {
    // 256 tokens of KV cache: 4 blocks of the index (64 tokens each), not the default 8192.
    let (p, ix) = policy(2, PrefixSettings::default());
    let s = states(2);
    let reading = |kv_tokens| EngineLoad {
        running: 0.0,
        waiting: 0.0,
        kv_usage: None,
        kv_tokens,
    };
    s[0].set_engine_load(reading(256.0), 900);
    s[1].set_engine_load(reading(256.0), 900);
    let chosen = pick(&p, &s, &chain(1, 10, 1, 10));
    assert_eq!(ix.held(chosen as u8), 4);
    // Set in the config, blocks_per_server wins over the engine.
    let (p, ix) = policy(
        2,
        PrefixSettings {
            blocks_per_server: 6,
            sized_by_engine: false,
            ..PrefixSettings::default()
        },
    );
    let chosen = pick(&p, &s, &chain(1, 10, 1, 10));
    assert_eq!(ix.held(chosen as u8), 6);
}

#[test]
fn memory_is_bounded_by_blocks_per_server_whatever_the_traffic() {
    let (ix, slots) = index(&["a:1", "b:1", "c:1"], 64);
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..2_000u64 {
        let c = chain(rng.u64(0..50), rng.usize(0..20), i, rng.usize(1..40));
        let mut d = [0; 3];
        ix.depths(&c, &slots, &mut d);
        ix.learn(slots[rng.usize(0..3)], &c, None);
    }
    let inner = ix.lock();
    for s in &slots {
        assert!(inner.slots[usize::from(*s)].ring.len() <= 64);
    }
    assert!(inner.blocks.len() <= 3 * 64, "{}", inner.blocks.len());
    // Every block in the map is in the ring of each server its mask names, and back.
    for (i, slot) in inner.slots.iter().enumerate() {
        for (hash, _) in &slot.ring {
            assert!(inner.blocks[hash].servers & (1 << i) != 0);
        }
    }
    let rings: usize = inner.slots.iter().map(|s| s.ring.len()).sum();
    let bits: u32 = inner.blocks.values().map(|b| b.servers.count_ones()).sum();
    assert_eq!(rings, bits as usize);
}

#[test]
fn slots_follow_servers_across_attaches_and_a_server_that_left_is_forgotten() {
    let ix = PrefixIndex::default();
    let first = ix.attach(&["a:1", "b:1", "c:1"], 100).unwrap();
    let c = chain(1, 4, 1, 4);
    ix.learn(first[0], &c, None);
    ix.learn(first[1], &c, None);
    // A reload that reorders the servers keeps each one's slot.
    let again = ix.attach(&["c:1", "a:1", "b:1"], 100).unwrap();
    assert_eq!(&*again, &[first[2], first[0], first[1]]);
    // A reload without b: b's blocks go, a's stay, and a newcomer gets b's slot empty.
    ix.retain(&["a:1", "c:1"]);
    assert_eq!(ix.held(first[1]), 0);
    assert_eq!(ix.held(first[0]), 4);
    let next = ix.attach(&["a:1", "c:1", "d:1"], 100).unwrap();
    assert_eq!(next[2], first[1]);
    assert_eq!(depths(&ix, &c, &next), [4, 0, 0]);
}

#[test]
fn a_pool_wider_than_the_mask_is_refused_and_a_full_one_reuses_slots() {
    let ids: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("h:{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ix = PrefixIndex::default();
    assert!(ix.attach(&ids, 10).is_none());
    let first = ix.attach(&ids[..MAX_SERVERS], 10).unwrap();
    ix.learn(first[0], &[1, 2, 3], None);
    // A reload that replaces a server of a full pool: the newcomer takes the slot of the one
    // that left, empty, before the swap's retain.
    let next = ix.attach(&ids[1..], 10).unwrap();
    assert_eq!(next[MAX_SERVERS - 1], first[0]);
    assert_eq!(ix.held(first[0]), 0);
}

#[test]
fn the_registry_keeps_indices_of_pools_that_stay() {
    let reg = PrefixIndexes::default();
    let a = reg.get("gpu");
    assert!(Arc::ptr_eq(&a, &reg.get("gpu")));
    reg.get("old");
    reg.retain(&[("gpu", vec!["a:1"])]);
    assert_eq!(
        crate::lock(&reg.by_pool).len(),
        1,
        "the pool that went is dropped"
    );
    assert!(Arc::ptr_eq(&a, &reg.get("gpu")));
}

// --- the policy ---

fn policy(n: usize, settings: PrefixSettings) -> (PrefixAware, Arc<PrefixIndex>) {
    let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8000")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ix = Arc::new(PrefixIndex::default());
    let slots = ix.attach(&ids, settings.blocks_per_server).unwrap();
    (PrefixAware::new(ix.clone(), slots, settings, 5_000), ix)
}

fn load(s: &ServerState, queue: f64, kv: f64) {
    s.set_engine_load(
        EngineLoad {
            running: queue,
            waiting: 0.0,
            kv_usage: Some(kv),
            kv_tokens: 0.0,
        },
        900,
    );
}

fn pick(p: &PrefixAware, s: &[Arc<ServerState>], c: &[u64]) -> usize {
    let f = Features {
        prefix_hashes: c.to_vec(),
        ..Features::default()
    };
    let weights = vec![1; s.len()];
    p.pick(
        &f,
        &Candidates {
            states: s,
            weights: &weights,
            eligible: &|_| true,
            now_ms: 1_000,
        },
    )
    .unwrap()
}

#[test]
fn a_conversation_follows_its_server_and_new_prefixes_go_to_the_least_loaded() {
    let (p, _) = policy(4, PrefixSettings::default());
    let s = states(4);
    for (i, q) in [3.0, 1.0, 2.0, 3.0].into_iter().enumerate() {
        load(&s[i], q, 0.1);
    }
    let first = pick(&p, &s, &chain(1, 8, 1, 8));
    assert_eq!(
        first, 1,
        "nothing matches: the least loaded, not the emptiest"
    );
    // The next turns (longer chains with the same head) follow, although 1 is now busier
    // than 2, as long as it stays within the guard.
    load(&s[1], 3.0, 0.1);
    for turn in 9..14 {
        assert_eq!(pick(&p, &s, &chain(1, 8, 1, turn)), 1);
    }
    // Another system prompt goes elsewhere, and stays there.
    let other = pick(&p, &s, &chain(2, 8, 2, 8));
    assert_eq!(other, 2);
    assert_eq!(pick(&p, &s, &chain(2, 8, 3, 10)), 2);
    assert_eq!(pick(&p, &s, &chain(1, 8, 4, 10)), 1);
}

#[test]
fn a_loaded_or_full_server_loses_affinity() {
    let (p, _) = policy(3, PrefixSettings::default());
    let s = states(3);
    for st in &s {
        load(st, 1.0, 0.1);
    }
    let c = chain(1, 8, 1, 8);
    let owner = pick(&p, &s, &c);
    // Over max(4, 1.5 × mean): 9 against 1 and 1 (mean 3.67, bound 5.5).
    load(&s[owner], 9.0, 0.1);
    let moved = pick(&p, &s, &c);
    assert_ne!(moved, owner);
    // Back under the guard, but its KV cache full: the server that learnt it since wins.
    load(&s[owner], 1.0, 0.97);
    assert_eq!(pick(&p, &s, &c), moved);
    // Below min_match blocks, no affinity at all: least loaded.
    let (p, _) = policy(
        2,
        PrefixSettings {
            min_match: 4,
            ..PrefixSettings::default()
        },
    );
    let s = states(2);
    load(&s[0], 1.0, 0.0);
    load(&s[1], 2.0, 0.0);
    pick(&p, &s, &chain(5, 3, 0, 3));
    load(&s[0], 2.0, 0.0);
    load(&s[1], 1.0, 0.0);
    assert_eq!(pick(&p, &s, &chain(5, 3, 0, 3)), 1);
    assert_eq!(pick(&p, &s, &chain(5, 3, 0, 3)), 1);
}

#[test]
fn beta_trades_matched_length_against_load() {
    // Two servers hold the same conversation to different depths; the deeper is busier.
    let run = |beta: f64| {
        let (p, ix) = policy(
            2,
            PrefixSettings {
                beta,
                abs_threshold: 100.0,
                ..PrefixSettings::default()
            },
        );
        let s = states(2);
        let c = chain(1, 10, 1, 10);
        ix.learn(0, &c, None);
        ix.learn(1, &c[..5], None);
        load(&s[0], 6.0, 0.0);
        load(&s[1], 1.0, 0.0);
        pick(&p, &s, &c)
    };
    assert_eq!(run(0.1), 0, "depth 1.0 - 0.1×6/4.5 beats 0.5 - 0.1×1/4.5");
    assert_eq!(run(2.0), 1, "depth 1.0 - 2×6/4.5 loses to 0.5 - 2×1/4.5");
}

#[test]
fn a_holder_keeps_its_prefix_until_its_extra_load_outweighs_the_match() {
    // Guard off; the default beta (1): the holder scores 1 - load / (mean + 1), an idle
    // server 0.
    let run = |holder_load: f64| {
        let (p, ix) = policy(
            2,
            PrefixSettings {
                abs_threshold: 100.0,
                ..PrefixSettings::default()
            },
        );
        let s = states(2);
        let c = chain(1, 10, 1, 10);
        ix.learn(0, &c, None);
        load(&s[0], holder_load, 0.0);
        load(&s[1], 0.0, 0.0);
        pick(&p, &s, &c)
    };
    assert_eq!(run(1.0), 0, "1 - 1/1.5 > 0");
    assert_eq!(run(4.0), 1, "1 - 4/3 < 0");
}

proptest::proptest! {
    /// Whatever the loads, the index and the settings: the chosen server is never over the
    /// guard while another server is under it.
    #[test]
    fn the_chosen_server_is_never_over_the_guard_when_another_is_under(
        queues in proptest::collection::vec(0u32..40, 2..12),
        holders in proptest::collection::vec(0usize..12, 0..12),
        abs in 0.0f64..10.0,
        rel in 1.0f64..3.0,
        beta in 0.0f64..5.0,
    ) {
        let n = queues.len();
        let settings = PrefixSettings { abs_threshold: abs, rel_threshold: rel, beta, ..PrefixSettings::default() };
        let (p, ix) = policy(n, settings);
        let s = states(n);
        for (st, q) in s.iter().zip(&queues) {
            load(st, f64::from(*q), 0.0);
        }
        let c = chain(1, 6, 1, 6);
        for (k, h) in holders.iter().enumerate() {
            ix.learn((*h % n) as u8, &c[..=k.min(5)], None);
        }
        let loads: Vec<f64> = s.iter().map(|st| st.load(1_000, 5_000)).collect();
        let mean = loads.iter().sum::<f64>() / n as f64;
        let bound = abs.max(rel * mean);
        let chosen = pick(&p, &s, &c);
        if loads.iter().any(|l| *l <= bound) {
            proptest::prop_assert!(loads[chosen] <= bound, "{loads:?} bound {bound} chose {chosen}");
        }
    }
}
