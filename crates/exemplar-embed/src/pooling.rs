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
        let maps: Vec<Vec<Vec<f32>>> = feature_map.flatten_from(2)?.to_vec3()?;
        Ok(maps
            .into_iter()
            .map(|channels| {
                let mut v: Vec<f32> = channels.iter().map(|c| self.pool_channel(c)).collect();
                l2_normalize(&mut v);
                v
            })
            .collect())
    }

    fn pool_channel(&self, values: &[f32]) -> f32 {
        let n = values.len() as f64;
        match *self {
            Pooling::Average => (values.iter().map(|v| *v as f64).sum::<f64>() / n) as f32,
            Pooling::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Pooling::Gem(p) => {
                let p = p as f64;
                // An integer power (the default p = 3) by multiplications: `powf` per
                // value cost ~5 % of a Lite0 forward pass.
                let power = |v: f64| {
                    if p.fract() == 0.0 {
                        v.powi(p as i32)
                    } else {
                        v.powf(p)
                    }
                };
                let mean = values
                    .iter()
                    .map(|v| power(v.max(1e-6) as f64))
                    .sum::<f64>()
                    / n;
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
        let pooled = Pooling::Max.pool(&t).unwrap();
        assert!((pooled[0][0] - 4.0 / 80f32.sqrt()).abs() < 1e-6);
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
