//! An inverted bottleneck's expansion (1x1 convolution) and depthwise convolution in
//! one pass over bands of rows.
//!
//! Lite0's first blocks expand maps of 112x112 and 56x56 pixels to 96 and 144
//! channels: 1.8-4.8 MB that, written whole, leave the cache before the depthwise layer
//! reads them back (in the network, that layer ran 2-3x slower than on its own).
//! Here each worker expands only the input rows its next few output rows need, into a
//! band that stays in L2, keeps the rows the next band shares, and runs the depthwise
//! layer on the band.

use super::depthwise::{InputRows, Layer};
use super::matmul::{multiply, Finish, PackedMatrix};
use super::{FeatureMap, Pads};
use rayon::prelude::*;
use std::cell::RefCell;

/// Floats of expanded rows a band holds at most: a quarter of a 1 MiB L2 (half of a
/// 512 KiB one), leaving room for the output rows and the weights.
const BAND_FLOATS: usize = 64 * 1024;

thread_local! {
    /// Each worker's band, reused across tasks and layers.
    static BAND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The expansion's weights and activation.
pub struct Expansion<'a> {
    /// `in x hidden`, packed.
    pub weight: &'a PackedMatrix,
    pub bias: &'a [f32],
    pub clamp: Option<(f32, f32)>,
}

/// The depthwise layer's weights (`k x k x hidden`, tap-major) and geometry.
pub struct DepthwiseSpec<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub kernel: usize,
    pub stride: usize,
    pub pads: Pads,
    pub clamp: Option<(f32, f32)>,
}

/// `depthwise(clamp(x * expansion + bias))`, the same values as [`super::conv2d`]
/// followed by [`super::depthwise_conv2d`] without the expanded map.
///
/// # Panics
/// When the weights do not fit `x` or each other (a bug in the caller: models check
/// shapes when they load).
pub fn expand_depthwise(x: &FeatureMap, e: &Expansion, d: &DepthwiseSpec) -> FeatureMap {
    let hidden = e.weight.cols();
    assert_eq!(
        e.weight.rows(),
        x.channels,
        "expansion does not fit the input"
    );
    assert_eq!(e.bias.len(), hidden, "expansion bias does not fit");
    assert_eq!(
        d.weight.len(),
        d.kernel * d.kernel * hidden,
        "depthwise weights do not fit"
    );
    assert_eq!(d.bias.len(), hidden, "depthwise bias does not fit");
    let (h, w) = (x.height, x.width);
    let (oh, ow) = d.pads.output_size(h, w, d.kernel, d.stride);
    let layer = Layer::new(d.weight, d.bias, (d.kernel, d.stride), d.pads, d.clamp);
    let row_floats = w * hidden;
    // Output rows per band: as many as fit their input rows in BAND_FLOATS.
    let band_rows = ((BAND_FLOATS / row_floats).saturating_sub(d.kernel) / d.stride + 1).max(1);
    // Contiguous shares of each image's rows, a few per thread so that they balance;
    // each share's first band expands the rows it shares with the previous one again.
    let share = oh.div_ceil(2 * rayon::current_num_threads()).max(band_rows);
    let mut out = super::buffers::take(x.batch * oh * ow * hidden);
    out.par_chunks_mut(oh * ow * hidden)
        .zip(x.data.par_chunks(h * w * x.channels))
        .for_each(|(out, image)| {
            out.par_chunks_mut(share * ow * hidden)
                .enumerate()
                .for_each(|(i, out)| {
                    let first = i * share;
                    let rows = first..first + out.len() / (ow * hidden);
                    let image = InputRows {
                        data: image,
                        first_row: 0,
                        height: h,
                        width: w,
                        channels: x.channels,
                    };
                    BAND.with_borrow_mut(|band| {
                        run_share(image, e, d, &layer, rows, band_rows, band, out)
                    })
                });
        });
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: hidden,
        data: out,
    }
}

/// Output rows `rows` of one image (`image`: its input map) into `out`, `band_rows`
/// at a time, through `band`.
#[allow(clippy::too_many_arguments)]
fn run_share(
    image: InputRows,
    e: &Expansion,
    d: &DepthwiseSpec,
    layer: &Layer,
    rows: std::ops::Range<usize>,
    band_rows: usize,
    band: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (cin, hidden) = (image.channels, e.weight.cols());
    let row_floats = image.width * hidden;
    let out_row_floats = out.len() / rows.len();
    let finish = Finish {
        bias: Some(e.bias),
        residual: None,
        clamp: e.clamp,
    };
    // The expanded input rows `band` holds, from its start.
    let mut held = 0..0;
    for first in rows.clone().step_by(band_rows) {
        let chunk = first..(first + band_rows).min(rows.end);
        let needed = input_rows(chunk.clone(), d, image.height);
        // Rows the previous band holds and this one needs move to the front (bands
        // advance down the map, so `needed` never starts above `held`).
        if held.end <= needed.start {
            held = needed.start..needed.start;
        } else {
            let from = (needed.start - held.start) * row_floats;
            band.copy_within(from..held.len() * row_floats, 0);
            held = needed.start..held.end;
        }
        let band = super::scratch(band, needed.len() * row_floats);
        let fresh = held.end..needed.end;
        multiply(
            &mut band[held.len() * row_floats..],
            hidden,
            &image.data[fresh.start * image.width * cin..],
            cin,
            fresh.len() * image.width,
            e.weight,
            finish,
            1,
        );
        held = needed;
        let expanded = InputRows {
            data: band,
            first_row: held.start,
            height: image.height,
            width: image.width,
            channels: hidden,
        };
        for oy in chunk {
            let at = (oy - rows.start) * out_row_floats;
            layer.output_row(expanded, oy, &mut out[at..at + out_row_floats]);
        }
    }
}

/// The input rows that output rows `rows` of a depthwise layer read (inside the map).
fn input_rows(
    rows: std::ops::Range<usize>,
    d: &DepthwiseSpec,
    height: usize,
) -> std::ops::Range<usize> {
    let first = (rows.start * d.stride).saturating_sub(d.pads.top);
    let end = ((rows.end - 1) * d.stride + d.kernel)
        .saturating_sub(d.pads.top)
        .min(height);
    first..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nhwc::{conv2d, depthwise_conv2d, ConvSpec};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 23) as f32 - 11.0) / 9.0)
            .collect()
    }

    #[test]
    fn equals_the_expansion_then_the_depthwise_layer() {
        // (batch, h, w, in, hidden, kernel, stride, pads t/l/b/r): stride 1 and 2, both
        // kernels, TF "SAME" padding (after only) and symmetric, odd sizes, maps whose
        // bands hold one output row (wide) or many (narrow), channels with a scalar tail.
        let cases = [
            (1, 23, 17, 5, 24, 3, 1, [1, 1, 1, 1]),
            (2, 20, 19, 8, 40, 3, 2, [0, 0, 1, 1]),
            (1, 31, 9, 3, 19, 5, 2, [1, 1, 2, 2]),
            (1, 12, 200, 16, 96, 3, 2, [0, 0, 1, 1]),
            (3, 9, 6, 4, 48, 5, 1, [2, 2, 2, 2]),
            (1, 40, 150, 6, 144, 3, 1, [1, 1, 1, 1]),
            (1, 2, 3, 2, 8, 3, 1, [1, 1, 1, 1]),
        ];
        for (i, (batch, h, w, cin, hidden, k, s, p)) in cases.into_iter().enumerate() {
            let x = FeatureMap {
                batch,
                height: h,
                width: w,
                channels: cin,
                data: values(batch * h * w * cin, i),
            };
            let expand_w = PackedMatrix::pack(&values(cin * hidden, i + 1), cin, hidden);
            let expand_b = values(hidden, i + 2);
            let dw_w = values(k * k * hidden, i + 3);
            let dw_b = values(hidden, i + 4);
            let pads = Pads {
                top: p[0],
                left: p[1],
                bottom: p[2],
                right: p[3],
            };
            let relu6 = Some((0.0, 6.0));
            let spec = ConvSpec {
                kernel: 1,
                stride: 1,
                pads: Pads::default(),
                clamp: relu6,
            };
            let expanded = conv2d(&x, &expand_w, &expand_b, &spec, None);
            let want = depthwise_conv2d(&expanded, &dw_w, &dw_b, (k, s), pads, None);
            let got = expand_depthwise(
                &x,
                &Expansion {
                    weight: &expand_w,
                    bias: &expand_b,
                    clamp: relu6,
                },
                &DepthwiseSpec {
                    weight: &dw_w,
                    bias: &dw_b,
                    kernel: k,
                    stride: s,
                    pads,
                    clamp: None,
                },
            );
            assert_eq!(
                (got.batch, got.height, got.width, got.channels),
                (want.batch, want.height, want.width, want.channels),
                "case {i}"
            );
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "case {i}: max diff {diff}");
        }
    }
}
