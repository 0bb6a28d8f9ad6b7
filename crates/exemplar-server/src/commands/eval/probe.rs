//! `exemplar eval --method linear-probe`: the classifier answer to "recognise an 11th
//! item" beside retrieval's, on a set of groups (INRIA Holidays): each group's query
//! photo is classified, trained on the group's other photos. A softmax layer over the
//! classes is trained on the frozen backbone's features; retrieval names the class of
//! the nearest photo. Also timed: what adding one class costs each (the layer trained
//! again, against one descriptor projected and indexed).

use super::inputs::Dataset;
use crate::cli::{EvalArgs, DESCRIPTOR_DIM};
use anyhow::bail;
use exemplar_core::refit::CATALOGUE_SOURCE;
use exemplar_core::{cosine, FeatureExtractor, PooledFeature, Projection};
use exemplar_embed::CnnEmbedder;
use exemplar_eval::GroundTruth;
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_train::probe::{train_probe, ProbeConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

pub fn run(embedder: &CnnEmbedder, args: &EvalArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(args)?;
    let GroundTruth::Groups {
        groups, is_query, ..
    } = &dataset.truth
    else {
        bail!("--method linear-probe needs a set of groups (path, group, is_query), e.g. INRIA Holidays");
    };
    let features: Vec<PooledFeature> = match &args.feature_cache {
        Some(dir) => super::super::feature_cache::cached_features(embedder, &dataset.paths, dir)?,
        None => super::embed_all(embedder, &dataset.paths)?,
    };
    // Classes: the groups with at least one photo besides the query.
    let mut class_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, &q) in groups.iter().zip(is_query) {
        if !q {
            let next = class_of.len();
            class_of.entry(g.as_str()).or_insert(next);
        }
    }
    let (mut train_x, mut train_y, mut test_x, mut test_y) = (vec![], vec![], vec![], vec![]);
    for ((g, &q), f) in groups.iter().zip(is_query).zip(&features) {
        let Some(&class) = class_of.get(g.as_str()) else {
            continue;
        };
        if q {
            test_x.push(f.0.clone());
            test_y.push(class);
        } else {
            train_x.push(f.0.clone());
            train_y.push(class);
        }
    }
    let classes = class_of.len();
    let accuracy = |predicted: &[usize]| {
        predicted
            .iter()
            .zip(&test_y)
            .filter(|(p, y)| p == y)
            .count() as f64
            / test_y.len().max(1) as f64
    };

    let config = ProbeConfig::default();
    let started = Instant::now();
    let probe = train_probe(&train_x, &train_y, classes, &config)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let probe_accuracy = accuracy(&probe.classify(&test_x)?);

    let nearest = |vectors: &[Vec<f32>], query: &[f32]| -> usize {
        let best = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (cosine(v, query), i))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(0, |(_, i)| i);
        train_y[best]
    };
    let raw_accuracy = accuracy(
        &test_x
            .iter()
            .map(|q| nearest(&train_x, q))
            .collect::<Vec<_>>(),
    );
    let refs: Vec<&[f32]> = train_x.iter().map(Vec::as_slice).collect();
    let pca = Projection::fit_pca(
        &refs,
        DESCRIPTOR_DIM.min(refs.len() - 1),
        args.whitening,
        CATALOGUE_SOURCE,
    )?;
    let project = |f: &Vec<f32>| pca.apply(&PooledFeature(f.clone()));
    let train_p = train_x.iter().map(project).collect::<Result<Vec<_>, _>>()?;
    let test_p = test_x.iter().map(project).collect::<Result<Vec<_>, _>>()?;
    let pca_accuracy = accuracy(
        &test_p
            .iter()
            .map(|q| nearest(&train_p, q))
            .collect::<Vec<_>>(),
    );

    // Adding a class: retrieval projects one photo and inserts it into the index the
    // service uses; the probe trains its layer again over one more class.
    let items: Vec<(u64, Vec<f32>)> = train_p
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    let mut index = AnnIndex::build(pca.output_dim(), IndexParams::default(), &items)?;
    let started = Instant::now();
    for (i, q) in test_x.iter().enumerate() {
        index.insert((items.len() + i) as u64, &project(q)?)?;
    }
    let index_add_ms = started.elapsed().as_secs_f64() * 1e3 / test_x.len().max(1) as f64;

    println!(
        "{}",
        json!({
            "dataset": args.dataset.display().to_string(),
            "method": "linear-probe",
            "model": embedder.info().id,
            "classes": classes,
            "training_photos": train_x.len(),
            "queries": test_x.len(),
            "accuracy": {
                "linear_probe": probe_accuracy,
                "retrieval_raw": raw_accuracy,
                "retrieval_pca": pca_accuracy,
            },
            "probe": {"steps": config.steps, "learning_rate": config.learning_rate, "weight_decay": config.weight_decay},
            "add_one_class_ms": {
                "linear_probe_retrain": train_seconds * 1e3,
                "retrieval_index_one": index_add_ms,
            },
        })
    );
    eprintln!(
        "{classes} classes: linear probe {probe_accuracy:.3}, retrieval raw {raw_accuracy:.3}, 256-d PCA {pca_accuracy:.3}; adding a class: retrain {:.0} ms vs index one {index_add_ms:.3} ms",
        train_seconds * 1e3
    );
    Ok(())
}
