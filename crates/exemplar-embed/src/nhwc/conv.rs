//! Dense convolution: unfold a tile of output pixels, multiply by the packed weights,
//! finish (bias, residual, activation) while the tile is in cache.

use super::gemm::{product, Parallelism};
use super::{FeatureMap, Pads};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// A dense convolution's geometry and fused activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    pub kernel: usize,
    pub stride: usize,
    pub pads: Pads,
    /// Output clamped to `[lo, hi]` after bias and residual (ReLU, ReLU6).
    pub clamp: Option<(f32, f32)>,
}

/// Unfolded input kept per tile: about half of a Zen 4 core's 1 MiB L2, so the tile's
/// input, output and the packed weights it streams mostly stay there.
const TILE_FLOATS: usize = 128 * 1024;
/// Fewer rows than this per tile and the product's own packing overhead dominates.
const MIN_TILE_ROWS: usize = 64;

/// `act(conv(x, weight) + bias [+ residual])`.
///
/// `weight` is `kernel x kernel x in x out` row-major: a `(k*k*in) x out` matrix whose
/// row `(ky*k + kx)*in + ci` holds input channel `ci`'s tap `(ky, kx)` for every output.
///
/// # Panics
/// When the weights, bias or residual do not fit `x` and `spec` (a bug in the caller:
/// models check shapes when they load).
pub fn conv2d(
    x: &FeatureMap,
    weight: &[f32],
    bias: &[f32],
    spec: &ConvSpec,
    residual: Option<&FeatureMap>,
) -> FeatureMap {
    let (cin, cout, k) = (x.channels, bias.len(), spec.kernel);
    let depth = k * k * cin;
    assert_eq!(
        weight.len(),
        depth * cout,
        "weights do not fit the input's channels"
    );
    let (oh, ow) = spec.pads.output_size(x.height, x.width, k, spec.stride);
    let rows = x.batch * oh * ow;
    if let Some(r) = residual {
        assert_eq!(
            (r.batch, r.height, r.width, r.channels),
            (x.batch, oh, ow, cout),
            "residual does not fit the output"
        );
    }
    // A 1x1 stride-1 convolution reads the map itself as its unfolded input.
    let direct = k == 1 && spec.stride == 1 && spec.pads == Pads::default();
    let finish = |out: &mut [f32], first_row: usize, lhs: &[f32], parallelism| {
        let n = out.len() / cout;
        product(
            out,
            cout,
            lhs,
            depth,
            weight,
            cout,
            (n, cout, depth),
            parallelism,
        );
        // Bias, residual and activation in one pass over the tile, still in cache.
        let residual = residual.map(|r| &r.data[first_row * cout..(first_row + n) * cout]);
        pulp::Arch::new().dispatch(Epilogue {
            out,
            bias,
            residual,
            clamp: spec.clamp,
        });
    };

    let mut out = super::buffers::take(rows * cout);
    let threads = rayon::current_num_threads();
    let tile = tile_rows(rows, (!direct).then_some(depth), threads);
    if tile >= rows {
        // Too few pixels to share out (the last layers at batch 1): one product, which
        // the `gemm` crate splits over the threads itself.
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        if direct {
            finish(&mut out, 0, &x.data, parallelism);
        } else {
            let mut unfolded = Vec::new();
            unfold(x, spec, (oh, ow), 0..rows, &mut unfolded);
            finish(&mut out, 0, &unfolded, parallelism);
        }
    } else {
        out.par_chunks_mut(tile * cout)
            .enumerate()
            .for_each(|(t, out)| {
                let first = t * tile;
                let n = out.len() / cout;
                if direct {
                    finish(
                        out,
                        first,
                        &x.data[first * cin..(first + n) * cin],
                        Parallelism::None,
                    );
                } else {
                    UNFOLDED.with_borrow_mut(|unfolded| {
                        unfold(x, spec, (oh, ow), first..first + n, unfolded);
                        finish(out, first, unfolded, Parallelism::None);
                    });
                }
            });
    }
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: cout,
        data: out,
    }
}

/// `out = clamp(out + bias [+ residual])`, row by row (`bias` has one value per column).
struct Epilogue<'a> {
    out: &'a mut [f32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
}

impl WithSimd for Epilogue<'_> {
    type Output = ();

    /// With the CPU's widest vectors (the default target would use SSE2 only).
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            out,
            bias,
            residual,
            clamp,
        } = self;
        let cout = bias.len();
        let (b_vec, b_tail) = S::as_simd_f32s(bias);
        let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo_vec, hi_vec) = (simd.splat_f32s(lo), simd.splat_f32s(hi));
        for (r, row) in out.chunks_exact_mut(cout).enumerate() {
            let (o_vec, o_tail) = S::as_mut_simd_f32s(row);
            for (o, b) in o_vec.iter_mut().zip(b_vec) {
                *o = simd.add_f32s(*o, *b);
            }
            for (o, b) in o_tail.iter_mut().zip(b_tail) {
                *o += b;
            }
            if let Some(residual) = residual {
                let (r_vec, r_tail) = S::as_simd_f32s(&residual[r * cout..(r + 1) * cout]);
                let (o_vec, o_tail) = S::as_mut_simd_f32s(row);
                for (o, x) in o_vec.iter_mut().zip(r_vec) {
                    *o = simd.add_f32s(*o, *x);
                }
                for (o, x) in o_tail.iter_mut().zip(r_tail) {
                    *o += x;
                }
            }
            if clamp.is_some() {
                let (o_vec, o_tail) = S::as_mut_simd_f32s(row);
                for o in o_vec {
                    *o = simd.min_f32s(simd.max_f32s(*o, lo_vec), hi_vec);
                }
                for o in o_tail {
                    *o = o.max(lo).min(hi);
                }
            }
        }
    }
}

thread_local! {
    /// Each worker's unfolded tile, reused across tiles and layers.
    static UNFOLDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows per tile: `rows` itself means "one tile". A convolution that unfolds its input
/// (`unfolded_depth` values per row) gets enough tiles that every thread stays busy to
/// the end, each tile's unfolded input within [`TILE_FLOATS`]; one that reads the map
/// directly gets one tile per thread (every tile repacks the weights: measured 2-5 %
/// faster on ResNet-50 than cache-sized tiles).
fn tile_rows(rows: usize, unfolded_depth: Option<usize>, threads: usize) -> usize {
    if threads <= 1 || rows < 2 * threads * MIN_TILE_ROWS {
        return rows;
    }
    match unfolded_depth {
        None => rows.div_ceil(threads),
        Some(depth) => {
            let by_cache = TILE_FLOATS / depth;
            let by_balance = rows.div_ceil(4 * threads);
            by_cache.min(by_balance).max(MIN_TILE_ROWS)
        }
    }
}

/// The input windows of output pixels `rows` (over the whole batch), one row of
/// `k*k*in` values each (zeros where the window leaves the map), into `unfolded`.
fn unfold(
    x: &FeatureMap,
    spec: &ConvSpec,
    (oh, ow): (usize, usize),
    rows: std::ops::Range<usize>,
    unfolded: &mut Vec<f32>,
) {
    let (k, cin) = (spec.kernel, x.channels);
    let depth = k * k * cin;
    unfolded.resize(rows.len() * depth, 0.0);
    for (r, dst) in rows.zip(unfolded.chunks_exact_mut(depth)) {
        let (b, pixel) = (r / (oh * ow), r % (oh * ow));
        let (oy, ox) = (pixel / ow, pixel % ow);
        for ky in 0..k {
            let dst = &mut dst[ky * k * cin..(ky + 1) * k * cin];
            let iy = (oy * spec.stride + ky) as isize - spec.pads.top as isize;
            if iy < 0 || iy >= x.height as isize {
                dst.fill(0.0);
                continue;
            }
            let row = (b * x.height + iy as usize) * x.width;
            let x0 = (ox * spec.stride) as isize - spec.pads.left as isize;
            if x0 >= 0 && x0 as usize + k <= x.width {
                // The whole kernel row is inside: its k pixels are one contiguous run
                // (matters for a 3-channel stem, where a pixel is 3 floats).
                let src = (row + x0 as usize) * cin;
                dst.copy_from_slice(&x.data[src..src + k * cin]);
                continue;
            }
            for kx in 0..k {
                let dst = &mut dst[kx * cin..(kx + 1) * cin];
                let ix = (ox * spec.stride + kx) as isize - spec.pads.left as isize;
                if ix < 0 || ix >= x.width as isize {
                    dst.fill(0.0);
                } else {
                    let src = (row + ix as usize) * cin;
                    dst.copy_from_slice(&x.data[src..src + cin]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Candle's own convolution on NCHW, with the same padding, bias, residual, clamp.
    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        spec: &ConvSpec,
        residual: Option<&Tensor>,
    ) -> Tensor {
        let p = spec.pads;
        let padded = x
            .pad_with_zeros(2, p.top, p.bottom)
            .unwrap()
            .pad_with_zeros(3, p.left, p.right)
            .unwrap();
        let mut y = padded
            .conv2d(w, 0, spec.stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, (), 1, 1)).unwrap())
            .unwrap();
        if let Some(r) = residual {
            y = (y + r).unwrap();
        }
        match spec.clamp {
            Some((lo, hi)) => y.clamp(lo, hi).unwrap(),
            None => y,
        }
    }

    /// Candle's `(out, in, k, k)` weights in this engine's `(k, k, in, out)` order.
    pub(crate) fn pack(w: &Tensor) -> Vec<f32> {
        w.permute((2, 3, 1, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn matches_candles_convolution_on_random_inputs() {
        let pads = |top, left, bottom, right| Pads {
            top,
            left,
            bottom,
            right,
        };
        let relu = Some((0.0, f32::INFINITY));
        let cases = [
            // (n, cin, h, w, cout, k, stride, pads, clamp, residual)
            (
                1,
                3,
                9,
                11,
                5,
                3,
                2,
                pads(0, 0, 1, 1),
                Some((0.0, 6.0)),
                false,
            ),
            (2, 4, 7, 7, 8, 3, 1, pads(1, 1, 1, 1), relu, true),
            (1, 3, 23, 19, 16, 7, 2, pads(3, 3, 3, 3), relu, false),
            (2, 6, 5, 9, 7, 1, 1, Pads::default(), None, true),
            (3, 5, 8, 6, 4, 1, 2, Pads::default(), None, false),
            // Enough pixels for several tiles (exercises the parallel path).
            (
                2,
                16,
                24,
                20,
                24,
                1,
                1,
                Pads::default(),
                Some((0.0, 6.0)),
                false,
            ),
            (1, 8, 33, 31, 12, 3, 1, pads(1, 1, 1, 1), relu, true),
            (1, 8, 4, 4, 3, 5, 1, pads(2, 2, 2, 2), None, false),
        ];
        for (i, (n, cin, h, w, cout, k, stride, pads, clamp, with_residual)) in
            cases.into_iter().enumerate()
        {
            let cpu = &Device::Cpu;
            let x = Tensor::randn(0f32, 1f32, (n, cin, h, w), cpu).unwrap();
            let wt = Tensor::randn(0f32, 1f32, (cout, cin, k, k), cpu).unwrap();
            let b = Tensor::randn(0f32, 1f32, cout, cpu).unwrap();
            let spec = ConvSpec {
                kernel: k,
                stride,
                pads,
                clamp,
            };
            let (oh, ow) = pads.output_size(h, w, k, stride);
            let r =
                with_residual.then(|| Tensor::randn(0f32, 1f32, (n, cout, oh, ow), cpu).unwrap());
            let want = reference(&x, &wt, &b, &spec, r.as_ref());
            let r_map = r.as_ref().map(|r| FeatureMap::from_nchw(r).unwrap());
            let got = conv2d(
                &FeatureMap::from_nchw(&x).unwrap(),
                &pack(&wt),
                &b.to_vec1::<f32>().unwrap(),
                &spec,
                r_map.as_ref(),
            )
            .to_nchw()
            .unwrap();
            let diff = crate::nhwc::max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "case {i}: max diff {diff}");
        }
    }

    #[test]
    fn tiles_cover_every_row_and_keep_threads_busy() {
        assert_eq!(
            tile_rows(196, Some(4608), 2),
            196,
            "too few rows: one product"
        );
        assert_eq!(
            tile_rows(12544, Some(27), 2),
            1568,
            "cheap rows: 4 tiles per thread"
        );
        assert_eq!(
            tile_rows(3136, Some(576), 2),
            227,
            "costly rows: bounded by cache"
        );
        assert_eq!(tile_rows(1000, Some(1 << 20), 2), MIN_TILE_ROWS);
        assert_eq!(
            tile_rows(12544, None, 2),
            6272,
            "read directly: a tile per thread"
        );
        assert_eq!(tile_rows(12544, Some(27), 1), 12544);
    }
}
