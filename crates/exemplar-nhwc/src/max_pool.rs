//! Max pooling over channels-last maps.

use super::matmul::{lanes, load, store};
use super::{taps, FeatureMap, Pads};
use crate::team;
use pulp::{Simd, WithSimd};

/// Max over each `kernel x kernel` window; padding is ignored (PyTorch's -inf padding).
pub fn max_pool2d(x: &FeatureMap, kernel: usize, stride: usize, pads: Pads) -> FeatureMap {
    let c = x.channels;
    let (oh, ow) = pads.output_size(x.height, x.width, kernel, stride);
    let mut out = super::buffers::take(x.batch * oh * ow * c);
    let arch = crate::arch();
    team::for_each(team::parts_mut(&mut out, ow * c), |(first_row, part)| {
        // In vectors of the CPU's width: compiled for the baseline instruction set,
        // the same loop took 0.64 ms for ResNet's 112x112x64 map on one thread.
        arch.dispatch(PoolRows {
            x,
            window: (kernel, stride, pads),
            output: (oh, ow),
            first_row,
            part,
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

/// Output rows `first_row..` (over the batch) into `part`.
struct PoolRows<'a> {
    x: &'a FeatureMap,
    window: (usize, usize, Pads),
    output: (usize, usize),
    first_row: usize,
    part: &'a mut [f32],
}

impl WithSimd for PoolRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            x,
            window: (kernel, stride, pads),
            output: (oh, ow),
            first_row,
            part,
        } = self;
        let c = x.channels;
        for (i, out_row) in part.chunks_exact_mut(ow * c).enumerate() {
            let row = first_row + i;
            let (b, oy) = (row / oh, row % oh);
            let (first_y, y0, count_y) = taps(oy, stride, pads.top, kernel, x.height);
            for (ox, out_px) in out_row.chunks_exact_mut(c).enumerate() {
                let (first_x, x0, count_x) = taps(ox, stride, pads.left, kernel, x.width);
                for c0 in (0..c).step_by(lanes::<S>()) {
                    let channels = c0..c.min(c0 + lanes::<S>());
                    let mut max = simd.splat_f32s(f32::NEG_INFINITY);
                    for ty in first_y..first_y + count_y {
                        let iy = (y0 + ty as isize) as usize;
                        for tx in first_x..first_x + count_x {
                            let ix = (x0 + tx as isize) as usize;
                            let pixel = ((b * x.height + iy) * x.width + ix) * c;
                            let v =
                                load(simd, &x.data[pixel + channels.start..pixel + channels.end]);
                            max = simd.max_f32s(max, v);
                        }
                    }
                    store(simd, &mut out_px[channels], max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candles_max_pool_with_and_without_padding() {
        crate::instruction_sets::on_every_one(
            "matches_candles_max_pool_with_and_without_padding",
            || {
                let cpu = &Device::Cpu;
                // Channels: part of a vector, and whole vectors plus part of one (at every
                // instruction set's width). Negative values too: padding must never win a window.
                for channels in [5, 37] {
                    let x = Tensor::randn(0f32, 1f32, (2, channels, 9, 8), cpu).unwrap();
                    let map = FeatureMap::from_nchw(&x).unwrap();
                    let got = max_pool2d(&map, 2, 2, Pads::default()).to_nchw().unwrap();
                    let want = x.max_pool2d_with_stride(2, 2).unwrap();
                    assert_eq!(crate::max_abs_diff(&got, &want), 0.0);

                    let one = Pads {
                        top: 1,
                        left: 1,
                        bottom: 1,
                        right: 1,
                    };
                    let got = max_pool2d(&map, 3, 2, one).to_nchw().unwrap();
                    let padded = x
                        .pad_with_same(2, 1, 1)
                        .unwrap()
                        .pad_with_same(3, 1, 1)
                        .unwrap();
                    let want = padded.max_pool2d_with_stride(3, 2).unwrap();
                    assert_eq!(crate::max_abs_diff(&got, &want), 0.0);
                }
            },
        );
    }
}
