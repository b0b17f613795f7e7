//! Weighted splits between models (A/B tests, canaries), sticky by a key.
//!
//! A keyed request goes to the arm with the highest weighted rendezvous score,
//! `weight / -ln(u)`, where `u` in (0, 1) comes from a stable hash of the key and the arm's
//! model name (Schindelhauer and Schomaker's weighted rendezvous hashing). Each arm wins a
//! share of keys equal to its share of the weights, and a weight change moves only the keys
//! that must move: raising an arm's weight only takes keys from the others, lowering it only
//! gives its own keys away, and the order of the arms in the file changes nothing. Arms a
//! request cannot use (not allowed for the tenant, too small a context) are passed over, and
//! the key's next-best arm takes it, as if that arm were alone.
//!
//! The hash is FNV-1a (64 bit) of the key, mixed with the arm's seed by splitmix64's
//! finaliser: the same in every process, build and instance, so that a fleet of gateways
//! places each key alike.

use std::hash::Hasher;

/// A stable 64-bit hash of `bytes` (FNV-1a).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// splitmix64's finaliser over `a` mixed with `b`: a well-spread 64-bit value.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Arms of one split at most (a request is placed among them without allocating).
pub const MAX_ARMS: usize = 16;

/// One arm as the split sees it: its seed (stable hash of its model name) and weight.
#[derive(Debug, Clone, Copy)]
pub struct Arm {
    pub seed: u64,
    pub weight: u32,
}

/// The arm (index into `arms`) that `key` goes to among those `eligible` allows; a random
/// arm by weight when there is no key. `None` when no arm is eligible.
pub fn pick(arms: &[Arm], key: Option<u64>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let candidates = || {
        arms.iter()
            .enumerate()
            .filter(|&(i, a)| a.weight > 0 && eligible(i))
    };
    match key {
        Some(key) => candidates()
            .map(|(i, a)| (i, score(key, a)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(i, _)| i),
        None => {
            let total: u64 = candidates().map(|(_, a)| u64::from(a.weight)).sum();
            if total == 0 {
                return None;
            }
            let mut r = fastrand::u64(0..total);
            candidates().find_map(|(i, a)| {
                let w = u64::from(a.weight);
                if r < w {
                    Some(i)
                } else {
                    r -= w;
                    None
                }
            })
        }
    }
}

/// `weight / -ln(u)` with `u` uniform in (0, 1) from the key and the arm.
fn score(key: u64, arm: &Arm) -> f64 {
    let u = ((mix(key, arm.seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(arm.weight) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms(weights: &[u32]) -> Vec<Arm> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arm {
                seed: stable_hash(format!("model-{i}").as_bytes()),
                weight: w,
            })
            .collect()
    }

    #[test]
    fn the_hash_is_fnv1a_as_documented() {
        // FNV-1a 64 test vectors.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_key_stays_on_its_arm_and_ineligible_arms_pass_it_on() {
        let a = arms(&[90, 10]);
        let key = stable_hash(b"session-42");
        let first = pick(&a, Some(key), |_| true).unwrap();
        assert!((0..100).all(|_| pick(&a, Some(key), |_| true) == Some(first)));
        let other = 1 - first;
        assert_eq!(pick(&a, Some(key), |i| i == other), Some(other));
        assert_eq!(pick(&a, Some(key), |_| false), None);
        assert_eq!(pick(&a, None, |_| false), None);
    }

    /// Over 20 000 session keys (hashed as the gateway hashes `x-session-id`) each arm's share
    /// is within 3σ of its weight's share, for weight vectors fixed in advance; and over all
    /// of them the deviations spread as a binomial's do (variance of z near 1): the hash
    /// neither biases arms nor clumps keys. The inputs are fixed, not drawn anew each run:
    /// with ~25 arms checked at 3σ, random draws would fail one run in fifteen by chance.
    #[test]
    fn shares_follow_the_weights() {
        let vectors: [&[u32]; 8] = [
            &[90, 10],
            &[50, 50],
            &[1, 99],
            &[1, 1, 1],
            &[70, 20, 10],
            &[33, 33, 34],
            &[5, 15, 30, 50],
            &[100, 1, 1, 1],
        ];
        let n = 20_000u64;
        let keys: Vec<u64> = (0..n)
            .map(|k| stable_hash(format!("session-{k}").as_bytes()))
            .collect();
        let mut zs = Vec::new();
        for weights in vectors {
            let a = arms(weights);
            let mut counts = vec![0u64; a.len()];
            for &key in &keys {
                counts[pick(&a, Some(key), |_| true).unwrap()] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let p = f64::from(w) / f64::from(total);
                let sigma = (n as f64 * p * (1.0 - p)).sqrt();
                let z = (counts[i] as f64 - n as f64 * p) / sigma;
                assert!(
                    z.abs() <= 3.0,
                    "weights {weights:?}: arm {i} got {} of {n}, {z:.2}σ from {:.0}",
                    counts[i],
                    n as f64 * p
                );
                zs.push(z);
            }
        }
        let variance = zs.iter().map(|z| z * z).sum::<f64>() / zs.len() as f64;
        assert!(
            (0.4..=1.8).contains(&variance),
            "z variance {variance:.2} over {} arms",
            zs.len()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Changing one arm's weight moves only keys to it (raised) or from it (lowered).
        #[test]
        fn a_weight_change_moves_only_the_keys_it_must(
            weights in proptest::collection::vec(1u32..100, 2..5),
            changed in 0usize..4,
            new_weight in 1u32..100,
            salt: u64,
        ) {
            let changed = changed % weights.len();
            let before = arms(&weights);
            let mut after = before.clone();
            after[changed].weight = new_weight;
            for k in 0..5_000u64 {
                let key = mix(k, salt);
                let (x, y) = (pick(&before, Some(key), |_| true).unwrap(), pick(&after, Some(key), |_| true).unwrap());
                if x != y {
                    if new_weight > weights[changed] {
                        proptest::prop_assert_eq!(y, changed, "raised: keys only move to the changed arm");
                    } else {
                        proptest::prop_assert_eq!(x, changed, "lowered: keys only leave the changed arm");
                    }
                }
            }
        }
    }
}
