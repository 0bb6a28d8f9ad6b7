//! Learning the descriptor head from the catalogue's own photos, the same way for
//! `exemplar train`, `POST /admin/train` and `exemplar eval --projection learned`:
//! synthetic phone-photo views of each photo are embedded by the serving model, a PCA is
//! fitted on the photos' raw features as the starting point and the baseline, and the
//! head is trained from it ([`exemplar_train::train_head`]).

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::Args;
use exemplar_core::refit::CATALOGUE_SOURCE;
use exemplar_core::{Projection, RefitPolicy};
use exemplar_train::views::{decode_cover, views_of, ViewRecipe};
use exemplar_train::{train_head, Epoch, HeadConfig, Loss, TrainReport, TrainSet};

/// Photos decoded, turned into views and embedded together.
const CHUNK: usize = 32;

/// How a head is trained (flags of `exemplar train` and `exemplar eval`; what
/// `POST /admin/train` makes of its body).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct TrainSettings {
    /// Synthetic phone photos made of each exemplar's photo.
    #[arg(long = "train-views", default_value_t = exemplar_train::DEFAULT_VIEWS,
        value_parser = clap::value_parser!(u32).range(1..=64).map(|v| v as usize))]
    pub views: usize,
    /// The metric-learning loss: info-nce or triplet.
    #[arg(long = "train-loss", default_value_t = HeadConfig::default().loss)]
    pub loss: Loss,
    /// Most passes over the training exemplars (the epoch best on held-out exemplars is
    /// kept).
    #[arg(long = "train-epochs", default_value_t = HeadConfig::default().epochs,
        value_parser = clap::value_parser!(u32).range(1..=1000).map(|v| v as usize))]
    pub epochs: usize,
    /// Seed of the views, the held-out split and the training: the same seed and
    /// catalogue give the same head.
    #[arg(long = "train-seed", default_value_t = 0)]
    pub seed: u64,
    /// Train on at most this many exemplars, evenly spread over the catalogue.
    #[arg(long = "train-max-exemplars", default_value_t = exemplar_train::DEFAULT_MAX_EXEMPLARS,
        value_parser = clap::value_parser!(u32).range(4..=1_000_000).map(|v| v as usize))]
    pub max_exemplars: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let head = HeadConfig::default();
        Self {
            views: exemplar_train::DEFAULT_VIEWS,
            loss: head.loss,
            epochs: head.epochs,
            seed: 0,
            max_exemplars: exemplar_train::DEFAULT_MAX_EXEMPLARS,
        }
    }
}

impl TrainSettings {
    pub fn head_config(&self) -> HeadConfig {
        HeadConfig {
            loss: self.loss,
            epochs: self.epochs,
            seed: self.seed,
            ..HeadConfig::default()
        }
    }

    /// The bounds the flags enforce, for settings that came as JSON.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.views) {
            return Err(format!("views must be 1 to 64, not {}", self.views));
        }
        if !(1..=1000).contains(&self.epochs) {
            return Err(format!("epochs must be 1 to 1000, not {}", self.epochs));
        }
        if !(4..=1_000_000).contains(&self.max_exemplars) {
            return Err(format!(
                "max_exemplars must be 4 to 1000000, not {}",
                self.max_exemplars
            ));
        }
        Ok(())
    }
}

/// Raw features of `settings.views` views of each of `keys.len()` photos: `load` reads
/// some photos' bytes (`None`: gone, no views), `embed` runs the model on encoded views;
/// `progress` hears how many views are done.
pub fn embed_views(
    keys: &[u64],
    settings: &TrainSettings,
    mut load: impl FnMut(&[usize]) -> anyhow::Result<Vec<Option<Vec<u8>>>>,
    mut embed: impl FnMut(Vec<Vec<u8>>) -> anyhow::Result<Vec<Vec<f32>>>,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let recipe = ViewRecipe::default();
    let mut out = Vec::with_capacity(keys.len());
    let indices: Vec<usize> = (0..keys.len()).collect();
    for chunk in indices.chunks(CHUNK) {
        let bytes = load(chunk)?;
        // A photo gone meanwhile (its exemplar deleted) gets no views.
        let present: Vec<(usize, &Vec<u8>)> = chunk
            .iter()
            .zip(&bytes)
            .filter_map(|(&i, b)| Some((i, b.as_ref()?)))
            .collect();
        let covers = present
            .iter()
            .map(|&(i, b)| decode_cover(b).with_context(|| format!("decoding photo {}", keys[i])))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let chunk_keys: Vec<u64> = present.iter().map(|&(i, _)| keys[i]).collect();
        let views = views_of(&covers, &chunk_keys, settings.views, &recipe, settings.seed);
        let flat: Vec<Vec<u8>> = views.into_iter().flatten().collect();
        let made = flat.len();
        let mut features = embed(flat)?.into_iter();
        for i in chunk {
            if present.iter().any(|&(p, _)| p == *i) {
                out.push(features.by_ref().take(settings.views).collect());
            } else {
                out.push(Vec::new());
            }
        }
        progress(made);
    }
    Ok(out)
}

/// The PCA to `dim` a head starts from (and is judged against): what a refit fits.
pub fn base_projection(photos: &[Vec<f32>], dim: usize) -> anyhow::Result<Projection> {
    let refs: Vec<&[f32]> = photos.iter().map(Vec::as_slice).collect();
    Ok(Projection::fit_pca(
        &refs,
        dim,
        RefitPolicy::default().whitening,
        CATALOGUE_SOURCE,
    )?)
}

/// Trains a head to `dim` on the photos' raw features and their views' (same order).
pub fn learn(
    photos: Vec<Vec<f32>>,
    views: Vec<Vec<Vec<f32>>>,
    dim: usize,
    settings: &TrainSettings,
    on_epoch: impl FnMut(&Epoch) -> std::ops::ControlFlow<()>,
) -> anyhow::Result<(Projection, TrainReport)> {
    // Photos without views (gone while their views were made) are left out.
    let (photos, views): (Vec<_>, Vec<_>) = photos
        .into_iter()
        .zip(views)
        .filter(|(_, v)| !v.is_empty())
        .unzip();
    let base = base_projection(&photos, dim)?;
    let set = TrainSet { photos, views };
    Ok(train_head(&set, &base, &settings.head_config(), on_epoch)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_gone_while_views_are_made_gets_none_and_is_left_out() {
        let png = {
            let img =
                image::RgbImage::from_fn(64, 80, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 90]));
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        let settings = TrainSettings {
            views: 2,
            ..TrainSettings::default()
        };
        let mut embedded = 0;
        let views = embed_views(
            &[10, 11, 12],
            &settings,
            |chunk| {
                Ok(chunk
                    .iter()
                    .map(|&i| (i != 1).then(|| png.clone()))
                    .collect())
            },
            |views| {
                embedded += views.len();
                Ok(views.iter().map(|v| vec![v.len() as f32; 4]).collect())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(embedded, 4);
        assert_eq!(
            views.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 0, 2]
        );
    }
}
