//! Matrix products against a right-hand side packed once, when the model loads.
//!
//! Every layer multiplies activations (`m x k`, rows read in place) by its weights
//! (`k x n`). The weights are stored as panels of [`PANEL`] columns, each as two halves
//! of `k` rows, in the order the inner kernel reads them, so no product repacks anything (the `gemm`
//! crate repacked the weights on every call: ~9 % of a ResNet-50 pass). The kernel keeps
//! a block of `rows x PANEL` results (`rows x PANEL / 2` with AVX2) in registers over a
//! slice of `k`, broadcasting one activation per row against the panel's vectors (the
//! full blocks and half-panel blocks with AVX-512 in
//! assembly: [`super::block_avx512`]).

use crate::team;
use pulp::{Simd, WithSimd};

/// Columns per packed panel: two AVX-512 vectors.
pub const PANEL: usize = 32;
/// Columns per half panel. Each half is stored whole (`k x HALF`), one after the
/// other: AVX2 covers a panel in two passes, one per half, and each pass then reads
/// one contiguous stream. (Rows of 32 interleaved halves made every pass read every
/// other cache line: half of L1's sets, so a pass's 16 KiB did not stay in L1.)
const HALF: usize = PANEL / 2;
/// Rows per register block with AVX-512 (a multiple of the other instruction sets'):
/// products whose rows are a multiple of it have no tail block.
pub const ROW_BLOCK: usize = 12;
/// Depth of one pass over a panel: the slice it reads (`KC x PANEL`, 32 KiB, with
/// AVX-512; one half of it, 16 KiB, per pass with AVX2) stays in L1 while every row
/// block of the product streams past it.
const KC: usize = 256;

/// The first vector of `values` (zeros past its end): a plain load when the slice
/// holds a whole vector (pulp's masked load is an out-of-line call).
#[inline(always)]
pub(crate) fn load<S: Simd>(s: S, values: &[f32]) -> S::f32s {
    match S::as_simd_f32s(values).0.first() {
        Some(v) => *v,
        None => s.partial_load_f32s(values),
    }
}

/// Stores `value` into the first vector of `values` (as much of it as fits).
#[inline(always)]
pub(crate) fn store<S: Simd>(s: S, values: &mut [f32], value: S::f32s) {
    match S::as_mut_simd_f32s(values).0.first_mut() {
        Some(v) => *v = value,
        None => s.partial_store_f32s(values, value),
    }
}

/// Floats per vector of the instruction set `S`.
#[inline(always)]
pub(crate) const fn lanes<S: Simd>() -> usize {
    core::mem::size_of::<S::f32s>() / 4
}

/// A `rows x cols` matrix in column panels (zero-padded to whole panels).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs a row-major `rows x cols` matrix.
    ///
    /// # Panics
    /// When `matrix` does not hold `rows * cols` values.
    pub fn pack(matrix: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(matrix.len(), rows * cols, "matrix does not fit its shape");
        let halves = cols.div_ceil(PANEL) * 2;
        let mut data = vec![0f32; halves * rows * HALF];
        for (h, half) in data.chunks_exact_mut(rows * HALF).enumerate() {
            let c0 = h * HALF;
            let width = HALF.min(cols.saturating_sub(c0));
            if width == 0 {
                continue; // the empty half of a narrow last panel
            }
            for (r, dst) in half.chunks_exact_mut(HALF).enumerate() {
                dst[..width].copy_from_slice(&matrix[r * cols + c0..][..width]);
            }
        }
        Self { rows, cols, data }
    }

    /// The row-major matrix back.
    pub fn unpack(&self) -> Vec<f32> {
        let mut matrix = vec![0f32; self.rows * self.cols];
        for (h, half) in self.data.chunks_exact(self.rows * HALF).enumerate() {
            let c0 = h * HALF;
            let width = HALF.min(self.cols.saturating_sub(c0));
            if width == 0 {
                continue;
            }
            for (r, src) in half.chunks_exact(HALF).enumerate() {
                matrix[r * self.cols + c0..][..width].copy_from_slice(&src[..width]);
            }
        }
        matrix
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// What is done to each result as it leaves the registers:
/// `clamp(product + bias + residual)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Finish<'a> {
    /// One value per column.
    pub bias: Option<&'a [f32]>,
    /// Laid out as `dst` (same rows and row stride).
    pub residual: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// `dst[m x n] = finish(a[m x k] * b)` (row-major, with row strides; `dst`'s old values
/// are neither read nor kept). With `threads > 1` the rows are shared among rayon's
/// threads.
///
/// # Panics
/// When a slice is too short for its shape and stride.
#[allow(clippy::too_many_arguments)] // the BLAS shape of the call
pub fn multiply(
    dst: &mut [f32],
    dst_stride: usize,
    a: &[f32],
    a_stride: usize,
    m: usize,
    b: &PackedMatrix,
    finish: Finish,
    threads: usize,
) {
    let (k, n) = (b.rows, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    check_operands((dst, dst_stride, n), (a, a_stride, k), m);
    let span = |cols: usize, stride: usize| (m - 1) * stride + cols;
    assert!(finish.bias.is_none_or(|b| b.len() == n), "bias too short");
    assert!(
        finish
            .residual
            .is_none_or(|r| r.len() >= span(n, dst_stride)),
        "residual too short"
    );
    let arch = pulp::Arch::new();
    let all_panels = n.div_ceil(PANEL);
    let run = |dst: &mut [f32], stride: usize, first: usize, m: usize, panels| {
        arch.dispatch(Multiply {
            dst,
            dst_stride: stride,
            a: &a[first * a_stride..],
            a_stride,
            m,
            b,
            panels,
            depth: 0..k,
            finish: Finish {
                residual: finish.residual.map(|r| &r[first * dst_stride..]),
                ..finish
            },
            residual_stride: dst_stride,
        })
    };
    if threads <= 1 || (m < 2 * ROW_BLOCK && all_panels < 2) {
        return run(dst, dst_stride, 0, m, 0..all_panels);
    }
    if m < 4 * ROW_BLOCK * threads && all_panels >= threads {
        // Few rows (a deep layer at batch 1): split the columns instead, so that each
        // thread streams only its share of the weights and none gets a tail of rows.
        // Shares after the first go to scratch and are copied in (a small fraction of
        // the product's time: the weights dominate).
        let part = |i: usize| all_panels * i / threads..all_panels * (i + 1) / threads;
        let cols = |i: usize| part(i).start * PANEL..(part(i).end * PANEL).min(n);
        // Recycled: a fresh zeroed allocation cost ~5 us per product.
        let mut scratch: Vec<_> = (1..threads)
            .map(|i| (cols(i), super::buffers::take(m * cols(i).len())))
            .collect();
        let mut shares = vec![(0, dst_stride, &mut dst[..])];
        shares.extend(
            scratch
                .iter_mut()
                .enumerate()
                .map(|(i, (cols, out))| (i + 1, cols.len(), &mut out[..])),
        );
        team::for_each(shares, |(i, stride, out)| run(out, stride, 0, m, part(i)));
        for (cols, out) in scratch {
            for (row, src) in out.chunks_exact(cols.len()).enumerate() {
                dst[row * dst_stride + cols.start..][..cols.len()].copy_from_slice(src);
            }
            super::buffers::recycle(out);
        }
        return;
    }
    // One share of whole row blocks per thread, the last with the partial block: the
    // few rows left over as a share of their own ran after the others, alone (a 4-row
    // tail added ~15 % to a 196-row product on two threads).
    let blocks = m.div_ceil(ROW_BLOCK);
    let start = |i: usize| (blocks * i / threads * ROW_BLOCK).min(m);
    let mut shares = Vec::with_capacity(threads);
    let mut rest = &mut dst[..];
    for i in 0..threads {
        let rows = start(i)..start(i + 1);
        let len = if i + 1 == threads {
            rest.len()
        } else {
            rows.len() * dst_stride
        };
        let (share, tail) = rest.split_at_mut(len);
        shares.push((rows, share));
        rest = tail;
    }
    shares.retain(|(rows, _)| !rows.is_empty());
    team::for_each(shares, |(rows, dst)| {
        run(dst, dst_stride, rows.start, rows.len(), 0..all_panels)
    });
}

/// One thread's part of a product split by columns and by depth:
/// `dst[m x cols] = finish(a[m x depth] * b[depth, cols])` where `cols` are the columns
/// of `b`'s panels `panels` (`dst`'s first column is the first panel's; a bias is
/// indexed by `b`'s column) and `a`'s first column multiplies `b`'s row `depth.start`.
/// Over part of the depth the results are partial sums: leave the bias and the clamp
/// to whoever adds them up. No residual.
///
/// # Panics
/// When a slice is too short for its shape and stride, or `panels`/`depth` leave `b`.
#[allow(clippy::too_many_arguments)] // the BLAS shape of the call
pub(crate) fn multiply_part(
    dst: &mut [f32],
    dst_stride: usize,
    a: &[f32],
    a_stride: usize,
    m: usize,
    b: &PackedMatrix,
    (panels, depth): (std::ops::Range<usize>, std::ops::Range<usize>),
    finish: Finish,
) {
    assert!(
        panels.end <= b.cols.div_ceil(PANEL) && depth.end <= b.rows,
        "part outside the matrix"
    );
    let n = (panels.end * PANEL).min(b.cols) - (panels.start * PANEL).min(b.cols);
    if m == 0 || n == 0 || depth.is_empty() {
        return;
    }
    check_operands((dst, dst_stride, n), (a, a_stride, depth.len()), m);
    assert!(
        finish.bias.is_none_or(|bias| bias.len() == b.cols),
        "bias too short"
    );
    // (A residual would be read at `b`'s columns with `dst`'s stride: not needed.)
    assert!(finish.residual.is_none(), "no residual in a part");
    pulp::Arch::new().dispatch(Multiply {
        dst,
        dst_stride,
        a,
        a_stride,
        m,
        b,
        panels,
        depth,
        finish,
        residual_stride: dst_stride,
    })
}

/// Asserts that `dst` holds `m > 0` rows of `n` values and `a` `m` rows of `k` (with
/// their strides).
fn check_operands(
    (dst, dst_stride, n): (&[f32], usize, usize),
    (a, a_stride, k): (&[f32], usize, usize),
    m: usize,
) {
    let span = |cols: usize, stride: usize| (m - 1) * stride + cols;
    assert!(
        dst_stride >= n && dst.len() >= span(n, dst_stride),
        "dst too short"
    );
    assert!(
        a_stride >= k && a.len() >= span(k, a_stride),
        "lhs too short"
    );
}

struct Multiply<'a> {
    dst: &'a mut [f32],
    dst_stride: usize,
    a: &'a [f32],
    a_stride: usize,
    m: usize,
    b: &'a PackedMatrix,
    /// The column panels computed; `dst`'s first column is the first panel's.
    panels: std::ops::Range<usize>,
    /// The rows of `b` multiplied; `a`'s first column is the first of them.
    depth: std::ops::Range<usize>,
    finish: Finish<'a>,
    /// The residual's row stride (the whole product's, whatever `dst`'s is).
    residual_stride: usize,
}

impl WithSimd for Multiply<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // The register block, rows x vectors of accumulators, fills the registers but
        // must leave room for one row of the panel and a broadcast: 12 x 2 of the 32
        // AVX-512 registers is a whole panel (14 x 2 left too few: the compiler then
        // kept accumulators in memory); AVX2's 16 take 6 x 2, half a panel per pass
        // (a whole panel, 3 x 4, spilled: 0.34-0.75x the `gemm` crate on Zen 3);
        // 4-lane sets (SSE, NEON) 3 x 4, half a panel per pass.
        match lanes::<S>() {
            16 => self.run::<S, ROW_BLOCK, 2, ROW_BLOCK>(simd),
            8 => self.run::<S, 6, 2, 12>(simd),
            4 => self.run::<S, 3, 4, 6>(simd),
            _ => self.run::<S, 1, 32, 1>(simd),
        }
    }
}

impl Multiply<'_> {
    /// `MR x NV` register blocks; `MR1 x 1` for a pass over a single vector of columns.
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize, const MR1: usize>(self, simd: S) {
        let Self {
            dst,
            dst_stride,
            a,
            a_stride,
            m,
            b,
            panels: computed,
            depth,
            finish,
            residual_stride,
        } = self;
        // Vectors per panel row, covered in one or two passes of NV.
        let panel_vectors = PANEL / lanes::<S>();
        assert!(panel_vectors == NV || panel_vectors == 2 * NV);
        // Small weights (shallow products: Lite0's expansions) are swept once per group
        // of rows from L1/L2, so the group's results are written while they are in
        // cache; larger ones once per slice of `k` over all rows, as each panel slice
        // then stays in L1 while all the rows stream past it.
        let weight_bytes = computed.len() * depth.len() * PANEL * 4;
        let group = if weight_bytes <= SMALL_WEIGHT_BYTES {
            GROUP_ROWS
        } else {
            m
        };
        // Larger weights come from memory (ResNet-50's 100 MB do not stay in any cache
        // from one pass to the next), slice after slice. Over few rows (the deep layers
        // at batch 1) a slice serves little arithmetic, so each is asked for while the
        // one before it computes, for memory and arithmetic to overlap (the hardware's
        // prefetcher does not jump from one panel's slice to the next, 4 to 500 KB
        // away): ResNet-50 at batch 1 ran 5-10 % faster. Over more rows the gain was
        // not clear (batch 8: +3 % or -3 % by two measures); small weights stay in
        // cache from one group of rows to the next.
        let fetcher = (group == m && m <= FETCH_MAX_ROWS).then(fetcher).flatten();
        for first_row in (0..m).step_by(group) {
            run_rows::<S, MR, NV, MR1>(
                simd,
                fetcher,
                (b, &computed, &depth),
                first_row..m.min(first_row + group),
                (a, a_stride),
                (dst, dst_stride),
                finish,
                residual_stride,
            );
        }
    }
}

/// Asks for lines to be fetched into the cache.
#[cfg(target_arch = "x86_64")]
type Fetcher = pulp::core_arch::x86::Sse;

#[cfg(target_arch = "x86_64")]
fn fetcher() -> Option<Fetcher> {
    Fetcher::try_new()
}

/// Fetches `line` into L2 (a hint: an address outside the weights is harmless).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn fetch_line(fetcher: Fetcher, line: *const f32) {
    fetcher._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(line.cast());
}

#[cfg(not(target_arch = "x86_64"))]
type Fetcher = ();

#[cfg(not(target_arch = "x86_64"))]
fn fetcher() -> Option<Fetcher> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn fetch_line(_: Fetcher, _: *const f32) {}

/// Proof that the CPU runs the assembly block ([`super::block_avx512`]).
#[cfg(target_arch = "x86_64")]
type Avx512 = pulp::x86::V4;

#[cfg(target_arch = "x86_64")]
fn avx512<S: Simd>() -> Option<Avx512> {
    (lanes::<S>() == 16).then(pulp::x86::V4::try_new).flatten()
}

#[cfg(not(target_arch = "x86_64"))]
type Avx512 = ();

#[cfg(not(target_arch = "x86_64"))]
fn avx512<S: Simd>() -> Option<Avx512> {
    None
}

/// Weights at most this size are swept once per group of [`GROUP_ROWS`] rows.
const SMALL_WEIGHT_BYTES: usize = 128 << 10;
const GROUP_ROWS: usize = 4 * ROW_BLOCK;
/// Products over at most this many rows fetch their large weights ahead.
const FETCH_MAX_ROWS: usize = 128;

/// Rows `rows` of the product over every slice of `k` and every panel in `computed`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_rows<'a, S: Simd, const MR: usize, const NV: usize, const MR1: usize>(
    simd: S,
    fetcher: Option<Fetcher>,
    (b, computed, depth): (
        &'a PackedMatrix,
        &std::ops::Range<usize>,
        &std::ops::Range<usize>,
    ),
    rows: std::ops::Range<usize>,
    (a, a_stride): (&'a [f32], usize),
    (dst, dst_stride): (&mut [f32], usize),
    finish: Finish<'a>,
    residual_stride: usize,
) {
    let panel_vectors = PANEL / lanes::<S>();
    let k = b.rows;
    let avx512 = avx512::<S>();
    let slice = |p: usize, half: usize, k0: usize| {
        let start = ((2 * p + half) * k + k0) * HALF;
        S::as_simd_f32s(&b.data[start..start + KC.min(depth.end - k0) * HALF]).0
    };
    // Each slice of `depth` over every panel, then the next slice.
    let steps = depth.len().div_ceil(KC) * computed.len();
    let step = |i: usize| {
        let k0 = depth.start + i / computed.len() * KC;
        (k0, computed.start + i % computed.len())
    };
    for i in 0..steps {
        let (k0, p) = step(i);
        let kc = KC.min(depth.end - k0);
        let panel = [slice(p, 0, k0), slice(p, 1, k0)];
        // The next step's slice, asked for while this one computes.
        let fetch = fetcher.filter(|_| i + 1 < steps).map(|f| {
            let (k1, p1) = step(i + 1);
            let start = |half: usize| b.data[((2 * p1 + half) * k + k1) * HALF..].as_ptr();
            (f, [start(0), start(1)])
        });
        let cols = p * PANEL..(p * PANEL + PANEL).min(b.cols);
        let block = Block {
            simd,
            panel,
            a,
            a_stride,
            k0: k0 - depth.start,
            kc,
            cols,
            first_col: computed.start * PANEL,
            accumulate: k0 > depth.start,
            finish: (k0 + kc == depth.end).then_some(finish),
            residual_stride,
            fetch,
            avx512,
        };
        // Full row blocks, then the rest in blocks of 8, 4, 2, 1 rows, over the panel's
        // vectors in passes of NV: all the rows for one pass, then all for the next, so
        // that the half-panel a pass reads stays in L1 while the rows of `a` stream past
        // (a block's two passes one after the other kept the block's rows in L1
        // instead, and the panel's two halves, 32 KiB, went through L2). A second pass only
        // where the panel has columns in it: a narrow last panel (16 of Lite0's 16, 40,
        // 80, 112, 144 columns) would otherwise compute zeros and drop them (half of its
        // first projection's arithmetic).
        let second_pass = panel_vectors > NV && block.cols.len() > NV * lanes::<S>();
        // A pass with a single vector of columns (the narrow last panels of Lite0's 24
        // and 40 channels: 8 columns) runs as such, with twice the rows per block,
        // rather than computing a second vector of zeros.
        let single = |first: usize| NV > 1 && block.cols.len() <= (first + 1) * lanes::<S>();
        if single(0) {
            pass::<S, MR1, 1, 0>(&block, rows.clone(), dst, dst_stride);
        } else {
            pass::<S, MR, NV, 0>(&block, rows.clone(), dst, dst_stride);
        }
        if second_pass {
            if single(NV) {
                pass::<S, MR1, 1, NV>(&block, rows.clone(), dst, dst_stride);
            } else {
                pass::<S, MR, NV, NV>(&block, rows.clone(), dst, dst_stride);
            }
        }
    }
}

/// Vectors `FIRST..FIRST + NV` of a panel's columns over rows `rows`: blocks of `MR`
/// rows, then the rest in blocks of 8, 4, 2, 1.
#[inline(always)]
fn pass<S: Simd, const MR: usize, const NV: usize, const FIRST: usize>(
    block: &Block<S>,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
    dst_stride: usize,
) {
    let mut row = rows.start;
    if FIRST == 0 && block.fetch.is_some() && row + MR <= rows.end {
        block.rows_fetch::<MR, NV, FIRST, true>(row, dst, dst_stride);
        row += MR;
    }
    while row + MR <= rows.end {
        block.rows::<MR, NV, FIRST>(row, dst, dst_stride);
        row += MR;
    }
    for_each_tail::<S, NV, FIRST>(block, row..rows.end, dst, dst_stride);
}

#[inline(always)]
#[allow(clippy::int_plus_one)] // one expression for every block size
fn for_each_tail<S: Simd, const NV: usize, const FIRST: usize>(
    block: &Block<S>,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
    dst_stride: usize,
) {
    let (mut row, end) = (rows.start, rows.end);
    macro_rules! tail {
        ($($r:literal),*) => {$(
            if row + $r <= end {
                block.rows::<$r, NV, FIRST>(row, dst, dst_stride);
                row += $r;
            }
        )*};
    }
    tail!(8, 4, 2, 1);
}

/// One pass of `kc` rows of a panel over row blocks of the product.
struct Block<'a, S: Simd> {
    simd: S,
    /// The panel's two halves, `kc` rows each.
    panel: [&'a [S::f32s]; 2],
    a: &'a [f32],
    a_stride: usize,
    /// `a`'s column of the slice's first step.
    k0: usize,
    kc: usize,
    cols: std::ops::Range<usize>,
    /// The column of the product that is `dst`'s first.
    first_col: usize,
    /// Add to `dst` (a later slice of `k`) rather than overwrite it.
    accumulate: bool,
    /// The last slice of `k`: the results are final.
    finish: Option<Finish<'a>>,
    residual_stride: usize,
    /// Fetched into L2 during the first pass's first row block: the next slice's halves,
    /// one line of each per step of `k` (a step's 16 floats of a half are one line).
    fetch: Option<(Fetcher, [*const f32; 2])>,
    /// Present where full 12-row blocks run in assembly.
    avx512: Option<Avx512>,
}

impl<S: Simd> Block<'_, S> {
    /// `dst[row..row + R, cols'] (+)= a[row..row + R, k0..k0 + kc] * panel[.., cols']`
    /// where `cols'` are the panel's vectors `FIRST..FIRST + NV` (a constant: a variable
    /// start put bounds checks in the inner loop).
    #[inline(always)]
    // Indexed loops over constant bounds: the compiler unrolls them and keeps `acc` in
    // registers (iterating `acc` by reference made it keep a copy in memory).
    #[allow(clippy::needless_range_loop)]
    fn rows<const R: usize, const NV: usize, const FIRST: usize>(
        &self,
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        self.rows_fetch::<R, NV, FIRST, false>(row, dst, stride)
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn rows_fetch<const R: usize, const NV: usize, const FIRST: usize, const FETCH: bool>(
        &self,
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        // Full AVX-512 blocks (a whole panel: `FIRST` is 0) run in assembly (this loop
        // left the rows' addresses to be recomputed at every step; see `block_avx512`):
        // 2-10 % faster per 1x1 layer.
        #[cfg(target_arch = "x86_64")]
        if let (Some(avx512), super::block_avx512::ROWS, 2, 0) = (self.avx512, R, NV, FIRST) {
            let start = row * self.a_stride + self.k0;
            let halves = self.panel.map(pulp::bytemuck::cast_slice::<_, f32>);
            let next = if FETCH {
                self.fetch.map(|(_, next)| next)
            } else {
                None
            };
            let narrow = self.cols.len() <= HALF + 8;
            let acc = super::block_avx512::block(
                avx512,
                &self.a[start..],
                self.a_stride,
                halves,
                self.kc,
                next,
                narrow,
            );
            assert_eq!(size_of_val(&acc), size_of::<[[S::f32s; NV]; R]>());
            // SAFETY: the same size (16-lane vectors of f32 either way), both plain floats.
            let acc: [[S::f32s; NV]; R] = unsafe { core::mem::transmute_copy(&acc) };
            return self.finish_block::<R, NV, FIRST>(acc, row, dst, stride);
        }
        // Blocks over one half of a panel (a narrow last panel: `FIRST` is 0), likewise;
        // without the fetching of the next slice (a hint that a few blocks can skip).
        #[cfg(target_arch = "x86_64")]
        if let (Some(avx512), super::block_avx512::ROWS, 1, 0) = (self.avx512, R, NV, FIRST) {
            let start = row * self.a_stride + self.k0;
            let half = pulp::bytemuck::cast_slice::<_, f32>(self.panel[0]);
            let narrow = self.cols.len() <= 8;
            let acc = super::block_avx512::half_block(
                avx512,
                &self.a[start..],
                self.a_stride,
                half,
                self.kc,
                narrow,
            );
            assert_eq!(size_of_val(&acc), size_of::<[[S::f32s; NV]; R]>());
            // SAFETY: the same size (16-lane vectors of f32 either way), both plain floats.
            let acc: [[S::f32s; NV]; R] = unsafe { core::mem::transmute_copy(&acc) };
            return self.finish_block::<R, NV, FIRST>(acc, row, dst, stride);
        }
        let simd = self.simd;
        let lanes = lanes::<S>();
        // Vectors per row of a half; vector `j` of a panel row is in half `j / hv`.
        let hv = HALF.div_ceil(lanes);
        let a: [&[f32]; R] = core::array::from_fn(|r| {
            let start = (row + r) * self.a_stride + self.k0;
            &self.a[start..start + self.kc]
        });
        let mut acc = [[simd.splat_f32s(0.0); NV]; R];
        // Slices of exactly `kc` steps, each half walked by rows of `hv` vectors and
        // zipped with `0..kc`: the compiler drops every bounds check in the loop (with
        // some left, it also kept the accumulators in memory; indexing the halves by
        // `k * hv + j` kept two).
        let first = self.panel[0][..self.kc * hv].chunks_exact(hv);
        let second = self.panel[1][..self.kc * hv].chunks_exact(hv);
        let fetch = if FETCH { self.fetch } else { None };
        for ((first, second), k) in first.zip(second).zip(0..self.kc) {
            if let Some((fetcher, next)) = fetch {
                for half in next {
                    fetch_line(fetcher, half.wrapping_add(k * HALF));
                }
            }
            let b: [S::f32s; NV] = core::array::from_fn(|v| {
                let j = FIRST + v;
                if j < hv {
                    first[j]
                } else {
                    second[j - hv]
                }
            });
            for r in 0..R {
                let x = simd.splat_f32s(a[r][k]);
                for v in 0..NV {
                    acc[r][v] = simd.mul_add_e_f32s(x, b[v], acc[r][v]);
                }
            }
        }
        self.finish_block::<R, NV, FIRST>(acc, row, dst, stride);
    }

    #[inline(always)]
    fn finish_block<const R: usize, const NV: usize, const FIRST: usize>(
        &self,
        acc: [[S::f32s; NV]; R],
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        // The block's columns: from the panel's vector `FIRST` on (fewer than `NV`
        // vectors in a narrow last panel, the last one maybe partial).
        let width = self.cols.len().saturating_sub(FIRST * lanes::<S>());
        if width >= NV * lanes::<S>() {
            self.finish::<R, NV, FIRST, true>(acc, row, dst, stride);
        } else if width > 0 {
            // The finish of a narrow panel (bounds and partial vectors per column) is
            // too large for the compiler to unroll; left rolled, it indexes the
            // accumulators in memory, and the compiler then kept the loop's copy there
            // too, storing each after every multiply-add (AVX-512, 12 x 2: 24 stores
            // per step, a third of the FMA rate). `black_box` hands it a copy instead.
            self.finish::<R, NV, FIRST, false>(core::hint::black_box(acc), row, dst, stride);
        }
    }

    /// Finishes a block's results (`acc`, from [`Self::rows`]) into `dst`: adds the
    /// previous slice's, then the bias and residual, clamps, stores. `WHOLE`: every
    /// vector of the block lies inside the product's columns.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn finish<const R: usize, const NV: usize, const FIRST: usize, const WHOLE: bool>(
        &self,
        mut acc: [[S::f32s; NV]; R],
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        let simd = self.simd;
        let lanes = lanes::<S>();
        let skipped = FIRST * lanes;
        let width = if WHOLE {
            NV * lanes
        } else {
            self.cols.len() - skipped
        };
        let first_col = self.cols.start + skipped;
        let vector = |v: usize| (v * lanes).min(width)..((v + 1) * lanes).min(width);
        // Step by step over the whole block, each a loop over constant bounds that the
        // compiler unrolls, so the accumulators stay in registers (one loop doing every
        // step per row was left rolled, with the accumulators in memory: `perf annotate`
        // put 60 % of a 16-deep product's time there).
        let out_at: [usize; R] =
            core::array::from_fn(|r| (row + r) * stride + first_col - self.first_col);
        if self.accumulate {
            for r in 0..R {
                for v in 0..NV {
                    let cols = vector(v);
                    if !cols.is_empty() {
                        let at = out_at[r];
                        let old = load(simd, &dst[at + cols.start..at + cols.end]);
                        acc[r][v] = simd.add_f32s(acc[r][v], old);
                    }
                }
            }
        }
        if let Some(finish) = self.finish {
            if let Some(bias) = finish.bias {
                for v in 0..NV {
                    let cols = vector(v);
                    if !cols.is_empty() {
                        let cols = first_col + cols.start..first_col + cols.end;
                        let bias = load(simd, &bias[cols]);
                        for r in 0..R {
                            acc[r][v] = simd.add_f32s(acc[r][v], bias);
                        }
                    }
                }
            }
            if let Some(residual) = finish.residual {
                for r in 0..R {
                    let at = (row + r) * self.residual_stride + first_col;
                    for v in 0..NV {
                        let cols = vector(v);
                        if !cols.is_empty() {
                            let x = load(simd, &residual[at + cols.start..at + cols.end]);
                            acc[r][v] = simd.add_f32s(acc[r][v], x);
                        }
                    }
                }
            }
            if let Some((lo, hi)) = finish.clamp {
                let (lo, hi) = (simd.splat_f32s(lo), simd.splat_f32s(hi));
                for r in 0..R {
                    for v in 0..NV {
                        acc[r][v] = simd.min_f32s(simd.max_f32s(acc[r][v], lo), hi);
                    }
                }
            }
        }
        for r in 0..R {
            for v in 0..NV {
                let cols = vector(v);
                if !cols.is_empty() {
                    let at = out_at[r];
                    store(simd, &mut dst[at + cols.start..at + cols.end], acc[r][v]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], a_stride: usize, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * a_stride + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn packing_round_trips() {
        let m: Vec<f32> = (0..7 * 45).map(|i| i as f32).collect();
        let packed = PackedMatrix::pack(&m, 7, 45);
        assert_eq!((packed.rows(), packed.cols()), (7, 45));
        assert_eq!(packed.unpack(), m);
    }

    /// The whole product on this thread with the instruction set `simd`.
    #[inline(always)]
    fn product_with<S: Simd>(
        simd: S,
        dst: &mut [f32],
        (dst_stride, a, a_stride, m, b, finish): (
            usize,
            &[f32],
            usize,
            usize,
            &PackedMatrix,
            Finish,
        ),
    ) {
        Multiply {
            dst,
            dst_stride,
            a,
            a_stride,
            m,
            b,
            panels: 0..b.cols.div_ceil(PANEL),
            depth: 0..b.rows,
            finish,
            residual_stride: dst_stride,
        }
        .with_simd(simd)
    }

    #[test]
    fn computes_the_product_for_every_block_shape() {
        // Rows cover full blocks and every tail; columns partial panels; depth several
        // passes (KC) with a short last one; the lhs has a row stride.
        for (m, n, k, threads) in [
            (1, 1, 1, 1),
            (15, 13, 5, 1),
            (29, 32, 64, 1),
            (33, 70, 300, 1),
            (130, 3, 27, 1),
            (75, 96, 600, 2),
            (200, 40, 16, 3),
            // Depths whose last slice is not a multiple of 4 steps (the assembly block
            // runs 4 at a time, then the rest: 3, 1, 2).
            (40, 64, 31, 1),
            (24, 32, 257, 1),
            (36, 96, 70, 2),
            // Fewer whole row blocks than threads.
            (30, 20, 7, 3),
            // Row blocks that do not divide among the threads, and a partial last block.
            (196, 48, 20, 2),
            (100, 16, 9, 4),
            (50, 16, 20, 1),
            // A last panel wider than half (AVX2 covers a panel in two passes).
            (20, 57, 9, 1),
            // Exactly one half of a panel, and a half and a half: the empty and the full
            // second half (each half is stored on its own), depth over several passes.
            (37, 16, 300, 1),
            (26, 48, 19, 2),
            // Passes over a single vector of columns (AVX2: the 8 last columns of 24 and
            // 40), rows in blocks of twice the usual size and a tail, depth over several
            // passes.
            (37, 24, 300, 1),
            (61, 40, 33, 2),
            // Panels of at most 8 columns past a vector (AVX-512: multiplied as 8-lane
            // vectors): 20 and 24 columns, 8 and 40, depth below one unrolled step of 4.
            (26, 20, 7, 1),
            (24, 8, 30, 1),
            (25, 40, 3, 1),
            // Few rows: the columns are split among the threads.
            (49, 200, 70, 2),
            (5, 100, 33, 3),
            // Weights large enough to be fetched slice by slice ahead of use, with a
            // short last slice and a narrow last panel; and with no whole row block
            // (nothing fetches).
            (13, 80, 520, 1),
            (13, 88, 520, 1),
            (5, 100, 400, 1),
        ] {
            let a_stride = k + 3;
            let a: Vec<f32> = (0..m * a_stride)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let packed = PackedMatrix::pack(&b, k, n);
            // Old values in dst (including the padding columns of its stride) are
            // overwritten or left alone, never added to.
            let dst_stride = n + 2;
            let dst = vec![1.5f32; m * dst_stride];
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 2.0).collect();
            let residual: Vec<f32> = (0..m * dst_stride).map(|i| (i % 7) as f32).collect();
            let finish = Finish {
                bias: Some(&bias),
                residual: Some(&residual),
                clamp: Some((-1.0, 30.0)),
            };
            let want = naive(m, n, k, &a, a_stride, &b);
            // The best instruction set here (with threads), then each narrower one that
            // this CPU runs, whole product on one thread: each has its own block shapes.
            let mut results = vec![("best", {
                let mut dst = dst.clone();
                multiply(
                    &mut dst, dst_stride, &a, a_stride, m, &packed, finish, threads,
                );
                dst
            })];
            let args = (dst_stride, a.as_slice(), a_stride, m, &packed, finish);
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                let mut dst = dst.clone();
                v3.vectorize(|| product_with(v3, &mut dst, args));
                results.push(("AVX2", dst));
            }
            let mut scalar = dst.clone();
            let simd = pulp::Scalar::new();
            simd.vectorize(|| product_with(simd, &mut scalar, args));
            results.push(("scalar", scalar));
            for (set, dst) in results {
                check(m, n, k, set, &dst, &want);
            }
        }

        fn check(m: usize, n: usize, k: usize, set: &str, dst: &[f32], want: &[f32]) {
            let dst_stride = n + 2;
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 2.0).collect();
            let residual: Vec<f32> = (0..m * dst_stride).map(|i| (i % 7) as f32).collect();
            for i in 0..m {
                for j in 0..dst_stride {
                    let got = dst[i * dst_stride + j];
                    if j < n {
                        let want = (want[i * n + j] + bias[j] + residual[i * dst_stride + j])
                            .clamp(-1.0, 30.0);
                        assert!(
                            (got - want).abs() < 1e-3,
                            "{set} {m}x{n}x{k} ({i},{j}): {got} vs {want}"
                        );
                    } else {
                        assert_eq!(got, 1.5, "{set} {m}x{n}x{k}: wrote past its columns");
                    }
                }
            }
        }
    }

    #[test]
    fn parts_by_columns_and_depth_add_up_to_the_product() {
        // Depths over several slices (KC) split off the slice boundaries; a narrow last
        // panel; rows with a tail block.
        for (m, n, k, panel_cuts, depth_cuts) in [
            (49, 200, 700, vec![0, 3, 7], vec![0, 300, 700]),
            (196, 112, 672, vec![0, 2, 4], vec![0, 64, 336, 672]),
            (13, 40, 9, vec![0, 1, 2], vec![0, 4, 9]),
        ] {
            let a_stride = k + 1;
            let a: Vec<f32> = (0..m * a_stride)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let packed = PackedMatrix::pack(&b, k, n);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 2.0).collect();
            let want = naive(m, n, k, &a, a_stride, &b);
            let mut sum = vec![0f32; m * n];
            for panels in panel_cuts.windows(2) {
                let cols = panels[0] * PANEL..(panels[1] * PANEL).min(n);
                for depth in depth_cuts.windows(2) {
                    // The first depth part also adds the bias (by `b`'s column).
                    let finish = Finish {
                        bias: (depth[0] == 0).then_some(bias.as_slice()),
                        ..Finish::default()
                    };
                    let stride = cols.len() + 3;
                    let mut part = vec![f32::NAN; m * stride];
                    multiply_part(
                        &mut part,
                        stride,
                        &a[depth[0]..],
                        a_stride,
                        m,
                        &packed,
                        (panels[0]..panels[1], depth[0]..depth[1]),
                        finish,
                    );
                    for i in 0..m {
                        for (j, col) in cols.clone().enumerate() {
                            sum[i * n + col] += part[i * stride + j];
                        }
                        assert!(part[i * stride + cols.len()..][..3]
                            .iter()
                            .all(|v| v.is_nan()));
                    }
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (sum[i * n + j], want[i * n + j] + bias[j]);
                    assert!(
                        (got - want).abs() < 1e-3,
                        "{m}x{n}x{k} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "lhs too short")]
    fn a_short_slice_is_refused() {
        let b = PackedMatrix::pack(&[1.0; 4], 2, 2);
        multiply(&mut [0.0; 4], 2, &[1.0; 3], 2, 2, &b, Finish::default(), 1);
    }
}
