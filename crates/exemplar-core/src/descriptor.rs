use serde::{Deserialize, Serialize};

/// A pooled, L2-normalised CNN feature (e.g. 1280-d GeM of EfficientNet-Lite0's last
/// feature map). Stored with every exemplar so that projections can be refitted without
/// running the CNN again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledFeature(pub Vec<f32>);

/// The searchable descriptor: a projected, L2-normalised vector plus the identity of the
/// model and projection that made it. Descriptors of different (model, projection) pairs
/// live in different spaces and must never be compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub values: Vec<f32>,
    pub model: String,
    pub projection: String,
}

/// Scales `v` to unit L2 norm in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Dot product, which is the cosine similarity for unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_vectors_have_unit_norm_and_zero_stays_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-6);
    }
}
