//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3).
//!
//! Each 4x4 block of outputs comes from a 6x6 window of input. Transformed, the window
//! and the kernel meet in 36 element-wise products instead of 144 multiply-adds per
//! channel pair: over all channels, 36 matrix products of `tiles x in` by `in x out`
//! (the transformed weights, packed at load) replace the unfolded `pixels x 9in` by
//! `9in x out` one, 4x fewer multiplications, for the cost of transforming input and
//! output (linear in the channels, not in their product). The points 0, +-1, +-2 keep
//! fp32 rounding small: within 5e-6 of the largest output against the direct
//! convolution in the tests (up to 64 channels).

use super::matmul::{lanes, load, multiply, store, Finish, PackedMatrix};
use super::{FeatureMap, Pads};
use crate::team;
use pulp::{Simd, WithSimd};

/// Outputs per tile side, input window side. The transforms fill their arrays of
/// vectors in plain loops: built with `core::array::from_fn`, whose generic helpers the
/// compiler may leave out of line, the SIMD arithmetic ran in functions compiled without
/// AVX-512, one call per intrinsic (ResNet-18 at half speed after an unrelated change).
const OUT: usize = 4;
const WINDOW: usize = OUT + 2;
const POINTS: usize = WINDOW * WINDOW;
/// Transformed input and products of one group of tiles kept together: about 3/4 of a
/// core's L2.
const GROUP_FLOATS: usize = 192 * 1024;

/// G, the kernel transform (6 x 3).
const G: [[f32; 3]; WINDOW] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A 3x3 convolution's weights in the transformed domain: 36 packed `in x out` matrices.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    points: Vec<PackedMatrix>,
}

impl WinogradWeights {
    /// From the direct convolution's `(3*3*in) x out` matrix (row `(ky*3 + kx)*in + ci`).
    pub fn new(direct: &PackedMatrix) -> Self {
        let (rows, cout) = (direct.rows(), direct.cols());
        assert_eq!(rows % 9, 0, "not a 3x3 convolution's weights");
        let cin = rows / 9;
        let g = direct.unpack();
        let mut points = vec![vec![0f32; cin * cout]; POINTS];
        for ci in 0..cin {
            for co in 0..cout {
                let tap = |ky: usize, kx: usize| g[((ky * 3 + kx) * cin + ci) * cout + co];
                // U = G g G^T
                for a in 0..WINDOW {
                    let row: [f32; 3] =
                        std::array::from_fn(|kx| (0..3).map(|ky| G[a][ky] * tap(ky, kx)).sum());
                    for b in 0..WINDOW {
                        let u: f32 = (0..3).map(|kx| row[kx] * G[b][kx]).sum();
                        points[a * WINDOW + b][ci * cout + co] = u;
                    }
                }
            }
        }
        Self {
            points: points
                .iter()
                .map(|m| PackedMatrix::pack(m, cin, cout))
                .collect(),
        }
    }

    pub fn in_channels(&self) -> usize {
        self.points[0].rows()
    }

    pub fn out_channels(&self) -> usize {
        self.points[0].cols()
    }
}

/// Whether an `oh x ow` output is worth transforming: the 36 products must amortise
/// streaming the 36 weight matrices, and tiles at the border waste their outside part
/// (a 7x7 map gets 8x8 of tiles). Cost model: one tile costs about as much as 4 direct
/// pixels, the weights about as much as 96 pixels.
pub fn worth_it(oh: usize, ow: usize) -> bool {
    let tiles = oh.div_ceil(OUT) * ow.div_ceil(OUT);
    4 * tiles + 96 < oh * ow
}

/// `clamp(conv3x3(x) + bias [+ residual])`, stride 1, padding `pads`.
///
/// # Panics
/// When the weights, bias or residual do not fit `x` (a bug in the caller).
pub fn winograd_conv3x3(
    x: &FeatureMap,
    weights: &WinogradWeights,
    bias: &[f32],
    pads: Pads,
    clamp: Option<(f32, f32)>,
    residual: Option<&FeatureMap>,
) -> FeatureMap {
    let (cin, cout) = (weights.in_channels(), weights.out_channels());
    assert_eq!(x.channels, cin, "weights do not fit the input's channels");
    assert_eq!(bias.len(), cout, "bias does not fit the weights");
    let (oh, ow) = pads.output_size(x.height, x.width, 3, 1);
    if let Some(r) = residual {
        assert_eq!(
            (r.batch, r.height, r.width, r.channels),
            (x.batch, oh, ow, cout),
            "residual does not fit the output"
        );
    }
    let (tiles_y, tiles_x) = (oh.div_ceil(OUT), ow.div_ceil(OUT));
    // Work is shared out by rows of tiles (each writes whole output rows, contiguous
    // in NHWC). A group holds enough tiles to be worth streaming the 36 weight matrices
    // once (its transformed data at least as large as they are: deep layers have few
    // pixels and large weights), and no more than fit the cache unless that minimum
    // asks for it; then enough groups for every thread if there are tiles to spare.
    let tile_rows = x.batch * tiles_y;
    let threads = team::threads();
    let by_cache = GROUP_FLOATS / (POINTS * (cin + cout));
    let by_weights = cin * cout / (cin + cout);
    let by_balance = (tile_rows * tiles_x).div_ceil(2 * threads);
    let group_tiles = by_cache.max(by_weights).min(by_balance.max(by_weights));
    let rows_per_group = (group_tiles / tiles_x).clamp(1, tile_rows);
    // Several groups: a multiple of the threads, sizes within one row of each other
    // (5 equal groups on 2 threads would leave one idle a fifth of the time).
    let mut groups_count = tile_rows.div_ceil(rows_per_group);
    if groups_count > 1 {
        groups_count = groups_count.next_multiple_of(threads).min(tile_rows);
    }
    let group_units = |g: usize| tile_rows * g / groups_count..tile_rows * (g + 1) / groups_count;

    let mut out = super::buffers::take(x.batch * oh * ow * cout);
    // The output of a range of tile rows: a tile row's outputs are rows
    // [4ty, min(4ty + 4, oh)) of its image, contiguous in NHWC.
    let output_floats = |units: std::ops::Range<usize>| {
        units
            .map(|u| OUT.min(oh - (u % tiles_y) * OUT))
            .sum::<usize>()
            * ow
            * cout
    };
    let outputs = super::split_lengths(
        &mut out,
        (0..groups_count).map(|g| output_floats(group_units(g))),
    );
    let groups: Vec<_> = (0..groups_count).map(group_units).zip(outputs).collect();
    let geometry = Geometry {
        x,
        pads,
        oh,
        ow,
        tiles_y,
    };
    let arch = crate::arch();
    team::for_each(groups, |(units, out)| {
        let tiles: Vec<Tile> = units
            .clone()
            .flat_map(|u| (0..tiles_x).map(move |tx| (u, tx)))
            .map(|(u, tx)| geometry.tile(u, tx))
            .collect();
        let n = tiles.len();
        // One group (a small map at batch 1) is shared by the threads: its transforms
        // by rows of tiles (each writes whole output rows), its products by points (run
        // alone, the transforms of 16-49 tiles leave the second thread short of work).
        let shared = groups_count == 1 && team::threads() > 1;
        let parts = if shared {
            team::threads().min(units.len())
        } else {
            1
        };
        let rows = |i: usize| {
            let r = |i: usize| units.start + units.len() * i / parts;
            r(i)..r(i + 1)
        };
        let part_tiles = |i: usize| {
            let rows = rows(i);
            (rows.start - units.start) * tiles_x..(rows.end - units.start) * tiles_x
        };
        GROUP.with_borrow_mut(|(v, m)| {
            let v = super::scratch(v, POINTS * n * cin);
            let m = super::scratch(m, POINTS * n * cout);
            let mut inputs: Vec<_> = (0..parts)
                .map(|i| (i, Vec::with_capacity(POINTS)))
                .collect();
            for mut point in v.chunks_mut(n * cin) {
                for (i, part) in inputs.iter_mut() {
                    let (head, tail) = point.split_at_mut(part_tiles(*i).len() * cin);
                    part.push(head);
                    point = tail;
                }
            }
            team::for_each(inputs, |(i, v)| {
                arch.dispatch(InputTransform {
                    geometry: &geometry,
                    tiles: &tiles[part_tiles(i)],
                    v,
                })
            });
            let product = |(point, m): (usize, &mut [f32])| {
                let v = &v[point * n * cin..];
                multiply(
                    m,
                    cout,
                    v,
                    cin,
                    n,
                    &weights.points[point],
                    Finish::default(),
                    1,
                );
            };
            if shared {
                team::for_each(m.chunks_mut(n * cout).enumerate().collect(), product);
            } else {
                m.chunks_mut(n * cout).enumerate().for_each(product);
            }
            let m = &*m;
            let outputs = super::split_lengths(out, (0..parts).map(|i| output_floats(rows(i))));
            team::for_each(outputs.into_iter().enumerate().collect(), |(i, out)| {
                let first_output = geometry.tile(rows(i).start, 0).output_index(ow, oh);
                arch.dispatch(OutputTransform {
                    geometry: &geometry,
                    tiles: &tiles,
                    range: part_tiles(i),
                    m,
                    bias,
                    clamp,
                    residual: residual.map(|r| &r.data[first_output * cout..]),
                    out,
                    first_output,
                })
            });
        });
    });
    FeatureMap {
        batch: x.batch,
        height: oh,
        width: ow,
        channels: cout,
        data: out,
    }
}

thread_local! {
    /// Each worker's transformed input and products, reused across groups and layers.
    static GROUP: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

struct Geometry<'a> {
    x: &'a FeatureMap,
    pads: Pads,
    oh: usize,
    ow: usize,
    tiles_y: usize,
}

/// A tile: its image and its first output pixel.
#[derive(Clone, Copy)]
struct Tile {
    image: usize,
    oy: usize,
    ox: usize,
}

impl Tile {
    /// Index of the tile's first output pixel in the whole batch's output.
    fn output_index(&self, ow: usize, oh: usize) -> usize {
        (self.image * oh + self.oy) * ow + self.ox
    }
}

impl Geometry<'_> {
    fn tile(&self, tile_row: usize, tx: usize) -> Tile {
        Tile {
            image: tile_row / self.tiles_y,
            oy: (tile_row % self.tiles_y) * OUT,
            ox: tx * OUT,
        }
    }
}

/// `B^T d` for the 6 values along one axis of a window.
#[inline(always)]
fn input_1d<S: Simd>(s: S, d: [S::f32s; WINDOW]) -> [S::f32s; WINDOW] {
    let k = |v: f32| s.splat_f32s(v);
    let (four, five, two) = (k(4.0), k(5.0), k(2.0));
    // Shared partial sums of the rows of B^T.
    let d4_d2x4 = s.sub_f32s(d[4], s.mul_f32s(four, d[2]));
    let d3_d1x4 = s.sub_f32s(d[3], s.mul_f32s(four, d[1]));
    let d4_d2 = s.sub_f32s(d[4], d[2]);
    let d3_d1x2 = s.mul_f32s(two, s.sub_f32s(d[3], d[1]));
    [
        s.sub_f32s(s.mul_add_e_f32s(four, d[0], d[4]), s.mul_f32s(five, d[2])),
        s.add_f32s(d4_d2x4, d3_d1x4),
        s.sub_f32s(d4_d2x4, d3_d1x4),
        s.add_f32s(d4_d2, d3_d1x2),
        s.sub_f32s(d4_d2, d3_d1x2),
        s.sub_f32s(s.mul_add_e_f32s(four, d[1], d[5]), s.mul_f32s(five, d[3])),
    ]
}

/// `A^T m` for the 6 values along one axis of a tile's products.
#[inline(always)]
fn output_1d<S: Simd>(s: S, m: [S::f32s; WINDOW]) -> [S::f32s; OUT] {
    let k = |v: f32| s.splat_f32s(v);
    let (sum12, diff12) = (s.add_f32s(m[1], m[2]), s.sub_f32s(m[1], m[2]));
    let (sum34, diff34) = (s.add_f32s(m[3], m[4]), s.sub_f32s(m[3], m[4]));
    [
        s.add_f32s(s.add_f32s(m[0], sum12), sum34),
        s.mul_add_e_f32s(k(2.0), diff34, diff12),
        s.mul_add_e_f32s(k(4.0), sum34, sum12),
        s.add_f32s(s.mul_add_e_f32s(k(8.0), diff34, diff12), m[5]),
    ]
}

/// Every tile's window, transformed, into `v[point][tile][channel]` (one slice per
/// point, `tiles x channels`).
struct InputTransform<'a> {
    geometry: &'a Geometry<'a>,
    tiles: &'a [Tile],
    v: Vec<&'a mut [f32]>,
}

impl WithSimd for InputTransform<'_> {
    type Output = ();

    #[inline(always)]
    // Indexed loops over constant bounds, unrolled: the transposes read as the maths.
    #[allow(clippy::needless_range_loop)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            geometry,
            tiles,
            mut v,
        } = self;
        let x = geometry.x;
        let cin = x.channels;
        let lanes = lanes::<S>();
        for (t, tile) in tiles.iter().enumerate() {
            let y0 = tile.oy as isize - geometry.pads.top as isize;
            let x0 = tile.ox as isize - geometry.pads.left as isize;
            for c0 in (0..cin).step_by(lanes) {
                let c1 = (c0 + lanes).min(cin);
                // Plain loops, no `core::array::from_fn`: see [`WINDOW`].
                let zero = s.splat_f32s(0.0);
                let mut d = [[zero; WINDOW]; WINDOW];
                for i in 0..WINDOW {
                    let y = y0 + i as isize;
                    if y < 0 || y >= x.height as isize {
                        continue;
                    }
                    for j in 0..WINDOW {
                        let xx = x0 + j as isize;
                        if xx >= 0 && xx < x.width as isize {
                            let at = ((tile.image * x.height + y as usize) * x.width + xx as usize)
                                * cin;
                            d[i][j] = load(s, &x.data[at + c0..at + c1]);
                        }
                    }
                }
                // Along x (each row), then along y (each column).
                for row in &mut d {
                    *row = input_1d(s, *row);
                }
                for b in 0..WINDOW {
                    let mut column = [zero; WINDOW];
                    for i in 0..WINDOW {
                        column[i] = d[i][b];
                    }
                    let column = input_1d(s, column);
                    for (a, value) in column.into_iter().enumerate() {
                        let at = t * cin;
                        store(s, &mut v[a * WINDOW + b][at + c0..at + c1], value);
                    }
                }
            }
        }
    }
}

/// The products back to 4x4 outputs, finished (bias, residual, clamp), into `out`.
struct OutputTransform<'a> {
    geometry: &'a Geometry<'a>,
    /// The group's tiles and the range of them transformed here.
    tiles: &'a [Tile],
    range: std::ops::Range<usize>,
    /// `m[point][tile][channel]` over all the group's tiles.
    m: &'a [f32],
    bias: &'a [f32],
    clamp: Option<(f32, f32)>,
    /// From the group's first output pixel on, as `out`.
    residual: Option<&'a [f32]>,
    out: &'a mut [f32],
    /// The output index (pixel over the batch) of `out`'s first value.
    first_output: usize,
}

impl WithSimd for OutputTransform<'_> {
    type Output = ();

    #[inline(always)]
    // Indexed loops over constant bounds, unrolled: the transposes read as the maths.
    #[allow(clippy::needless_range_loop)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            geometry,
            tiles,
            range,
            m,
            bias,
            clamp,
            residual,
            out,
            first_output,
        } = self;
        let (cout, n) = (bias.len(), tiles.len());
        let (oh, ow) = (geometry.oh, geometry.ow);
        let lanes = lanes::<S>();
        let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (s.splat_f32s(lo), s.splat_f32s(hi));
        for (t, tile) in tiles.iter().enumerate().take(range.end).skip(range.start) {
            let base = tile.output_index(ow, oh) - first_output;
            for c0 in (0..cout).step_by(lanes) {
                let c1 = (c0 + lanes).min(cout);
                // Plain loops, no `core::array::from_fn`: see [`WINDOW`].
                let zero = s.splat_f32s(0.0);
                let mut rows = [[zero; OUT]; WINDOW];
                for (a, row) in rows.iter_mut().enumerate() {
                    let mut products = [zero; WINDOW];
                    for (b, product) in products.iter_mut().enumerate() {
                        let at = ((a * WINDOW + b) * n + t) * cout;
                        *product = load(s, &m[at + c0..at + c1]);
                    }
                    *row = output_1d(s, products);
                }
                let bias = load(s, &bias[c0..c1]);
                for q in 0..OUT.min(ow - tile.ox) {
                    let mut column = [zero; WINDOW];
                    for a in 0..WINDOW {
                        column[a] = rows[a][q];
                    }
                    let column = output_1d(s, column);
                    for (p, value) in column.into_iter().take(oh - tile.oy).enumerate() {
                        let at = (base + p * ow + q) * cout;
                        let mut value = s.add_f32s(value, bias);
                        if let Some(r) = residual {
                            value = s.add_f32s(value, load(s, &r[at + c0..at + c1]));
                        }
                        value = s.min_f32s(s.max_f32s(value, lo), hi);
                        store(s, &mut out[at + c0..at + c1], value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conv2d, ConvSpec};

    fn map(batch: usize, height: usize, width: usize, channels: usize, seed: usize) -> FeatureMap {
        FeatureMap {
            batch,
            height,
            width,
            channels,
            data: (0..batch * height * width * channels)
                .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
                .collect(),
        }
    }

    #[test]
    fn matches_the_direct_convolution() {
        crate::instruction_sets::on_every_one("matches_the_direct_convolution", || {
            let relu = Some((0.0, f32::INFINITY));
            let one = Pads {
                top: 1,
                left: 1,
                bottom: 1,
                right: 1,
            };
            let asymmetric = Pads {
                top: 0,
                left: 1,
                bottom: 2,
                right: 0,
            };
            // Sizes with partial tiles at the border, channel counts with vector tails,
            // batches (tile rows spanning images), residual, clamp.
            for (i, (n, h, w, cin, cout, pads, clamp, with_residual)) in [
                (1, 8, 8, 16, 32, one, None, false),
                (2, 14, 14, 24, 40, one, relu, true),
                (1, 7, 9, 5, 3, one, Some((0.0, 6.0)), false),
                (3, 13, 6, 33, 17, asymmetric, None, true),
                (1, 56, 56, 64, 64, one, relu, true),
            ]
            .into_iter()
            .enumerate()
            {
                let x = map(n, h, w, cin, i);
                let weight = map(1, 1, 9 * cin, cout, i + 10);
                let weight = PackedMatrix::pack(
                    &weight.data.iter().map(|v| v * 0.2).collect::<Vec<_>>(),
                    9 * cin,
                    cout,
                );
                let bias: Vec<f32> = (0..cout).map(|c| c as f32 * 0.01 - 0.1).collect();
                let spec = ConvSpec {
                    kernel: 3,
                    stride: 1,
                    pads,
                    clamp,
                };
                let (oh, ow) = pads.output_size(h, w, 3, 1);
                let residual = with_residual.then(|| map(n, oh, ow, cout, i + 20));
                let want = conv2d(&x, &weight, &bias, &spec, residual.as_ref());
                let weights = WinogradWeights::new(&weight);
                // One thread, and three: a lone group's transforms split unevenly by rows
                // of tiles, whatever this machine's pool.
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let got = pool.install(|| {
                        winograd_conv3x3(&x, &weights, &bias, pads, clamp, residual.as_ref())
                    });
                    assert_eq!(
                        (got.batch, got.height, got.width, got.channels),
                        (want.batch, want.height, want.width, want.channels)
                    );
                    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let diff = got
                        .data
                        .iter()
                        .zip(&want.data)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        diff < 1e-5 * scale.max(1.0) * (cin as f32).sqrt(),
                        "case {i}, {threads} threads: max diff {diff} (values up to {scale})"
                    );
                }
            }
        });
    }

    #[test]
    fn small_maps_stay_direct() {
        assert!(worth_it(56, 56));
        assert!(worth_it(28, 28));
        assert!(worth_it(14, 14));
        assert!(!worth_it(7, 7), "8x8 of tiles for 7x7, 36 weight matrices");
        assert!(!worth_it(3, 3));
    }
}
