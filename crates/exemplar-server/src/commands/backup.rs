//! `exemplar backup` (beside a running server) and `exemplar restore` (into an empty data
//! directory, then checked by searching with the restored photos).

use crate::backup::{restore, write_backup, Manifest};
use crate::cli::{CatalogueArgs, ModelArgs};
use crate::data_dir::{
    catalogue_model, existing_database, open_catalogue, photo_reader, save_index, DataDirLock,
};
use crate::model::load;
use anyhow::ensure;
use exemplar_core::catalogue::{CatalogueStore, ClassId, Metadata};
use exemplar_core::service::{Upload, Verdict};
use exemplar_store::SqliteStore;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

fn print_manifest(what: &str, path: &Path, m: &Manifest) {
    println!(
        "{what} {}: {} classes, {} exemplars ({} with features only), {} photos ({:.1} MB with thumbnails), change {}",
        path.display(),
        m.classes,
        m.exemplars,
        m.features_only,
        m.photos,
        m.photo_bytes as f64 / 1e6,
        m.head
    );
}

pub fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let database = existing_database(data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = SqliteStore::open(&database).await?;
        let manifest = write_backup(&store, photo_reader(data_dir)?, out).await?;
        print_manifest("backed up to", out, &manifest);
        println!("{}", json!({ "backup": out, "manifest": manifest }));
        Ok(())
    })
}

/// What searching with restored photos found.
#[derive(Debug, serde::Serialize)]
struct SearchCheck {
    searched: usize,
    /// The photo found its own exemplar (or a class holding the same bytes).
    found: usize,
    missed: Vec<i64>,
}

pub fn run_restore(
    flags: &ModelArgs,
    backup: &Path,
    searches: usize,
    args: &CatalogueArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.database.is_none(),
        "a backup restores into a SQLite data directory; a PostgreSQL catalogue is restored with pg_restore"
    );
    let dir = &args.dir.data_dir;
    std::fs::create_dir_all(dir)?;
    let lock = DataDirLock::acquire(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let manifest = restore(backup, dir).await?;
        print_manifest("restored", dir, &manifest);
        // A re-indexed catalogue names its own model.
        let model = catalogue_model(dir, None, flags).await?;
        let embedder = tokio::task::block_in_place(|| load(&model))?;
        let local = model.local_features();
        let catalogue = open_catalogue(args, Arc::new(embedder), local.as_ref()).await?;
        let photos = photo_reader(dir)?;
        let kept: Vec<_> = catalogue
            .store()
            .exemplar_hashes()
            .await?
            .into_iter()
            .filter(|e| e.photo_kept)
            .collect();
        let mut held: HashMap<ClassId, HashSet<String>> = HashMap::new();
        let mut hash_of = HashMap::new();
        for e in &kept {
            held.entry(e.class).or_default().insert(e.sha256.clone());
            hash_of.insert(e.id, e.sha256.clone());
        }
        let picked: Vec<_> = (0..searches.min(kept.len()))
            .map(|i| &kept[i * kept.len() / searches.min(kept.len())])
            .collect();
        let mut check = SearchCheck {
            searched: 0,
            found: 0,
            missed: Vec::new(),
        };
        for e in picked {
            let bytes = photos.photo(&e.sha256)?.unwrap_or_default();
            let answer = catalogue
                .search(&Upload::new(bytes, None), 1, &Metadata::new())
                .await?;
            let top_is_it = answer
                .neighbours
                .first()
                .is_some_and(|n| hash_of.get(&n.exemplar_id) == Some(&e.sha256));
            let named_is_it = matches!(&answer.verdict, Verdict::Match { class_id, .. }
                if held.get(class_id).is_some_and(|h| h.contains(&e.sha256)));
            check.searched += 1;
            if top_is_it || named_is_it {
                check.found += 1;
            } else {
                check.missed.push(e.id);
            }
        }
        save_index(&catalogue, dir).await?;
        drop(lock);
        println!(
            "searched {} restored photos: {} found their own exemplar",
            check.searched, check.found
        );
        println!(
            "{}",
            json!({ "restored": dir, "manifest": manifest, "searches": check })
        );
        ensure!(
            check.missed.is_empty(),
            "the restored catalogue did not find exemplars {:?} by their own photos",
            check.missed
        );
        Ok(())
    })
}
