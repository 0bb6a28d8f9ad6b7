//! Measuring retrieval on labelled folders, with the service's own functions: ground
//! truth (`groundtruth.tsv`), metrics (mAP, top-1, recall@k, `unknown` answers, the open
//! set) and fold-honest choice of tuned settings. Everything here is pure: the CLI embeds
//! the images and verifies the shortlists.

pub mod dataset;
pub mod error;
pub mod folds;
pub mod metrics;
pub mod report;
pub mod rerank;

pub use dataset::{images_under, is_image_path, GroundTruth, QueryCase};
pub use error::{EvalError, Result};
pub use metrics::{average_precision, mean_average_precision, RECALL_AT};
pub use report::{
    query_reference_report, QueryOutcome, QueryReferenceReport, RecallReport, ReportOptions,
    UnknownFigures,
};
pub use rerank::Rerank;
