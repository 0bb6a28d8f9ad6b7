//! Dense convolution: unfold a tile of output pixels, multiply by the packed weights,
//! finish (bias, residual, activation) while the tile is in cache.

use super::matmul::{multiply, Finish, PackedMatrix, ROW_BLOCK};
use super::{FeatureMap, Pads};
use crate::team;

/// A dense convolution's geometry and fused activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    pub kernel: usize,
    pub stride: usize,
    pub pads: Pads,
    /// Output clamped to `[lo, hi]` after bias and residual (ReLU, ReLU6).
    pub clamp: Option<(f32, f32)>,
}

/// A tile's unfolded input and output together: half of a core's 1 MiB L2, so they and
/// the packed weights streaming past them mostly stay there.
const TILE_FLOATS: usize = 128 * 1024;
/// Fewer rows than this per tile and the per-tile overheads (the weights streamed again
/// from L2/L3, the parallel hand-off) dominate.
const MIN_TILE_ROWS: usize = 64;

/// `act(conv(x, weight) + bias [+ residual])`.
///
/// `weight` is the `(k*k*in) x out` matrix whose row `(ky*k + kx)*in + ci` holds input
/// channel `ci`'s tap `(ky, kx)` for every output, packed.
///
/// # Panics
/// When the weights, bias or residual do not fit `x` and `spec` (a bug in the caller:
/// models check shapes when they load).
pub fn conv2d(
    x: &FeatureMap,
    weight: &PackedMatrix,
    bias: &[f32],
    spec: &ConvSpec,
    residual: Option<&FeatureMap>,
) -> FeatureMap {
    let (cin, cout, k) = (x.channels, bias.len(), spec.kernel);
    let depth = k * k * cin;
    assert_eq!(
        (weight.rows(), weight.cols()),
        (depth, cout),
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
    // Bias, residual and activation applied as each result leaves the registers.
    let finish = |out: &mut [f32], first_row: usize, lhs: &[f32], threads| {
        let n = out.len() / cout;
        let finish = Finish {
            bias: Some(bias),
            residual: residual.map(|r| &r.data[first_row * cout..(first_row + n) * cout]),
            clamp: spec.clamp,
        };
        multiply(out, cout, lhs, depth, n, weight, finish, threads);
    };

    let mut out = super::buffers::take(rows * cout);
    let threads = team::threads();
    let tiles = tile_rows(rows, depth + cout, threads);
    if tiles.len() == 1 {
        // Too few pixels for tiles (the last layers at batch 1): one product, its rows
        // shared among the threads.
        if direct {
            finish(&mut out, 0, &x.data, threads);
        } else {
            let mut unfolded = vec![0.0; rows * depth];
            unfold(x, spec, (oh, ow), 0..rows, &mut unfolded);
            finish(&mut out, 0, &unfolded, threads);
        }
    } else {
        let outputs = super::split_lengths(&mut out, tiles.iter().map(|t| t.len() * cout));
        let tiles: Vec<(usize, &mut [f32])> = tiles.iter().map(|t| t.start).zip(outputs).collect();
        team::for_each(tiles, |(first, out)| {
            let n = out.len() / cout;
            if direct {
                finish(out, first, &x.data[first * cin..(first + n) * cin], 1);
            } else {
                UNFOLDED.with_borrow_mut(|unfolded| {
                    let unfolded = super::scratch(unfolded, n * depth);
                    unfold(x, spec, (oh, ow), first..first + n, unfolded);
                    finish(out, first, unfolded, 1);
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

thread_local! {
    /// Each worker's unfolded tile, reused across tiles and layers.
    static UNFOLDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The tiles' rows; a single tile means "one product" (too few rows to share out: the
/// product shares them among the threads itself). Otherwise tiles small enough that a
/// tile's input and output (`floats_per_row` together) stay in L2, enough of them that
/// every thread stays busy to the end, as many for each thread, and sizes within one
/// register block of each other. (Tiles of one size leave the last one short: 784 rows
/// in tiles of 108 give two threads 4 and 3.3 tiles.)
fn tile_rows(rows: usize, floats_per_row: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    if rows < 2 * threads * MIN_TILE_ROWS {
        #[allow(clippy::single_range_in_vec_init)] // one tile: all the rows
        return vec![0..rows];
    }
    let by_cache = rows.div_ceil((TILE_FLOATS / floats_per_row).max(1));
    let by_balance = if threads > 1 { 4 * threads } else { 1 };
    let most = rows / MIN_TILE_ROWS;
    let mut count = by_cache.max(by_balance).next_multiple_of(threads);
    if count > most {
        count = most / threads * threads;
    }
    // Whole register blocks: a tile's last rows would otherwise run a slower, narrower
    // block.
    let blocks = rows.div_ceil(ROW_BLOCK);
    let start = |t: usize| (blocks * t / count * ROW_BLOCK).min(rows);
    (0..count).map(|t| start(t)..start(t + 1)).collect()
}

/// The input windows of output pixels `rows` (over the whole batch), one row of
/// `k*k*in` values each (zeros where the window leaves the map), into `unfolded`.
fn unfold(
    x: &FeatureMap,
    spec: &ConvSpec,
    (oh, ow): (usize, usize),
    rows: std::ops::Range<usize>,
    unfolded: &mut [f32],
) {
    let (k, cin, stride) = (spec.kernel, x.channels, spec.stride);
    let (depth, run) = (k * k * cin, k * cin);
    // Output columns whose window rows lie wholly inside the map: each is one
    // contiguous run of `k` pixels.
    let inside_end = (x.width + spec.pads.left)
        .checked_sub(k)
        .map_or(0, |room| (room / stride + 1).min(ow));
    let inside = spec.pads.left.div_ceil(stride).min(inside_end)..inside_end;
    // One output row (of one image) at a time: a division per pixel cost more than
    // copying a 3-channel stem's window.
    let mut r = rows.start;
    while r < rows.end {
        let (b, pixel) = (r / (oh * ow), r % (oh * ow));
        let (oy, first) = (pixel / ow, pixel % ow);
        let columns = first..ow.min(first + rows.end - r);
        let at = (r - rows.start) * depth;
        let windows = &mut unfolded[at..at + columns.len() * depth];
        r += columns.len();
        for ky in 0..k {
            let iy = (oy * stride + ky) as isize - spec.pads.top as isize;
            if iy < 0 || iy >= x.height as isize {
                for window in windows.chunks_exact_mut(depth) {
                    window[ky * run..(ky + 1) * run].fill(0.0);
                }
                continue;
            }
            let row_start = (b * x.height + iy as usize) * x.width * cin;
            let row = &x.data[row_start..row_start + x.width * cin];
            let runs = WindowRuns {
                row,
                windows,
                depth,
                offset: ky * run,
                first_column: columns.start,
                step: stride * cin,
                padding: spec.pads.left * cin,
            };
            // The runs of a 3-channel stem (3x3: 9 floats, 7x7: 21) copied as arrays
            // of known length: `memcpy` calls took half its unfolding.
            let middle = columns.start.max(inside.start)..columns.end.min(inside.end);
            match run {
                9 => runs.copy::<9>(middle.clone()),
                21 => runs.copy::<21>(middle.clone()),
                _ => runs.copy_any(middle.clone(), run),
            }
            let borders = (columns.start..middle.start.max(columns.start))
                .chain(middle.end.max(columns.start)..columns.end);
            for ox in borders {
                let window = &mut windows[(ox - columns.start) * depth..][ky * run..(ky + 1) * run];
                for (kx, dst) in window.chunks_exact_mut(cin).enumerate() {
                    let ix = (ox * stride + kx) as isize - spec.pads.left as isize;
                    if ix < 0 || ix >= x.width as isize {
                        dst.fill(0.0);
                    } else {
                        dst.copy_from_slice(&row[ix as usize * cin..(ix as usize + 1) * cin]);
                    }
                }
            }
        }
    }
}

/// One kernel row of the unfolded windows of consecutive output columns whose
/// windows lie inside the map along it.
struct WindowRuns<'a, 'b> {
    /// The input row.
    row: &'a [f32],
    /// The unfolded windows, `depth` floats each, from output column `first_column`.
    windows: &'b mut [f32],
    depth: usize,
    /// Where this kernel row's run starts in a window.
    offset: usize,
    first_column: usize,
    /// Floats of input between the runs of consecutive output columns (stride x in).
    step: usize,
    /// Floats of padding before the row (column `ox`'s run starts at `ox * step -
    /// padding`).
    padding: usize,
}

impl WindowRuns<'_, '_> {
    fn copy<const RUN: usize>(self, columns: std::ops::Range<usize>) {
        for ox in columns {
            let src = ox * self.step - self.padding;
            let dst = (ox - self.first_column) * self.depth + self.offset;
            let dst: &mut [f32; RUN] = (&mut self.windows[dst..dst + RUN])
                .try_into()
                .expect("RUN values");
            *dst = self.row[src..src + RUN].try_into().expect("RUN values");
        }
    }

    fn copy_any(self, columns: std::ops::Range<usize>, run: usize) {
        for ox in columns {
            let src = ox * self.step - self.padding;
            let dst = (ox - self.first_column) * self.depth + self.offset;
            self.windows[dst..dst + run].copy_from_slice(&self.row[src..src + run]);
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

    /// Candle's `(out, in, k, k)` weights as this engine's packed `(k*k*in) x out`.
    pub(crate) fn pack(w: &Tensor) -> PackedMatrix {
        let (out, cin, k, _) = w.dims4().unwrap();
        let matrix: Vec<f32> = w
            .permute((2, 3, 1, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        PackedMatrix::pack(&matrix, k * k * cin, out)
    }

    #[test]
    fn matches_candles_convolution_on_random_inputs() {
        crate::instruction_sets::on_every_one(
            "matches_candles_convolution_on_random_inputs",
            || {
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
                    // 3-channel stems (their own window copies) over several tiles, which start
                    // part-way along an output row.
                    (2, 3, 70, 90, 8, 3, 2, pads(0, 0, 1, 1), relu, false),
                    (1, 3, 61, 75, 8, 7, 2, pads(3, 3, 3, 3), None, false),
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
                    let r = with_residual
                        .then(|| Tensor::randn(0f32, 1f32, (n, cout, oh, ow), cpu).unwrap());
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
                    let diff = crate::max_abs_diff(&got, &want);
                    assert!(diff < 1e-4, "case {i}: max diff {diff}");
                }
            },
        );
    }

    #[test]
    fn tiles_cover_every_row_and_keep_threads_busy() {
        assert_eq!(
            tile_rows(196, 4608, 2),
            vec![0..196],
            "too few rows: one product"
        );
        assert_eq!(tile_rows(100, 27, 1), vec![0..100]);
        // (rows, floats per row, threads, tiles)
        for (rows, floats, threads, count) in [
            (12544, 27, 2, 8),      // cheap rows: 4 tiles per thread
            (3136, 640, 2, 16),     // costly rows: bounded by cache
            (784, 1280, 2, 8),      // 65.3 register blocks in 8 tiles
            (1000, 1 << 20, 2, 14), // at least MIN_TILE_ROWS each
            (12544, 27, 1, 3),      // one thread: bounded by cache
        ] {
            let tiles = tile_rows(rows, floats, threads);
            assert_eq!(tiles.len(), count, "{rows} rows, {floats} floats per row");
            assert_eq!(tiles.len() % threads, 0, "as many tiles for each thread");
            assert_eq!(tiles[0].start, 0);
            assert_eq!(tiles.last().unwrap().end, rows);
            for (a, b) in tiles.iter().zip(&tiles[1..]) {
                assert_eq!(a.end, b.start, "contiguous");
                assert_eq!(a.start % ROW_BLOCK, 0, "whole register blocks");
                assert!(a.len() >= MIN_TILE_ROWS);
                assert!(a.len().abs_diff(b.len()) <= ROW_BLOCK, "even sizes");
            }
            let bound = (TILE_FLOATS / floats).max(MIN_TILE_ROWS) + ROW_BLOCK;
            assert!(tiles.iter().all(|t| t.len() <= bound), "fits the cache");
        }
    }
}
