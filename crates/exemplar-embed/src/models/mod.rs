//! CNN backbones truncated before their classifier, each keeping its ImageNet head
//! (when the weights have one) to prove that weights and preprocessing are right.

mod efficientnet_lite;
mod layers;
mod resnet;
mod vgg;

use crate::error::{EmbedError, Result};
use crate::weights::StateDict;
use candle_core::{Device, Tensor};
use exemplar_nhwc::team;
use exemplar_nhwc::FeatureMap;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

pub use layers::{FeatureMaps, TensorSource};

/// The supported architectures, named as users write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    EfficientNetLite0,
    ResNet(u32),
    Vgg(u32),
}

pub const ARCHITECTURE_NAMES: &str =
    "efficientnet-lite0, resnet18, resnet34, resnet50, resnet101, resnet152, vgg16, vgg19";

impl std::str::FromStr for Architecture {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self> {
        let arch = match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "efficientnetlite0" | "lite0" => Architecture::EfficientNetLite0,
            "resnet18" => Architecture::ResNet(18),
            "resnet34" => Architecture::ResNet(34),
            "resnet50" => Architecture::ResNet(50),
            "resnet101" => Architecture::ResNet(101),
            "resnet152" => Architecture::ResNet(152),
            "vgg16" => Architecture::Vgg(16),
            "vgg19" => Architecture::Vgg(19),
            _ => {
                return Err(EmbedError::UnknownSetting {
                    what: "model",
                    value: s.to_string(),
                    expected: ARCHITECTURE_NAMES.into(),
                })
            }
        };
        Ok(arch)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Architecture::EfficientNetLite0 => write!(f, "efficientnet-lite0"),
            Architecture::ResNet(d) => write!(f, "resnet{d}"),
            Architecture::Vgg(d) => write!(f, "vgg{d}"),
        }
    }
}

impl Architecture {
    /// Channels of the last feature map, i.e. the raw feature's dimension.
    pub fn feature_dim(&self) -> usize {
        match self {
            Architecture::EfficientNetLite0 => 1280,
            Architecture::ResNet(18 | 34) => 512,
            Architecture::ResNet(_) => 2048,
            Architecture::Vgg(_) => 512,
        }
    }

    /// Hugging Face repository with torchvision's ImageNet weights in timm naming.
    pub fn default_hub_repo(&self) -> Option<String> {
        match self {
            Architecture::EfficientNetLite0 => None,
            Architecture::ResNet(d) => Some(format!("timm/resnet{d}.tv_in1k")),
            Architecture::Vgg(d) => Some(format!("timm/vgg{d}.tv_in1k")),
        }
    }

    /// Builds the network from `weights`, checking every tensor's name and shape.
    pub fn build(&self, weights: &dyn TensorSource) -> Result<Box<dyn Backbone>> {
        Ok(match *self {
            Architecture::EfficientNetLite0 => {
                Box::new(efficientnet_lite::EfficientNetLite0::load(weights)?)
            }
            Architecture::ResNet(depth) => Box::new(resnet::ResNet::load(weights, depth)?),
            Architecture::Vgg(depth) => Box::new(vgg::Vgg::load(weights, depth)?),
        })
    }
}

/// Which implementation runs a backbone's layers (the same weights and network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// The channels-last kernels of [`crate::nhwc`]: the fast path.
    #[default]
    Nhwc,
    /// Candle's own NCHW operations: the reference the fast path is checked against,
    /// and the "before" of `exemplar bench`.
    Candle,
}

pub const ENGINE_NAMES: &str = "nhwc, candle";

/// How the images of a batch share the threads (measured at batch 8 on 2 threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passes {
    /// One pass per image, side by side: a single image's maps stay in cache where a
    /// batch's would not (Lite0: 28 % slower as two passes of 4).
    PerImage,
    /// One pass per thread over its share of the batch: each layer's weights are read
    /// once per share, not once per image (ResNet-18 12-15 % faster, ResNet-50 3 %, than
    /// one pass per image; the Winograd weights are 4x the direct ones).
    PerThread,
}

impl Engine {
    /// Runs a network written once against [`FeatureMaps`] on this engine.
    pub(crate) fn run(
        self,
        input: &InputBatch,
        passes: Passes,
        fast: impl Fn(&FeatureMap) -> Result<FeatureMap> + Sync,
        reference: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self {
            // The whole pass runs on pool threads: each layer's parallel loop then starts
            // from a worker, which takes part in it, instead of an outside thread that
            // parks until the pool is done (two context switches per layer, measured at
            // ~20 % of a batch-1 Lite0 pass). One pass (batch 1) is shared by a team of
            // the pool's threads that wait for its layers without sleeping (`team`); the
            // images of a batch go through the network side by side (see [`Passes`]).
            Engine::Nhwc => {
                let (h, w) = (input.height, input.width);
                let per_pass = match passes {
                    Passes::PerImage => 1,
                    Passes::PerThread => input.images.len().div_ceil(team::threads()),
                };
                let passes: Vec<&[&[f32]]> = input.images.chunks(per_pass.max(1)).collect();
                if let [images] = passes[..] {
                    // One pass (batch 1): no copies into and out of per-pass batches.
                    let map =
                        team::run_pass(|| fast(&FeatureMap::from_chw_images(images, 3, h, w)))?;
                    return Ok(map.into_nchw_view()?);
                }
                let maps = rayon::scope(|_| {
                    passes
                        .par_iter()
                        .map(|images| fast(&FeatureMap::from_chw_images(images, 3, h, w)))
                        .collect::<Result<Vec<_>>>()
                })?;
                Ok(FeatureMap::concat_images(&maps).into_nchw_view()?)
            }
            Engine::Candle => reference(&input.to_tensor()?),
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nhwc" => Ok(Engine::Nhwc),
            "candle" => Ok(Engine::Candle),
            _ => Err(EmbedError::UnknownSetting {
                what: "engine",
                value: s.to_string(),
                expected: ENGINE_NAMES.into(),
            }),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Nhwc => "nhwc",
            Engine::Candle => "candle",
        })
    }
}

/// A batch of normalised RGB images of one size, `3 x height x width` values each
/// (CHW), borrowed where they were prepared: the fast engine reads them straight into
/// its channels-last map, the reference one into a Candle tensor.
pub struct InputBatch<'a> {
    images: Vec<&'a [f32]>,
    height: usize,
    width: usize,
}

impl<'a> InputBatch<'a> {
    /// # Errors
    /// When there is no image or one does not hold `3 x height x width` values.
    pub fn new(images: Vec<&'a [f32]>, height: usize, width: usize) -> Result<Self> {
        if images.is_empty() {
            return Err(EmbedError::Input("no image in the batch".into()));
        }
        if let Some(i) = images.iter().position(|im| im.len() != 3 * height * width) {
            return Err(EmbedError::Input(format!(
                "image {i} holds {} values, not 3 x {height} x {width}",
                images[i].len()
            )));
        }
        Ok(Self {
            images,
            height,
            width,
        })
    }

    /// Candle's `(batch, 3, height, width)`.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let data: Vec<f32> = self.images.concat();
        let shape = (self.images.len(), 3, self.height, self.width);
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

/// A truncated CNN.
pub trait Backbone: Send + Sync {
    /// The last feature map, `(batch, feature_dim, h, w)`, for a normalised
    /// `(batch, 3, H, W)` input, computed by `engine` (the fast engine's is a view of
    /// channels-last values: not contiguous).
    fn feature_map(&self, input: &InputBatch, engine: Engine) -> Result<Tensor>;

    /// ImageNet logits `(batch, 1000)` from a feature map, when the weights carried the
    /// classifier.
    fn logits(&self, feature_map: &Tensor) -> Result<Option<Tensor>>;

    /// The rows of a linear ImageNet classifier acting directly on the pooled feature
    /// (`1000 x feature_dim`), when there is one: a data-free prior of which feature
    /// directions tell objects apart.
    fn classifier_rows(&self) -> Option<&Tensor>;
}

impl TensorSource for StateDict {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Random weights with exactly the names and shapes an architecture asks for: used to
/// test the ResNet/VGG code paths where no real weights can be downloaded, and to write
/// weight files that look like torchvision's.
pub struct SyntheticWeights {
    seed: u64,
    with_classifier: bool,
    made: Mutex<BTreeMap<String, Tensor>>,
}

impl SyntheticWeights {
    /// `with_classifier`: also generate the optional ImageNet head (VGG's is 120M values).
    pub fn new(seed: u64, with_classifier: bool) -> Self {
        Self {
            seed,
            with_classifier,
            made: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every tensor handed out so far (after `Architecture::build`, the whole state dict).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.made.lock().expect("not poisoned").clone()
    }
}

impl TensorSource for SyntheticWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut made = self.made.lock().expect("not poisoned");
        if let Some(t) = made.get(name) {
            return Ok(t.clone());
        }
        // Candle's CPU generator cannot be seeded: derive values from the name instead,
        // so the same architecture always gets the same weights.
        let mut state = name
            .bytes()
            .fold(self.seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
                (h ^ b as u64).wrapping_mul(0x1000_0000_01B3)
            });
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let count: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let values: Vec<f32> =
            if name.ends_with("running_var") || (shape.len() == 1 && name.ends_with("weight")) {
                (0..count).map(|_| 0.5 + uniform()).collect()
            } else if shape.len() == 1 {
                (0..count).map(|_| 0.2 * (uniform() - 0.5)).collect()
            } else {
                // Uniform with He variance keeps activations sane through 50+ layers.
                let bound = (6.0 / fan_in as f32).sqrt();
                (0..count)
                    .map(|_| bound * (2.0 * uniform() - 1.0))
                    .collect()
            };
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        made.insert(name.to_string(), t.clone());
        Ok(t)
    }
    /// Models ask `has` only for their optional classifier.
    fn has(&self, _name: &str) -> bool {
        self.with_classifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_batch_refuses_images_of_the_wrong_size() {
        let (a, b) = (vec![0f32; 3 * 4 * 5], vec![0f32; 3 * 4 * 4]);
        let batch = InputBatch::new(vec![&a, &a], 4, 5).unwrap();
        assert_eq!(batch.to_tensor().unwrap().dims(), &[2, 3, 4, 5]);
        let err = InputBatch::new(vec![&a, &b], 4, 5).err().unwrap();
        assert!(err.to_string().contains("image 1 holds 48 values"), "{err}");
        assert!(InputBatch::new(vec![], 4, 5).is_err());
    }
}
