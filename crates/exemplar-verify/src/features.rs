//! Local features of a photo: their kinds, keypoints and descriptors, and extraction
//! (the photo scaled to a bounded size, then SIFT, see [`crate::sift`], or ORB, see
//! [`crate::orb`]).

use crate::orb;
use crate::sift::{self, DESCRIPTOR_LEN};
use image::imageops::{self, FilterType};
use image::GrayImage;

/// Which local features: both kinds are stored self-described, and only features of
/// one kind can be matched with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureKind {
    /// Oriented FAST corners with rotated BRIEF bits: fast, fragile on small, blurred covers.
    Orb,
    /// Difference-of-Gaussian blobs with RootSIFT descriptors (see [`crate::sift`]).
    #[default]
    Sift,
}

impl std::str::FromStr for FeatureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sift" => Ok(FeatureKind::Sift),
            "orb" => Ok(FeatureKind::Orb),
            _ => Err(format!(
                "unknown local features {s:?}: expected sift or orb"
            )),
        }
    }
}

impl std::fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FeatureKind::Sift => "sift",
            FeatureKind::Orb => "orb",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExtractParams {
    pub kind: FeatureKind,
    /// The photo is first scaled so its long side is at most this...
    pub max_side: u32,
    /// ...or this for a search's photo, whose features are matched once and not stored:
    /// a cover a fifth of a phone photo's width keeps more of its pixels (dvdcovers
    /// image_02: 25 inliers against its scan at 640, 32 at 1,005 px; docs/benchmarks.md).
    pub query_max_side: u32,
    pub levels: usize,
    /// Scale step between pyramid levels.
    pub scale: f32,
    /// FAST: how much brighter or darker the arc must be.
    pub fast_threshold: u8,
    pub max_keypoints: usize,
}

impl Default for ExtractParams {
    fn default() -> Self {
        Self {
            kind: FeatureKind::default(),
            max_side: 640,
            query_max_side: 1024,
            levels: 6,
            scale: 1.3,
            fast_threshold: 20,
            max_keypoints: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keypoint {
    /// In pixels of the photo as given.
    pub x: f32,
    pub y: f32,
    /// Radians.
    pub angle: f32,
    pub level: u8,
    pub response: f32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalFeatures {
    /// The size of the photo (or part of one) the keypoints were found in...
    pub width: u32,
    pub height: u32,
    /// ...and where that part starts in the photo the keypoints' coordinates refer to
    /// (see [`LocalFeatures::offset`]); (0, 0) for a whole photo.
    pub origin: (u32, u32),
    pub keypoints: Vec<Keypoint>,
    /// One per keypoint.
    pub descriptors: Descriptors,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Descriptors {
    /// 256 rotated BRIEF bits (ORB).
    Orb(Vec<[u64; 4]>),
    /// RootSIFT scaled to bytes.
    Sift(Vec<[u8; DESCRIPTOR_LEN]>),
}

impl Default for Descriptors {
    fn default() -> Self {
        Descriptors::Sift(Vec::new())
    }
}

impl Descriptors {
    pub fn len(&self) -> usize {
        match self {
            Descriptors::Orb(d) => d.len(),
            Descriptors::Sift(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> FeatureKind {
        match self {
            Descriptors::Orb(_) => FeatureKind::Orb,
            Descriptors::Sift(_) => FeatureKind::Sift,
        }
    }
}

impl ExtractParams {
    /// The parameters for a search's photo (see `query_max_side`).
    pub fn for_query(&self) -> ExtractParams {
        ExtractParams {
            max_side: self.query_max_side,
            ..self.clone()
        }
    }
}

/// Keypoints and descriptors of a colour photo or part of one (its luma).
pub fn extract_rgb<I>(rgb: &I, params: &ExtractParams) -> LocalFeatures
where
    I: image::GenericImageView<Pixel = image::Rgb<u8>>,
{
    extract(&imageops::grayscale(rgb), params)
}

/// Keypoints and descriptors of a grayscale photo.
pub fn extract(gray: &GrayImage, params: &ExtractParams) -> LocalFeatures {
    let base = scaled(gray, params.max_side);
    match params.kind {
        FeatureKind::Orb => orb::extract(gray.dimensions(), &base, params),
        FeatureKind::Sift => extract_sift(gray.dimensions(), &base, params),
    }
}

/// The photo with its long side at most `max_side`.
fn scaled(gray: &GrayImage, max_side: u32) -> GrayImage {
    let (w0, h0) = gray.dimensions();
    let long = w0.max(h0).max(1);
    if long > max_side {
        let f = max_side as f32 / long as f32;
        imageops::resize(
            gray,
            ((w0 as f32 * f).round() as u32).max(1),
            ((h0 as f32 * f).round() as u32).max(1),
            FilterType::Triangle,
        )
    } else {
        gray.clone()
    }
}

fn extract_sift((w0, h0): (u32, u32), base: &GrayImage, params: &ExtractParams) -> LocalFeatures {
    let (sx, sy) = (
        w0 as f32 / base.width().max(1) as f32,
        h0 as f32 / base.height().max(1) as f32,
    );
    let found = sift::detect(base, params.max_keypoints);
    let mut keypoints = Vec::with_capacity(found.len());
    let mut descriptors = Vec::with_capacity(found.len());
    for (p, d) in found {
        keypoints.push(Keypoint {
            x: (p.x + 0.5) * sx - 0.5,
            y: (p.y + 0.5) * sy - 0.5,
            angle: p.angle,
            level: p.size.log2().clamp(0.0, 255.0) as u8,
            response: p.response,
        });
        descriptors.push(d);
    }
    LocalFeatures {
        width: w0,
        height: h0,
        origin: (0, 0),
        keypoints,
        descriptors: Descriptors::Sift(descriptors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Photos of every degenerate shape give features (or none) without panicking, in
    /// memory bounded by the scaled size.
    #[test]
    fn degenerate_shapes_are_handled() {
        for kind in [FeatureKind::Sift, FeatureKind::Orb] {
            let params = ExtractParams {
                kind,
                ..ExtractParams::default()
            }
            .for_query();
            for (w, h) in [
                (1, 1),
                (1, 200_000),
                (200_000, 1),
                (3, 5000),
                (2, 2),
                (40, 1),
            ] {
                let photo =
                    GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 31 + y * 17) % 251) as u8]));
                let f = extract(&photo, &params);
                assert_eq!((f.width, f.height), (w, h));
                assert_eq!(f.keypoints.len(), f.descriptors.len());
            }
        }
    }

    /// A search's photo keeps more pixels than a stored exemplar; keypoints stay in the
    /// pixels of the photo as given either way.
    #[test]
    fn a_query_is_extracted_larger_than_an_exemplar_in_the_same_coordinates() {
        let params = ExtractParams::default();
        let query = params.for_query();
        assert_eq!((params.max_side, query.max_side), (640, 1024));
        assert_eq!(query.max_keypoints, params.max_keypoints);
        // A 2,000 × 1,000 photo: scaled to 640 or 1,024 px wide, coordinates mapped back.
        let photo = GrayImage::from_fn(2000, 1000, |x, y| {
            image::Luma([if (x / 100 + y / 100) % 2 == 0 {
                40
            } else {
                220
            }])
        });
        for p in [&params, &query] {
            let f = extract(&photo, p);
            assert_eq!((f.width, f.height), (2000, 1000));
            assert!(!f.keypoints.is_empty());
            assert!(f
                .keypoints
                .iter()
                .all(|k| k.x >= 0.0 && k.x < 2000.0 && k.y < 1000.0));
        }
    }
}
