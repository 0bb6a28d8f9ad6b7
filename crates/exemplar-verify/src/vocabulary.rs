//! Visual words: a vocabulary tree (hierarchical k-means, Nistér & Stewénius 2006) over
//! SIFT descriptors, fitted on a catalogue's own features without labels, and the
//! tf-idf "bag of words" of one image.
//!
//! The tree has `branching` children per node and `depth` levels; a descriptor descends
//! to the nearest child at each level and its word is the leaf it reaches, so quantising
//! costs `branching × depth` distances rather than one per word. Inverse document
//! frequencies are counted on the images the tree was fitted on and are part of the
//! vocabulary (and of its version): an index built with it scores every image with the
//! same weights whatever was added since.

use crate::sift::DESCRIPTOR_LEN;
use exemplar_core::rng::SplitMix64;
use rayon::prelude::*;

/// A SIFT descriptor as stored (RootSIFT scaled to bytes).
pub type Descriptor = [u8; DESCRIPTOR_LEN];

#[derive(Debug, Clone, PartialEq)]
pub struct VocabularyParams {
    /// Children per node.
    pub branching: usize,
    /// Levels: `branching ^ depth` words.
    pub depth: usize,
    /// Lloyd iterations per node.
    pub iterations: usize,
    /// Descriptors sampled (evenly over the images) to fit the tree on.
    pub max_training: usize,
    pub seed: u64,
}

impl Default for VocabularyParams {
    /// 10 × 10 × 10 × 10 = 10,000 words on at most 200,000 descriptors (see
    /// `docs/benchmarks.md`, "Local-feature shortlist", for the alternatives measured).
    fn default() -> Self {
        Self {
            branching: 10,
            depth: 4,
            iterations: 8,
            max_training: 200_000,
            seed: 0x5eed,
        }
    }
}

/// How a bag of words is normalised and two bags compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Norm {
    /// Weights sum to 1; similarity is the histogram intersection Σ min(q, d) (the L1
    /// distance of Nistér & Stewénius, as a similarity in 0..1).
    #[default]
    L1,
    /// Unit length; similarity is the dot product (cosine).
    L2,
}

impl std::str::FromStr for Norm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l1" => Ok(Norm::L1),
            "l2" => Ok(Norm::L2),
            _ => Err(format!("unknown word norm {s:?}: expected l1 or l2")),
        }
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Norm::L1 => "l1",
            Norm::L2 => "l2",
        })
    }
}

impl Norm {
    /// The similarity contribution of one shared word.
    #[inline]
    pub fn combine(self, query: f32, document: f32) -> f32 {
        match self {
            Norm::L1 => query.min(document),
            Norm::L2 => query * document,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    branching: usize,
    depth: usize,
    /// Level `l` holds `branching ^ (l + 1)` centroids of `DESCRIPTOR_LEN` values; node
    /// `j` of level `l` has children `j × branching ..` of level `l + 1`.
    levels: Vec<Vec<f32>>,
    /// Inverse document frequency of each word among the images fitted on.
    idf: Vec<f32>,
    version: String,
}

/// Why bytes are not a vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabularyError(pub String);

impl std::fmt::Display for VocabularyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vocabulary: {}", self.0)
    }
}

impl std::error::Error for VocabularyError {}

const MAGIC: &[u8; 4] = b"EXV1";
/// Bounds read from untrusted bytes: 2..=64 children, 1..=8 levels, ≤ 2^20 words.
const MAX_WORDS: usize = 1 << 20;

impl Vocabulary {
    /// Fits the tree on the descriptors of `images` (one slice per image) and counts
    /// document frequencies over all of them. Deterministic for the same input and seed;
    /// uses every core.
    pub fn fit(images: &[&[Descriptor]], params: &VocabularyParams) -> Self {
        let b = params.branching.clamp(2, 64);
        let depth = params.depth.clamp(1, 8);
        let training = sample(images, params.max_training);
        let mut levels: Vec<Vec<f32>> = (0..depth)
            .map(|l| vec![0.0; b.pow(l as u32 + 1) * DESCRIPTOR_LEN])
            .collect();
        // Level by level: each node's points are split into `b` clusters.
        let mut groups: Vec<Vec<u32>> = vec![(0..training.len() as u32).collect()];
        for (level, centroids) in levels.iter_mut().enumerate() {
            let split: Vec<(Vec<f32>, Vec<Vec<u32>>)> = groups
                .par_iter()
                .enumerate()
                .map(|(node, points)| {
                    let seed = params.seed ^ ((level as u64) << 48) ^ node as u64;
                    kmeans(&training, points, b, params.iterations, seed)
                })
                .collect();
            groups = Vec::with_capacity(split.len() * b);
            for (node, (centres, children)) in split.into_iter().enumerate() {
                let at = node * b * DESCRIPTOR_LEN;
                centroids[at..at + centres.len()].copy_from_slice(&centres);
                groups.extend(children);
            }
        }
        let mut vocabulary = Self {
            branching: b,
            depth,
            levels,
            idf: Vec::new(),
            version: String::new(),
        };
        let words = vocabulary.words();
        let counts: Vec<Vec<u32>> = images
            .par_iter()
            .map(|d| {
                let mut w: Vec<u32> = d.iter().map(|x| vocabulary.quantise(x)).collect();
                w.sort_unstable();
                w.dedup();
                w
            })
            .collect();
        let mut df = vec![0u32; words];
        for w in counts.iter().flatten() {
            df[*w as usize] += 1;
        }
        let n = images.len().max(1) as f32;
        // A word no fitted image has is as rare as it gets.
        vocabulary.idf = df.iter().map(|&d| (n / d.max(1) as f32).ln()).collect();
        vocabulary.version = vocabulary.fingerprint();
        vocabulary
    }

    pub fn words(&self) -> usize {
        self.branching.pow(self.depth as u32)
    }

    /// `vt{branching}^{depth}-{hash of the tree and weights}`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The word (leaf) a descriptor descends to.
    pub fn quantise(&self, descriptor: &Descriptor) -> u32 {
        let x: [f32; DESCRIPTOR_LEN] = std::array::from_fn(|i| descriptor[i] as f32);
        let mut node = 0usize;
        for centroids in &self.levels {
            let first = node * self.branching;
            let mut best = (f32::INFINITY, first);
            for child in first..first + self.branching {
                let c = &centroids[child * DESCRIPTOR_LEN..(child + 1) * DESCRIPTOR_LEN];
                let d = squared_distance(&x, c);
                if d < best.0 {
                    best = (d, child);
                }
            }
            node = best.1;
        }
        node as u32
    }

    /// The image's words with their tf-idf weights, normalised by `norm`, sorted by word.
    /// Words every fitted image has (weight 0) are left out.
    pub fn bag(&self, descriptors: &[Descriptor], norm: Norm) -> Vec<(u32, f32)> {
        let mut words: Vec<u32> = descriptors.iter().map(|d| self.quantise(d)).collect();
        words.sort_unstable();
        let mut bag: Vec<(u32, f32)> = Vec::new();
        for w in words {
            match bag.last_mut() {
                Some((last, count)) if *last == w => *count += 1.0,
                _ => bag.push((w, 1.0)),
            }
        }
        for (w, weight) in bag.iter_mut() {
            *weight *= self.idf[*w as usize];
        }
        bag.retain(|(_, weight)| *weight > 0.0);
        let total = match norm {
            Norm::L1 => bag.iter().map(|(_, x)| x).sum::<f32>(),
            Norm::L2 => bag.iter().map(|(_, x)| x * x).sum::<f32>().sqrt(),
        };
        if total > 0.0 {
            for (_, weight) in bag.iter_mut() {
                *weight /= total;
            }
        }
        bag
    }

    /// Little-endian: magic, branching, depth (u32 each), the centroids level by level,
    /// the idf of each word (f32 each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.branching as u32).to_le_bytes());
        out.extend_from_slice(&(self.depth as u32).to_le_bytes());
        for x in self.levels.iter().flatten().chain(&self.idf) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    fn encoded_len(&self) -> usize {
        12 + 4 * (self.levels.iter().map(Vec::len).sum::<usize>() + self.idf.len())
    }

    /// The inverse of [`Vocabulary::to_bytes`]; returns the vocabulary and the bytes used.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, usize), VocabularyError> {
        let bad = |m: &str| VocabularyError(m.to_string());
        if bytes.len() < 12 || &bytes[..4] != MAGIC {
            return Err(bad("not in the EXV1 format"));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (b, depth) = (word(4) as usize, word(8) as usize);
        if !(2..=64).contains(&b) || !(1..=8).contains(&depth) {
            return Err(bad("branching or depth out of range"));
        }
        let words = b
            .checked_pow(depth as u32)
            .filter(|w| *w <= MAX_WORDS)
            .ok_or_else(|| bad("too many words"))?;
        let sizes: Vec<usize> = (0..depth)
            .map(|l| b.pow(l as u32 + 1) * DESCRIPTOR_LEN)
            .collect();
        let floats = sizes.iter().sum::<usize>() + words;
        let used = 12 + 4 * floats;
        if bytes.len() < used {
            return Err(bad("cut short"));
        }
        let mut values = bytes[12..used]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
        let levels: Vec<Vec<f32>> = sizes
            .iter()
            .map(|n| values.by_ref().take(*n).collect())
            .collect();
        let idf: Vec<f32> = values.collect();
        if idf
            .iter()
            .chain(levels.iter().flatten())
            .any(|x| !x.is_finite())
        {
            return Err(bad("a value is not finite"));
        }
        let mut vocabulary = Self {
            branching: b,
            depth,
            levels,
            idf,
            version: String::new(),
        };
        vocabulary.version = vocabulary.fingerprint();
        Ok((vocabulary, used))
    }

    fn fingerprint(&self) -> String {
        // FNV-1a over the encoded tree and weights.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.to_bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("vt{}^{}-{:016x}", self.branching, self.depth, hash)
    }
}

#[inline]
fn squared_distance(x: &[f32; DESCRIPTOR_LEN], c: &[f32]) -> f32 {
    x.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// At most `max` descriptors, spread evenly over the images and within each.
fn sample(images: &[&[Descriptor]], max: usize) -> Vec<[f32; DESCRIPTOR_LEN]> {
    let total: usize = images.iter().map(|d| d.len()).sum();
    let step = (total as f64 / max.max(1) as f64).max(1.0);
    let mut out = Vec::with_capacity(total.min(max));
    let mut next = 0.0f64;
    for (at, d) in images.iter().flat_map(|d| d.iter()).enumerate() {
        if at as f64 >= next {
            out.push(std::array::from_fn(|i| d[i] as f32));
            next += step;
        }
    }
    out
}

/// `k` centroids of the points (k-means++ seeding, then Lloyd iterations) and the points
/// of each cluster. Fewer points than `k`: the points themselves, repeated.
fn kmeans(
    all: &[[f32; DESCRIPTOR_LEN]],
    points: &[u32],
    k: usize,
    iterations: usize,
    seed: u64,
) -> (Vec<f32>, Vec<Vec<u32>>) {
    let mut centres = vec![0.0f32; k * DESCRIPTOR_LEN];
    if points.is_empty() {
        return (centres, vec![Vec::new(); k]);
    }
    let point = |i: u32| &all[i as usize];
    let mut rng = SplitMix64::new(seed);
    // k-means++: each next centre drawn with probability ∝ squared distance to the nearest.
    let first = points[(rng.next_u64() % points.len() as u64) as usize];
    centres[..DESCRIPTOR_LEN].copy_from_slice(point(first));
    let mut nearest: Vec<f32> = points
        .iter()
        .map(|&p| squared_distance(point(p), &centres[..DESCRIPTOR_LEN]))
        .collect();
    for c in 1..k {
        let total: f64 = nearest.iter().map(|&d| d as f64).sum();
        let chosen = if total <= 0.0 {
            points[(rng.next_u64() % points.len() as u64) as usize]
        } else {
            // Uniform in [0, 1).
            let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let mut target = unit * total;
            let mut pick = points.len() - 1;
            for (i, &d) in nearest.iter().enumerate() {
                target -= d as f64;
                if target <= 0.0 {
                    pick = i;
                    break;
                }
            }
            points[pick]
        };
        let centre = &mut centres[c * DESCRIPTOR_LEN..(c + 1) * DESCRIPTOR_LEN];
        centre.copy_from_slice(point(chosen));
        for (d, &p) in nearest.iter_mut().zip(points) {
            *d = d.min(squared_distance(point(p), centre));
        }
    }
    let assign = |centres: &[f32]| -> Vec<u32> {
        let nearest_centre = |p: &[f32; DESCRIPTOR_LEN]| {
            let mut best = (f32::INFINITY, 0u32);
            for c in 0..k {
                let d = squared_distance(p, &centres[c * DESCRIPTOR_LEN..(c + 1) * DESCRIPTOR_LEN]);
                if d < best.0 {
                    best = (d, c as u32);
                }
            }
            best.1
        };
        // The root's split is the big one: spread it over the cores.
        if points.len() > 20_000 {
            points
                .par_iter()
                .map(|&p| nearest_centre(point(p)))
                .collect()
        } else {
            points.iter().map(|&p| nearest_centre(point(p))).collect()
        }
    };
    let mut labels = assign(&centres);
    for _ in 0..iterations {
        let mut sums = vec![0.0f64; k * DESCRIPTOR_LEN];
        let mut counts = vec![0usize; k];
        for (&p, &l) in points.iter().zip(&labels) {
            counts[l as usize] += 1;
            let sum = &mut sums[l as usize * DESCRIPTOR_LEN..(l as usize + 1) * DESCRIPTOR_LEN];
            for (s, x) in sum.iter_mut().zip(point(p)) {
                *s += *x as f64;
            }
        }
        for c in 0..k {
            // An empty cluster keeps its centre.
            if counts[c] > 0 {
                for i in 0..DESCRIPTOR_LEN {
                    centres[c * DESCRIPTOR_LEN + i] =
                        (sums[c * DESCRIPTOR_LEN + i] / counts[c] as f64) as f32;
                }
            }
        }
        let next = assign(&centres);
        let settled = next == labels;
        labels = next;
        if settled {
            break;
        }
    }
    let mut clusters = vec![Vec::new(); k];
    for (&p, &l) in points.iter().zip(&labels) {
        clusters[l as usize].push(p);
    }
    (centres, clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors scattered around `centres` well-separated prototypes.
    fn clustered(centres: usize, per: usize, seed: u64) -> Vec<Descriptor> {
        let mut rng = SplitMix64::new(seed);
        let prototypes: Vec<Descriptor> = (0..centres)
            .map(|_| std::array::from_fn(|_| (rng.next_u64() % 256) as u8))
            .collect();
        (0..centres * per)
            .map(|i| {
                let p = &prototypes[i % centres];
                std::array::from_fn(|j| p[j].saturating_add((rng.next_u64() % 5) as u8))
            })
            .collect()
    }

    fn small() -> VocabularyParams {
        VocabularyParams {
            branching: 4,
            depth: 3,
            ..VocabularyParams::default()
        }
    }

    fn similarity(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
        a.iter()
            .filter_map(|(w, x)| b.iter().find(|(v, _)| v == w).map(|(_, y)| x.min(*y)))
            .sum()
    }

    /// Two photos of the same details (new noise) share their words; photos of other
    /// details do not; the same input and seed give the same tree.
    #[test]
    fn photos_of_the_same_details_share_words_and_the_fit_is_reproducible() {
        let d = clustered(16, 40, 1);
        let images: Vec<&[Descriptor]> = d.chunks(64).collect();
        let v = Vocabulary::fit(&images, &small());
        assert_eq!(v.words(), 64);
        assert_eq!(
            Vocabulary::fit(&images, &small()),
            v,
            "same input, same tree"
        );
        // Prototype p's points are every 16th: "photo" A shows prototypes 0..8 twice
        // (two noise draws), B shows 8..16.
        let of = |protos: std::ops::Range<usize>, draw: usize| -> Vec<Descriptor> {
            d.iter()
                .enumerate()
                .filter(|(i, _)| protos.contains(&(i % 16)) && (i / 16) % 2 == draw)
                .map(|(_, x)| *x)
                .collect()
        };
        let a = v.bag(&of(0..8, 0), Norm::L1);
        let a_again = v.bag(&of(0..8, 1), Norm::L1);
        let b = v.bag(&of(8..16, 0), Norm::L1);
        let same = similarity(&a, &a_again);
        let other = similarity(&a, &b);
        assert!(same > 0.6, "same details: {same}");
        assert!(other < 0.1, "other details: {other}");
    }

    #[test]
    fn bags_are_normalised_and_the_encoding_round_trips() {
        let d = clustered(16, 40, 2);
        let images: Vec<&[Descriptor]> = d.chunks(64).collect();
        let v = Vocabulary::fit(&images, &small());
        let l1 = v.bag(&d[..100], Norm::L1);
        assert!((l1.iter().map(|w| w.1).sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(
            l1.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, one entry per word"
        );
        let l2 = v.bag(&d[..100], Norm::L2);
        assert!((l2.iter().map(|w| w.1 * w.1).sum::<f32>() - 1.0).abs() < 1e-4);
        let bytes = v.to_bytes();
        let (back, used) = Vocabulary::from_bytes(&bytes).unwrap();
        assert_eq!((back.version(), used), (v.version(), bytes.len()));
        assert_eq!(back, v);
        assert!(Vocabulary::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&64u32.to_le_bytes());
        huge[8..12].copy_from_slice(&8u32.to_le_bytes());
        assert!(Vocabulary::from_bytes(&huge).is_err(), "64^8 words refused");
    }
}
