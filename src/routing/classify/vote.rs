//! The ensemble's vote: a weighted plurality of the labels the methods answered.
//!
//! Each method that answered in time gives its weight to its label (`ensemble: {lexical: 1,
//! ...}`); the label with the most weight wins. A tie goes to the label whose voters were
//! more confident (the sum of weight × confidence), then to the method listed first. The
//! verdict's confidence is that sum for the winner over the weight of every method that
//! answered: a method alone keeps its own confidence, methods that agree keep theirs, and a
//! split vote is less sure than any side of it.
//!
//! Why labels and not scores: the methods' scores are not on one scale (the lexical cosines
//! spread over every label, the neighbours' similarities bunch on a few, a model names one),
//! so summing them lets whichever spreads least decide. On the route_eval set with the
//! simulator's methods, a sum of normalised scores scored 0.821 with equal weights and 0.812
//! with 1:2:2, below lexical alone (0.862); the plurality of labels scored 0.833 and, with
//! lexical weighted 2, 0.869, above it (BENCHMARKS.md, session 13).

use super::lexical::{Scored, MAX_LABELS};

/// The weighted vote of `ballots`, each a method's weight and its answer, over `labels`
/// labels; answers for labels out of range are ignored. `None` when nobody answered.
pub fn tally(labels: usize, ballots: &[(f32, Scored)]) -> Option<Scored> {
    let n = labels.min(MAX_LABELS);
    let mut votes = [0.0f32; MAX_LABELS];
    let mut sure = [0.0f32; MAX_LABELS];
    let mut answered = 0.0f32;
    let mut order = [usize::MAX; MAX_LABELS];
    for (i, (weight, s)) in ballots.iter().enumerate() {
        let l = usize::from(s.label);
        if l >= n || *weight <= 0.0 {
            continue;
        }
        votes[l] += weight;
        sure[l] += weight * s.confidence.clamp(0.0, 1.0);
        order[l] = order[l].min(i);
        answered += weight;
    }
    let won = (0..n).filter(|&l| votes[l] > 0.0).max_by(|&a, &b| {
        (votes[a], sure[a])
            .partial_cmp(&(votes[b], sure[b]))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(order[b].cmp(&order[a]))
    })?;
    Some(Scored {
        label: won as u16,
        confidence: (sure[won] / answered).clamp(0.0, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(label: u16, confidence: f32) -> Scored {
        Scored { label, confidence }
    }

    #[test]
    fn a_heavier_method_outvotes_a_lighter_one() {
        let lexical = said(0, 0.33);
        let model = said(1, 1.0);
        assert_eq!(
            tally(3, &[(1.0, lexical), (2.0, model)]).map(|s| s.label),
            Some(1)
        );
        assert_eq!(
            tally(3, &[(3.0, lexical), (2.0, model)]).map(|s| s.label),
            Some(0)
        );
        // Two methods against one of the same weight each.
        let knn = said(0, 0.2);
        let v = tally(3, &[(1.0, lexical), (1.0, knn), (1.0, model)]);
        assert_eq!(v.map(|s| s.label), Some(0));
    }

    #[test]
    fn a_tie_goes_to_the_surer_side_then_to_the_first_method() {
        let v = tally(3, &[(1.0, said(0, 0.3)), (1.0, said(2, 0.9))]);
        assert_eq!(v.map(|s| s.label), Some(2));
        let v = tally(3, &[(1.0, said(2, 0.5)), (1.0, said(0, 0.5))]);
        assert_eq!(v.map(|s| s.label), Some(2));
    }

    #[test]
    fn confidence_is_the_winners_sureness_over_all_that_answered() {
        let alone = tally(3, &[(3.0, said(1, 0.4))]).map(|s| s.confidence);
        assert!(alone.is_some_and(|c| (c - 0.4).abs() < 1e-6), "{alone:?}");
        let agreed = tally(3, &[(1.0, said(1, 0.6)), (1.0, said(1, 1.0))]);
        assert!(agreed.is_some_and(|s| (s.confidence - 0.8).abs() < 1e-6));
        let split = tally(3, &[(2.0, said(1, 0.9)), (1.0, said(0, 1.0))]);
        assert!(split.is_some_and(|s| s.label == 1 && (s.confidence - 0.6).abs() < 1e-6));
    }

    #[test]
    fn nobody_answering_is_no_label() {
        assert_eq!(tally(3, &[]), None);
        assert_eq!(tally(3, &[(1.0, said(7, 1.0))]), None);
        assert_eq!(tally(3, &[(0.0, said(1, 1.0))]), None);
    }
}
