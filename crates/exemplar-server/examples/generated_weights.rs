//! Writes generated (random, seeded) weights for an architecture to a `.safetensors` file,
//! in the naming `--weights` reads: a stand-in for a real checkpoint where none can be
//! fetched (re-index runs and benchmarks without the Hugging Face hub).
//!
//!     cargo run --release --example generated_weights -- resnet18 /tmp/resnet18.safetensors

use exemplar_embed::models::SyntheticWeights;
use exemplar_embed::Architecture;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(architecture), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: generated_weights ARCHITECTURE OUT.safetensors");
    };
    let architecture: Architecture = architecture.parse()?;
    let weights = SyntheticWeights::new(5, true);
    // Building asks for every tensor the architecture has: they are made on the way.
    architecture.build(&weights)?;
    candle_core::safetensors::save(&weights.tensors().into_iter().collect(), &out)?;
    println!("{out}");
    Ok(())
}
