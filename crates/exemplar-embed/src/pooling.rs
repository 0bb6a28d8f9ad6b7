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
        let pixels = (h * w).max(1);
        let per_image = |values: &[f32], pool: &dyn Fn(&[f32]) -> Vec<f32>| -> Vec<Vec<f32>> {
            values
                .chunks_exact(channels * pixels)
                .take(batch)
                .map(|image| {
                    let mut v = pool(image);
                    l2_normalize(&mut v);
                    v
                })
                .collect()
        };
        // The fast engine's maps, channels-last: pooled pixel by pixel, every channel
        // at once.
        if let Some(pooled) = exemplar_nhwc::with_channels_last_values(feature_map, |values| {
            per_image(values, &|image| self.pool_pixels(image, channels))
        }) {
            return Ok(pooled);
        }
        // Otherwise the values in row-major order (in place when contiguous), sliced
        // per channel (a vector per channel and image cost more than the pooling).
        Ok(exemplar_nhwc::with_f32_values(feature_map, |values| {
            per_image(values, &|image| {
                image
                    .chunks_exact(pixels)
                    .map(|c| self.pool_channel(c))
                    .collect()
            })
        })?)
    }

    /// One image's channels-last values (`pixels x channels`), pooled per channel.
    fn pool_pixels(&self, image: &[f32], channels: usize) -> Vec<f32> {
        let n = (image.len() / channels.max(1)) as f64;
        let pixels = image.chunks_exact(channels.max(1));
        let sums = |power: &dyn Fn(f32) -> f64| {
            let mut sums = vec![0f64; channels];
            for pixel in pixels.clone() {
                for (sum, v) in sums.iter_mut().zip(pixel) {
                    *sum += power(*v);
                }
            }
            sums
        };
        match *self {
            Pooling::Average => sums(&|v| v as f64).iter().map(|s| (s / n) as f32).collect(),
            Pooling::Max => pixels.fold(vec![f32::NEG_INFINITY; channels], |mut max, pixel| {
                max.iter_mut().zip(pixel).for_each(|(m, v)| *m = m.max(*v));
                max
            }),
            Pooling::Gem(3.0) => {
                // The default, as [`sum_of_cubes`]: f32 running sums, one per channel.
                let mut sums = vec![0f32; channels];
                for pixel in pixels {
                    for (sum, v) in sums.iter_mut().zip(pixel) {
                        let v = v.max(1e-6);
                        *sum += v * v * v;
                    }
                }
                sums.iter().map(|s| (*s as f64 / n).cbrt() as f32).collect()
            }
            Pooling::Gem(p) => {
                let p = p as f64;
                sums(&|v| (v.max(1e-6) as f64).powf(p))
                    .iter()
                    .map(|s| (s / n).powf(1.0 / p) as f32)
                    .collect()
            }
        }
    }

    fn pool_channel(&self, values: &[f32]) -> f32 {
        let n = values.len() as f64;
        match *self {
            Pooling::Average => (values.iter().map(|v| *v as f64).sum::<f64>() / n) as f32,
            Pooling::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Pooling::Gem(p) => {
                if p == 3.0 {
                    // The default, cubed in f32: `powf` per value, and one f64 sum
                    // waiting for each addition, made pooling Lite0's 7x7x1280 map
                    // 0.17 ms of serial time per pass.
                    (sum_of_cubes(values) as f64 / n).cbrt() as f32
                } else {
                    // Other powers in f64: f32 overflows (300^16 > f32::MAX).
                    let p = p as f64;
                    let integer = (p.fract() == 0.0).then_some(p as u32);
                    let sum: f64 = values
                        .iter()
                        .map(|v| {
                            let v = v.max(1e-6) as f64;
                            match integer {
                                Some(e) => (1..e).fold(v, |acc, _| acc * v),
                                None => v.powf(p),
                            }
                        })
                        .sum();
                    (sum / n).powf(1.0 / p) as f32
                }
            }
        }
    }
}

/// `sum(max(v, 1e-6)^3)` in eight running f32 sums, which the compiler keeps in one
/// vector register. f32 holds such sums to about 1e-6 relative (tens of positive terms).
fn sum_of_cubes(values: &[f32]) -> f32 {
    let cube = |v: &f32| {
        let v = v.max(1e-6);
        v * v * v
    };
    let mut sums = [0f32; 8];
    let mut groups = values.chunks_exact(8);
    for group in &mut groups {
        for (sum, v) in sums.iter_mut().zip(group) {
            *sum += cube(v);
        }
    }
    let rest: f32 = groups.remainder().iter().map(cube).sum();
    sums.iter().sum::<f32>() + rest
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
        // Seven values: fewer than one group of eight running sums.
        let seven = [1f32, 2., 3., 4., 5., 6., 7.];
        let want = (seven.iter().map(|v| (*v as f64).powi(3)).sum::<f64>() / 7.0).cbrt();
        assert!((Pooling::Gem(3.0).pool_channel(&seven) as f64 - want).abs() < 1e-5);
        // Nineteen: two groups of eight and three left over.
        let nineteen: Vec<f32> = (1..=19).map(|v| v as f32 / 4.0).collect();
        let want = (nineteen.iter().map(|v| (*v as f64).powi(3)).sum::<f64>() / 19.0).cbrt();
        assert!((Pooling::Gem(3.0).pool_channel(&nineteen) as f64 - want).abs() < 1e-5);
        // A strided view (channels and rows swapped) pools as its contiguous copy.
        let view = t.transpose(1, 2).unwrap();
        let gem = Pooling::Gem(3.0);
        let want = gem.pool(&view.contiguous().unwrap()).unwrap();
        assert_eq!(gem.pool(&view).unwrap(), want);
        assert_ne!(want, gem.pool(&t).unwrap());
    }

    #[test]
    fn channels_last_maps_pool_as_their_nchw_copies() {
        // Two images of 3 x 4 pixels and 13 channels, channels-last as the fast engine
        // leaves them, with negative values (floored by GeM).
        let (b, h, w, c) = (2, 3, 4, 13);
        let values: Vec<f32> = (0..b * h * w * c)
            .map(|i| ((i * 37 % 101) as f32 - 30.0) / 17.0)
            .collect();
        let view = Tensor::from_vec(values, (b, h, w, c), &Device::Cpu)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let nchw = view.contiguous().unwrap();
        assert!(exemplar_nhwc::with_channels_last_values(&view, |_| ()).is_some());
        assert!(exemplar_nhwc::with_channels_last_values(&nchw, |_| ()).is_none());
        for pooling in [
            Pooling::Average,
            Pooling::Max,
            Pooling::Gem(3.0),
            Pooling::Gem(4.0),
            Pooling::Gem(2.5),
        ] {
            let got = pooling.pool(&view).unwrap();
            let want = pooling.pool(&nchw).unwrap();
            assert_eq!(got.len(), b);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), c);
                let diff = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-6, "{pooling}: max diff {diff}");
            }
        }
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
