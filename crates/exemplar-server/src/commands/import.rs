//! `exemplar import`: classes from a folder or a CSV manifest, straight into a data
//! directory, through the same catalogue service as `POST /classes`.
//!
//! Resumable: an image whose bytes (sha256) are already in its class is skipped before
//! the model sees it, so rerunning an interrupted or partly failed import only does the
//! rest. Each image is its own write, so one bad photo costs only itself.

use crate::cli::ImportArgs;
use crate::data_dir::{
    collect_orphan_photos, open_catalogue, save_index, AppCatalogue, DataDirLock,
};
use crate::progress::Progress;
use anyhow::{bail, Context};
use exemplar_core::catalogue::{CatalogueStore, ClassId, Metadata};
use exemplar_core::service::{ServiceError, Upload};
use exemplar_embed::CnnEmbedder;
use exemplar_eval::images_under;
use exemplar_verify::ExtractParams;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One class to create (or extend, when a class with this label exists).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedClass {
    pub label: String,
    pub metadata: Metadata,
    pub images: Vec<PathBuf>,
}

/// Sub-folders are classes named after them; images directly in `dir` are classes of
/// one, named after the file stem.
pub fn plan_folder(dir: &Path) -> anyhow::Result<Vec<PlannedClass>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut plan = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            let mut images = images_under(&path)?;
            images.sort();
            if !images.is_empty() {
                plan.push(PlannedClass {
                    label: name,
                    metadata: Metadata::new(),
                    images,
                });
            }
        } else if exemplar_eval::is_image_path(&path) {
            let label = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(name);
            plan.push(PlannedClass {
                label,
                metadata: Metadata::new(),
                images: vec![path],
            });
        }
    }
    if plan.is_empty() {
        bail!("no images in {}", dir.display());
    }
    // `cat/` and `cat.png` side by side are one class (classes import concurrently, so
    // two plans with one label would race to create it twice).
    let mut merged: Vec<PlannedClass> = Vec::with_capacity(plan.len());
    for class in plan {
        match merged.iter_mut().find(|c| c.label == class.label) {
            Some(same) => same.images.extend(class.images),
            None => merged.push(class),
        }
    }
    Ok(merged)
}

/// `label`, `image` and metadata columns; rows sharing a label form one class whose
/// metadata is the first row's (empty cells are left out).
pub fn plan_manifest(path: &Path) -> anyhow::Result<Vec<PlannedClass>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(label_at), Some(image_at)) = (column("label"), column("image")) else {
        bail!(
            "{}: the header needs `label` and `image` columns, found {:?}",
            path.display(),
            headers.iter().collect::<Vec<_>>()
        );
    };
    let mut plan: Vec<PlannedClass> = Vec::new();
    let mut by_label: HashMap<String, usize> = HashMap::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} row {}", path.display(), row + 2))?;
        let label = record.get(label_at).unwrap_or_default().trim().to_string();
        let image = record.get(image_at).unwrap_or_default().trim();
        if label.is_empty() || image.is_empty() {
            bail!(
                "{} row {}: `label` and `image` must not be empty",
                path.display(),
                row + 2
            );
        }
        let image = base.join(image);
        let at = *by_label.entry(label.clone()).or_insert_with(|| {
            let metadata = headers
                .iter()
                .zip(record.iter())
                .enumerate()
                .filter(|(i, (_, value))| *i != label_at && *i != image_at && !value.is_empty())
                .map(|(_, (key, value))| (key.trim().to_string(), value.to_string()))
                .collect();
            plan.push(PlannedClass {
                label,
                metadata,
                images: Vec::new(),
            });
            plan.len() - 1
        });
        plan[at].images.push(image);
    }
    if plan.is_empty() {
        bail!("{} has no rows", path.display());
    }
    Ok(plan)
}

#[derive(Default)]
struct Tally {
    added: usize,
    skipped: usize,
    duplicates: usize,
    classes_created: usize,
    failures: Vec<(PathBuf, String)>,
}

pub fn run(
    embedder: CnnEmbedder,
    local: Option<ExtractParams>,
    args: &ImportArgs,
) -> anyhow::Result<()> {
    let plan = match (&args.dir, &args.manifest) {
        (Some(dir), None) => plan_folder(dir)?,
        (None, Some(manifest)) => plan_manifest(manifest)?,
        _ => bail!("give either a folder or --manifest FILE.csv"),
    };
    let wants_local = local.as_ref().map(|params| params.kind);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = &args.catalogue.dir.data_dir;
        let _lock = DataDirLock::acquire(dir)?;
        let catalogue = open_catalogue(&args.catalogue, Arc::new(embedder), local.as_ref()).await?;
        if !args.catalogue.shares_photos() {
            collect_orphan_photos(&catalogue, &_lock).await?;
        }
        let existing = existing_classes(&catalogue).await?;
        // An exemplar without local features, or with features of another kind, is redone
        // when they are made now; so is one without its photo when photos are kept.
        let keeps_photos = catalogue.keeps_photos();
        let done: HashSet<(ClassId, String)> = catalogue
            .store()
            .exemplar_hashes()
            .await?
            .into_iter()
            .filter(|e| e.photo_kept || !keeps_photos)
            .filter(|e| match wants_local {
                None => true,
                Some(kind) => e
                    .local_format
                    .as_deref()
                    .is_some_and(|f| exemplar_verify::stored_kind(f) == Some(kind)),
            })
            .map(|e| (e.class, e.sha256))
            .collect();
        let total: usize = plan.iter().map(|c| c.images.len()).sum();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let progress = Arc::new(Mutex::new(Progress::new("import", total)));
        let shared = Arc::new((existing, done));
        let limit = Arc::new(tokio::sync::Semaphore::new(args.jobs.max(1)));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for class in plan {
            let permit = limit.clone().acquire_owned().await?;
            let (catalogue, tally, progress, shared) = (
                catalogue.clone(),
                tally.clone(),
                progress.clone(),
                shared.clone(),
            );
            tasks.spawn(async move {
                let _permit = permit;
                import_class(&catalogue, class, &shared.0, &shared.1, &tally, &progress).await;
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("import task")?;
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Ok(p) = Arc::try_unwrap(progress) {
            p.into_inner().expect("progress lock").finish();
        }
        // A big import is when the projection first fits the catalogue.
        let refit = catalogue.refit_if_due().await?;
        if let Some(r) = &refit {
            println!(
                "projection refitted on {} exemplars in {:.1} s",
                r.fit_samples, r.seconds
            );
        }
        // ...and when the visual words are first fitted on it.
        if let Some(w) = catalogue.rebuild_words_if_due().await? {
            println!(
                "visual words {} fitted and {} exemplars indexed in {:.1} s",
                w.vocabulary, w.exemplars, w.seconds
            );
        }
        save_index(&catalogue, dir).await?;
        let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
        report(&tally, total, seconds, catalogue.indexed(), refit.is_some())
    })
}

/// Label → id of the classes already in the catalogue (the first, if labels repeat).
async fn existing_classes(catalogue: &AppCatalogue) -> anyhow::Result<HashMap<String, ClassId>> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let page = catalogue
            .store()
            .list_classes(after, 1000, &Default::default())
            .await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.id;
        for class in page {
            out.entry(class.label).or_insert(class.id);
        }
    }
}

async fn import_class(
    catalogue: &AppCatalogue,
    class: PlannedClass,
    existing: &HashMap<String, ClassId>,
    done: &HashSet<(ClassId, String)>,
    tally: &Mutex<Tally>,
    progress: &Mutex<Progress>,
) {
    let mut class_id = existing.get(&class.label).copied();
    for path in &class.images {
        let outcome = import_image(catalogue, &class, &mut class_id, path, done).await;
        let mut t = tally.lock().expect("tally lock");
        match outcome {
            Ok(ImageOutcome::Added { created }) => {
                t.added += 1;
                t.classes_created += created as usize;
            }
            Ok(ImageOutcome::AlreadyImported) => t.skipped += 1,
            Ok(ImageOutcome::Duplicate) => t.duplicates += 1,
            Err(reason) => t.failures.push((path.clone(), reason)),
        }
        drop(t);
        progress.lock().expect("progress lock").advance(1);
    }
}

enum ImageOutcome {
    Added { created: bool },
    AlreadyImported,
    Duplicate,
}

async fn import_image(
    catalogue: &AppCatalogue,
    class: &PlannedClass,
    class_id: &mut Option<ClassId>,
    path: &Path,
    done: &HashSet<(ClassId, String)>,
) -> Result<ImageOutcome, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if let Some(id) = *class_id {
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if done.contains(&(id, sha)) {
            return Ok(ImageOutcome::AlreadyImported);
        }
    }
    let upload = [Upload::new(
        bytes,
        path.file_name().map(|n| n.to_string_lossy().into_owned()),
    )];
    loop {
        let result = match *class_id {
            None => catalogue
                .add_class(&class.label, &class.metadata, &upload)
                .await
                .map(|(record, outcomes)| {
                    *class_id = Some(record.id);
                    (outcomes, true)
                }),
            Some(id) => catalogue
                .add_exemplars(id, &upload)
                .await
                .map(|outcomes| (outcomes, false)),
        };
        return match result {
            Ok((outcomes, _)) if outcomes.iter().all(|o| o.duplicate) => {
                Ok(ImageOutcome::Duplicate)
            }
            Ok((_, created)) => Ok(ImageOutcome::Added { created }),
            // The model's queue is full: wait rather than fail the image.
            Err(ServiceError::Busy(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => Err(e.to_string()),
        };
    }
}

fn report(
    tally: &Tally,
    total: usize,
    seconds: f64,
    indexed: usize,
    refitted: bool,
) -> anyhow::Result<()> {
    let rate = tally.added as f64 / seconds.max(1e-9);
    println!(
        "imported {} of {total} images in {seconds:.1} s ({rate:.1} images/s), {} new classes; \
         {} already imported, {} duplicates within a class, {} failed; {indexed} exemplars indexed",
        tally.added,
        tally.classes_created,
        tally.skipped,
        tally.duplicates,
        tally.failures.len()
    );
    for (path, reason) in &tally.failures {
        println!("  failed: {}: {reason}", path.display());
    }
    let failures: BTreeMap<String, &String> = tally
        .failures
        .iter()
        .map(|(p, r)| (p.display().to_string(), r))
        .collect();
    println!(
        "{}",
        json!({
            "images": total,
            "added": tally.added,
            "classes_created": tally.classes_created,
            "already_imported": tally.skipped,
            "duplicates": tally.duplicates,
            "failed": failures,
            "seconds": seconds,
            "images_per_second": rate,
            "indexed": indexed,
            "refitted": refitted,
        })
    );
    if !tally.failures.is_empty() {
        bail!(
            "{} of {total} images failed (listed above); rerun to retry them, the rest is skipped",
            tally.failures.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_files_become_classes_and_one_label_is_one_class() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("cat/more")).unwrap();
        for f in [
            "cat/a.jpg",
            "cat/more/b.png",
            "cat.png",
            "dog.jpg",
            "notes.txt",
            ".hidden.jpg",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let plan = plan_folder(root).unwrap();
        let labels: Vec<&str> = plan.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["cat", "dog"]);
        assert_eq!(plan[0].images.len(), 3, "{:?}", plan[0].images);
        assert!(plan_folder(&root.join("cat/more")).is_ok());
        let empty = tempfile::tempdir().unwrap();
        assert!(plan_folder(empty.path()).is_err());
    }

    #[test]
    fn manifest_rows_group_by_label_with_the_first_rows_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("m.csv");
        std::fs::write(
            &csv,
            "label,image,artist,format\nKind of Blue,a.jpg,Miles Davis,CD\nKind of Blue,b.jpg,,\nHelp!,c.jpg,The Beatles,\n",
        )
        .unwrap();
        let plan = plan_manifest(&csv).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(
            plan[0].images,
            [dir.path().join("a.jpg"), dir.path().join("b.jpg")]
        );
        assert_eq!(plan[0].metadata["format"], "CD");
        assert_eq!(
            plan[1].metadata.get("format"),
            None,
            "empty cells are left out"
        );
        std::fs::write(&csv, "name,path\nx,y\n").unwrap();
        let err = plan_manifest(&csv).unwrap_err().to_string();
        assert!(err.contains("`label` and `image`"), "{err}");
    }
}
