//! Stored local features read back from the database: any bytes give features or an
//! error, and what decodes encodes to bytes that decode to the same features.
#![no_main]

use exemplar_verify::LocalFeatures;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(features) = LocalFeatures::from_bytes(data) {
        let again =
            LocalFeatures::from_bytes(&features.to_bytes()).expect("re-encoded features decode");
        assert_eq!(again.keypoints.len(), features.keypoints.len());
    }
});
