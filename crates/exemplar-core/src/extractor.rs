use crate::descriptor::PooledFeature;
use thiserror::Error;

/// Why one image could not be turned into a feature. The variants are what a user must
/// be told apart: their input (unsupported, corrupt, too large) versus our failure.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ExtractError {
    #[error("unsupported image format: {0}")]
    UnsupportedImage(String),
    #[error("corrupt or unreadable image: {0}")]
    CorruptImage(String),
    #[error("image too large: {width}x{height} = {pixels} pixels, the limit is {limit}")]
    ImageTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// The photo is far longer than wide, or wider than long (see [`MAX_ASPECT_RATIO`]).
    #[error("the image is {width}x{height}: an aspect ratio beyond {limit}:1 is not a photo")]
    ExtremeAspect { width: u32, height: u32, limit: u32 },
    /// Decoding and preparing the photo would need more memory than the decode budget.
    #[error("image too large to decode: {width}x{height} needs {needed_mib} MiB in its pixel format, the limit is {limit_mib} MiB")]
    DecodeMemory {
        width: u32,
        height: u32,
        needed_mib: u64,
        limit_mib: u64,
    },
    /// The crop box lies (partly) outside the photo.
    #[error("crop box {crop} is not inside the {width}x{height} photo")]
    CropOutside {
        crop: CropBox,
        width: u32,
        height: u32,
    },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Photos and crops longer than this many times their width (or wider than their
/// height) are refused: no cover or product photo is, and such shapes only serve to make
/// a tiny file cost huge intermediate images.
pub const MAX_ASPECT_RATIO: u32 = 20;

/// True when `width x height` is within [`MAX_ASPECT_RATIO`].
pub fn aspect_within_limit(width: u32, height: u32) -> bool {
    let (long, short) = (width.max(height) as u64, width.min(height) as u64);
    long <= short * MAX_ASPECT_RATIO as u64
}

/// A rectangle of a photo, in pixels of the upright photo (after its EXIF orientation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Display for CropBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.width, self.height)
    }
}

impl std::str::FromStr for CropBox {
    type Err = String;

    /// `x,y,width,height`, all whole pixels, width and height above zero.
    fn from_str(text: &str) -> Result<Self, String> {
        let numbers: Vec<u32> = text
            .split(',')
            .map(|n| n.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("crop must be x,y,width,height in whole pixels, got `{text}`"))?;
        match numbers[..] {
            [_, _, width, height] if width > 0 && height > 0 && !aspect_within_limit(width, height) => {
                Err(format!(
                    "crop {width}x{height} has an aspect ratio beyond {MAX_ASPECT_RATIO}:1, got `{text}`"
                ))
            }
            [x, y, width, height] if width > 0 && height > 0 => Ok(Self {
                x,
                y,
                width,
                height,
            }),
            [_, _, _, _] => Err(format!(
                "crop width and height must be above 0, got `{text}`"
            )),
            _ => Err(format!(
                "crop must be four numbers x,y,width,height, got `{text}`"
            )),
        }
    }
}

impl CropBox {
    /// Checks the box against a photo's size.
    pub fn check(&self, width: u32, height: u32) -> Result<(), ExtractError> {
        let inside = self.x as u64 + self.width as u64 <= width as u64
            && self.y as u64 + self.height as u64 <= height as u64;
        if inside {
            Ok(())
        } else {
            Err(ExtractError::CropOutside {
                crop: *self,
                width,
                height,
            })
        }
    }
}

/// Which part of the (cropped) photo the model looks at.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum View {
    #[default]
    Whole,
    /// The central `fraction` of each side: a second look at a query whose subject fills
    /// only part of the frame (a cover held up in a shop).
    Centre(f32),
}

/// Whether an image's local features (for spatial verification) are wanted too, and
/// for what: an exemplar's are stored (bounded), a query's are matched once (the photo
/// may keep more of its pixels, for a cover small in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LocalFor {
    #[default]
    Nothing,
    Exemplar,
    Query,
}

impl LocalFor {
    pub fn wanted(self) -> bool {
        self != LocalFor::Nothing
    }
}

/// One image to embed: its encoded bytes, optionally the part of it to look at, and
/// whether its local features are wanted too.
#[derive(Debug, Clone, Copy)]
pub struct ImageInput<'a> {
    pub bytes: &'a [u8],
    pub crop: Option<CropBox>,
    pub view: View,
    pub local: LocalFor,
}

impl<'a> ImageInput<'a> {
    pub fn whole(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            crop: None,
            view: View::Whole,
            local: LocalFor::Nothing,
        }
    }
}

/// What the extractor made of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub pooled: PooledFeature,
    /// Serialized local features, when asked for and the extractor makes them; taken
    /// from the cropped photo, in pixels of the photo as sent.
    pub local: Option<Vec<u8>>,
}

impl ExtractError {
    /// True when the caller sent a bad image (a 4xx), false when the failure is ours.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ExtractError::Inference(_))
    }
}

/// Identity of a feature space: which weights, input geometry and pooling made a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// e.g. `efficientnet-lite0@579344248a93/center-crop-224/gem3`.
    pub id: String,
    pub feature_dim: usize,
}

/// Turns encoded images (the bytes of a JPEG, PNG, ...) into pooled features.
///
/// Implementations are blocking and CPU-heavy: call them from a dedicated thread
/// (see [`crate::embed_queue::EmbedQueue`]), never from an async worker.
pub trait FeatureExtractor: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// True when [`ImageInput::local`] is honoured (the service then verifies).
    fn makes_local_features(&self) -> bool {
        false
    }

    /// Embeds a batch in as few forward passes as the implementation can; one result per
    /// input, in order, so one bad image does not fail its neighbours.
    fn extract(&self, images: &[ImageInput<'_>]) -> Vec<Result<Extracted, ExtractError>>;

    /// Pooled features of whole photos.
    fn extract_batch(&self, images: &[&[u8]]) -> Vec<Result<PooledFeature, ExtractError>> {
        let inputs: Vec<ImageInput<'_>> = images.iter().map(|b| ImageInput::whole(b)).collect();
        self.extract(&inputs)
            .into_iter()
            .map(|r| r.map(|e| e.pooled))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_boxes_parse_and_must_lie_inside_the_photo() {
        let crop: CropBox = " 10, 20,30 ,40".parse().unwrap();
        assert_eq!(
            crop,
            CropBox {
                x: 10,
                y: 20,
                width: 30,
                height: 40
            }
        );
        for bad in [
            "1,2,3",
            "1,2,3,4,5",
            "0,0,0,5",
            "-1,0,5,5",
            "a,b,c,d",
            "",
            "0,0,7000,1",
            "0,0,10,201",
        ] {
            assert!(bad.parse::<CropBox>().is_err(), "{bad}");
        }
        assert!(crop.check(40, 60).is_ok());
        assert!(crop.check(39, 60).is_err());
        assert!(crop.check(40, 59).is_err());
        let huge = CropBox {
            x: u32::MAX,
            y: 0,
            width: u32::MAX,
            height: 1,
        };
        assert!(huge.check(100, 100).is_err(), "no overflow");
    }
}
