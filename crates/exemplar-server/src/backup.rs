//! Backups of a data directory and their restore.
//!
//! A backup is a folder: `catalogue.sqlite` (the database at one instant, copied while
//! the server goes on writing), `photos/` (every photo and thumbnail that copy refers to,
//! each checked against its hash) and `manifest.json` (what it holds). It is written as
//! `OUT.partial` and renamed to `OUT` once whole, so a folder named `OUT` is a complete
//! backup. While photos are copied none is removed (see `FsPhotoStore::hold_for_backup`).
//! The index dumps are not copied: a restored catalogue rebuilds its indexes on start.

use crate::data_dir::{photo_reader, DATABASE_FILE};
use anyhow::{ensure, Context};
use exemplar_core::catalogue::CatalogueStore;
use exemplar_store::{FsPhotoStore, SqliteStore, Tally};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "exemplar-backup/1";

/// What a backup holds, written beside it and checked by a restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// `exemplar-backup/1`.
    pub format: String,
    pub created_at_ms: i64,
    pub classes: i64,
    pub exemplars: i64,
    /// Distinct photos kept (their thumbnails beside them).
    pub photos: i64,
    /// Exemplars kept with features only.
    pub features_only: i64,
    /// The change log's position the copy holds.
    pub head: i64,
    /// The projection its descriptors are in.
    pub projection: Option<String>,
    /// Bytes of photos and thumbnails copied.
    pub photo_bytes: u64,
}

impl Manifest {
    fn tally(&self) -> Tally {
        Tally {
            classes: self.classes,
            exemplars: self.exemplars,
            photos: self.photos,
            features_only: self.features_only,
            head: self.head,
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Copies the photos `hashes` (and their thumbnails) from `from` into the data directory
/// `to`, checking each photo's bytes against its hash. Returns the bytes copied.
fn copy_photos(from: &FsPhotoStore, to: &Path, hashes: &[String]) -> anyhow::Result<u64> {
    let target = photo_reader(to)?;
    let mut bytes = 0u64;
    for hash in hashes {
        let photo = from
            .photo(hash)?
            .with_context(|| format!("photo {hash} is missing from {}", from.root().display()))?;
        let found = hex_sha256(&photo);
        ensure!(
            &found == hash,
            "photo {hash} in {} is damaged: its bytes hash to {found}",
            from.root().display()
        );
        let thumbnail = from.thumbnail(hash)?.with_context(|| {
            format!(
                "the thumbnail of photo {hash} is missing from {}",
                from.root().display()
            )
        })?;
        target.put_with_thumbnail(hash, &photo, &thumbnail)?;
        bytes += (photo.len() + thumbnail.len()) as u64;
    }
    Ok(bytes)
}

fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn partial_of(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes a backup of the catalogue in `store` and the photos in `photos` to `out`, which
/// must not exist (its parent must). Safe while the catalogue is being written to.
pub async fn write_backup(
    store: &SqliteStore,
    photos: Arc<FsPhotoStore>,
    out: &Path,
) -> anyhow::Result<Manifest> {
    ensure!(
        !out.exists(),
        "{} exists: a backup goes to a new folder",
        out.display()
    );
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure!(
        parent.is_dir(),
        "{} does not exist: create it first",
        parent.display()
    );
    let partial = partial_of(out);
    if partial.exists() {
        // Left by a backup that was cut short.
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
    // From before the snapshot to the end of the copy, no photo may go.
    let held = photos.clone();
    let hold = tokio::task::spawn_blocking(move || held.hold_for_backup()).await??;
    let database = partial.join(DATABASE_FILE);
    store
        .snapshot_into(&database)
        .await
        .context("copying the database")?;
    let copy = SqliteStore::open(&database).await?;
    let tally = copy.tally().await?;
    let hashes = copy.kept_photos().await?;
    let projection = copy.projection().await?.map(|p| p.version().to_string());
    copy.checkpoint().await?;
    copy.close().await;
    let target = partial.clone();
    let photo_bytes =
        tokio::task::spawn_blocking(move || copy_photos(&photos, &target, &hashes)).await??;
    drop(hold);
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at_ms: now_ms(),
        classes: tally.classes,
        exemplars: tally.exemplars,
        photos: tally.photos,
        features_only: tally.features_only,
        head: tally.head,
        projection,
        photo_bytes,
    };
    write_durably(
        &partial.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    sync_dir(&partial)?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    sync_dir(parent)?;
    Ok(manifest)
}

/// Reads and checks a backup's manifest.
pub fn read_manifest(backup: &Path) -> anyhow::Result<Manifest> {
    let path = backup.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a backup written by `exemplar backup`?)",
            path.display(),
            backup.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(
        manifest.format == FORMAT,
        "{} is a backup of format `{}`; this version reads `{FORMAT}`",
        backup.display(),
        manifest.format
    );
    Ok(manifest)
}

/// Restores the backup in `backup` into the data directory `dir`, which must hold no
/// catalogue. Checks the database (SQLite's integrity check, the manifest's counts) and
/// every photo against its hash. The caller owns `dir` (holds its lock).
pub async fn restore(backup: &Path, dir: &Path) -> anyhow::Result<Manifest> {
    let manifest = read_manifest(backup)?;
    let database = dir.join(DATABASE_FILE);
    ensure!(
        !database.exists(),
        "{} already holds a catalogue: restore into an empty data directory",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!("{DATABASE_FILE}.partial"));
    std::fs::copy(backup.join(DATABASE_FILE), &partial)
        .with_context(|| format!("copying {}", backup.join(DATABASE_FILE).display()))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &database)?;
    sync_dir(dir)?;
    let store = SqliteStore::open(&database).await?;
    store.integrity_check().await?;
    let found = store.tally().await?;
    ensure!(
        found == manifest.tally(),
        "the restored database holds {found:?}, the backup's manifest says {:?}",
        manifest.tally()
    );
    let hashes = store.kept_photos().await?;
    store.close().await;
    let from = photo_reader(backup)?;
    let to = dir.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || copy_photos(&from, &to, &hashes)).await??;
    ensure!(
        copied == manifest.photo_bytes,
        "{copied} bytes of photos restored, the manifest says {}",
        manifest.photo_bytes
    );
    Ok(manifest)
}
