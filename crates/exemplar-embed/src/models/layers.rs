//! Building blocks: convolutions with batch-norm folded in at load time.

use crate::error::Result;
use crate::ops::DepthwiseConv2d;
use candle_core::{Tensor, D};

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

    fn bounds(&self) -> Option<(f32, f32)> {
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
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    /// `(1, out, 1, 1)` for broadcasting.
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
}

impl Conv {
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Result<Self> {
        let (out, _, kernel, _) = weight.dims4()?;
        Ok(Self {
            bias: bias.reshape((1, out, 1, 1))?,
            weight,
            kernel,
            stride,
            padding,
            activation,
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, _, h, w) = x.dims4()?;
        let y = if self.kernel == 1 && self.stride == 1 {
            // A 1x1 convolution is a matrix product per image; skipping im2col saves a
            // copy of the activations.
            let (out, inp, _, _) = self.weight.dims4()?;
            let w2 = self.weight.reshape((out, inp))?;
            let x3 = x.reshape((batch, inp, h * w))?;
            let per_image = (0..batch)
                .map(|i| w2.matmul(&x3.get(i)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&per_image, 0)?.reshape((batch, out, h, w))?
        } else {
            let (top, bottom) = self.padding.amounts(h, self.kernel, self.stride);
            let (left, right) = self.padding.amounts(w, self.kernel, self.stride);
            if top == bottom && left == right && top == left {
                x.conv2d(&self.weight, top, self.stride, 1, 1)?
            } else {
                let padded = x.pad_with_zeros(D::Minus2, top, bottom)?.pad_with_zeros(
                    D::Minus1,
                    left,
                    right,
                )?;
                padded.conv2d(&self.weight, 0, self.stride, 1, 1)?
            }
        };
        self.activation.apply(&y.broadcast_add(&self.bias)?)
    }
}

/// A depthwise convolution with batch-norm folded and activation fused, run by our own
/// kernel (see [`crate::ops`]).
#[derive(Debug, Clone)]
pub struct Depthwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
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
        Ok(Self {
            weight: w.flatten_all()?.to_vec1()?,
            bias: b.to_vec1()?,
            kernel,
            stride,
            padding,
            activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (pad_top, pad_bottom) = self.padding.amounts(h, self.kernel, self.stride);
        let (pad_left, pad_right) = self.padding.amounts(w, self.kernel, self.stride);
        let op = DepthwiseConv2d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            kernel: self.kernel,
            stride: self.stride,
            pad_top,
            pad_left,
            pad_bottom,
            pad_right,
            clamp: self.activation.bounds(),
        };
        Ok(op.forward(&x.contiguous()?)?)
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
