//! Learning the 256-d head: a linear map from the frozen backbone's pooled feature,
//! started from the catalogue's PCA and trained so that synthetic phone photos of an
//! exemplar land nearer its photo than any other exemplar's.
//!
//! Positives are (photo, one of its views); negatives are the other photos of the batch.
//! A share of the exemplars is held out (never trained on): their views, searched among
//! every photo, give the recall that picks the epoch to keep and that tells whether the
//! head beats the PCA it started from. The head stays linear so it is a projection like
//! the PCA ones: stored, versioned, applied to stored raw features without the network.

use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use exemplar_core::rng::SplitMix64;
use exemplar_core::{Projection, ProjectionKind};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::time::Instant;

/// The metric-learning loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax over the batch's photos for each view (InfoNCE / N-pair).
    InfoNce,
    /// Triplet with the batch's hardest negative for each view.
    Triplet,
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info-nce" => Ok(Loss::InfoNce),
            "triplet" => Ok(Loss::Triplet),
            other => Err(format!("unknown loss `{other}` (info-nce, triplet)")),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::InfoNce => "info-nce",
            Loss::Triplet => "triplet",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub loss: Loss,
    /// Most passes over the training exemplars.
    pub epochs: usize,
    /// Stop after this many epochs without a better held-out recall.
    pub patience: usize,
    /// Exemplars per step (each brings its photo and one view).
    pub batch: usize,
    /// Adam's step, relative to the typical size of the starting matrix's entries.
    pub learning_rate: f64,
    /// InfoNCE's temperature.
    pub temperature: f64,
    /// Triplet margin (on squared distances of unit vectors).
    pub margin: f64,
    /// Share of exemplars held out to choose the epoch and judge the head.
    pub held_out: f64,
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            loss: Loss::InfoNce,
            epochs: 300,
            patience: 15,
            batch: 256,
            learning_rate: 0.01,
            temperature: 0.05,
            margin: 0.2,
            held_out: 0.2,
            seed: 0,
        }
    }
}

/// What to train on: each exemplar's raw feature and the raw features of its views.
#[derive(Debug, Clone, Default)]
pub struct TrainSet {
    pub photos: Vec<Vec<f32>>,
    pub views: Vec<Vec<Vec<f32>>>,
}

/// Held-out views found among every photo: the share whose own photo ranks first, and
/// within the first 10.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Recall {
    pub at_1: f64,
    pub at_10: f64,
}

impl Recall {
    /// What the epoch is chosen by.
    pub fn score(&self) -> f64 {
        (self.at_1 + self.at_10) / 2.0
    }
}

/// One epoch's figures, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub held_out: Recall,
    /// The starting projection's held-out recall, to compare with.
    pub base: Recall,
}

/// A trained head and how it compares with the projection it started from.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub loss: Loss,
    pub exemplars: usize,
    pub views_per_exemplar: usize,
    pub held_out_exemplars: usize,
    /// The starting projection on the held-out views.
    pub base: Recall,
    /// The kept epoch's head on the held-out views.
    pub learned: Recall,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub seconds: f64,
    pub history: Vec<Epoch>,
}

impl TrainReport {
    /// The head found held-out views better than the projection it started from.
    pub fn improves(&self) -> bool {
        self.learned.score() > self.base.score()
    }
}

/// Trains a head starting from `init` (the catalogue's PCA); `on_epoch` hears each epoch
/// and may stop the run ([`TrainError::Cancelled`]).
pub fn train_head(
    set: &TrainSet,
    init: &Projection,
    config: &HeadConfig,
    mut on_epoch: impl FnMut(&Epoch) -> ControlFlow<()>,
) -> Result<(Projection, TrainReport), TrainError> {
    let started = Instant::now();
    let n = set.photos.len();
    let dim = init.input_dim();
    let views_per = set.views.iter().map(Vec::len).min().unwrap_or(0);
    if n < 4 || views_per == 0 || set.views.len() != n {
        return Err(TrainError::TooLittle(format!(
            "{n} exemplars with {views_per} views each (at least 4 exemplars with a view each)"
        )));
    }
    for f in set.photos.iter().chain(set.views.iter().flatten()) {
        if f.len() != dim {
            return Err(TrainError::Dimension {
                expected: dim,
                got: f.len(),
            });
        }
    }
    let (train, held) = split(n, config.held_out, config.seed);
    let device = Device::Cpu;
    let centred = |rows: &[&Vec<f32>]| -> Result<Tensor, TrainError> {
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.iter().zip(init.mean()).map(|(x, m)| x - m))
            .collect();
        Ok(Tensor::from_vec(flat, (rows.len(), dim), &device)?)
    };
    let photos = centred(&set.photos.iter().collect::<Vec<_>>())?;
    // Views laid out exemplar by exemplar, `views_per` rows each.
    let views = centred(
        &set.views
            .iter()
            .flat_map(|v| v[..views_per].iter())
            .collect::<Vec<_>>(),
    )?;
    let held_rows: Vec<u32> = held
        .iter()
        .flat_map(|&e| (0..views_per).map(move |v| (e * views_per + v) as u32))
        .collect();
    let held_views = views.index_select(&Tensor::new(held_rows.as_slice(), &device)?, 0)?;
    let held_owner: Vec<usize> = held
        .iter()
        .flat_map(|&e| std::iter::repeat_n(e, views_per))
        .collect();

    let out = init.output_dim();
    let start = Tensor::from_slice(init.matrix(), (out, dim), &device)?;
    let rms = (init.matrix().iter().map(|v| (v * v) as f64).sum::<f64>()
        / init.matrix().len() as f64)
        .sqrt();
    let weights = Var::from_tensor(&start)?;
    let mut optimiser = AdamW::new(
        vec![weights.clone()],
        ParamsAdamW {
            lr: config.learning_rate * rms,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let evaluate = |w: &Tensor| held_out_recall(&photos, &held_views, &held_owner, w);
    let base = evaluate(&start)?;
    let mut best = (base, 0usize, start.clone());
    let mut history = Vec::new();
    let mut rng = SplitMix64::new(config.seed ^ 0x7ea1_5eed);
    let batch = config.batch.clamp(2, train.len().max(2));
    let mut epochs_run = 0;
    for epoch in 1..=config.epochs {
        epochs_run = epoch;
        let mut order = train.clone();
        shuffle(&mut order, &mut rng);
        let (mut total, mut steps) = (0.0, 0);
        for chunk in order.chunks(batch) {
            if chunk.len() < 2 {
                continue;
            }
            let ids: Vec<u32> = chunk.iter().map(|&e| e as u32).collect();
            let picks: Vec<u32> = chunk
                .iter()
                .map(|&e| (e * views_per + (rng.next_u64() % views_per as u64) as usize) as u32)
                .collect();
            let a = photos.index_select(&Tensor::new(ids.as_slice(), &device)?, 0)?;
            let v = views.index_select(&Tensor::new(picks.as_slice(), &device)?, 0)?;
            let loss = batch_loss(&a, &v, weights.as_tensor(), config)?;
            optimiser.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? as f64;
            steps += 1;
        }
        let held_out = evaluate(weights.as_tensor())?;
        let report = Epoch {
            epoch,
            loss: total / steps.max(1) as f64,
            held_out,
            base,
        };
        if on_epoch(&report).is_break() {
            return Err(TrainError::Cancelled);
        }
        history.push(report);
        if held_out.score() > best.0.score() {
            best = (held_out, epoch, weights.as_tensor().copy()?);
        } else if epoch - best.1 >= config.patience {
            break;
        }
    }
    let (learned, best_epoch, matrix) = best;
    let matrix: Vec<f32> = matrix.flatten_all()?.to_vec1()?;
    let projection = Projection::linear(
        ProjectionKind::Learned {
            base: init.version().to_string(),
            exemplars: n,
            views: views_per,
            loss: config.loss.to_string(),
            seed: config.seed,
        },
        init.mean().to_vec(),
        matrix,
    )?;
    let report = TrainReport {
        loss: config.loss,
        exemplars: n,
        views_per_exemplar: views_per,
        held_out_exemplars: held.len(),
        base,
        learned,
        best_epoch,
        epochs_run,
        seconds: started.elapsed().as_secs_f64(),
        history,
    };
    Ok((projection, report))
}

/// Unit rows of `x Wᵀ`.
fn embed(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let z = x.matmul(&w.t()?)?;
    let norm = (z.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    z.broadcast_div(&norm)
}

/// The loss of one batch: row i of `views` is a view of row i of `photos`.
fn batch_loss(
    photos: &Tensor,
    views: &Tensor,
    w: &Tensor,
    config: &HeadConfig,
) -> candle_core::Result<Tensor> {
    let (za, zv) = (embed(photos, w)?, embed(views, w)?);
    let similarity = zv.matmul(&za.t()?)?;
    let b = similarity.dim(0)?;
    match config.loss {
        Loss::InfoNce => {
            let targets = Tensor::arange(0u32, b as u32, similarity.device())?;
            let logits = (similarity / config.temperature)?;
            let views_to_photos = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let photos_to_views = candle_nn::loss::cross_entropy(&logits.t()?, &targets)?;
            (views_to_photos + photos_to_views)? / 2.0
        }
        Loss::Triplet => {
            let eye = Tensor::eye(b, DType::F32, similarity.device())?;
            let positive = (&similarity * &eye)?.sum(D::Minus1)?;
            let hardest = (&similarity - (eye * 4.0)?)?.max(D::Minus1)?;
            // Squared distance of unit vectors is 2 - 2 cos.
            let violation = (hardest - positive)?.affine(2.0, config.margin)?.relu()?;
            violation.mean_all()
        }
    }
}

/// Held-out views searched among every photo under `w`, a block of views at a time so
/// the similarity matrix stays small however large the catalogue.
fn held_out_recall(
    photos: &Tensor,
    views: &Tensor,
    owner: &[usize],
    w: &Tensor,
) -> Result<Recall, TrainError> {
    const BLOCK: usize = 512;
    let gallery = embed(photos, w)?.t()?.contiguous()?;
    let (mut at_1, mut at_10) = (0usize, 0usize);
    for start in (0..owner.len()).step_by(BLOCK) {
        let len = BLOCK.min(owner.len() - start);
        let block = embed(&views.narrow(0, start, len)?, w)?;
        let rows: Vec<Vec<f32>> = block.matmul(&gallery)?.to_vec2()?;
        for (row, &own) in rows.iter().zip(&owner[start..start + len]) {
            let better = row.iter().filter(|&&s| s > row[own]).count();
            at_1 += (better == 0) as usize;
            at_10 += (better < 10) as usize;
        }
    }
    let n = owner.len().max(1) as f64;
    Ok(Recall {
        at_1: at_1 as f64 / n,
        at_10: at_10 as f64 / n,
    })
}

/// (training, held out) exemplar indices: a seeded shuffle, at least one of each.
fn split(n: usize, held_out: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut all: Vec<usize> = (0..n).collect();
    shuffle(&mut all, &mut SplitMix64::new(seed));
    let held = ((n as f64 * held_out).round() as usize).clamp(1, n - 1);
    let train = all.split_off(held);
    all.sort_unstable();
    (train, all)
}

fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        items.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exemplars whose photos differ mostly along a few loud directions that say nothing
    /// of identity (lighting, say), while identity lives in quiet ones; views change the
    /// loud directions at random. PCA keeps the loud directions; a head must learn to
    /// keep the quiet ones.
    fn nuisance_set(n: usize, views: usize, seed: u64) -> TrainSet {
        let (dim, loud) = (24, 6);
        let mut rng = SplitMix64::new(seed);
        let mut g = move || rng.next_gaussian() as f32;
        let mut set = TrainSet::default();
        for _ in 0..n {
            let identity: Vec<f32> = (0..dim)
                .map(|d| if d < loud { 0.0 } else { g() * 0.3 })
                .collect();
            let with_nuisance = |g: &mut dyn FnMut() -> f32| -> Vec<f32> {
                identity
                    .iter()
                    .enumerate()
                    .map(|(d, v)| if d < loud { g() * 5.0 } else { v + g() * 0.03 })
                    .collect()
            };
            set.photos.push(with_nuisance(&mut g));
            set.views
                .push((0..views).map(|_| with_nuisance(&mut g)).collect());
        }
        set
    }

    fn pca(set: &TrainSet, out: usize) -> Projection {
        let refs: Vec<&[f32]> = set.photos.iter().map(Vec::as_slice).collect();
        Projection::fit_pca(&refs, out, 0.0, "test").unwrap()
    }

    #[test]
    fn the_loss_falls_and_the_head_separates_what_pca_cannot() {
        for loss in [Loss::InfoNce, Loss::Triplet] {
            let set = nuisance_set(200, 4, 3);
            let init = pca(&set, 8);
            let config = HeadConfig {
                loss,
                batch: 64,
                epochs: 150,
                patience: 150,
                learning_rate: 0.05,
                ..HeadConfig::default()
            };
            let (head, report) =
                train_head(&set, &init, &config, |_| ControlFlow::Continue(())).unwrap();
            let first = report.history.first().unwrap().loss;
            let last = report.history.last().unwrap().loss;
            assert!(last < first * 0.7, "{loss}: loss {first} -> {last}");
            assert!(
                report.base.at_1 < 0.3 && report.learned.at_1 > 0.8,
                "{loss}: held-out recall@1 {:?} -> {:?}",
                report.base,
                report.learned
            );
            assert!(report.improves());
            assert!(matches!(head.kind(), ProjectionKind::Learned { .. }));
            assert_eq!(head.output_dim(), 8);
        }
    }

    #[test]
    fn training_repeats_with_its_seed() {
        let set = nuisance_set(40, 2, 5);
        let init = pca(&set, 8);
        let config = HeadConfig {
            epochs: 3,
            batch: 16,
            ..HeadConfig::default()
        };
        let (a, _) = train_head(&set, &init, &config, |_| ControlFlow::Continue(())).unwrap();
        let (b, _) = train_head(&set, &init, &config, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(a.version(), b.version());
    }

    #[test]
    fn held_out_exemplars_are_never_trained_on() {
        let (train, held) = split(50, 0.2, 9);
        assert_eq!(held.len(), 10);
        assert_eq!(train.len(), 40);
        assert!(held.iter().all(|h| !train.contains(h)));
    }

    #[test]
    fn too_little_data_is_refused() {
        let set = nuisance_set(3, 1, 1);
        let refs: Vec<&[f32]> = set.photos.iter().map(Vec::as_slice).collect();
        let init = Projection::random_orthogonal(refs[0].len(), 4, 0);
        assert!(matches!(
            train_head(&set, &init, &HeadConfig::default(), |_| {
                ControlFlow::Continue(())
            }),
            Err(TrainError::TooLittle(_))
        ));
    }
}
