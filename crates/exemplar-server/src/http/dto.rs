//! The JSON shapes of the API, typed so the OpenAPI document at `/docs` is generated
//! from the same structs the handlers (and `exemplar search`) serialise.

use exemplar_core::catalogue::{ClassRecord, ExemplarRecord, Metadata};
use exemplar_core::service::{ExemplarOutcome, Rebuilt, SearchAnswer, Verdict};
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
}

impl From<&ExemplarOutcome> for UploadedExemplar {
    fn from(o: &ExemplarOutcome) -> Self {
        Self {
            id: o.id,
            name: o.name.clone(),
            duplicate: o.duplicate,
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
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassDetail {
    #[serde(flatten)]
    pub class: Class,
    pub exemplars: Vec<StoredExemplar>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NeighbourHit {
    pub exemplar_id: i64,
    pub class_id: i64,
    pub label: String,
    /// Cosine similarity of the descriptors (1 = identical).
    pub score: f32,
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
}

/// `match`: the photo shows this class; `unknown`: the evidence is too weak to name one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SearchVerdict {
    Match {
        class_id: i64,
        label: String,
        score: f32,
        /// Lead over the next class.
        margin: f32,
    },
    Unknown {
        best_score: Option<f32>,
        margin: Option<f32>,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub neighbours: Vec<NeighbourHit>,
    pub classes: Vec<ClassHit>,
    pub verdict: SearchVerdict,
}

impl From<&SearchAnswer> for SearchResult {
    fn from(a: &SearchAnswer) -> Self {
        let verdict = match &a.verdict {
            Verdict::Match {
                class_id,
                label,
                score,
                margin,
            } => SearchVerdict::Match {
                class_id: *class_id,
                label: label.clone(),
                score: *score,
                margin: *margin,
            },
            Verdict::Unknown { best_score, margin } => SearchVerdict::Unknown {
                best_score: *best_score,
                margin: *margin,
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
                })
                .collect(),
            verdict,
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
