//! A safe, bounds-checked front for the `gemm` crate's f32 matrix product.

pub use gemm::Parallelism;

/// `dst[m x n] = lhs[m x k] * rhs[k x n]`, all row-major with the given row strides
/// (columns are contiguous); `dst`'s old values are neither read nor kept.
///
/// # Panics
/// When a slice is too short for its shape and stride: the product would read or write
/// out of bounds, so this is checked before anything runs.
#[allow(clippy::too_many_arguments)] // the BLAS shape of the call
pub fn product(
    dst: &mut [f32],
    dst_stride: usize,
    lhs: &[f32],
    lhs_stride: usize,
    rhs: &[f32],
    rhs_stride: usize,
    (m, n, k): (usize, usize, usize),
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, cols: usize, stride: usize| (rows - 1) * stride + cols;
    assert!(
        dst_stride >= n && dst.len() >= span(m, n, dst_stride),
        "dst too short"
    );
    if k == 0 {
        for row in dst.chunks_mut(dst_stride).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    assert!(
        lhs_stride >= k && lhs.len() >= span(m, k, lhs_stride),
        "lhs too short"
    );
    assert!(
        rhs_stride >= n && rhs.len() >= span(k, n, rhs_stride),
        "rhs too short"
    );
    // SAFETY: the three regions were checked above to lie inside their slices; `dst` is
    // a unique borrow, so it cannot overlap the shared `lhs`/`rhs`. `gemm` reads (lhs,
    // rhs) or writes (dst, with `read_dst` false) exactly `rows x cols` elements at
    // `r * row_stride + c` from each pointer.
    // Why not a safe wrapper: Candle's `matmul` (safe) allocates its output per call and
    // needs a copy into the tile, the overheads this engine exists to remove; the `gemm`
    // crate has no safe API.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            false,
            lhs.as_ptr(),
            1,
            lhs_stride as isize,
            rhs.as_ptr(),
            1,
            rhs_stride as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        lhs: &[f32],
        rhs: &[f32],
        ls: usize,
        rs: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| lhs[i * ls + p] * rhs[p * rs + j]).sum();
            }
        }
        out
    }

    #[test]
    fn computes_the_product_with_strides_and_odd_sizes() {
        for (m, n, k) in [(1, 1, 1), (7, 13, 5), (33, 17, 64), (130, 3, 27)] {
            let (ls, rs) = (k + 2, n + 1);
            let lhs: Vec<f32> = (0..m * ls)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let rhs: Vec<f32> = (0..k * rs)
                .map(|i| ((i * 53 % 13) as f32 - 6.0) / 5.0)
                .collect();
            // Old values in dst are overwritten, not added to.
            let mut dst = vec![1.5f32; m * n];
            product(
                &mut dst,
                n,
                &lhs,
                ls,
                &rhs,
                rs,
                (m, n, k),
                Parallelism::None,
            );
            let want = naive(m, n, k, &lhs, &rhs, ls, rs);
            for (got, want) in dst.iter().zip(&want) {
                assert!((got - want).abs() < 1e-4, "{m}x{n}x{k}: {got} vs {want}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lhs too short")]
    fn a_short_slice_is_refused_before_any_access() {
        let mut dst = vec![0f32; 4];
        product(
            &mut dst,
            2,
            &[1.0; 3],
            2,
            &[1.0; 4],
            2,
            (2, 2, 2),
            Parallelism::None,
        );
    }
}
