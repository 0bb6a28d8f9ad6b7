//! The model every command runs: the CNN with local features made from the same decoded
//! photo (the embedding crate knows nothing of them: they are plugged in here), timed for
//! `/metrics`.

use crate::cli::ModelArgs;
use anyhow::Context;
use exemplar_core::{
    CropBox, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor, ModelInfo,
};
use exemplar_embed::{CnnEmbedder, LocalFeatureExtractor};
use exemplar_verify::ExtractParams;
use image::RgbImage;
use std::sync::Arc;
use std::time::Instant;

/// Loads the configured network, with the configured local features plugged in.
pub fn load(model: &ModelArgs) -> anyhow::Result<CnnEmbedder> {
    let started = Instant::now();
    let embedder = CnnEmbedder::load(model.embedder_config(), &model.weight_sources())
        .with_context(|| format!("loading model {}", model.model))?;
    tracing::info!(model = %embedder.info().id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
    Ok(with_local_features(embedder, model))
}

/// `embedder`, also making the local features `model` asks for (none with
/// `--local-keypoints 0`).
pub fn with_local_features(embedder: CnnEmbedder, model: &ModelArgs) -> CnnEmbedder {
    match model.local_features() {
        Some(params) => embedder.with_local_features(Arc::new(LocalFeatures(params))),
        None => embedder,
    }
}

/// SIFT or ORB features in their stored form, made by `exemplar-verify`.
struct LocalFeatures(ExtractParams);

impl LocalFeatureExtractor for LocalFeatures {
    fn working_side(&self, purpose: LocalFor) -> u32 {
        match purpose {
            LocalFor::Query => self.0.query_max_side,
            _ => self.0.max_side,
        }
    }

    fn extract(&self, rgb: &RgbImage, part: CropBox, purpose: LocalFor) -> Vec<u8> {
        let view = image::imageops::crop_imm(rgb, part.x, part.y, part.width, part.height);
        let params = match purpose {
            LocalFor::Query => self.0.for_query(),
            _ => self.0.clone(),
        };
        exemplar_verify::extract_rgb(&*view, &params)
            .offset(part.x, part.y)
            .to_bytes()
    }
}

/// A feature extractor that times each forward pass for `/metrics` (a no-op outside
/// `serve`, where no recorder is installed).
pub struct TimedExtractor<E> {
    inner: Arc<E>,
}

impl<E> TimedExtractor<E> {
    pub fn new(inner: Arc<E>) -> Self {
        Self { inner }
    }
}

impl<E: FeatureExtractor> FeatureExtractor for TimedExtractor<E> {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn makes_local_features(&self) -> bool {
        self.inner.makes_local_features()
    }

    fn extract(&self, images: &[ImageInput<'_>]) -> Vec<Result<Extracted, ExtractError>> {
        let started = Instant::now();
        let out = self.inner.extract(images);
        metrics::histogram!("exemplar_embed_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("exemplar_embedded_images_total").increment(images.len() as u64);
        let failed = out.iter().filter(|r| r.is_err()).count();
        metrics::counter!("exemplar_rejected_images_total").increment(failed as u64);
        out
    }
}
