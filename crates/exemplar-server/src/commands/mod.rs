mod bench;
mod classify;
mod eval;

use crate::cli::{Cli, Command};
use anyhow::Context;
use exemplar_embed::CnnEmbedder;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Classify {
            images,
            manifest,
            golden,
        } => classify::run(&load(&cli.model)?, &images, manifest.as_deref(), golden.as_deref()),
        Command::Eval(args) => eval::run(&load(&cli.model)?, &args),
        Command::Bench { batch, seconds } => bench::run(&load(&cli.model)?, batch, seconds),
    }
}

fn load(model: &crate::cli::ModelArgs) -> anyhow::Result<CnnEmbedder> {
    let config = model.embedder_config();
    let started = std::time::Instant::now();
    let embedder = CnnEmbedder::load(config).with_context(|| format!("loading model {}", model.model))?;
    tracing::info!(model = %exemplar_core::FeatureExtractor::info(&embedder).id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
    Ok(embedder)
}
