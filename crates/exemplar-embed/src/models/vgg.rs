//! VGG-16/19 (Simonyan & Zisserman) without batch-norm, torchvision tensor names
//! (`features.{i}`, `classifier.{0,3,6}`) or timm's (`pre_logits.fc{1,2}`, `head.fc`).
//! The feature map is the last convolution's output (after ReLU, before the last pool).

use super::layers::{Activation, Conv, FeatureMaps, Padding, TensorSource};
use super::{Backbone, Engine, InputBatch};
use crate::error::{EmbedError, Result};
use candle_core::Tensor;

enum Layer {
    Conv(Conv),
    Pool,
}

pub struct Vgg {
    layers: Vec<Layer>,
    /// Three (weight (out, in), bias) linear layers.
    classifier: Option<Vec<(Tensor, Tensor)>>,
}

impl Vgg {
    pub fn load(src: &dyn TensorSource, depth: u32) -> Result<Self> {
        let per_stage: [usize; 5] = match depth {
            16 => [2, 2, 3, 3, 3],
            19 => [2, 2, 4, 4, 4],
            _ => {
                return Err(EmbedError::UnknownSetting {
                    what: "vgg depth",
                    value: depth.to_string(),
                    expected: "16, 19".into(),
                })
            }
        };
        let mut layers = Vec::new();
        // torchvision numbers every module of `features`: conv, relu, ..., pool.
        let mut index = 0;
        let mut inp = 3;
        for (stage, &n) in per_stage.iter().enumerate() {
            let width = [64, 128, 256, 512, 512][stage];
            for _ in 0..n {
                let w = src.tensor(&format!("features.{index}.weight"), &[width, inp, 3, 3])?;
                let b = src.tensor(&format!("features.{index}.bias"), &[width])?;
                layers.push(Layer::Conv(Conv::new(
                    w,
                    b,
                    1,
                    Padding::Symmetric(1),
                    Activation::Relu,
                )?));
                index += 2;
                inp = width;
            }
            layers.push(Layer::Pool);
            index += 1;
        }
        let classifier = if src.has("classifier.0.weight") {
            Some(vec![
                (
                    src.tensor("classifier.0.weight", &[4096, 512 * 7 * 7])?,
                    src.tensor("classifier.0.bias", &[4096])?,
                ),
                (
                    src.tensor("classifier.3.weight", &[4096, 4096])?,
                    src.tensor("classifier.3.bias", &[4096])?,
                ),
                (
                    src.tensor("classifier.6.weight", &[1000, 4096])?,
                    src.tensor("classifier.6.bias", &[1000])?,
                ),
            ])
        } else if src.has("pre_logits.fc1.weight") {
            // timm stores the first two layers as 7x7 and 1x1 convolutions.
            Some(vec![
                (
                    src.tensor("pre_logits.fc1.weight", &[4096, 512, 7, 7])?
                        .reshape((4096, 512 * 7 * 7))?,
                    src.tensor("pre_logits.fc1.bias", &[4096])?,
                ),
                (
                    src.tensor("pre_logits.fc2.weight", &[4096, 4096, 1, 1])?
                        .reshape((4096, 4096))?,
                    src.tensor("pre_logits.fc2.bias", &[4096])?,
                ),
                (
                    src.tensor("head.fc.weight", &[1000, 4096])?,
                    src.tensor("head.fc.bias", &[1000])?,
                ),
            ])
        } else {
            None
        };
        Ok(Self { layers, classifier })
    }
}

impl Vgg {
    /// Every layer but the last pool (the classifier's input is pooled once more).
    fn forward<M: FeatureMaps>(&self, input: &M) -> Result<M> {
        let (last, layers) = self.layers.split_last().expect("VGG has layers");
        debug_assert!(matches!(last, Layer::Pool));
        let step = |x: &M, layer: &Layer| match layer {
            Layer::Conv(c) => x.conv(c, None),
            Layer::Pool => x.max_pool(2, 2, 0),
        };
        let mut x = step(input, &layers[0])?;
        for layer in &layers[1..] {
            x = step(&x, layer)?;
        }
        Ok(x)
    }
}

impl Backbone for Vgg {
    fn feature_map(&self, input: &InputBatch, engine: Engine) -> Result<Tensor> {
        engine.run(
            input,
            super::Passes::PerThread,
            |x| self.forward(x),
            |x| self.forward(x),
        )
    }

    fn classifier_rows(&self) -> Option<&Tensor> {
        // VGG's classifier reads the whole 7x7 map through two hidden layers: there is no
        // linear map on the pooled feature to borrow.
        None
    }

    fn logits(&self, feature_map: &Tensor) -> Result<Option<Tensor>> {
        let Some(layers) = &self.classifier else {
            return Ok(None);
        };
        let pooled = feature_map.max_pool2d_with_stride(2, 2)?;
        let (batch, c, h, w) = pooled.dims4()?;
        if (h, w) != (7, 7) {
            // The classifier was trained on 7x7 maps, i.e. 224x224 inputs.
            let _ = c;
            return Err(EmbedError::Candle(candle_core::Error::Msg(format!(
                "VGG's classifier needs a 224x224 input (got a {h}x{w} map)"
            ))));
        }
        let mut x = pooled.reshape((batch, c * h * w))?;
        for (i, (w, b)) in layers.iter().enumerate() {
            x = x.matmul(&w.t()?)?.broadcast_add(b)?;
            if i < 2 {
                x = x.relu()?;
            }
        }
        Ok(Some(x))
    }
}
