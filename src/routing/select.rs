//! Candidates by price, latency or throughput: the best candidate that fits the request goes
//! first and the others follow as its fallbacks.
//!
//! Each candidate is judged on the first pool of its chain that fits the request: its price
//! for this request (estimated prompt tokens × input price + expected completion tokens ×
//! output price), its predicted time to first token and its observed decode rate (from the
//! live server state, [`super::Live`]). Order: usable pools first (some server may take the
//! request now), then those within the request's TTFT target, then the sort key, then the
//! order of the list. A candidate never measured counts as the fastest, so that a new pool is
//! tried rather than starved. With a TTFT target that no usable candidate meets, the fastest
//! goes first.

use super::spec::Sort;

/// What a candidate offers for one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// Position in the rule's list.
    pub position: usize,
    /// The pool judged: the first of the candidate's chain with a usable server.
    pub pool: usize,
    /// Estimated cost of this request on it, micro-dollars.
    pub cost_e6: f64,
    /// Predicted time to first token, ms (`None`: not measured yet).
    pub ttft_ms: Option<f64>,
    /// Observed decode rate, tokens/s (`None`: not measured yet).
    pub tokens_per_s: Option<f64>,
    /// Some server of its pools may take a request now.
    pub usable: bool,
}

/// Orders `candidates` best first for `sort`, under an optional TTFT target (ms). Does not
/// allocate.
pub fn rank(candidates: &mut [Facts], sort: Sort, max_ttft_ms: Option<f64>) {
    let any_usable = candidates.iter().any(|c| c.usable);
    let usable = |c: &Facts| c.usable || !any_usable;
    let within = |c: &Facts| max_ttft_ms.is_none_or(|max| c.ttft_ms.is_none_or(|t| t <= max));
    let meets_target = candidates.iter().any(|c| usable(c) && within(c));
    // Nothing meets the target: the fastest, whatever the rule prefers.
    let sort = if meets_target { sort } else { Sort::Latency };
    let metric = |c: &Facts| match sort {
        Sort::Price => c.cost_e6,
        Sort::Latency => c.ttft_ms.unwrap_or(0.0),
        Sort::Throughput => -c.tokens_per_s.unwrap_or(f64::INFINITY),
    };
    candidates.sort_unstable_by(|a, b| {
        let key = |c: &Facts| (!usable(c), meets_target && !within(c));
        key(a)
            .cmp(&key(b))
            .then(metric(a).total_cmp(&metric(b)))
            .then(a.position.cmp(&b.position))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(position: usize, cost: f64, ttft: Option<f64>, tps: Option<f64>) -> Facts {
        Facts {
            position,
            pool: 0,
            cost_e6: cost,
            ttft_ms: ttft,
            tokens_per_s: tps,
            usable: true,
        }
    }

    fn order(c: &[Facts]) -> Vec<usize> {
        c.iter().map(|f| f.position).collect()
    }

    #[test]
    fn each_sort_puts_its_best_first_and_ties_keep_the_list_order() {
        let base = [
            facts(0, 300.0, Some(90.0), Some(40.0)),
            facts(1, 100.0, Some(300.0), Some(80.0)),
            facts(2, 100.0, Some(20.0), Some(10.0)),
        ];
        let mut c = base;
        rank(&mut c, Sort::Price, None);
        assert_eq!(order(&c), [1, 2, 0]);
        let mut c = base;
        rank(&mut c, Sort::Latency, None);
        assert_eq!(order(&c), [2, 0, 1]);
        let mut c = base;
        rank(&mut c, Sort::Throughput, None);
        assert_eq!(order(&c), [1, 0, 2]);
    }

    #[test]
    fn unusable_pools_go_last_and_unmeasured_ones_are_tried() {
        let mut c = [
            facts(0, 1.0, Some(10.0), None),
            facts(1, 5.0, None, None),
            facts(2, 9.0, Some(50.0), None),
        ];
        c[0].usable = false;
        rank(&mut c, Sort::Price, None);
        assert_eq!(order(&c), [1, 2, 0]);
        rank(&mut c, Sort::Latency, None);
        assert_eq!(order(&c), [1, 2, 0], "never measured counts as fastest");
        for f in &mut c {
            f.usable = false;
        }
        rank(&mut c, Sort::Price, None);
        assert_eq!(order(&c), [0, 1, 2], "none usable: the sort decides alone");
    }

    #[test]
    fn a_ttft_target_skips_slow_candidates_or_takes_the_fastest() {
        let base = [
            facts(0, 1.0, Some(900.0), None),
            facts(1, 5.0, Some(200.0), None),
            facts(2, 9.0, Some(100.0), None),
        ];
        let mut c = base;
        rank(&mut c, Sort::Price, Some(250.0));
        assert_eq!(order(&c), [1, 2, 0], "cheapest within 250 ms");
        let mut c = base;
        rank(&mut c, Sort::Price, Some(50.0));
        assert_eq!(order(&c), [2, 1, 0], "none within 50 ms: the fastest");
    }
}
