//! A small inverted bottleneck shared among threads by its hidden channels.
//!
//! At 14x14 and 7x7 pixels (batch 1) each of a block's three layers is a job of its
//! own for the pass's team: 49-196 rows, too few to share by rows without a tail, so
//! the 7x7 products split their columns, and the part written to scratch was then
//! copied in by one thread while the other waited (13-14 µs before each depthwise
//! layer); each of the three jobs also ended with one thread waiting for the other.
//! Here each thread takes a share of the hidden channels through all three layers:
//! its expansion columns, its depthwise channels and the projection's matching rows
//! (a partial sum of the output), all in its own cache; then the partial sums are added
//! up, with bias, residual and clamp, row by row among the threads. The weights are
//! streamed once, a share by each thread, as before.

use super::depthwise::{InputRows, Layer};
use super::expand_depthwise::{DepthwiseSpec, Expansion, Projection};
use super::matmul::{multiply, multiply_part, Finish, PackedMatrix, PANEL};
use super::FeatureMap;
use crate::team;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// Each worker's expanded map and depthwise map of its share, reused across blocks.
    static SHARE_MAPS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Channels per step of a share's size: one AVX-512 vector (the depthwise kernel's
/// unit). Shares of whole weight panels (32) left Lite0's 480 and 672 channels split
/// 7:8 and 10:11 panels, one thread waiting for the other at the end of each block.
const CHANNEL_STEP: usize = 16;

/// The hidden channels of a block cut into shares, with each share's expansion
/// (columns) and depthwise weights (tap-major) packed on their own: a copy of the
/// block's first two layers (the projection is read in place, by rows).
#[derive(Debug, Clone)]
pub struct ChannelShares {
    shares: Vec<Share>,
    /// The number of shares asked for (more than there are steps of channels).
    asked: usize,
}

#[derive(Debug, Clone)]
struct Share {
    channels: Range<usize>,
    /// `in x channels.len()`, and its bias.
    expansion: PackedMatrix,
    expansion_bias: Vec<f32>,
    /// `taps x channels.len()`.
    depthwise: Vec<f32>,
}

impl ChannelShares {
    /// `count` shares (fewer when there are fewer steps of channels) of the hidden
    /// channels of `expansion` (`in x hidden`, with `expansion_bias`), whose depthwise
    /// weights are `tap_major` (`taps x hidden`).
    ///
    /// # Panics
    /// When the weights do not fit each other.
    pub fn new(
        expansion: &PackedMatrix,
        expansion_bias: &[f32],
        tap_major: &[f32],
        count: usize,
    ) -> Self {
        let (inputs, hidden) = (expansion.rows(), expansion.cols());
        assert_eq!(expansion_bias.len(), hidden, "expansion bias does not fit");
        assert!(
            hidden > 0 && tap_major.len().is_multiple_of(hidden),
            "depthwise weights do not fit"
        );
        let steps = hidden.div_ceil(CHANNEL_STEP);
        let asked = count;
        let count = count.clamp(1, steps);
        let cut = |i: usize| (steps * i / count * CHANNEL_STEP).min(hidden);
        let matrix = expansion.unpack();
        let shares = (0..count)
            .map(|i| {
                let channels = cut(i)..cut(i + 1);
                let columns: Vec<f32> = matrix
                    .chunks_exact(hidden)
                    .flat_map(|row| &row[channels.clone()])
                    .copied()
                    .collect();
                let depthwise = tap_major
                    .chunks_exact(hidden)
                    .flat_map(|tap| &tap[channels.clone()])
                    .copied()
                    .collect();
                Share {
                    expansion: PackedMatrix::pack(&columns, inputs, channels.len()),
                    expansion_bias: expansion_bias[channels.clone()].to_vec(),
                    channels,
                    depthwise,
                }
            })
            .collect();
        Self { shares, asked }
    }

    /// The `count` these shares were made for.
    pub fn made_for(&self) -> usize {
        self.asked
    }
}

/// `project(depthwise(expand(x))) [+ x]`, the same values as
/// [`super::inverted_bottleneck`] (up to the order of the projection's additions),
/// each share of `shares` on a thread of its own. The expansion's and the depthwise
/// layer's weights are read from `shares` (made from those of `e` and `d`).
///
/// # Panics
/// When the weights do not fit `x` or each other, or `shares` were made for another
/// block (a bug in the caller: models check shapes when they load).
pub fn inverted_bottleneck_by_channels(
    x: &FeatureMap,
    e: &Expansion,
    d: &DepthwiseSpec,
    p: &Projection,
    shares: &ChannelShares,
) -> FeatureMap {
    let hidden = e.weight.cols();
    assert_eq!(
        e.weight.rows(),
        x.channels,
        "expansion does not fit the input"
    );
    assert_eq!(e.bias.len(), hidden, "expansion bias does not fit");
    assert_eq!(d.bias.len(), hidden, "depthwise bias does not fit");
    assert_eq!(p.weight.rows(), hidden, "projection does not fit");
    assert!(
        shares.shares.last().map(|s| s.channels.end) == Some(hidden)
            && shares
                .shares
                .iter()
                .all(|s| s.expansion.rows() == x.channels),
        "shares made for another block"
    );
    let (h, w) = (x.height, x.width);
    let (oh, ow) = d.pads.output_size(h, w, d.kernel, d.stride);
    let n = p.weight.cols();
    assert_eq!(p.bias.len(), n, "projection bias does not fit");
    if p.residual {
        assert_eq!(
            (h, w, x.channels),
            (oh, ow, n),
            "residual does not fit the output"
        );
    }
    let (pixels_in, pixels_out) = (x.batch * h * w, x.batch * oh * ow);
    let mut sums: Vec<Vec<f32>> = shares
        .shares
        .iter()
        .map(|_| super::buffers::take(pixels_out * n))
        .collect();
    let work: Vec<(&Share, &mut Vec<f32>)> = shares.shares.iter().zip(sums.iter_mut()).collect();
    team::for_each(work, |(share, sum)| {
        let c = share.channels.len();
        SHARE_MAPS.with_borrow_mut(|(expanded, depthwise)| {
            let expanded = super::scratch(expanded, pixels_in * c);
            let finish = Finish {
                bias: Some(&share.expansion_bias),
                residual: None,
                clamp: e.clamp,
            };
            let weight = &share.expansion;
            multiply(
                expanded, c, &x.data, x.channels, pixels_in, weight, finish, 1,
            );
            let bias = &d.bias[share.channels.clone()];
            let layer = Layer::new(
                &share.depthwise,
                bias,
                (d.kernel, d.stride),
                d.pads,
                d.clamp,
            );
            let depthwise = super::scratch(depthwise, pixels_out * c);
            let images = expanded.chunks_exact(h * w * c);
            for (image, out) in images.zip(depthwise.chunks_exact_mut(oh * ow * c)) {
                let input = InputRows {
                    data: image,
                    first_row: 0,
                    height: h,
                    width: w,
                    channels: c,
                };
                for (oy, row) in out.chunks_exact_mut(ow * c).enumerate() {
                    layer.output_row(input, oy, row);
                }
            }
            let projection = (0..n.div_ceil(PANEL), share.channels.clone());
            let none = Finish::default();
            multiply_part(sum, n, depthwise, c, pixels_out, p.weight, projection, none);
        });
    });
    let mut out = super::buffers::take(pixels_out * n);
    team::for_each(team::parts_mut(&mut out, n), |(first_row, rows)| {
        let at = first_row * n..first_row * n + rows.len();
        let residual = p.residual.then(|| &x.data[at.clone()]);
        add_up(rows, &sums, at, p.bias, residual, p.clamp);
    });
    sums.into_iter().for_each(super::buffers::recycle);
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: n,
        data: out,
    }
}

/// `out = clamp(sum of sums[at] + bias [+ residual])`, `bias` repeating every row.
fn add_up(
    out: &mut [f32],
    sums: &[Vec<f32>],
    at: Range<usize>,
    bias: &[f32],
    residual: Option<&[f32]>,
    clamp: Option<(f32, f32)>,
) {
    for (row, out) in out.chunks_exact_mut(bias.len()).enumerate() {
        let cols = at.start + row * bias.len()..at.start + (row + 1) * bias.len();
        out.copy_from_slice(bias);
        for sum in sums {
            out.iter_mut()
                .zip(&sum[cols.clone()])
                .for_each(|(o, s)| *o += s);
        }
        if let Some(residual) = residual {
            let r = &residual[row * bias.len()..][..bias.len()];
            out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
        }
        if let Some((lo, hi)) = clamp {
            out.iter_mut().for_each(|o| *o = o.max(lo).min(hi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conv2d, depthwise_conv2d, ConvSpec, PackedMatrix, Pads};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 23) as f32 - 11.0) / 9.0)
            .collect()
    }

    #[test]
    fn equals_the_three_layers_one_after_another() {
        crate::instruction_sets::on_every_one("equals_the_three_layers_one_after_another", || {
            // (batch, h, w, in, hidden, out, kernel, stride, pads t/l/b/r, residual, shares):
            // Lite0's 7x7 and 14x14 blocks, stride 2 with TF "SAME" padding, a narrow last
            // panel (200 hidden channels: 6 panels and 8), a scalar channel tail, more
            // shares than panels, a batch of two.
            let cases = [
                (1, 7, 7, 192, 1152, 192, 5, 1, [2, 2, 2, 2], true, 2),
                (1, 14, 14, 112, 672, 112, 5, 1, [2, 2, 2, 2], true, 2),
                (1, 14, 14, 80, 480, 112, 5, 2, [1, 1, 2, 2], false, 3),
                (2, 9, 11, 19, 200, 21, 3, 1, [1, 1, 1, 1], false, 2),
                (1, 5, 6, 7, 40, 7, 3, 1, [1, 1, 1, 1], true, 4),
                (1, 4, 4, 3, 24, 5, 3, 1, [1, 1, 1, 1], false, 1),
            ];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for (i, (batch, h, w, cin, hidden, cout, k, s, p, residual, count)) in
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
                let expanded = conv2d(&x, &expand_w, &expand_b, &pointwise(relu6), None);
                let depthwise = depthwise_conv2d(&expanded, &dw_w, &dw_b, (k, s), pads, relu6);
                let want = conv2d(
                    &depthwise,
                    &project_w,
                    &project_b,
                    &pointwise(Some((-4.0, 50.0))),
                    residual.then_some(&x),
                );
                let shares = ChannelShares::new(&expand_w, &expand_b, &dw_w, count);
                let block = || {
                    inverted_bottleneck_by_channels(
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
                            clamp: relu6,
                        },
                        &Projection {
                            weight: &project_w,
                            bias: &project_b,
                            clamp: Some((-4.0, 50.0)),
                            residual,
                        },
                        &shares,
                    )
                };
                // Shared through rayon, and through a pass's team.
                let outside = pool.install(block);
                let inside = pool.install(|| team::run_pass(block));
                for (how, got) in [("rayon", outside), ("team", inside)] {
                    assert_eq!(
                        (got.batch, got.height, got.width, got.channels),
                        (want.batch, want.height, want.width, want.channels),
                        "case {i} {how}"
                    );
                    let diff = got
                        .data
                        .iter()
                        .zip(&want.data)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                        .fold(0f32, f32::max);
                    assert!(diff < 1e-4, "case {i} {how}: max relative diff {diff}");
                }
            }
        });
    }
}
