//! Photos kept as files under the data directory, named by their sha256:
//! `photos/ab/abcd…` (the bytes as sent) and `photos/ab/abcd….thumb.jpg` (the thumbnail),
//! in 256 sub-folders so none grows too large.
//!
//! Each file is written under a temporary name, synced, renamed into place and its folder
//! synced: a crash leaves either no file or a whole one, and a photo that `put` returned
//! for is on disk. Files are never changed in place (a name is its content's hash).

use exemplar_core::photos::{PhotoError, PhotoStore};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Makes a thumbnail (JPEG bytes) from a photo's bytes.
pub type Thumbnailer = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The folder under a data directory that holds its photos.
pub const PHOTOS_DIR: &str = "photos";

const THUMBNAIL_SUFFIX: &str = ".thumb.jpg";

/// Locked shared by backups while they copy, exclusively by each removal.
const BACKUP_LOCK: &str = ".backup.lock";

/// While held (by a backup copying the photos, in any process), no photo is removed: a
/// removal fails with `WouldBlock`, and the catalogue retries it at its next collection.
pub struct BackupHold(#[allow(dead_code)] File);

pub struct FsPhotoStore {
    root: PathBuf,
    thumbnailer: Thumbnailer,
}

/// A sha256 in lower-case hex: the only names this store makes or reads.
pub fn is_photo_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn bad_hash(hash: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("`{hash}` is not a photo hash"),
    )
}

impl FsPhotoStore {
    /// The photo store of a data directory (created when missing).
    pub fn open(data_dir: &Path, thumbnailer: Thumbnailer) -> io::Result<Self> {
        let root = data_dir.join(PHOTOS_DIR);
        fs::create_dir_all(&root)?;
        Ok(Self { root, thumbnailer })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the photo with this hash is (whether or not it is there).
    pub fn photo_path(&self, hash: &str) -> io::Result<PathBuf> {
        if !is_photo_hash(hash) {
            return Err(bad_hash(hash));
        }
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    pub fn thumbnail_path(&self, hash: &str) -> io::Result<PathBuf> {
        let mut path = self.photo_path(hash)?;
        path.set_file_name(format!("{hash}{THUMBNAIL_SUFFIX}"));
        Ok(path)
    }

    /// Holds removals off until dropped (see [`BackupHold`]); waits for a removal under way.
    pub fn hold_for_backup(&self) -> io::Result<BackupHold> {
        let lock = self.backup_lock()?;
        lock.lock_shared()?;
        Ok(BackupHold(lock))
    }

    fn backup_lock(&self) -> io::Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(BACKUP_LOCK))
    }

    /// Keeps a photo with a thumbnail made elsewhere (a backup being written or restored).
    pub fn put_with_thumbnail(&self, hash: &str, photo: &[u8], thumbnail: &[u8]) -> io::Result<()> {
        write_durably(&self.thumbnail_path(hash)?, thumbnail)?;
        write_durably(&self.photo_path(hash)?, photo)
    }

    /// The photo's bytes; `None` when it is not kept.
    pub fn photo(&self, hash: &str) -> io::Result<Option<Vec<u8>>> {
        read_if_there(&self.photo_path(hash)?)
    }

    /// The thumbnail's JPEG bytes; `None` when it is not kept.
    pub fn thumbnail(&self, hash: &str) -> io::Result<Option<Vec<u8>>> {
        read_if_there(&self.thumbnail_path(hash)?)
    }
}

fn read_if_there(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` at `path` whole or not at all, durably.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let folder = path.parent().expect("photo paths have a folder");
    fs::create_dir_all(folder)?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let partial = folder.join(format!(".{name}.partial"));
    let mut file = File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&partial, path)?;
    File::open(folder)?.sync_all()
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl PhotoStore for FsPhotoStore {
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), PhotoError> {
        let photo = self.photo_path(sha256)?;
        let thumbnail = self.thumbnail_path(sha256)?;
        if !thumbnail.exists() {
            let small = (self.thumbnailer)(bytes).map_err(PhotoError::Thumbnail)?;
            write_durably(&thumbnail, &small)?;
        }
        if !photo.exists() {
            write_durably(&photo, bytes)?;
        }
        Ok(())
    }

    fn remove(&self, sha256: &str) -> Result<(), PhotoError> {
        let lock = self.backup_lock()?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PhotoError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "a backup is copying the photos",
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        remove_if_there(&self.photo_path(sha256)?)?;
        remove_if_there(&self.thumbnail_path(sha256)?)?;
        Ok(())
    }

    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, PhotoError> {
        Ok(self.photo(sha256)?)
    }

    /// Every hash with a photo or a thumbnail (a removal cut short leaves one of them).
    /// Partial files of writes cut short are deleted on the way.
    fn list(&self) -> Result<Vec<String>, PhotoError> {
        let mut hashes = Vec::new();
        for folder in fs::read_dir(&self.root)? {
            let folder = folder?;
            if !folder.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(folder.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".partial") {
                    remove_if_there(&file.path())?;
                    continue;
                }
                let hash = name.strip_suffix(THUMBNAIL_SUFFIX).unwrap_or(&name);
                if is_photo_hash(hash) {
                    hashes.push(hash.to_string());
                }
            }
        }
        hashes.sort();
        hashes.dedup();
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_thumbnail(bytes: &[u8]) -> Result<Vec<u8>, String> {
        if bytes.is_empty() {
            return Err("empty".into());
        }
        Ok(bytes[..1].to_vec())
    }

    const HASH: &str = "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";

    #[test]
    fn a_photo_is_kept_with_its_thumbnail_listed_once_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsPhotoStore::open(dir.path(), Box::new(fake_thumbnail)).unwrap();
        store.put(HASH, b"photo").unwrap();
        store.put(HASH, b"photo").unwrap();
        assert_eq!(store.photo(HASH).unwrap().as_deref(), Some(&b"photo"[..]));
        assert_eq!(store.thumbnail(HASH).unwrap().as_deref(), Some(&b"p"[..]));
        assert_eq!(store.list().unwrap(), vec![HASH.to_string()]);
        store.remove(HASH).unwrap();
        store.remove(HASH).unwrap();
        assert_eq!(store.photo(HASH).unwrap(), None);
        assert_eq!(store.thumbnail(HASH).unwrap(), None);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_lone_thumbnail_is_listed_and_partial_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsPhotoStore::open(dir.path(), Box::new(fake_thumbnail)).unwrap();
        store.put(HASH, b"photo").unwrap();
        fs::remove_file(store.photo_path(HASH).unwrap()).unwrap();
        let partial = store.root().join("00").join(format!(".{HASH}.partial"));
        fs::write(&partial, b"half").unwrap();
        assert_eq!(store.list().unwrap(), vec![HASH.to_string()]);
        assert!(!partial.exists());
    }

    #[test]
    fn no_photo_is_removed_while_a_backup_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsPhotoStore::open(dir.path(), Box::new(fake_thumbnail)).unwrap();
        store.put(HASH, b"photo").unwrap();
        let hold = store.hold_for_backup().unwrap();
        let refused = store.remove(HASH).unwrap_err();
        assert!(
            matches!(&refused, PhotoError::Io(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{refused}"
        );
        assert!(store.photo(HASH).unwrap().is_some());
        drop(hold);
        store.remove(HASH).unwrap();
        assert!(store.photo(HASH).unwrap().is_none());
    }

    #[test]
    fn names_other_than_hashes_are_refused_and_a_bad_photo_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsPhotoStore::open(dir.path(), Box::new(fake_thumbnail)).unwrap();
        assert!(store.photo("../../etc/passwd").is_err());
        assert!(store.put(&HASH.to_uppercase(), b"x").is_err());
        assert!(matches!(
            store.put(HASH, b""),
            Err(PhotoError::Thumbnail(_))
        ));
        assert!(store.list().unwrap().is_empty());
    }
}
