//! `POST /admin/train`: learning a head on the served catalogue in the background, then
//! switching to it when it beats the PCA on held-out exemplars (or as asked). One run
//! at a time; its progress is what `GET /admin/train` shows.

use crate::data_dir::AppCatalogue;
use crate::training::{embed_views, learn, TrainSettings};
use exemplar_core::service::ServiceError;
use exemplar_core::Projection;
use exemplar_train::{Epoch, Loss, Recall};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Views sent to the model together: small, so searches keep their place in its queue.
const EMBED_GROUP: usize = 8;

/// When the learned head replaces the projection in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Install {
    /// When it finds held-out exemplars' views better than the PCA it started from.
    #[default]
    IfBetter,
    Always,
    /// Train and report only.
    Never,
}

impl std::str::FromStr for Install {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("unknown install rule `{s}` (if-better, always, never)"))
    }
}

/// The metric-learning loss, as the API documents it.
#[derive(utoipa::ToSchema)]
#[schema(as = TrainLoss)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
enum LossName {
    InfoNce,
    Triplet,
}

/// The body of `POST /admin/train`: every field may be left out.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    #[schema(minimum = 1, maximum = 64, example = 8)]
    pub views: Option<usize>,
    #[schema(value_type = Option<LossName>, example = "info-nce")]
    pub loss: Option<Loss>,
    #[schema(minimum = 1, maximum = 1000)]
    pub epochs: Option<usize>,
    pub seed: Option<u64>,
    #[schema(minimum = 4, maximum = 1000000)]
    pub max_exemplars: Option<usize>,
    pub install: Option<Install>,
}

impl TrainRequest {
    pub fn settings(&self) -> Result<(TrainSettings, Install), String> {
        let d = TrainSettings::default();
        let settings = TrainSettings {
            views: self.views.unwrap_or(d.views),
            loss: self.loss.unwrap_or(d.loss),
            epochs: self.epochs.unwrap_or(d.epochs),
            seed: self.seed.unwrap_or(d.seed),
            max_exemplars: self.max_exemplars.unwrap_or(d.max_exemplars),
        };
        settings.check()?;
        Ok((settings, self.install.unwrap_or_default()))
    }
}

/// Where the latest training run stands.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct TrainStatus {
    /// `idle` (none since the server started), `embedding` (making and embedding views),
    /// `training`, `switching`, `switched` (the learned head is served), `kept` (trained,
    /// not switched to: not better, or `install: never`), `cancelled` or `failed`.
    #[schema(example = "training")]
    pub state: &'static str,
    pub install: Option<Install>,
    /// Exemplars trained on (those with a kept photo, at most `max_exemplars`).
    pub exemplars: usize,
    pub views_done: usize,
    pub views_total: usize,
    pub epoch: usize,
    pub epochs: usize,
    /// Held-out exemplars' views found among every photo, by the PCA the head started
    /// from and by the head (its best epoch so far).
    #[schema(value_type = Option<Object>)]
    pub base_recall: Option<Recall>,
    #[schema(value_type = Option<Object>)]
    pub learned_recall: Option<Recall>,
    /// The learned projection's version (served once `switched`).
    pub projection: Option<String>,
    pub started_at_ms: Option<i64>,
    pub seconds: f64,
    pub error: Option<String>,
}

/// The server's one training slot.
#[derive(Default)]
pub struct TrainJobs {
    status: Mutex<TrainStatus>,
    /// Set by `DELETE /admin/train`; the run stops at its next group of views or epoch.
    cancelled: AtomicBool,
}

impl TrainJobs {
    pub fn status(&self) -> TrainStatus {
        let mut status = self.status.lock().expect("train status").clone();
        if status.state == "idle" || status.state.is_empty() {
            status.state = "idle";
        }
        status
    }

    fn update(&self, change: impl FnOnce(&mut TrainStatus)) {
        change(&mut self.status.lock().expect("train status"));
    }

    /// Asks the run under way to stop; `false` when none is.
    pub fn cancel(&self) -> bool {
        let status = self.status.lock().expect("train status");
        let running = matches!(status.state, "embedding" | "training");
        if running {
            self.cancelled.store(true, Ordering::SeqCst);
        }
        running
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Takes the slot for a run on `exemplars` with `settings`; `false` while a run is
    /// under way.
    fn claim(&self, install: Install, exemplars: usize, settings: &TrainSettings) -> bool {
        let mut status = self.status.lock().expect("train status");
        if matches!(status.state, "embedding" | "training" | "switching") {
            return false;
        }
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .ok();
        self.cancelled.store(false, Ordering::SeqCst);
        *status = TrainStatus {
            state: "embedding",
            install: Some(install),
            exemplars,
            views_total: exemplars * settings.views,
            epochs: settings.epochs,
            started_at_ms,
            ..TrainStatus::default()
        };
        true
    }
}

/// Why a run cannot start.
pub enum StartError {
    Running,
    TooFew { have: usize, needed: usize },
    Service(ServiceError),
}

/// Checks the catalogue can be trained on and starts the run in the background.
pub async fn start(
    catalogue: Arc<AppCatalogue>,
    jobs: Arc<TrainJobs>,
    settings: TrainSettings,
    install: Install,
    share: f32,
) -> Result<(), StartError> {
    let (model, exemplars) = catalogue
        .training_exemplars(settings.max_exemplars)
        .await
        .map_err(StartError::Service)?;
    let dim = catalogue.projection().output_dim();
    let needed = Projection::min_samples_for(dim);
    if exemplars.len() < needed {
        return Err(StartError::TooFew {
            have: exemplars.len(),
            needed,
        });
    }
    if !jobs.claim(install, exemplars.len(), &settings) {
        return Err(StartError::Running);
    }
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = run(
            &catalogue,
            &jobs,
            (model, dim),
            exemplars,
            (settings, install, share),
        )
        .await;
        jobs.update(|s| {
            s.seconds = started.elapsed().as_secs_f64();
            match outcome {
                Ok(state) => s.state = state,
                Err(_) if jobs.is_cancelled() => s.state = "cancelled",
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "training a head failed");
                    s.state = "failed";
                    s.error = Some(format!("{e:#}"));
                }
            }
        });
    });
    Ok(())
}

async fn run(
    catalogue: &Arc<AppCatalogue>,
    jobs: &Arc<TrainJobs>,
    (model, dim): (String, usize),
    exemplars: Vec<exemplar_core::service::TrainingExemplar>,
    (settings, install, share): (TrainSettings, Install, f32),
) -> anyhow::Result<&'static str> {
    // After each group of views the run rests so that it embeds `share` of the time,
    // leaving the rest of the model to searches (as a re-index does).
    let rest_factor = 1.0 / share.clamp(0.01, 1.0) as f64 - 1.0;
    let keys: Vec<u64> = exemplars.iter().map(|e| e.id as u64).collect();
    let hashes: Vec<String> = exemplars.iter().map(|e| e.photo.clone()).collect();
    let photos: Vec<Vec<f32>> = exemplars.into_iter().map(|e| e.raw).collect();
    let handle = tokio::runtime::Handle::current();
    let (c, j, s, m) = (
        catalogue.clone(),
        jobs.clone(),
        settings.clone(),
        model.clone(),
    );
    let views = tokio::task::spawn_blocking(move || {
        embed_views(
            &keys,
            &s,
            |chunk| {
                let wanted: Vec<String> = chunk.iter().map(|&i| hashes[i].clone()).collect();
                Ok(handle.block_on(c.read_kept_photos(wanted))?)
            },
            |views| {
                let mut out = Vec::with_capacity(views.len());
                let mut views = views.into_iter().peekable();
                while views.peek().is_some() {
                    if j.is_cancelled() {
                        anyhow::bail!("cancelled");
                    }
                    let group: Vec<Vec<u8>> = views.by_ref().take(EMBED_GROUP).collect();
                    let group_started = Instant::now();
                    let (used, features) = handle.block_on(embed_waiting(&c, group))?;
                    std::thread::sleep(group_started.elapsed().mul_f64(rest_factor));
                    if used != m {
                        anyhow::bail!("the model changed to {used} while training");
                    }
                    out.extend(features.into_iter().map(|f| f.0));
                }
                Ok(out)
            },
            |made| j.update(|st| st.views_done += made),
        )
    })
    .await??;

    jobs.update(|s| s.state = "training");
    let j = jobs.clone();
    let (head, report) = tokio::task::spawn_blocking(move || {
        learn(photos, views, dim, &settings, |e: &Epoch| {
            j.update(|s| {
                s.epoch = e.epoch;
                s.base_recall = Some(e.base);
                let best = s.learned_recall.map_or(0.0, |r| r.score());
                if e.held_out.score() > best {
                    s.learned_recall = Some(e.held_out);
                }
            });
            if j.is_cancelled() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
    })
    .await??;
    jobs.update(|s| {
        s.base_recall = Some(report.base);
        s.learned_recall = Some(report.learned);
        s.projection = Some(head.version().to_string());
    });
    tracing::info!(
        projection = head.version(),
        base_at_1 = report.base.at_1,
        learned_at_1 = report.learned.at_1,
        best_epoch = report.best_epoch,
        seconds = report.seconds,
        "head trained"
    );
    let switch = match install {
        Install::Always => true,
        Install::IfBetter => report.improves(),
        Install::Never => false,
    };
    if !switch {
        return Ok("kept");
    }
    if jobs.is_cancelled() {
        return Ok("cancelled");
    }
    jobs.update(|s| s.state = "switching");
    catalogue.install_projection(head, &model).await?;
    Ok("switched")
}

/// Embeds a group of views, waiting while searches fill the model's queue.
async fn embed_waiting(
    catalogue: &AppCatalogue,
    group: Vec<Vec<u8>>,
) -> Result<(String, Vec<exemplar_core::PooledFeature>), ServiceError> {
    loop {
        match catalogue.embed_whole(group.clone()).await {
            Err(ServiceError::Busy(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}
