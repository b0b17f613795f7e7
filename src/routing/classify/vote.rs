//! The ensemble's vote. Each method that answered in time gives its labels shares that sum to
//! one: the lexical cosines and the embedding neighbours' similarities, normalised, or all of
//! it to the label a model named. The shares are weighted (`ensemble: {lexical: 1, ...}`) and
//! summed; the best label wins and its confidence is its relative margin over the second,
//! the same measure each method gives alone. A single method's vote is therefore its own
//! answer with its own confidence.

use super::lexical::{best, Scored, MAX_LABELS};

/// What one method says about the labels, before weighting.
pub enum Ballot<'a> {
    /// Scores per label (lexical cosines, neighbour similarity sums).
    Scores(&'a [f32]),
    /// One label, all of the method's weight (a model's answer).
    Label(u16),
}

/// The weighted vote of `ballots` over `labels` labels.
pub fn tally(labels: usize, ballots: &[(f32, Ballot<'_>)]) -> Option<Scored> {
    let mut total = [0.0f32; MAX_LABELS];
    let n = labels.min(MAX_LABELS);
    for (weight, ballot) in ballots {
        match ballot {
            Ballot::Scores(scores) => {
                let sum: f32 = scores.iter().take(n).filter(|s| **s > 0.0).sum();
                if sum > 0.0 {
                    for (t, s) in total.iter_mut().zip(scores.iter().take(n)) {
                        *t += weight * s.max(0.0) / sum;
                    }
                }
            }
            Ballot::Label(l) => {
                if let Some(t) = total
                    .get_mut(usize::from(*l))
                    .filter(|_| usize::from(*l) < n)
                {
                    *t += weight;
                }
            }
        }
    }
    best(&total[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavier_method_outvotes_a_lighter_one() {
        // Lexical leans to label 0; the model (weight 2) says 1.
        let lexical = [0.6, 0.4, 0.0];
        let v = tally(
            3,
            &[(1.0, Ballot::Scores(&lexical)), (2.0, Ballot::Label(1))],
        );
        assert_eq!(v.map(|s| s.label), Some(1));
        // At equal weight, lexical's share of label 0 (0.6) loses to the model's 1.0 for 1.
        let v = tally(
            3,
            &[(1.0, Ballot::Scores(&lexical)), (1.0, Ballot::Label(1))],
        );
        assert_eq!(v.map(|s| s.label), Some(1));
        // Two methods against one.
        let knn = [0.9, 0.1, 0.0];
        let v = tally(
            3,
            &[
                (1.0, Ballot::Scores(&lexical)),
                (1.0, Ballot::Scores(&knn)),
                (1.0, Ballot::Label(1)),
            ],
        );
        assert_eq!(v.map(|s| s.label), Some(0));
    }

    #[test]
    fn one_method_alone_keeps_its_own_margin() {
        let scores = [0.2, 0.8, 0.4];
        let alone = tally(3, &[(3.0, Ballot::Scores(&scores))]);
        let direct = best(&scores);
        assert_eq!(alone.map(|s| s.label), direct.map(|s| s.label));
        let (a, d) = (
            alone.map_or(0.0, |s| s.confidence),
            direct.map_or(0.0, |s| s.confidence),
        );
        assert!((a - d).abs() < 1e-5, "{a} vs {d}");
    }

    #[test]
    fn nobody_answering_is_no_label() {
        assert_eq!(tally(3, &[]), None);
        assert_eq!(tally(3, &[(1.0, Ballot::Scores(&[0.0, 0.0, 0.0]))]), None);
        assert_eq!(tally(3, &[(1.0, Ballot::Label(7))]), None);
    }
}
