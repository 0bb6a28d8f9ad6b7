//! Versioned linear projections from raw pooled features (1280-d for EfficientNet-Lite0)
//! to the searchable 256-d descriptor.
//!
//! A projection is data: a mean and a matrix, saved to a file and identified by a version
//! string that hashes its numbers, so every stored descriptor can say exactly which
//! projection made it, and a refit (new version) is detected everywhere.

use crate::descriptor::{l2_normalize, PooledFeature};
use crate::error::{Error, Result};
use crate::linalg;
use nalgebra::DMatrix;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

const FILE_FORMAT: &str = "exemplar-projection/1";
/// Power-iteration steps of the eigen solver: enough for the leading 256 directions of
/// a 1280/2048-d covariance to settle (checked against a full decomposition in tests).
const EIGEN_ITERATIONS: usize = 12;

/// How a projection was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProjectionKind {
    /// Data-free: a random orthonormal basis (Johnson-Lindenstrauss); cosines are
    /// preserved in expectation.
    RandomOrthogonal { seed: u64 },
    /// PCA of `samples` vectors taken from `source`, each component scaled by
    /// `eigenvalue^(-whitening/2)`: 0 is plain PCA, 1 full whitening.
    Pca {
        source: String,
        samples: usize,
        whitening: f32,
    },
    /// A linear head learned with a metric-learning loss so that synthetic phone-photo
    /// views of an exemplar land near its photo (`exemplar-train`), started from the PCA
    /// `base` and trained on `exemplars` photos with `views` views each.
    Learned {
        base: String,
        exemplars: usize,
        views: usize,
        loss: String,
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    kind: ProjectionKind,
    input_dim: usize,
    output_dim: usize,
    /// Subtracted before projecting (zero for random projections).
    mean: Vec<f32>,
    /// Row-major `output_dim x input_dim`.
    matrix: Vec<f32>,
    version: String,
}

impl Projection {
    fn new(kind: ProjectionKind, mean: Vec<f32>, matrix: Vec<f32>, output_dim: usize) -> Self {
        let input_dim = mean.len();
        assert_eq!(matrix.len(), input_dim * output_dim);
        let version = version_of(&kind, &mean, &matrix);
        Self {
            kind,
            input_dim,
            output_dim,
            mean,
            matrix,
            version,
        }
    }

    /// A linear projection made elsewhere (a learned head): `matrix` is row-major
    /// `output_dim x mean.len()`.
    pub fn linear(kind: ProjectionKind, mean: Vec<f32>, matrix: Vec<f32>) -> Result<Self> {
        if mean.is_empty() || matrix.is_empty() || !matrix.len().is_multiple_of(mean.len()) {
            return Err(Error::Dimension {
                expected: mean.len(),
                got: matrix.len(),
            });
        }
        let output_dim = matrix.len() / mean.len();
        Ok(Self::new(kind, mean, matrix, output_dim))
    }

    /// Data-free projection: works on first start, before any catalogue exists.
    pub fn random_orthogonal(input_dim: usize, output_dim: usize, seed: u64) -> Self {
        assert!(
            output_dim <= input_dim,
            "cannot project {input_dim}-d up to {output_dim}-d"
        );
        let basis =
            linalg::orthonormal_columns(linalg::gaussian_matrix(input_dim, output_dim, seed));
        // Row r of the projection is basis column r (nalgebra stores columns contiguously).
        let mut rows = Vec::with_capacity(input_dim * output_dim);
        for r in 0..output_dim {
            rows.extend(basis.column(r).iter().map(|v| *v as f32));
        }
        Self::new(
            ProjectionKind::RandomOrthogonal { seed },
            vec![0.0; input_dim],
            rows,
            output_dim,
        )
    }

    /// Minimum number of samples for a PCA fit of `output_dim` components.
    pub fn min_samples_for(output_dim: usize) -> usize {
        output_dim + 1
    }

    /// PCA (optionally power-whitened) fitted on `samples`.
    pub fn fit_pca(
        samples: &[&[f32]],
        output_dim: usize,
        whitening: f32,
        source: &str,
    ) -> Result<Self> {
        let needed = Self::min_samples_for(output_dim);
        if samples.len() < needed {
            return Err(Error::TooFewSamples {
                dim: output_dim,
                samples: samples.len(),
                needed,
            });
        }
        let input_dim = samples[0].len();
        if let Some(bad) = samples.iter().find(|s| s.len() != input_dim) {
            return Err(Error::Dimension {
                expected: input_dim,
                got: bad.len(),
            });
        }
        if output_dim > input_dim {
            return Err(Error::Dimension {
                expected: input_dim,
                got: output_dim,
            });
        }
        let x = DMatrix::from_fn(samples.len(), input_dim, |r, c| samples[r][c] as f64);
        let (mean, cov) = linalg::mean_and_covariance(&x);
        let (values, vectors) = linalg::top_eigenpairs(&cov, output_dim, EIGEN_ITERATIONS, 0x5eed);
        // Directions with (numerically) no variance would be blown up by whitening.
        let floor = values[0].max(f64::MIN_POSITIVE) * 1e-6;
        let mut matrix = Vec::with_capacity(output_dim * input_dim);
        for c in 0..output_dim {
            let scale = values[c].max(floor).powf(-(whitening as f64) / 2.0);
            matrix.extend(vectors.column(c).iter().map(|v| (v * scale) as f32));
        }
        Ok(Self::new(
            ProjectionKind::Pca {
                source: source.to_string(),
                samples: samples.len(),
                whitening,
            },
            mean.iter().map(|v| *v as f32).collect(),
            matrix,
            output_dim,
        ))
    }

    pub fn kind(&self) -> &ProjectionKind {
        &self.kind
    }
    /// Subtracted from a raw feature before the matrix is applied.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Row-major `output_dim x input_dim`.
    pub fn matrix(&self) -> &[f32] {
        &self.matrix
    }
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }
    pub fn output_dim(&self) -> usize {
        self.output_dim
    }
    /// e.g. `pca-w0.5-n811-3fa2c4d1e0b9`: kind, then a hash of the numbers.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Projects one raw feature and L2-normalises the result.
    pub fn apply(&self, raw: &PooledFeature) -> Result<Vec<f32>> {
        let raw = &raw.0;
        if raw.len() != self.input_dim {
            return Err(Error::Dimension {
                expected: self.input_dim,
                got: raw.len(),
            });
        }
        let centered: Vec<f32> = raw.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        let mut out: Vec<f32> = self
            .matrix
            .chunks_exact(self.input_dim)
            .map(|row| row.iter().zip(&centered).map(|(w, x)| w * x).sum())
            .collect();
        l2_normalize(&mut out);
        Ok(out)
    }

    /// The safetensors form (what [`Projection::save`] writes and the catalogue stores).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let err = |reason: String| Error::ProjectionFile {
            path: "<bytes>".into(),
            reason,
        };
        let mean_bytes: Vec<u8> = self.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
        let matrix_bytes: Vec<u8> = self.matrix.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = [
            (
                "mean",
                TensorView::new(Dtype::F32, vec![self.input_dim], &mean_bytes)
                    .map_err(|e| err(e.to_string()))?,
            ),
            (
                "matrix",
                TensorView::new(
                    Dtype::F32,
                    vec![self.output_dim, self.input_dim],
                    &matrix_bytes,
                )
                .map_err(|e| err(e.to_string()))?,
            ),
        ];
        let metadata = HashMap::from([
            ("format".to_string(), FILE_FORMAT.to_string()),
            ("version".to_string(), self.version.clone()),
            (
                "kind".to_string(),
                serde_json::to_string(&self.kind).map_err(|e| err(e.to_string()))?,
            ),
        ]);
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| err(e.to_string()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().map_err(|e| match e {
            Error::ProjectionFile { reason, .. } => Error::ProjectionFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        // Write then rename: a crash never leaves a half-written projection behind.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_bytes(&std::fs::read(path)?, &path.display().to_string())
    }

    /// Reads [`Projection::to_bytes`]; `origin` names the source in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let file_err = |reason: String| Error::ProjectionFile {
            path: origin.to_string(),
            reason,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| file_err(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FILE_FORMAT) {
            return Err(file_err(format!("not an {FILE_FORMAT} file")));
        }
        let kind: ProjectionKind =
            serde_json::from_str(meta.get("kind").ok_or_else(|| file_err("no kind".into()))?)
                .map_err(|e| file_err(e.to_string()))?;
        let st =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| file_err(e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st.tensor(name).map_err(|e| file_err(e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(file_err(format!("{name} is not f32")));
            }
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), values))
        };
        let (mean_shape, mean) = read("mean")?;
        let (matrix_shape, matrix) = read("matrix")?;
        if matrix_shape.len() != 2 || mean_shape != [matrix_shape[1]] {
            return Err(file_err(format!(
                "inconsistent shapes: mean {mean_shape:?}, matrix {matrix_shape:?}"
            )));
        }
        let projection = Self::new(kind, mean, matrix, matrix_shape[0]);
        if meta.get("version") != Some(&projection.version) {
            return Err(file_err(
                "contents do not match the recorded version (corrupt?)".into(),
            ));
        }
        Ok(projection)
    }
}

fn version_of(kind: &ProjectionKind, mean: &[f32], matrix: &[f32]) -> String {
    let mut hash = Sha256::new();
    for v in mean.iter().chain(matrix) {
        hash.update(v.to_le_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let tag = match kind {
        ProjectionKind::RandomOrthogonal { seed } => format!("rand-orth-s{seed}"),
        ProjectionKind::Pca {
            samples, whitening, ..
        } => format!("pca-w{whitening}-n{samples}"),
        ProjectionKind::Learned {
            exemplars, views, ..
        } => format!("learned-n{exemplars}x{views}"),
    };
    format!("{tag}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::cosine;
    use crate::rng::SplitMix64;

    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.next_gaussian() as f32).collect();
                l2_normalize(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn random_orthogonal_is_reproducible_and_keeps_norms_of_its_row_space() {
        let a = Projection::random_orthogonal(64, 16, 3);
        let b = Projection::random_orthogonal(64, 16, 3);
        assert_eq!(a, b);
        assert_ne!(
            a.version(),
            Projection::random_orthogonal(64, 16, 4).version()
        );
        // Rows are orthonormal: a vector in the row space keeps its length exactly.
        let row0: Vec<f32> = a.matrix[..64].to_vec();
        let row0_norm: f32 = row0.iter().map(|x| x * x).sum();
        assert!((row0_norm - 1.0).abs() < 1e-5);
        let row1 = &a.matrix[64..128];
        assert!(cosine(&row0, row1).abs() < 1e-5);
        let out = a.apply(&PooledFeature(row0)).unwrap();
        assert!((out[0] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn pca_finds_the_planted_subspace() {
        // Samples vary along 3 planted directions plus small noise: a 3-d PCA must keep
        // the neighbourhoods a 3-d structure defines.
        let dim = 32;
        let dirs = unit_vectors(3, dim, 11);
        let mut rng = SplitMix64::new(5);
        let samples: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                let coeffs: Vec<f32> = (0..3)
                    .map(|k| rng.next_gaussian() as f32 * (3 - k) as f32)
                    .collect();
                (0..dim)
                    .map(|i| {
                        dirs.iter().zip(&coeffs).map(|(d, c)| d[i] * c).sum::<f32>()
                            + 0.01 * rng.next_gaussian() as f32
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = samples.iter().map(Vec::as_slice).collect();
        let p = Projection::fit_pca(&refs, 3, 0.0, "test").unwrap();
        // Each planted direction is (almost) entirely inside the projection's row space.
        for d in &dirs {
            let captured: f32 = p
                .matrix
                .chunks_exact(dim)
                .map(|row| cosine(row, d).powi(2))
                .sum();
            assert!(captured > 0.99, "captured {captured}");
        }
    }

    #[test]
    fn fitting_needs_enough_samples_and_matching_dims() {
        let v = unit_vectors(4, 8, 1);
        let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        assert!(matches!(
            Projection::fit_pca(&refs, 4, 0.5, "t"),
            Err(Error::TooFewSamples { needed: 5, .. })
        ));
        let p = Projection::random_orthogonal(8, 4, 0);
        assert!(matches!(
            p.apply(&PooledFeature(vec![0.0; 7])),
            Err(Error::Dimension {
                expected: 8,
                got: 7
            })
        ));
    }

    #[test]
    fn a_learned_head_is_stored_and_read_back_as_it_was() {
        let base = Projection::random_orthogonal(12, 4, 1);
        let kind = ProjectionKind::Learned {
            base: base.version().into(),
            exemplars: 10,
            views: 2,
            loss: "triplet".into(),
            seed: 3,
        };
        let head = Projection::linear(kind.clone(), vec![0.5; 12], base.matrix().to_vec()).unwrap();
        assert!(
            head.version().starts_with("learned-n10x2-"),
            "{}",
            head.version()
        );
        assert_eq!((head.input_dim(), head.output_dim()), (12, 4));
        let back = Projection::from_bytes(&head.to_bytes().unwrap(), "test").unwrap();
        assert_eq!(back, head);
        assert_eq!(back.kind(), &kind);
        assert!(Projection::linear(kind, vec![0.0; 12], vec![0.0; 13]).is_err());
    }

    #[test]
    fn save_load_roundtrip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let v = unit_vectors(40, 16, 2);
        let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        let p = Projection::fit_pca(&refs, 8, 0.5, "catalogue").unwrap();
        p.save(&path).unwrap();
        let q = Projection::load(&path).unwrap();
        assert_eq!(p, q);
        assert!(q.version().starts_with("pca-w0.5-n40-"));

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = Projection::load(&path).unwrap_err().to_string();
        assert!(err.contains("do not match"), "{err}");
    }
}
