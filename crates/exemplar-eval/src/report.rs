//! The query/reference report: every query ranked against the catalogue, its shortlist
//! verified as the service verifies it, and the figures a user reads (top-1, recall,
//! `unknown` answers, the open set).

use crate::dataset::QueryCase;
use crate::metrics::RECALL_AT;
use crate::rerank::Rerank;
use exemplar_core::cosine;
use exemplar_core::rerank::global_order;
use exemplar_core::shortlist::merge_shortlists;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryOutcome {
    pub query: String,
    pub reference: Option<String>,
    /// 1-based rank of the reference (None when the query has no reference).
    pub rank: Option<usize>,
    /// 1-based rank of the reference in the first stage's (merged) ranking.
    pub first_rank: Option<usize>,
    /// The query's group (the ground truth's third column, e.g. its camera).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    pub best: String,
    pub best_score: f32,
    /// Two stages: the evidence of the answer; None when the answer is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<usize>,
    /// Open set: what was (wrongly) verified with the reference left out, and its evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_set_match: Option<(String, usize)>,
}

/// How often the two-stage answer is `unknown`, where it should be and where not.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct UnknownFigures {
    /// Queries with a reference answered `unknown` (false rejects).
    pub known_answered_unknown: usize,
    pub known_queries: usize,
    /// Queries without a reference answered `unknown` (correct rejects).
    pub unknown_answered_unknown: usize,
    pub unknown_queries: usize,
    /// Open set: each query with a reference searched with that reference left out.
    pub open_set_answered_unknown: usize,
    pub open_set_queries: usize,
    pub open_set_unknown_rate: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecallReport {
    pub queries: usize,
    pub top1: f64,
    /// recall@k for k in [`RECALL_AT`], keyed `"1"`, `"5"`, ...
    pub recall: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryReferenceReport {
    pub catalogue: usize,
    /// The first stage: the recall of the shortlist (global and word rankings merged,
    /// when the second stage has a word index).
    pub first_stage: RecallReport,
    /// The global descriptor's ranking alone.
    pub global_stage: RecallReport,
    /// The word index's ranking alone (recall beyond the depth it was asked for is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub word_stage: Option<RecallReport>,
    /// With two stages: `unknown` answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownFigures>,
    #[serde(flatten)]
    pub overall: RecallReport,
    /// Per value of the third column, when it labels groups (e.g. `camera`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_attribute: BTreeMap<String, RecallReport>,
    pub attribute: Option<String>,
    /// Queries whose item is not in the catalogue, with the best (wrong) score they got.
    pub expected_unknown: Vec<QueryOutcome>,
    pub outcomes: Vec<QueryOutcome>,
}

fn recall_report(ranks: &[usize]) -> RecallReport {
    let n = ranks.len().max(1) as f64;
    let at = |k: usize| ranks.iter().filter(|r| **r <= k).count() as f64 / n;
    RecallReport {
        queries: ranks.len(),
        top1: at(1),
        recall: RECALL_AT.iter().map(|k| (k.to_string(), at(*k))).collect(),
    }
}

/// How [`query_reference_report`] ranks beyond one global vector per query.
#[derive(Clone, Copy)]
pub struct ReportOptions<'a> {
    /// More views of each query (e.g. turned): a catalogue item scores its best view.
    pub extra_views: &'a [Vec<Vec<f32>>],
    /// The second stage, if any.
    pub rerank: Option<&'a Rerank<'a>>,
    /// Reference → catalogue images of the very same item (another scan of the cover).
    pub same_item: &'a BTreeMap<usize, Vec<usize>>,
}

impl Default for ReportOptions<'_> {
    fn default() -> Self {
        static NONE: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        Self {
            extra_views: &[],
            rerank: None,
            same_item: &NONE,
        }
    }
}

/// Ranks every query against the catalogue by cosine, then (with `rerank`) re-orders
/// each shortlist by verified evidence and answers `unknown` when none is verified.
/// Per query: its exact global ranking ([`global_ranking`]), where its reference stands
/// in the first stage ([`first_stage_ranks`]), and the second stage's answer with the
/// open set ([`two_stage_answer`]); then the figures over all queries.
pub fn query_reference_report(
    catalogue_paths: &[PathBuf],
    catalogue: &[Vec<f32>],
    queries: &[QueryCase],
    query_vectors: &[Vec<f32>],
    attribute: Option<&str>,
    root: &Path,
    options: &ReportOptions<'_>,
) -> QueryReferenceReport {
    let ReportOptions {
        extra_views,
        rerank,
        same_item,
    } = *options;
    let name = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    // A reference and the catalogue images that show the very same item (another scan of
    // the same cover): naming any of them is right, and the open set leaves all out.
    let item = |r: usize| -> Vec<usize> {
        let mut all = vec![r];
        all.extend(same_item.get(&r).into_iter().flatten().copied());
        all
    };
    let mut outcomes = Vec::new();
    let mut first_stage = Vec::new();
    let mut unknown = UnknownFigures::default();
    for (q, (case, qv)) in queries.iter().zip(query_vectors).enumerate() {
        let views = extra_views.get(q).map(Vec::as_slice).unwrap_or(&[]);
        let (scores, global) = global_ranking(catalogue, qv, views);
        let same = case.reference.map(item);
        let words = rerank.and_then(|rr| rr.words?.get(q)).map(Vec::as_slice);
        let ranks = same
            .as_deref()
            .map(|same| first_stage_ranks(&global, words, same));
        let answer = rerank.map(|rr| two_stage_answer(rr, q, &global, same.as_deref()));
        if let Some(answer) = &answer {
            unknown.count(answer);
        }
        let open_set_match = answer
            .as_ref()
            .and_then(|a| a.open_set.flatten())
            .map(|(i, e)| (name(&catalogue_paths[i]), e));
        let (order, verified) = match answer {
            None => (global, None),
            Some(answer) => (answer.order, Some(answer.evidence)),
        };
        let best = order.first().copied().unwrap_or(0);
        let rank = same.as_deref().map(|same| match verified {
            // Two stages: an `unknown` answer does not name the reference at rank 1.
            Some(None) if position(&order, same) == 1 => 2,
            _ => position(&order, same),
        });
        outcomes.push((
            case,
            QueryOutcome {
                query: name(&case.query),
                reference: case.reference.map(|r| name(&catalogue_paths[r])),
                rank,
                first_rank: ranks.as_ref().map(|r| r.merged),
                attribute: case.attribute.clone(),
                best: catalogue_paths
                    .get(best)
                    .map(|p| name(p))
                    .unwrap_or_default(),
                best_score: scores.get(best).copied().unwrap_or(f32::NAN),
                verified: verified.flatten(),
                open_set_match,
            },
        ));
        first_stage.extend(ranks);
    }
    if rerank.is_some() {
        unknown.open_set_unknown_rate =
            unknown.open_set_answered_unknown as f64 / unknown.open_set_queries.max(1) as f64;
    }
    let ranks: Vec<usize> = outcomes.iter().filter_map(|(_, o)| o.rank).collect();
    let stage = |rank: fn(&FirstStageRanks) -> Option<usize>| -> Vec<usize> {
        first_stage.iter().filter_map(rank).collect()
    };
    let word_ranks = stage(|r| r.words);
    QueryReferenceReport {
        catalogue: catalogue.len(),
        first_stage: recall_report(&stage(|r| Some(r.merged))),
        global_stage: recall_report(&stage(|r| Some(r.global))),
        word_stage: (!word_ranks.is_empty()).then(|| recall_report(&word_ranks)),
        unknown: rerank.is_some().then_some(unknown),
        overall: recall_report(&ranks),
        by_attribute: by_attribute(&outcomes),
        attribute: attribute.map(str::to_string),
        expected_unknown: outcomes
            .iter()
            .filter(|(c, _)| c.reference.is_none())
            .map(|(_, o)| o.clone())
            .collect(),
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
    }
}

/// The 1-based rank of the first of `same` (a reference and its duplicates) in `order`
/// (one past the end when absent).
fn position(order: &[usize], same: &[usize]) -> usize {
    1 + order
        .iter()
        .position(|i| same.contains(i))
        .unwrap_or(order.len())
}

/// A query's exact global ranking: each catalogue image's cosine to the query, or to its
/// best extra view, and the catalogue in that order.
fn global_ranking(
    catalogue: &[Vec<f32>],
    query: &[f32],
    views: &[Vec<f32>],
) -> (Vec<f32>, Vec<usize>) {
    let scores: Vec<f32> = catalogue
        .iter()
        .map(|c| {
            views
                .iter()
                .map(|v| cosine(v, c))
                .fold(cosine(query, c), f32::max)
        })
        .collect();
    let order = global_order(&scores);
    (scores, order)
}

/// Where a query's reference stands in the first stage's rankings.
struct FirstStageRanks {
    global: usize,
    /// In the word index's ranking, when there is one.
    words: Option<usize>,
    /// In the two merged, as the service makes its shortlist.
    merged: usize,
}

fn first_stage_ranks(global: &[usize], words: Option<&[usize]>, same: &[usize]) -> FirstStageRanks {
    let merged = match words {
        Some(words) => position(&merge_shortlists(global, words, global.len()), same),
        None => position(global, same),
    };
    FirstStageRanks {
        global: position(global, same),
        words: words.map(|words| position(words, same)),
        merged,
    }
}

/// The second stage's answer to one query.
struct TwoStageAnswer {
    /// Verified candidates first, most evidence first, then the global order.
    order: Vec<usize>,
    /// The answer's evidence; `None`: `unknown`.
    evidence: Option<usize>,
    /// With a reference: the same search with it (and its duplicates) left out, and what
    /// was (wrongly) verified then, with its evidence.
    open_set: Option<Option<(usize, usize)>>,
}

fn two_stage_answer(
    rerank: &Rerank<'_>,
    q: usize,
    global: &[usize],
    same: Option<&[usize]>,
) -> TwoStageAnswer {
    let candidates = rerank.candidates(q, global, |_| false);
    let evidence = (rerank.evidence)(q, &candidates);
    let order = rerank.order(global, &candidates, &evidence);
    let best = candidates
        .iter()
        .zip(&evidence)
        .find(|(i, _)| **i == order[0])
        .map(|(_, e)| *e)
        .filter(|e| *e >= rerank.min_evidence);
    // The open set: the shortlist takes the next candidates instead.
    let open_set = same.map(|same| {
        let open = rerank.candidates(q, global, |i| same.contains(&i));
        let open_evidence = (rerank.evidence)(q, &open);
        open.iter()
            .zip(&open_evidence)
            .filter(|(_, e)| **e >= rerank.min_evidence)
            .max_by_key(|(_, e)| **e)
            .map(|(i, e)| (*i, *e))
    });
    TwoStageAnswer {
        order,
        evidence: best,
        open_set,
    }
}

impl UnknownFigures {
    fn count(&mut self, answer: &TwoStageAnswer) {
        let answered_unknown = answer.evidence.is_none() as usize;
        match answer.open_set {
            Some(wrong) => {
                self.known_queries += 1;
                self.known_answered_unknown += answered_unknown;
                self.open_set_queries += 1;
                self.open_set_answered_unknown += wrong.is_none() as usize;
            }
            None => {
                self.unknown_queries += 1;
                self.unknown_answered_unknown += answered_unknown;
            }
        }
    }
}

/// Figures per value of the third column. A column whose values repeat labels groups (a
/// camera); one whose values are all different is a free-text note, and a per-value
/// breakdown of it would say nothing.
fn by_attribute(outcomes: &[(&QueryCase, QueryOutcome)]) -> BTreeMap<String, RecallReport> {
    let values: BTreeSet<&str> = outcomes
        .iter()
        .filter_map(|(c, _)| c.attribute.as_deref())
        .collect();
    let mut by_attribute = BTreeMap::new();
    if values.len() * 2 <= outcomes.len() {
        for value in values {
            let r: Vec<usize> = outcomes
                .iter()
                .filter(|(c, _)| c.attribute.as_deref() == Some(value))
                .filter_map(|(_, o)| o.rank)
                .collect();
            by_attribute.insert(value.to_string(), recall_report(&r));
        }
    }
    by_attribute
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{images_under, GroundTruth};
    use crate::metrics::{average_precision, mean_average_precision};

    #[test]
    fn average_precision_of_known_rankings() {
        assert_eq!(average_precision(&[true, true, false]), 1.0);
        assert!((average_precision(&[false, true, false, true]) - (0.5 + 0.5) / 2.0).abs() < 1e-12);
        assert_eq!(average_precision(&[false, false]), 0.0);
    }

    #[test]
    fn map_ranks_every_other_image_and_skips_the_query() {
        let v = |x: f32, y: f32| {
            let mut a = vec![x, y];
            exemplar_core::l2_normalize(&mut a);
            a
        };
        let vectors = vec![v(1.0, 0.0), v(0.9, 0.1), v(0.0, 1.0), v(0.1, 0.9)];
        let groups: Vec<String> = ["a", "a", "b", "b"].iter().map(|s| s.to_string()).collect();
        let q = [true, false, true, false];
        assert_eq!(mean_average_precision(&vectors, &groups, &q, None), 1.0);
        let swapped: Vec<String> = ["a", "b", "b", "a"].iter().map(|s| s.to_string()).collect();
        // Each query's only relevant image now comes second of three.
        assert!((mean_average_precision(&vectors, &swapped, &q, None) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn query_reference_ground_truth_builds_the_catalogue_from_reference_folders() {
        let dir = tempfile::tempdir().unwrap();
        let refs = dir.path().join("refs");
        std::fs::create_dir_all(&refs).unwrap();
        for f in ["a.jpg", "b.png", "c.JPG", "notes.txt"] {
            std::fs::write(refs.join(f), b"x").unwrap();
        }
        std::fs::write(
            dir.path().join("groundtruth.tsv"),
            "query\treference\tcamera\nq/1.jpg\trefs/b.png\tCanon\nq/2.jpg\t\tCanon\nq/3.jpg\trefs/a.jpg\tPalm\nq/4.jpg\trefs/a.jpg\tPalm\n",
        )
        .unwrap();
        let GroundTruth::QueryReference {
            catalogue,
            queries,
            attribute,
        } = GroundTruth::load(dir.path()).unwrap()
        else {
            panic!("wrong kind");
        };
        assert_eq!(catalogue.len(), 3, "txt file is not an image");
        assert_eq!(attribute.as_deref(), Some("camera"));
        assert_eq!(queries[0].reference, Some(1));
        assert_eq!(queries[1].reference, None);

        let cat = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![std::f32::consts::FRAC_1_SQRT_2; 2],
        ];
        let qv = vec![
            vec![0.1, 0.99],
            vec![0.6, 0.8],
            vec![0.8, 0.6],
            vec![0.0, 1.0],
        ];
        let report = query_reference_report(
            &catalogue,
            &cat,
            &queries,
            &qv,
            Some("camera"),
            dir.path(),
            &ReportOptions::default(),
        );
        assert_eq!(report.overall.queries, 3);
        assert!((report.overall.top1 - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.outcomes[2].rank, Some(2));
        assert_eq!(report.outcomes[3].rank, Some(3));
        assert_eq!(report.by_attribute["Canon"].top1, 1.0);
        assert_eq!(report.by_attribute["Palm"].top1, 0.0);
        assert_eq!(report.expected_unknown.len(), 1);
        assert_eq!(report.expected_unknown[0].query, "q/2.jpg");
    }

    #[test]
    fn two_stages_reorder_the_shortlist_answer_unknown_and_count_the_open_set() {
        let paths: Vec<PathBuf> = ["a", "b", "c", "a-again"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let cat = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.6, 0.8],
            vec![0.9, 0.1],
        ];
        let case = |q: &str, r: Option<usize>| QueryCase {
            query: PathBuf::from(q),
            reference: r,
            attribute: None,
        };
        // q0 globally nearest to `c`, but verification says `b`; q1 verifies nothing; q2
        // has no reference and verifies nothing.
        let queries = vec![case("q0", Some(1)), case("q1", Some(0)), case("q2", None)];
        let qv = vec![vec![0.6, 0.8], vec![1.0, 0.0], vec![0.7, 0.7]];
        let evidence = |q: usize, candidates: &[usize]| -> Vec<usize> {
            candidates
                .iter()
                .map(|&c| match (q, c) {
                    (0, 1) => 40,
                    (0, 2) => 5,
                    (1, 3) => 30, // the duplicate of q1's reference
                    _ => 0,
                })
                .collect()
        };
        let rerank = Rerank {
            shortlist: 2,
            min_evidence: 15,
            evidence: &evidence,
            words: None,
        };
        let same: BTreeMap<usize, Vec<usize>> = [(0, vec![3])].into();
        let report = query_reference_report(
            &paths,
            &cat,
            &queries,
            &qv,
            None,
            Path::new(""),
            &ReportOptions {
                rerank: Some(&rerank),
                same_item: &same,
                ..ReportOptions::default()
            },
        );
        // q0: global rank of b is 2 (in the shortlist), verification lifts it to 1.
        assert_eq!(report.first_stage.recall["1"], 0.5);
        assert_eq!(report.outcomes[0].rank, Some(1));
        assert_eq!(report.outcomes[0].verified, Some(40));
        // q1: naming the reference's duplicate is right.
        assert_eq!(report.outcomes[1].rank, Some(1));
        assert_eq!(report.overall.top1, 1.0);
        let unknown = report.unknown.unwrap();
        assert_eq!(unknown.unknown_answered_unknown, 1);
        // Open set: with b (and, for q1, a and its duplicate) left out, nothing verifies.
        assert_eq!(unknown.open_set_answered_unknown, 2);
        assert_eq!(unknown.open_set_unknown_rate, 1.0);
    }

    #[test]
    fn distractors_extend_the_catalogue_without_moving_references() {
        let dir = tempfile::tempdir().unwrap();
        let refs = dir.path().join("refs");
        let extra = dir.path().join("extra/sub");
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(refs.join("z.jpg"), b"x").unwrap();
        std::fs::write(extra.join("a.png"), b"x").unwrap();
        std::fs::write(
            dir.path().join("groundtruth.tsv"),
            "query\treference\nq.jpg\trefs/z.jpg\n",
        )
        .unwrap();
        let mut gt = GroundTruth::load(dir.path()).unwrap();
        let mut added = images_under(&dir.path().join("extra")).unwrap();
        added.push(refs.join("z.jpg"));
        assert_eq!(gt.add_distractors(added).unwrap(), 1);
        let GroundTruth::QueryReference {
            catalogue, queries, ..
        } = gt
        else {
            panic!()
        };
        assert_eq!(catalogue.len(), 2);
        assert_eq!(catalogue[queries[0].reference.unwrap()], refs.join("z.jpg"));
    }

    #[test]
    fn unknown_header_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("groundtruth.tsv"), "a\tb\n1\t2\n").unwrap();
        let err = GroundTruth::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected `path group is_query`"), "{err}");
    }
}
