//! The other way to recognise an 11th item: a softmax layer over the classes, trained on
//! the frozen backbone's features (a linear probe). Adding a class means training the
//! layer again, where retrieval indexes one vector; `exemplar eval --method linear-probe`
//! measures both. An evaluation baseline, not a serving path.

use crate::TrainError;
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// Full-batch steps.
    pub steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            learning_rate: 0.05,
            weight_decay: 1e-4,
        }
    }
}

/// A trained softmax layer over `classes` classes.
pub struct Probe {
    weights: Tensor,
    bias: Tensor,
}

/// Unit-length rows, as one tensor.
fn unit_rows(features: &[Vec<f32>], device: &Device) -> Result<Tensor, TrainError> {
    let dim = features.first().map_or(0, Vec::len);
    let mut flat = Vec::with_capacity(features.len() * dim);
    for f in features {
        if f.len() != dim {
            return Err(TrainError::Dimension {
                expected: dim,
                got: f.len(),
            });
        }
        let norm = f.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        flat.extend(f.iter().map(|v| v / norm));
    }
    Ok(Tensor::from_vec(flat, (features.len(), dim), device)?)
}

/// Trains the layer on `features` labelled `labels` (each below `classes`).
pub fn train_probe(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    config: &ProbeConfig,
) -> Result<Probe, TrainError> {
    if features.is_empty() || features.len() != labels.len() || classes < 2 {
        return Err(TrainError::TooLittle(format!(
            "{} features, {} labels, {classes} classes",
            features.len(),
            labels.len()
        )));
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(TrainError::TooLittle(format!(
            "label {bad} outside {classes} classes"
        )));
    }
    let device = Device::Cpu;
    let x = unit_rows(features, &device)?;
    let dim = x.dim(1)?;
    let targets = Tensor::from_vec(
        labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        labels.len(),
        &device,
    )?;
    let weights = Var::zeros((classes, dim), candle_core::DType::F32, &device)?;
    let bias = Var::zeros(classes, candle_core::DType::F32, &device)?;
    let mut optimiser = AdamW::new(
        vec![weights.clone(), bias.clone()],
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    for _ in 0..config.steps {
        let logits = x
            .matmul(&weights.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        optimiser.backward_step(&loss)?;
    }
    Ok(Probe {
        weights: weights.as_tensor().copy()?,
        bias: bias.as_tensor().copy()?,
    })
}

impl Probe {
    /// The most likely class of each feature.
    pub fn classify(&self, features: &[Vec<f32>]) -> Result<Vec<usize>, TrainError> {
        let x = unit_rows(features, &Device::Cpu)?;
        let logits = x.matmul(&self.weights.t()?)?.broadcast_add(&self.bias)?;
        Ok(logits
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|c| c as usize)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exemplar_core::rng::SplitMix64;

    #[test]
    fn a_probe_learns_classes_and_a_new_one_needs_training_again() {
        let mut rng = SplitMix64::new(4);
        let centres: Vec<Vec<f32>> = (0..11)
            .map(|_| (0..32).map(|_| rng.next_gaussian() as f32).collect())
            .collect();
        let mut sample = |c: usize| -> Vec<f32> {
            centres[c]
                .iter()
                .map(|v| v + rng.next_gaussian() as f32 * 0.2)
                .collect()
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for c in 0..10 {
            for _ in 0..3 {
                x.push(sample(c));
                y.push(c);
            }
        }
        let probe = train_probe(&x, &y, 10, &ProbeConfig::default()).unwrap();
        let tests: Vec<Vec<f32>> = (0..10).map(&mut sample).collect();
        assert_eq!(probe.classify(&tests).unwrap(), (0..10).collect::<Vec<_>>());
        // The 11th item is beyond the trained layer until it is trained again.
        let eleventh = sample(10);
        assert!(probe.classify(std::slice::from_ref(&eleventh)).unwrap()[0] < 10);
        x.push(sample(10));
        y.push(10);
        let retrained = train_probe(&x, &y, 11, &ProbeConfig::default()).unwrap();
        assert_eq!(retrained.classify(&[eleventh]).unwrap(), vec![10]);
    }
}
