//! Re-indexing through the real binary: a new model (ResNet-18, generated weights) and
//! another kind of local features, built from the kept photos while searches go on,
//! switched to at once, kept across a restart; refused, with the reason, when photos
//! are missing.

use crate::common::{another_shot, photo, png};
use crate::harness::{add_class, Part, Server};
use exemplar_embed::fetch::{SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn search(server: &Server, image: &[u8]) -> (u16, Value) {
    server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), image.to_vec())],
        &[],
    )
}

fn matched_label(answer: &Value) -> Option<&str> {
    (answer["verdict"]["status"] == "match")
        .then(|| answer["verdict"]["label"].as_str())
        .flatten()
}

/// Starts a re-index and waits for its outcome.
fn reindex(server: &Server, change: Value) -> Value {
    let (status, started) = server.request(
        "POST",
        "/admin/reindex",
        &[("Content-Type", "application/json")],
        change.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{started}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, progress) = server.request("GET", "/admin/reindex", &[], b"");
        assert_eq!(status, 200, "{progress}");
        if matches!(
            progress["state"].as_str(),
            Some("switched" | "failed" | "cancelled")
        ) {
            return progress;
        }
        assert!(Instant::now() < deadline, "no switch: {progress}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ResNet-18 weights as a user's file would hold them (generated: no hub here).
fn resnet18_weights(dir: &Path) -> String {
    use exemplar_embed::{models::SyntheticWeights, Architecture};
    let weights = SyntheticWeights::new(5, false);
    Architecture::ResNet(18).build(&weights).unwrap();
    let path = dir.join("resnet18.safetensors");
    candle_core::safetensors::save(&weights.tensors().into_iter().collect(), &path).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_reindex_switches_model_and_local_features_while_searches_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let weights = resnet18_weights(tmp.path());
    let cat = photo(&SKIMAGE_CHELSEA);
    let coffee = photo(&SKIMAGE_COFFEE);
    let query = png(&another_shot(&cat));
    let server = Server::start(&data, &[]);
    add_class(&server, "Chelsea", &[png(&cat)]);
    add_class(&server, "Coffee", &[png(&coffee)]);
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    let lite0 = ready["model"].as_str().unwrap().to_string();
    assert!(lite0.starts_with("efficientnet-lite0"), "{ready}");

    // Searches run all along: every one answers, and finds the cat, whichever version
    // serves it.
    let searching = AtomicBool::new(true);
    let (answers, progress, added) = std::thread::scope(|scope| {
        let searcher = scope.spawn(|| {
            let mut answers = Vec::new();
            while searching.load(Ordering::SeqCst) {
                answers.push(search(&server, &query));
            }
            answers
        });
        let (status, started) = server.request(
            "POST",
            "/admin/reindex",
            &[("Content-Type", "application/json")],
            json!({"model": "resnet18", "weights": weights})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(status, 202, "{started}");
        assert_eq!(started["spec"]["model"], "resnet18", "{started}");
        assert_eq!(started["total"], 2, "{started}");
        // A write while the new version is built reaches it too.
        let added = add_class(&server, "Coffee, again", &[png(&another_shot(&coffee))]);
        let progress = loop {
            let (_, progress) = server.request("GET", "/admin/reindex", &[], b"");
            if progress["state"] != "building" && progress["state"] != "switching" {
                break progress;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // A few searches after the switch too.
        std::thread::sleep(Duration::from_millis(500));
        searching.store(false, Ordering::SeqCst);
        (searcher.join().unwrap(), progress, added)
    });
    assert_eq!(progress["state"], "switched", "{progress}");
    assert!(progress["done"].as_u64() >= Some(2), "{progress}");
    assert!(!answers.is_empty());
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(matched_label(answer), Some("Chelsea"), "{answer}");
    }
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    assert!(
        ready["model"].as_str().unwrap().starts_with("resnet18"),
        "{ready}"
    );
    assert_eq!(ready["indexed"], 3, "{ready}");
    let (_, metrics) = server.raw("GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("exemplar_reindex_building 0")
            && metrics.contains("exemplar_reindex_done 3"),
        "{metrics}"
    );
    let (_, class) = server.request("GET", &format!("/classes/{}", added["id"]), &[], b"");
    assert!(
        class["exemplars"][0]["model"]
            .as_str()
            .unwrap()
            .starts_with("resnet18"),
        "{class}"
    );
    let (_, answer) = search(&server, &png(&another_shot(&coffee)));
    assert!(
        matched_label(&answer).is_some_and(|l| l.starts_with("Coffee")),
        "{answer}"
    );

    // The catalogue keeps its model across a restart (no flags needed)...
    server.stop();
    let server = Server::start(&data, &[]);
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    assert!(
        ready["model"].as_str().unwrap().starts_with("resnet18"),
        "{ready}"
    );
    let (_, answer) = search(&server, &query);
    assert_eq!(matched_label(&answer), Some("Chelsea"), "{answer}");

    // ...and goes back to Lite0, with ORB features this time.
    let progress = reindex(
        &server,
        json!({"model": "efficientnet-lite0", "local_features": "orb"}),
    );
    assert_eq!(progress["state"], "switched", "{progress}");
    assert_eq!(progress["spec"]["local_features"], "orb", "{progress}");
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    assert_eq!(ready["model"], lite0.as_str(), "{ready}");
    let (_, answer) = search(&server, &query);
    assert_eq!(matched_label(&answer), Some("Chelsea"), "{answer}");
}

#[test]
fn a_reindex_names_what_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cat = png(&photo(&SKIMAGE_CHELSEA));
    let server = Server::start(&data, &["--keep-photos", "false"]);
    let class = add_class(&server, "Chelsea", &[cat]);
    let id = class["exemplars"][0]["id"].as_i64().unwrap();
    let post = |server: &Server, body: &str| {
        server.request(
            "POST",
            "/admin/reindex",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let (status, error) = post(&server, "{}");
    assert_eq!((status, &error["kind"]), (409, &json!("photos_not_kept")));
    server.stop();

    let server = Server::start(&data, &[]);
    let (status, error) = post(&server, r#"{"local_features": "orb"}"#);
    assert_eq!((status, &error["kind"]), (409, &json!("photos_missing")));
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains(&format!("ids {id}")),
        "{error}"
    );
    let (status, error) = post(&server, r#"{"model": "alexnet"}"#);
    assert_eq!(
        (status, &error["kind"]),
        (400, &json!("bad_setting")),
        "{error}"
    );
    let (status, error) = post(&server, r#"{"weights": "/no/such/file.safetensors"}"#);
    assert_eq!(
        (status, &error["kind"]),
        (400, &json!("bad_setting")),
        "{error}"
    );
    let (status, error) = post(&server, r#"{"colour": "blue"}"#);
    assert_eq!(
        (status, &error["kind"]),
        (400, &json!("bad_json")),
        "{error}"
    );
    let (status, _) = server.request("DELETE", "/admin/reindex", &[], b"");
    assert_eq!(status, 409);
    let (_, progress) = server.request("GET", "/admin/reindex", &[], b"");
    assert_eq!(progress["state"], "idle", "{progress}");
}
