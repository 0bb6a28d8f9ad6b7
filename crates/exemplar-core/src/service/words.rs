//! The visual-word index's upkeep: catching up from the change log (after a restart from
//! a dump), and fitting a vocabulary on the catalogue's own local features and indexing
//! every exemplar with it while searches go on with the index in use.
//!
//! 1. Note the change log's head; fit the vocabulary on an even spread of exemplars.
//! 2. Index every exemplar, a batch of stored local features at a time (read async,
//!    quantised on a thread of its own).
//! 3. Take the write gate alone, replay what changed since step 1, swap.

use super::rebuild::off_thread;
use super::{Catalogue, ServiceError};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, Change, ExemplarId};
use crate::shortlist::WordIndex;
use std::collections::HashSet;
use std::time::Instant;

/// Exemplars whose local features are read at once while (re)indexing.
const BATCH: usize = 256;
/// Up to this many exemplars a catch-up indexes in place (see `catch_up_words`).
const FOLLOW_INLINE: usize = 32;
/// Exemplars the vocabulary is fitted on (spread evenly over the catalogue): about
/// 500,000 features, more than the fit samples.
const FIT_EXEMPLARS: usize = 500;

/// What a word index rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct WordsRebuilt {
    /// The vocabulary now in use.
    pub vocabulary: String,
    pub exemplars: usize,
    pub seconds: f64,
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Applies logged changes to the word index (when there is one): additions of
    /// exemplars still alive that it lacks, and removals.
    pub(super) async fn catch_up_words(&self, changes: &[Change]) -> Result<(), ServiceError> {
        if self.read_words().is_none() {
            return Ok(());
        }
        let removed: HashSet<ExemplarId> = changes
            .iter()
            .filter_map(|c| match c {
                Change::ExemplarRemoved { exemplar, .. } => Some(*exemplar),
                Change::ExemplarAdded { .. } => None,
            })
            .collect();
        let missing: Vec<ExemplarId> = {
            let words = self.read_words();
            let Some(words) = words.as_ref() else {
                return Ok(());
            };
            changes
                .iter()
                .filter_map(|c| match c {
                    Change::ExemplarAdded { exemplar, .. }
                        if !removed.contains(exemplar) && !words.contains(*exemplar) =>
                    {
                        Some(*exemplar)
                    }
                    _ => None,
                })
                .collect()
        };
        if missing.len() <= FOLLOW_INLINE {
            // A server following a shared catalogue, a few changes at a time: indexed in
            // place, so the index never leaves searches or this server's own writes.
            let stored = self.store.local_features(&missing).await?;
            if let Some(words) = self.write_words().as_mut() {
                for (id, local) in &stored {
                    if !words.contains(*id) {
                        words.insert(*id, local);
                    }
                }
            }
        } else {
            self.catch_up_words_off_thread(&missing).await?;
        }
        if let Some(words) = self.write_words().as_mut() {
            for id in removed {
                words.remove(id);
            }
        }
        Ok(())
    }

    /// Indexes many exemplars' words on a thread of its own, the index taken out meanwhile
    /// (a catch-up at start, before the service answers).
    async fn catch_up_words_off_thread(&self, missing: &[ExemplarId]) -> Result<(), ServiceError> {
        for batch in missing.chunks(BATCH) {
            let stored = self.store.local_features(batch).await?;
            // Quantising is CPU work: the index goes to a thread of its own and back (the
            // catch-up runs before the service answers, so no search misses it).
            let Some(mut words) = self.write_words().take() else {
                return Ok(());
            };
            words = off_thread("exemplar-words", move || {
                words.insert_batch(&stored);
                words
            })
            .await?;
            *self.write_words() = Some(words);
        }
        Ok(())
    }

    /// Fits a vocabulary and builds the word index when there is none yet and the
    /// catalogue has grown large enough; `None` when not due (or another rebuild runs).
    pub async fn rebuild_words_if_due(&self) -> Result<Option<WordsRebuilt>, ServiceError> {
        let Some(fitter) = &self.word_fitter else {
            return Ok(None);
        };
        if self.read_words().is_some()
            || self.store.exemplar_count().await? < fitter.min_exemplars()
        {
            return Ok(None);
        }
        match self.rebuild_words().await {
            Err(ServiceError::Busy(_)) => Ok(None),
            other => other,
        }
    }

    /// Fits a new vocabulary on the catalogue and indexes every exemplar with it (after a
    /// projection refit: the catalogue has grown). `None` without a word index, or when
    /// the catalogue has too few local features to fit on.
    pub async fn rebuild_words(&self) -> Result<Option<WordsRebuilt>, ServiceError> {
        let Some(fitter) = self.word_fitter.clone() else {
            return Ok(None);
        };
        let _one = self
            .rebuilding
            .try_lock()
            .map_err(|_| ServiceError::Busy("a rebuild is already running".into()))?;
        let started = Instant::now();
        let snapshot = self.store.head().await?;
        let ids: Vec<ExemplarId> = self
            .store
            .exemplar_hashes()
            .await?
            .into_iter()
            .filter(|e| e.local_format.is_some())
            .map(|e| e.id)
            .collect();
        if ids.len() < fitter.min_exemplars() {
            return Ok(None);
        }
        let spread: Vec<ExemplarId> = (0..FIT_EXEMPLARS.min(ids.len()))
            .map(|i| ids[i * ids.len() / FIT_EXEMPLARS.min(ids.len())])
            .collect();
        let samples = self.store.local_features(&spread).await?;
        let fitted = off_thread("exemplar-vocabulary", move || {
            let refs: Vec<&[u8]> = samples.iter().map(|(_, b)| b.as_slice()).collect();
            fitter.fit(&refs)
        })
        .await?;
        let Some(mut index) = fitted else {
            return Ok(None);
        };
        for batch in ids.chunks(BATCH) {
            let stored = self.store.local_features(batch).await?;
            index = off_thread("exemplar-words", move || {
                index.insert_batch(&stored);
                index
            })
            .await?;
        }

        let _quiet = self.gate.write().await;
        let changes = self.store.changes_since(snapshot).await?;
        let mut late = Vec::new();
        for change in &changes {
            match *change {
                Change::ExemplarAdded { exemplar, .. } => late.push(exemplar),
                Change::ExemplarRemoved { exemplar, .. } => {
                    index.remove(exemplar);
                }
            }
        }
        // Only exemplars still alive come back; a few at most, so indexed inline.
        for (id, bytes) in self.store.local_features(&late).await? {
            index.insert(id, &bytes);
        }
        let rebuilt = WordsRebuilt {
            vocabulary: index.version().to_string(),
            exemplars: index.len(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let old: Option<Box<dyn WordIndex>> = self.write_words().replace(index);
        drop(old); // outside the lock
        tracing::info!(
            vocabulary = %rebuilt.vocabulary,
            exemplars = rebuilt.exemplars,
            seconds = rebuilt.seconds,
            "word index rebuilt"
        );
        Ok(Some(rebuilt))
    }
}
