//! The real `exemplar serve` process on port 0 with a temp data dir, and the requests
//! the HTTP tests send it. With `EXEMPLAR_TEST_DATABASE=postgres` every server keeps its
//! catalogue in a throwaway PostgreSQL cluster inside its data directory instead of the
//! SQLite file (the same suite, on the other store).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The catalogue's PostgreSQL cluster, when the suite runs on PostgreSQL.
    _postgres: Option<exemplar_store::testing::TempPostgres>,
}

/// Whether this run of the suite keeps catalogues in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("EXEMPLAR_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        // A test that names its own database keeps it.
        let postgres = (on_postgres() && !extra.contains(&"--database")).then(|| {
            if super::common::running_as_root() {
                // The cluster runs as `postgres`, which must reach its directory.
                use std::os::unix::fs::PermissionsExt;
                std::fs::create_dir_all(data_dir).unwrap();
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
            }
            exemplar_store::testing::TempPostgres::in_dir(&data_dir.join("postgres"))
        });
        let database: Vec<String> = postgres
            .iter()
            .flat_map(|pg| ["--database".to_string(), pg.catalogue_url()])
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                data_dir.to_str().unwrap(),
            ])
            .args(&database)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting exemplar serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "server exited before listening"
            );
            if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                break addr.to_string();
            }
        };
        // Keep draining stdout so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Server {
            child,
            addr,
            _postgres: postgres,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let (status, text) = self.raw(method, path, headers, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Status and body text.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (status, _, body) = self.exchange(method, path, headers, body);
        (status, body)
    }

    /// Status, header lines and body text of one request on its own connection.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        let (status, head, body) = self.exchange_bytes(method, path, headers, body);
        (status, head, String::from_utf8_lossy(&body).into_owned())
    }

    /// Status, header lines (lower-cased) and body bytes of one request.
    pub fn exchange_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // A server may answer (413, 401) and close before the body is all sent.
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(response.len());
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let body = response.get(split + 4..).unwrap_or_default().to_vec();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        (status, head.to_ascii_lowercase(), body)
    }

    /// A multipart body of `parts`, with its content type.
    pub fn form(parts: &[Part]) -> (Vec<u8>, &'static str) {
        (
            Self::form_body(parts),
            "multipart/form-data; boundary=XBOUNDARYX",
        )
    }

    pub fn multipart(&self, path: &str, parts: &[Part], headers: &[(&str, &str)]) -> (u16, Value) {
        let (body, content_type) = Self::form(parts);
        let mut all = vec![("Content-Type", content_type)];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, &body)
    }

    fn form_body(parts: &[Part]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in parts {
            body.extend_from_slice(b"--XBOUNDARYX\r\n");
            match part {
                Part::Text(name, value) => {
                    body.extend_from_slice(
                        format!(
                            "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                        )
                        .as_bytes(),
                    );
                }
                Part::Bytes(name, bytes) => {
                    body.extend_from_slice(
                        format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                            .as_bytes(),
                    );
                    body.extend_from_slice(bytes);
                    body.extend_from_slice(b"\r\n");
                }
                Part::File(name, file, bytes) => {
                    body.extend_from_slice(
                        format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                    );
                    body.extend_from_slice(bytes);
                    body.extend_from_slice(b"\r\n");
                }
            }
        }
        body.extend_from_slice(b"--XBOUNDARYX--\r\n");
        body
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "graceful shutdown");
    }
}

/// A failing test must not leave its server running (and holding the test's pipes).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub enum Part {
    /// A text part whose bytes need not be UTF-8.
    Bytes(&'static str, Vec<u8>),
    Text(&'static str, String),
    File(&'static str, String, Vec<u8>),
}

pub fn create(server: &Server, label: &str, metadata: &str, image: Vec<u8>) -> (u16, Value) {
    server.multipart(
        "/classes",
        &[
            Part::Text("label", label.into()),
            Part::Text("metadata", metadata.into()),
            Part::File("image", "a.png".into(), image),
        ],
        &[],
    )
}

/// A class of these photos; it must be created.
pub fn add_class(server: &Server, label: &str, images: &[Vec<u8>]) -> Value {
    let mut parts = vec![Part::Text("label", label.into())];
    for (i, image) in images.iter().enumerate() {
        parts.push(Part::File("image", format!("{i}.png"), image.clone()));
    }
    let (status, class) = server.multipart("/classes", &parts, &[]);
    assert_eq!(status, 201, "{class}");
    class
}
