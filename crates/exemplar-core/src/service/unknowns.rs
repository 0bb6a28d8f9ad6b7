//! The unknowns inbox (see [`crate::unknowns`]): searches answered `unknown` leave their
//! photo there when the inbox is on; a person makes a class of one, adds it to a class,
//! or dismisses it.

use super::{now_ms, Catalogue, ExemplarOutcome, SearchAnswer, ServiceError, Upload, Verdict};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, ClassId, ClassRecord, Metadata};
use crate::unknowns::{InboxPolicy, NewUnknown, UnknownRecord, UnknownStore};

/// What to do with an unknown photo.
#[derive(Debug, Clone, PartialEq)]
pub enum Promotion {
    /// Make a new class of it.
    NewClass { label: String, metadata: Metadata },
    /// Add it to this class as one more exemplar.
    ToClass(ClassId),
}

/// An unknown photo, promoted: the class it is now an exemplar of.
#[derive(Debug, Clone)]
pub struct Promoted {
    pub class: ClassRecord,
    pub exemplars: Vec<ExemplarOutcome>,
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Keeps the photos of `unknown` searches from now on, as `policy` bounds them (off
    /// by default).
    pub fn set_unknown_inbox(&self, policy: InboxPolicy) {
        *self.inbox.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    pub fn unknown_inbox(&self) -> InboxPolicy {
        *self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: CatalogueStore + UnknownStore, I: VectorIndex> Catalogue<S, I> {
    /// [`Catalogue::search`], then, when the answer is `unknown` and the inbox is on, the
    /// photo is kept in it. Returns the inbox id with the answer.
    pub async fn search_keeping_unknown(
        &self,
        upload: &Upload,
        k: usize,
        filters: &Metadata,
    ) -> Result<(SearchAnswer, Option<i64>), ServiceError> {
        let answer = self.search(upload, k, filters).await?;
        let Verdict::Unknown { best_inliers, .. } = &answer.verdict else {
            return Ok((answer, None));
        };
        let policy = self.unknown_inbox();
        if !policy.is_on() {
            return Ok((answer, None));
        }
        let unknown = NewUnknown {
            photo: upload.bytes.clone(),
            name: upload.name.clone(),
            crop: upload.crop.map(|c| c.to_string()),
            nearest_class: answer
                .classes
                .first()
                .map(|c| (c.class_id, c.label.clone())),
            best_inliers: *best_inliers,
        };
        let id = self.store.keep_unknown(&unknown, policy, now_ms()).await?;
        Ok((answer, id))
    }

    /// Drops the unknowns the policy no longer allows (the maintenance loop calls it, so
    /// the age bound holds when no new unknowns come).
    pub async fn expire_unknowns(&self) -> Result<usize, ServiceError> {
        // Off (`InboxPolicy::OFF` allows nothing): whatever an earlier run kept goes.
        let policy = self.unknown_inbox();
        Ok(self.store.expire_unknowns(policy, now_ms()).await?)
    }

    /// The inbox, newest first (expired ones are dropped first).
    pub async fn unknowns(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<UnknownRecord>, ServiceError> {
        self.expire_unknowns().await?;
        Ok(self.store.unknowns(before, limit).await?)
    }

    /// One unknown with its photo.
    pub async fn unknown(&self, id: i64) -> Result<(UnknownRecord, Vec<u8>), ServiceError> {
        self.store
            .unknown(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("unknown {id} not found")))
    }

    /// Removes it from the inbox without making anything of it.
    pub async fn dismiss_unknown(&self, id: i64) -> Result<(), ServiceError> {
        if self.store.remove_unknown(id).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!("unknown {id} not found")))
        }
    }

    /// Makes the unknown photo an exemplar (of a new class or of an existing one), then
    /// removes it from the inbox. The exemplar is committed first: a crash between the two
    /// steps leaves the photo in the inbox too (promoting it again to the same class is
    /// then answered as a duplicate; as a new class, it makes a second one).
    pub async fn promote_unknown(&self, id: i64, to: &Promotion) -> Result<Promoted, ServiceError> {
        let (record, photo) = self.unknown(id).await?;
        let mut upload = Upload::new(photo, record.name.clone());
        upload.crop = match record.crop.as_deref().map(str::parse) {
            Some(Ok(crop)) => Some(crop),
            Some(Err(e)) => {
                return Err(ServiceError::Internal(format!(
                    "unknown {id} has an unreadable crop: {e}"
                )))
            }
            None => None,
        };
        let uploads = [upload];
        let promoted = match to {
            Promotion::NewClass { label, metadata } => {
                let (class, exemplars) = self.add_class(label, metadata, &uploads).await?;
                Promoted { class, exemplars }
            }
            Promotion::ToClass(class) => {
                let exemplars = self.add_exemplars(*class, &uploads).await?;
                let (class, _) =
                    self.store.class(*class).await?.ok_or_else(|| {
                        ServiceError::NotFound(format!("class {class} not found"))
                    })?;
                Promoted { class, exemplars }
            }
        };
        self.store.remove_unknown(id).await?;
        Ok(promoted)
    }
}
