//! An inverted bottleneck's expansion (1x1 convolution) and depthwise convolution in
//! one pass over bands of rows.
//!
//! Lite0's first blocks expand maps of 112x112 and 56x56 pixels to 96 and 144
//! channels: 1.8-4.8 MB that, written whole, leave the cache before the depthwise layer
//! reads them back (in the network, that layer then runs far slower than on its own).
//! Here each worker expands only the input rows its next few output rows need, into a
//! band that stays in L2, keeps the rows the next band shares, and runs the depthwise
//! layer on the band; for the largest maps it also projects the depthwise rows (the
//! block's last 1x1 convolution) while they are in cache.

use super::depthwise::{InputRows, Layer};
use super::matmul::{multiply, Finish, PackedMatrix};
use super::{FeatureMap, Pads};
use crate::team;
use std::cell::RefCell;

/// Floats of expanded rows a band holds at most: a quarter of a 1 MiB L2 (half of a
/// 512 KiB one), leaving room for the output rows and the weights.
const BAND_FLOATS: usize = 64 * 1024;

thread_local! {
    /// Each worker's band of expanded rows and its depthwise rows, reused across tasks
    /// and layers.
    static BAND: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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

/// A projection (1x1 convolution) applied to the depthwise layer's output rows while
/// they are in cache, with the block's residual.
pub struct Projection<'a> {
    /// `hidden x out`, packed.
    pub weight: &'a PackedMatrix,
    pub bias: &'a [f32],
    pub clamp: Option<(f32, f32)>,
    /// Adds the block's input (same size as the output) before the clamp.
    pub residual: bool,
}

/// `depthwise(clamp(x * expansion + bias))`, the same values as [`super::conv2d`]
/// followed by [`super::depthwise_conv2d`] without the expanded map.
///
/// # Panics
/// When the weights do not fit `x` or each other (a bug in the caller: models check
/// shapes when they load).
pub fn expand_depthwise(x: &FeatureMap, e: &Expansion, d: &DepthwiseSpec) -> FeatureMap {
    bottleneck(x, Some(e), d, None)
}

/// A whole inverted bottleneck, `project(depthwise(expand(x))) [+ x]`, in one pass over
/// bands of rows: neither the expanded nor the depthwise map is ever written whole (at
/// 112x112 and 56x56 pixels they are 1.2-1.8 MB, written and read back from beyond
/// L2: Lite0's first projection ran no faster on two threads than on one).
///
/// # Panics
/// When the weights do not fit `x` or each other, or a residual does not fit the
/// output (a bug in the caller: models check shapes when they load).
pub fn inverted_bottleneck(
    x: &FeatureMap,
    e: Option<&Expansion>,
    d: &DepthwiseSpec,
    p: &Projection,
) -> FeatureMap {
    bottleneck(x, e, d, Some(p))
}

fn bottleneck(
    x: &FeatureMap,
    e: Option<&Expansion>,
    d: &DepthwiseSpec,
    p: Option<&Projection>,
) -> FeatureMap {
    let hidden = e.map_or(x.channels, |e| e.weight.cols());
    if let Some(e) = e {
        assert_eq!(
            e.weight.rows(),
            x.channels,
            "expansion does not fit the input"
        );
        assert_eq!(e.bias.len(), hidden, "expansion bias does not fit");
    }
    assert_eq!(
        d.weight.len(),
        d.kernel * d.kernel * hidden,
        "depthwise weights do not fit"
    );
    assert_eq!(d.bias.len(), hidden, "depthwise bias does not fit");
    let (h, w) = (x.height, x.width);
    let (oh, ow) = d.pads.output_size(h, w, d.kernel, d.stride);
    let channels = match p {
        Some(p) => {
            assert_eq!(p.weight.rows(), hidden, "projection does not fit");
            assert_eq!(
                p.bias.len(),
                p.weight.cols(),
                "projection bias does not fit"
            );
            if p.residual {
                assert_eq!(
                    (h, w, x.channels),
                    (oh, ow, p.weight.cols()),
                    "residual does not fit the output"
                );
            }
            p.weight.cols()
        }
        None => hidden,
    };
    let layer = Layer::new(d.weight, d.bias, (d.kernel, d.stride), d.pads, d.clamp);
    // Output rows per band: as many as fit their expanded input rows in BAND_FLOATS
    // (without an expansion, their depthwise rows).
    let band_rows = match e {
        Some(_) => (BAND_FLOATS / (w * hidden)).saturating_sub(d.kernel) / d.stride + 1,
        None => BAND_FLOATS / (ow * hidden),
    }
    .max(1);
    // Contiguous shares of each image's rows, a few per thread so that they balance;
    // each share's first band expands the rows it shares with the previous one again.
    let share = oh.div_ceil(2 * team::threads()).max(band_rows);
    let out_row = ow * channels;
    let mut out = super::buffers::take(x.batch * oh * out_row);
    // (image, its first row, the output rows): every image's shares at once.
    let shares: Vec<(&[f32], usize, &mut [f32])> = out
        .chunks_mut(oh * out_row)
        .zip(x.data.chunks(h * w * x.channels))
        .flat_map(|(out, image)| {
            out.chunks_mut(share * out_row)
                .enumerate()
                .map(move |(i, out)| (image, i * share, out))
        })
        .collect();
    team::for_each(shares, |(image, first, out)| {
        let rows = first..first + out.len() / out_row;
        let image = InputRows {
            data: image,
            first_row: 0,
            height: h,
            width: w,
            channels: x.channels,
        };
        let share = Share {
            image,
            e,
            layer: &layer,
            kernel: d.kernel,
            stride: d.stride,
            pad_top: d.pads.top,
            p,
            out_width: ow,
        };
        BAND.with_borrow_mut(|(band, depthwise_rows)| {
            share.run(rows, band_rows, band, depthwise_rows, out)
        })
    });
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels,
        data: out,
    }
}

/// One image's layers, for a share of its output rows.
struct Share<'a> {
    /// The image's input map.
    image: InputRows<'a>,
    e: Option<&'a Expansion<'a>>,
    layer: &'a Layer<'a>,
    kernel: usize,
    stride: usize,
    pad_top: usize,
    p: Option<&'a Projection<'a>>,
    out_width: usize,
}

impl Share<'_> {
    /// Output rows `rows` into `out`, `band_rows` at a time, through `band` (expanded
    /// input rows) and `depthwise_rows` (the depthwise layer's rows, when projected).
    fn run(
        &self,
        rows: std::ops::Range<usize>,
        band_rows: usize,
        band: &mut Vec<f32>,
        depthwise_rows: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let image = self.image;
        let hidden = self.e.map_or(image.channels, |e| e.weight.cols());
        let row_floats = image.width * hidden;
        let hidden_row = self.out_width * hidden;
        let out_row = out.len() / rows.len();
        // The expanded input rows `band` holds, from its start.
        let mut held = 0..0;
        for first in rows.clone().step_by(band_rows) {
            let chunk = first..(first + band_rows).min(rows.end);
            let expanded = match self.e {
                None => image,
                Some(e) => {
                    let needed = self.input_rows(chunk.clone(), image.height);
                    // Rows the previous band holds and this one needs move to the front
                    // (bands advance down the map, so `needed` never starts above `held`).
                    if held.end <= needed.start {
                        held = needed.start..needed.start;
                    } else {
                        let from = (needed.start - held.start) * row_floats;
                        band.copy_within(from..held.len() * row_floats, 0);
                        held = needed.start..held.end;
                    }
                    let band = super::scratch(band, needed.len() * row_floats);
                    let fresh = held.end..needed.end;
                    let finish = Finish {
                        bias: Some(e.bias),
                        residual: None,
                        clamp: e.clamp,
                    };
                    multiply(
                        &mut band[held.len() * row_floats..],
                        hidden,
                        &image.data[fresh.start * image.width * image.channels..],
                        image.channels,
                        fresh.len() * image.width,
                        e.weight,
                        finish,
                        1,
                    );
                    held = needed;
                    InputRows {
                        data: band,
                        first_row: held.start,
                        height: image.height,
                        width: image.width,
                        channels: hidden,
                    }
                }
            };
            let at = (chunk.start - rows.start) * out_row;
            let out = &mut out[at..at + chunk.len() * out_row];
            let Some(p) = self.p else {
                for (oy, out) in chunk.zip(out.chunks_exact_mut(out_row)) {
                    self.layer.output_row(expanded, oy, out);
                }
                continue;
            };
            let depthwise = super::scratch(depthwise_rows, chunk.len() * hidden_row);
            for (oy, row) in chunk.clone().zip(depthwise.chunks_exact_mut(hidden_row)) {
                self.layer.output_row(expanded, oy, row);
            }
            // The residual is the block's input, the output's size.
            let residual = p
                .residual
                .then(|| &image.data[chunk.start * out_row..chunk.end * out_row]);
            let finish = Finish {
                bias: Some(p.bias),
                residual,
                clamp: p.clamp,
            };
            let pixels = chunk.len() * self.out_width;
            multiply(
                out,
                out_row / self.out_width,
                depthwise,
                hidden,
                pixels,
                p.weight,
                finish,
                1,
            );
        }
    }

    /// The input rows that output rows `rows` of the depthwise layer read (inside the
    /// map).
    fn input_rows(&self, rows: std::ops::Range<usize>, height: usize) -> std::ops::Range<usize> {
        let first = (rows.start * self.stride).saturating_sub(self.pad_top);
        let end = ((rows.end - 1) * self.stride + self.kernel)
            .saturating_sub(self.pad_top)
            .min(height);
        first..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conv2d, depthwise_conv2d, ConvSpec};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 23) as f32 - 11.0) / 9.0)
            .collect()
    }

    #[test]
    fn equals_the_expansion_then_the_depthwise_layer() {
        crate::instruction_sets::on_every_one(
            "equals_the_expansion_then_the_depthwise_layer",
            || {
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
            },
        );
    }

    #[test]
    fn whole_bottlenecks_equal_their_layers_one_after_another() {
        crate::instruction_sets::on_every_one(
            "whole_bottlenecks_equal_their_layers_one_after_another",
            || {
                // (batch, h, w, in, hidden, out, kernel, stride, pads t/l/b/r, expansion,
                // residual): with and without the expansion, the residual, stride 2, bands of
                // one row (wide maps) and of many, output channels with a scalar tail.
                let cases = [
                    (1, 23, 17, 5, 24, 5, 3, 1, [1, 1, 1, 1], true, true),
                    (2, 20, 19, 8, 40, 12, 3, 2, [0, 0, 1, 1], true, false),
                    (1, 14, 200, 16, 96, 24, 3, 2, [0, 0, 1, 1], true, false),
                    (1, 30, 150, 32, 32, 16, 3, 1, [1, 1, 1, 1], false, false),
                    (2, 9, 11, 19, 19, 19, 5, 1, [2, 2, 2, 2], false, true),
                    (1, 40, 150, 6, 144, 6, 3, 1, [1, 1, 1, 1], true, true),
                ];
                for (i, (batch, h, w, cin, hidden, cout, k, s, p, expand, residual)) in
                    cases.into_iter().enumerate()
                {
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
                    let project_w = PackedMatrix::pack(&values(hidden * cout, i + 5), hidden, cout);
                    let project_b = values(cout, i + 6);
                    let pads = Pads {
                        top: p[0],
                        left: p[1],
                        bottom: p[2],
                        right: p[3],
                    };
                    let relu6 = Some((0.0, 6.0));
                    let pointwise = |clamp| ConvSpec {
                        kernel: 1,
                        stride: 1,
                        pads: Pads::default(),
                        clamp,
                    };
                    let expanded =
                        expand.then(|| conv2d(&x, &expand_w, &expand_b, &pointwise(relu6), None));
                    let depthwise = depthwise_conv2d(
                        expanded.as_ref().unwrap_or(&x),
                        &dw_w,
                        &dw_b,
                        (k, s),
                        pads,
                        relu6,
                    );
                    let want = conv2d(
                        &depthwise,
                        &project_w,
                        &project_b,
                        &pointwise(None),
                        residual.then_some(&x),
                    );
                    let expansion = Expansion {
                        weight: &expand_w,
                        bias: &expand_b,
                        clamp: relu6,
                    };
                    let got = inverted_bottleneck(
                        &x,
                        expand.then_some(&expansion),
                        &DepthwiseSpec {
                            weight: &dw_w,
                            bias: &dw_b,
                            kernel: k,
                            stride: s,
                            pads,
                            clamp: relu6,
                        },
                        &Projection {
                            weight: &project_w,
                            bias: &project_b,
                            clamp: None,
                            residual,
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
                    assert!(diff < 1e-3, "case {i}: max diff {diff}");
                }
            },
        );
    }
}
