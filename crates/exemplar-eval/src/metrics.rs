//! Retrieval metrics: average precision (INRIA Holidays protocol) and recall at k.

use crate::rerank::Rerank;
use exemplar_core::cosine;
use exemplar_core::rerank::global_order;

/// Recall cut-offs reported for query/reference sets.
pub const RECALL_AT: &[usize] = &[1, 5, 10, 20, 50, 100, 200, 300];

/// Average precision of one ranked list (non-interpolated, as in the Holidays scripts).
pub fn average_precision(ranked_relevant: &[bool]) -> f64 {
    let total = ranked_relevant.iter().filter(|r| **r).count();
    if total == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, rel) in ranked_relevant.iter().enumerate() {
        if *rel {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / total as f64
}

/// Holidays protocol: each query ranks every other image; mean of the APs. With
/// `rerank`, each query's shortlist is re-ordered by verified evidence first.
pub fn mean_average_precision(
    vectors: &[Vec<f32>],
    groups: &[String],
    is_query: &[bool],
    rerank: Option<&Rerank<'_>>,
) -> f64 {
    let mut aps = Vec::new();
    for (q, _) in is_query.iter().enumerate().filter(|(_, q)| **q) {
        let mut scores: Vec<f32> = vectors.iter().map(|v| cosine(&vectors[q], v)).collect();
        // The query itself is not part of its ranking.
        scores[q] = f32::NEG_INFINITY;
        let mut order = global_order(&scores);
        order.pop();
        if let Some(r) = rerank {
            let candidates = r.candidates(q, &order, |i| i == q);
            let evidence = (r.evidence)(q, &candidates);
            order = r.order(&order, &candidates, &evidence);
        }
        let ranked: Vec<bool> = order.iter().map(|&i| groups[i] == groups[q]).collect();
        aps.push(average_precision(&ranked));
    }
    aps.iter().sum::<f64>() / aps.len().max(1) as f64
}
