//! Descriptor matching: nearest neighbour (Hamming distance for ORB bits, Euclidean for
//! RootSIFT bytes) with Lowe's ratio test.

use crate::features::Descriptors;
use crate::sift::DESCRIPTOR_LEN;
use crate::LocalFeatures;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into the first feature set's keypoints.
    pub from: usize,
    /// Index into the second feature set's keypoints.
    pub to: usize,
    pub distance: u32,
}

/// Above this many differing bits (of 256) two descriptors are unrelated.
const MAX_DISTANCE: u32 = 80;

#[inline(always)]
fn hamming(a: &[u64; 4], b: &[u64; 4]) -> u32 {
    (a[0] ^ b[0]).count_ones()
        + (a[1] ^ b[1]).count_ones()
        + (a[2] ^ b[2]).count_ones()
        + (a[3] ^ b[3]).count_ones()
}

/// For each descriptor of `from`, its nearest in `to` when clearly nearer than the
/// second nearest (`ratio`, on distances); each `to` keypoint is used at most once (its
/// best match). Features of different kinds have nothing to match.
pub fn match_features(from: &LocalFeatures, to: &LocalFeatures, ratio: f32) -> Vec<Match> {
    match (&from.descriptors, &to.descriptors) {
        (Descriptors::Orb(a), Descriptors::Orb(b)) => match_orb(a, b, ratio),
        (Descriptors::Sift(a), Descriptors::Sift(b)) => match_sift(a, b, ratio),
        _ => Vec::new(),
    }
}

fn match_orb(from: &[[u64; 4]], to: &[[u64; 4]], ratio: f32) -> Vec<Match> {
    // The x86-64 baseline has no POPCNT instruction, so `count_ones` becomes a dozen
    // instructions; with it the brute-force matching (a million distances per pair of
    // images, most of a search's verification time) runs about twice as fast. Every
    // x86-64 CPU since 2008 has it; the check keeps older ones working.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU supports POPCNT, checked just above.
        return unsafe { match_with_popcnt(from, to, ratio) };
    }
    match_portable(from, to, ratio)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn match_with_popcnt(from: &[[u64; 4]], to: &[[u64; 4]], ratio: f32) -> Vec<Match> {
    match_portable(from, to, ratio)
}

/// The nearest target (its index and distance) and the second-nearest distance.
#[inline(always)]
fn two_nearest(distances: impl Iterator<Item = u32>) -> (usize, u32, u32) {
    let (mut best, mut second, mut best_j) = (u32::MAX, u32::MAX, 0);
    for (j, dist) in distances.enumerate() {
        if dist < best {
            second = best;
            best = dist;
            best_j = j;
        } else if dist < second {
            second = dist;
        }
    }
    (best_j, best, second)
}

/// Accepted matches, each target keeping only its nearest.
struct OnePerTarget(Vec<Option<Match>>);

impl OnePerTarget {
    fn new(targets: usize) -> Self {
        Self(vec![None; targets])
    }

    fn offer(&mut self, candidate: Match) {
        match self.0[candidate.to] {
            Some(m) if m.distance <= candidate.distance => {}
            _ => self.0[candidate.to] = Some(candidate),
        }
    }

    fn into_matches(self) -> Vec<Match> {
        self.0.into_iter().flatten().collect()
    }
}

/// Inlined into its callers, so each is compiled with the caller's CPU features.
#[inline(always)]
fn match_portable(from: &[[u64; 4]], to: &[[u64; 4]], ratio: f32) -> Vec<Match> {
    let mut matches = OnePerTarget::new(to.len());
    for (i, d) in from.iter().enumerate() {
        let (j, best, second) = two_nearest(to.iter().map(|e| hamming(d, e)));
        if best > MAX_DISTANCE || (best as f32) >= ratio * second as f32 {
            continue;
        }
        matches.offer(Match {
            from: i,
            to: j,
            distance: best,
        });
    }
    matches.into_matches()
}

/// Squared Euclidean distance between two byte descriptors (the matcher's reference).
#[cfg(test)]
fn squared_distance(a: &[u8; DESCRIPTOR_LEN], b: &[u8; DESCRIPTOR_LEN]) -> u32 {
    let mut sum = 0u32;
    for (x, y) in a.iter().zip(b) {
        let d = *x as i32 - *y as i32;
        sum += (d * d) as u32;
    }
    sum
}

fn squared_norm(a: &[u8; DESCRIPTOR_LEN]) -> u32 {
    a.iter().map(|&v| v as u32 * v as u32).sum()
}

/// Dot products of `q` with `refs[j]` for every j, into `out`. RootSIFT bytes stay below
/// 128 (see [`crate::sift`]), so one operand may be read as signed bytes and AVX2's
/// byte multiply-add (`vpmaddubsw`, pairs of products within an i16) is exact.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_avx2(q: &[u8; DESCRIPTOR_LEN], refs: &[[u8; DESCRIPTOR_LEN]], out: &mut [u32]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(refs.len(), out.len());
    // SAFETY: every load reads 32 bytes inside a 128-byte descriptor; AVX2 is enabled.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let lane = |p: &[u8; DESCRIPTOR_LEN], c: usize| {
            _mm256_loadu_si256(p.as_ptr().add(32 * c) as *const __m256i)
        };
        let qv = [lane(q, 0), lane(q, 1), lane(q, 2), lane(q, 3)];
        let dot = |r: &[u8; DESCRIPTOR_LEN]| {
            let mut acc = _mm256_setzero_si256();
            for (c, qc) in qv.iter().enumerate() {
                let pairs = _mm256_maddubs_epi16(lane(r, c), *qc);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            }
            acc
        };
        let mut chunks = refs.chunks_exact(4);
        let mut at = 0;
        for four in &mut chunks {
            let (a, b, c, d) = (dot(&four[0]), dot(&four[1]), dot(&four[2]), dot(&four[3]));
            // Pairwise sums leave [a b c d] per 128-bit half; the halves add up.
            let s = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
            let sum = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            _mm_storeu_si128(out.as_mut_ptr().add(at) as *mut __m128i, sum);
            at += 4;
        }
        for r in chunks.remainder() {
            out[at] = q.iter().zip(r).map(|(&x, &y)| x as u32 * y as u32).sum();
            at += 1;
        }
    }
}

fn dots_portable(q: &[u8; DESCRIPTOR_LEN], refs: &[[u8; DESCRIPTOR_LEN]], out: &mut [u32]) {
    for (o, r) in out.iter_mut().zip(refs) {
        *o = q.iter().zip(r).map(|(&x, &y)| x as u32 * y as u32).sum();
    }
}

fn match_sift(
    from: &[[u8; DESCRIPTOR_LEN]],
    to: &[[u8; DESCRIPTOR_LEN]],
    ratio: f32,
) -> Vec<Match> {
    // The distances are most of a search's verification time: with AVX2 (checked at run
    // time) they come from byte dot products, 32 per instruction.
    #[cfg(target_arch = "x86_64")]
    let dots: fn(&[u8; DESCRIPTOR_LEN], &[[u8; DESCRIPTOR_LEN]], &mut [u32]) =
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            |q, r, o| unsafe { dots_avx2(q, r, o) }
        } else {
            dots_portable
        };
    #[cfg(not(target_arch = "x86_64"))]
    let dots = dots_portable;
    // |a - b|² = |a|² + |b|² - 2 a·b, exact in integers.
    let to_norms: Vec<u32> = to.iter().map(squared_norm).collect();
    let mut row = vec![0u32; to.len()];
    // The ratio test on distances, compared squared.
    let ratio_squared = ratio * ratio;
    let mut matches = OnePerTarget::new(to.len());
    for (i, d) in from.iter().enumerate() {
        dots(d, to, &mut row);
        let norm = squared_norm(d);
        let distances = row.iter().zip(&to_norms).map(|(dot, n)| norm + n - 2 * dot);
        let (j, best, second) = two_nearest(distances);
        if second == u32::MAX || (best as f32) >= ratio_squared * second as f32 {
            continue;
        }
        matches.offer(Match {
            from: i,
            to: j,
            distance: best,
        });
    }
    matches.into_matches()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte descriptors below 128, as RootSIFT's are.
    fn descriptors(n: usize, seed: u64) -> Vec<[u8; DESCRIPTOR_LEN]> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                std::array::from_fn(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 128) as u8
                })
            })
            .collect()
    }

    #[test]
    fn byte_dot_products_are_exact_on_every_path() {
        let (q, refs) = (descriptors(3, 7), descriptors(23, 11));
        for d in &q {
            let mut portable = vec![0; refs.len()];
            dots_portable(d, &refs, &mut portable);
            for (p, r) in portable.iter().zip(&refs) {
                assert_eq!(
                    squared_norm(d) + squared_norm(r) - 2 * p,
                    squared_distance(d, r)
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut fast = vec![0; refs.len()];
                // SAFETY: AVX2 checked just above.
                unsafe { dots_avx2(d, &refs, &mut fast) };
                assert_eq!(fast, portable);
            }
        }
    }

    #[test]
    fn a_descriptor_matches_its_noisy_copy_and_not_an_ambiguous_one() {
        let to = descriptors(50, 3);
        let mut from: Vec<[u8; DESCRIPTOR_LEN]> = to[..10].to_vec();
        for d in &mut from {
            d[0] ^= 1;
        }
        let matches = match_sift(&from, &to, 0.8);
        assert_eq!(matches.len(), 10);
        assert!(matches.iter().all(|m| m.from == m.to));
        // Two equally near candidates: no match passes the ratio test.
        let twins = vec![to[0], to[0]];
        assert!(match_sift(&to[..1], &twins, 0.8).is_empty());
    }
}
