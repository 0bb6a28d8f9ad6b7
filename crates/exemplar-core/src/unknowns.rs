//! The unknowns inbox: photos of recent searches answered `unknown`, kept (only when the
//! operator turns it on) so that a person can make a new class of one, add it to a class,
//! or dismiss it. It holds customers' photos, and anyone who may search can fill it, so it
//! is bounded three ways: by count, by bytes and by age.

use crate::catalogue::{ClassId, StoreResult};
use std::future::Future;

/// How many unknown photos are kept, how many bytes of them, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxPolicy {
    /// At most this many (the oldest go first); 0: the inbox is off.
    pub max_count: usize,
    /// Their photos take at most this many bytes together (the oldest go first).
    pub max_bytes: u64,
    /// None older than this, in milliseconds.
    pub max_age_ms: i64,
}

impl InboxPolicy {
    pub const OFF: InboxPolicy = InboxPolicy {
        max_count: 0,
        max_bytes: 0,
        max_age_ms: 0,
    };

    pub fn is_on(&self) -> bool {
        self.max_count > 0 && self.max_bytes > 0 && self.max_age_ms > 0
    }
}

/// A search answered `unknown`, as the inbox lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownRecord {
    pub id: i64,
    pub created_at_ms: i64,
    /// The file name the photo was sent with.
    pub name: Option<String>,
    /// The part of the photo that was searched (`x,y,w,h` in the photo's pixels), if any.
    pub crop: Option<String>,
    /// The class the search ranked first, though not verified: a hint for "add to class".
    pub nearest_class: Option<(ClassId, String)>,
    /// The most inliers any candidate reached.
    pub best_inliers: Option<u32>,
    pub bytes: usize,
}

/// What an unknown search leaves in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUnknown {
    pub photo: Vec<u8>,
    pub name: Option<String>,
    pub crop: Option<String>,
    pub nearest_class: Option<(ClassId, String)>,
    pub best_inliers: Option<u32>,
}

/// Storage of the inbox. Every call is one transaction.
pub trait UnknownStore: Send + Sync + 'static {
    /// Keeps the photo, then drops what the policy no longer allows (the oldest past
    /// `max_count` or `max_bytes`, anything older than `max_age_ms` before `now_ms`).
    /// Returns its id; `None` when the photo alone is more than the policy allows.
    fn keep_unknown(
        &self,
        unknown: &NewUnknown,
        policy: InboxPolicy,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<Option<i64>>> + Send;

    /// Drops what the policy no longer allows; returns how many went.
    fn expire_unknowns(
        &self,
        policy: InboxPolicy,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<usize>> + Send;

    /// Newest first, at most `limit`, older than `before` (an id; 0: from the newest).
    fn unknowns(
        &self,
        before: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<UnknownRecord>>> + Send;

    /// One unknown with its photo.
    fn unknown(
        &self,
        id: i64,
    ) -> impl Future<Output = StoreResult<Option<(UnknownRecord, Vec<u8>)>>> + Send;

    /// Removes it; false when there was none.
    fn remove_unknown(&self, id: i64) -> impl Future<Output = StoreResult<bool>> + Send;
}
