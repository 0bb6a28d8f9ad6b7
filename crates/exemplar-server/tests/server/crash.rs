//! kill -9 at arbitrary moments of concurrent writes, several rounds on one data dir:
//! every write the server acknowledged is there after each restart, with its kept photo,
//! and found again by that photo; no photo is left that no exemplar refers to. (`scripts/crash-loop.py` runs the long form against a release build.)

use crate::harness::{Part, Server};
use image::{DynamicImage, ImageFormat, RgbImage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A photo of its own for each number: blocks of colour from a small generator.
fn distinct_photo(n: u64) -> Vec<u8> {
    let mut state = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    let blocks: Vec<[u8; 3]> = (0..64).map(|_| [next(), next(), next()]).collect();
    let img = RgbImage::from_fn(160, 160, |x, y| {
        image::Rgb(blocks[((y / 20) * 8 + x / 20) as usize])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn acknowledged_writes_survive_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    // (label, photo number, class id) of every acknowledged class.
    let acknowledged: Arc<Mutex<Vec<(String, u64, i64)>>> = Arc::default();
    let mut photo_number = 0u64;
    for round in 0..4u64 {
        let server = Arc::new(Server::start(dir.path(), &[]));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let (server, stop, acknowledged) =
                    (server.clone(), stop.clone(), acknowledged.clone());
                let first = photo_number + writer * 1000;
                std::thread::spawn(move || {
                    let mut n = first;
                    while !stop.load(Ordering::Relaxed) {
                        let label = format!("round {round} writer {writer} #{n}");
                        let parts = [
                            Part::Text("label", label.clone()),
                            Part::File("image", format!("{n}.png"), distinct_photo(n)),
                        ];
                        // Once the server is killed, requests fail: those were never acknowledged.
                        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            server.multipart("/classes", &parts, &[])
                        }));
                        if let Ok((201, created)) = sent {
                            let id = created["id"].as_i64().unwrap();
                            acknowledged.lock().unwrap().push((label, n, id));
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        // A different moment in each round: in the middle of some write.
        std::thread::sleep(Duration::from_millis(700 + 450 * round));
        let pid = server.child.id();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        drop(server);
        photo_number += 10_000;
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 4,
        "the writers got writes acknowledged: {}",
        acknowledged.len()
    );
    let server = Server::start(dir.path(), &[]);
    for (label, n, id) in &acknowledged {
        let (status, class) = server.request("GET", &format!("/classes/{id}"), &[], b"");
        assert_eq!(status, 200, "class {id} ({label}) was lost: {class}");
        assert_eq!(class["label"], label.as_str());
        let exemplar = class["exemplars"][0]["id"].as_i64().unwrap();
        let (status, _, kept) =
            server.exchange_bytes("GET", &format!("/exemplars/{exemplar}/photo"), &[], b"");
        assert_eq!(status, 200, "{label}'s photo");
        assert_eq!(kept, distinct_photo(*n), "{label}'s photo");
        let (status, answer) = server.multipart(
            "/search",
            &[Part::File("image", "q.png".into(), distinct_photo(*n))],
            &[],
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["neighbours"][0]["class_id"].as_i64(),
            Some(*id),
            "{label} is found by its own photo: {answer}"
        );
    }
    // Photos of writes cut short were collected on start: one photo and one thumbnail per
    // exemplar, nothing else.
    let (_, classes) = server.request("GET", "/classes?limit=500", &[], b"");
    let exemplars: i64 = classes["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["exemplar_count"].as_i64().unwrap())
        .sum();
    let files: usize = std::fs::read_dir(dir.path().join("photos"))
        .unwrap()
        .flatten()
        .filter(|f| f.path().is_dir())
        .map(|f| std::fs::read_dir(f.path()).unwrap().count())
        .sum();
    assert_eq!(
        files as i64,
        2 * exemplars,
        "photo files of {exemplars} exemplars"
    );
    server.stop();
}
