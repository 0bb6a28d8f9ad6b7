//! What `eval` measures once and shares between every projection and setting: the
//! labelled folder, the images' global and local features, the word index's rankings,
//! and the cached verification of (query, catalogue image) pairs.

use crate::progress::Progress;
use anyhow::Context;
use exemplar_core::shortlist::WordIndexFitter;
use exemplar_core::{Evidence, FeatureExtractor, PooledFeature};
use exemplar_embed::CnnEmbedder;
use exemplar_eval::{images_under, GroundTruth};
use exemplar_verify::{extract_rgb, ExtractParams, LocalFeatures, RansacParams};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::cli::EvalArgs;

/// Images read and embedded per step: decoding runs in parallel within a step.
const CHUNK: usize = 16;

/// The labelled folder with its distractors.
pub(super) struct Dataset {
    pub truth: GroundTruth,
    /// Paths in reports are relative to this.
    pub root: PathBuf,
    /// Every image: the catalogue first, then the queries (query/reference sets).
    pub paths: Vec<PathBuf>,
    /// Catalogue images from here on are distractors.
    pub distractors_from: usize,
    pub catalogue_len: usize,
    /// Where the queries start in `paths` (0 when every image is a query).
    pub query_offset: usize,
}

impl Dataset {
    pub fn load(args: &EvalArgs) -> anyhow::Result<Self> {
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
        let (catalogue_len, query_offset) = match &truth {
            GroundTruth::Groups { images, .. } => (images.len(), 0),
            GroundTruth::QueryReference { catalogue, .. } => (catalogue.len(), catalogue.len()),
        };
        Ok(Self {
            paths: truth.all_images(),
            truth,
            root,
            distractors_from,
            catalogue_len,
            query_offset,
        })
    }

    /// The index in `paths` of every query.
    fn query_images(&self) -> Vec<usize> {
        match &self.truth {
            GroundTruth::QueryReference { queries, .. } => {
                (0..queries.len()).map(|q| self.query_offset + q).collect()
            }
            GroundTruth::Groups { images, .. } => (0..images.len()).collect(),
        }
    }
}

/// The features of every image, made once.
pub(super) struct Inputs {
    pub features: Vec<PooledFeature>,
    /// More global features of each query, one per `--query-views` view.
    pub view_features: Vec<Vec<PooledFeature>>,
    /// Two stages: local features of every image, as stored (catalogue) and as a search
    /// makes them (queries).
    pub local: Option<Vec<LocalFeatures>>,
    /// The word index's ranking of each query, when the catalogue is large enough to fit
    /// a vocabulary (as in the service).
    pub words: Option<Vec<Vec<usize>>>,
    pub embed_seconds: f64,
    pub local_seconds: f64,
    pub word_seconds: Option<f64>,
}

impl Inputs {
    /// Embeds, extracts and indexes `dataset` for word rankings `depth` deep.
    pub fn measure(
        embedder: &CnnEmbedder,
        local_params: Option<&ExtractParams>,
        args: &EvalArgs,
        dataset: &Dataset,
        depth: usize,
    ) -> anyhow::Result<Self> {
        let paths = &dataset.paths;
        let embed_started = Instant::now();
        let features = match &args.feature_cache {
            Some(dir) => super::super::feature_cache::cached_features(embedder, paths, dir)?,
            None => embed_all(embedder, paths)?,
        };
        let embed_seconds = embed_started.elapsed().as_secs_f64();
        let view_features = query_views(embedder, &dataset.truth, &args.query_views)?;
        let local_started = Instant::now();
        // The service's local features (`--local-features`, `--local-keypoints`): the
        // catalogue's as stored, the queries' as a search makes them (a Holidays image is
        // both, as stored).
        let local = match (local_params, args.global_only) {
            (Some(params), false) => {
                let extract = |paths: &[PathBuf], params: &ExtractParams| match &args.feature_cache
                {
                    Some(dir) => {
                        super::super::feature_cache::cached_local_features(paths, params, dir)
                    }
                    None => local_features(paths, params),
                };
                let mut all = extract(&paths[..dataset.catalogue_len], params)?;
                all.extend(extract(
                    &paths[dataset.catalogue_len..],
                    &params.for_query(),
                )?);
                Some(all)
            }
            _ => None,
        };
        let local_seconds = local_started.elapsed().as_secs_f64();
        let words = match (&local, args.stages.vocabulary_fitter()) {
            (Some(local), Some(fitter)) => {
                // In a Holidays-style set each image is a query and finds itself first.
                let skip = matches!(dataset.truth, GroundTruth::Groups { .. }) as usize;
                word_rankings(
                    &fitter,
                    &local[..dataset.catalogue_len],
                    local,
                    &dataset.query_images(),
                    depth + skip + 10,
                )
            }
            _ => None,
        };
        Ok(Self {
            features,
            view_features,
            local,
            word_seconds: words.as_ref().map(|w| w.1),
            words: words.map(|w| w.0),
            embed_seconds,
            local_seconds,
        })
    }
}

/// Verification of catalogue image `c` for query `q`, computed once and shared by every
/// rule, shortlist and projection.
pub(super) struct Verifications<'a> {
    local: &'a [LocalFeatures],
    query_offset: usize,
    ransac: RansacParams,
    seen: Mutex<HashMap<(usize, usize), Evidence>>,
}

impl<'a> Verifications<'a> {
    pub fn new(local: &'a [LocalFeatures], query_offset: usize) -> Self {
        Self {
            local,
            query_offset,
            ransac: RansacParams::default(),
            seen: Mutex::default(),
        }
    }

    pub fn evidence(&self, q: usize, c: usize) -> Evidence {
        if let Some(seen) = self.seen.lock().expect("cache").get(&(q, c)) {
            return seen.clone();
        }
        let local = self.local;
        let seen = exemplar_verify::verify(&local[self.query_offset + q], &local[c], &self.ransac)
            .evidence(&local[c]);
        self.seen
            .lock()
            .expect("cache")
            .insert((q, c), seen.clone());
        seen
    }

    /// Distractors showing the same item as a reference (see [`same_item_pairs`]).
    pub fn same_item(&self, dataset: &Dataset, min_inliers: usize) -> BTreeMap<usize, Vec<usize>> {
        match &dataset.truth {
            GroundTruth::QueryReference { queries, .. } => same_item_pairs(
                queries,
                &self.local[..dataset.catalogue_len],
                dataset.distractors_from,
                min_inliers,
                &self.ransac,
            ),
            GroundTruth::Groups { .. } => BTreeMap::new(),
        }
    }
}

/// Distractors that show the same item as a reference (another scan of the same cover):
/// verified against it with at least `min_inliers` inliers. Naming one counts as naming
/// the reference. Measured on SMVS vs the 265 DVD covers: the same cover scanned twice
/// shares 309-791 inliers, another print of the same film at most 53.
fn same_item_pairs(
    queries: &[exemplar_eval::QueryCase],
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
pub(crate) fn local_features(
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

pub(crate) fn embed_all(
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
