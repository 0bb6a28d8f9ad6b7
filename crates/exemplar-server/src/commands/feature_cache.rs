//! `eval --feature-cache`: raw CNN features and local features of a data set kept on disk
//! between runs, so comparing projections, vocabularies or verdict rules does not run the
//! CNN or the keypoint detector again. A line or record cut short by a crash is skipped.

use super::eval::{embed_all, local_features};
use exemplar_core::{FeatureExtractor, PooledFeature};
use exemplar_embed::CnnEmbedder;
use exemplar_verify::{ExtractParams, LocalFeatures};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Features from `dir`'s cache file for this model; the missing ones are embedded and
/// appended (one JSON line per image: path and feature).
pub fn cached_features(
    embedder: &CnnEmbedder,
    paths: &[PathBuf],
    dir: &Path,
) -> anyhow::Result<Vec<PooledFeature>> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!("{}.jsonl", file_name(&embedder.info().id)));
    let mut known: HashMap<PathBuf, PooledFeature> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            // A line cut short by a crash is skipped, not fatal.
            if let Ok((path, feature)) = serde_json::from_str::<(PathBuf, Vec<f32>)>(line) {
                known.insert(path, PooledFeature(feature));
            }
        }
    }
    fill_missing(
        paths,
        known,
        &file,
        |missing| embed_all(embedder, missing),
        |out, path, feature: &PooledFeature| {
            writeln!(out, "{}", serde_json::to_string(&(path, &feature.0))?)?;
            Ok(())
        },
    )
}

/// Raw features of the synthetic views `exemplar train` makes of each image, from `dir`'s
/// cache file for this model, view count and seed; the missing ones are made, embedded
/// and appended.
pub fn cached_view_features(
    embedder: &CnnEmbedder,
    paths: &[PathBuf],
    dir: &Path,
    settings: &crate::training::TrainSettings,
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!(
        "{}-views{}-s{}.jsonl",
        file_name(&embedder.info().id),
        settings.views,
        settings.seed
    ));
    let mut known: HashMap<PathBuf, Vec<Vec<f32>>> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            if let Ok((path, views)) = serde_json::from_str::<(PathBuf, Vec<Vec<f32>>)>(line) {
                known.insert(path, views);
            }
        }
    }
    fill_missing(
        paths,
        known,
        &file,
        |missing| super::eval::embed_views_of_files(embedder, missing, settings),
        |out, path, views: &Vec<Vec<f32>>| {
            writeln!(out, "{}", serde_json::to_string(&(path, views))?)?;
            Ok(())
        },
    )
}

/// A model id made safe for a file name.
fn file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What `known` lacks of `paths` is computed (`compute`) and appended to `file`
/// (`append`, one record each); returns every path's value in order.
fn fill_missing<T: Clone>(
    paths: &[PathBuf],
    mut known: HashMap<PathBuf, T>,
    file: &Path,
    compute: impl FnOnce(&[PathBuf]) -> anyhow::Result<Vec<T>>,
    append: impl Fn(&mut std::fs::File, &Path, &T) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<T>> {
    let missing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !known.contains_key(*p))
        .cloned()
        .collect();
    eprintln!(
        "cache {}: {} cached, {} to compute",
        file.display(),
        paths.len() - missing.len(),
        missing.len()
    );
    if !missing.is_empty() {
        let fresh = compute(&missing)?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        for (path, value) in missing.into_iter().zip(fresh) {
            append(&mut out, &path, &value)?;
            known.insert(path, value);
        }
    }
    Ok(paths.iter().map(|p| known[p].clone()).collect())
}

/// Local features of every image from `dir`'s cache file for these parameters; the
/// missing ones are extracted and appended (records: path length, path, feature bytes
/// length, the stored form of the features).
pub fn cached_local_features(
    paths: &[PathBuf],
    params: &ExtractParams,
    dir: &Path,
) -> anyhow::Result<Vec<LocalFeatures>> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!(
        "local-{}-{}px-{}.bin",
        params.kind, params.max_side, params.max_keypoints
    ));
    let known: HashMap<PathBuf, LocalFeatures> = if file.exists() {
        read_local_cache(&file)?.into_iter().collect()
    } else {
        HashMap::new()
    };
    fill_missing(
        paths,
        known,
        &file,
        |missing| local_features(missing, params),
        |out, path, features: &LocalFeatures| {
            let name = path.to_string_lossy().into_owned();
            let bytes = features.to_bytes();
            let mut record = Vec::with_capacity(8 + name.len() + bytes.len());
            record.extend_from_slice(&(name.len() as u32).to_le_bytes());
            record.extend_from_slice(name.as_bytes());
            record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            record.extend_from_slice(&bytes);
            out.write_all(&record)?;
            Ok(())
        },
    )
}

/// Every record of a local feature cache file, in order (a record cut short ends it).
pub fn read_local_cache(file: &Path) -> anyhow::Result<Vec<(PathBuf, LocalFeatures)>> {
    let bytes = std::fs::read(file)?;
    let mut rest = bytes.as_slice();
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let mut out = Vec::new();
    while let Some(n) = take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize) {
        let Some(path) = take(n).map(|b| PathBuf::from(String::from_utf8_lossy(b).as_ref())) else {
            break;
        };
        let Some(n) = take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize) else {
            break;
        };
        let Some(Ok(features)) = take(n).map(LocalFeatures::from_bytes) else {
            break;
        };
        out.push((path, features));
    }
    // A path appended twice (two runs extracting at once): the first is kept.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(path, _)| seen.insert(path.clone()));
    Ok(out)
}
