//! The second retrieval stage: verified evidence (e.g. geometrically consistent local
//! matches) re-orders the global shortlist. Verified items come first, most evidence
//! first; the rest keep their global order. The answer is the best verified item, or
//! `unknown` when nothing in the shortlist is verified.

use crate::verifier::{EarlyStop, Evidence, VerdictRule};
use std::future::Future;
use std::ops::Range;

/// Verifies a shortlist of `len` candidates as `/search` does, and as `eval` and
/// `calibrate` measure it: chunk by chunk in shortlist order (`stop.chunk` at a time, or
/// all at once without an early stop), stopping after the first chunk in which a
/// candidate is verified by `rule` *and* settles the search by `stop`. `verify(range)`
/// gives the evidence of the candidates in `range` (`None` for one that cannot be
/// verified). Candidates past the stop keep `None`.
pub async fn verify_shortlist<E, Chunk>(
    len: usize,
    stop: Option<EarlyStop>,
    rule: &VerdictRule,
    mut verify: impl FnMut(Range<usize>) -> Chunk,
) -> Result<Vec<Option<Evidence>>, E>
where
    Chunk: Future<Output = Result<Vec<Option<Evidence>>, E>>,
{
    let chunk = stop.map_or(len, |s| s.chunk).max(1);
    let mut evidence: Vec<Option<Evidence>> = vec![None; len];
    for start in (0..len).step_by(chunk) {
        let range = start..(start + chunk).min(len);
        let seen = verify(range.clone()).await?;
        debug_assert_eq!(seen.len(), range.len(), "one answer per candidate");
        // Only a verified match settles (the verdict rule may be stricter than the stop).
        let settled = seen
            .iter()
            .flatten()
            .any(|e| rule.verified(e) && stop.is_some_and(|s| s.settles(e)));
        for (slot, e) in evidence[range].iter_mut().zip(seen) {
            *slot = e;
        }
        if settled {
            break;
        }
    }
    Ok(evidence)
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
    fn verification_stops_after_the_chunk_that_settles_the_search() {
        let rule = VerdictRule::default();
        let stop = EarlyStop {
            chunk: 3,
            inliers: 80,
            coverage: 0.2,
        };
        let seen = |inliers| Evidence {
            inliers,
            coverage: 0.5,
            in_frame: 1.0,
            centred: true,
            ..Evidence::default()
        };
        // Candidate 4 (second chunk) settles; candidate 7 would have too, later.
        let inliers = [0, 10, 30, 5, 120, 0, 0, 300, 0];
        let asked = std::sync::Mutex::new(Vec::new());
        let verify = |range: Range<usize>| {
            asked.lock().unwrap().push(range.clone());
            std::future::ready(Ok::<_, ()>(range.map(|i| Some(seen(inliers[i]))).collect()))
        };
        let got = futures_executor::block_on(verify_shortlist(9, Some(stop), &rule, verify));
        let got: Vec<Option<u32>> = got
            .unwrap()
            .iter()
            .map(|e| e.as_ref().map(|e| e.inliers))
            .collect();
        assert_eq!(*asked.lock().unwrap(), [0..3, 3..6]);
        assert_eq!(
            got,
            [
                Some(0),
                Some(10),
                Some(30),
                Some(5),
                Some(120),
                Some(0),
                None,
                None,
                None
            ]
        );
        // Evidence that settles by inliers but fails the verdict rule does not stop it.
        let off_frame = |range: Range<usize>| {
            std::future::ready(Ok::<_, ()>(
                range
                    .map(|_| {
                        Some(Evidence {
                            in_frame: 0.0,
                            ..seen(500)
                        })
                    })
                    .collect(),
            ))
        };
        let all = futures_executor::block_on(verify_shortlist(9, Some(stop), &rule, off_frame));
        assert!(all.unwrap().iter().all(Option::is_some));
        // Without an early stop, one chunk of everything.
        let asked = std::sync::Mutex::new(Vec::new());
        let once = |range: Range<usize>| {
            asked.lock().unwrap().push(range.clone());
            std::future::ready(Ok::<_, ()>(range.map(|_| None).collect()))
        };
        futures_executor::block_on(verify_shortlist(5, None, &rule, once)).unwrap();
        assert_eq!(
            asked.lock().unwrap().as_slice(),
            &[std::ops::Range { start: 0, end: 5 }]
        );
    }

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
