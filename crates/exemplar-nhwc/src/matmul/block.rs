//! The register blocks: `rows x vectors` of results kept in registers over a slice of
//! `k`, each step broadcasting one activation per row against the panel's vectors, and
//! the epilogue (bias, residual, clamp) applied as results leave the registers.

use super::*;

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

/// One pass of `kc` rows of a panel over row blocks of the product.
pub(super) struct Block<'a, S: Simd> {
    pub(super) simd: S,
    /// The panel's two halves, `kc` rows each.
    pub(super) panel: [&'a [S::f32s]; 2],
    pub(super) a: &'a [f32],
    pub(super) a_stride: usize,
    /// `a`'s column of the slice's first step.
    pub(super) k0: usize,
    pub(super) kc: usize,
    pub(super) cols: std::ops::Range<usize>,
    /// The column of the product that is `dst`'s first.
    pub(super) first_col: usize,
    /// Add to `dst` (a later slice of `k`) rather than overwrite it.
    pub(super) accumulate: bool,
    /// The last slice of `k`: the results are final.
    pub(super) finish: Option<Finish<'a>>,
    pub(super) residual_stride: usize,
    /// Fetched into L2 during the first pass's first row block: the next slice's halves,
    /// one line of each per step of `k` (a step's 16 floats of a half are one line).
    pub(super) fetch: Option<(Fetcher, [*const f32; 2])>,
    /// Present where full 12-row blocks run in assembly.
    pub(super) avx512: Option<Avx512>,
}

impl<S: Simd> Block<'_, S> {
    /// `dst[row..row + R, cols'] (+)= a[row..row + R, k0..k0 + kc] * panel[.., cols']`
    /// where `cols'` are the panel's vectors `FIRST..FIRST + NV` (a constant: a variable
    /// start put bounds checks in the inner loop).
    #[inline(always)]
    // Indexed loops over constant bounds: the compiler unrolls them and keeps `acc` in
    // registers (iterating `acc` by reference made it keep a copy in memory).
    #[allow(clippy::needless_range_loop)]
    pub(super) fn rows<const R: usize, const NV: usize, const FIRST: usize>(
        &self,
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        self.rows_fetch::<R, NV, FIRST, false>(row, dst, stride)
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    pub(super) fn rows_fetch<
        const R: usize,
        const NV: usize,
        const FIRST: usize,
        const FETCH: bool,
    >(
        &self,
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        // Full AVX-512 blocks (a whole panel: `FIRST` is 0) run in assembly (this loop
        // left the rows' addresses to be recomputed at every step; see `block_avx512`):
        // 2-10 % faster per 1x1 layer.
        #[cfg(target_arch = "x86_64")]
        if let (Some(avx512), crate::block_avx512::ROWS, 2, 0) = (self.avx512, R, NV, FIRST) {
            let start = row * self.a_stride + self.k0;
            let halves = self.panel.map(pulp::bytemuck::cast_slice::<_, f32>);
            let next = if FETCH {
                self.fetch.map(|(_, next)| next)
            } else {
                None
            };
            let narrow = self.cols.len() <= HALF + 8;
            let acc = crate::block_avx512::block(
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
        if let (Some(avx512), crate::block_avx512::ROWS, 1, 0) = (self.avx512, R, NV, FIRST) {
            let start = row * self.a_stride + self.k0;
            let half = pulp::bytemuck::cast_slice::<_, f32>(self.panel[0]);
            let narrow = self.cols.len() <= 8;
            let acc = crate::block_avx512::half_block(
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
    pub(super) fn finish_block<const R: usize, const NV: usize, const FIRST: usize>(
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
    pub(super) fn finish<const R: usize, const NV: usize, const FIRST: usize, const WHOLE: bool>(
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
