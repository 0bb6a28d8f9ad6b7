//! Two `exemplar serve` processes on one PostgreSQL catalogue (a throwaway server made
//! with the machine's `initdb`): each finds what the other wrote within its reported lag,
//! concurrent writers on both lose and duplicate nothing, a server killed mid-write
//! catches up when it comes back, and both ride out a database restart.

use crate::common::{cover, png};
use crate::harness::{create, Part, Server};
use exemplar_store::testing::TempPostgres;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn replica(url: &str, dir: &std::path::Path) -> Server {
    Server::start(dir, &["--database", url, "--follow-poll-ms", "200"])
}

fn replica_sharing_photos(url: &str, dir: &std::path::Path, photos: &std::path::Path) -> Server {
    let photos = photos.to_str().unwrap();
    Server::start(
        dir,
        &[
            "--database",
            url,
            "--follow-poll-ms",
            "200",
            "--photos-dir",
            photos,
        ],
    )
}

fn top_label(server: &Server, photo: &[u8]) -> Option<String> {
    let (status, answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), photo.to_vec())],
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    (answer["verdict"]["status"] == "match")
        .then(|| answer["verdict"]["label"].as_str().unwrap().into())
}

/// Waits until `check` holds (at most 20 s), returning how long it took.
fn within(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn labels(server: &Server) -> BTreeSet<String> {
    let (status, page) = server.request("GET", "/classes?limit=500", &[], &[]);
    assert_eq!(status, 200, "{page}");
    page["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_write_on_one_server_is_found_on_the_other_and_a_late_server_catches_up() {
    let postgres = TempPostgres::start();
    let url = postgres.database();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let photos = tempfile::tempdir().unwrap();
    let a = replica_sharing_photos(&url, dir_a.path(), photos.path());
    let b = replica_sharing_photos(&url, dir_b.path(), photos.path());

    let first = png(&cover(1));
    let (status, class) = create(&a, "First", "{}", first.clone());
    assert_eq!(status, 201, "{class}");
    // Read-your-writes on the server that acknowledged it...
    assert_eq!(top_label(&a, &first).as_deref(), Some("First"));
    // ...and on the other within its lag.
    within("B finds A's write", || {
        top_label(&b, &first).as_deref() == Some("First")
    });
    // The photo kept by A is served by B from the shared folder.
    let exemplar = class["exemplars"][0]["id"].as_i64().unwrap();
    let (status, _, kept) =
        b.exchange_bytes("GET", &format!("/exemplars/{exemplar}/photo"), &[], &[]);
    assert_eq!((status, kept), (200, first.clone()));
    let (_, ready) = b.request("GET", "/readyz", &[], &[]);
    let lag = &ready["replica"];
    assert!(lag["applied"].as_i64().unwrap() >= 1, "{ready}");
    assert_eq!(lag["database_lost"], false, "{ready}");

    // A delete on B leaves A's index too.
    let id = class["id"].as_i64().unwrap();
    let (status, _) = b.request("DELETE", &format!("/classes/{id}"), &[], &[]);
    assert_eq!(status, 204);
    within("A forgets B's delete", || top_label(&a, &first).is_none());

    // Writes while A is killed; A comes back and finds them.
    a.kill();
    let second = png(&cover(2));
    assert_eq!(create(&b, "Second", "{}", second.clone()).0, 201);
    let a = replica_sharing_photos(&url, dir_a.path(), photos.path());
    assert_eq!(top_label(&a, &second).as_deref(), Some("Second"));
    assert_eq!(labels(&a), labels(&b));
    a.stop();
    b.stop();
}

#[test]
fn writers_on_two_servers_and_a_kill_lose_and_duplicate_nothing() {
    let postgres = TempPostgres::start();
    let url = postgres.database();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = std::sync::Arc::new(replica(&url, dir_a.path()));
    let b = std::sync::Arc::new(replica(&url, dir_b.path()));
    let writers: Vec<_> = [(0u64, a.clone()), (1, b.clone())]
        .into_iter()
        .map(|(w, server)| {
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..12u64 {
                    let label = format!("w{w}-{i}");
                    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        create(&server, &label, "{}", png(&cover(100 + w * 100 + i)))
                    }));
                    match sent {
                        Ok((201, _)) => acknowledged.push(label),
                        // Killed (writer 0's server, below): never acknowledged.
                        _ if w == 0 => break,
                        Ok((status, body)) => panic!("{status} {body}"),
                        Err(_) => panic!("server B failed"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // kill -9 of A in the middle of its writes.
    let mut a = std::sync::Arc::try_unwrap(a).ok();
    if let Some(server) = a.as_mut() {
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
    let acknowledged: BTreeSet<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acknowledged.iter().filter(|l| l.starts_with("w1-")).count() == 12,
        "the survivor kept serving"
    );
    let a = replica(&url, dir_a.path());
    let (on_a, on_b) = (labels(&a), labels(&b));
    assert!(
        acknowledged.is_subset(&on_b),
        "nothing acknowledged is lost"
    );
    assert_eq!(on_a, on_b);
    // Every class once, with its one exemplar, searchable on both servers.
    let (_, page) = a.request("GET", "/classes?limit=500", &[], &[]);
    let classes = page["classes"].as_array().unwrap();
    assert_eq!(classes.len(), on_a.len(), "no duplicated class");
    assert!(classes.iter().all(|c| c["exemplar_count"] == 1), "{page}");
    let probe = png(&cover(100 + 100 + 5));
    assert_eq!(top_label(&a, &probe).as_deref(), Some("w1-5"));
    a.stop();
    std::sync::Arc::try_unwrap(b).ok().unwrap().stop();
}

#[test]
fn servers_refuse_writes_while_the_database_is_down_and_recover_by_themselves() {
    let postgres = TempPostgres::start();
    let url = postgres.database();
    let dir = tempfile::tempdir().unwrap();
    let server = replica(&url, dir.path());
    assert_eq!(create(&server, "Before", "{}", png(&cover(7))).0, 201);

    postgres.stop();
    let (status, head, body) = {
        let (body, content_type) = Server::form(&[
            Part::Text("label", "During".into()),
            Part::File("image", "d.png".into(), png(&cover(8))),
        ]);
        server.exchange("POST", "/classes", &[("Content-Type", content_type)], &body)
    };
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after"), "{head}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["kind"], "unavailable", "{body}");
    within("readyz reports the lost database", || {
        let (_, ready) = server.request("GET", "/readyz", &[], &[]);
        ready["replica"]["database_lost"] == true
    });

    postgres.start_again();
    within("writes work again without a restart", || {
        create(&server, "After", "{}", png(&cover(9))).0 == 201
    });
    assert_eq!(
        labels(&server),
        BTreeSet::from(["Before".to_string(), "After".to_string()])
    );
    server.stop();
}
