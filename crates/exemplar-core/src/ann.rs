//! The nearest-neighbour index as the domain sees it (implemented by `exemplar-index`).

use crate::catalogue::ExemplarId;

/// An index of unit-length descriptors keyed by exemplar id. Mutations take `&mut self`:
/// owners guard it with a `RwLock`, so searches share it and one writer at a time changes it.
pub trait VectorIndex: Send + Sync + 'static {
    fn insert_batch(&mut self, items: &[(ExemplarId, Vec<f32>)]) -> Result<(), String>;
    /// Returns whether `id` was live.
    fn remove(&mut self, id: ExemplarId) -> bool;
    /// The `k` nearest live exemplars with their cosine similarity, best first.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(ExemplarId, f32)>, String>;
    fn contains(&self, id: ExemplarId) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// An empty index with the same parameters, sized for about `capacity` items (what a
    /// rebuild fills before it is swapped in).
    fn empty_like(&self, capacity: usize) -> Self
    where
        Self: Sized;
    /// Whether deleted items weigh enough that a rebuild pays for itself.
    fn needs_compaction(&self) -> bool {
        false
    }
}
