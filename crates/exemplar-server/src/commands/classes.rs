//! `exemplar classes`: the data directory's classes, straight from the database.

use crate::data_dir::existing_database;
use crate::dto::Class;
use exemplar_core::catalogue::CatalogueStore;
use exemplar_store::SqliteStore;
use serde_json::json;
use std::path::Path;

pub fn run(data_dir: &Path) -> anyhow::Result<()> {
    let database = existing_database(data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = SqliteStore::open(&database).await?;
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = store.list_classes(after, 1000, &Default::default()).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            all.extend(page.iter().map(Class::from));
        }
        println!("{:>8}  {:>9}  label  metadata", "id", "exemplars");
        for class in &all {
            println!(
                "{:>8}  {:>9}  {}  {}",
                class.id,
                class.exemplar_count,
                class.label,
                serde_json::to_string(&class.metadata)?
            );
        }
        let exemplars: i64 = all.iter().map(|c| c.exemplar_count).sum();
        let tally = store.tally().await?;
        let models = store.models().await?;
        let projection = store.projection().await?.map(|p| p.version().to_string());
        println!(
            "{} classes, {exemplars} exemplars ({} with features only, {} photos kept)",
            all.len(),
            tally.features_only,
            tally.photos
        );
        for (model, count) in &models {
            println!("model {model}: {count} exemplars");
        }
        println!("projection {}", projection.as_deref().unwrap_or("none yet"));
        let models: serde_json::Map<String, serde_json::Value> =
            models.into_iter().map(|(m, n)| (m, json!(n))).collect();
        println!(
            "{}",
            json!({"classes": all.len(), "exemplars": exemplars, "features_only": tally.features_only,
                   "photos": tally.photos, "models": models, "projection": projection, "list": all})
        );
        Ok(())
    })
}
