//! The unknowns inbox and the class listing's filter through the real binary: what is
//! kept, who may see it, promoting and dismissing, and that it survives a restart.

use crate::common::{another_shot, photo, png};
use crate::harness::{Part, Server};
use exemplar_embed::fetch;
use serde_json::Value;

const KEY: &str = "inbox-key";
const AUTH: (&str, &str) = ("Authorization", "Bearer inbox-key");

/// A photo of nothing in the catalogue: blotches from a seeded generator.
fn nothing_known(seed: u32) -> Vec<u8> {
    let cell = |x: u32, y: u32| {
        let mut v = (x / 16).wrapping_mul(73_856_093)
            ^ (y / 16).wrapping_mul(19_349_663)
            ^ seed.wrapping_mul(83_492_791);
        v ^= v >> 13;
        v = v.wrapping_mul(0x5bd1_e995);
        (v ^ (v >> 15)) as u8
    };
    png(&image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([cell(x, y), cell(y, x), cell(x + 7, y + 3)])
    }))
}

fn search(server: &Server, image: &[u8], name: &str) -> Value {
    let (status, answer) = server.multipart(
        "/search",
        &[Part::File("image", name.into(), image.to_vec())],
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

fn new_class(server: &Server, label: &str, metadata: &str, image: Vec<u8>) -> i64 {
    let (status, class) = server.multipart(
        "/classes",
        &[
            Part::Text("label", label.into()),
            Part::Text("metadata", metadata.into()),
            Part::File("image", "a.png".into(), image),
        ],
        &[AUTH],
    );
    assert_eq!(status, 201, "{class}");
    class["id"].as_i64().unwrap()
}

#[test]
fn unknown_photos_are_kept_bounded_private_and_promoted_into_classes() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--keep-unknown", "2", "--api-key", KEY];
    let server = Server::start(dir.path(), &args);
    let cat = photo(&fetch::SKIMAGE_CHELSEA);
    let coffee = png(&photo(&fetch::SKIMAGE_COFFEE));
    let cat_id = new_class(&server, "Chelsea", "{}", png(&cat));

    // A known photo is not kept; an unknown one is, and the answer says where.
    let known = search(&server, &png(&another_shot(&cat)), "cat.png");
    assert_eq!(known["verdict"]["status"], "match");
    assert!(known.get("unknown_id").is_none());
    let answer = search(&server, &coffee, "coffee.png");
    assert_eq!(answer["verdict"]["status"], "unknown");
    let coffee_id = answer["unknown_id"].as_i64().expect("kept in the inbox");

    // Customers' photos: the key is needed to see them, even for reading.
    assert_eq!(server.request("GET", "/unknowns", &[], b"").0, 401);
    let photo_path = format!("/unknowns/{coffee_id}/photo");
    assert_eq!(server.raw("GET", &photo_path, &[], b"").0, 401);
    let (status, page) = server.request("GET", "/unknowns", &[AUTH], b"");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["keeping"], true);
    assert_eq!(page["max_count"], 2);
    let listed = &page["unknowns"][0];
    assert_eq!(listed["id"], coffee_id);
    assert_eq!(listed["name"], "coffee.png");
    assert_eq!(listed["bytes"], coffee.len());
    let (status, head, bytes) = server.exchange_bytes("GET", &photo_path, &[AUTH], b"");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: image/png"), "{head}");
    assert!(head.contains("cache-control: private"), "{head}");
    assert_eq!(bytes, coffee, "the photo as it was sent");

    // The count bound: two more unknowns push the first out.
    let other = nothing_known(1);
    let second = search(&server, &other, "other.png")["unknown_id"]
        .as_i64()
        .unwrap();
    let third = search(
        &server,
        &png(&another_shot(&photo(&fetch::SKIMAGE_COFFEE))),
        "third.png",
    )["unknown_id"]
        .as_i64()
        .unwrap();
    let (_, page) = server.request("GET", "/unknowns", &[AUTH], b"");
    let ids: Vec<i64> = page["unknowns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [third, second]);
    assert_eq!(server.request("GET", &photo_path, &[AUTH], b"").0, 404);

    // Bad promotions are refused, naming the problem, and change nothing.
    let promote = |id: i64| format!("/unknowns/{id}/promote");
    let json = ("Content-Type", "application/json");
    for (body, kind) in [
        (r#"{"label": "x", "class_id": 1}"#, "bad_promotion"),
        (r#"{"label": ""}"#, "empty_label"),
    ] {
        let (status, error) =
            server.request("POST", &promote(third), &[AUTH, json], body.as_bytes());
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["kind"], kind, "{body}: {error}");
    }
    let (status, error) = server.request(
        "POST",
        &promote(third),
        &[AUTH, json],
        br#"{"class_id": 999999}"#,
    );
    assert_eq!(status, 404, "{error}");
    assert_eq!(
        server
            .request("POST", &promote(third), &[json], br#"{"label": "x"}"#)
            .0,
        401
    );

    // A new class of one: it answers searches of that photo at once, and leaves the inbox.
    let (status, made) = server.request(
        "POST",
        &promote(third),
        &[AUTH, json],
        br#"{"label": "Espresso", "metadata": {"format": "CD"}}"#,
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["label"], "Espresso");
    assert_eq!(made["metadata"]["format"], "CD");
    let again = search(
        &server,
        &png(&another_shot(&photo(&fetch::SKIMAGE_COFFEE))),
        "again.png",
    );
    assert_eq!(again["verdict"]["status"], "match", "{again}");
    assert_eq!(again["verdict"]["label"], "Espresso");
    assert_eq!(
        server
            .request("POST", &promote(third), &[AUTH, json], br#"{"label": "x"}"#)
            .0,
        404
    );

    // Into an existing class: one more exemplar of it.
    let (status, made) = server.request(
        "POST",
        &promote(second),
        &[AUTH, json],
        format!(r#"{{"class_id": {cat_id}}}"#).as_bytes(),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["id"], cat_id);
    assert_eq!(made["exemplar_count"], 2);

    // Dismissed: gone. The inbox survives a restart like the catalogue.
    let fourth = search(&server, &nothing_known(2), "4.png")["unknown_id"]
        .as_i64()
        .unwrap();
    let fifth = search(&server, &nothing_known(3), "5.png")["unknown_id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        server
            .request("DELETE", &format!("/unknowns/{fourth}"), &[AUTH], b"")
            .0,
        204
    );
    assert_eq!(
        server
            .request("DELETE", &format!("/unknowns/{fourth}"), &[AUTH], b"")
            .0,
        404
    );
    server.stop();
    let server = Server::start(dir.path(), &args);
    let (_, page) = server.request("GET", "/unknowns", &[AUTH], b"");
    assert_eq!(page["unknowns"][0]["id"], fifth, "{page}");
    server.stop();

    // Turned off, the server keeps none and drops what was kept.
    let server = Server::start(dir.path(), &["--api-key", KEY]);
    let (_, page) = server.request("GET", "/unknowns", &[AUTH], b"");
    assert_eq!(page["keeping"], false);
    assert_eq!(page["unknowns"].as_array().unwrap().len(), 0, "{page}");
    let answer = search(&server, &coffee, "coffee.png");
    assert!(answer.get("unknown_id").is_none(), "{answer}");
}

#[test]
fn classes_are_listed_by_label_text_and_metadata_and_the_console_is_served_openly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--api-key", KEY, "--protect-reads"]);
    let cat = photo(&fetch::SKIMAGE_CHELSEA);
    for (label, format) in [
        ("Blue Train", "LP"),
        ("Kind of Blue", "CD"),
        ("Giant Steps", "CD"),
    ] {
        new_class(
            &server,
            label,
            &format!(r#"{{"format": "{format}"}}"#),
            png(&cat),
        );
    }
    let labels = |query: &str| -> Vec<String> {
        let (status, page) = server.request("GET", &format!("/classes?{query}"), &[AUTH], b"");
        assert_eq!(status, 200, "{query}: {page}");
        page["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(labels("q=blue"), ["Blue Train", "Kind of Blue"]);
    assert_eq!(labels("q=blue&filter=format%3DCD"), ["Kind of Blue"]);
    assert_eq!(labels("filter=format%3DCD&limit=1"), ["Kind of Blue"]);
    assert_eq!(labels("q=%25"), Vec::<String>::new());
    // Each listed class names an exemplar whose thumbnail shows it.
    let (_, page) = server.request("GET", "/classes?q=giant", &[AUTH], b"");
    let shown = page["classes"][0]["photo_exemplar_id"]
        .as_i64()
        .expect("a kept photo");
    let (_, class) = server.request(
        "GET",
        &format!("/classes/{}", page["classes"][0]["id"]),
        &[AUTH],
        b"",
    );
    assert_eq!(class["exemplars"][0]["id"], shown, "{class}");
    assert_eq!(
        server
            .raw(
                "GET",
                &format!("/exemplars/{shown}/thumbnail"),
                &[AUTH],
                b""
            )
            .0,
        200
    );
    for (query, kind) in [
        ("filter=format", "bad_filter"),
        ("colour=red", "unknown_parameter"),
        ("limit=0", "bad_limit"),
        ("after=x", "bad_after"),
        (
            &(0..33)
                .map(|i| format!("filter=k{i}%3Dv"))
                .collect::<Vec<_>>()
                .join("&"),
            "bad_filter",
        ),
    ] {
        let (status, error) = server.request("GET", &format!("/classes?{query}"), &[AUTH], b"");
        assert_eq!(
            (status, error["kind"].as_str()),
            (400, Some(kind)),
            "{query}: {error}"
        );
    }

    // The console's page and assets need no key (they hold no data) and load nothing
    // from elsewhere; everything else still does.
    let (status, head, page) = server.exchange("GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(page.contains("/console/console.js"));
    let (status, head, _) = server.exchange("GET", "/console/console.js", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    let (status, error) = server.request("GET", "/console/other.js", &[], b"");
    assert_eq!((status, error["kind"].as_str()), (404, Some("not_found")));
    assert_eq!(server.request("GET", "/classes", &[], b"").0, 401);
    assert_eq!(server.request("POST", "/", &[], b"").0, 401);
}
