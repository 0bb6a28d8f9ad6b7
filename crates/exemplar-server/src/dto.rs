//! The JSON shapes of the API and the CLI's answers, typed so the OpenAPI document at
//! `/docs` is generated from the same structs the handlers and `exemplar search` serialise.

use exemplar_core::catalogue::{ClassRecord, ExemplarRecord, Metadata};
use exemplar_core::service::{ExemplarOutcome, Rebuilt, SearchAnswer, Verdict};
use exemplar_core::Evidence;
use serde::Serialize;
use utoipa::ToSchema;

/// A class (an item photos are recognised as).
#[derive(Debug, Serialize, ToSchema)]
pub struct Class {
    pub id: i64,
    pub label: String,
    /// String key/values, filterable in search.
    #[schema(value_type = Object, example = json!({"artist": "Nina Simone", "format": "CD"}))]
    pub metadata: Metadata,
    pub exemplar_count: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// An exemplar whose thumbnail shows the class (`/exemplars/{id}/thumbnail`); null
    /// when none of its exemplars keeps its photo.
    pub photo_exemplar_id: Option<i64>,
}

impl From<&ClassRecord> for Class {
    fn from(c: &ClassRecord) -> Self {
        Self {
            id: c.id,
            label: c.label.clone(),
            metadata: c.metadata.clone(),
            exemplar_count: c.exemplars,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            photo_exemplar_id: c.photo_exemplar,
        }
    }
}

/// What happened to one uploaded photo.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedExemplar {
    pub id: i64,
    /// The part's file name, when it had one.
    pub name: Option<String>,
    /// The class already held these exact bytes: `id` is the existing exemplar.
    pub duplicate: bool,
    /// The photo is kept (`GET /exemplars/{id}/photo` and `/thumbnail`); false when the
    /// server keeps features only (`--keep-photos false`).
    pub photo_kept: bool,
}

impl From<&ExemplarOutcome> for UploadedExemplar {
    fn from(o: &ExemplarOutcome) -> Self {
        Self {
            id: o.id,
            name: o.name.clone(),
            duplicate: o.duplicate,
            photo_kept: o.photo_kept,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClass {
    #[serde(flatten)]
    pub class: Class,
    pub exemplars: Vec<UploadedExemplar>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddedExemplars {
    pub class_id: i64,
    pub exemplars: Vec<UploadedExemplar>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassPage {
    pub classes: Vec<Class>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoredExemplar {
    pub id: i64,
    pub sha256: String,
    /// The uploaded file's name.
    pub name: Option<String>,
    pub model: String,
    pub projection: String,
    pub created_at_ms: i64,
    /// Its photo and thumbnail are kept (`GET /exemplars/{id}/photo`, `/thumbnail`);
    /// false: features only (`--keep-photos false`, or a catalogue made without photos).
    pub photo_kept: bool,
}

impl From<&ExemplarRecord> for StoredExemplar {
    fn from(e: &ExemplarRecord) -> Self {
        Self {
            id: e.id,
            sha256: e.sha256.clone(),
            name: e.original_name.clone(),
            model: e.model.clone(),
            projection: e.projection.clone(),
            created_at_ms: e.created_at_ms,
            photo_kept: e.photo_kept,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassDetail {
    #[serde(flatten)]
    pub class: Class,
    pub exemplars: Vec<StoredExemplar>,
}

/// Spatial verification of an exemplar against the photo.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationEvidence {
    /// Local matches consistent with one homography (the verdict's measure).
    pub inliers: u32,
    /// Local matches before the geometric check.
    pub matches: u32,
    /// Share of the exemplar's area the inliers span (0..1).
    pub coverage: f32,
    /// The exemplar's corners in the photo, `[x, y]` in pixels of the upright photo as
    /// sent, clockwise from its top-left: draw it to show where the item was found.
    pub quadrilateral: Option<[[f32; 2]; 4]>,
    /// Share of that outline inside the photo (0..1).
    pub in_frame: f32,
    /// Whether the outline covers the photo's centre (a cut-off cover must, to be named).
    pub centred: bool,
}

impl From<&Evidence> for VerificationEvidence {
    fn from(e: &Evidence) -> Self {
        Self {
            inliers: e.inliers,
            matches: e.matches,
            coverage: e.coverage,
            quadrilateral: e.quadrilateral,
            in_frame: e.in_frame,
            centred: e.centred,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NeighbourHit {
    pub exemplar_id: i64,
    pub class_id: i64,
    pub label: String,
    /// Cosine similarity of the descriptors (1 = identical), best over the photo's views.
    pub score: f32,
    /// Present when the exemplar was verified (it was in the shortlist and has local
    /// features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<VerificationEvidence>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassHit {
    pub class_id: i64,
    pub label: String,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// The best score of the class's exemplars among the neighbours.
    pub score: f32,
    /// How many of the neighbours belong to the class.
    pub support: usize,
    /// The class's strongest verification among the neighbours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<VerificationEvidence>,
}

/// `match`: the photo shows this class (verified: enough inliers of one geometry);
/// `unknown`: the evidence is too weak to name one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SearchVerdict {
    Match {
        class_id: i64,
        label: String,
        score: f32,
        /// Lead in score over the next class.
        margin: f32,
        /// What verified it (absent on a global-only service).
        #[serde(skip_serializing_if = "Option::is_none")]
        evidence: Option<VerificationEvidence>,
    },
    Unknown {
        best_score: Option<f32>,
        margin: Option<f32>,
        /// The most inliers any shortlisted exemplar reached.
        #[serde(skip_serializing_if = "Option::is_none")]
        best_inliers: Option<u32>,
    },
}

/// Milliseconds per stage of this search.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchTimings {
    /// Decoding, the CNN on each view, the photo's local features.
    pub embed_ms: f64,
    /// Global search of the index and the catalogue lookups.
    pub shortlist_ms: f64,
    /// Spatial verification of the shortlist (0 on a global-only service).
    pub verify_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub neighbours: Vec<NeighbourHit>,
    pub classes: Vec<ClassHit>,
    pub verdict: SearchVerdict,
    pub timings: SearchTimings,
    /// Where the photo is kept in the unknowns inbox (`unknown` answers, with
    /// `--keep-unknown`): promote it from there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_id: Option<i64>,
}

impl From<&SearchAnswer> for SearchResult {
    fn from(a: &SearchAnswer) -> Self {
        let evidence = |e: &Option<Evidence>| e.as_ref().map(VerificationEvidence::from);
        let verdict = match &a.verdict {
            Verdict::Match {
                class_id,
                label,
                score,
                margin,
                evidence: e,
            } => SearchVerdict::Match {
                class_id: *class_id,
                label: label.clone(),
                score: *score,
                margin: *margin,
                evidence: evidence(e),
            },
            Verdict::Unknown {
                best_score,
                margin,
                best_inliers,
            } => SearchVerdict::Unknown {
                best_score: *best_score,
                margin: *margin,
                best_inliers: *best_inliers,
            },
        };
        Self {
            neighbours: a
                .neighbours
                .iter()
                .map(|n| NeighbourHit {
                    exemplar_id: n.exemplar_id,
                    class_id: n.class_id,
                    label: n.label.clone(),
                    score: n.score,
                    evidence: evidence(&n.evidence),
                })
                .collect(),
            classes: a
                .classes
                .iter()
                .map(|c| ClassHit {
                    class_id: c.class_id,
                    label: c.label.clone(),
                    metadata: c.metadata.clone(),
                    score: c.score,
                    support: c.support,
                    evidence: evidence(&c.evidence),
                })
                .collect(),
            verdict,
            timings: SearchTimings {
                embed_ms: a.timings.embed_ms,
                shortlist_ms: a.timings.shortlist_ms,
                verify_ms: a.timings.verify_ms,
            },
            unknown_id: None,
        }
    }
}

/// Every error: a sentence for people and a stable `kind` for programs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "label must not be empty")]
    pub error: String,
    #[schema(example = "empty_label")]
    pub kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    /// Exemplars in the search index.
    pub indexed: usize,
    /// The model that embeds photos (backbone, weights, geometry, pooling).
    pub model: String,
    /// The projection descriptors are in.
    pub projection: String,
    /// The visual-word vocabulary (absent until one is fitted).
    pub vocabulary: Option<String>,
    /// Added exemplars keep their photos (`--keep-photos`).
    pub keeps_photos: bool,
    /// On a shared PostgreSQL catalogue: how far behind the other servers' writes this
    /// one is (absent on a SQLite catalogue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<crate::replica::ReplicaLag>,
}

/// A rebuilt search space.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildReport {
    /// The projection version now in use (stored with every exemplar).
    pub projection: String,
    pub refitted: bool,
    /// Exemplars in the new index.
    pub exemplars: usize,
    /// Exemplars the fit used.
    pub fit_samples: usize,
    pub seconds: f64,
}

impl From<&Rebuilt> for RebuildReport {
    fn from(r: &Rebuilt) -> Self {
        Self {
            projection: r.projection.clone(),
            refitted: r.refitted,
            exemplars: r.exemplars,
            fit_samples: r.fit_samples,
            seconds: r.seconds,
        }
    }
}
