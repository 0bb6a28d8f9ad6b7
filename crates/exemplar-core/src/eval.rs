//! Retrieval evaluation over a labelled folder: ground-truth parsing and exact
//! (brute-force) metrics. The CLI embeds the images; everything here is pure.

use crate::descriptor::cosine;
use crate::error::{Error, Result};
use crate::rerank::{global_order, Rerank};
use crate::shortlist::merge_shortlists;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// File extensions treated as images when a folder is listed.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Recall cut-offs reported for query/reference sets.
pub const RECALL_AT: &[usize] = &[1, 5, 10, 20, 50, 100, 200, 300];

/// Every image file under `dir`, recursively, sorted.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image_path(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A labelled folder, as described by its `groundtruth.tsv` header.
#[derive(Debug, Clone, PartialEq)]
pub enum GroundTruth {
    /// `path  group  is_query`: every query ranks all other images (INRIA Holidays).
    Groups {
        images: Vec<PathBuf>,
        groups: Vec<String>,
        is_query: Vec<bool>,
    },
    /// `query  reference  [attribute]`: queries are ranked against the catalogue, which is
    /// every image in the folders that hold the referenced files. An empty reference means
    /// the query's item is not in the catalogue.
    QueryReference {
        catalogue: Vec<PathBuf>,
        queries: Vec<QueryCase>,
        /// Name of the third column (e.g. `camera`), if any.
        attribute: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryCase {
    pub query: PathBuf,
    /// Index into the catalogue.
    pub reference: Option<usize>,
    pub attribute: Option<String>,
}

impl GroundTruth {
    /// Reads `DIR/groundtruth.tsv` (or the given TSV file); paths in it are relative to
    /// the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let tsv = if path.is_dir() {
            path.join("groundtruth.tsv")
        } else {
            path.to_path_buf()
        };
        let root = tsv.parent().unwrap_or(Path::new(".")).to_path_buf();
        let gt_err = |reason: String| Error::GroundTruth {
            path: tsv.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&tsv).map_err(|e| gt_err(e.to_string()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or_else(|| gt_err("empty file".into()))?
            .split('\t')
            .map(str::trim)
            .collect();
        let rows: Vec<Vec<&str>> = lines
            .map(|l| l.split('\t').map(str::trim).collect())
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        fn cell<'a>(row: &[&'a str], i: usize) -> &'a str {
            row.get(i).copied().unwrap_or("")
        }

        if let (Some(p), Some(g), Some(q)) = (column("path"), column("group"), column("is_query")) {
            let mut images = Vec::new();
            let mut groups = Vec::new();
            let mut is_query = Vec::new();
            for (n, row) in rows.iter().enumerate() {
                if cell(row, p).is_empty() {
                    return Err(gt_err(format!("row {}: empty path", n + 2)));
                }
                images.push(root.join(cell(row, p)));
                groups.push(cell(row, g).to_string());
                is_query.push(matches!(cell(row, q), "1" | "true" | "yes"));
            }
            if !is_query.iter().any(|q| *q) {
                return Err(gt_err("no row has is_query=1".into()));
            }
            return Ok(GroundTruth::Groups {
                images,
                groups,
                is_query,
            });
        }

        let (Some(qc), Some(rc)) = (column("query"), column("reference")) else {
            return Err(gt_err(format!(
                "header {header:?}: expected `path group is_query` or `query reference [attribute]`"
            )));
        };
        let attribute_col = (0..header.len()).find(|i| *i != qc && *i != rc);
        let references: Vec<Option<PathBuf>> = rows
            .iter()
            .map(|r| {
                Some(cell(r, rc))
                    .filter(|s| !s.is_empty())
                    .map(|s| root.join(s))
            })
            .collect();
        // The catalogue: every image in each folder that holds a reference, so that
        // un-queried references (e.g. 265 DVD covers for 7 photos) compete too.
        let folders: BTreeSet<PathBuf> = references
            .iter()
            .flatten()
            .map(|r| r.parent().unwrap_or(&root).to_path_buf())
            .collect();
        let mut catalogue = BTreeSet::new();
        for folder in &folders {
            for entry in std::fs::read_dir(folder)
                .map_err(|e| gt_err(format!("{}: {e}", folder.display())))?
            {
                let entry = entry?.path();
                if entry.is_file() && is_image_path(&entry) {
                    catalogue.insert(entry);
                }
            }
        }
        let catalogue: Vec<PathBuf> = catalogue.into_iter().collect();
        let mut queries = Vec::new();
        for (n, (row, reference)) in rows.iter().zip(&references).enumerate() {
            let reference = match reference {
                None => None,
                Some(r) => Some(catalogue.iter().position(|c| c == r).ok_or_else(|| {
                    gt_err(format!(
                        "row {}: reference {} is not an image file",
                        n + 2,
                        r.display()
                    ))
                })?),
            };
            queries.push(QueryCase {
                query: root.join(cell(row, qc)),
                reference,
                attribute: attribute_col.map(|c| cell(row, c).to_string()),
            });
        }
        Ok(GroundTruth::QueryReference {
            catalogue,
            queries,
            attribute: attribute_col.map(|c| header[c].to_string()),
        })
    }

    /// Adds images to the catalogue as references no query expects (query/reference
    /// sets only; an image already there is not added twice). Returns how many were added.
    pub fn add_distractors(&mut self, images: impl IntoIterator<Item = PathBuf>) -> Result<usize> {
        let GroundTruth::QueryReference { catalogue, .. } = self else {
            return Err(Error::GroundTruth {
                path: "--distractors".into(),
                reason:
                    "distractors apply to query/reference sets, not to path/group/is_query ones"
                        .into(),
            });
        };
        let known: BTreeSet<PathBuf> = catalogue.iter().cloned().collect();
        let before = catalogue.len();
        // Appended after the originals, so query reference indices stay valid.
        catalogue.extend(
            images
                .into_iter()
                .filter(|p| !known.contains(p))
                .collect::<BTreeSet<_>>(),
        );
        Ok(catalogue.len() - before)
    }

    /// Every image that must be embedded, each once: catalogue first, then queries.
    pub fn all_images(&self) -> Vec<PathBuf> {
        match self {
            GroundTruth::Groups { images, .. } => images.clone(),
            GroundTruth::QueryReference {
                catalogue, queries, ..
            } => catalogue
                .iter()
                .cloned()
                .chain(queries.iter().map(|q| q.query.clone()))
                .collect(),
        }
    }
}

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
    let mut first_ranks = Vec::new();
    let mut global_ranks = Vec::new();
    let mut word_ranks = Vec::new();
    let mut unknown = UnknownFigures::default();
    for (q, (case, qv)) in queries.iter().zip(query_vectors).enumerate() {
        let views = extra_views.get(q).map(Vec::as_slice).unwrap_or(&[]);
        let scores: Vec<f32> = catalogue
            .iter()
            .map(|c| {
                views
                    .iter()
                    .map(|v| cosine(v, c))
                    .fold(cosine(qv, c), f32::max)
            })
            .collect();
        let global = global_order(&scores);
        let position = |order: &[usize], r: usize| {
            let same = item(r);
            1 + order
                .iter()
                .position(|i| same.contains(i))
                .unwrap_or(order.len())
        };
        let mut first_rank = None;
        if let Some(r) = case.reference {
            global_ranks.push(position(&global, r));
            // The first stage as the service runs it: merged with the word ranking.
            let merged = match rerank.and_then(|rr| rr.words?.get(q)) {
                Some(words) => {
                    word_ranks.push(position(words, r));
                    merge_shortlists(&global, words, global.len())
                }
                None => global.clone(),
            };
            first_ranks.push(position(&merged, r));
            first_rank = Some(position(&merged, r));
        }
        let mut open_set_match = None;
        let (order, verified) = match rerank {
            None => (global.clone(), None),
            Some(rr) => {
                let candidates = rr.candidates(q, &global, |_| false);
                let evidence = (rr.evidence)(q, &candidates);
                let order = rr.order(&global, &candidates, &evidence);
                let best_evidence = candidates
                    .iter()
                    .zip(&evidence)
                    .find(|(i, _)| **i == order[0])
                    .map(|(_, e)| *e)
                    .filter(|e| *e >= rr.min_evidence);
                if let Some(r) = case.reference {
                    unknown.known_queries += 1;
                    unknown.known_answered_unknown += best_evidence.is_none() as usize;
                    // The open set: the same search with the reference (and its
                    // duplicates) gone, so the shortlist takes the next ones instead.
                    let same = item(r);
                    let open = rr.candidates(q, &global, |i| same.contains(&i));
                    let open_evidence = (rr.evidence)(q, &open);
                    let wrong = open
                        .iter()
                        .zip(&open_evidence)
                        .filter(|(_, e)| **e >= rr.min_evidence)
                        .max_by_key(|(_, e)| **e)
                        .map(|(i, e)| (name(&catalogue_paths[*i]), *e));
                    unknown.open_set_queries += 1;
                    unknown.open_set_answered_unknown += wrong.is_none() as usize;
                    open_set_match = wrong;
                } else {
                    unknown.unknown_queries += 1;
                    unknown.unknown_answered_unknown += best_evidence.is_none() as usize;
                }
                (order, Some(best_evidence))
            }
        };
        let best = order.first().copied().unwrap_or(0);
        let rank = case.reference.map(|r| match verified {
            // Two stages: an `unknown` answer does not name the reference at rank 1.
            Some(None) if position(&order, r) == 1 => 2,
            _ => position(&order, r),
        });
        outcomes.push((
            case,
            QueryOutcome {
                query: name(&case.query),
                reference: case.reference.map(|r| name(&catalogue_paths[r])),
                rank,
                first_rank,
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
    }
    if rerank.is_some() {
        unknown.open_set_unknown_rate =
            unknown.open_set_answered_unknown as f64 / unknown.open_set_queries.max(1) as f64;
    }
    let ranks: Vec<usize> = outcomes.iter().filter_map(|(_, o)| o.rank).collect();
    // A third column whose values repeat labels groups (a camera); one whose values are all
    // different is a free-text note, and a per-value breakdown of it would say nothing.
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
    QueryReferenceReport {
        catalogue: catalogue.len(),
        first_stage: recall_report(&first_ranks),
        global_stage: recall_report(&global_ranks),
        word_stage: (!word_ranks.is_empty()).then(|| recall_report(&word_ranks)),
        unknown: rerank.is_some().then_some(unknown),
        overall: recall_report(&ranks),
        by_attribute,
        attribute: attribute.map(str::to_string),
        expected_unknown: outcomes
            .iter()
            .filter(|(c, _)| c.reference.is_none())
            .map(|(_, o)| o.clone())
            .collect(),
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            crate::l2_normalize(&mut a);
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
