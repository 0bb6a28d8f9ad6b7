//! Where the catalogue keeps its exemplars' photos: the bytes as sent and a small
//! thumbnail, both named by the photo's sha256, so the same photo in two classes is kept
//! once.
//!
//! The photos live beside the database, not in it. What keeps the two in step: a photo is
//! written, durably, before the row that refers to it is committed, so an acknowledged
//! exemplar always has its photo; a photo that no live exemplar refers to (its exemplars
//! deleted, or a write that failed or crashed between the two steps) is removed by the
//! catalogue's collection (`Catalogue::collect_photos`), which runs while no write is
//! between those steps.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PhotoError {
    #[error("photo store: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes could not be made into a thumbnail (they were decoded once already by
    /// the model, so this is rare: a decoder disagreement or a resource limit).
    #[error("thumbnail: {0}")]
    Thumbnail(String),
}

/// Blocking calls: the catalogue runs them off the async workers.
pub trait PhotoStore: Send + Sync + 'static {
    /// Keeps the photo and its thumbnail under `sha256` (the bytes' hash), durably when it
    /// returns. Keeping a photo already kept does nothing.
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), PhotoError>;

    /// Removes a photo and its thumbnail; a photo not kept is no error.
    fn remove(&self, sha256: &str) -> Result<(), PhotoError>;

    /// The hashes of every photo kept.
    fn list(&self) -> Result<Vec<String>, PhotoError>;

    /// The photo's bytes as sent; `None` when it is not kept.
    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, PhotoError>;
}
