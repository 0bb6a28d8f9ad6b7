//! What learning a descriptor head needs from the catalogue: its exemplars' raw features
//! and kept photos, the current model to embed synthetic views of them, and the switch
//! to the learned projection (`Catalogue::install_projection`, in `rebuild.rs`).

use super::rebuild::off_thread;
use super::{queue_error, Catalogue, ServiceError};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, ExemplarId};
use crate::embed_queue::Want;
use crate::extractor::{LocalFor, View};
use crate::PooledFeature;
use std::collections::HashMap;

/// An exemplar a head can learn from.
#[derive(Debug, Clone)]
pub struct TrainingExemplar {
    pub id: ExemplarId,
    /// Its pooled feature, as stored.
    pub raw: Vec<f32>,
    /// Its kept photo's hash.
    pub photo: String,
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Live exemplars with a kept photo (at most `max`, evenly spread over them), and
    /// the model their raw features come from.
    pub async fn training_exemplars(
        &self,
        max: usize,
    ) -> Result<(String, Vec<TrainingExemplar>), ServiceError> {
        let model = self.versions().model;
        let hashes: HashMap<ExemplarId, String> = self
            .store
            .exemplar_hashes()
            .await?
            .into_iter()
            .filter(|h| h.photo_kept)
            .map(|h| (h.id, h.sha256))
            .collect();
        let mut all: Vec<TrainingExemplar> = self
            .store
            .raw_features(None)
            .await?
            .into_iter()
            .filter_map(|(id, raw)| {
                let photo = hashes.get(&id)?.clone();
                Some(TrainingExemplar { id, raw, photo })
            })
            .collect();
        all.sort_by_key(|e| e.id);
        if all.len() > max {
            let n = all.len();
            all = (0..max).map(|i| all[i * n / max].clone()).collect();
        }
        Ok((model, all))
    }

    /// The kept photos' bytes, in order; `None` for one no longer kept.
    pub async fn read_kept_photos(
        &self,
        hashes: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        let photos = self
            .photos
            .clone()
            .ok_or_else(|| ServiceError::Internal("no photo store".into()))?;
        off_thread("exemplar-photos", move || {
            hashes
                .iter()
                .map(|h| photos.read(h))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Pooled features of whole photos by the model now serving (its queue, so searches
    /// interleave), and that model's id; fails if a re-index switched models meanwhile.
    pub async fn embed_whole(
        &self,
        photos: Vec<Vec<u8>>,
    ) -> Result<(String, Vec<PooledFeature>), ServiceError> {
        let extraction = self.extraction();
        let want = Want {
            crop: None,
            view: View::Whole,
            local: LocalFor::Nothing,
        };
        let pending = photos
            .into_iter()
            .map(|bytes| extraction.queue.submit(bytes, want).map_err(queue_error))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(pending.len());
        for answer in pending {
            let extracted = answer
                .await
                .map_err(|e| ServiceError::Internal(format!("embedding a view: {e}")))?;
            out.push(extracted.pooled);
        }
        Ok((extraction.model.clone(), out))
    }
}
