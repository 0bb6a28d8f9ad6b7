//! EfficientNet-Lite0 (Tan & Le; TensorFlow's Lite variant), with the tensor names of the
//! `efficientnet_lite_pytorch` package: no squeeze-excitation, ReLU6, TensorFlow "SAME"
//! padding, batch-norm eps 1e-3.

use super::layers::{
    average_pool_linear, Activation, Conv, Depthwise, FeatureMaps, Padding, TensorSource,
};
use super::{Backbone, Engine, InputBatch};
use crate::error::Result;
use candle_core::Tensor;

const BN_EPS: f64 = 1e-3;
const ACT: Activation = Activation::Relu6;

/// (repeats, kernel, first stride, expansion, input channels, output channels).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];
const STEM: usize = 32;
const HEAD: usize = 1280;
const CLASSES: usize = 1000;

/// Mobile inverted bottleneck.
struct MbConv {
    expand: Option<Conv>,
    depthwise: Depthwise,
    project: Conv,
    residual: bool,
}

impl MbConv {
    fn forward<M: FeatureMaps>(&self, x: &M) -> Result<M> {
        x.inverted_bottleneck(
            self.expand.as_ref(),
            &self.depthwise,
            &self.project,
            self.residual,
        )
    }
}

pub struct EfficientNetLite0 {
    stem: Conv,
    blocks: Vec<MbConv>,
    head: Conv,
    classifier: Option<(Tensor, Tensor)>,
}

impl EfficientNetLite0 {
    pub fn load(src: &dyn TensorSource) -> Result<Self> {
        let stem = Conv::with_bn(
            src,
            "_conv_stem",
            "_bn0",
            [STEM, 3, 3, 3],
            BN_EPS,
            2,
            Padding::TfSame,
            ACT,
        )?;
        let mut blocks = Vec::new();
        for (repeats, k, first_stride, expand, c_in, c_out) in STAGES {
            for r in 0..repeats {
                let i = blocks.len();
                let (inp, stride) = if r == 0 {
                    (c_in, first_stride)
                } else {
                    (c_out, 1)
                };
                let hidden = inp * expand;
                let p = format!("_blocks.{i}");
                let expand_conv = (expand != 1)
                    .then(|| {
                        Conv::with_bn(
                            src,
                            &format!("{p}._expand_conv"),
                            &format!("{p}._bn0"),
                            [hidden, inp, 1, 1],
                            BN_EPS,
                            1,
                            Padding::TfSame,
                            ACT,
                        )
                    })
                    .transpose()?;
                let depthwise = Depthwise::with_bn(
                    src,
                    &format!("{p}._depthwise_conv"),
                    &format!("{p}._bn1"),
                    hidden,
                    k,
                    BN_EPS,
                    stride,
                    Padding::TfSame,
                    ACT,
                )?;
                let project = Conv::with_bn(
                    src,
                    &format!("{p}._project_conv"),
                    &format!("{p}._bn2"),
                    [c_out, hidden, 1, 1],
                    BN_EPS,
                    1,
                    Padding::TfSame,
                    Activation::None,
                )?;
                blocks.push(MbConv {
                    expand: expand_conv,
                    depthwise,
                    project,
                    residual: stride == 1 && inp == c_out,
                });
            }
        }
        let head = Conv::with_bn(
            src,
            "_conv_head",
            "_bn1",
            [HEAD, 320, 1, 1],
            BN_EPS,
            1,
            Padding::TfSame,
            ACT,
        )?;
        let classifier = if src.has("_fc.weight") {
            Some((
                src.tensor("_fc.weight", &[CLASSES, HEAD])?,
                src.tensor("_fc.bias", &[CLASSES])?,
            ))
        } else {
            None
        };
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl EfficientNetLite0 {
    fn forward<M: FeatureMaps>(&self, input: &M) -> Result<M> {
        let mut x = input.conv(&self.stem, None)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x.conv(&self.head, None)
    }
}

impl Backbone for EfficientNetLite0 {
    fn feature_map(&self, input: &InputBatch, engine: Engine) -> Result<Tensor> {
        engine.run(
            input,
            super::Passes::PerImage,
            |x| self.forward(x),
            |x| self.forward(x),
        )
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
