//! `exemplar eval`: embed a labelled folder once, then score one or more descriptors
//! (raw features and projections of them) by exact brute-force retrieval.

use crate::cli::{share, CalibrateArgs, EvalArgs};
use crate::progress::Progress;
use anyhow::{bail, Context};
use exemplar_core::eval::{
    images_under, mean_average_precision, query_reference_report, GroundTruth, QueryOutcome,
    ReportOptions,
};
use exemplar_core::folds::{choose_on_all, cross_validate, query_folds, Tolerance};
use exemplar_core::refit::CATALOGUE_SOURCE;
use exemplar_core::rerank::Rerank;
use exemplar_core::shortlist::WordIndexFitter;
use exemplar_core::{Evidence, FeatureExtractor, PooledFeature, Projection, VerdictRule};
use exemplar_embed::CnnEmbedder;
use exemplar_verify::{extract_rgb, ExtractParams, LocalFeatures, RansacParams};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Images read and embedded per step: decoding runs in parallel within a step.
const CHUNK: usize = 16;

pub fn run(embedder: &CnnEmbedder, args: &EvalArgs) -> anyhow::Result<()> {
    score_rules(embedder, args, &[args.stages.verdict_rule()], &[], false)
}

/// `exemplar calibrate`: the same two stages under every rule of a grid, with the rates
/// a rule is chosen by (the local features are matched once and reused).
pub fn calibrate(embedder: &CnnEmbedder, args: &CalibrateArgs) -> anyhow::Result<()> {
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
    score_rules(embedder, &args.eval, &grid, &args.shortlists, true)
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

fn score_rules(
    embedder: &CnnEmbedder,
    args: &EvalArgs,
    rules: &[VerdictRule],
    shortlists: &[usize],
    calibrating: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut truth = GroundTruth::load(&args.dataset)?;
    let distractors_from = match &truth {
        GroundTruth::QueryReference { catalogue, .. } => catalogue.len(),
        GroundTruth::Groups { images, .. } => images.len(),
    };
    for dir in &args.distractors {
        let added = truth.add_distractors(images_under(dir)?)?;
        eprintln!("{added} distractors from {}", dir.display());
    }
    let root = if args.dataset.is_dir() {
        args.dataset.clone()
    } else {
        args.dataset
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let paths = truth.all_images();
    let embed_started = Instant::now();
    let features = match &args.feature_cache {
        Some(dir) => super::feature_cache::cached_features(embedder, &paths, dir)?,
        None => embed_all(embedder, &paths)?,
    };
    let embed_seconds = embed_started.elapsed().as_secs_f64();
    let view_features = query_views(embedder, &truth, &args.query_views)?;
    let (catalogue_len, query_offset) = match &truth {
        GroundTruth::Groups { images, .. } => (images.len(), 0),
        GroundTruth::QueryReference { catalogue, .. } => (catalogue.len(), catalogue.len()),
    };
    let local_started = Instant::now();
    // The service's local features (`--local-features`, `--local-keypoints`): the
    // catalogue's as stored, the queries' as a search makes them (a Holidays image is
    // both, as stored).
    let local = match (&embedder.config().local_features, args.global_only) {
        (Some(params), false) => {
            let extract = |paths: &[PathBuf], params: &ExtractParams| match &args.feature_cache {
                Some(dir) => super::feature_cache::cached_local_features(paths, params, dir),
                None => local_features(paths, params),
            };
            let mut all = extract(&paths[..catalogue_len], params)?;
            all.extend(extract(&paths[catalogue_len..], &params.for_query())?);
            Some(all)
        }
        _ => None,
    };
    let local_seconds = local_started.elapsed().as_secs_f64();
    let shortlists: Vec<usize> = if shortlists.is_empty() {
        vec![args.stages.shortlist]
    } else {
        shortlists.to_vec()
    };
    let deepest = shortlists.iter().copied().max().unwrap_or(0);
    // The word index's ranking of every query, as a search asks for it.
    let words = match (&local, args.stages.vocabulary_fitter()) {
        (Some(local), Some(fitter)) => {
            let (queries, skip) = match &truth {
                GroundTruth::QueryReference { queries, .. } => (
                    (0..queries.len())
                        .map(|q| query_offset + q)
                        .collect::<Vec<_>>(),
                    0,
                ),
                // Each image is a query and finds itself first.
                GroundTruth::Groups { images, .. } => ((0..images.len()).collect(), 1),
            };
            word_rankings(
                &fitter,
                &local[..catalogue_len],
                local,
                &queries,
                deepest + skip + 10,
            )
        }
        _ => None,
    };
    let word_seconds = words.as_ref().map(|w| w.1);
    let words = words.map(|w| w.0);
    let ransac = RansacParams::default();
    // Verification of catalogue item `c` for query `q`, computed once and shared by
    // every rule and projection.
    let verified: Mutex<HashMap<(usize, usize), Evidence>> = Mutex::default();
    let early_stop = args.stages.early_stop();
    let verification = |q: usize, c: usize| -> Evidence {
        if let Some(seen) = verified.lock().expect("cache").get(&(q, c)) {
            return seen.clone();
        }
        let local = local.as_ref().expect("two stages have local features");
        let seen = exemplar_verify::verify(&local[query_offset + q], &local[c], &ransac)
            .evidence(&local[c]);
        verified.lock().expect("cache").insert((q, c), seen.clone());
        seen
    };
    let same_item = match (&truth, &local) {
        (GroundTruth::QueryReference { queries, .. }, Some(local)) => same_item_pairs(
            queries,
            &local[..catalogue_len],
            distractors_from,
            args.same_item_inliers,
            &ransac,
        ),
        _ => BTreeMap::new(),
    };

    // Which features a catalogue-fitted projection may learn from: the indexed images.
    let catalogue_features: Vec<&[f32]> = match &truth {
        GroundTruth::Groups { .. } => features.iter().map(|f| f.0.as_slice()).collect(),
        GroundTruth::QueryReference { catalogue, .. } => features[..catalogue.len()]
            .iter()
            .map(|f| f.0.as_slice())
            .collect(),
    };

    let mut results = Vec::new();
    for name in &args.projection {
        let projection = match resolve_projection(embedder, name, args, &catalogue_features) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("projection {name}: {e:#}");
                results.push(json!({"projection": name, "error": format!("{e:#}")}));
                continue;
            }
        };
        if let (Some(p), Some(path), true) =
            (&projection, &args.save_projection, name == "catalogue")
        {
            p.save(path)?;
            eprintln!("saved projection {} to {}", p.version(), path.display());
        }
        let vectors: Vec<Vec<f32>> = match &projection {
            None => features.iter().map(|f| f.0.clone()).collect(),
            Some(p) => features
                .iter()
                .map(|f| p.apply(f))
                .collect::<Result<_, _>>()?,
        };
        let result = json!({
            "projection": name,
            "version": projection.as_ref().map(|p| p.version().to_string()).unwrap_or_else(|| "raw".into()),
            "dim": vectors.first().map(Vec::len).unwrap_or(0),
        });
        let extra_vectors: Vec<Vec<Vec<f32>>> = view_features
            .iter()
            .map(|views| {
                views
                    .iter()
                    .map(|f| match &projection {
                        None => Ok(f.0.clone()),
                        Some(p) => p.apply(f),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        // Every setting tried, with each query's outcome under it (for the folds).
        let mut settings: Vec<(Value, Vec<QueryOutcome>)> = Vec::new();
        for (&shortlist, rule) in shortlists
            .iter()
            .flat_map(|s| rules.iter().map(move |r| (s, r)))
        {
            // As the service verifies: chunk by chunk until one settles the search.
            // Evidence counts (as its inliers) only when the rule verifies it.
            let evidence = |q: usize, candidates: &[usize]| -> Vec<usize> {
                let mut out = vec![0; candidates.len()];
                let chunk = early_stop.map_or(candidates.len(), |s| s.chunk).max(1);
                for (at, part) in candidates.chunks(chunk).enumerate() {
                    let seen: Vec<Evidence> =
                        part.par_iter().map(|&c| verification(q, c)).collect();
                    for (i, e) in seen.iter().enumerate() {
                        if rule.verified(e) {
                            out[at * chunk + i] = e.inliers as usize;
                        }
                    }
                    // Only a verified match settles, as in the service.
                    let settles =
                        |e: &Evidence| rule.verified(e) && early_stop.is_some_and(|s| s.settles(e));
                    if seen.iter().any(settles) {
                        break;
                    }
                }
                out
            };
            let rerank = local.as_ref().map(|_| Rerank {
                shortlist,
                min_evidence: rule.min_inliers as usize,
                evidence: &evidence,
                words: words.as_deref(),
            });
            let verify_started = Instant::now();
            let (mut metrics, outcomes) = score(
                &truth,
                &vectors,
                &root,
                args.per_query,
                rerank.as_ref(),
                &same_item,
                &extra_vectors,
            );
            metrics["rank_seconds"] = json!(verify_started.elapsed().as_secs_f64());
            let mut row = result.clone();
            row["setting"] = settings_row_setting(shortlist, rule);
            merge(&mut row, metrics);
            if calibrating {
                row = rates(&row, rule, shortlist);
                row["setting"] = settings_row_setting(shortlist, rule);
                eprintln!("{}", rates_line(&row));
            } else {
                eprintln!("{}", summary_line(&row));
            }
            settings.push((row.clone(), outcomes));
            results.push(row);
        }
        if let (true, GroundTruth::QueryReference { queries, .. }) = (args.folds > 1, &truth) {
            let references: Vec<Option<usize>> = queries.iter().map(|q| q.reference).collect();
            let folded = folded_report(
                name,
                &settings,
                &query_folds(&references, args.folds as usize),
                local.is_some(),
                &Tolerance {
                    max_wrong_answer_rate: args.max_wrong_answer_rate as f64,
                    max_false_accept_rate: args.max_false_accept_rate as f64,
                    min_first_stage_recall: args.min_first_stage_recall as f64,
                },
            );
            eprintln!("{}", folded_line(&folded));
            results.push(folded);
        }
    }

    println!(
        "{}",
        json!({
            "dataset": args.dataset.display().to_string(),
            "protocol": match truth { GroundTruth::Groups { .. } => "map", GroundTruth::QueryReference { .. } => "query-reference" },
            "model": embedder.info().id,
            "images": paths.len(),
            "distractor_dirs": args.distractors.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
            "embed_seconds": embed_seconds,
            "embed_ms_per_image": embed_seconds * 1e3 / paths.len().max(1) as f64,
            "same_item_pairs": same_item_json(&truth, &same_item, &root),
            "stages": if args.global_only { json!("global") } else { json!({"shortlist": args.stages.shortlist, "min_inliers": args.stages.min_inliers, "min_coverage": args.stages.min_coverage, "min_in_frame": args.stages.min_in_frame, "min_in_frame_off_centre": args.stages.min_in_frame_off_centre, "settle_inliers": args.stages.settle_inliers, "settle_coverage": args.stages.settle_coverage, "verify_chunk": args.stages.verify_chunk}) },
            "local_features_ms_per_image": local_seconds * 1e3 / paths.len().max(1) as f64,
            "word_index_seconds": word_seconds,
            "vocabulary": words.as_ref().map(|_| format!("{:?}", args.stages.vocabulary)),
            "folds": args.folds,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
            "results": results,
        })
    );
    Ok(())
}

/// Distractors that show the same item as a reference (another scan of the same cover):
/// verified against it with at least `min_inliers` inliers. Naming one counts as naming
/// the reference. Measured on SMVS vs the 265 DVD covers: the same cover scanned twice
/// shares 309-791 inliers, another print of the same film at most 53.
fn same_item_pairs(
    queries: &[exemplar_core::eval::QueryCase],
    // The catalogue's local features (references, then distractors).
    local: &[LocalFeatures],
    distractors_from: usize,
    min_inliers: usize,
    ransac: &RansacParams,
) -> BTreeMap<usize, Vec<usize>> {
    let references: std::collections::BTreeSet<usize> =
        queries.iter().filter_map(|q| q.reference).collect();
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    if distractors_from >= local.len() || min_inliers == 0 {
        return out;
    }
    for r in references {
        let same: Vec<usize> = (distractors_from..local.len())
            .into_par_iter()
            .filter(|&d| {
                exemplar_verify::verify(&local[r], &local[d], ransac).inliers >= min_inliers
            })
            .collect();
        if !same.is_empty() {
            out.insert(r, same);
        }
    }
    out
}

fn same_item_json(truth: &GroundTruth, same: &BTreeMap<usize, Vec<usize>>, root: &Path) -> Value {
    let GroundTruth::QueryReference { catalogue, .. } = truth else {
        return json!([]);
    };
    let name = |i: usize| {
        let p = &catalogue[i];
        p.strip_prefix(root).unwrap_or(p).display().to_string()
    };
    same.iter()
        .flat_map(|(r, ds)| ds.iter().map(move |d| json!([name(*r), name(*d)])))
        .collect()
}

/// Extra global features of each query, one per view (`rot90`, `rot180`, `rot270`:
/// the photo turned; `zoom-out`: padded to a square so the centre crop sees all of it;
/// `zoom-in`: its central two thirds).
fn query_views(
    embedder: &CnnEmbedder,
    truth: &GroundTruth,
    views: &[String],
) -> anyhow::Result<Vec<Vec<PooledFeature>>> {
    let GroundTruth::QueryReference { queries, .. } = truth else {
        return Ok(Vec::new());
    };
    let views: Vec<&String> = views.iter().filter(|v| *v != "none").collect();
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let mut progress = Progress::new("query views", queries.len());
    let mut out = Vec::with_capacity(queries.len());
    for case in queries {
        let bytes = std::fs::read(&case.query)?;
        let rgb = exemplar_embed::image_input::decode_rgb(&bytes, u64::MAX)?;
        let encoded = views
            .iter()
            .map(|v| -> anyhow::Result<Vec<u8>> {
                let turned = exemplar_embed::views::view(&rgb, v)?;
                Ok(exemplar_embed::views::encode_png(&turned)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        out.push(
            embedder
                .extract_batch(&refs)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?,
        );
        progress.advance(1);
    }
    progress.finish();
    Ok(out)
}

/// Fits a vocabulary on the catalogue's local features, indexes them, and ranks the
/// catalogue for each of `queries` (indices into `all`): the `depth` best, as a search
/// asks the service's word index. Returns the rankings and the seconds the fit and
/// indexing took; `None` (the global shortlist alone) for a catalogue the service would
/// not fit a vocabulary on either.
fn word_rankings(
    fitter: &dyn WordIndexFitter,
    catalogue: &[LocalFeatures],
    all: &[LocalFeatures],
    queries: &[usize],
    depth: usize,
) -> Option<(Vec<Vec<usize>>, f64)> {
    let started = Instant::now();
    let stored: Vec<Vec<u8>> = catalogue.iter().map(LocalFeatures::to_bytes).collect();
    let refs: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
    let fitted = (catalogue.len() >= fitter.min_exemplars())
        .then(|| fitter.fit(&refs))
        .flatten();
    let Some(mut index) = fitted else {
        eprintln!(
            "no visual words: a vocabulary is fitted on {} images or more, the catalogue has {} (the global shortlist alone, as in the service)",
            fitter.min_exemplars(),
            catalogue.len(),
        );
        return None;
    };
    for (i, bytes) in refs.iter().enumerate() {
        index.insert(i as i64, bytes);
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "word index {}: {} exemplars in {seconds:.1} s",
        index.version(),
        index.len()
    );
    let rankings = queries
        .par_iter()
        .map(|&q| {
            index
                .search(&all[q].to_bytes(), depth)
                .into_iter()
                .map(|(id, _)| id as usize)
                .collect()
        })
        .collect();
    Some((rankings, seconds))
}

/// Keypoints and descriptors of every image (the second stage's input).
pub(super) fn local_features(
    paths: &[PathBuf],
    params: &ExtractParams,
) -> anyhow::Result<Vec<LocalFeatures>> {
    let progress = std::sync::Mutex::new(Progress::new("local features", paths.len()));
    let out = paths
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let rgb = exemplar_embed::image_input::decode_rgb(&bytes, u64::MAX)
                .with_context(|| format!("decoding {}", p.display()))?;
            progress.lock().expect("progress").advance(1);
            Ok(extract_rgb(&rgb, params))
        })
        .collect::<anyhow::Result<Vec<_>>>();
    if let Ok(p) = progress.into_inner() {
        p.finish();
    }
    out
}

pub(super) fn embed_all(
    embedder: &CnnEmbedder,
    paths: &[PathBuf],
) -> anyhow::Result<Vec<PooledFeature>> {
    let mut progress = Progress::new("embedding", paths.len());
    let mut features = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(CHUNK) {
        let bytes = chunk
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        for (path, result) in chunk.iter().zip(embedder.extract_batch(&refs)) {
            features.push(result.with_context(|| format!("embedding {}", path.display()))?);
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    Ok(features)
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

/// Each fold reported under the setting chosen on the other folds, and all of them
/// pooled (every query once, under a setting its fold did not choose).
fn folded_report(
    projection: &str,
    settings: &[(Value, Vec<QueryOutcome>)],
    folds: &[usize],
    two_stage: bool,
    tolerance: &Tolerance,
) -> Value {
    let outcomes: Vec<Vec<QueryOutcome>> = settings.iter().map(|s| s.1.clone()).collect();
    let shortlists: Vec<usize> = settings
        .iter()
        .map(|s| s.0["setting"]["shortlist"].as_u64().unwrap_or(0) as usize)
        .collect();
    let (reports, pooled) = cross_validate(&shortlists, &outcomes, folds, two_stage, tolerance);
    let (on_all, on_all_figures) = choose_on_all(&shortlists, &outcomes, two_stage, tolerance);
    let setting = |i: usize| settings[i].0["setting"].clone();
    json!({
        "projection": projection,
        "folded": true,
        "folds": reports.len(),
        "tolerance": tolerance,
        "per_fold": reports.iter().map(|r| json!({
            "fold": r.fold,
            "chosen": setting(r.chosen),
            "tuning_figures": r.tuning,
            "held_out_figures": r.held_out,
        })).collect::<Vec<_>>(),
        "held_out": pooled,
        // The defaults a user would set from this data: figures on what they were tuned on.
        "chosen_on_all_queries": {
            "setting": setting(on_all),
            "tuned_on_reported": true,
            "figures": on_all_figures,
        },
    })
}

fn folded_line(row: &Value) -> String {
    let f = &row["held_out"];
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    format!(
        "{} {}-fold, each fold on settings chosen on the others: top-1 {:.4} ({}), wrong answer {:.4}, false accept {:.4}, open set unknown {:.4}, first stage recall@100 {:.4}; chosen: {}; on all queries (tuned on what it reports): {} top-1 {:.4}",
        row["projection"].as_str().unwrap_or("?"),
        row["folds"],
        number(&f["top1"]),
        f["by_attribute_top1"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {:.3}", number(v))).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        number(&f["wrong_answer_rate"]),
        number(&f["false_accept_rate"]),
        number(&f["open_set_unknown_rate"]),
        number(&f["first_stage_recall"]["100"]),
        row["per_fold"]
            .as_array()
            .map(|a| a.iter().map(|r| r["chosen"].to_string()).collect::<Vec<_>>().join(" / "))
            .unwrap_or_default(),
        row["chosen_on_all_queries"]["setting"],
        number(&row["chosen_on_all_queries"]["figures"]["top1"]),
    )
}

fn settings_row_setting(shortlist: usize, rule: &VerdictRule) -> Value {
    json!({
        "shortlist": shortlist,
        "min_inliers": rule.min_inliers,
        "min_coverage": rule.min_coverage,
        "min_in_frame": rule.min_in_frame,
        "min_in_frame_off_centre": rule.min_in_frame_off_centre,
    })
}

/// A calibration row: the rule and the rates it is chosen by.
fn rates(row: &Value, rule: &VerdictRule, shortlist: usize) -> Value {
    let u = &row["unknown"];
    let count = |key: &str| u[key].as_u64().unwrap_or(0) as f64;
    let known = count("known_queries");
    let false_reject = count("known_answered_unknown") / known.max(1.0);
    let top1 = row["top1"].as_f64().unwrap_or(f64::NAN);
    // Should be `unknown`: every open-set search and every query without a reference.
    let should_reject = count("open_set_queries") + count("unknown_queries");
    let accepted_wrongly = count("open_set_queries") - count("open_set_answered_unknown")
        + count("unknown_queries")
        - count("unknown_answered_unknown");
    json!({
        "projection": row["projection"],
        "shortlist": shortlist,
        "min_inliers": rule.min_inliers,
        "min_coverage": rule.min_coverage,
        "min_in_frame": rule.min_in_frame,
        "min_in_frame_off_centre": rule.min_in_frame_off_centre,
        "top1": top1,
        "by_attribute_top1": row["by_attribute"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v["top1"].clone())).collect::<serde_json::Map<_, _>>()),
        "false_reject_rate": false_reject,
        // Known queries answered with the wrong item.
        "wrong_answer_rate": (1.0 - top1 - false_reject).max(0.0),
        "false_accept_rate": accepted_wrongly / should_reject.max(1.0),
        "known_queries": known,
        "should_be_unknown": should_reject,
    })
}

fn rates_line(r: &Value) -> String {
    format!(
        "{} shortlist {} inliers>={} coverage>={} in-frame>={}:{}: top-1 {:.3}, false reject {:.3}, wrong answer {:.3}, false accept {:.3} (of {} that should be unknown)",
        r["projection"].as_str().unwrap_or("?"),
        r["shortlist"],
        r["min_inliers"],
        r["min_coverage"],
        r["min_in_frame"],
        r["min_in_frame_off_centre"],
        r["top1"].as_f64().unwrap_or(f64::NAN),
        r["false_reject_rate"].as_f64().unwrap_or(f64::NAN),
        r["wrong_answer_rate"].as_f64().unwrap_or(f64::NAN),
        r["false_accept_rate"].as_f64().unwrap_or(f64::NAN),
        r["should_be_unknown"],
    )
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn summary_line(r: &Value) -> String {
    let name = r["projection"].as_str().unwrap_or("?");
    let dim = &r["dim"];
    match r.get("map") {
        Some(map) => format!(
            "{name} ({dim}-d): mAP {:.4}",
            map.as_f64().unwrap_or(f64::NAN)
        ),
        None => format!(
            "{name} ({dim}-d): top-1 {:.4} recall@5 {:.4} recall@20 {:.4} by {}: {}",
            r["top1"].as_f64().unwrap_or(f64::NAN),
            r["recall"]["5"].as_f64().unwrap_or(f64::NAN),
            r["recall"]["20"].as_f64().unwrap_or(f64::NAN),
            r["attribute"].as_str().unwrap_or("-"),
            r["by_attribute"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, v)| format!("{k} {:.2}", v["top1"].as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ) + &match r.get("unknown") {
            Some(u) => format!(
                "; shortlist recall@100 {:.4} @300 {:.4}; answered unknown: {}/{} known, {}/{} unknown; open set unknown {:.3}",
                r["first_stage"]["recall"]["100"].as_f64().unwrap_or(f64::NAN),
                r["first_stage"]["recall"]["300"].as_f64().unwrap_or(f64::NAN),
                u["known_answered_unknown"],
                u["known_queries"],
                u["unknown_answered_unknown"],
                u["unknown_queries"],
                u["open_set_unknown_rate"].as_f64().unwrap_or(f64::NAN),
            ),
            None => String::new(),
        },
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
