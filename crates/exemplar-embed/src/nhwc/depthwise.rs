//! Depthwise convolution over channels-last maps: every output pixel is a per-channel
//! weighted sum of its window, so the work is runs of channel-contiguous multiply-adds.

use super::{taps, FeatureMap, Pads};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// `clamp(depthwise(x, weight) + bias)`; `weight` is `kernel x kernel x channels`
/// (tap-major, channels contiguous).
///
/// # Panics
/// When `weight` or `bias` do not fit `x`'s channels.
pub fn depthwise_conv2d(
    x: &FeatureMap,
    weight: &[f32],
    bias: &[f32],
    (kernel, stride): (usize, usize),
    pads: Pads,
    clamp: Option<(f32, f32)>,
) -> FeatureMap {
    let c = x.channels;
    assert_eq!(bias.len(), c, "bias does not fit the channels");
    assert_eq!(
        weight.len(),
        kernel * kernel * c,
        "weights do not fit the channels"
    );
    let (oh, ow) = pads.output_size(x.height, x.width, kernel, stride);
    let mut out = super::buffers::take(x.batch * oh * ow * c);
    let arch = pulp::Arch::new();
    out.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, out_row)| {
            arch.dispatch(OutputRow {
                x,
                weight,
                bias,
                kernel,
                stride,
                pads,
                clamp,
                image: row / oh,
                oy: row % oh,
                out: out_row,
            })
        });
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: c,
        data: out,
    }
}

/// One row of output pixels.
struct OutputRow<'a> {
    x: &'a FeatureMap,
    weight: &'a [f32],
    bias: &'a [f32],
    kernel: usize,
    stride: usize,
    pads: Pads,
    clamp: Option<(f32, f32)>,
    image: usize,
    oy: usize,
    out: &'a mut [f32],
}

impl WithSimd for OutputRow<'_> {
    type Output = ();

    /// Compiled for each instruction set (SSE2 .. AVX-512) and run with the best one
    /// this CPU has: the default x86-64 target alone would only use SSE2.
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            x,
            weight,
            bias,
            kernel,
            stride,
            pads,
            clamp,
            image,
            oy,
            out,
        } = self;
        let c = x.channels;
        let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
        let vectors = c / lanes;
        let rows = taps(oy, stride, pads.top, kernel, x.height);
        let first_pixel = image * x.height * x.width;
        let offsets: Vec<usize> = (0..kernel * kernel)
            .map(|t| ((t / kernel) * x.width + t % kernel) * c)
            .collect();
        let bounds = clamp.map(|(lo, hi)| (simd.splat_f32s(lo), simd.splat_f32s(hi)));
        for (ox, out_px) in out.chunks_exact_mut(c).enumerate() {
            let window = Window {
                rows,
                columns: taps(ox, stride, pads.left, kernel, x.width),
                first_pixel,
                width: x.width,
                kernel,
                channels: c,
            };
            let (first_x, x0, count_x) = window.columns;
            let interior = (rows.2 == kernel && first_x == 0 && count_x == kernel).then(|| {
                let (iy, ix) = (rows.1 as usize, x0 as usize);
                Interior {
                    base: (first_pixel + iy * x.width + ix) * c,
                    offsets: &offsets,
                }
            });
            // Up to four vectors of channels accumulate in registers over all taps.
            let mut start = 0;
            while start < vectors {
                let block = Block {
                    input: &x.data,
                    weight,
                    bias,
                    channel: start * lanes,
                    window: &window,
                    interior,
                    bounds,
                };
                let out = &mut out_px[start * lanes..];
                start += match vectors - start {
                    1 => block.accumulate::<1>(simd, out),
                    2 => block.accumulate::<2>(simd, out),
                    3 => block.accumulate::<3>(simd, out),
                    _ => block.accumulate::<4>(simd, out),
                };
            }
            for ch in vectors * lanes..c {
                let mut acc = bias[ch];
                window.for_each(|i, w| acc += x.data[i + ch] * weight[w + ch]);
                out_px[ch] = clamp.map_or(acc, |(lo, hi)| acc.max(lo).min(hi));
            }
        }
    }
}

/// The taps of one output pixel's window that lie inside the map.
struct Window {
    /// (first tap, input coordinate of tap 0, taps inside), down and across; see [`taps`].
    rows: (usize, isize, usize),
    columns: (usize, isize, usize),
    /// Index of the image's first pixel.
    first_pixel: usize,
    width: usize,
    kernel: usize,
    channels: usize,
}

impl Window {
    /// Calls `visit(input offset, weight offset)` for every tap inside the map.
    #[inline(always)]
    fn for_each(&self, mut visit: impl FnMut(usize, usize)) {
        let (first_y, y0, count_y) = self.rows;
        let (first_x, x0, count_x) = self.columns;
        for ty in first_y..first_y + count_y {
            let iy = (y0 + ty as isize) as usize;
            let row = self.first_pixel + iy * self.width;
            for tx in first_x..first_x + count_x {
                let ix = (x0 + tx as isize) as usize;
                visit(
                    (row + ix) * self.channels,
                    (ty * self.kernel + tx) * self.channels,
                );
            }
        }
    }
}

/// A block of channels of one output pixel.
struct Block<'a, V> {
    input: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    channel: usize,
    window: &'a Window,
    /// Set when the window lies wholly inside the map (most pixels).
    interior: Option<Interior<'a>>,
    bounds: Option<(V, V)>,
}

/// A window wholly inside the map: its first tap's input offset, and every tap's
/// offset from it (the same for all such windows of a layer).
#[derive(Clone, Copy)]
struct Interior<'a> {
    base: usize,
    offsets: &'a [usize],
}

impl<V: Copy> Block<'_, V> {
    /// `N` vectors of channels: bias plus the sum over the window's taps, kept in
    /// registers, clamped, written to the start of `out`. Returns `N`.
    #[inline(always)]
    fn accumulate<const N: usize>(&self, simd: impl Simd<f32s = V>, out: &mut [f32]) -> usize {
        let lanes = std::mem::size_of::<V>() / std::mem::size_of::<f32>();
        let channel = self.channel;
        let load = |slice: &[f32], at: usize| -> [V; N] {
            let (v, _) = as_vectors(simd, &slice[at..at + N * lanes]);
            std::array::from_fn(|j| v[j])
        };
        let mut acc = load(self.bias, channel);
        if let Some(interior) = self.interior {
            // The whole window is inside the map: every tap at a fixed offset.
            for (t, &offset) in interior.offsets.iter().enumerate() {
                let i = load(self.input, interior.base + offset + channel);
                let w = load(self.weight, t * self.window.channels + channel);
                for j in 0..N {
                    acc[j] = simd.mul_add_e_f32s(i[j], w[j], acc[j]);
                }
            }
            return self.store(simd, acc, out);
        }
        // Plain loops, not `Window::for_each`: a closure is compiled without the target
        // features, and SIMD operations inside it would become function calls.
        let window = self.window;
        let (first_y, y0, count_y) = window.rows;
        let (first_x, x0, count_x) = window.columns;
        for ty in first_y..first_y + count_y {
            let iy = (y0 + ty as isize) as usize;
            let row = window.first_pixel + iy * window.width;
            for tx in first_x..first_x + count_x {
                let ix = (x0 + tx as isize) as usize;
                let i = load(self.input, (row + ix) * window.channels + channel);
                let w = load(
                    self.weight,
                    (ty * window.kernel + tx) * window.channels + channel,
                );
                for j in 0..N {
                    acc[j] = simd.mul_add_e_f32s(i[j], w[j], acc[j]);
                }
            }
        }
        self.store(simd, acc, out)
    }

    /// Clamps `acc` and writes it to the start of `out`; returns `N`.
    #[inline(always)]
    fn store<const N: usize>(
        &self,
        simd: impl Simd<f32s = V>,
        mut acc: [V; N],
        out: &mut [f32],
    ) -> usize {
        let lanes = std::mem::size_of::<V>() / std::mem::size_of::<f32>();
        if let Some((lo, hi)) = self.bounds {
            for a in &mut acc {
                *a = simd.min_f32s(simd.max_f32s(*a, lo), hi);
            }
        }
        let (out, _) = as_vectors_mut(simd, &mut out[..N * lanes]);
        out.copy_from_slice(&acc);
        N
    }
}

#[inline(always)]
fn as_vectors<S: Simd>(_: S, slice: &[f32]) -> (&[S::f32s], &[f32]) {
    S::as_simd_f32s(slice)
}

#[inline(always)]
fn as_vectors_mut<S: Simd>(_: S, slice: &mut [f32]) -> (&mut [S::f32s], &mut [f32]) {
    S::as_mut_simd_f32s(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::DepthwiseConv2d;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_the_nchw_kernel_on_random_inputs() {
        let cases = [
            // (n, c, h, w, k, stride, pads t/l/b/r, clamp)
            (1, 3, 7, 9, 3, 1, [1, 1, 1, 1], None),
            (2, 21, 8, 8, 3, 2, [0, 0, 1, 1], Some((0.0, 6.0))),
            (1, 32, 11, 6, 5, 2, [1, 1, 2, 2], Some((0.0, 6.0))),
            (1, 40, 5, 5, 5, 1, [2, 2, 2, 2], None),
            (3, 17, 13, 17, 3, 2, [1, 0, 1, 1], None),
            (1, 48, 4, 4, 3, 1, [0, 0, 0, 0], None),
            // Channel counts that take every register block (1-4 vectors, then more)
            // plus a scalar tail, whatever the vector width.
            (1, 96, 9, 9, 5, 1, [2, 2, 2, 2], Some((0.0, 6.0))),
            (2, 80, 6, 7, 3, 2, [0, 0, 1, 1], None),
            (1, 150, 12, 10, 3, 1, [1, 1, 1, 1], Some((0.0, 6.0))),
        ];
        for (i, (n, c, h, w, k, s, p, clamp)) in cases.into_iter().enumerate() {
            let cpu = &Device::Cpu;
            let x = Tensor::randn(0f32, 1f32, (n, c, h, w), cpu).unwrap();
            let weight = Tensor::randn(0f32, 1f32, (c, k, k), cpu).unwrap();
            let bias: Vec<f32> = Tensor::randn(0f32, 1f32, c, cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            // The NCHW kernel is itself tested against Candle's grouped convolution.
            let nchw = DepthwiseConv2d {
                weight: weight.flatten_all().unwrap().to_vec1().unwrap(),
                bias: bias.clone(),
                kernel: k,
                stride: s,
                pad_top: p[0],
                pad_left: p[1],
                pad_bottom: p[2],
                pad_right: p[3],
                clamp,
            };
            let want = nchw.forward(&x).unwrap();
            let tap_major: Vec<f32> = weight
                .permute((1, 2, 0))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let pads = Pads {
                top: p[0],
                left: p[1],
                bottom: p[2],
                right: p[3],
            };
            let got = depthwise_conv2d(
                &FeatureMap::from_nchw(&x).unwrap(),
                &tap_major,
                &bias,
                (k, s),
                pads,
                clamp,
            )
            .to_nchw()
            .unwrap();
            assert_eq!(got.dims(), want.dims(), "case {i}");
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "case {i}: max diff {diff}");
        }
    }
}
