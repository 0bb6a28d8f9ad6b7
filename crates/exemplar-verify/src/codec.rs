//! The stored form of a reference's local features: what verification needs (keypoint
//! positions and descriptors, the image size) and nothing else, in a bounded, versioned
//! little-endian layout: a 16-byte header, then per keypoint its position (8 bytes) and
//! descriptor (32 bytes of ORB bits, `EXL1`, or 128 of RootSIFT, `EXS1`): at most
//! 136,016 bytes per exemplar with the default 1,000 SIFT keypoints. Features of a part
//! cut from a larger photo (a search's `crop`) also carry where the part starts: `EXL2` /
//! `EXS2`, 8 bytes more.

use crate::features::Descriptors;
use crate::sift::DESCRIPTOR_LEN;
use crate::{FeatureKind, Keypoint, LocalFeatures};

const HEADER: usize = 16;
const ORIGIN: usize = 8;
const POSITION: usize = 8;

/// Why stored bytes are not local features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "local features: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

fn magic(kind: FeatureKind, cut: bool) -> &'static [u8; 4] {
    match (kind, cut) {
        (FeatureKind::Orb, false) => b"EXL1",
        (FeatureKind::Orb, true) => b"EXL2",
        (FeatureKind::Sift, false) => b"EXS1",
        (FeatureKind::Sift, true) => b"EXS2",
    }
}

fn descriptor_len(kind: FeatureKind) -> usize {
    match kind {
        FeatureKind::Orb => 32,
        FeatureKind::Sift => DESCRIPTOR_LEN,
    }
}

/// Bytes stored per exemplar for `keypoints` keypoints of `kind`.
pub fn encoded_len(kind: FeatureKind, keypoints: usize) -> usize {
    HEADER + (POSITION + descriptor_len(kind)) * keypoints
}

/// The kind of the stored features, from their first bytes.
pub fn stored_kind(bytes: &[u8]) -> Option<FeatureKind> {
    [FeatureKind::Orb, FeatureKind::Sift].into_iter().find(|k| {
        bytes
            .get(..4)
            .is_some_and(|m| m == magic(*k, false) || m == magic(*k, true))
    })
}

impl LocalFeatures {
    pub fn to_bytes(&self) -> Vec<u8> {
        let cut = self.origin != (0, 0);
        let kind = self.descriptors.kind();
        let mut out = Vec::with_capacity(encoded_len(kind, self.keypoints.len()) + ORIGIN);
        out.extend_from_slice(magic(kind, cut));
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&(self.keypoints.len() as u32).to_le_bytes());
        if cut {
            out.extend_from_slice(&self.origin.0.to_le_bytes());
            out.extend_from_slice(&self.origin.1.to_le_bytes());
        }
        for (i, k) in self.keypoints.iter().enumerate() {
            out.extend_from_slice(&k.x.to_le_bytes());
            out.extend_from_slice(&k.y.to_le_bytes());
            match &self.descriptors {
                Descriptors::Orb(d) => {
                    for word in d[i] {
                        out.extend_from_slice(&word.to_le_bytes());
                    }
                }
                Descriptors::Sift(d) => out.extend_from_slice(&d[i]),
            }
        }
        out
    }

    /// The inverse of [`LocalFeatures::to_bytes`]; angle, level and response are not
    /// stored (verification does not use them) and come back as zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let Some(kind) = stored_kind(bytes) else {
            return Err(CodecError("not in the EXL1/2 or EXS1/2 format".into()));
        };
        let header = if bytes[..4] == *magic(kind, true) {
            HEADER + ORIGIN
        } else {
            HEADER
        };
        if bytes.len() < header {
            return Err(CodecError(format!(
                "{} bytes: no room for the header",
                bytes.len()
            )));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (width, height, count) = (word(4), word(8), word(12) as usize);
        let origin = if header > HEADER {
            (word(16), word(20))
        } else {
            (0, 0)
        };
        let expected = encoded_len(kind, count) + (header - HEADER);
        if bytes.len() != expected {
            return Err(CodecError(format!(
                "{} bytes for {count} keypoints, expected {expected}",
                bytes.len(),
            )));
        }
        let mut keypoints = Vec::with_capacity(count);
        let (mut orb, mut sift) = (Vec::new(), Vec::new());
        for record in bytes[header..].chunks_exact(POSITION + descriptor_len(kind)) {
            let float = |at: usize| f32::from_le_bytes(record[at..at + 4].try_into().expect("4"));
            keypoints.push(Keypoint {
                x: float(0),
                y: float(4),
                angle: 0.0,
                level: 0,
                response: 0.0,
            });
            let descriptor = &record[POSITION..];
            match kind {
                FeatureKind::Orb => {
                    let long = |i: usize| {
                        u64::from_le_bytes(descriptor[8 * i..8 * i + 8].try_into().expect("8"))
                    };
                    orb.push([long(0), long(1), long(2), long(3)]);
                }
                FeatureKind::Sift => sift.push(descriptor.try_into().expect("128 bytes")),
            }
        }
        Ok(Self {
            width,
            height,
            origin,
            keypoints,
            descriptors: match kind {
                FeatureKind::Orb => Descriptors::Orb(orb),
                FeatureKind::Sift => Descriptors::Sift(sift),
            },
        })
    }

    /// The same keypoints in the coordinates of a larger photo this one was cut from at
    /// (`dx`, `dy`), so a located outline is drawn on the photo the client sent. The size
    /// stays the cut's: RANSAC's tolerance scales with the part looked at, and the cut,
    /// at `origin`, is the frame a located outline's framing is judged in.
    pub fn offset(mut self, dx: u32, dy: u32) -> Self {
        for k in &mut self.keypoints {
            k.x += dx as f32;
            k.y += dy as f32;
        }
        self.origin = (self.origin.0 + dx, self.origin.1 + dy);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_keypoints(descriptors: Descriptors) -> LocalFeatures {
        LocalFeatures {
            width: 640,
            height: 480,
            origin: (0, 0),
            keypoints: vec![
                Keypoint {
                    x: 1.5,
                    y: 479.25,
                    angle: 0.0,
                    level: 0,
                    response: 0.0,
                },
                Keypoint {
                    x: 600.0,
                    y: 3.0,
                    angle: 0.0,
                    level: 0,
                    response: 0.0,
                },
            ],
            descriptors,
        }
    }

    #[test]
    fn features_of_both_kinds_survive_the_round_trip_and_bad_bytes_are_refused() {
        let orb = Descriptors::Orb(vec![[1, u64::MAX, 3, 4], [5, 6, 7, 1 << 63]]);
        let sift = Descriptors::Sift(vec![[7; DESCRIPTOR_LEN], std::array::from_fn(|i| i as u8)]);
        for descriptors in [orb, sift] {
            let features = two_keypoints(descriptors);
            let kind = features.descriptors.kind();
            let bytes = features.to_bytes();
            assert_eq!(bytes.len(), encoded_len(kind, 2));
            assert_eq!(stored_kind(&bytes), Some(kind));
            assert_eq!(LocalFeatures::from_bytes(&bytes).unwrap(), features);
            assert!(LocalFeatures::from_bytes(&bytes[..bytes.len() - 1]).is_err());
            // Cut from a larger photo: the cut's position survives too, for 8 bytes more.
            let cut = features.offset(100, 20);
            let bytes = cut.to_bytes();
            assert_eq!(bytes.len(), encoded_len(kind, 2) + 8);
            let back = LocalFeatures::from_bytes(&bytes).unwrap();
            assert_eq!(back, cut);
            assert_eq!((back.origin, back.keypoints[0].x), ((100, 20), 101.5));
            assert!(LocalFeatures::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        }
        assert_eq!(encoded_len(FeatureKind::Sift, 1000), 136_016);
        assert!(LocalFeatures::from_bytes(b"EXL0............").is_err());
        assert!(LocalFeatures::from_bytes(b"EXL2............").is_err());
        assert!(LocalFeatures::from_bytes(b"EXS1").is_err());
        assert!(LocalFeatures::from_bytes(&[]).is_err());
        assert_eq!(stored_kind(b"EXQ1"), None);
        let empty = LocalFeatures::default().to_bytes();
        assert_eq!(
            LocalFeatures::from_bytes(&empty).unwrap().keypoints.len(),
            0
        );
    }
}
