//! Max pooling over channels-last maps.

use super::{taps, FeatureMap, Pads};
use crate::team;

/// Max over each `kernel x kernel` window; padding is ignored (PyTorch's -inf padding).
pub fn max_pool2d(x: &FeatureMap, kernel: usize, stride: usize, pads: Pads) -> FeatureMap {
    let c = x.channels;
    let (oh, ow) = pads.output_size(x.height, x.width, kernel, stride);
    let mut out = super::buffers::take(x.batch * oh * ow * c);
    out.fill(f32::NEG_INFINITY);
    team::for_each(team::parts_mut(&mut out, ow * c), |(first_row, part)| {
        for (i, out_row) in part.chunks_exact_mut(ow * c).enumerate() {
            let row = first_row + i;
            let (b, oy) = (row / oh, row % oh);
            let (first_y, y0, count_y) = taps(oy, stride, pads.top, kernel, x.height);
            for (ox, out_px) in out_row.chunks_exact_mut(c).enumerate() {
                let (first_x, x0, count_x) = taps(ox, stride, pads.left, kernel, x.width);
                for ty in first_y..first_y + count_y {
                    let iy = (y0 + ty as isize) as usize;
                    for tx in first_x..first_x + count_x {
                        let ix = (x0 + tx as isize) as usize;
                        let pixel = ((b * x.height + iy) * x.width + ix) * c;
                        for (o, v) in out_px.iter_mut().zip(&x.data[pixel..pixel + c]) {
                            *o = o.max(*v);
                        }
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candles_max_pool_with_and_without_padding() {
        let cpu = &Device::Cpu;
        // Negative values too: padding must never win a window.
        let x = Tensor::randn(0f32, 1f32, (2, 5, 9, 8), cpu).unwrap();
        let map = FeatureMap::from_nchw(&x).unwrap();
        let got = max_pool2d(&map, 2, 2, Pads::default()).to_nchw().unwrap();
        let want = x.max_pool2d_with_stride(2, 2).unwrap();
        assert_eq!(crate::nhwc::max_abs_diff(&got, &want), 0.0);

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
        assert_eq!(crate::nhwc::max_abs_diff(&got, &want), 0.0);
    }
}
