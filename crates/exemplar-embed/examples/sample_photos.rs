//! Prints the paths of the two sample photos (fetching them once), for `scripts/run.sh`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in [
        exemplar_embed::fetch::SKIMAGE_CHELSEA,
        exemplar_embed::fetch::SKIMAGE_COFFEE,
    ] {
        println!("{}", exemplar_embed::fetch::wheel_file(&file)?.display());
    }
    Ok(())
}
