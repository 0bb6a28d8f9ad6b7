//! ResNet-18/34/50/101/152 (He et al.) with torchvision's tensor names, which timm's
//! ResNets share: `conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `downsample.{0,1}`, `fc`.

use super::layers::{average_pool_linear, Activation, Conv, FeatureMaps, Padding, TensorSource};
use super::{Backbone, Engine, InputBatch};
use crate::error::{EmbedError, Result};
use candle_core::Tensor;

const BN_EPS: f64 = 1e-5;
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

struct Block {
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

impl Block {
    /// The last convolution adds the shortcut before its ReLU.
    fn forward<M: FeatureMaps>(&self, x: &M) -> Result<M> {
        let (last, first) = self.convs.split_last().expect("blocks have convolutions");
        let mut h = None;
        for conv in first {
            h = Some(h.as_ref().unwrap_or(x).conv(conv, None)?);
        }
        let downsampled;
        let shortcut = match &self.downsample {
            Some(d) => {
                downsampled = x.conv(d, None)?;
                &downsampled
            }
            None => x,
        };
        h.as_ref().unwrap_or(x).conv(last, Some(shortcut))
    }
}

pub struct ResNet {
    stem: Conv,
    blocks: Vec<Block>,
    /// The blocks at stride 4 and the first at stride 8 (which reads their output).
    image_by_image_blocks: usize,
    classifier: Option<(Tensor, Tensor)>,
    feature_dim: usize,
}

impl ResNet {
    pub fn load(src: &dyn TensorSource, depth: u32) -> Result<Self> {
        let (bottleneck, repeats) = match depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            _ => {
                return Err(EmbedError::UnknownSetting {
                    what: "resnet depth",
                    value: depth.to_string(),
                    expected: "18, 34, 50, 101, 152".into(),
                })
            }
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let conv = |name: &str,
                    bn: &str,
                    shape: [usize; 4],
                    stride: usize,
                    pad: usize,
                    act: Activation| {
            Conv::with_bn(
                src,
                name,
                bn,
                shape,
                BN_EPS,
                stride,
                Padding::Symmetric(pad),
                act,
            )
        };
        let stem = conv("conv1", "bn1", [64, 3, 7, 7], 2, 3, Activation::Relu)?;
        let mut blocks = Vec::new();
        let mut inp = 64;
        for (stage, (&width, &n)) in WIDTHS.iter().zip(&repeats).enumerate() {
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let out = width * expansion;
                let p = format!("layer{}.{i}", stage + 1);
                let c = |k: usize| (format!("{p}.conv{k}"), format!("{p}.bn{k}"));
                let convs = if bottleneck {
                    // torchvision v1.5: the stride sits on the 3x3 convolution.
                    let (c1, b1) = c(1);
                    let (c2, b2) = c(2);
                    let (c3, b3) = c(3);
                    vec![
                        conv(&c1, &b1, [width, inp, 1, 1], 1, 0, Activation::Relu)?,
                        conv(&c2, &b2, [width, width, 3, 3], stride, 1, Activation::Relu)?,
                        conv(&c3, &b3, [out, width, 1, 1], 1, 0, Activation::Relu)?,
                    ]
                } else {
                    let (c1, b1) = c(1);
                    let (c2, b2) = c(2);
                    vec![
                        conv(&c1, &b1, [width, inp, 3, 3], stride, 1, Activation::Relu)?,
                        conv(&c2, &b2, [width, width, 3, 3], 1, 1, Activation::Relu)?,
                    ]
                };
                let downsample = (stride != 1 || inp != out)
                    .then(|| {
                        conv(
                            &format!("{p}.downsample.0"),
                            &format!("{p}.downsample.1"),
                            [out, inp, 1, 1],
                            stride,
                            0,
                            Activation::None,
                        )
                    })
                    .transpose()?;
                blocks.push(Block { convs, downsample });
                inp = out;
            }
        }
        let classifier = if src.has("fc.weight") {
            Some((
                src.tensor("fc.weight", &[1000, inp])?,
                src.tensor("fc.bias", &[1000])?,
            ))
        } else {
            None
        };
        Ok(Self {
            stem,
            image_by_image_blocks: repeats[0] + 1,
            blocks,
            classifier,
            feature_dim: inp,
        })
    }
}

impl ResNet {
    /// The stem and the blocks that read its stride-4 maps go image by image; the rest
    /// over the whole batch. A batch's early maps outgrow the cache a core can count on
    /// (ResNet-50's 56x56x256 maps: 12.8 MB at batch 4, and a block holds three of them)
    /// and these layers then wait on memory, while one image's stay in cache; their weights are
    /// small, so reading them once per image costs little. Deeper layers keep the batch:
    /// there the weights dominate and are read once for all its images.
    fn forward<M: FeatureMaps>(&self, input: &M) -> Result<M> {
        let (front, back) = self.blocks.split_at(self.image_by_image_blocks);
        let mut x = input.image_by_image(|image| {
            let mut x = image.conv(&self.stem, None)?.max_pool(3, 2, 1)?;
            for block in front {
                x = block.forward(&x)?;
            }
            Ok(x)
        })?;
        for block in back {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}

impl Backbone for ResNet {
    fn feature_map(&self, input: &InputBatch, engine: Engine) -> Result<Tensor> {
        let x = engine.run(
            input,
            super::Passes::PerThread,
            |x| self.forward(x),
            |x| self.forward(x),
        )?;
        debug_assert_eq!(x.dim(1)?, self.feature_dim);
        Ok(x)
    }

    fn classifier_rows(&self) -> Option<&Tensor> {
        self.classifier.as_ref().map(|(w, _)| w)
    }

    fn logits(&self, feature_map: &Tensor) -> Result<Option<Tensor>> {
        let Some((w, b)) = &self.classifier else {
            return Ok(None);
        };
        Ok(Some(average_pool_linear(feature_map, w, b)?))
    }
}
