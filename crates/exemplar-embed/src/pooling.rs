//! Pooling a feature map `(batch, c, h, w)` into one L2-normalised vector per image.

use crate::error::{EmbedError, Result};
use candle_core::Tensor;
use exemplar_core::l2_normalize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pooling {
    /// Generalised mean (Radenović et al.): `(mean x^p)^(1/p)`; p=1 is average, p→∞ max.
    Gem(f32),
    Average,
    Max,
}

impl Default for Pooling {
    fn default() -> Self {
        Pooling::Gem(3.0)
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pooling::Gem(p) => write!(f, "gem{p}"),
            Pooling::Average => write!(f, "avg"),
            Pooling::Max => write!(f, "max"),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EmbedError::UnknownSetting {
            what: "pooling",
            value: s.to_string(),
            expected: "gem (p=3), gemP (e.g. gem4), avg, max".into(),
        };
        match s {
            "avg" | "average" => Ok(Pooling::Average),
            "max" => Ok(Pooling::Max),
            "gem" => Ok(Pooling::Gem(3.0)),
            _ => {
                let p: f32 = s
                    .strip_prefix("gem")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if p.is_finite() && (1.0..=16.0).contains(&p) {
                    Ok(Pooling::Gem(p))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl Pooling {
    pub fn pool(&self, feature_map: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (batch, channels, h, w) = feature_map.dims4()?;
        // The tensor's values in place, sliced per channel (a vector per channel and
        // image cost more than the pooling itself).
        let pixels = (h * w).max(1);
        crate::ops::with_f32_values(feature_map, |values| {
            values
                .chunks_exact(channels * pixels)
                .take(batch)
                .map(|image| {
                    let mut v: Vec<f32> = image
                        .chunks_exact(pixels)
                        .map(|c| self.pool_channel(c))
                        .collect();
                    l2_normalize(&mut v);
                    v
                })
                .collect()
        })
    }

    fn pool_channel(&self, values: &[f32]) -> f32 {
        let n = values.len() as f64;
        match *self {
            Pooling::Average => (values.iter().map(|v| *v as f64).sum::<f64>() / n) as f32,
            Pooling::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Pooling::Gem(p) => {
                let p = p as f64;
                // An integer power (the default p = 3) by repeated multiplication:
                // `powf`, and `powi` (an out-of-line call), per value cost 3-5 % of a
                // Lite0 forward pass.
                let integer = (p.fract() == 0.0).then_some(p as u32);
                let power = |v: f32| {
                    let v = v.max(1e-6) as f64;
                    match integer {
                        Some(e) => (1..e).fold(v, |acc, _| acc * v),
                        None => v.powf(p),
                    }
                };
                // Four running sums: a single sum waits for each addition to finish
                // before the next (Lite0: 49 values per channel, 1280 channels).
                let mut sums = [0f64; 4];
                let mut quads = values.chunks_exact(4);
                for quad in &mut quads {
                    for (sum, v) in sums.iter_mut().zip(quad) {
                        *sum += power(*v);
                    }
                }
                let rest: f64 = quads.remainder().iter().map(|v| power(*v)).sum();
                let mean = (sums.iter().sum::<f64>() + rest) / n;
                mean.powf(1.0 / p) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn poolings_on_a_known_map() {
        // One image, two channels of four values.
        let t = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 0., 0., 0., 8.],
            (1, 2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let unnormalised = |p: Pooling| {
            vec![
                p.pool_channel(&[1., 2., 3., 4.]),
                p.pool_channel(&[0., 0., 0., 8.]),
            ]
        };
        assert_eq!(unnormalised(Pooling::Average), vec![2.5, 2.0]);
        assert_eq!(unnormalised(Pooling::Max), vec![4.0, 8.0]);
        let gem = unnormalised(Pooling::Gem(3.0));
        assert!((gem[0] - (100f32 / 4.0).cbrt()).abs() < 1e-5);
        assert!((gem[1] - (512f32 / 4.0).cbrt()).abs() < 1e-4);
        // A fractional power takes the general path; zeros count as the 1e-6 floor.
        let gem = unnormalised(Pooling::Gem(2.5));
        let want = ((1f64 + 2f64.powf(2.5) + 3f64.powf(2.5) + 4f64.powf(2.5)) / 4.0).powf(0.4);
        assert!((gem[0] as f64 - want).abs() < 1e-5);
        let pooled = Pooling::Max.pool(&t).unwrap();
        assert!((pooled[0][0] - 4.0 / 80f32.sqrt()).abs() < 1e-6);
        // Seven values: a group of four running sums and three left over.
        let seven = [1f32, 2., 3., 4., 5., 6., 7.];
        let want = (seven.iter().map(|v| (*v as f64).powi(3)).sum::<f64>() / 7.0).cbrt();
        assert!((Pooling::Gem(3.0).pool_channel(&seven) as f64 - want).abs() < 1e-5);
        // A strided view (channels and rows swapped) pools as its contiguous copy.
        let view = t.transpose(1, 2).unwrap();
        let gem = Pooling::Gem(3.0);
        let want = gem.pool(&view.contiguous().unwrap()).unwrap();
        assert_eq!(gem.pool(&view).unwrap(), want);
        assert_ne!(want, gem.pool(&t).unwrap());
    }

    #[test]
    fn pooling_names_parse() {
        assert_eq!("gem".parse::<Pooling>().unwrap(), Pooling::Gem(3.0));
        assert_eq!("gem4".parse::<Pooling>().unwrap(), Pooling::Gem(4.0));
        assert_eq!("avg".parse::<Pooling>().unwrap().to_string(), "avg");
        assert!("gem0".parse::<Pooling>().is_err());
        assert!("median".parse::<Pooling>().is_err());
    }
}
