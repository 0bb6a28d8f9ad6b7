//! The stored form of a reference's local features: what verification needs (keypoint
//! positions and descriptors, the image size) and nothing else, in a bounded, versioned
//! little-endian layout. 40 bytes per keypoint plus a 16-byte header: at most 40,016
//! bytes per exemplar with the default 1,000 keypoints. Features of a part cut from a
//! larger photo (a search's `crop`) also carry where the part starts: `EXL2`, 8 bytes more.

use crate::{Keypoint, LocalFeatures};

const MAGIC: &[u8; 4] = b"EXL1";
const MAGIC_WITH_ORIGIN: &[u8; 4] = b"EXL2";
const HEADER: usize = 16;
const ORIGIN: usize = 8;
const PER_KEYPOINT: usize = 40;

/// Why stored bytes are not local features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "local features: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// Bytes stored per exemplar for `keypoints` keypoints.
pub fn encoded_len(keypoints: usize) -> usize {
    HEADER + PER_KEYPOINT * keypoints
}

impl LocalFeatures {
    pub fn to_bytes(&self) -> Vec<u8> {
        let cut = self.origin != (0, 0);
        let mut out = Vec::with_capacity(encoded_len(self.keypoints.len()) + ORIGIN);
        out.extend_from_slice(if cut { MAGIC_WITH_ORIGIN } else { MAGIC });
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&(self.keypoints.len() as u32).to_le_bytes());
        if cut {
            out.extend_from_slice(&self.origin.0.to_le_bytes());
            out.extend_from_slice(&self.origin.1.to_le_bytes());
        }
        for (k, d) in self.keypoints.iter().zip(&self.descriptors) {
            out.extend_from_slice(&k.x.to_le_bytes());
            out.extend_from_slice(&k.y.to_le_bytes());
            for word in d {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// The inverse of [`LocalFeatures::to_bytes`]; angle, level and response are not
    /// stored (verification does not use them) and come back as zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let header = match bytes.get(..4) {
            Some(m) if m == MAGIC => HEADER,
            Some(m) if m == MAGIC_WITH_ORIGIN => HEADER + ORIGIN,
            _ => return Err(CodecError("not in the EXL1 or EXL2 format".into())),
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
        let expected = encoded_len(count) + (header - HEADER);
        if bytes.len() != expected {
            return Err(CodecError(format!(
                "{} bytes for {count} keypoints, expected {expected}",
                bytes.len(),
            )));
        }
        let mut keypoints = Vec::with_capacity(count);
        let mut descriptors = Vec::with_capacity(count);
        for record in bytes[header..].chunks_exact(PER_KEYPOINT) {
            let float = |at: usize| f32::from_le_bytes(record[at..at + 4].try_into().expect("4"));
            let long = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8"));
            keypoints.push(Keypoint {
                x: float(0),
                y: float(4),
                angle: 0.0,
                level: 0,
                response: 0.0,
            });
            descriptors.push([long(8), long(16), long(24), long(32)]);
        }
        Ok(Self {
            width,
            height,
            origin,
            keypoints,
            descriptors,
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

    #[test]
    fn features_survive_the_round_trip_and_bad_bytes_are_refused() {
        let features = LocalFeatures {
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
            descriptors: vec![[1, u64::MAX, 3, 4], [5, 6, 7, 1 << 63]],
        };
        let bytes = features.to_bytes();
        assert_eq!(bytes.len(), encoded_len(2));
        assert_eq!(LocalFeatures::from_bytes(&bytes).unwrap(), features);
        assert!(LocalFeatures::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(LocalFeatures::from_bytes(b"EXL0............").is_err());
        assert!(LocalFeatures::from_bytes(&[]).is_err());
        let empty = LocalFeatures::default().to_bytes();
        assert_eq!(
            LocalFeatures::from_bytes(&empty).unwrap().keypoints.len(),
            0
        );
        // Cut from a larger photo: the cut's position survives too, for 8 bytes more.
        let cut = features.offset(100, 20);
        let bytes = cut.to_bytes();
        assert_eq!(bytes.len(), encoded_len(2) + 8);
        let back = LocalFeatures::from_bytes(&bytes).unwrap();
        assert_eq!(back, cut);
        assert_eq!((back.origin, back.keypoints[0].x), ((100, 20), 101.5));
        assert!(LocalFeatures::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(LocalFeatures::from_bytes(b"EXL2............").is_err());
    }
}
