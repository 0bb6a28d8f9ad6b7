//! The `exemplar` binary as a user runs it: real weights, real photos, JSON last lines.

use crate::common::{another_shot, photo};
use exemplar_embed::fetch::{SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
use image::{imageops, DynamicImage, RgbImage};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn exemplar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running exemplar")
}

fn last_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}

fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    DynamicImage::ImageRgb8(img.clone()).save(path).unwrap();
}

#[test]
fn classify_prints_top5_and_a_json_summary() {
    let json = last_json(&exemplar(&["classify", "--samples"]));
    let top1 = |i: usize| json["images"][i]["top5"][0]["index"].as_u64().unwrap();
    assert!([281, 282, 285].contains(&top1(0)), "chelsea: {json}");
    assert!([967, 968, 504].contains(&top1(1)), "coffee: {json}");
    assert_eq!(json["images"][0]["top5"].as_array().unwrap().len(), 5);
    assert!(json["model"]
        .as_str()
        .unwrap()
        .starts_with("efficientnet-lite0@579344248a93/"));
}

#[test]
fn classify_rejects_a_non_image_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "shopping list").unwrap();
    let out = exemplar(&["classify", text.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.jpg") && stderr.contains("unsupported image"),
        "{stderr}"
    );
}

/// A Holidays-style set: two groups (the cat, the coffee), a query and another shot each.
fn two_groups() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (cat, coffee) = (photo(&SKIMAGE_CHELSEA), photo(&SKIMAGE_COFFEE));
    save(&cat, &dir.path().join("img/1.png"));
    save(&another_shot(&cat), &dir.path().join("img/2.jpg"));
    save(&coffee, &dir.path().join("img/3.png"));
    save(&another_shot(&coffee), &dir.path().join("img/4.jpg"));
    std::fs::write(
        dir.path().join("groundtruth.tsv"),
        "path\tgroup\tis_query\nimg/1.png\tcat\t1\nimg/2.jpg\tcat\t0\nimg/3.png\tcoffee\t1\nimg/4.jpg\tcoffee\t0\n",
    )
    .unwrap();
    dir
}

#[test]
fn eval_map_protocol_finds_other_shots_of_the_same_object() {
    let dir = two_groups();
    let json = last_json(&exemplar(&[
        "eval",
        dir.path().to_str().unwrap(),
        "--projection",
        "raw,random,catalogue",
    ]));
    assert_eq!(json["protocol"], "map");
    assert_eq!(json["images"], 4);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results[0]["map"], 1.0, "{json}");
    assert_eq!(results[0]["dim"], 1280);
    assert_eq!(results[1]["dim"], 256);
    assert_eq!(results[1]["map"], 1.0, "{json}");
    // Four images cannot fit a 256-d PCA: reported, not a crash.
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("need at least 257"),
        "{json}"
    );
}

#[test]
fn eval_linear_probe_classifies_each_group_query_and_times_adding_a_class() {
    let dir = two_groups();
    let json = last_json(&exemplar(&[
        "eval",
        dir.path().to_str().unwrap(),
        "--method",
        "linear-probe",
    ]));
    assert_eq!(
        (json["classes"].as_u64(), json["queries"].as_u64()),
        (Some(2), Some(2)),
        "{json}"
    );
    assert_eq!(json["accuracy"]["linear_probe"], 1.0, "{json}");
    assert_eq!(json["accuracy"]["retrieval_raw"], 1.0, "{json}");
    assert!(
        json["add_one_class_ms"]["linear_probe_retrain"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        json["add_one_class_ms"]["retrieval_index_one"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn train_learns_a_head_from_a_folder_and_refuses_too_few_photos() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("head.safetensors");
    for seed in 0..257u64 {
        save(
            &crate::common::cover(seed),
            &dir.path().join(format!("img/{seed}.png")),
        );
    }
    let json = last_json(&exemplar(&[
        "train",
        dir.path().join("img").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--train-views",
        "1",
        "--train-epochs",
        "2",
    ]));
    assert_eq!(json["images"], 257, "{json}");
    assert!(
        json["projection"]
            .as_str()
            .unwrap()
            .starts_with("learned-n257x1-"),
        "{json}"
    );
    let head = exemplar_core::Projection::load(&out).unwrap();
    assert_eq!((head.input_dim(), head.output_dim()), (1280, 256));
    assert_eq!(head.version(), json["projection"]);

    let few = tempfile::tempdir().unwrap();
    for seed in 0..5u64 {
        save(
            &crate::common::cover(seed),
            &few.path().join(format!("{seed}.png")),
        );
    }
    let failed = exemplar(&[
        "train",
        few.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--train-views",
        "1",
    ]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("at least 257 photos"), "{stderr}");
}

#[test]
fn eval_query_reference_protocol_with_unknown_queries_and_distractors() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, coffee) = (photo(&SKIMAGE_CHELSEA), photo(&SKIMAGE_COFFEE));
    save(&cat, &dir.path().join("refs/cat.png"));
    save(&coffee, &dir.path().join("refs/coffee.png"));
    save(&another_shot(&cat), &dir.path().join("phone/a.jpg"));
    save(&another_shot(&coffee), &dir.path().join("phone/b.jpg"));
    let gradient = RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 128]));
    save(&gradient, &dir.path().join("phone/c.jpg"));
    save(
        &imageops::rotate90(&gradient),
        &dir.path().join("more/sub/d.png"),
    );
    std::fs::write(
        dir.path().join("groundtruth.tsv"),
        "query\treference\tcamera\nphone/a.jpg\trefs/cat.png\tx\nphone/b.jpg\trefs/coffee.png\tx\nphone/c.jpg\t\tx\n",
    )
    .unwrap();
    let distractors = dir.path().join("more");
    let json = last_json(&exemplar(&[
        "eval",
        dir.path().to_str().unwrap(),
        "--projection",
        "raw",
        "--distractors",
        distractors.to_str().unwrap(),
        "--per-query",
    ]));
    let r = &json["results"][0];
    assert_eq!(r["catalogue"], 3, "2 references + 1 distractor: {json}");
    assert_eq!(r["queries"], 2);
    assert_eq!(r["top1"], 1.0, "{json}");
    assert_eq!(r["by_attribute"]["x"]["top1"], 1.0);
    assert_eq!(r["expected_unknown"][0]["query"], "phone/c.jpg");
    assert_eq!(r["outcomes"].as_array().unwrap().len(), 3);
    // Two stages: the other shots are verified geometrically, the gradient is not, and
    // with its reference left out each shot comes out `unknown`.
    assert!(
        r["outcomes"][0]["verified"].as_u64().unwrap() >= 20,
        "{json}"
    );
    assert_eq!(r["first_stage"]["recall"]["1"], 1.0);
    assert_eq!(r["unknown"]["known_answered_unknown"], 0, "{json}");
    assert_eq!(r["unknown"]["unknown_answered_unknown"], 1, "{json}");
    assert_eq!(r["unknown"]["open_set_unknown_rate"], 1.0, "{json}");

    let global = last_json(&exemplar(&[
        "eval",
        dir.path().to_str().unwrap(),
        "--projection",
        "raw",
        "--global-only",
    ]));
    assert_eq!(global["stages"], "global");
    assert!(global["results"][0].get("unknown").is_none(), "{global}");

    // Calibration: a rule per (inliers, coverage, framing); an impossible one rejects
    // everything.
    let calibration = last_json(&exemplar(&[
        "calibrate",
        dir.path().to_str().unwrap(),
        "--projection",
        "raw",
        "--inliers",
        "20,100000",
        "--coverage",
        "0,0.99",
        "--framing",
        "0.5:0.99",
    ]));
    let rules = calibration["results"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "{calibration}");
    let (lenient, strict) = (&rules[0], &rules[3]);
    assert_eq!(
        (
            lenient["min_inliers"].as_u64(),
            lenient["min_coverage"].as_f64()
        ),
        (Some(20), Some(0.0))
    );
    assert!((lenient["min_in_frame"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    assert!((lenient["min_in_frame_off_centre"].as_f64().unwrap() - 0.99).abs() < 1e-6);
    assert_eq!(lenient["top1"], 1.0, "{calibration}");
    assert_eq!(lenient["false_reject_rate"], 0.0);
    assert_eq!(lenient["false_accept_rate"], 0.0, "{calibration}");
    // 2 open-set searches + the query without a reference.
    assert_eq!(lenient["should_be_unknown"], 3.0);
    assert_eq!(strict["false_reject_rate"], 1.0, "{calibration}");
    assert_eq!(strict["top1"], 0.0);
    assert_eq!(strict["false_accept_rate"], 0.0);
}

#[test]
fn bench_reports_throughput_as_json() {
    let json = last_json(&exemplar(&[
        "--model",
        "resnet18",
        "bench",
        "--random-weights",
        "--batch",
        "2",
        "--seconds",
        "0.2",
    ]));
    assert!(json["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(json["batch"], 2);
    assert_eq!(json["input"], serde_json::json!([3, 224, 224]));
    assert!(json["model"]
        .as_str()
        .unwrap()
        .starts_with("resnet18@random/"));
}

#[test]
fn bench_serves_passes_on_request_for_interleaving_scripts() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let spawn = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args(["--model", "resnet18", "bench", "--random-weights"])
            .args(["--passes-from-stdin"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        (child, stdin, lines)
    };

    let (child, mut stdin, mut lines) = spawn();
    // Each request gets its passes' count and mean time, before the next one is read:
    // one pass for an empty line, back to back for a number of seconds.
    let mut ask = |request: &str| {
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let answer = lines.next().unwrap().unwrap();
        let (count, mean) = answer.split_once(' ').expect("count and mean");
        (
            count.parse::<usize>().unwrap(),
            mean.parse::<f64>().unwrap(),
        )
    };
    let single = ask("");
    let timed = ask("0.3");
    assert_eq!(single.0, 1);
    assert!(single.1 > 0.0 && single.1 < 60.0, "{single:?}");
    // Passes until 0.3 s have gone (their own times sum to a hair less: the loop's
    // bookkeeping between them): several, or a single one that took it all.
    let count = timed.0 as f64;
    assert!(count * timed.1 >= 0.29, "{timed:?}");
    assert!(timed.0 >= 2 || timed.1 >= 0.29, "{timed:?}");
    drop(stdin); // the end of input ends the run with the summary of every pass
    let summary: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(summary["passes"], 1 + timed.0);
    let want = (1.0 + count) / (single.1 + count * timed.1);
    let got = summary["images_per_second"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    assert!(child.wait_with_output().unwrap().status.success());

    let (child, mut stdin, mut lines) = spawn();
    writeln!(stdin, "soon").unwrap();
    stdin.flush().unwrap();
    assert!(
        lines.next().is_none(),
        "no answer to a request that is not a number"
    );
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a request is a number of seconds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hub_weights_come_from_the_hugging_face_cache_when_offline() {
    use exemplar_embed::{models::SyntheticWeights, Architecture};
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--timm--resnet18.tv_in1k");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    let weights = SyntheticWeights::new(3, false);
    Architecture::ResNet(18).build(&weights).unwrap();
    candle_core::safetensors::save(
        &weights.tensors().into_iter().collect(),
        repo.join("snapshots/abc123/model.safetensors"),
    )
    .unwrap();

    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args(["--model", model, "fetch-weights"])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ok = run("resnet18");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("resnet18@"));
    let missing = run("resnet50");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("timm/resnet50.tv_in1k") && stderr.contains("offline"),
        "{stderr}"
    );
}

fn json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}

#[test]
fn import_is_resumable_reports_failures_and_feeds_search_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("refs");
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let cat = photo(&SKIMAGE_CHELSEA);
    // A sub-folder is one class of many photos; a file at the top is a class of its own.
    save(&cat, &refs.join("cat/chelsea.png"));
    save(
        &imageops::flip_horizontal(&cat),
        &refs.join("cat/chelsea-flipped.png"),
    );
    save(&photo(&SKIMAGE_COFFEE), &refs.join("coffee.png"));
    std::fs::write(refs.join("broken.jpg"), b"not a jpeg at all").unwrap();
    std::fs::write(refs.join("notes.txt"), b"not an image, ignored").unwrap();

    let first = exemplar(&["import", refs.to_str().unwrap(), "--data-dir", data_arg]);
    assert!(!first.status.success(), "a failed image fails the run");
    let summary = json_line(&first);
    assert_eq!(summary["added"], 3, "{summary}");
    assert_eq!(summary["classes_created"], 2, "{summary}");
    let failed = summary["failed"].as_object().unwrap();
    assert_eq!(failed.len(), 1, "{summary}");
    let (path, reason) = failed.iter().next().unwrap();
    assert!(path.ends_with("broken.jpg"), "{path}");
    assert!(reason.as_str().unwrap().contains("image"), "{reason}");

    // Rerun after fixing the bad file: only the new work is done.
    std::fs::remove_file(refs.join("broken.jpg")).unwrap();
    save(
        &imageops::rotate180(&cat),
        &refs.join("cat/chelsea-upside-down.png"),
    );
    let second = last_json(&exemplar(&[
        "import",
        refs.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]));
    assert_eq!(second["already_imported"], 3, "{second}");
    assert_eq!(second["added"], 1, "{second}");
    assert_eq!(second["classes_created"], 0, "{second}");

    // A manifest adds a class with metadata; paths are relative to the CSV.
    std::fs::write(
        tmp.path().join("more.csv"),
        "label,image,artist\ncoffee cup,refs/coffee.png,Barista\n",
    )
    .unwrap();
    let manifest = tmp.path().join("more.csv");
    let third = last_json(&exemplar(&[
        "import",
        "--manifest",
        manifest.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]));
    assert_eq!(third["classes_created"], 1, "{third}");

    let query = tmp.path().join("query.png");
    save(&another_shot(&cat), &query);
    let found = last_json(&exemplar(&[
        "search",
        query.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]));
    let result = &found["searches"][0]["result"];
    assert_eq!(result["classes"][0]["label"], "cat", "{result}");
    assert_eq!(result["verdict"]["status"], "match", "{result}");

    let coffee = tmp.path().join("coffee-query.png");
    save(&another_shot(&photo(&SKIMAGE_COFFEE)), &coffee);
    let filtered = last_json(&exemplar(&[
        "search",
        coffee.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--filter",
        "artist=Barista",
    ]));
    let classes = filtered["searches"][0]["result"]["classes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(classes.len(), 1, "{classes:?}");
    assert_eq!(classes[0]["label"], "coffee cup");

    let listed = last_json(&exemplar(&["classes", "--data-dir", data_arg]));
    assert_eq!(listed["classes"], 3, "{listed}");
    assert_eq!(listed["exemplars"], 5, "{listed}");
    // Classes are imported concurrently: ids follow completion, not folder order.
    let mut labels: Vec<&str> = listed["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["cat", "coffee", "coffee cup"]);
}

#[test]
fn a_catalogue_with_orb_features_is_verified_again_once_imported_with_sift() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("refs");
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let cat = photo(&SKIMAGE_CHELSEA);
    save(&cat, &refs.join("cat.png"));
    save(&photo(&SKIMAGE_COFFEE), &refs.join("coffee.png"));
    let query = tmp.path().join("query.png");
    save(&another_shot(&cat), &query);
    let import = |kind: &str| {
        let refs = refs.to_str().unwrap();
        let args = [
            "import",
            refs,
            "--data-dir",
            data_arg,
            "--local-features",
            kind,
        ];
        last_json(&exemplar(&args))
    };
    let search = || {
        let out = exemplar(&["search", query.to_str().unwrap(), "--data-dir", data_arg]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (
            last_json(&out)["searches"][0]["result"]["verdict"].clone(),
            stderr,
        )
    };

    // A catalogue made before SIFT (ORB features): a SIFT search cannot verify it, says
    // why, and names nothing rather than guessing.
    assert_eq!(import("orb")["added"], 2);
    let (verdict, stderr) = search();
    assert_eq!(verdict["status"], "unknown", "{verdict}");
    assert!(
        stderr.contains("local features of another kind"),
        "{stderr}"
    );
    // Importing the same photos again replaces their local features.
    let again = import("sift");
    assert_eq!(again["already_imported"], 0, "{again}");
    let (verdict, stderr) = search();
    assert_eq!(verdict["status"], "match", "{verdict}");
    assert_eq!(verdict["label"], "cat", "{verdict}");
    assert!(!stderr.contains("another kind"), "{stderr}");
    assert_eq!(import("sift")["already_imported"], 2);
}

#[test]
fn read_commands_on_a_missing_catalogue_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = exemplar(&["classes", "--data-dir", tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no catalogue in"), "{stderr}");
}

#[test]
fn a_large_import_refits_the_projection_and_the_catalogue_still_finds_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("refs");
    let data = tmp.path().join("data");
    let cat = photo(&SKIMAGE_CHELSEA);
    let (w, h) = cat.dimensions();
    // 260 different small views of one photo: enough to fit a 256-d PCA on.
    let mut views = Vec::new();
    for i in 0..260u32 {
        let size = 96 + (i % 5) * 24;
        let (x, y) = ((i * 37) % (w - size), (i * 53) % (h - size));
        let view = imageops::crop_imm(&cat, x, y, size, size).to_image();
        save(&view, &refs.join(format!("view{i:03}.png")));
        views.push(view);
    }
    let data_arg = data.to_str().unwrap();
    let imported = last_json(&exemplar(&[
        "import",
        refs.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--refit-min-exemplars",
        "257",
    ]));
    assert_eq!(imported["added"], 260, "{imported}");
    assert_eq!(imported["refitted"], true, "{imported}");
    // The dump and the database agree on the new space: searches after a restart find
    // each view itself.
    for i in [0usize, 77, 259] {
        let found = last_json(&exemplar(&[
            "search",
            refs.join(format!("view{i:03}.png")).to_str().unwrap(),
            "--data-dir",
            data_arg,
            "-k",
            "1",
        ]));
        let best = &found["searches"][0]["result"]["neighbours"][0];
        assert_eq!(best["label"], format!("view{i:03}"), "{found}");
        assert!(best["score"].as_f64().unwrap() > 0.99, "{found}");
    }
}
