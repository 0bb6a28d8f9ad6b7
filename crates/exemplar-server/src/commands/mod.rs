mod admin;
mod backup;
mod bench;
mod bench_index;
mod bench_train;
mod bench_words;
mod classes;
mod classify;
mod eval;
mod feature_cache;
pub mod import;
mod reindex;
mod search;
mod train;

use crate::cli::{CatalogueArgs, Cli, Command, ModelArgs};
use crate::data_dir::catalogue_model;
use crate::model::load;
use exemplar_embed::CnnEmbedder;

/// The model settings for the catalogue (see [`catalogue_model`]).
fn model_for(catalogue: &CatalogueArgs, flags: &ModelArgs) -> anyhow::Result<ModelArgs> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(catalogue_model(
            &catalogue.dir.data_dir,
            catalogue.database.as_deref(),
            flags,
        ))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let local = cli.model.local_features();
    match cli.command {
        Command::Serve(args) => {
            let model = model_for(&args.catalogue, &cli.model)?;
            crate::serve::run(args, load(&model)?, model)
        }
        Command::Import(args) => {
            let model = model_for(&args.catalogue, &cli.model)?;
            import::run(load(&model)?, model.local_features(), &args)
        }
        Command::Search {
            images,
            k,
            filter,
            crop,
            catalogue,
        } => {
            let model = model_for(&catalogue, &cli.model)?;
            search::run(
                load(&model)?,
                model.local_features(),
                &images,
                k,
                &filter,
                crop,
                &catalogue,
            )
        }
        Command::Reindex(args) => reindex::run(&args, &cli.model, &reindex::explicit_model_flags()),
        Command::Train(args) => match &args.folder {
            Some(folder) => train::from_folder(&load(&cli.model)?, folder, &args),
            None => train::on_server(&args),
        },
        Command::Classes { dir } => classes::run(&dir.data_dir),
        Command::Backup { out, dir } => backup::backup(&dir.data_dir, &out),
        Command::Restore {
            backup,
            searches,
            catalogue,
        } => backup::run_restore(&cli.model, &backup, searches, &catalogue),
        Command::Classify {
            mut images,
            manifest,
            samples,
            golden,
        } => {
            if samples {
                use exemplar_embed::fetch::{wheel_file, SKIMAGE_CHELSEA, SKIMAGE_COFFEE};
                let cache = cli.model.weight_sources().cache_dir;
                images.push(wheel_file(&SKIMAGE_CHELSEA, &cache)?);
                images.push(wheel_file(&SKIMAGE_COFFEE, &cache)?);
            }
            classify::run(
                &load(&cli.model)?,
                &images,
                manifest.as_deref(),
                golden.as_deref(),
            )
        }
        Command::BenchIndex(args) => bench_index::run(&args),
        Command::BenchWords(args) => bench_words::run(&args),
        Command::BenchTrain(args) => bench_train::run(&args),
        Command::Eval(args) => eval::run(&load(&cli.model)?, local.as_ref(), &args),
        Command::Calibrate(args) => eval::calibrate(&load(&cli.model)?, local.as_ref(), &args),
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
                let embedder =
                    CnnEmbedder::from_weights(cli.model.embedder_config(), &weights, "random")?;
                crate::model::with_local_features(embedder, &cli.model)
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
