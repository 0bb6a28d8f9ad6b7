//! The visual-word shortlist in the catalogue service, over the real SQLite store, HNSW
//! index, SIFT features, RANSAC verifier and word index. The global descriptor is a
//! stand-in the test controls, so a photo's cover can be put where the CNN would rank it
//! worst: beyond the global shortlist.

use crate::common::{cover, Lcg};
use exemplar_core::catalogue::{ClassId, Metadata};
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::service::{Catalogue, Limits, TwoStage, Upload, Verdict, VerdictRule};
use exemplar_core::shortlist::WordIndex;
use exemplar_core::{
    l2_normalize, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor, ModelInfo,
    PooledFeature, Projection,
};
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;
use exemplar_verify::{
    extract_rgb, ExtractParams, HomographyVerifier, Norm, VisualWords, VocabularyFitter,
    VocabularyParams,
};
use image::{ImageFormat, Rgb, RgbImage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const DIM: usize = 16;
const COVERS: usize = 24;

/// Real SIFT features of the photo; the global descriptor the test assigned to its bytes.
struct StandInGlobal {
    info: ModelInfo,
    globals: Mutex<HashMap<Vec<u8>, Vec<f32>>>,
}

impl FeatureExtractor for StandInGlobal {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn makes_local_features(&self) -> bool {
        true
    }
    fn extract(&self, images: &[ImageInput<'_>]) -> Vec<Result<Extracted, ExtractError>> {
        let params = ExtractParams::default();
        images
            .iter()
            .map(|input| {
                let rgb = image::load_from_memory(input.bytes)
                    .map_err(|e| ExtractError::CorruptImage(e.to_string()))?
                    .to_rgb8();
                let local = match input.local {
                    LocalFor::Nothing => None,
                    LocalFor::Exemplar => Some(extract_rgb(&rgb, &params).to_bytes()),
                    LocalFor::Query => Some(extract_rgb(&rgb, &params.for_query()).to_bytes()),
                };
                let global = self.globals.lock().unwrap()[input.bytes].clone();
                Ok(Extracted {
                    pooled: PooledFeature(global),
                    local,
                })
            })
            .collect()
    }
}

/// A "phone photo" of a cover: scaled down onto a larger plain background, centred.
fn photo_of(cover: &RgbImage) -> RgbImage {
    let small = image::imageops::resize(cover, 272, 340, image::imageops::FilterType::Triangle);
    let mut photo = RgbImage::from_pixel(420, 480, Rgb([90, 100, 95]));
    image::imageops::overlay(&mut photo, &small, 74, 70);
    photo
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A seeded unit vector.
fn direction(seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed + 99);
    let mut v: Vec<f32> = (0..DIM).map(|_| rng.next(2000) as f32 - 1000.0).collect();
    l2_normalize(&mut v);
    v
}

type Service = Catalogue<SqliteStore, AnnIndex>;

struct Fixture {
    extractor: Arc<StandInGlobal>,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fitter() -> VocabularyFitter {
    VocabularyFitter {
        params: VocabularyParams {
            branching: 6,
            depth: 3,
            ..VocabularyParams::default()
        },
        norm: Norm::L1,
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            extractor: Arc::new(StandInGlobal {
                info: ModelInfo {
                    id: "stand-in".into(),
                    feature_dim: DIM,
                },
                globals: Mutex::default(),
            }),
            db: dir.path().join("c.sqlite"),
            _dir: dir,
        }
    }

    /// A photo upload whose global descriptor is `global`.
    fn upload(&self, img: &RgbImage, global: Vec<f32>) -> Upload {
        let bytes = png(img);
        self.extractor
            .globals
            .lock()
            .unwrap()
            .insert(bytes.clone(), global);
        Upload::new(bytes, Some("photo.png".into()))
    }

    /// The service verifying a global shortlist of 2, with or without the word index.
    async fn service(&self, words: Option<Option<Box<dyn WordIndex>>>) -> Service {
        let catalogue = Catalogue::new(
            SqliteStore::open(&self.db).await.unwrap(),
            AnnIndex::new(DIM, IndexParams::default(), 100),
            EmbedQueue::start(self.extractor.clone(), 64, 8),
            Projection::random_orthogonal(DIM, DIM, 0),
            "stand-in".into(),
            Limits::default(),
            VerdictRule::default(),
        )
        .with_verifier(
            Arc::new(HomographyVerifier::default()),
            TwoStage {
                shortlist: 2,
                centre_view: None,
                early_stop: None,
            },
        );
        match words {
            Some(loaded) => catalogue.with_word_index(Arc::new(fitter()), loaded),
            None => catalogue,
        }
    }
}

fn named(verdict: &Verdict) -> Option<ClassId> {
    match verdict {
        Verdict::Match { class_id, .. } => Some(*class_id),
        Verdict::Unknown { .. } => None,
    }
}

/// A photo whose global descriptor is the exact opposite of its cover's (ranked last of
/// 24, far beyond a global shortlist of 2) is named through the word shortlist; without
/// it the same photo is `unknown`. The word index follows deletes and re-adds at once,
/// and a restart from a stale dump catches up from the change log.
#[tokio::test]
async fn a_cover_the_global_descriptor_ranks_last_is_found_through_its_words() {
    let fx = Fixture::new();
    let covers: Vec<RgbImage> = (0..COVERS as u64).map(cover).collect();
    let cat = fx.service(Some(None)).await;
    let mut classes = Vec::new();
    for (i, c) in covers.iter().enumerate() {
        let up = fx.upload(c, direction(i as u64));
        let (class, _) = cat
            .add_class(&format!("cover {i}"), &Metadata::new(), &[up])
            .await
            .unwrap();
        classes.push(class.id);
    }
    let built = cat.rebuild_words_if_due().await.unwrap().expect("fitted");
    assert_eq!(built.exemplars, COVERS);

    let target = 5;
    let mut opposite = direction(target as u64);
    opposite.iter_mut().for_each(|x| *x = -*x);
    let query = fx.upload(&photo_of(&covers[target]), opposite);
    let answer = cat.search(&query, 3, &Metadata::new()).await.unwrap();
    assert_eq!(named(&answer.verdict), Some(classes[target]), "{answer:?}");
    // Its reported score is still the global similarity: the worst there is.
    assert!(answer.neighbours[0].score < -0.9);

    // The same catalogue and photo without the word index: the cover is never verified.
    let global_only = fx.service(None).await;
    global_only.catch_up(0).await.unwrap();
    let answer = global_only
        .search(&query, 3, &Metadata::new())
        .await
        .unwrap();
    assert_eq!(
        named(&answer.verdict),
        None,
        "global shortlist alone: unknown"
    );
    drop(global_only);

    // Deleted: gone from the word shortlist at once; added again: back at once.
    cat.delete_class(classes[target]).await.unwrap();
    let answer = cat.search(&query, 3, &Metadata::new()).await.unwrap();
    assert_eq!(named(&answer.verdict), None);
    let up = fx.upload(&covers[target], direction(100));
    let (again, _) = cat
        .add_class("cover again", &Metadata::new(), &[up])
        .await
        .unwrap();
    let answer = cat.search(&query, 3, &Metadata::new()).await.unwrap();
    assert_eq!(named(&answer.verdict), Some(again.id));

    // A dump, then changes it does not hold, then the process dies (no save).
    let (dump, watermark) = cat
        .checkpoint(|_, head, _, words| {
            let mut bytes = Vec::new();
            words.expect("a word index").save(&mut bytes).unwrap();
            (bytes, head)
        })
        .await
        .unwrap();
    let other = 9;
    cat.delete_class(again.id).await.unwrap();
    let up = fx.upload(&covers[target], direction(200));
    let (third, _) = cat
        .add_class("cover a third time", &Metadata::new(), &[up])
        .await
        .unwrap();
    cat.delete_class(classes[other]).await.unwrap();
    drop(cat);

    let loaded = VisualWords::load(&dump).unwrap();
    assert_eq!(loaded.len(), COVERS, "the stale dump");
    let cat = fx.service(Some(Some(Box::new(loaded)))).await;
    cat.catch_up(watermark).await.unwrap();
    assert_eq!(cat.read_words().as_ref().unwrap().len(), COVERS - 1);
    let answer = cat.search(&query, 3, &Metadata::new()).await.unwrap();
    assert_eq!(
        named(&answer.verdict),
        Some(third.id),
        "caught up: the latest add"
    );
    let mut opposite = direction(other as u64);
    opposite.iter_mut().for_each(|x| *x = -*x);
    let gone = fx.upload(&photo_of(&covers[other]), opposite);
    let answer = cat.search(&gone, 3, &Metadata::new()).await.unwrap();
    assert_eq!(named(&answer.verdict), None, "caught up: the delete");
}
