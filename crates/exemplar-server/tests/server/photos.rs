//! Kept photos and backups through the real binary: served with caching headers,
//! collected after deletes, and a backup taken while serving restored into an empty data
//! directory that answers the same searches.

use crate::common::{another_shot, photo, png};
use crate::harness::{add_class, Part, Server};
use exemplar_embed::fetch::{SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Every file under the data directory's `photos/` (not the backup lock).
fn photo_files(data_dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let Ok(folders) = std::fs::read_dir(data_dir.join("photos")) else {
        return files;
    };
    for folder in folders.flatten().filter(|f| f.path().is_dir()) {
        for file in std::fs::read_dir(folder.path()).unwrap().flatten() {
            files.push(file.file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    files
}

#[test]
fn photos_are_served_with_caching_headers_and_collected_when_their_exemplars_go() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let front = png(&photo(&SKIMAGE_CHELSEA));
    let close = png(&another_shot(&photo(&SKIMAGE_CHELSEA)));
    let class = add_class(&server, "Chelsea", &[front.clone(), close.clone()]);
    let exemplars = class["exemplars"].as_array().unwrap();
    assert!(exemplars.iter().all(|e| e["photo_kept"] == true), "{class}");
    let (first, second) = (exemplars[0]["id"].as_i64().unwrap(), &exemplars[1]["id"]);

    let (status, head, body) =
        server.exchange_bytes("GET", &format!("/exemplars/{first}/photo"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(body, front, "the bytes as sent");
    assert_eq!(header(&head, "content-type"), Some("image/png"));
    let etag = header(&head, "etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", sha256(&front)));
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let (status, head, _) = server.exchange_bytes(
        "GET",
        &format!("/exemplars/{first}/photo"),
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(status, 304);
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));

    let (status, head, thumbnail) =
        server.exchange_bytes("GET", &format!("/exemplars/{first}/thumbnail"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type"), Some("image/jpeg"));
    let small = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!(small.width().max(small.height()), 256);

    let (status, missing) = server.request("GET", "/exemplars/999999/photo", &[], b"");
    assert_eq!(status, 404);
    assert_eq!(missing["kind"], "not_found", "{missing}");

    // Deleting an exemplar removes its photo and thumbnail; the other stays.
    assert_eq!(photo_files(dir.path()).len(), 4);
    let (status, _) = server.request("DELETE", &format!("/exemplars/{first}"), &[], b"");
    assert_eq!(status, 204);
    assert_eq!(
        photo_files(dir.path()),
        vec![sha256(&close), format!("{}.thumb.jpg", sha256(&close))]
    );
    let (status, _) = server.request("GET", &format!("/exemplars/{first}/photo"), &[], b"");
    assert_eq!(status, 404);
    let (status, _) = server.request("GET", &format!("/exemplars/{second}/photo"), &[], b"");
    assert_eq!(status, 200);
    let (status, _) = server.request("DELETE", &format!("/classes/{}", class["id"]), &[], b"");
    assert_eq!(status, 204);
    assert!(photo_files(dir.path()).is_empty());
}

#[test]
fn a_features_only_server_says_so_and_protected_reads_cover_photos() {
    let dir = tempfile::tempdir().unwrap();
    let key = ("Authorization", "Bearer k");
    let server = Server::start(
        dir.path(),
        &[
            "--keep-photos",
            "false",
            "--api-key",
            "k",
            "--protect-reads",
        ],
    );
    let parts = [
        Part::Text("label", "Chelsea".into()),
        Part::File("image", "a.png".into(), png(&photo(&SKIMAGE_CHELSEA))),
    ];
    let (status, class) = server.multipart("/classes", &parts, &[key]);
    assert_eq!(status, 201, "{class}");
    assert_eq!(class["exemplars"][0]["photo_kept"], false);
    let id = class["exemplars"][0]["id"].as_i64().unwrap();
    let (status, _) = server.request("GET", &format!("/exemplars/{id}/photo"), &[], b"");
    assert_eq!(status, 401, "reads need the key");
    let (status, answer) = server.request("GET", &format!("/exemplars/{id}/photo"), &[key], b"");
    assert_eq!(status, 404);
    assert!(
        answer["error"].as_str().unwrap().contains("features only"),
        "{answer}"
    );
    assert!(photo_files(dir.path()).is_empty());
    let (_, ready) = server.request("GET", "/readyz", &[], b"");
    assert_eq!(ready["keeps_photos"], false, "{ready}");
    assert!(ready["model"]
        .as_str()
        .unwrap()
        .starts_with("efficientnet-lite0"));

    // With photos kept and the key: `private` caching.
    server.stop();
    let server = Server::start(dir.path(), &["--api-key", "k", "--protect-reads"]);
    let parts = [Part::File(
        "image",
        "b.png".into(),
        png(&photo(&SKIMAGE_COFFEE)),
    )];
    let (status, added) = server.multipart(
        &format!("/classes/{}/exemplars", class["id"]),
        &parts,
        &[key],
    );
    assert_eq!(status, 201, "{added}");
    let id = added["exemplars"][0]["id"].as_i64().unwrap();
    let (status, head, _) =
        server.exchange_bytes("GET", &format!("/exemplars/{id}/photo"), &[key], b"");
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "cache-control"),
        Some("private, max-age=31536000, immutable")
    );
}

/// Fractions rounded to 4 decimals: two processes may sum a dot product in another
/// order (the last bits of a score).
fn rounded(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            *value = Value::from((n.as_f64().unwrap() * 1e4).round() / 1e4);
        }
        Value::Array(items) => items.iter_mut().for_each(rounded),
        Value::Object(fields) => fields.values_mut().for_each(rounded),
        _ => {}
    }
}

/// What a search answers, without its timings (which differ between runs).
fn search(server: &Server, image: &[u8]) -> Value {
    let (status, mut answer) = server.multipart(
        "/search",
        &[Part::File("image", "q.png".into(), image.to_vec())],
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    answer.as_object_mut().unwrap().remove("timings");
    rounded(&mut answer);
    answer
}

#[test]
fn a_backup_taken_while_serving_restores_into_an_empty_directory_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (live, backups, restored) = (
        dir.path().join("live"),
        dir.path().join("backups"),
        dir.path().join("restored"),
    );
    let server = Server::start(&live, &["--backup-dir", backups.to_str().unwrap()]);
    let (cat, coffee) = (photo(&SKIMAGE_CHELSEA), photo(&SKIMAGE_COFFEE));
    add_class(&server, "Chelsea", &[png(&cat)]);
    let espresso = add_class(&server, "Espresso", &[png(&coffee)]);
    let json = [("Content-Type", "application/json")];
    let (status, made) = server.request("POST", "/admin/backup", &json, br#"{"name":"first"}"#);
    if crate::harness::on_postgres() {
        // Backups of a PostgreSQL catalogue are PostgreSQL's own.
        assert_eq!((status, &made["kind"]), (409, &Value::from("not_sqlite")));
        return;
    }
    assert_eq!(status, 201, "{made}");
    assert_eq!(
        (&made["classes"], &made["exemplars"], &made["photos"]),
        (&Value::from(2), &Value::from(2), &Value::from(2)),
        "{made}"
    );
    let (status, again) = server.request("POST", "/admin/backup", &json, br#"{"name":"first"}"#);
    assert_eq!((status, &again["kind"]), (409, &Value::from("exists")));
    let (status, bad) = server.request("POST", "/admin/backup", &json, br#"{"name":"../up"}"#);
    assert_eq!((status, &bad["kind"]), (400, &Value::from("bad_name")));
    // A write after the backup is not in it.
    add_class(&server, "Later", &[png(&another_shot(&coffee))]);

    // The CLI makes the same kind of backup beside the running server.
    let cli_backup = dir.path().join("by-cli");
    let out = Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .args(["backup", cli_backup.to_str().unwrap(), "--data-dir"])
        .arg(&live)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(cli_backup.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["classes"], 3);

    let restore = |into: &Path| {
        Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args([
                "restore",
                backups.join("first").to_str().unwrap(),
                "--data-dir",
            ])
            .arg(into)
            .output()
            .unwrap()
    };
    let out = restore(&restored);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["searches"]["searched"], 2, "{report}");
    assert_eq!(report["searches"]["found"], 2, "{report}");
    // Never over a catalogue.
    let out = restore(&restored);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a catalogue"));

    let copy = Server::start(&restored, &[]);
    let (_, classes) = copy.request("GET", "/classes", &[], b"");
    let labels: Vec<&Value> = classes["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["label"])
        .collect();
    assert_eq!(labels, ["Chelsea", "Espresso"]);
    let photo_id = espresso["exemplars"][0]["id"].as_i64().unwrap();
    let (status, _, bytes) =
        copy.exchange_bytes("GET", &format!("/exemplars/{photo_id}/photo"), &[], b"");
    assert_eq!((status, bytes), (200, png(&coffee)));
    server.request("DELETE", "/classes/3", &[], b"");
    for query in [another_shot(&cat), another_shot(&coffee)] {
        let (original, restored) = (search(&server, &png(&query)), search(&copy, &png(&query)));
        assert_eq!(original, restored);
        assert_eq!(original["verdict"]["status"], "match", "{original}");
    }
}
