//! The first stage's two sources. The global descriptor finds covers that look alike as
//! a whole; an index of local-feature "visual words" finds covers that share many small
//! details with the photo, even when glare, darkness or a turned photo throw the global
//! descriptor off. The shortlist verified by the second stage is a merge of both.

use crate::catalogue::ExemplarId;
use std::collections::HashSet;
use std::hash::Hash;

/// An inverted index of exemplars' local features (implemented by `exemplar-verify`):
/// like the ANN index, a cache of the database, rebuilt from the stored local features.
/// Mutations take `&mut self`; owners guard it with a lock.
pub trait WordIndex: Send + Sync + 'static {
    /// What quantises features into words (a fitted vocabulary's version).
    fn version(&self) -> &str;
    /// Indexes an exemplar's stored local features (the bytes the verifier reads);
    /// false when they cannot be indexed (unreadable, or of another kind).
    fn insert(&mut self, id: ExemplarId, local: &[u8]) -> bool;
    /// Indexes many at once (an index may quantise them on every core); returns how many
    /// could be indexed.
    fn insert_batch(&mut self, items: &[(ExemplarId, Vec<u8>)]) -> usize {
        items
            .iter()
            .filter(|(id, local)| self.insert(*id, local))
            .count()
    }
    /// Returns whether `id` was indexed.
    fn remove(&mut self, id: ExemplarId) -> bool;
    fn contains(&self, id: ExemplarId) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` exemplars sharing the most weighted words with a query's local features
    /// (as the extractor makes them for a search), best first, with their similarity.
    fn search(&self, query: &[u8], k: usize) -> Vec<(ExemplarId, f32)>;
    /// Writes the whole index (vocabulary and postings).
    fn save(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Fits a vocabulary on a catalogue's stored local features and makes an empty index
/// that uses it.
pub trait WordIndexFitter: Send + Sync + 'static {
    /// `None` when the samples hold too few readable features to fit on.
    fn fit(&self, samples: &[&[u8]]) -> Option<Box<dyn WordIndex>>;
    /// The fewest exemplars worth fitting a vocabulary on: below it the global
    /// shortlist already reaches most of the catalogue.
    fn min_exemplars(&self) -> usize;
}

/// The shortlist: the global ranking and the word ranking taken in turn (global first),
/// each item once, at most `depth` items. An item both rank highly comes early; one only
/// the words find (ranked 1,000th globally) still comes within the first `2 × its word
/// rank`.
pub fn merge_shortlists<T: Copy + Eq + Hash>(global: &[T], words: &[T], depth: usize) -> Vec<T> {
    let mut seen = HashSet::with_capacity(depth * 2);
    let mut out = Vec::with_capacity(depth);
    let (mut g, mut w) = (global.iter(), words.iter());
    while out.len() < depth {
        let mut advanced = false;
        for source in [&mut g, &mut w] {
            // The next item of this source not taken yet.
            for &item in source.by_ref() {
                advanced = true;
                if seen.insert(item) {
                    if out.len() < depth {
                        out.push(item);
                    }
                    break;
                }
            }
        }
        if !advanced {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge_shortlists;

    #[test]
    fn sources_alternate_without_repeats_up_to_the_depth() {
        assert_eq!(
            merge_shortlists(&[1, 2, 3], &[9, 2, 8], 10),
            [1, 9, 2, 8, 3]
        );
        assert_eq!(merge_shortlists(&[1, 2, 3], &[9, 2, 8], 3), [1, 9, 2]);
        assert_eq!(merge_shortlists(&[1, 2], &[], 5), [1, 2]);
        assert_eq!(merge_shortlists::<u8>(&[], &[4, 5], 5), [4, 5]);
        // An item only the words find, far down the global ranking, is still taken.
        let global: Vec<u32> = (0..1000).collect();
        let merged = merge_shortlists(&global, &[5000, 1], 4);
        assert_eq!(merged, [0, 5000, 1, 2]);
    }
}
