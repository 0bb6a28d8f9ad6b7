//! `exemplar train`: learn the descriptor head on a running server's catalogue (through
//! `/admin/train`, following its progress) or on a folder of images (written to a file).

use super::admin::Client;
use super::eval::embed_views_of_files;
use crate::cli::TrainArgs;
use crate::progress::Progress;
use anyhow::{bail, Context};
use exemplar_core::FeatureExtractor;
use exemplar_embed::CnnEmbedder;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

pub fn from_folder(embedder: &CnnEmbedder, folder: &Path, args: &TrainArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .as_deref()
        .context("--out is needed with a folder")?;
    let started = Instant::now();
    let paths = exemplar_eval::images_under(folder)?;
    let needed = exemplar_core::Projection::min_samples_for(crate::cli::DESCRIPTOR_DIM);
    if paths.len() < needed {
        bail!(
            "a {}-d head starts from a PCA of the photos, which needs at least {needed} photos; {} has {}",
            crate::cli::DESCRIPTOR_DIM,
            folder.display(),
            paths.len()
        );
    }
    let features = super::eval::embed_all(embedder, &paths)?;
    let views = embed_views_of_files(embedder, &paths, &args.settings)?;
    let mut progress = Progress::new("training", args.settings.epochs);
    let (head, report) = crate::training::learn(
        features.into_iter().map(|f| f.0).collect(),
        views,
        crate::cli::DESCRIPTOR_DIM,
        &args.settings,
        |_| {
            progress.advance(1);
            std::ops::ControlFlow::Continue(())
        },
    )?;
    progress.finish();
    head.save(out)?;
    let mut report = serde_json::to_value(&report)?;
    report.as_object_mut().expect("object").remove("history");
    println!(
        "{}",
        json!({
            "images": paths.len(),
            "model": embedder.info().id,
            "projection": head.version(),
            "written": out.display().to_string(),
            "improves": report["learned"]["at_1"].as_f64() > report["base"]["at_1"].as_f64(),
            "report": report,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

fn finished(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("switched" | "kept" | "cancelled" | "failed" | "idle")
    )
}

pub fn on_server(args: &TrainArgs) -> anyhow::Result<()> {
    let job = &args.job;
    let client = Client::new(&job.server, job.api_key.as_deref(), "/admin/train");
    if client.status_or_cancel(job)?.is_some() {
        return Ok(());
    }
    let s = &args.settings;
    let body = json!({
        "views": s.views,
        "loss": s.loss,
        "epochs": s.epochs,
        "seed": s.seed,
        "max_exemplars": s.max_exemplars,
        "install": args.install,
    });
    let status = client.call("POST", Some(&body))?;
    eprintln!(
        "training on {} exemplars, {} views each",
        status["exemplars"], s.views
    );
    if job.detach {
        println!("{status}");
        return Ok(());
    }
    let status = client.follow(
        status,
        "embedding views",
        ("views_done", "views_total"),
        finished,
    )?;
    println!("{status}");
    match status["state"].as_str() {
        Some("switched" | "kept") => Ok(()),
        _ => bail!(
            "training failed: {}",
            status["error"].as_str().unwrap_or("no error text")
        ),
    }
}
