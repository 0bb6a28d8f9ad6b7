mod bench;
mod bench_words;
mod classes;
mod classify;
mod eval;
mod feature_cache;
pub mod import;
mod search;

use crate::cli::{Cli, Command};
use anyhow::Context;
use exemplar_embed::CnnEmbedder;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args, load(&cli.model)?),
        Command::Import(args) => import::run(load(&cli.model)?, &args),
        Command::Search {
            images,
            k,
            filter,
            crop,
            catalogue,
        } => search::run(load(&cli.model)?, &images, k, &filter, crop, &catalogue),
        Command::Classes { data_dir } => classes::run(&data_dir),
        Command::Classify {
            mut images,
            manifest,
            samples,
            golden,
        } => {
            if samples {
                use exemplar_embed::fetch::{wheel_file, SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
                images.push(wheel_file(&SKIMAGE_CHELSEA)?);
                images.push(wheel_file(&SKIMAGE_COFFEE)?);
            }
            classify::run(
                &load(&cli.model)?,
                &images,
                manifest.as_deref(),
                golden.as_deref(),
            )
        }
        Command::BenchWords(args) => bench_words::run(&args),
        Command::Eval(args) => eval::run(&load(&cli.model)?, &args),
        Command::Calibrate(args) => eval::calibrate(&load(&cli.model)?, &args),
        Command::FetchWeights => {
            let embedder = load(&cli.model)?;
            println!("{}", exemplar_core::FeatureExtractor::info(&embedder).id);
            Ok(())
        }
        Command::Bench {
            batch,
            seconds,
            random_weights,
            passes_from_stdin,
        } => {
            let embedder = if random_weights {
                let weights = exemplar_embed::models::SyntheticWeights::new(0, false);
                CnnEmbedder::from_weights(cli.model.embedder_config(), &weights, "random")?
            } else {
                load(&cli.model)?
            };
            let passes = if passes_from_stdin {
                bench::Passes::FromStdin
            } else {
                bench::Passes::For { seconds }
            };
            bench::run(&embedder, batch, passes)
        }
    }
}

fn load(model: &crate::cli::ModelArgs) -> anyhow::Result<CnnEmbedder> {
    let config = model.embedder_config();
    let started = std::time::Instant::now();
    let embedder =
        CnnEmbedder::load(config).with_context(|| format!("loading model {}", model.model))?;
    tracing::info!(model = %exemplar_core::FeatureExtractor::info(&embedder).id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
    Ok(embedder)
}
