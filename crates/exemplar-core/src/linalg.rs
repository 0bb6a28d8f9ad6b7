//! The few dense linear-algebra routines projections need, on nalgebra.

use crate::rng::SplitMix64;
use nalgebra::{DMatrix, DVector, SMatrix, SVector, SymmetricEigen};

/// `rows x cols` matrix of independent standard normal entries, reproducible from `seed`.
pub fn gaussian_matrix(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = SplitMix64::new(seed);
    DMatrix::from_fn(rows, cols, |_, _| rng.next_gaussian())
}

/// Orthonormal basis of the column space of `m` (thin QR).
pub fn orthonormal_columns(m: DMatrix<f64>) -> DMatrix<f64> {
    m.qr().q()
}

/// Mean row and covariance (divided by n) of the rows of `x`.
pub fn mean_and_covariance(x: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.nrows() as f64;
    let mean = x.row_mean().transpose();
    let mut centered = x.clone();
    for mut row in centered.row_iter_mut() {
        row -= mean.transpose();
    }
    let cov = centered.tr_mul(&centered) / n;
    (mean, cov)
}

/// The `k` leading eigenpairs of a symmetric positive semi-definite matrix, eigenvalues
/// descending, eigenvectors as columns.
///
/// Subspace iteration with Rayleigh-Ritz: a full eigendecomposition of a 2048x2048
/// covariance (ResNet-50) takes tens of seconds in nalgebra, while only the top 256
/// directions are needed. `iterations` power steps on a slightly larger block converge the
/// leading subspace; the small projected problem then separates the individual vectors.
pub fn top_eigenpairs(
    sym: &DMatrix<f64>,
    k: usize,
    iterations: usize,
    seed: u64,
) -> (DVector<f64>, DMatrix<f64>) {
    let d = sym.nrows();
    let block = (k + 16).min(d);
    let mut q = orthonormal_columns(gaussian_matrix(d, block, seed));
    for _ in 0..iterations {
        q = orthonormal_columns(sym * &q);
    }
    let small = q.tr_mul(&(sym * &q));
    let small = (&small + small.transpose()) * 0.5;
    let eig = SymmetricEigen::new(small);
    let mut order: Vec<usize> = (0..block).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let k = k.min(block);
    let values = DVector::from_iterator(k, order.iter().take(k).map(|&i| eig.eigenvalues[i]));
    let mut vectors = DMatrix::zeros(d, k);
    for (col, &i) in order.iter().take(k).enumerate() {
        vectors.set_column(col, &(&q * eig.eigenvectors.column(i)));
    }
    (values, vectors)
}

/// The homography (row-major, h33 = 1) taking each of `src` to the matching point of
/// `dst`, if the four pairs are not degenerate.
pub fn homography_from_four(src: &[(f64, f64); 4], dst: &[(f64, f64); 4]) -> Option<[f64; 9]> {
    let mut a = SMatrix::<f64, 8, 8>::zeros();
    let mut b = SVector::<f64, 8>::zeros();
    for i in 0..4 {
        let ((x, y), (u, v)) = (src[i], dst[i]);
        let r = 2 * i;
        a.row_mut(r)
            .copy_from_slice(&[x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y]);
        a.row_mut(r + 1)
            .copy_from_slice(&[0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y]);
        b[r] = u;
        b[r + 1] = v;
    }
    let h = a.lu().solve(&b)?;
    if h.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subspace_iteration_matches_full_eigendecomposition() {
        let a = gaussian_matrix(60, 40, 7);
        let sym = a.tr_mul(&a);
        let (values, vectors) = top_eigenpairs(&sym, 10, 30, 1);
        let full = SymmetricEigen::new(sym.clone());
        let mut exact: Vec<f64> = full.eigenvalues.iter().copied().collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        for i in 0..10 {
            assert!(
                (values[i] - exact[i]).abs() / exact[i] < 1e-6,
                "eigenvalue {i}"
            );
            let v = vectors.column(i);
            let residual = (&sym * v - v * values[i]).norm();
            assert!(
                residual / values[i] < 1e-4,
                "eigenvector {i} residual {residual}"
            );
        }
    }

    #[test]
    fn orthonormal_columns_are_orthonormal() {
        let q = orthonormal_columns(gaussian_matrix(50, 8, 3));
        let gram = q.tr_mul(&q);
        assert!((gram - DMatrix::<f64>::identity(8, 8)).norm() < 1e-10);
    }
}
