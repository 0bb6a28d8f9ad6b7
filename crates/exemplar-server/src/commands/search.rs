//! `exemplar search`: what `POST /search` answers, from the command line, for each photo.
//! It reads the data directory (index dump + the database's newer changes) and writes
//! nothing, so it can run beside a server that owns the directory.

use crate::cli::CatalogueArgs;
use crate::data_dir::{existing_database, open_catalogue};
use crate::dto::{SearchResult, SearchVerdict, VerificationEvidence};
use anyhow::{bail, Context};
use exemplar_core::catalogue::Metadata;
use exemplar_core::service::Upload;
use exemplar_core::CropBox;
use exemplar_embed::CnnEmbedder;
use exemplar_verify::ExtractParams;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

pub fn run(
    embedder: CnnEmbedder,
    local: Option<ExtractParams>,
    images: &[PathBuf],
    k: usize,
    filters: &[String],
    crop: Option<CropBox>,
    args: &CatalogueArgs,
) -> anyhow::Result<()> {
    existing_database(&args.dir.data_dir)?;
    let filters = parse_filters(filters)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let catalogue = open_catalogue(args, Arc::new(embedder), local.as_ref()).await?;
        let mut answers = Vec::new();
        for path in images {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let upload = Upload {
                crop,
                ..Upload::new(
                    bytes,
                    path.file_name().map(|n| n.to_string_lossy().into_owned()),
                )
            };
            let answer = catalogue
                .search(&upload, k, &filters)
                .await
                .with_context(|| format!("searching with {}", path.display()))?;
            let result = SearchResult::from(&answer);
            print_answer(path, &result);
            answers.push(json!({"image": path.display().to_string(), "result": result}));
        }
        println!("{}", json!({ "searches": answers }));
        Ok(())
    })
}

fn parse_filters(filters: &[String]) -> anyhow::Result<Metadata> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some((key, value)) => Ok((key.trim().to_string(), value.trim().to_string())),
            None => bail!("--filter must be key=value, got `{f}`"),
        })
        .collect()
}

fn print_answer(path: &std::path::Path, result: &SearchResult) {
    let inliers = |e: &Option<VerificationEvidence>| {
        e.as_ref()
            .map_or(String::new(), |e| format!(", {} inliers", e.inliers))
    };
    match &result.verdict {
        SearchVerdict::Match {
            class_id,
            label,
            score,
            evidence,
            ..
        } => println!(
            "{}: match {label:?} (class {class_id}, score {score:.3}{})",
            path.display(),
            inliers(evidence)
        ),
        SearchVerdict::Unknown {
            best_score,
            best_inliers,
            ..
        } => println!(
            "{}: unknown (best score {}{})",
            path.display(),
            best_score.map_or("-".into(), |s| format!("{s:.3}")),
            best_inliers.map_or(String::new(), |n| format!(", most inliers {n}"))
        ),
    }
    for class in result.classes.iter().take(5) {
        println!(
            "  {:.3}  {} (class {}, {} of the neighbours{})",
            class.score,
            class.label,
            class.class_id,
            class.support,
            inliers(&class.evidence)
        );
    }
}
