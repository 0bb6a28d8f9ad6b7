//! The second stage as evaluation runs it: the shortlist made as the service makes it
//! (the exact global ranking merged with the word ranking), verified with evidence the
//! caller computes through [`exemplar_core::rerank::verify_shortlist`].

use exemplar_core::shortlist::merge_shortlists;

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
