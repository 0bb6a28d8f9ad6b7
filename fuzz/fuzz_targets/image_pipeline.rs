//! Untrusted photo bytes through the steps the service takes: the header check, the decode
//! budget, decoding, a crop and the centre view, the network's input and local features.
#![no_main]

use exemplar_core::CropBox;
use exemplar_embed::image_input::{probe, DecodeBudget};
use exemplar_embed::Geometry;
use exemplar_verify::{extract_rgb, ExtractParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; the checks are the same at any size.
    let budget = DecodeBudget::new(64 << 20);
    let Ok(probed) = probe(data, 4_000_000) else {
        return;
    };
    let Ok(_memory) = budget.reserve(&probed, Some(256)) else {
        return;
    };
    let Ok(rgb) = probed.decode() else {
        return;
    };
    let (w, h) = rgb.dimensions();
    let whole = CropBox {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    let centre = exemplar_embed::views::centre_box(w, h, 2.0 / 3.0);
    for part in [whole, centre] {
        for geometry in [
            Geometry::CenterCrop { crop: 64 },
            Geometry::Full { long_side: 64 },
        ] {
            let input = geometry.prepare_part(&rgb, part);
            assert_eq!(input.chw.len(), 3 * input.height * input.width);
        }
        let view = image::imageops::crop_imm(&rgb, part.x, part.y, part.width, part.height);
        let params = ExtractParams {
            max_side: 256,
            query_max_side: 256,
            ..ExtractParams::default()
        };
        let features = extract_rgb(&*view, &params);
        assert_eq!(features.keypoints.len(), features.descriptors.len());
    }
});
