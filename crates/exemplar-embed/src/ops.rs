//! Kernels Candle lacks or runs slowly.
//!
//! Candle's grouped convolution runs one small convolution per group, so a depthwise
//! layer (one group per channel) takes tens of milliseconds at a fraction of a GFLOP/s.
//! A depthwise convolution is a tiny stencil per channel: a direct loop, one channel plane
//! per task, is both simpler and far faster.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Depthwise 2-d convolution over contiguous NCHW f32, with explicit (possibly
/// asymmetric, TensorFlow "SAME") padding, a per-channel bias and an optional clamp
/// (ReLU6) fused in.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    /// `channels x k x k`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub kernel: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_bottom: usize,
    pub pad_right: usize,
    /// Output clamped to `[lo, hi]` when set.
    pub clamp: Option<(f32, f32)>,
}

impl DepthwiseConv2d {
    pub fn channels(&self) -> usize {
        self.bias.len()
    }

    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + self.pad_top + self.pad_bottom - self.kernel) / self.stride + 1,
            (w + self.pad_left + self.pad_right - self.kernel) / self.stride + 1,
        )
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("depthwise-conv2d: only f32 is supported");
        };
        let (n, c, h, w) = layout.shape().dims4()?;
        if c != self.channels() {
            candle_core::bail!(
                "depthwise-conv2d: {c} input channels, weights for {}",
                self.channels()
            );
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise-conv2d: input must be contiguous");
        };
        let input = &data[start..end];
        let (oh, ow) = self.output_size(h, w);
        let k = self.kernel;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, out)| {
                let ch = plane % c;
                let src = &input[plane * h * w..(plane + 1) * h * w];
                let weight = &self.weight[ch * k * k..(ch + 1) * k * k];
                let bias = self.bias[ch];
                for oy in 0..oh {
                    let y0 = (oy * self.stride) as isize - self.pad_top as isize;
                    let out_row = &mut out[oy * ow..(oy + 1) * ow];
                    out_row.fill(bias);
                    for ky in 0..k {
                        let iy = y0 + ky as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let in_row = &src[iy as usize * w..(iy as usize + 1) * w];
                        let wrow = &weight[ky * k..(ky + 1) * k];
                        for (ox, acc) in out_row.iter_mut().enumerate() {
                            let x0 = (ox * self.stride) as isize - self.pad_left as isize;
                            let mut sum = 0f32;
                            for (kx, wv) in wrow.iter().enumerate() {
                                let ix = x0 + kx as isize;
                                if ix >= 0 && (ix as usize) < w {
                                    sum += in_row[ix as usize] * wv;
                                }
                            }
                            *acc += sum;
                        }
                    }
                    if let Some((lo, hi)) = self.clamp {
                        out_row.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn reference(op: &DepthwiseConv2d, x: &Tensor) -> Tensor {
        let c = op.channels();
        let x = x
            .pad_with_zeros(2, op.pad_top, op.pad_bottom)
            .unwrap()
            .pad_with_zeros(3, op.pad_left, op.pad_right)
            .unwrap();
        let w = Tensor::from_vec(
            op.weight.clone(),
            (c, 1, op.kernel, op.kernel),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(op.bias.clone(), (1, c, 1, 1), &Device::Cpu).unwrap();
        let y = x
            .conv2d(&w, 0, op.stride, 1, c)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        match op.clamp {
            Some((lo, hi)) => y.clamp(lo, hi).unwrap(),
            None => y,
        }
    }

    #[test]
    fn matches_candles_grouped_convolution_on_random_inputs() {
        let cases = [
            // (n, c, h, w, k, stride, pads t/l/b/r, clamp)
            (1, 3, 7, 9, 3, 1, [1, 1, 1, 1], None),
            (2, 5, 8, 8, 3, 2, [0, 0, 1, 1], Some((0.0, 6.0))),
            (1, 4, 11, 6, 5, 2, [1, 1, 2, 2], Some((0.0, 6.0))),
            (1, 2, 5, 5, 5, 1, [2, 2, 2, 2], None),
            (3, 1, 13, 17, 3, 2, [1, 0, 1, 1], None),
            (1, 6, 4, 4, 3, 1, [0, 0, 0, 0], None),
        ];
        for (i, (n, c, h, w, k, s, p, clamp)) in cases.into_iter().enumerate() {
            let x = Tensor::randn(0f32, 1f32, (n, c, h, w), &Device::Cpu).unwrap();
            let weight = Tensor::randn(0f32, 1f32, c * k * k, &Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            let bias = Tensor::randn(0f32, 1f32, c, &Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            let op = DepthwiseConv2d {
                weight,
                bias,
                kernel: k,
                stride: s,
                pad_top: p[0],
                pad_left: p[1],
                pad_bottom: p[2],
                pad_right: p[3],
                clamp,
            };
            let got = op.forward(&x).unwrap();
            let want = reference(&op, &x);
            assert_eq!(got.dims(), want.dims(), "case {i}");
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "case {i}: max diff {diff}");
        }
    }

    #[test]
    fn non_contiguous_input_is_an_error_not_garbage() {
        let op = DepthwiseConv2d {
            weight: vec![1.0; 9 * 2],
            bias: vec![0.0; 2],
            kernel: 3,
            stride: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
            clamp: None,
        };
        let x = Tensor::zeros((1, 2, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = x.transpose(1, 3).unwrap();
        assert_eq!(x.dims(), &[1, 2, 3, 2]);
        assert!(op.forward(&x).is_err());
    }
}
