//! A throwaway PostgreSQL server for tests: a cluster made with the machine's `initdb` in
//! a temporary directory (or one the test owns), listening on a Unix socket only, stopped
//! on drop.
//!
//! The server binaries are found in `$EXEMPLAR_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout), else on `PATH`. PostgreSQL refuses to
//! run as root; as root, the cluster runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TempPostgres {
    dir: PathBuf,
    /// Deleted on drop, when the cluster made its own directory.
    _owned: Option<tempfile::TempDir>,
    bin: PathBuf,
    as_postgres_user: bool,
    next_database: std::sync::atomic::AtomicUsize,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EXEMPLAR_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_default() // on PATH
}

impl TempPostgres {
    /// Starts a fresh cluster (about a second). Panics with the tool's output when the
    /// server cannot be made: these tests need a PostgreSQL server installed.
    pub fn start() -> Self {
        let owned = tempfile::Builder::new()
            .prefix("exemplar-pg")
            .tempdir()
            .expect("temp dir");
        let server = Self::new(owned.path().to_path_buf(), Some(owned));
        server.init();
        server.start_server();
        server
    }

    /// The cluster in `dir`: made there on first use, started again on the data it holds
    /// afterwards (a test that restarts its server keeps its catalogue). As root, the
    /// directories above `dir` must let the `postgres` user through.
    pub fn in_dir(dir: &Path) -> Self {
        let server = Self::new(dir.to_path_buf(), None);
        if !dir.join("data").exists() {
            std::fs::create_dir_all(dir).expect("cluster dir");
            server.init();
            server.start_server();
            server.run(server.tool("createdb").args([
                "-h",
                &server.path(),
                "-U",
                "exemplar",
                "catalogue",
            ]));
        } else {
            server.start_server();
        }
        server
    }

    /// The URL of the `catalogue` database of a cluster made by [`TempPostgres::in_dir`].
    pub fn catalogue_url(&self) -> String {
        self.url_of("catalogue")
    }

    fn new(dir: PathBuf, owned: Option<tempfile::TempDir>) -> Self {
        Self {
            dir,
            _owned: owned,
            bin: bin_dir(),
            as_postgres_user: effective_user_is_root(),
            next_database: 0.into(),
        }
    }

    fn init(&self) {
        let server = self;
        if server.as_postgres_user {
            server.run(Command::new("chown").args(["postgres:", &server.path()]));
        }
        let data = format!("{}/data", server.path());
        server.run(server.tool("initdb").args([
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "exemplar",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
    }

    fn start_server(&self) {
        let data = format!("{}/data", self.path());
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=200",
            self.path()
        );
        let log = format!("{}/server.log", self.path());
        self.run(
            self.tool("pg_ctl")
                .args(["-D", &data, "-o", &options, "-l", &log, "-w", "start"]),
        );
    }

    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, command: &mut Command) {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("running {command:?}: {e} (is PostgreSQL installed?)"));
        assert!(
            out.status.success(),
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        self.url_of("postgres")
    }

    fn url_of(&self, database: &str) -> String {
        format!(
            "postgres://exemplar@localhost/{database}?host={}",
            self.path()
        )
    }

    /// A new, empty database on the cluster, and its URL.
    pub fn database(&self) -> String {
        let n = self
            .next_database
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("catalogue_{n}");
        self.run(
            self.tool("createdb")
                .args(["-h", &self.path(), "-U", "exemplar"])
                .arg(&name),
        );
        self.url_of(&name)
    }

    /// Starts a stopped server again on the same data.
    pub fn start_again(&self) {
        self.start_server();
    }

    /// Stops the server at once.
    pub fn stop(&self) {
        let data = format!("{}/data", self.path());
        self.run(
            self.tool("pg_ctl")
                .args(["-D", &data, "-m", "immediate", "-w", "stop"]),
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = format!("{}/data", self.path());
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn effective_user_is_root() -> bool {
    // The effective user of this process, without a libc dependency: /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
