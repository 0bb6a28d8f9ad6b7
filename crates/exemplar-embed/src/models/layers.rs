//! Building blocks: convolutions with batch-norm folded in at load time.

use crate::error::Result;
use crate::ops::DepthwiseConv2d;
use candle_core::{Device, Tensor, D};
use exemplar_nhwc::team;
use exemplar_nhwc::{self as nhwc, Pads};
use std::sync::OnceLock;

/// Where a model reads its tensors from: a real state dict, or generated weights.
pub trait TensorSource {
    /// The tensor `name`, which must have `shape` (the error names the tensor).
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn has(&self, name: &str) -> bool;
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch).
    Symmetric(usize),
    /// TensorFlow "SAME": output = ceil(input / stride), extra zero at bottom/right.
    TfSame,
}

impl Padding {
    /// The padding of an `h x w` input, per side.
    pub fn pads(&self, h: usize, w: usize, kernel: usize, stride: usize) -> Pads {
        let (top, bottom) = self.amounts(h, kernel, stride);
        let (left, right) = self.amounts(w, kernel, stride);
        Pads {
            top,
            left,
            bottom,
            right,
        }
    }

    /// (before, after) padding of one spatial dimension of size `input`.
    pub fn amounts(&self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match *self {
            Padding::Symmetric(p) => (p, p),
            Padding::TfSame => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
                (total / 2, total - total / 2)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
}

impl Activation {
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::None => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Relu6 => x.clamp(0f32, 6f32)?,
        })
    }

    pub(crate) fn bounds(&self) -> Option<(f32, f32)> {
        match self {
            Activation::None => None,
            Activation::Relu => Some((0.0, f32::INFINITY)),
            Activation::Relu6 => Some((0.0, 6.0)),
        }
    }
}

/// Convolution weights `(out, in/groups, k, k)` and bias `(out)` with the following
/// batch-norm folded in: `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`.
/// Inference then costs one convolution instead of a convolution and four broadcasts.
pub fn fold_batch_norm(
    src: &dyn TensorSource,
    conv: &str,
    bn: &str,
    shape: &[usize],
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let out = shape[0];
    let weight = src.tensor(&format!("{conv}.weight"), shape)?;
    let gamma = src.tensor(&format!("{bn}.weight"), &[out])?;
    let beta = src.tensor(&format!("{bn}.bias"), &[out])?;
    let mean = src.tensor(&format!("{bn}.running_mean"), &[out])?;
    let var = src.tensor(&format!("{bn}.running_var"), &[out])?;
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let weight = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
    let bias = (beta - (mean * &scale)?)?;
    Ok((weight, bias))
}

/// A dense (groups = 1) convolution with bias and fused activation.
#[derive(Debug)]
pub struct Conv {
    /// The `(k*k*in) x out` matrix of the NHWC engine (see [`nhwc::conv2d`]), packed.
    packed: nhwc::PackedMatrix,
    bias: Vec<f32>,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
    /// Candle's `(out, in, k, k)` weight and `(1, out, 1, 1)` bias, made on first use
    /// by the reference engine only.
    candle: OnceLock<(Tensor, Tensor)>,
    /// The Winograd-domain weights (4x the memory of the direct ones), made on first
    /// use by a 3x3 stride-1 layer whose maps are large enough for them to pay.
    winograd: OnceLock<nhwc::WinogradWeights>,
}

impl Conv {
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Result<Self> {
        let (out, in_channels, kernel, _) = weight.dims4()?;
        let matrix: Vec<f32> = weight.permute((2, 3, 1, 0))?.flatten_all()?.to_vec1()?;
        Ok(Self {
            packed: nhwc::PackedMatrix::pack(&matrix, kernel * kernel * in_channels, out),
            bias: bias.to_vec1()?,
            in_channels,
            kernel,
            stride,
            padding,
            activation,
            candle: OnceLock::new(),
            winograd: OnceLock::new(),
        })
    }

    /// Loads `{conv}.weight` with `{bn}` folded in.
    #[allow(clippy::too_many_arguments)] // mirrors the layer's own hyper-parameters
    pub fn with_bn(
        src: &dyn TensorSource,
        conv: &str,
        bn: &str,
        shape: [usize; 4],
        eps: f64,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Result<Self> {
        let (w, b) = fold_batch_norm(src, conv, bn, &shape, eps)?;
        Self::new(w, b, stride, padding, activation)
    }

    fn candle_weights(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(w) = self.candle.get() {
            return Ok(w);
        }
        let (k, out) = (self.kernel, self.bias.len());
        let shape = (k, k, self.in_channels, out);
        let weight = Tensor::from_vec(self.packed.unpack(), shape, &Device::Cpu)?
            .permute((3, 2, 0, 1))?
            .contiguous()?;
        let bias = Tensor::from_slice(&self.bias, (1, out, 1, 1), &Device::Cpu)?;
        Ok(self.candle.get_or_init(|| (weight, bias)))
    }

    fn pads(&self, h: usize, w: usize) -> Pads {
        self.padding.pads(h, w, self.kernel, self.stride)
    }

    /// This layer as an inverted bottleneck's expansion (a 1x1 convolution).
    fn expansion(&self) -> nhwc::Expansion<'_> {
        nhwc::Expansion {
            weight: &self.packed,
            bias: &self.bias,
            clamp: self.activation.bounds(),
        }
    }

    /// This layer as an inverted bottleneck's projection (a 1x1 convolution).
    fn projection(&self, residual: bool) -> nhwc::Projection<'_> {
        nhwc::Projection {
            weight: &self.packed,
            bias: &self.bias,
            clamp: self.activation.bounds(),
            residual,
        }
    }
}

/// A depthwise convolution with batch-norm folded and activation fused.
#[derive(Debug, Clone)]
pub struct Depthwise {
    /// `(k, k, channels)` for the NHWC engine.
    tap_major: Vec<f32>,
    /// `(channels, k, k)` for the reference engine's NCHW kernel.
    channel_major: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
    /// The channels cut into shares for the threads of a pass's team, made on first
    /// use (see [`nhwc::inverted_bottleneck_by_channels`]).
    shares: OnceLock<nhwc::ChannelShares>,
}

impl Depthwise {
    #[allow(clippy::too_many_arguments)]
    pub fn with_bn(
        src: &dyn TensorSource,
        conv: &str,
        bn: &str,
        channels: usize,
        kernel: usize,
        eps: f64,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Result<Self> {
        let (w, b) = fold_batch_norm(src, conv, bn, &[channels, 1, kernel, kernel], eps)?;
        let w = w.reshape((channels, kernel, kernel))?;
        Ok(Self {
            tap_major: w.permute((1, 2, 0))?.flatten_all()?.to_vec1()?,
            channel_major: w.flatten_all()?.to_vec1()?,
            bias: b.to_vec1()?,
            kernel,
            stride,
            padding,
            activation,
            shares: OnceLock::new(),
        })
    }

    fn pads(&self, h: usize, w: usize) -> Pads {
        self.padding.pads(h, w, self.kernel, self.stride)
    }

    /// This layer for the NHWC engine's fused kernels, with `pads` for the map's size.
    fn spec(&self, pads: Pads) -> nhwc::DepthwiseSpec<'_> {
        nhwc::DepthwiseSpec {
            weight: &self.tap_major,
            bias: &self.bias,
            kernel: self.kernel,
            stride: self.stride,
            pads,
            clamp: self.activation.bounds(),
        }
    }
}

/// Expanded maps of at least this many floats (1 MiB: Lite0's blocks at 112x112 and
/// 56x56 pixels) are expanded band by band inside the depthwise layer
/// ([`nhwc::expand_depthwise`]); depthwise maps of that size are projected band by band
/// too ([`nhwc::inverted_bottleneck`]).
const EXPANDED_FLOATS_TO_FUSE: usize = 256 * 1024;

/// The feature maps of one inference engine: what the backbones are written against,
/// so that one description of each network runs on both engines.
///
/// - [`nhwc::FeatureMap`]: the fast engine (channels last, own kernels);
/// - [`Tensor`] (NCHW): the reference, Candle's own operations (plus the NCHW depthwise
///   kernel of [`crate::ops`], which Candle lacks), kept to check the fast engine.
pub trait FeatureMaps: Sized {
    /// `act(conv(self) + bias [+ residual])`.
    fn conv(&self, layer: &Conv, residual: Option<&Self>) -> Result<Self>;
    fn depthwise(&self, layer: &Depthwise) -> Result<Self>;
    /// `depthwise(conv(self, expand))`: an inverted bottleneck's first two layers.
    fn expand_depthwise(&self, expand: &Conv, depthwise: &Depthwise) -> Result<Self> {
        self.conv(expand, None)?.depthwise(depthwise)
    }
    /// A whole inverted bottleneck: `project(depthwise(expand(self))) [+ self]`.
    fn inverted_bottleneck(
        &self,
        expand: Option<&Conv>,
        depthwise: &Depthwise,
        project: &Conv,
        residual: bool,
    ) -> Result<Self> {
        layer_by_layer(self, expand, depthwise, project, residual)
    }
    /// Max over `kernel x kernel` windows, `pad` on every side (never winning).
    fn max_pool(&self, kernel: usize, stride: usize, pad: usize) -> Result<Self>;
    /// `layers` over each image of the batch on its own, the results one batch again
    /// (the same values as `layers(self)`): where a batch's maps would not stay in cache.
    fn image_by_image(&self, layers: impl Fn(&Self) -> Result<Self>) -> Result<Self>;
}

/// An inverted bottleneck one layer after another (the expansion fused into the
/// depthwise layer where the engine does that).
fn layer_by_layer<M: FeatureMaps>(
    x: &M,
    expand: Option<&Conv>,
    depthwise: &Depthwise,
    project: &Conv,
    residual: bool,
) -> Result<M> {
    let hidden = match expand {
        Some(e) => x.expand_depthwise(e, depthwise)?,
        None => x.depthwise(depthwise)?,
    };
    hidden.conv(project, residual.then_some(x))
}

impl FeatureMaps for nhwc::FeatureMap {
    fn image_by_image(&self, layers: impl Fn(&Self) -> Result<Self>) -> Result<Self> {
        if self.batch <= 1 {
            return layers(self);
        }
        let maps = self
            .split_images()
            .iter()
            .map(layers)
            .collect::<Result<Vec<_>>>()?;
        Ok(nhwc::FeatureMap::concat_images(&maps))
    }

    fn conv(&self, layer: &Conv, residual: Option<&Self>) -> Result<Self> {
        let spec = nhwc::ConvSpec {
            kernel: layer.kernel,
            stride: layer.stride,
            pads: layer.pads(self.height, self.width),
            clamp: layer.activation.bounds(),
        };
        let (oh, ow) = spec.pads.output_size(self.height, self.width, 3, 1);
        // Below 16 input channels the transformed products are too shallow to run near
        // the core's peak (a stem's 3 channels).
        if (layer.kernel, layer.stride) == (3, 1)
            && layer.in_channels >= 16
            && nhwc::winograd_worth_it(oh, ow)
        {
            let weights = layer
                .winograd
                .get_or_init(|| nhwc::WinogradWeights::new(&layer.packed));
            return Ok(nhwc::winograd_conv3x3(
                self,
                weights,
                &layer.bias,
                spec.pads,
                spec.clamp,
                residual,
            ));
        }
        Ok(nhwc::conv2d(
            self,
            &layer.packed,
            &layer.bias,
            &spec,
            residual,
        ))
    }

    fn expand_depthwise(&self, expand: &Conv, depthwise: &Depthwise) -> Result<Self> {
        let hidden = expand.bias.len();
        let pointwise = (expand.kernel, expand.stride) == (1, 1);
        // Smaller expanded maps stay in cache between the two layers anyway.
        if !pointwise || self.pixels() * hidden < EXPANDED_FLOATS_TO_FUSE {
            return self.conv(expand, None)?.depthwise(depthwise);
        }
        let spec = depthwise.spec(depthwise.pads(self.height, self.width));
        Ok(nhwc::expand_depthwise(self, &expand.expansion(), &spec))
    }

    fn inverted_bottleneck(
        &self,
        expand: Option<&Conv>,
        depthwise: &Depthwise,
        project: &Conv,
        residual: bool,
    ) -> Result<Self> {
        let pointwise = |c: &Conv| (c.kernel, c.stride) == (1, 1);
        let hidden = expand.map_or(self.channels, |e| e.bias.len());
        let pads = depthwise.pads(self.height, self.width);
        let (oh, ow) =
            pads.output_size(self.height, self.width, depthwise.kernel, depthwise.stride);
        let small = |pixels: usize| pixels * hidden < EXPANDED_FLOATS_TO_FUSE;
        // A block whose expanded and depthwise maps both stay in cache, in a pass whose
        // team waits for each layer, is shared among the team by hidden channels: three
        // layers in one job (see `nhwc::inverted_bottleneck_by_channels`).
        if let Some(e) = expand {
            if pointwise(e)
                && pointwise(project)
                && small(self.pixels())
                && small(self.batch * oh * ow)
                && team::leading()
                && team::threads() > 1
            {
                return Ok(by_channels(self, e, depthwise, project, residual));
            }
        }
        // Depthwise maps that stay in cache until the projection reads them are
        // projected as a layer of their own.
        if !pointwise(project) || !expand.is_none_or(pointwise) || small(self.batch * oh * ow) {
            return layer_by_layer(self, expand, depthwise, project, residual);
        }
        let expansion = expand.map(Conv::expansion);
        let spec = depthwise.spec(pads);
        let projection = project.projection(residual);
        Ok(nhwc::inverted_bottleneck(
            self,
            expansion.as_ref(),
            &spec,
            &projection,
        ))
    }

    fn depthwise(&self, layer: &Depthwise) -> Result<Self> {
        Ok(nhwc::depthwise_conv2d(
            self,
            &layer.tap_major,
            &layer.bias,
            (layer.kernel, layer.stride),
            layer.pads(self.height, self.width),
            layer.activation.bounds(),
        ))
    }

    fn max_pool(&self, kernel: usize, stride: usize, pad: usize) -> Result<Self> {
        let pads = Pads {
            top: pad,
            left: pad,
            bottom: pad,
            right: pad,
        };
        Ok(nhwc::max_pool2d(self, kernel, stride, pads))
    }
}

/// [`nhwc::inverted_bottleneck_by_channels`] with a share of the hidden channels for
/// each of the team's threads (made on first use, kept by the depthwise layer).
fn by_channels(
    x: &nhwc::FeatureMap,
    e: &Conv,
    d: &Depthwise,
    p: &Conv,
    residual: bool,
) -> nhwc::FeatureMap {
    let threads = team::threads();
    let make = || nhwc::ChannelShares::new(&e.packed, &e.bias, &d.tap_major, threads);
    let made;
    let shares = match d.shares.get_or_init(make) {
        // Another pool's thread count than the first call's (tests): made afresh.
        s if s.made_for() != threads => {
            made = make();
            &made
        }
        s => s,
    };
    let spec = d.spec(d.pads(x.height, x.width));
    let projection = p.projection(residual);
    nhwc::inverted_bottleneck_by_channels(x, &e.expansion(), &spec, &projection, shares)
}

impl FeatureMaps for Tensor {
    /// The whole batch at once: the reference has no cache to keep maps in.
    fn image_by_image(&self, layers: impl Fn(&Self) -> Result<Self>) -> Result<Self> {
        layers(self)
    }

    fn conv(&self, layer: &Conv, residual: Option<&Self>) -> Result<Self> {
        let (weight, bias) = layer.candle_weights()?;
        let (batch, _, h, w) = self.dims4()?;
        let y = if layer.kernel == 1 && layer.stride == 1 {
            // A 1x1 convolution is a matrix product per image; skipping im2col saves a
            // copy of the activations.
            let (out, inp, _, _) = weight.dims4()?;
            let w2 = weight.reshape((out, inp))?;
            let x3 = self.reshape((batch, inp, h * w))?;
            let per_image = (0..batch)
                .map(|i| w2.matmul(&x3.get(i)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&per_image, 0)?.reshape((batch, out, h, w))?
        } else {
            let p = layer.pads(h, w);
            if p.top == p.bottom && p.left == p.right && p.top == p.left {
                self.conv2d(weight, p.top, layer.stride, 1, 1)?
            } else {
                let padded = self
                    .pad_with_zeros(D::Minus2, p.top, p.bottom)?
                    .pad_with_zeros(D::Minus1, p.left, p.right)?;
                padded.conv2d(weight, 0, layer.stride, 1, 1)?
            }
        };
        let y = y.broadcast_add(bias)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        layer.activation.apply(&y)
    }

    fn depthwise(&self, layer: &Depthwise) -> Result<Self> {
        let (_, _, h, w) = self.dims4()?;
        let p = layer.pads(h, w);
        let op = DepthwiseConv2d {
            weight: layer.channel_major.clone(),
            bias: layer.bias.clone(),
            kernel: layer.kernel,
            stride: layer.stride,
            pad_top: p.top,
            pad_left: p.left,
            pad_bottom: p.bottom,
            pad_right: p.right,
            clamp: layer.activation.bounds(),
        };
        Ok(op.forward(&self.contiguous()?)?)
    }

    fn max_pool(&self, kernel: usize, stride: usize, pad: usize) -> Result<Self> {
        // Edge-replicated padding never wins a window the edge pixel is already in.
        let x = if pad > 0 {
            self.pad_with_same(D::Minus2, pad, pad)?
                .pad_with_same(D::Minus1, pad, pad)?
        } else {
            self.clone()
        };
        Ok(x.max_pool2d_with_stride(kernel, stride)?)
    }
}

/// An ImageNet head on a feature map: spatial mean, then `x W^T + b`.
pub fn average_pool_linear(feature_map: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let pooled = feature_map.flatten_from(2)?.mean(2)?;
    Ok(pooled.matmul(&weight.t()?)?.broadcast_add(bias)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        // Stride 2 on an even size pads only after; 5x5 pads 1 before and 2 after.
        assert_eq!(Padding::TfSame.amounts(224, 3, 2), (0, 1));
        assert_eq!(Padding::TfSame.amounts(112, 5, 2), (1, 2));
        assert_eq!(Padding::TfSame.amounts(225, 3, 2), (1, 1));
        assert_eq!(Padding::TfSame.amounts(14, 3, 1), (1, 1));
        assert_eq!(Padding::TfSame.amounts(7, 1, 1), (0, 0));
    }
}
