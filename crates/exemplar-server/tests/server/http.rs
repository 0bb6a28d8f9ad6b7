//! The real `exemplar serve` process on port 0 with a temp data dir and the real
//! EfficientNet-Lite0 weights, driven over HTTP.

use crate::common::{another_shot, photo, png};
use crate::harness::{create, Part, Server};
use exemplar_embed::fetch::{SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
use serde_json::Value;
use std::process::Command;

#[test]
fn classes_are_searchable_at_once_filtered_and_deletable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (cat, coffee) = (photo(&SKIMAGE_CHELSEA), photo(&SKIMAGE_COFFEE));
    let (status, chelsea) = create(&server, "Chelsea", r#"{"kind":"cat"}"#, png(&cat));
    assert_eq!(status, 201, "{chelsea}");
    assert_eq!(chelsea["exemplars"].as_array().unwrap().len(), 1);
    let (status, espresso) = create(&server, "Espresso", r#"{"kind":"drink"}"#, png(&coffee));
    assert_eq!(status, 201, "{espresso}");

    let search = |image: Vec<u8>, extra: Vec<Part>| {
        let mut parts = vec![Part::File("image", "q.png".into(), image)];
        parts.extend(extra);
        server.multipart("/search", &parts, &[])
    };
    let (status, answer) = search(png(&another_shot(&cat)), vec![]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["classes"][0]["label"], "Chelsea", "{answer}");
    assert_eq!(answer["neighbours"][0]["class_id"], chelsea["id"]);
    // The same photo again is a near-duplicate: a confident match.
    let (_, same) = search(png(&cat), vec![]);
    assert_eq!(same["verdict"]["status"], "match", "{same}");
    assert_eq!(same["verdict"]["label"], "Chelsea");

    let (_, filtered) = search(
        png(&another_shot(&cat)),
        vec![Part::Text("filter", "kind=drink".into())],
    );
    assert!(
        filtered["classes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["label"] == "Espresso"),
        "{filtered}"
    );

    // A photo of both things side by side: the crop box says which one is asked about.
    let (left, right) = (another_shot(&cat), another_shot(&coffee));
    let mut both = image::RgbImage::new(
        left.width() + right.width(),
        left.height().max(right.height()),
    );
    image::imageops::replace(&mut both, &left, 0, 0);
    image::imageops::replace(&mut both, &right, left.width() as i64, 0);
    for (crop, expected) in [
        (format!("0,0,{},{}", left.width(), left.height()), "Chelsea"),
        (
            format!("{},0,{},{}", left.width(), right.width(), right.height()),
            "Espresso",
        ),
    ] {
        let (status, answer) = search(png(&both), vec![Part::Text("crop", crop.clone())]);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["classes"][0]["label"], expected,
            "crop {crop}: {answer}"
        );
    }

    let (status, list) = server.request("GET", "/classes?limit=1", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(list["classes"].as_array().unwrap().len(), 1);
    let (_, rest) = server.request(
        "GET",
        &format!("/classes?after={}", list["next_after"]),
        &[],
        b"",
    );
    assert_eq!(rest["classes"][0]["label"], "Espresso");
    let (status, one) = server.request("GET", &format!("/classes/{}", chelsea["id"]), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(one["metadata"]["kind"], "cat");

    let patch = |body: &str| {
        server.request(
            "PATCH",
            &format!("/classes/{}", chelsea["id"]),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let (status, renamed) = patch(r#"{"label":"Chelsea the cat","metadata":{"kind":"pet"}}"#);
    assert_eq!(status, 200, "{renamed}");
    let (_, answer) = search(png(&cat), vec![]);
    assert_eq!(
        answer["classes"][0]["label"], "Chelsea the cat",
        "search sees the new label"
    );
    assert_eq!(answer["classes"][0]["metadata"]["kind"], "pet");
    for (body, kind) in [
        (r#"{"label":""}"#, "empty_label"),
        (r#"{"metadata":"x"}"#, "bad_metadata"),
        (r#"{"colour":"red"}"#, "unknown_field"),
        (r#"{}"#, "nothing_to_update"),
        ("not json", "bad_json"),
    ] {
        let (status, err) = patch(body);
        assert_eq!(
            (status, err["kind"].as_str()),
            (400, Some(kind)),
            "{body}: {err}"
        );
    }
    let (status, _) = server.request("PATCH", "/classes/999", &[], br#"{"label":"x"}"#);
    assert_eq!(status, 404);

    let exemplar = chelsea["exemplars"][0]["id"].as_i64().unwrap();
    let (status, _) = server.request("DELETE", &format!("/exemplars/{exemplar}"), &[], b"");
    assert_eq!(status, 204);
    let (_, after) = search(png(&cat), vec![]);
    assert!(
        after["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["exemplar_id"] != exemplar),
        "{after}"
    );
    let (status, gone) = server.request("DELETE", &format!("/exemplars/{exemplar}"), &[], b"");
    assert_eq!((status, gone["kind"].as_str()), (404, Some("not_found")));
    server.stop();
}

#[test]
fn bad_input_gets_a_4xx_with_the_json_error_shape_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body-bytes", "2000000"]);
    let good = png(&photo(&SKIMAGE_COFFEE));
    let cases: Vec<(Vec<Part>, u16, &str)> = vec![
        (
            vec![Part::File("image", "a.png".into(), good.clone())],
            400,
            "missing_label",
        ),
        (
            vec![
                Part::Text("label", " ".into()),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            400,
            "empty_label",
        ),
        (
            vec![
                Part::Text("label", "x".repeat(201)),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            400,
            "label_too_long",
        ),
        (
            vec![
                Part::Text("label", "A".into()),
                Part::Text("metadata", "[1,2]".into()),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            400,
            "bad_metadata",
        ),
        (
            vec![
                Part::Text("label", "A".into()),
                Part::Text("metadata", r#"{"n":1}"#.into()),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            400,
            "bad_metadata",
        ),
        (vec![Part::Text("label", "A".into())], 400, "no_image"),
        (
            vec![
                Part::Text("label", "A".into()),
                Part::File("image", "a.png".into(), good.clone()),
                Part::File("image", "b.jpg".into(), b"not a photo".to_vec()),
            ],
            400,
            "bad_image",
        ),
        (
            vec![
                Part::Text("label", "A".into()),
                Part::File("image", "big.bin".into(), vec![0u8; 2_100_000]),
            ],
            413,
            "body_too_large",
        ),
        (
            vec![Part::Text("colour", "red".into())],
            400,
            "unknown_field",
        ),
    ];
    for (parts, status, kind) in cases {
        let (got, body) = server.multipart("/classes", &parts, &[]);
        assert_eq!((got, body["kind"].as_str()), (status, Some(kind)), "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, body) = server.request(
        "POST",
        "/classes",
        &[("Content-Type", "multipart/form-data; boundary=B")],
        b"garbage",
    );
    assert_eq!(status, 400, "malformed multipart: {body}");
    let (status, body) = server.multipart(
        "/classes/999/exemplars",
        &[Part::File("image", "a.png".into(), good.clone())],
        &[],
    );
    assert_eq!((status, body["kind"].as_str()), (404, Some("not_found")));
    let (status, body) = server.multipart(
        "/search",
        &[
            Part::File("image", "q.png".into(), good.clone()),
            Part::Text("k", "zero".into()),
        ],
        &[],
    );
    assert_eq!((status, body["kind"].as_str()), (400, Some("bad_k")));
    // The coffee photo is 600x400: a box past its right edge, and boxes that are not boxes.
    for crop in ["550,0,51,10", "0,0,0,10", "1,2,3", "a,b,c,d"] {
        let (status, body) = server.multipart(
            "/search",
            &[
                Part::File("image", "q.png".into(), good.clone()),
                Part::Text("crop", crop.into()),
            ],
            &[],
        );
        assert_eq!(
            (status, body["kind"].as_str()),
            (400, Some("bad_crop")),
            "{crop}: {body}"
        );
    }
    let (_, list) = server.request("GET", "/classes", &[], b"");
    assert!(
        list["classes"].as_array().unwrap().is_empty(),
        "nothing half-written: {list}"
    );
    server.stop();
}

#[test]
fn with_an_api_key_writes_need_it_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--api-key", "s3cret"]);
    let image = png(&photo(&SKIMAGE_COFFEE));
    let parts = || {
        vec![
            Part::Text("label", "A".into()),
            Part::File("image", "a.png".into(), image.clone()),
        ]
    };
    let (status, body) = server.multipart("/classes", &parts(), &[]);
    assert_eq!((status, body["kind"].as_str()), (401, Some("unauthorized")));
    let (status, _) = server.multipart("/classes", &parts(), &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    let (status, _) = server.multipart("/classes", &parts(), &[("Authorization", "Bearer s3cret")]);
    assert_eq!(status, 201);
    let (status, _) = server.request("GET", "/classes", &[], b"");
    assert_eq!(status, 200);
    let (status, _) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), image.clone())],
        &[],
    );
    assert_eq!(status, 200);
    server.stop();

    // --protect-reads: everything but the health probes needs the key.
    let server = Server::start(dir.path(), &["--api-key", "s3cret", "--protect-reads"]);
    let bearer = [("Authorization", "Bearer s3cret")];
    let search = [Part::File("image", "q.png".into(), image.clone())];
    assert_eq!(server.multipart("/search", &search, &[]).0, 401);
    assert_eq!(server.multipart("/search", &search, &bearer).0, 200);
    assert_eq!(server.request("GET", "/classes", &[], b"").0, 401);
    assert_eq!(server.request("GET", "/classes", &bearer, b"").0, 200);
    assert_eq!(server.raw("GET", "/metrics", &[], b"").0, 401);
    assert_eq!(server.request("GET", "/readyz", &[], b"").0, 200);
    assert_eq!(server.request("GET", "/healthz", &[], b"").0, 200);
    server.stop();
}

#[test]
fn acknowledged_writes_survive_sigkill_and_deletes_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, coffee) = (photo(&SKIMAGE_CHELSEA), photo(&SKIMAGE_COFFEE));
    let server = Server::start(dir.path(), &[]);
    let (_, chelsea) = create(&server, "Chelsea", "{}", png(&cat));
    let (_, espresso) = create(&server, "Espresso", "{}", png(&coffee));
    server.kill(); // SIGKILL: no dump written

    let server = Server::start(dir.path(), &[]);
    let (_, answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), png(&cat))],
        &[],
    );
    assert_eq!(answer["verdict"]["class_id"], chelsea["id"], "{answer}");
    let (status, _) = server.request("DELETE", &format!("/classes/{}", espresso["id"]), &[], b"");
    assert_eq!(status, 204);
    server.stop(); // graceful: dump written

    let server = Server::start(dir.path(), &[]);
    let (_, answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), png(&coffee))],
        &[],
    );
    assert!(
        answer["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["class_id"] != espresso["id"]),
        "{answer}"
    );
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    assert_eq!(ready["indexed"], 1);
    server.kill();

    // With upkeep every second, a write reaches the index dump without any shutdown.
    let server = Server::start(dir.path(), &["--maintenance-interval-secs", "1"]);
    let (status, again) = create(&server, "Espresso again", "{}", png(&coffee));
    assert_eq!(status, 201);
    let meta_path = dir.path().join("index").join("meta.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let meta: Value = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        // Changes so far: 2 adds, 1 delete, then this add: two live points, at the log's
        // head (4 in SQLite; PostgreSQL's sequences may skip numbers after a crash).
        if meta["points"] == 2 && meta["watermark"].as_u64().is_some_and(|w| w >= 4) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic dump: {meta}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    server.kill();
    let server = Server::start(dir.path(), &[]);
    let (_, answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), png(&coffee))],
        &[],
    );
    assert_eq!(answer["classes"][0]["class_id"], again["id"], "{answer}");
    server.stop();
}

#[test]
fn metrics_openapi_docs_and_one_owner_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cat = png(&photo(&SKIMAGE_CHELSEA));
    assert_eq!(create(&server, "cat", "{}", cat.clone()).0, 201);
    let (status, _) = server.multipart("/search", &[Part::File("image", "q.png".into(), cat)], &[]);
    assert_eq!(status, 200);
    assert_eq!(server.request("GET", "/classes/999", &[], b"").0, 404);

    let (status, metrics) = server.raw("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    for expected in [
        r#"exemplar_http_requests_total{method="POST",route="/search",status="200"} 1"#,
        r#"exemplar_http_requests_total{method="GET",route="/classes/{id}",status="404"} 1"#,
        r#"exemplar_http_request_duration_seconds_bucket{method="POST",route="/classes",status="201",le="+Inf"} 1"#,
        // The exemplar, then the query's two views (whole and centre).
        "exemplar_embedded_images_total 3",
        r#"exemplar_search_stage_seconds_count{stage="verify"} 1"#,
        "exemplar_index_exemplars 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing `{expected}` in:\n{metrics}"
        );
    }

    // One exemplar is far too few to fit a 256-d projection on.
    let (status, body) = server.request("POST", "/admin/refit", &[], b"");
    assert_eq!(
        (status, body["kind"].as_str()),
        (409, Some("too_few_exemplars")),
        "{body}"
    );

    let (status, spec) = server.request("GET", "/openapi.json", &[], b"");
    assert_eq!(status, 200);
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{spec}"
    );
    for path in [
        "/classes",
        "/classes/{id}",
        "/classes/{id}/exemplars",
        "/exemplars/{id}",
        "/search",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} not documented");
    }
    assert!(spec["components"]["schemas"]["SearchResult"].is_object());
    let (status, page) = server.raw("GET", "/docs/", &[], b"");
    assert_eq!(status, 200);
    assert!(page.contains("swagger-ui"), "{page}");

    // A second process on the same data dir would keep its own index: refused.
    let second = Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another exemplar process"),
        "{stderr}"
    );
    server.stop();
}

/// `img` turned by `degrees`, scaled by `scale` and placed at (`tx`, `ty`) on a plain
/// gradient canvas (a print held up in front of a wall); returns the canvas and where
/// the print's corners landed.
fn held_up(
    img: &image::RgbImage,
    canvas: (u32, u32),
    degrees: f64,
    scale: f64,
    (tx, ty): (f64, f64),
) -> (image::RgbImage, [[f64; 2]; 4]) {
    let (c, s) = (degrees.to_radians().cos(), degrees.to_radians().sin());
    let forward = |x: f64, y: f64| [scale * (c * x - s * y) + tx, scale * (s * x + c * y) + ty];
    let (w, h) = (img.width() as f64, img.height() as f64);
    let corners = [
        forward(0.0, 0.0),
        forward(w, 0.0),
        forward(w, h),
        forward(0.0, h),
    ];
    let out = image::RgbImage::from_fn(canvas.0, canvas.1, |u, v| {
        let (dx, dy) = ((u as f64 - tx) / scale, (v as f64 - ty) / scale);
        let (x, y) = (c * dx + s * dy, -s * dx + c * dy);
        if x >= 0.0 && y >= 0.0 && x < w - 1.0 && y < h - 1.0 {
            // Bilinear sampling, as a camera would blur it.
            let (x0, y0) = (x.floor() as u32, y.floor() as u32);
            let (fx, fy) = (x - x0 as f64, y - y0 as f64);
            let p = |i, j| img.get_pixel(x0 + i, y0 + j).0;
            let mix = |k: usize| {
                (p(0, 0)[k] as f64 * (1.0 - fx) * (1.0 - fy)
                    + p(1, 0)[k] as f64 * fx * (1.0 - fy)
                    + p(0, 1)[k] as f64 * (1.0 - fx) * fy
                    + p(1, 1)[k] as f64 * fx * fy) as u8
            };
            image::Rgb([mix(0), mix(1), mix(2)])
        } else {
            let g = (60 + (u + v) / 12).min(255) as u8;
            image::Rgb([g, g, g.saturating_add(20)])
        }
    });
    (out, corners)
}

#[test]
fn a_print_held_up_in_a_photo_is_verified_and_located_and_a_stranger_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cat = photo(&SKIMAGE_CHELSEA);
    let (status, chelsea) = create(&server, "Chelsea", "{}", png(&cat));
    assert_eq!(status, 201, "{chelsea}");

    let (scene, corners) = held_up(&cat, (900, 700), 12.0, 1.3, (220.0, 110.0));
    let (status, answer) = server.multipart(
        "/search",
        &[Part::File("image", "scene.png".into(), png(&scene))],
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    let verdict = &answer["verdict"];
    assert_eq!(verdict["status"], "match", "{answer}");
    assert_eq!(verdict["class_id"], chelsea["id"]);
    let evidence = &verdict["evidence"];
    assert!(evidence["inliers"].as_u64().unwrap() >= 20, "{evidence}");
    // The outline a client would draw lies on the print: each corner within 2 % of the
    // photo's diagonal (23 px).
    let found = evidence["quadrilateral"].as_array().unwrap();
    for (got, want) in found.iter().zip(corners) {
        let (x, y) = (got[0].as_f64().unwrap(), got[1].as_f64().unwrap());
        assert!(
            (x - want[0]).hypot(y - want[1]) < 23.0,
            "corner {got} vs {want:?}: {evidence}"
        );
    }
    assert_eq!(answer["neighbours"][0]["evidence"], *evidence);
    for stage in ["embed_ms", "shortlist_ms", "verify_ms"] {
        assert!(answer["timings"][stage].as_f64().unwrap() > 0.0, "{answer}");
    }

    // With a crop, the outline is still in the coordinates of the photo as sent.
    let crop = "150,50,700,600";
    let (_, cropped) = server.multipart(
        "/search",
        &[
            Part::File("image", "scene.png".into(), png(&scene)),
            Part::Text("crop", crop.into()),
        ],
        &[],
    );
    let first = &cropped["verdict"]["evidence"]["quadrilateral"][0];
    assert!(
        (first[0].as_f64().unwrap() - corners[0][0])
            .hypot(first[1].as_f64().unwrap() - corners[0][1])
            < 23.0,
        "{cropped}"
    );
    // ...and framed within the crop: the print is whole in it, over its centre.
    let framing = &cropped["verdict"]["evidence"];
    assert!(framing["in_frame"].as_f64().unwrap() > 0.99, "{framing}");
    assert_eq!(framing["centred"], true, "{framing}");

    // A crop that shows only the print's right part, as a photo of the cover beside it
    // would: still verified, but not framed as the subject, so `unknown`.
    let (_, edge) = server.multipart(
        "/search",
        &[
            Part::File("image", "scene.png".into(), png(&scene)),
            Part::Text("crop", "480,0,420,700".into()),
        ],
        &[],
    );
    assert_eq!(edge["verdict"]["status"], "unknown", "{edge}");
    // Enough inliers and coverage: the framing alone made it `unknown`.
    let seen = &edge["neighbours"][0]["evidence"];
    assert!(seen["inliers"].as_u64().unwrap() >= 20, "{seen}");
    assert!(seen["coverage"].as_f64().unwrap() >= 0.05, "{seen}");
    assert!(seen["in_frame"].as_f64().unwrap() < 0.99, "{seen}");

    // A real photo of something the catalogue does not hold: an honest `unknown`.
    let (_, stranger) = server.multipart(
        "/search",
        &[Part::File(
            "image",
            "coffee.png".into(),
            png(&photo(&SKIMAGE_COFFEE)),
        )],
        &[],
    );
    assert_eq!(stranger["verdict"]["status"], "unknown", "{stranger}");
    assert_eq!(stranger["neighbours"][0]["class_id"], chelsea["id"]);
}
