//! Seeded synthetic descriptor sets for measuring the index: unit vectors in clusters of
//! uneven size, each spread mostly along its own low-dimensional subspace, as image
//! descriptors are (many photos of few kinds of thing, varying along few directions).
//! The same seed gives the same vectors on every machine.

use exemplar_core::rng::SplitMix64;

/// The shape of a clustered set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusteredSpec {
    pub points: usize,
    /// Held-out queries drawn like the points.
    pub queries: usize,
    pub dim: usize,
    pub clusters: usize,
    /// Dimensions of each cluster's own subspace.
    pub subspace: usize,
    /// Spread along the cluster's subspace, relative to the centre's unit length.
    pub spread: f32,
    /// Isotropic noise, relative to the centre's unit length.
    pub noise: f32,
    pub seed: u64,
}

impl Default for ClusteredSpec {
    fn default() -> Self {
        Self {
            points: 100_000,
            queries: 1_000,
            dim: 256,
            clusters: 2_000,
            subspace: 24,
            spread: 0.25,
            noise: 0.08,
            seed: 1,
        }
    }
}

pub struct ClusteredSet {
    pub points: Vec<Vec<f32>>,
    pub queries: Vec<Vec<f32>>,
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

struct Cluster {
    centre: Vec<f32>,
    basis: Vec<Vec<f32>>,
}

/// Draws the set: cluster weights are log-normal (a few large clusters, many small ones).
pub fn clustered(spec: &ClusteredSpec) -> ClusteredSet {
    let mut rng = SplitMix64::new(spec.seed);
    let dim = spec.dim;
    let scale = 1.0 / (dim as f32).sqrt();
    let mut clusters = Vec::with_capacity(spec.clusters);
    let mut cumulative = Vec::with_capacity(spec.clusters);
    let mut total = 0.0;
    for _ in 0..spec.clusters.max(1) {
        let mut centre: Vec<f32> = (0..dim).map(|_| rng.next_gaussian() as f32).collect();
        normalise(&mut centre);
        let basis = (0..spec.subspace)
            .map(|_| {
                (0..dim)
                    .map(|_| rng.next_gaussian() as f32 * scale)
                    .collect()
            })
            .collect();
        clusters.push(Cluster { centre, basis });
        total += rng.next_gaussian().exp();
        cumulative.push(total);
    }
    let draw = |rng: &mut SplitMix64| {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let cluster = &clusters[cumulative
            .partition_point(|&c| c < u)
            .min(clusters.len() - 1)];
        let mut v = cluster.centre.clone();
        for direction in &cluster.basis {
            let a = rng.next_gaussian() as f32 * spec.spread;
            v.iter_mut().zip(direction).for_each(|(x, d)| *x += a * d);
        }
        v.iter_mut()
            .for_each(|x| *x += rng.next_gaussian() as f32 * spec.noise * scale);
        normalise(&mut v);
        v
    };
    let points = (0..spec.points).map(|_| draw(&mut rng)).collect();
    let queries = (0..spec.queries).map(|_| draw(&mut rng)).collect();
    ClusteredSet { points, queries }
}

/// The exact `k` nearest points (by inner product) of every query, as indices into
/// `points`, nearest first; computed on all cores.
pub fn exact_neighbours(points: &[Vec<f32>], queries: &[Vec<f32>], k: usize) -> Vec<Vec<u32>> {
    let one = |q: &Vec<f32>| {
        let mut scored: Vec<(f32, u32)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.iter().zip(q).map(|(a, b)| a * b).sum(), i as u32))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, i)| i).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = queries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("exact search thread"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_unit_vectors_and_another_seed_others() {
        let spec = ClusteredSpec {
            points: 50,
            queries: 5,
            dim: 16,
            clusters: 4,
            subspace: 3,
            ..ClusteredSpec::default()
        };
        let a = clustered(&spec);
        let b = clustered(&spec);
        assert_eq!(a.points, b.points);
        assert_eq!(a.queries, b.queries);
        assert!(a
            .points
            .iter()
            .all(|v| (v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4));
        let c = clustered(&ClusteredSpec { seed: 2, ..spec });
        assert_ne!(a.points, c.points);
    }

    #[test]
    fn exact_neighbours_rank_the_point_itself_first() {
        let set = clustered(&ClusteredSpec {
            points: 200,
            queries: 0,
            dim: 16,
            clusters: 5,
            subspace: 3,
            ..ClusteredSpec::default()
        });
        let queries: Vec<Vec<f32>> = set.points.iter().step_by(20).cloned().collect();
        let found = exact_neighbours(&set.points, &queries, 3);
        for (n, row) in found.iter().enumerate() {
            assert_eq!(row.len(), 3);
            assert_eq!(row[0] as usize, n * 20);
        }
    }
}
