//! The exemplars' photos: kept before their rows are committed, collected once no live
//! exemplar refers to them (see [`crate::photos`]).

use super::rebuild::off_thread;
use super::{Catalogue, ServiceError, Upload};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, ClassId, ExemplarId, NewExemplar};
use crate::photos::PhotoStore;
use std::collections::HashSet;
use std::sync::Arc;

/// Between keeping a write's photos and the end of its commit: if the write fails or its
/// request is abandoned (the client went away and the future was dropped), its photos
/// become suspects for the next collection; `done` once the commit has returned.
pub(super) struct PhotosInFlight<'a> {
    suspects: &'a std::sync::Mutex<HashSet<String>>,
    hashes: Vec<String>,
}

impl PhotosInFlight<'_> {
    pub(super) fn done(mut self) {
        self.hashes.clear();
    }
}

impl Drop for PhotosInFlight<'_> {
    fn drop(&mut self) {
        if !self.hashes.is_empty() {
            self.suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(self.hashes.drain(..));
        }
    }
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Keeps photos in `photos`; with `keep`, every exemplar added from now on keeps its
    /// photo and thumbnail there (without, new exemplars have features only, and the store
    /// still serves and collects the photos kept before).
    pub fn with_photos(mut self, photos: Arc<dyn PhotoStore>, keep: bool) -> Self {
        self.photos = Some(photos);
        self.keep_photos = keep;
        self
    }

    /// Whether exemplars added now keep their photos.
    pub fn keeps_photos(&self) -> bool {
        self.photos.is_some() && self.keep_photos
    }

    /// Writes the uploads' photos (call with the write gate shared, before the commit)
    /// and marks `exemplars` (one per upload, same order) as keeping them. Hold the answer
    /// until the commit has returned (see [`PhotosInFlight`]).
    pub(super) async fn keep_photos(
        &self,
        uploads: &[Upload],
        exemplars: &mut [NewExemplar],
    ) -> Result<PhotosInFlight<'_>, ServiceError> {
        let mut in_flight = PhotosInFlight {
            suspects: &self.suspects,
            hashes: Vec::new(),
        };
        let Some(photos) = self.photos.clone().filter(|_| self.keep_photos) else {
            return Ok(in_flight);
        };
        let mut seen = HashSet::new();
        let to_write: Vec<(String, Vec<u8>)> = uploads
            .iter()
            .zip(exemplars.iter())
            .filter(|(_, e)| seen.insert(e.sha256.clone()))
            .map(|(u, e)| (e.sha256.clone(), u.bytes.clone()))
            .collect();
        // From here on, some may be on disk whatever happens.
        in_flight.hashes = to_write.iter().map(|(h, _)| h.clone()).collect();
        let written = off_thread("exemplar-photos", move || {
            to_write
                .iter()
                .try_for_each(|(hash, bytes)| photos.put(hash, bytes))
        })
        .await?;
        written.map_err(|e| ServiceError::Internal(format!("keeping the photos: {e}")))?;
        for e in exemplars.iter_mut() {
            e.photo_kept = true;
        }
        Ok(in_flight)
    }

    /// Photos written for a write that then failed or was abandoned: collected next time.
    pub(super) fn suspect_photos(&self, hashes: impl IntoIterator<Item = String>) {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(hashes);
    }

    /// The photo hashes of a class's exemplars (before it is deleted).
    pub(super) async fn photos_of_class(
        &self,
        class: ClassId,
    ) -> Result<Vec<String>, ServiceError> {
        if self.photos.is_none() {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .class(class)
            .await?
            .map(|(_, exemplars)| {
                exemplars
                    .into_iter()
                    .filter(|e| e.photo_kept)
                    .map(|e| e.sha256)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The photo hash of one exemplar (before it is deleted).
    pub(super) async fn photo_of_exemplar(
        &self,
        id: ExemplarId,
    ) -> Result<Vec<String>, ServiceError> {
        if self.photos.is_none() {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .exemplar(id)
            .await?
            .filter(|e| e.photo_kept)
            .map(|e| vec![e.sha256])
            .unwrap_or_default())
    }

    /// Removes those of `candidates` (and of the photos of failed writes) that no live
    /// exemplar refers to. Takes the write gate alone, so no write is between keeping a
    /// photo and committing its row. Returns how many were removed.
    pub async fn collect_photos(&self, candidates: Vec<String>) -> Result<usize, ServiceError> {
        let Some(photos) = self.photos.clone() else {
            return Ok(0);
        };
        let no_suspects = || {
            self.suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        };
        // Nothing to look at: no reason to make writers wait.
        if candidates.is_empty() && no_suspects() {
            return Ok(0);
        }
        let _quiet = self.gate.write().await;
        let mut candidates: HashSet<String> = candidates.into_iter().collect();
        candidates.extend(
            self.suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(),
        );
        if candidates.is_empty() {
            return Ok(0);
        }
        let candidates: Vec<String> = candidates.into_iter().collect();
        let in_use = match self.store.photos_in_use(&candidates).await {
            Ok(in_use) => in_use,
            Err(e) => {
                self.suspect_photos(candidates);
                return Err(e.into());
            }
        };
        let unused: Vec<String> = candidates
            .into_iter()
            .filter(|h| !in_use.contains(h))
            .collect();
        let attempted = unused.len();
        let failed = off_thread("exemplar-photos", move || {
            unused
                .into_iter()
                .filter_map(|h| match photos.remove(&h) {
                    Ok(()) => None,
                    Err(e) => Some((h, e)),
                })
                .collect::<Vec<_>>()
        })
        .await?;
        if let Some((_, e)) = failed.first() {
            let message = format!("removing {} unused photos: {e}", failed.len());
            self.suspect_photos(failed.into_iter().map(|(h, _)| h));
            return Err(ServiceError::Internal(message));
        }
        Ok(attempted)
    }

    /// Collects every kept photo no live exemplar refers to (on start: what a crash
    /// between keeping a photo and committing its row left behind).
    pub async fn collect_all_photos(&self) -> Result<usize, ServiceError> {
        let Some(photos) = self.photos.clone() else {
            return Ok(0);
        };
        let all = off_thread("exemplar-photos", move || photos.list())
            .await?
            .map_err(|e| ServiceError::Internal(format!("listing the photos: {e}")))?;
        self.collect_photos(all).await
    }
}
