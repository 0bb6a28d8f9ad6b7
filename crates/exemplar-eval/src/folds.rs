//! Fold-honest figures: the references (covers) are split into folds, every tuned value
//! is chosen on the other folds' queries, and each fold is reported on the value it did
//! not see. A figure measured on the queries it was tuned on says nothing about covers
//! the service has never seen; the folded one does.

use crate::report::QueryOutcome;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The fold of each query: references are dealt to the `k` folds in turn (in catalogue
/// order), a query goes with its reference, and a query without one by its own position.
pub fn query_folds(references: &[Option<usize>], k: usize) -> Vec<usize> {
    let k = k.max(1);
    let order: BTreeSet<usize> = references.iter().flatten().copied().collect();
    let fold_of: BTreeMap<usize, usize> = order
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r, i % k))
        .collect();
    references
        .iter()
        .enumerate()
        .map(|(q, r)| r.map_or(q % k, |r| fold_of[&r]))
        .collect()
}

/// What a set of searches came to (two stages: `unknown` answers count).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Figures {
    pub queries: usize,
    /// Queries whose item is in the catalogue.
    pub known: usize,
    pub top1: f64,
    /// Known queries answered `unknown`.
    pub false_reject_rate: f64,
    /// Known queries answered with another item.
    pub wrong_answer_rate: f64,
    /// Open-set searches (reference left out) and queries of items not in the catalogue
    /// that named something.
    pub false_accept_rate: f64,
    pub open_set_unknown_rate: f64,
    /// The first stage's recall at these depths.
    pub first_stage_recall: BTreeMap<String, f64>,
    /// Top-1 per query group (e.g. camera).
    pub by_attribute_top1: BTreeMap<String, f64>,
}

/// Depths the first stage's recall is reported at.
const FIRST_STAGE_AT: &[usize] = &[50, 100, 200, 300];

/// The figures of these outcomes; `two_stage`: an unverified answer is `unknown`.
pub fn figures(outcomes: &[&QueryOutcome], two_stage: bool) -> Figures {
    let known: Vec<&&QueryOutcome> = outcomes.iter().filter(|o| o.rank.is_some()).collect();
    let rate = |n: usize, of: usize| n as f64 / of.max(1) as f64;
    let correct = known.iter().filter(|o| o.rank == Some(1)).count();
    let rejected = if two_stage {
        known.iter().filter(|o| o.verified.is_none()).count()
    } else {
        0
    };
    let open_set_wrong = known.iter().filter(|o| o.open_set_match.is_some()).count();
    let unknown: Vec<&&QueryOutcome> = outcomes.iter().filter(|o| o.rank.is_none()).collect();
    let accepted = if two_stage {
        unknown.iter().filter(|o| o.verified.is_some()).count()
    } else {
        unknown.len()
    };
    let should_reject = if two_stage { known.len() } else { 0 } + unknown.len();
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for o in &known {
        if let Some(a) = &o.attribute {
            let g = groups.entry(a.clone()).or_default();
            g.0 += (o.rank == Some(1)) as usize;
            g.1 += 1;
        }
    }
    Figures {
        queries: outcomes.len(),
        known: known.len(),
        top1: rate(correct, known.len()),
        false_reject_rate: rate(rejected, known.len()),
        wrong_answer_rate: rate(known.len() - correct - rejected, known.len()),
        false_accept_rate: rate(open_set_wrong + accepted, should_reject),
        open_set_unknown_rate: 1.0 - rate(open_set_wrong, known.len()),
        first_stage_recall: FIRST_STAGE_AT
            .iter()
            .map(|&k| {
                let hits = known
                    .iter()
                    .filter(|o| o.first_rank.is_some_and(|r| r <= k))
                    .count();
                (k.to_string(), rate(hits, known.len()))
            })
            .collect(),
        by_attribute_top1: groups
            .into_iter()
            .map(|(a, (hit, n))| (a, rate(hit, n)))
            .collect(),
    }
}

/// What a tuned setting may cost at most, on the queries it is tuned on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub max_wrong_answer_rate: f64,
    pub max_false_accept_rate: f64,
    /// The shortlist is the shortest tried whose first stage reaches this recall (then
    /// the verdict rule is chosen at that depth): the depth follows from what the first
    /// stage finds, not from a noisy top-1.
    pub min_first_stage_recall: f64,
}

impl Default for Tolerance {
    /// At most 1 % wrong names among known photos and 2.5 % of photos of other items
    /// named: a wrong name costs a store more than an `unknown`.
    fn default() -> Self {
        Self {
            max_wrong_answer_rate: 0.01,
            max_false_accept_rate: 0.025,
            min_first_stage_recall: 0.99,
        }
    }
}

/// The best setting by its figures: the highest top-1 within the tolerance, then the
/// fewest wrong and falsely accepted answers, then the first listed (list the cheaper
/// settings first); when none is within it, the fewest wrong and falsely accepted
/// answers, then the highest top-1.
pub fn choose(candidates: &[Figures], tolerance: &Tolerance) -> usize {
    let within = |f: &Figures| {
        f.wrong_answer_rate <= tolerance.max_wrong_answer_rate
            && f.false_accept_rate <= tolerance.max_false_accept_rate
    };
    let cost = |x: &Figures| x.wrong_answer_rate + x.false_accept_rate;
    let mut best: Option<usize> = None;
    for (i, f) in candidates.iter().enumerate() {
        let better = match best {
            None => true,
            Some(b) => {
                let g = &candidates[b];
                match (within(f), within(g)) {
                    (true, false) => true,
                    (false, true) => false,
                    (true, true) => f.top1 > g.top1 || (f.top1 == g.top1 && cost(f) < cost(g)),
                    (false, false) => cost(f) < cost(g) || (cost(f) == cost(g) && f.top1 > g.top1),
                }
            }
        };
        if better {
            best = Some(i);
        }
    }
    best.unwrap_or(0)
}

/// One fold's report: the setting chosen on the other folds and what it did on this one.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FoldReport {
    pub fold: usize,
    /// Index of the chosen setting.
    pub chosen: usize,
    /// On the other folds' queries (what it was chosen by).
    pub tuning: Figures,
    /// On this fold's queries, which the choice did not see.
    pub held_out: Figures,
}

/// The shortest of `depths` at which the first stage finds at least `min_recall` of
/// these queries' items (the deepest when none does).
pub fn shortlist_for_recall(
    outcomes: &[&QueryOutcome],
    depths: &[usize],
    min_recall: f64,
) -> usize {
    let known: Vec<usize> = outcomes.iter().filter_map(|o| o.first_rank).collect();
    let recall =
        |d: usize| known.iter().filter(|r| **r <= d).count() as f64 / known.len().max(1) as f64;
    let mut sorted = depths.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .copied()
        .find(|d| recall(*d) >= min_recall)
        .or(sorted.last().copied())
        .unwrap_or(0)
}

/// Chooses among settings on these queries: the shortlist by the first stage's recall,
/// then the best setting at that depth (see [`choose`]). `settings[s]` is (its shortlist,
/// each query's outcome under it). Returns the setting and its figures on these queries.
fn choose_setting(
    settings: &[(usize, Vec<&QueryOutcome>)],
    two_stage: bool,
    tolerance: &Tolerance,
) -> (usize, Figures) {
    let depths: Vec<usize> = settings.iter().map(|s| s.0).collect();
    // The first stage does not depend on the verdict rule: any setting's ranks do.
    let depth = settings.first().map_or(0, |s| {
        shortlist_for_recall(&s.1, &depths, tolerance.min_first_stage_recall)
    });
    let at_depth: Vec<usize> = (0..settings.len())
        .filter(|&i| settings[i].0 == depth)
        .collect();
    let figures: Vec<Figures> = at_depth
        .iter()
        .map(|&i| figures(&settings[i].1, two_stage))
        .collect();
    let best = choose(&figures, tolerance);
    (at_depth[best], figures[best].clone())
}

/// The setting chosen on every query (what a default is set to), with its figures:
/// measured on what it was tuned on.
pub fn choose_on_all(
    shortlists: &[usize],
    outcomes: &[Vec<QueryOutcome>],
    two_stage: bool,
    tolerance: &Tolerance,
) -> (usize, Figures) {
    let settings: Vec<(usize, Vec<&QueryOutcome>)> = shortlists
        .iter()
        .zip(outcomes)
        .map(|(s, o)| (*s, o.iter().collect()))
        .collect();
    choose_setting(&settings, two_stage, tolerance)
}

/// Cross-validation over settings: `outcomes[s][q]` is query `q` under setting `s`
/// (every setting lists the same queries in the same order), `shortlists[s]` the
/// setting's shortlist depth, `folds[q]` the query's fold. Returns each fold's report and
/// the pooled figures: every query counted once, under the setting chosen without its
/// fold.
pub fn cross_validate(
    shortlists: &[usize],
    outcomes: &[Vec<QueryOutcome>],
    folds: &[usize],
    two_stage: bool,
    tolerance: &Tolerance,
) -> (Vec<FoldReport>, Figures) {
    let k = folds.iter().max().map_or(0, |m| m + 1);
    let mut reports = Vec::with_capacity(k);
    let mut pooled: Vec<&QueryOutcome> = Vec::new();
    for fold in 0..k {
        fn pick<'a>(
            setting: &'a [QueryOutcome],
            folds: &[usize],
            fold: usize,
            inside: bool,
        ) -> Vec<&'a QueryOutcome> {
            setting
                .iter()
                .zip(folds)
                .filter(|(_, f)| (**f == fold) == inside)
                .map(|(o, _)| o)
                .collect()
        }
        let settings: Vec<(usize, Vec<&QueryOutcome>)> = shortlists
            .iter()
            .zip(outcomes)
            .map(|(d, s)| (*d, pick(s, folds, fold, false)))
            .collect();
        let (chosen, tuning) = choose_setting(&settings, two_stage, tolerance);
        let held_out = pick(&outcomes[chosen], folds, fold, true);
        pooled.extend(held_out.iter().copied());
        reports.push(FoldReport {
            fold,
            chosen,
            tuning,
            held_out: figures(&held_out, two_stage),
        });
    }
    (reports, figures(&pooled, two_stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reference: Option<usize>, right: bool, attribute: &str) -> QueryOutcome {
        QueryOutcome {
            query: String::new(),
            reference: reference.map(|r| r.to_string()),
            rank: reference.map(|_| if right { 1 } else { 2 }),
            first_rank: reference.map(|_| 1),
            attribute: Some(attribute.into()),
            best: String::new(),
            best_score: 0.0,
            verified: (reference.is_some() && right).then_some(30),
            open_set_match: None,
        }
    }

    #[test]
    fn queries_follow_their_reference_into_a_fold() {
        let refs = [Some(7), Some(3), Some(7), None, Some(9), Some(3), None];
        // References in catalogue order 3, 7, 9 → folds 0, 1, 0.
        assert_eq!(query_folds(&refs, 2), [1, 0, 1, 1, 0, 0, 0]);
        assert_eq!(query_folds(&refs, 1), [0; 7]);
    }

    /// Setting 0 is perfect on fold 0 and useless on fold 1, setting 1 the reverse: each
    /// fold must be reported under the setting the *other* fold chose, so both folds
    /// come out useless, whatever they would have scored on their own tuning.
    #[test]
    fn a_fold_is_never_reported_on_its_own_tuning() {
        let folds = [0, 0, 1, 1];
        let refs = [Some(0), Some(2), Some(1), Some(3)];
        let setting = |good_fold: usize| -> Vec<QueryOutcome> {
            refs.iter()
                .zip(folds)
                .map(|(r, f)| outcome(*r, f == good_fold, "cam"))
                .collect()
        };
        let outcomes = vec![setting(0), setting(1)];
        let tolerance = Tolerance::default();
        let (reports, pooled) = cross_validate(&[50, 50], &outcomes, &folds, true, &tolerance);
        assert_eq!(
            reports[0].chosen, 1,
            "fold 0 is reported on what fold 1 chose"
        );
        assert_eq!(reports[1].chosen, 0);
        for r in &reports {
            assert_eq!(r.tuning.top1, 1.0);
            assert_eq!(r.held_out.top1, 0.0);
            assert_eq!(r.held_out.queries, 2);
        }
        assert_eq!(pooled.top1, 0.0);
        assert_eq!(pooled.queries, 4);
    }

    #[test]
    fn the_shortlist_is_the_shortest_that_finds_enough() {
        let ranked = |first: usize| QueryOutcome {
            first_rank: Some(first),
            ..outcome(Some(0), true, "a")
        };
        let all: Vec<QueryOutcome> = (1..=100).map(ranked).collect();
        let refs: Vec<&QueryOutcome> = all.iter().collect();
        assert_eq!(shortlist_for_recall(&refs, &[100, 20, 50], 0.5), 50);
        assert_eq!(shortlist_for_recall(&refs, &[100, 20, 50], 0.99), 100);
        assert_eq!(
            shortlist_for_recall(&refs, &[20, 50], 0.99),
            50,
            "deepest when none"
        );
    }

    #[test]
    fn the_choice_keeps_wrong_answers_within_tolerance_before_top1() {
        let f = |top1: f64, wrong: f64, accept: f64| Figures {
            top1,
            wrong_answer_rate: wrong,
            false_accept_rate: accept,
            ..Figures::default()
        };
        let t = Tolerance::default();
        assert_eq!(choose(&[f(0.99, 0.05, 0.0), f(0.95, 0.0, 0.0)], &t), 1);
        assert_eq!(choose(&[f(0.95, 0.0, 0.0), f(0.97, 0.0, 0.005)], &t), 1);
        assert_eq!(
            choose(&[f(0.97, 0.0, 0.0), f(0.97, 0.0, 0.0)], &t),
            0,
            "first on ties"
        );
        assert_eq!(choose(&[f(0.99, 0.1, 0.1), f(0.5, 0.02, 0.0)], &t), 1);
        let fewer = choose(&[f(0.97, 0.0, 0.02), f(0.97, 0.0, 0.01)], &t);
        assert_eq!(fewer, 1, "equal top-1: fewer false accepts");
    }

    #[test]
    fn figures_count_unknowns_wrong_names_and_groups() {
        let mut wrong = outcome(Some(1), false, "b");
        wrong.verified = Some(40);
        let mut stranger = outcome(None, false, "b");
        stranger.verified = Some(30);
        let all = [
            outcome(Some(0), true, "a"),
            outcome(Some(1), false, "a"),
            wrong,
            stranger,
        ];
        let refs: Vec<&QueryOutcome> = all.iter().collect();
        let f = figures(&refs, true);
        assert_eq!((f.queries, f.known), (4, 3));
        assert!((f.top1 - 1.0 / 3.0).abs() < 1e-9);
        assert!((f.false_reject_rate - 1.0 / 3.0).abs() < 1e-9);
        assert!((f.wrong_answer_rate - 1.0 / 3.0).abs() < 1e-9);
        // Of 3 open-set searches and 1 stranger, the stranger was named.
        assert!((f.false_accept_rate - 0.25).abs() < 1e-9);
        assert_eq!(f.by_attribute_top1["a"], 0.5);
        assert_eq!(f.by_attribute_top1["b"], 0.0);
    }
}
