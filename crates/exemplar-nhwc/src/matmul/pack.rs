//! Weights packed once, when the model loads, in the order the register blocks read
//! them: column panels of [`PANEL`] columns, each stored as two halves of `k` rows.

use super::{HALF, PANEL};

/// A `rows x cols` matrix in column panels (zero-padded to whole panels).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: Vec<f32>,
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
