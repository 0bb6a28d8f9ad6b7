//! Descriptor matching: nearest neighbour by Hamming distance with Lowe's ratio test.

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
/// second nearest (`ratio`); each `to` keypoint is used at most once (its best match).
pub fn match_features(from: &LocalFeatures, to: &LocalFeatures, ratio: f32) -> Vec<Match> {
    // The x86-64 baseline has no POPCNT instruction, so `count_ones` becomes a dozen
    // instructions; with it the brute-force matching (a million distances per pair of
    // images, most of a search's verification time) runs twice as fast (measured in
    // the README). Every x86-64 CPU since 2008 has it; the check keeps older ones working.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU supports POPCNT, checked just above.
        return unsafe { match_with_popcnt(from, to, ratio) };
    }
    match_portable(from, to, ratio)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn match_with_popcnt(from: &LocalFeatures, to: &LocalFeatures, ratio: f32) -> Vec<Match> {
    match_portable(from, to, ratio)
}

/// Inlined into its callers, so each is compiled with the caller's CPU features.
#[inline(always)]
fn match_portable(from: &LocalFeatures, to: &LocalFeatures, ratio: f32) -> Vec<Match> {
    let mut best_for_target: Vec<Option<Match>> = vec![None; to.descriptors.len()];
    for (i, d) in from.descriptors.iter().enumerate() {
        let (mut best, mut second, mut best_j) = (u32::MAX, u32::MAX, 0);
        for (j, e) in to.descriptors.iter().enumerate() {
            let dist = hamming(d, e);
            if dist < best {
                second = best;
                best = dist;
                best_j = j;
            } else if dist < second {
                second = dist;
            }
        }
        if best > MAX_DISTANCE || (best as f32) >= ratio * second as f32 {
            continue;
        }
        let candidate = Match {
            from: i,
            to: best_j,
            distance: best,
        };
        match best_for_target[best_j] {
            Some(m) if m.distance <= best => {}
            _ => best_for_target[best_j] = Some(candidate),
        }
    }
    best_for_target.into_iter().flatten().collect()
}
