//! Learning a head through the real binary: refused with a reason when it cannot run,
//! trained on the kept photos, switched to at once while searches go on (each answered
//! whole by one version or the other), and served again after a restart.

use crate::common::{cover, png};
use crate::harness::{add_class, Part, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Exemplars a 256-d PCA (the head's start) needs at least.
const EXEMPLARS: usize = 257;
const PER_CLASS: usize = 16;

fn post_train(server: &Server, body: Value) -> (u16, Value) {
    server.request(
        "POST",
        "/admin/train",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn projection(server: &Server) -> String {
    let (status, ready) = server.request("GET", "/readyz", &[], b"");
    assert_eq!(status, 200);
    ready["projection"].as_str().unwrap().to_string()
}

fn search_label(server: &Server, image: &[u8]) -> (u16, Option<String>) {
    let (status, answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), image.to_vec())],
        &[],
    );
    let label = (answer["verdict"]["status"] == "match")
        .then(|| answer["verdict"]["label"].as_str().map(str::to_string))
        .flatten();
    (status, label)
}

#[test]
fn a_learned_head_is_trained_switched_to_under_searches_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // Refusals name their reason and start nothing.
    let photos: Vec<Vec<u8>> = (0..EXEMPLARS as u64).map(|s| png(&cover(s))).collect();
    add_class(&server, "first", &photos[..PER_CLASS]);
    let (status, refused) = post_train(&server, json!({}));
    assert_eq!(
        (status, refused["kind"].as_str()),
        (409, Some("too_few_exemplars")),
        "{refused}"
    );
    for (body, kind) in [
        (json!({"views": 0}), "bad_setting"),
        (json!({"epochs": 5000}), "bad_setting"),
        (json!({"install": "sometimes"}), "bad_json"),
        (json!({"bogus": 1}), "bad_json"),
    ] {
        let (status, refused) = post_train(&server, body.clone());
        assert_eq!(
            (status, refused["kind"].as_str()),
            (400, Some(kind)),
            "{body}: {refused}"
        );
    }
    let (_, idle) = server.request("GET", "/admin/train", &[], b"");
    assert_eq!(idle["state"], "idle", "{idle}");
    let (status, refused) = server.request("DELETE", "/admin/train", &[], b"");
    assert_eq!(
        (status, refused["kind"].as_str()),
        (409, Some("not_running")),
        "{refused}"
    );

    for (c, chunk) in photos[PER_CLASS..].chunks(PER_CLASS).enumerate() {
        add_class(&server, &format!("class-{c}"), chunk);
    }
    let before = projection(&server);

    // Searches run through training and the switch; each must find its class.
    let stop = AtomicBool::new(false);
    let searched = AtomicUsize::new(0);
    /// Ends the searches however the scope is left (a failed assertion included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let outcome = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let (status, label) = search_label(&server, &photos[3]);
                assert_eq!((status, label.as_deref()), (200, Some("first")));
                searched.fetch_add(1, Ordering::SeqCst);
            }
        });
        let (status, started) = post_train(
            &server,
            json!({"views": 2, "epochs": 3, "seed": 7, "install": "always"}),
        );
        assert_eq!(status, 202, "{started}");
        assert_eq!(started["exemplars"], EXEMPLARS, "{started}");
        let (again, _) = post_train(&server, json!({}));
        let deadline = Instant::now() + Duration::from_secs(600);
        let outcome = loop {
            let (status, progress) = server.request("GET", "/admin/train", &[], b"");
            assert_eq!(status, 200);
            if matches!(
                progress["state"].as_str(),
                Some("switched" | "kept" | "failed")
            ) {
                break (again, progress);
            }
            assert!(
                Instant::now() < deadline,
                "training did not end: {progress}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        outcome
    });
    let (again, done) = outcome;
    assert!(
        again == 409 || done["state"] != "embedding",
        "a second run started beside the first"
    );
    assert_eq!(done["state"], "switched", "{done}");
    assert_eq!(done["views_done"], EXEMPLARS * 2, "{done}");
    assert!(done["base_recall"]["at_1"].is_number(), "{done}");
    let learned = done["projection"].as_str().unwrap().to_string();
    assert!(learned.starts_with("learned-"), "{learned}");
    assert_ne!(learned, before);
    assert_eq!(projection(&server), learned);
    assert!(searched.load(Ordering::SeqCst) > 0);
    for (i, class) in [(0, "first"), (40, "class-1"), (256, "class-15")] {
        assert_eq!(
            search_label(&server, &photos[i]),
            (200, Some(class.to_string()))
        );
    }

    server.stop();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        projection(&server),
        learned,
        "a restart serves the learned head"
    );
    assert_eq!(
        search_label(&server, &photos[100]),
        (200, Some("class-5".to_string()))
    );

    // A cancelled run stops and leaves the head in use as it was.
    let (status, started) = post_train(&server, json!({"views": 16, "install": "always"}));
    assert_eq!(status, 202, "{started}");
    let (status, cancelling) = server.request("DELETE", "/admin/train", &[], b"");
    assert_eq!(status, 200, "{cancelling}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, progress) = server.request("GET", "/admin/train", &[], b"");
        match progress["state"].as_str() {
            Some("cancelled") => {
                assert!(
                    progress["views_done"].as_u64() < progress["views_total"].as_u64(),
                    "{progress}"
                );
                break;
            }
            Some("embedding" | "training") => {}
            other => panic!("a cancelled run ended {other:?}: {progress}"),
        }
        assert!(
            Instant::now() < deadline,
            "the run did not stop: {progress}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(projection(&server), learned);

    // The CLI drives the same routes: a run followed to its end, then its status.
    let url = format!("http://{}", server.addr);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args(["train", "--server", &url])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap();
        (out.status.success(), last)
    };
    let (ok, done) = cli(&[
        "--train-views",
        "1",
        "--train-epochs",
        "1",
        "--install",
        "never",
    ]);
    assert!(ok, "{done}");
    assert_eq!(
        (done["state"].as_str(), done["views_done"].as_u64()),
        (Some("kept"), Some(EXEMPLARS as u64)),
        "{done}"
    );
    let (ok, status) = cli(&["--status"]);
    assert!(ok && status["state"] == "kept", "{status}");
    assert_eq!(
        projection(&server),
        learned,
        "`install: never` switches nothing"
    );
}
