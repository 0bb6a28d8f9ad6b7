//! Requests a hostile or careless client sends: each is answered with a 4xx in the one
//! JSON error shape, nothing is written, memory stays bounded, and stalled clients are
//! disconnected while the service keeps answering.

use crate::common::{photo, png};
use crate::harness::{Part, Server};
use exemplar_embed::fetch::SKIMAGE_COFFEE;
use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn rgb_png(w: u32, h: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(RgbImage::new(w, h)),
        ImageFormat::Png,
    )
}

/// The server's peak resident memory so far, in bytes (Linux).
fn peak_rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

fn assert_json_error(status: u16, head: &str, body: &str, want: (u16, &str), what: &str) {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(
        (status, parsed["kind"].as_str()),
        (want.0, Some(want.1)),
        "{what}: {head}\n{body}"
    );
    assert!(
        head.contains("content-type: application/json"),
        "{what}: {head}"
    );
    assert!(
        parsed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
}

#[test]
fn every_malformed_request_gets_a_json_error_with_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body-bytes", "100000"]);
    let good = png(&RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 99])
    }));
    let jpeg = encode(
        DynamicImage::ImageRgb8(photo(&SKIMAGE_COFFEE)),
        ImageFormat::Jpeg,
    );
    let form = |parts: &[Part]| Server::form(parts);
    let (search_form, multipart_type) = form(&[Part::File("image", "q.png".into(), good.clone())]);

    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        (u16, &'a str),
    );
    let mut cases: Vec<Case> = vec![
        (
            "PUT",
            "/classes",
            vec![],
            vec![],
            (405, "method_not_allowed"),
        ),
        (
            "OPTIONS",
            "/classes",
            vec![],
            vec![],
            (405, "method_not_allowed"),
        ),
        ("GET", "/nope", vec![], vec![], (404, "not_found")),
        ("GET", "/classes/abc", vec![], vec![], (400, "bad_path")),
        (
            "GET",
            "/classes/99999999999999999999",
            vec![],
            vec![],
            (400, "bad_path"),
        ),
        ("DELETE", "/exemplars/x", vec![], vec![], (400, "bad_path")),
        (
            "GET",
            "/classes?limit=abc",
            vec![],
            vec![],
            (400, "bad_limit"),
        ),
        (
            "GET",
            "/classes?limit=0",
            vec![],
            vec![],
            (400, "bad_limit"),
        ),
        (
            "GET",
            "/classes?limit=2147483648",
            vec![],
            vec![],
            (400, "bad_limit"),
        ),
        (
            "GET",
            "/classes?after=x",
            vec![],
            vec![],
            (400, "bad_after"),
        ),
        (
            "POST",
            "/search",
            vec![("Content-Type", "application/json")],
            br#"{"image": "x"}"#.to_vec(),
            (415, "unsupported_media_type"),
        ),
        (
            "POST",
            "/search",
            vec![],
            search_form.clone(),
            (415, "unsupported_media_type"),
        ),
        (
            "PATCH",
            "/classes/1",
            vec![("Content-Type", "application/json")],
            vec![b' '; 200_000],
            (413, "body_too_large"),
        ),
        (
            "PATCH",
            "/classes/1",
            vec![("Content-Type", "application/json")],
            b"{}".to_vec(),
            (400, "nothing_to_update"),
        ),
        (
            "PATCH",
            "/classes/1",
            vec![("Content-Type", "application/json")],
            br#"{"label": null}"#.to_vec(),
            (400, "bad_label"),
        ),
    ];
    let multipart_cases: Vec<(&str, Vec<Part>, (u16, &str))> = vec![
        (
            "/classes",
            vec![
                Part::Text("label", "Half".into()),
                Part::File("image", "cut.jpg".into(), jpeg[..jpeg.len() / 2].to_vec()),
            ],
            (400, "bad_image"),
        ),
        (
            "/classes",
            vec![
                Part::Text("label", "Half beside a good one".into()),
                Part::File("image", "good.png".into(), good.clone()),
                Part::File("image", "cut.jpg".into(), jpeg[..jpeg.len() / 2].to_vec()),
            ],
            (400, "bad_image"),
        ),
        (
            "/classes",
            vec![
                Part::Bytes("label", vec![0x41, 0xFF, 0xFE, 0x42]),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            (400, "bad_text"),
        ),
        (
            "/classes",
            vec![
                Part::Text("label", "One".into()),
                Part::Text("label", "Two".into()),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            (400, "repeated_field"),
        ),
        (
            "/classes",
            vec![
                Part::Text("label", "Line\nbreak".into()),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            (400, "bad_label"),
        ),
        (
            "/classes",
            vec![
                Part::Text("label", "Long value".into()),
                Part::Text(
                    "metadata",
                    format!(r#"{{"note": "{}"}}"#, "x".repeat(20_000)),
                ),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            (400, "metadata_too_large"),
        ),
        (
            "/classes",
            vec![
                Part::Text("label", "Long key".into()),
                Part::Text("metadata", format!(r#"{{"{}": "v"}}"#, "k".repeat(10_000))),
                Part::File("image", "a.png".into(), good.clone()),
            ],
            (400, "metadata_too_large"),
        ),
        (
            "/search",
            vec![
                Part::File("image", "q.png".into(), good.clone()),
                Part::Text("filter", "=".into()),
            ],
            (400, "bad_filter"),
        ),
        (
            "/search",
            vec![
                Part::File("image", "q.png".into(), good.clone()),
                Part::Text("k", "1".into()),
                Part::Text("k", "2".into()),
            ],
            (400, "repeated_field"),
        ),
        (
            "/search",
            vec![
                Part::File("image", "q.png".into(), good.clone()),
                Part::Text("k", "0".into()),
            ],
            (400, "bad_k"),
        ),
        ("/search", vec![], (400, "image_count")),
    ];
    let forms: Vec<(&str, Vec<u8>, (u16, &str))> = multipart_cases
        .into_iter()
        .map(|(path, parts, want)| (path, form(&parts).0, want))
        .collect();
    for (path, body, want) in &forms {
        cases.push((
            "POST",
            path,
            vec![("Content-Type", multipart_type)],
            body.clone(),
            *want,
        ));
    }
    for (method, path, headers, body, want) in cases {
        let (status, head, text) = server.exchange(method, path, &headers, &body);
        assert_json_error(status, &head, &text, want, &format!("{method} {path}"));
    }
    // 405 still says which methods the route takes.
    let (_, head, _) = server.exchange("PUT", "/classes", &[], b"");
    assert!(head.contains("allow:"), "{head}");

    let (_, list) = server.request("GET", "/classes", &[], b"");
    assert!(
        list["classes"].as_array().unwrap().is_empty(),
        "nothing written: {list}"
    );

    // A file name is kept as a display name: no directories, no hidden characters, bounded.
    let name = format!("../../{}\u{202e}gpj.exe", "n".repeat(100_000));
    let (body, content_type) = form(&[
        Part::Text("label", "Named".into()),
        Part::File("image", name, good.clone()),
    ]);
    let (status, created) =
        server.request("POST", "/classes", &[("Content-Type", content_type)], &body);
    assert_eq!(
        status, 413,
        "a 100 KB name is over this server's body limit: {created}"
    );
    let (body, content_type) = form(&[
        Part::Text("label", "Named".into()),
        Part::File(
            "image",
            format!("dir/{}\u{202e}gpj.exe", "n".repeat(20_000)),
            good,
        ),
    ]);
    let (status, created) =
        server.request("POST", "/classes", &[("Content-Type", content_type)], &body);
    assert_eq!(status, 201, "{created}");
    let stored = created["exemplars"][0]["name"].as_str().unwrap();
    assert_eq!(stored.chars().count(), 255, "{stored}");
    assert!(stored.chars().all(|c| c == 'n'), "{stored}");
    server.stop();
}

#[test]
fn hostile_images_are_refused_before_they_cost_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--decode-memory-mib", "64"]);
    let search = |image: Vec<u8>, crop: Option<&str>| {
        let mut parts = vec![Part::File("image", "q.png".into(), image)];
        if let Some(crop) = crop {
            parts.push(Part::Text("crop", crop.into()));
        }
        server.multipart("/search", &parts, &[])
    };
    // Warm up (model, allocator), then take the baseline.
    let (status, answer) = search(rgb_png(640, 480), None);
    assert_eq!(status, 200, "{answer}");
    let before = peak_rss(&server);

    let wide = rgb_png(7000, 7000);
    let rgba16 = encode(
        DynamicImage::ImageRgba16(image::ImageBuffer::new(3000, 3000)),
        ImageFormat::Png,
    );
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        // 855 bytes; scaled whole to a short side of 256 it was 39 GB.
        (rgb_png(1, 200_000), None, "bad_image"),
        (rgb_png(4000, 1), None, "bad_image"),
        (rgb_png(8000, 1), None, "bad_image"),
        (wide, Some("0,0,7000,1"), "bad_crop"),
        // 72 MB decoded (8 bytes a pixel) + 27 MB of RGB: over the 64 MiB budget.
        (rgba16, None, "image_too_large"),
    ];
    for (image, crop, kind) in cases {
        let (status, body) = search(image, crop);
        assert_eq!((status, body["kind"].as_str()), (400, Some(kind)), "{body}");
    }
    // The needle shapes are refused from the header, the one-row crop as the form is
    // read, the 16-bit photo by its cost: none is decoded.
    let grown = peak_rss(&server).saturating_sub(before);
    assert!(grown < 200 << 20, "peak memory grew by {} MiB", grown >> 20);
    let (status, _) = server.request("GET", "/healthz", &[], b"");
    assert_eq!(status, 200);
    server.stop();
}

/// Reads until the server closes the connection (or 60 s pass); what it sent.
fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&got).into_owned())
        }
        Err(_) => None,
    }
}

#[test]
fn stalled_clients_are_disconnected_and_the_service_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--header-timeout-secs",
            "2",
            "--body-timeout-secs",
            "2",
            "--max-connections",
            "40",
        ],
    );
    let connect = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(bytes).unwrap();
        s
    };
    // Half a header; a body promised and never sent; a kept-alive connection left idle.
    let mut partial: Vec<TcpStream> = (0..20)
        .map(|_| connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "))
        .collect();
    let mut stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            connect(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n--B\r\n")
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..5)
        .map(|_| connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    // 35 connections held: the service still answers.
    let (status, health) = server.request("GET", "/healthz", &[], b"");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    for s in &mut partial {
        assert!(
            read_until_closed(s).is_some(),
            "a half-sent header is cut off"
        );
    }
    for s in &mut stalled {
        let answer = read_until_closed(s).expect("a stalled body is cut off");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"body_timeout\""), "{answer}");
    }
    for s in &mut idle {
        let answer = read_until_closed(s).expect("an idle kept-alive connection is closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    server.stop();
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--header-timeout-secs", "2", "--max-connections", "2"],
    );
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    // Both slots are taken: this request is answered only once a stalled one is closed.
    let (status, _) = server.request("GET", "/healthz", &[], b"");
    assert_eq!(status, 200);
    // A held connection that reads as anything but "nothing yet" was closed (or answered).
    let closed = held
        .iter_mut()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            let mut buffer = [0u8; 256];
            !matches!(s.read(&mut buffer), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 1, "the request went past the connection limit");
    server.stop();
}
