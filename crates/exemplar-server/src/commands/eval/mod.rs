//! `exemplar eval` and `exemplar calibrate`: embed a labelled folder once, then score
//! one or more descriptors (raw features and projections of them) by exact search, with
//! the second stage run as the service runs it.
//!
//! The stages, in order: the dataset ([`inputs::Dataset`]); the features measured once
//! ([`inputs::Inputs`]: global, local, word rankings); per projection, the descriptors
//! ([`descriptors`]); per setting (shortlist depth × verdict rule), the ranking, the
//! shortlist verified by the service's own [`verify_shortlist`] and the figures
//! ([`score_setting`]); with `--folds`, the fold-honest choice ([`output::folded_report`]);
//! then the report.

mod inputs;
mod output;
mod probe;

pub(crate) use inputs::{embed_all, local_features};

use crate::cli::{share, CalibrateArgs, EvalArgs};
use crate::progress::Progress;
use anyhow::{bail, Context};
use exemplar_core::refit::CATALOGUE_SOURCE;
use exemplar_core::rerank::verify_shortlist;
use exemplar_core::{Evidence, FeatureExtractor, PooledFeature, Projection, VerdictRule};
use exemplar_embed::CnnEmbedder;
use exemplar_eval::folds::{query_folds, Tolerance};
use exemplar_eval::{
    mean_average_precision, query_reference_report, GroundTruth, QueryOutcome, ReportOptions,
    Rerank,
};
use exemplar_verify::ExtractParams;
use inputs::{Dataset, Inputs, Verifications};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn run(
    embedder: &CnnEmbedder,
    local: Option<&ExtractParams>,
    args: &EvalArgs,
) -> anyhow::Result<()> {
    if args.method == crate::cli::EvalMethod::LinearProbe {
        return probe::run(embedder, args);
    }
    let rules = [args.stages.verdict_rule()];
    score_rules(embedder, local, args, &rules, &[], false)
}

/// `exemplar calibrate`: the same two stages under every rule of a grid, with the rates
/// a rule is chosen by (the local features are matched once and reused).
pub fn calibrate(
    embedder: &CnnEmbedder,
    local: Option<&ExtractParams>,
    args: &CalibrateArgs,
) -> anyhow::Result<()> {
    if args.eval.method != crate::cli::EvalMethod::Retrieval {
        bail!("calibrate scores retrieval settings (drop --method)");
    }
    if args.eval.global_only {
        bail!("calibrate scores verdict rules: it needs the second stage (drop --global-only)");
    }
    let framings = args
        .framing
        .iter()
        .map(|f| parse_framing(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut grid = Vec::new();
    for &min_inliers in &args.inliers {
        for &min_coverage in &args.coverage {
            for &(min_in_frame, min_in_frame_off_centre) in &framings {
                grid.push(VerdictRule {
                    min_inliers,
                    min_coverage,
                    min_in_frame,
                    min_in_frame_off_centre,
                    ..Default::default()
                });
            }
        }
    }
    score_rules(embedder, local, &args.eval, &grid, &args.shortlists, true)
}

/// `MIN_IN_FRAME:MIN_IN_FRAME_OFF_CENTRE`, both shares of the outline (0..1).
fn parse_framing(text: &str) -> anyhow::Result<(f32, f32)> {
    let parsed = text
        .split_once(':')
        .and_then(|(a, b)| Some((share(a).ok()?, share(b).ok()?)));
    parsed.with_context(|| {
        format!("--framing {text:?}: expected MIN_IN_FRAME:MIN_IN_FRAME_OFF_CENTRE, shares in 0..1 (e.g. 0.5:0.99)")
    })
}

/// Every setting tried for one projection, with each query's outcome under it.
type Settings = Vec<(Value, Vec<QueryOutcome>)>;

fn score_rules(
    embedder: &CnnEmbedder,
    local_params: Option<&ExtractParams>,
    args: &EvalArgs,
    rules: &[VerdictRule],
    shortlists: &[usize],
    calibrating: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let dataset = Dataset::load(args)?;
    let shortlists: Vec<usize> = if shortlists.is_empty() {
        vec![args.stages.shortlist]
    } else {
        shortlists.to_vec()
    };
    let deepest = shortlists.iter().copied().max().unwrap_or(0);
    let inputs = Inputs::measure(embedder, local_params, args, &dataset, deepest)?;
    let verifications = inputs
        .local
        .as_deref()
        .map(|local| Verifications::new(local, dataset.query_offset));
    let same_item = verifications
        .as_ref()
        .map(|v| v.same_item(&dataset, args.same_item_inliers))
        .unwrap_or_default();

    let mut results = Vec::new();
    for name in &args.projection {
        let (head, vectors, view_vectors) =
            match descriptors(embedder, name, args, &dataset, &inputs)? {
                Ok(projected) => projected,
                Err(error) => {
                    results.push(error);
                    continue;
                }
            };
        let mut settings: Settings = Vec::new();
        for (&shortlist, rule) in shortlists
            .iter()
            .flat_map(|s| rules.iter().map(move |r| (s, r)))
        {
            let scored = score_setting(
                &dataset,
                &inputs,
                verifications.as_ref(),
                &same_item,
                (&vectors, &view_vectors),
                (shortlist, rule),
                args,
            );
            let (mut row, outcomes) = scored;
            let mut with_head = head.clone();
            output::merge(&mut with_head, row.take());
            row = with_head;
            if calibrating {
                row = output::rates(&row, rule, shortlist);
                row["setting"] = output::settings_row_setting(shortlist, rule);
                eprintln!("{}", output::rates_line(&row));
            } else {
                eprintln!("{}", output::summary_line(&row));
            }
            settings.push((row.clone(), outcomes));
            results.push(row);
        }
        if let (true, GroundTruth::QueryReference { queries, .. }) =
            (args.folds > 1, &dataset.truth)
        {
            let references: Vec<Option<usize>> = queries.iter().map(|q| q.reference).collect();
            let folded = output::folded_report(
                name,
                &settings,
                &query_folds(&references, args.folds as usize),
                inputs.local.is_some(),
                &Tolerance {
                    max_wrong_answer_rate: args.max_wrong_answer_rate as f64,
                    max_false_accept_rate: args.max_false_accept_rate as f64,
                    min_first_stage_recall: args.min_first_stage_recall as f64,
                },
            );
            eprintln!("{}", output::folded_line(&folded));
            results.push(folded);
        }
    }

    let images = dataset.paths.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "dataset": args.dataset.display().to_string(),
            "protocol": match dataset.truth { GroundTruth::Groups { .. } => "map", GroundTruth::QueryReference { .. } => "query-reference" },
            "model": embedder.info().id,
            "images": dataset.paths.len(),
            "distractor_dirs": args.distractors.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
            "embed_seconds": inputs.embed_seconds,
            "embed_ms_per_image": inputs.embed_seconds * 1e3 / images,
            "same_item_pairs": output::same_item_json(&dataset.truth, &same_item, &dataset.root),
            "stages": if args.global_only { json!("global") } else { json!({"shortlist": args.stages.shortlist, "min_inliers": args.stages.min_inliers, "min_coverage": args.stages.min_coverage, "min_in_frame": args.stages.min_in_frame, "min_in_frame_off_centre": args.stages.min_in_frame_off_centre, "settle_inliers": args.stages.settle_inliers, "settle_coverage": args.stages.settle_coverage, "verify_chunk": args.stages.verify_chunk}) },
            "local_features_ms_per_image": inputs.local_seconds * 1e3 / images,
            "word_index_seconds": inputs.word_seconds,
            "vocabulary": inputs.words.as_ref().map(|_| format!("{:?}", args.stages.vocabulary)),
            "folds": args.folds,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
            "results": results,
        })
    );
    Ok(())
}

/// One projection's descriptors of every image and of each query's extra views, with the
/// head of its result rows; `Err` holds the row that says why it could not be made.
#[allow(clippy::type_complexity)]
fn descriptors(
    embedder: &CnnEmbedder,
    name: &str,
    args: &EvalArgs,
    dataset: &Dataset,
    inputs: &Inputs,
) -> anyhow::Result<Result<(Value, Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>), Value>> {
    // Which features a catalogue-fitted projection may learn from: the indexed images.
    let catalogue_features: Vec<&[f32]> = match &dataset.truth {
        GroundTruth::Groups { .. } => inputs.features.iter().map(|f| f.0.as_slice()).collect(),
        GroundTruth::QueryReference { catalogue, .. } => inputs.features[..catalogue.len()]
            .iter()
            .map(|f| f.0.as_slice())
            .collect(),
    };
    let learned = if name == "learned" {
        Some(learned_projection(embedder, args, dataset, inputs)?)
    } else {
        None
    };
    let training = learned.as_ref().map(|(_, report)| {
        let mut report = serde_json::to_value(report).expect("serialisable");
        report.as_object_mut().expect("object").remove("history");
        report
    });
    let resolved = match learned {
        Some((head, _)) => Ok(Some(head)),
        None => resolve_projection(embedder, name, args, &catalogue_features),
    };
    let projection = match resolved {
        Ok(p) => p,
        Err(e) => {
            eprintln!("projection {name}: {e:#}");
            return Ok(Err(json!({"projection": name, "error": format!("{e:#}")})));
        }
    };
    if let (Some(p), Some(path), true) = (&projection, &args.save_projection, name == "catalogue") {
        p.save(path)?;
        eprintln!("saved projection {} to {}", p.version(), path.display());
    }
    let project = |f: &PooledFeature| match &projection {
        None => Ok(f.0.clone()),
        Some(p) => p.apply(f),
    };
    let vectors: Vec<Vec<f32>> = inputs
        .features
        .iter()
        .map(project)
        .collect::<Result<_, _>>()?;
    let view_vectors: Vec<Vec<Vec<f32>>> = inputs
        .view_features
        .iter()
        .map(|views| views.iter().map(project).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()?;
    let head = json!({
        "projection": name,
        "version": projection.as_ref().map(|p| p.version().to_string()).unwrap_or_else(|| "raw".into()),
        "dim": vectors.first().map(Vec::len).unwrap_or(0),
    });
    let mut head = head;
    if let Some(training) = training {
        head["training"] = training;
    }
    Ok(Ok((head, vectors, view_vectors)))
}

/// The head `exemplar train` would learn on this catalogue (its images and their
/// synthetic views; never the queries), and its training report.
fn learned_projection(
    embedder: &CnnEmbedder,
    args: &EvalArgs,
    dataset: &Dataset,
    inputs: &Inputs,
) -> anyhow::Result<(Projection, exemplar_train::TrainReport)> {
    let catalogue = match &dataset.truth {
        GroundTruth::Groups { .. } => dataset.paths.len(),
        GroundTruth::QueryReference { catalogue, .. } => catalogue.len(),
    };
    let paths = &dataset.paths[..catalogue];
    let started = Instant::now();
    let views = match &args.feature_cache {
        Some(dir) => super::feature_cache::cached_view_features(embedder, paths, dir, &args.train)?,
        None => embed_views_of_files(embedder, paths, &args.train)?,
    };
    let view_seconds = started.elapsed().as_secs_f64();
    let photos: Vec<Vec<f32>> = inputs.features[..catalogue]
        .iter()
        .map(|f| f.0.clone())
        .collect();
    let (head, report) = crate::training::learn(photos, views, args.dim, &args.train, |e| {
        eprintln!(
            "epoch {}: loss {:.4}, held-out recall@1 {:.3} @10 {:.3}",
            e.epoch, e.loss, e.held_out.at_1, e.held_out.at_10
        );
        std::ops::ControlFlow::Continue(())
    })?;
    eprintln!(
        "learned head {}: views {view_seconds:.0} s, training {:.1} s; held-out recall@1 {:.3} -> {:.3}, @10 {:.3} -> {:.3} (epoch {})",
        head.version(),
        report.seconds,
        report.base.at_1,
        report.learned.at_1,
        report.base.at_10,
        report.learned.at_10,
        report.best_epoch
    );
    Ok((head, report))
}

/// Synthetic views of image files, embedded (what the cache fills itself with).
pub(crate) fn embed_views_of_files(
    embedder: &CnnEmbedder,
    paths: &[PathBuf],
    settings: &crate::training::TrainSettings,
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let keys: Vec<u64> = paths.iter().map(|p| path_key(p)).collect();
    let mut progress = Progress::new("embedding views", paths.len() * settings.views);
    let views = crate::training::embed_views(
        &keys,
        settings,
        |chunk| {
            chunk
                .iter()
                .map(|&i| {
                    std::fs::read(&paths[i])
                        .map(Some)
                        .with_context(|| format!("reading {}", paths[i].display()))
                })
                .collect()
        },
        |views| {
            let refs: Vec<&[u8]> = views.iter().map(Vec::as_slice).collect();
            embedder
                .extract_batch(&refs)
                .into_iter()
                .map(|r| r.map(|f| f.0).context("embedding a view"))
                .collect()
        },
        |n| progress.advance(n),
    )?;
    progress.finish();
    Ok(views)
}

/// A stable key of a file for seeding its views: FNV-1a of its path.
fn path_key(path: &Path) -> u64 {
    path.to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

/// One setting (shortlist depth, verdict rule): every query ranked exactly, its shortlist
/// verified as the service verifies it, and the figures.
fn score_setting(
    dataset: &Dataset,
    inputs: &Inputs,
    verifications: Option<&Verifications<'_>>,
    same_item: &BTreeMap<usize, Vec<usize>>,
    (vectors, view_vectors): (&[Vec<f32>], &[Vec<Vec<f32>>]),
    (shortlist, rule): (usize, &VerdictRule),
    args: &EvalArgs,
) -> (Value, Vec<QueryOutcome>) {
    let early_stop = args.stages.early_stop();
    // The service's own chunked verification, each chunk's candidates in parallel.
    // Evidence counts (as its inliers) only when the rule verifies it.
    let evidence = |q: usize, candidates: &[usize]| -> Vec<usize> {
        let Some(verifications) = verifications else {
            return vec![0; candidates.len()];
        };
        let verify_chunk = |range: std::ops::Range<usize>| {
            let seen: Vec<Option<Evidence>> = candidates[range]
                .par_iter()
                .map(|&c| Some(verifications.evidence(q, c)))
                .collect();
            std::future::ready(Ok::<_, std::convert::Infallible>(seen))
        };
        let seen = futures_executor::block_on(verify_shortlist(
            candidates.len(),
            early_stop,
            rule,
            verify_chunk,
        ));
        seen.unwrap_or_else(|never| match never {})
            .into_iter()
            .map(|e| {
                e.filter(|e| rule.verified(e))
                    .map_or(0, |e| e.inliers as usize)
            })
            .collect()
    };
    let rerank = verifications.map(|_| Rerank {
        shortlist,
        min_evidence: rule.min_inliers as usize,
        evidence: &evidence,
        words: inputs.words.as_deref(),
    });
    let started = Instant::now();
    let (mut metrics, outcomes) = score(
        &dataset.truth,
        vectors,
        &dataset.root,
        args.per_query,
        rerank.as_ref(),
        same_item,
        view_vectors,
    );
    metrics["rank_seconds"] = json!(started.elapsed().as_secs_f64());
    let mut row = json!({ "setting": output::settings_row_setting(shortlist, rule) });
    output::merge(&mut row, metrics);
    (row, outcomes)
}

fn resolve_projection(
    embedder: &CnnEmbedder,
    name: &str,
    args: &EvalArgs,
    catalogue: &[&[f32]],
) -> anyhow::Result<Option<Projection>> {
    let dim = embedder.info().feature_dim;
    Ok(match name {
        "raw" => None,
        "default" => Some(exemplar_embed::default_projection(embedder, args.dim)?),
        "random" => Some(Projection::random_orthogonal(dim, args.dim, 0)),
        "classifier" => Some(
            embedder
                .classifier_projection(args.dim, args.whitening)?
                .context("this model has no linear classifier to derive a projection from")?,
        ),
        "catalogue" => Some(Projection::fit_pca(
            catalogue,
            args.dim,
            args.whitening,
            CATALOGUE_SOURCE,
        )?),
        path => {
            let path = Path::new(path);
            if !path.is_file() {
                bail!("not a projection name (raw, default, random, classifier, catalogue) nor a file");
            }
            Some(Projection::load(path)?)
        }
    })
}

fn score(
    truth: &GroundTruth,
    vectors: &[Vec<f32>],
    root: &Path,
    per_query: bool,
    rerank: Option<&Rerank<'_>>,
    same_item: &BTreeMap<usize, Vec<usize>>,
    extra_views: &[Vec<Vec<f32>>],
) -> (Value, Vec<QueryOutcome>) {
    match truth {
        GroundTruth::Groups {
            groups, is_query, ..
        } => (
            json!({
                "queries": is_query.iter().filter(|q| **q).count(),
                "map": mean_average_precision(vectors, groups, is_query, rerank),
            }),
            Vec::new(),
        ),
        GroundTruth::QueryReference {
            catalogue,
            queries,
            attribute,
        } => {
            let (cat, qv) = vectors.split_at(catalogue.len());
            let report = query_reference_report(
                catalogue,
                cat,
                queries,
                qv,
                attribute.as_deref(),
                root,
                &ReportOptions {
                    extra_views,
                    rerank,
                    same_item,
                },
            );
            let mut value = serde_json::to_value(&report).expect("serialisable");
            if !per_query {
                value.as_object_mut().expect("object").remove("outcomes");
            }
            (value, report.outcomes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_framing;

    #[test]
    fn framing_rules_are_two_shares() {
        assert_eq!(parse_framing("0.7:0.99").unwrap(), (0.7, 0.99));
        assert_eq!(parse_framing("0:0").unwrap(), (0.0, 0.0));
        for bad in ["0.7", "0.7:", "a:b", "0.7:1.5", "-1:0"] {
            let message = parse_framing(bad).unwrap_err().to_string();
            assert!(
                message.contains("MIN_IN_FRAME:MIN_IN_FRAME_OFF_CENTRE"),
                "{message}"
            );
        }
    }
}
