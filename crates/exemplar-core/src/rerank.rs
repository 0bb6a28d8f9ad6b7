//! The second retrieval stage: verified evidence (e.g. geometrically consistent local
//! matches) re-orders the global shortlist. Verified items come first, most evidence
//! first; the rest keep their global order. The answer is the best verified item, or
//! `unknown` when nothing in the shortlist is verified.

use crate::shortlist::merge_shortlists;

/// How evaluation and search re-rank: the shortlist length, the evidence needed to call
/// an item verified, and how to get evidence.
pub struct Rerank<'a> {
    pub shortlist: usize,
    pub min_evidence: usize,
    /// `evidence(query, candidates)`: one number per candidate (0 = none).
    pub evidence: &'a (dyn Fn(usize, &[usize]) -> Vec<usize> + Sync),
    /// The word index's ranking for each query, best first: the shortlist is then the
    /// merge of both rankings (see [`merge_shortlists`]), as the service makes it.
    pub words: Option<&'a [Vec<usize>]>,
}

impl Rerank<'_> {
    /// The candidates verified for query `q`, from its global ranking, leaving out the
    /// items `excluded` says (an open-set search without the reference).
    pub fn candidates(
        &self,
        q: usize,
        global: &[usize],
        excluded: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let kept = |items: &[usize]| -> Vec<usize> {
            items
                .iter()
                .copied()
                .filter(|i| !excluded(*i))
                .take(self.shortlist)
                .collect()
        };
        let global = kept(global);
        match self.words.and_then(|w| w.get(q)) {
            Some(words) => merge_shortlists(&global, &kept(words), self.shortlist),
            None => global,
        }
    }

    /// The verified candidates first, most evidence first, then everything else in
    /// global order (an unverified candidate the words found keeps its global rank).
    pub fn order(&self, global: &[usize], candidates: &[usize], evidence: &[usize]) -> Vec<usize> {
        let mut verified: Vec<(usize, usize)> = candidates
            .iter()
            .zip(evidence)
            .filter(|(_, e)| **e >= self.min_evidence)
            .map(|(c, e)| (*c, *e))
            .collect();
        // Stable: equal evidence keeps the shortlist's order.
        verified.sort_by_key(|v| std::cmp::Reverse(v.1));
        let taken: std::collections::HashSet<usize> = verified.iter().map(|v| v.0).collect();
        let mut order: Vec<usize> = verified.into_iter().map(|v| v.0).collect();
        order.extend(global.iter().filter(|i| !taken.contains(i)));
        order
    }
}

/// Catalogue indices by score, best first (ties keep index order).
pub fn global_order(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    order
}

/// `order` with its first `evidence.len()` items re-ordered: verified ones (evidence at
/// least `min_evidence`) first by evidence, then the others as they were.
pub fn reorder(order: &[usize], evidence: &[usize], min_evidence: usize) -> Vec<usize> {
    let n = evidence.len().min(order.len());
    let mut verified: Vec<(usize, usize)> = (0..n)
        .filter(|&i| evidence[i] >= min_evidence)
        .map(|i| (i, evidence[i]))
        .collect();
    // Stable: equal evidence keeps the global order.
    verified.sort_by_key(|v| std::cmp::Reverse(v.1));
    let mut out: Vec<usize> = verified.iter().map(|(i, _)| order[*i]).collect();
    out.extend(
        (0..n)
            .filter(|&i| evidence[i] < min_evidence)
            .map(|i| order[i]),
    );
    out.extend_from_slice(&order[n..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_items_move_up_by_evidence_and_the_rest_keep_their_order() {
        let order = global_order(&[0.1, 0.9, 0.5, 0.7, 0.3]);
        assert_eq!(order, [1, 3, 2, 4, 0]);
        // Evidence for the shortlist 1, 3, 2: only 2 and 3 are verified.
        assert_eq!(reorder(&order, &[0, 20, 40], 15), [2, 3, 1, 4, 0]);
        assert_eq!(reorder(&order, &[0, 0, 0], 15), order);
        assert_eq!(reorder(&order, &[30, 30, 0], 15), [1, 3, 2, 4, 0]);
    }
}
