//! Depthwise convolution over channels-last maps: every output pixel is a per-channel
//! weighted sum of its window, so the work is runs of channel-contiguous multiply-adds.

use super::matmul::lanes;
use super::{taps, FeatureMap, Pads};
use crate::team;
use pulp::{Simd, WithSimd};

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
    let layer = Layer::new(weight, bias, (kernel, stride), pads, clamp);
    let per_image = x.height * x.width * c;
    team::for_each(team::parts_mut(&mut out, ow * c), |(first_row, part)| {
        for (i, out_row) in part.chunks_exact_mut(ow * c).enumerate() {
            let row = first_row + i;
            let image = row / oh;
            let input = InputRows {
                data: &x.data[image * per_image..(image + 1) * per_image],
                first_row: 0,
                height: x.height,
                width: x.width,
                channels: c,
            };
            layer.output_row(input, row % oh, out_row);
        }
    });
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: c,
        data: out,
    }
}

/// A depthwise layer's weights and geometry, for maps of one width and channel count.
pub(crate) struct Layer<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    kernel: usize,
    stride: usize,
    pads: Pads,
    clamp: Option<(f32, f32)>,
    arch: pulp::Arch,
}

impl<'a> Layer<'a> {
    pub(crate) fn new(
        weight: &'a [f32],
        bias: &'a [f32],
        (kernel, stride): (usize, usize),
        pads: Pads,
        clamp: Option<(f32, f32)>,
    ) -> Self {
        Self {
            weight,
            bias,
            kernel,
            stride,
            pads,
            clamp,
            arch: crate::arch(),
        }
    }

    /// Output row `oy` of one image into `out`, from `input`, which must hold every
    /// input row of the map that the row's windows reach.
    pub(crate) fn output_row(&self, input: InputRows, oy: usize, out: &mut [f32]) {
        self.arch.dispatch(OutputRow {
            layer: self,
            x: input,
            oy,
            out,
        })
    }
}

/// Rows `first_row..` of one image's map (`height` rows in all, `width x channels`
/// values each): all of it, or the band of rows an output row needs.
#[derive(Clone, Copy)]
pub(crate) struct InputRows<'a> {
    pub data: &'a [f32],
    pub first_row: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

/// One row of output pixels.
struct OutputRow<'a> {
    layer: &'a Layer<'a>,
    x: InputRows<'a>,
    oy: usize,
    out: &'a mut [f32],
}

impl WithSimd for OutputRow<'_> {
    type Output = ();

    /// Compiled for each instruction set (SSE2 .. AVX-512) and run with the best one
    /// this CPU has: the default x86-64 target alone would only use SSE2.
    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        let c = self.x.channels;
        let vectors = c / lanes::<S>();
        // Blocks of up to four vectors of channels, each accumulated in registers over
        // all taps, for the whole row; then the channels left over, one by one.
        let mut start = 0;
        while start < vectors {
            start += match vectors - start {
                1 => self.block::<S, 1>(simd, start * lanes::<S>()),
                2 => self.block::<S, 2>(simd, start * lanes::<S>()),
                3 => self.block::<S, 3>(simd, start * lanes::<S>()),
                _ => self.block::<S, 4>(simd, start * lanes::<S>()),
            };
        }
        let (x, l) = (self.x, self.layer);
        let rows = taps(self.oy, l.stride, l.pads.top, l.kernel, x.height);
        for ch in vectors * lanes::<S>()..c {
            for ox in 0..self.out.len() / c {
                let columns = taps(ox, l.stride, l.pads.left, l.kernel, x.width);
                let mut acc = l.bias[ch];
                self.for_each_tap(rows, columns, |i, w| {
                    acc += x.data[i + ch] * l.weight[w + ch]
                });
                self.out[ox * c + ch] = l.clamp.map_or(acc, |(lo, hi)| acc.max(lo).min(hi));
            }
        }
    }
}

impl OutputRow<'_> {
    /// Output channels `channel..channel + N * lanes` of the whole row; returns `N`.
    #[inline(always)]
    fn block<S: Simd, const N: usize>(&mut self, simd: S, channel: usize) -> usize {
        let (x, l) = (self.x, self.layer);
        let (c, k, stride) = (x.channels, l.kernel, l.stride);
        let ow = self.out.len() / c;
        let rows = taps(self.oy, stride, l.pads.top, k, x.height);
        let bias = load::<S, N>(l.bias, channel);
        let bounds = l
            .clamp
            .map(|(lo, hi)| (simd.splat_f32s(lo), simd.splat_f32s(hi)));
        let finish = |mut acc: [S::f32s; N], out: &mut [f32]| {
            if let Some((lo, hi)) = bounds {
                for a in &mut acc {
                    *a = simd.min_f32s(simd.max_f32s(*a, lo), hi);
                }
            }
            store::<S, N>(out, &acc);
        };
        // Output columns whose window lies wholly inside the map: every tap at a fixed
        // offset from the window's first pixel.
        let (lo, hi) = if rows.2 == k {
            let lo = l.pads.left.div_ceil(stride);
            let hi = (x.width + l.pads.left)
                .checked_sub(k)
                .map_or(0, |room| (room / stride + 1).min(ow));
            (lo.min(hi), hi)
        } else {
            (0, 0)
        };
        let window_start = |ox: usize| {
            let (iy, ix) = (rows.1 as usize - x.first_row, ox * stride - l.pads.left);
            (iy * x.width + ix) * c + channel
        };
        let mut ox = lo;
        // Two pixels at a time share each weight load. Each row of the two windows and
        // of the weights is walked by whole pixels (`chunks_exact(c)`), so the only
        // bounds check left, `channel + N * lanes <= c`, is the same for every tap and
        // leaves the loop (indexing by tap offsets kept three checks per tap: 39
        // instructions around 8 multiply-adds, `perf annotate`).
        let row_len = k * c;
        while ox + 2 <= hi {
            let (a, b) = (window_start(ox) - channel, window_start(ox + 1) - channel);
            let (mut acc_a, mut acc_b) = (bias, bias);
            for ty in 0..k {
                let below = ty * x.width * c;
                let row_a = x.data[a + below..][..row_len].chunks_exact(c);
                let row_b = x.data[b + below..][..row_len].chunks_exact(c);
                let row_w = l.weight[ty * row_len..][..row_len].chunks_exact(c);
                for ((pixel_a, pixel_b), weights) in row_a.zip(row_b).zip(row_w) {
                    let w = load::<S, N>(weights, channel);
                    let i_a = load::<S, N>(pixel_a, channel);
                    let i_b = load::<S, N>(pixel_b, channel);
                    for j in 0..N {
                        acc_a[j] = simd.mul_add_e_f32s(i_a[j], w[j], acc_a[j]);
                        acc_b[j] = simd.mul_add_e_f32s(i_b[j], w[j], acc_b[j]);
                    }
                }
            }
            finish(acc_a, &mut self.out[ox * c + channel..]);
            finish(acc_b, &mut self.out[(ox + 1) * c + channel..]);
            ox += 2;
        }
        // The rest: the last interior pixel, and the borders tap by tap.
        for ox in (ox..hi).chain(0..lo).chain(hi..ow) {
            let columns = taps(ox, stride, l.pads.left, k, x.width);
            let mut acc = bias;
            // Plain loops rather than `for_each_tap`: SIMD operations inside a closure
            // may be compiled without the target features, as function calls.
            let ((first_y, y0, count_y), (first_x, x0, count_x)) = (rows, columns);
            for ty in first_y..first_y + count_y {
                let iy = (y0 + ty as isize) as usize - x.first_row;
                for tx in first_x..first_x + count_x {
                    let ix = (x0 + tx as isize) as usize;
                    let i = (iy * x.width + ix) * c + channel;
                    let i = load::<S, N>(x.data, i);
                    let w = load::<S, N>(l.weight, (ty * k + tx) * c + channel);
                    for j in 0..N {
                        acc[j] = simd.mul_add_e_f32s(i[j], w[j], acc[j]);
                    }
                }
            }
            finish(acc, &mut self.out[ox * c + channel..]);
        }
        N
    }
}
impl OutputRow<'_> {
    /// Calls `visit(input offset, weight offset)` for every tap of a window that lies
    /// inside the map (`rows`, `columns`: see [`taps`]).
    fn for_each_tap(
        &self,
        (first_y, y0, count_y): (usize, isize, usize),
        (first_x, x0, count_x): (usize, isize, usize),
        mut visit: impl FnMut(usize, usize),
    ) {
        let (x, c, k) = (self.x, self.x.channels, self.layer.kernel);
        for ty in first_y..first_y + count_y {
            let iy = (y0 + ty as isize) as usize - x.first_row;
            for tx in first_x..first_x + count_x {
                let ix = (x0 + tx as isize) as usize;
                visit((iy * x.width + ix) * c, (ty * k + tx) * c);
            }
        }
    }
}

/// `N` vectors from `slice[at..]`.
#[inline(always)]
fn load<S: Simd, const N: usize>(slice: &[f32], at: usize) -> [S::f32s; N] {
    let (v, _) = S::as_simd_f32s(&slice[at..at + N * lanes::<S>()]);
    std::array::from_fn(|j| v[j])
}

/// `N` vectors to the start of `out`.
#[inline(always)]
fn store<S: Simd, const N: usize>(out: &mut [f32], values: &[S::f32s; N]) {
    let (v, _) = S::as_mut_simd_f32s(&mut out[..N * lanes::<S>()]);
    v.copy_from_slice(values);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candles_grouped_convolution_on_random_inputs() {
        crate::instruction_sets::on_every_one(
            "matches_candles_grouped_convolution_on_random_inputs",
            || {
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
                    // One group per channel, with the (possibly asymmetric) padding made explicit.
                    let padded = x
                        .pad_with_zeros(2, p[0], p[2])
                        .and_then(|x| x.pad_with_zeros(3, p[1], p[3]))
                        .unwrap();
                    let kernel = weight.reshape((c, 1, k, k)).unwrap();
                    let bias_map = Tensor::from_vec(bias.clone(), (1, c, 1, 1), cpu).unwrap();
                    let want = padded
                        .conv2d(&kernel, 0, s, 1, c)
                        .and_then(|y| y.broadcast_add(&bias_map))
                        .unwrap();
                    let want = match clamp {
                        Some((lo, hi)) => want.clamp(lo, hi).unwrap(),
                        None => want,
                    };
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
                    let diff = crate::max_abs_diff(&got, &want);
                    assert!(diff < 1e-4, "case {i}: max diff {diff}");
                }
            },
        );
    }
}
