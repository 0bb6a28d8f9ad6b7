//! The web console end to end: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (`tests/console/e2e.mjs`) against the real binary on port 0 with a
//! temp data dir. `scripts/test.sh` installs both; run alone, `npm ci` in
//! `crates/exemplar-server/tests/console` and a Chromium at `/usr/bin/chromium` (or
//! `EXEMPLAR_CHROMIUM`) are needed.

use crate::common::{photo, png};
use crate::harness::Server;
use exemplar_embed::fetch;
use image::{imageops, RgbImage};
use std::path::{Path, PathBuf};
use std::process::Command;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

fn chromium() -> PathBuf {
    let browser = std::env::var_os("EXEMPLAR_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        browser.exists(),
        "the console tests need Chromium at {} (Debian: apt-get install chromium; or set \
         EXEMPLAR_CHROMIUM); scripts/test.sh installs it",
        browser.display()
    );
    browser
}

/// `item` seen at an angle on a plain table: its corners go to `corners` (clockwise from
/// the top-left) of a `width`×`height` photo. Each point of the item, sampled at twice
/// its resolution, lands at the bilinear blend of the corners.
fn on_a_table(item: &RgbImage, corners: [[f32; 2]; 4], width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::from_fn(width, height, |x, y| {
        let shade = 60 + ((x / 8 + y / 8) % 2) as u8 * 8;
        image::Rgb([shade, shade - 10, shade - 20])
    });
    let (w, h) = item.dimensions();
    let [tl, tr, br, bl] = corners;
    for v in 0..2 * h {
        for u in 0..2 * w {
            let (a, b) = (u as f32 / (2 * w) as f32, v as f32 / (2 * h) as f32);
            let at = |i: usize| {
                (1.0 - a) * (1.0 - b) * tl[i]
                    + a * (1.0 - b) * tr[i]
                    + a * b * br[i]
                    + (1.0 - a) * b * bl[i]
            };
            let (x, y) = (at(0).round() as i64, at(1).round() as i64);
            if (0..width as i64).contains(&x) && (0..height as i64).contains(&y) {
                out.put_pixel(x as u32, y as u32, *item.get_pixel(u / 2, v / 2));
            }
        }
    }
    out
}

/// Where the item lies in the search photo.
const ITEM_CORNERS: [[f32; 2]; 4] = [[110.0, 70.0], [530.0, 40.0], [560.0, 370.0], [90.0, 400.0]];

/// Two photos of one item (the whole picture, and a close-up), a third shot of it at an
/// angle on a table as the search photo, and a photo of something else.
fn write_fixtures(dir: &Path) {
    let cat = photo(&fetch::SKIMAGE_CHELSEA);
    let (w, h) = cat.dimensions();
    let close_up = imageops::crop_imm(&cat, w / 10, h / 12, w * 4 / 5, h * 4 / 5).to_image();
    let seen = on_a_table(&cat, ITEM_CORNERS, 640, 460);
    std::fs::write(dir.join("cover-1.png"), png(&cat)).unwrap();
    std::fs::write(dir.join("cover-2.png"), png(&close_up)).unwrap();
    std::fs::write(dir.join("query.png"), png(&seen)).unwrap();
    std::fs::write(dir.join("other.png"), png(&photo(&fetch::SKIMAGE_COFFEE))).unwrap();
}

/// Runs `e2e.mjs` for one scenario against a fresh server; panics with its output when
/// a step fails.
fn run(scenario: &str, server_args: &[&str], env: &[(&str, &str)]) {
    let e2e = e2e_dir();
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "run `npm ci` in {} first (scripts/test.sh does)",
        e2e.display()
    );
    let browser = chromium();
    let data = tempfile::tempdir().unwrap();
    let fixtures = tempfile::tempdir().unwrap();
    write_fixtures(fixtures.path());
    let mut args = vec!["--keep-unknown", "20"];
    args.extend_from_slice(server_args);
    let server = Server::start(data.path(), &args);
    let mut command = Command::new("node");
    command
        .arg(e2e.join("e2e.mjs"))
        .env("EXEMPLAR_URL", format!("http://{}", server.addr))
        .env("FIXTURES", fixtures.path())
        .env("SCENARIO", scenario)
        .env("CHROMIUM", &browser)
        .env(
            "ITEM_CORNERS",
            serde_json::to_string(&ITEM_CORNERS).unwrap(),
        );
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("starting node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    assert!(
        out.status.success(),
        "console e2e ({scenario}) failed:\n{text}"
    );
    assert!(
        text.contains(&format!("console e2e ({scenario}): passed")),
        "{text}"
    );
}

#[test]
fn console_on_a_desktop_adds_searches_promotes_and_deletes() {
    let shots = std::env::var("EXEMPLAR_CONSOLE_SCREENSHOTS").unwrap_or_default();
    run("desktop", &[], &[("SCREENSHOTS", shots.as_str())]);
}

#[test]
fn console_at_phone_width_does_the_same_without_sideways_scrolling() {
    let shots = std::env::var("EXEMPLAR_CONSOLE_SCREENSHOTS").unwrap_or_default();
    run("phone", &[], &[("SCREENSHOTS", shots.as_str())]);
}

#[test]
fn console_asks_for_the_key_once_when_writes_are_protected() {
    run(
        "protected",
        &["--api-key", "e2e-secret"],
        &[("API_KEY", "e2e-secret")],
    );
}
