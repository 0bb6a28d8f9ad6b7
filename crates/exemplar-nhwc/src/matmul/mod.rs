//! Matrix products against a right-hand side packed once, when the model loads.
//!
//! Every layer multiplies activations (`m x k`, rows read in place) by its weights
//! (`k x n`). The weights are stored as panels of [`PANEL`] columns, each as two halves
//! of `k` rows, in the order the inner kernel reads them, so no product repacks anything (the `gemm`
//! crate repacked the weights on every call: ~9 % of a ResNet-50 pass). The kernel keeps
//! a block of `rows x PANEL` results (`rows x PANEL / 2` with AVX2) in registers over a
//! slice of `k`, broadcasting one activation per row against the panel's vectors (the
//! full blocks and half-panel blocks with AVX-512 in
//! assembly: [`crate::block_avx512`]).

mod block;
mod pack;

use block::Block;
pub(crate) use block::{lanes, load, store};
pub use pack::PackedMatrix;

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
    let arch = crate::arch();
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
            .map(|i| (cols(i), crate::buffers::take(m * cols(i).len())))
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
            crate::buffers::recycle(out);
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
    crate::arch().dispatch(Multiply {
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
        // (a whole panel, 3 x 4, spills: the compiler keeps accumulators in memory);
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

/// Proof that the CPU runs the assembly block ([`crate::block_avx512`]).
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
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V4::try_new().is_none() {
            use std::io::Write;
            // Straight to stderr: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** the AVX-512 assembly blocks are NOT TESTED: this CPU has no AVX-512 ***\n"
            );
        }
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
            if let Some(v4) = pulp::x86::V4::try_new() {
                assert!(
                    avx512::<pulp::x86::V4>().is_some(),
                    "the assembly blocks run"
                );
                let mut dst = dst.clone();
                v4.vectorize(|| product_with(v4, &mut dst, args));
                results.push(("AVX-512 (assembly blocks)", dst));
            }
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
        crate::instruction_sets::on_every_one(
            "parts_by_columns_and_depth_add_up_to_the_product",
            || {
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
            },
        );
    }

    #[test]
    #[should_panic(expected = "lhs too short")]
    fn a_short_slice_is_refused() {
        let b = PackedMatrix::pack(&[1.0; 4], 2, 2);
        multiply(&mut [0.0; 4], 2, &[1.0; 3], 2, 2, &b, Finish::default(), 1);
    }
}
