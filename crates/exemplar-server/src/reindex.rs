//! The settings an index version is made with, as a re-index records them, and starting
//! (or resuming) a re-index in the server.

use crate::cli::{ModelArgs, DESCRIPTOR_DIM};
use crate::data_dir::AppCatalogue;
use crate::model::{load, TimedExtractor};
use anyhow::Context;
use exemplar_core::reindex::{ReindexJob, ReindexStore};
use exemplar_core::service::NewVersion;
use exemplar_embed::WeightsSource;
use exemplar_verify::FeatureKind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The model settings of an index version: what `--model`, `--weights`, `--geometry`,
/// `--pooling`, `--local-features` and `--local-keypoints` say. Recorded with a re-index
/// job; the last one switched to is what the catalogue is served with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexSpec {
    #[schema(example = "resnet18")]
    pub model: String,
    /// A weights file on the server's machine or `hf:OWNER/REPO[:FILE]`; none: the default.
    pub weights: Option<String>,
    #[schema(example = "center-crop-224")]
    pub geometry: String,
    #[schema(example = "gem")]
    pub pooling: String,
    #[schema(example = "sift")]
    pub local_features: String,
    #[schema(example = 1000)]
    pub local_keypoints: usize,
}

/// A change of some settings (the others stay as they are).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecChange {
    #[schema(example = "efficientnet-lite0")]
    pub model: Option<String>,
    pub weights: Option<String>,
    pub geometry: Option<String>,
    pub pooling: Option<String>,
    #[schema(example = "orb")]
    pub local_features: Option<String>,
    pub local_keypoints: Option<usize>,
}

impl IndexSpec {
    pub fn of(args: &ModelArgs) -> Self {
        Self {
            model: args.model.to_string(),
            weights: args.weights.as_ref().map(|w| w.to_string()),
            geometry: args.geometry.to_string(),
            pooling: args.pooling.to_string(),
            local_features: args.local_features.to_string(),
            local_keypoints: args.local_keypoints,
        }
    }

    /// `base` with these settings; a setting that does not parse is named.
    pub fn apply(&self, base: &ModelArgs) -> anyhow::Result<ModelArgs> {
        let mut args = base.clone();
        args.model = setting("model", &self.model)?;
        args.weights = self
            .weights
            .as_deref()
            .map(|w| setting::<WeightsSource>("weights", w))
            .transpose()?;
        args.geometry = setting("geometry", &self.geometry)?;
        args.pooling = setting("pooling", &self.pooling)?;
        args.local_features = setting::<FeatureKind>("local features", &self.local_features)?;
        args.local_keypoints = self.local_keypoints;
        Ok(args)
    }

    /// These settings with `change` applied; a weights file is made absolute (the
    /// server resolves it, now and after a restart).
    pub fn changed(&self, change: &SpecChange) -> anyhow::Result<Self> {
        let mut spec = self.clone();
        if let Some(model) = &change.model {
            spec.model = model.clone();
            // Another backbone does not take this one's weights.
            spec.weights = None;
        }
        if let Some(weights) = &change.weights {
            spec.weights = Some(match weights.parse::<WeightsSource>() {
                Ok(WeightsSource::File(path)) => std::fs::canonicalize(&path)
                    .with_context(|| format!("weights file {}", path.display()))?
                    .display()
                    .to_string(),
                Ok(_) => weights.clone(),
                Err(e) => anyhow::bail!("weights `{weights}`: {e}"),
            });
        }
        if let Some(geometry) = &change.geometry {
            spec.geometry = geometry.clone();
        }
        if let Some(pooling) = &change.pooling {
            spec.pooling = pooling.clone();
        }
        if let Some(kind) = &change.local_features {
            spec.local_features = kind.clone();
        }
        if let Some(n) = change.local_keypoints {
            spec.local_keypoints = n;
        }
        Ok(spec)
    }
}

/// One setting parsed, or an error naming it and its value.
fn setting<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{name} `{value}`: {e}"))
}

/// The model `args` name, made into a new index version whose build embeds `share` of
/// the time; `current`: the settings in force (blocking: it loads weights).
pub fn new_version(
    args: &ModelArgs,
    current: &IndexSpec,
    share: f32,
) -> anyhow::Result<NewVersion> {
    let next = IndexSpec::of(args);
    let same_local_features = (&next.local_features, next.local_keypoints)
        == (&current.local_features, current.local_keypoints);
    let embedder = Arc::new(load(args)?);
    let fallback_projection = exemplar_embed::default_projection(&embedder, DESCRIPTOR_DIM)?;
    let max_batch = embedder.config().max_batch;
    Ok(NewVersion {
        extractor: Arc::new(TimedExtractor::new(embedder)),
        fallback_projection,
        max_batch,
        share,
        same_local_features,
    })
}

/// Builds `job` in the background; its progress and outcome are in the catalogue's
/// re-index status.
pub fn spawn_build(catalogue: Arc<AppCatalogue>, job: ReindexJob, version: NewVersion) {
    catalogue.show_building(&job);
    tokio::spawn(async move {
        let _ = catalogue.build_reindex(job, version).await;
    });
}

/// Resumes the re-index a previous run left unfinished (a crash, a stop), if any.
pub async fn resume(
    catalogue: Arc<AppCatalogue>,
    base: &ModelArgs,
    share: f32,
) -> anyhow::Result<()> {
    let Some(job) = catalogue.store().reindex_in_progress().await? else {
        return Ok(());
    };
    let spec: IndexSpec = serde_json::from_str(&job.spec)
        .with_context(|| format!("the settings of re-index job {}", job.id))?;
    let args = spec.apply(base)?;
    let current = IndexSpec::of(base);
    let version =
        tokio::task::spawn_blocking(move || new_version(&args, &current, share)).await??;
    tracing::info!(job = job.id, model = %job.model, "resuming the re-index");
    spawn_build(catalogue, job, version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> ModelArgs {
        let mut all = vec!["exemplar"];
        all.extend_from_slice(args);
        all.push("classes");
        crate::cli::Cli::parse_from(all).model
    }

    #[test]
    fn settings_round_trip_through_their_record() {
        let base = flags(&[]);
        let other = flags(&[
            "--model",
            "resnet18",
            "--geometry",
            "full-320",
            "--local-features",
            "orb",
        ]);
        let spec = IndexSpec::of(&other);
        let json = serde_json::to_string(&spec).unwrap();
        let back: IndexSpec = serde_json::from_str(&json).unwrap();
        let applied = back.apply(&base).unwrap();
        assert_eq!(IndexSpec::of(&applied), spec);
        // What the record does not hold stays the server's.
        assert_eq!(applied.max_batch, base.max_batch);
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name_and_drops_another_backbones_weights() {
        let spec = IndexSpec {
            weights: Some("hf:timm/resnet50.tv_in1k".into()),
            ..IndexSpec::of(&flags(&["--model", "resnet50"]))
        };
        let orb = spec
            .changed(&SpecChange {
                local_features: Some("orb".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (orb.model.as_str(), orb.weights.as_deref()),
            ("resnet50", spec.weights.as_deref())
        );
        assert_eq!(orb.local_features, "orb");
        let lite0 = spec
            .changed(&SpecChange {
                model: Some("efficientnet-lite0".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(lite0.weights, None);
        assert!(spec
            .changed(&SpecChange {
                weights: Some("/no/such/weights.safetensors".into()),
                ..Default::default()
            })
            .is_err());
        let bad = IndexSpec {
            geometry: "sideways".into(),
            ..spec
        };
        let error = bad.apply(&flags(&[])).unwrap_err().to_string();
        assert!(error.contains("geometry `sideways`"), "{error}");
    }
}
