//! Grows a catalogue to a given number of exemplars with stand-ins made from the ones it
//! holds, to measure the service (rebuilds, refits, searches) at a size the photo sets
//! here do not reach. Run it with the server stopped.
//!
//! ```sh
//! cargo run --release -p exemplar-server --example grow_catalogue -- DATA_DIR 100000 \
//!     --raw-from /dvdcovers/ --raw-from /holidays/ --local-from /holidays/
//! ```
//!
//! Each added exemplar is a new point made from two real photos, so stand-ins are as
//! varied as photos are and none repeats another:
//!
//! - its raw CNN feature is a random mix (weights 0.3–0.7) of the features of two
//!   exemplars whose class labels contain a `--raw-from` text, plus Gaussian noise of a
//!   tenth of its norm; its descriptor is that feature through the catalogue's current
//!   projection, as the service makes it (it competes for the global shortlist);
//! - its local features are half the keypoints of one exemplar whose label contains a
//!   `--local-from` text and half of another's (scaled to the first one's frame): real
//!   descriptors, so real posting lists for the visual words, but no geometry that
//!   verifies against a query of a catalogued item when those photos are unrelated to
//!   the queries — the right answer stays the same.
//!
//! Stand-ins come in classes of `--per-class` exemplars (default 10), labelled `grown/N`,
//! and `--seed` makes the same catalogue again.

use anyhow::{bail, Context};
use exemplar_core::catalogue::{CatalogueStore, ClassRecord, Metadata, NewExemplar};
use exemplar_core::descriptor::PooledFeature;
use exemplar_core::rng::SplitMix64;
use exemplar_server::data_dir::DATABASE_FILE;
use exemplar_store::SqliteStore;
use exemplar_verify::{Descriptors, Keypoint, LocalFeatures};
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    dir: PathBuf,
    target: usize,
    raw_from: Vec<String>,
    local_from: Vec<String>,
    per_class: usize,
    seed: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut args = Args {
        dir: PathBuf::new(),
        target: 0,
        raw_from: Vec::new(),
        local_from: Vec::new(),
        per_class: 10,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--raw-from" => args.raw_from.push(value()?),
            "--local-from" => args.local_from.push(value()?),
            "--per-class" => args.per_class = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            _ => positional.push(a),
        }
    }
    let [dir, target] = positional.as_slice() else {
        bail!("usage: grow_catalogue DATA_DIR TARGET_EXEMPLARS [--raw-from TEXT]... [--local-from TEXT]... [--per-class N] [--seed N]");
    };
    args.dir = PathBuf::from(dir);
    args.target = target.parse().context("TARGET_EXEMPLARS")?;
    anyhow::ensure!(args.per_class > 0, "--per-class must be at least 1");
    Ok(args)
}

fn below(stream: &mut SplitMix64, n: usize) -> usize {
    (stream.next_u64() % n as u64) as usize
}

fn unit(stream: &mut SplitMix64) -> f32 {
    (stream.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// Two different items of `items` (the same one when there is only one).
fn two<'a, T>(stream: &mut SplitMix64, items: &'a [T]) -> (&'a T, &'a T) {
    let a = below(stream, items.len());
    let b = (a + 1 + below(stream, items.len().max(2) - 1)) % items.len();
    (&items[a], &items[b])
}

/// A random mix of two raw features, with a little noise.
fn mix_raw(stream: &mut SplitMix64, a: &[f32], b: &[f32]) -> Vec<f32> {
    let w = 0.3 + 0.4 * unit(stream);
    let mixed: Vec<f32> = a
        .iter()
        .zip(b)
        .map(|(x, y)| w * x + (1.0 - w) * y)
        .collect();
    let norm = mixed.iter().map(|x| x * x).sum::<f32>().sqrt();
    let scale = 0.1 * norm / (mixed.len() as f32).sqrt();
    mixed
        .iter()
        .map(|x| x + scale * stream.next_gaussian() as f32)
        .collect()
}

/// Half of `a`'s keypoints and half of `b`'s (moved into `a`'s frame), encoded.
fn mix_local(stream: &mut SplitMix64, a: &[u8], b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (a, b) = (LocalFeatures::from_bytes(a)?, LocalFeatures::from_bytes(b)?);
    let (Descriptors::Sift(da), Descriptors::Sift(db)) = (&a.descriptors, &b.descriptors) else {
        bail!("only SIFT features are mixed");
    };
    let (sx, sy) = (
        a.width as f32 / b.width.max(1) as f32,
        a.height as f32 / b.height.max(1) as f32,
    );
    let mut keypoints = Vec::new();
    let mut descriptors = Vec::new();
    for (i, k) in a.keypoints.iter().enumerate() {
        if stream.next_u64() & 1 == 0 {
            keypoints.push(*k);
            descriptors.push(da[i]);
        }
    }
    for (i, k) in b.keypoints.iter().enumerate() {
        if stream.next_u64() & 1 == 0 {
            keypoints.push(Keypoint {
                x: k.x * sx,
                y: k.y * sy,
                ..*k
            });
            descriptors.push(db[i]);
        }
    }
    Ok(LocalFeatures {
        keypoints,
        descriptors: Descriptors::Sift(descriptors),
        ..a
    }
    .to_bytes())
}

async fn all_classes(store: &SqliteStore) -> anyhow::Result<Vec<ClassRecord>> {
    let mut out: Vec<ClassRecord> = Vec::new();
    loop {
        let page = store
            .list_classes(out.last().map_or(0, |c| c.id), 1000, &Default::default())
            .await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let store = SqliteStore::open(&args.dir.join(DATABASE_FILE)).await?;
    let projection = store
        .projection()
        .await?
        .context("the catalogue has no projection yet: add its photos first")?;
    let have = store.exemplar_count().await?;
    if have >= args.target {
        println!("{have} exemplars already: nothing to add");
        return Ok(());
    }

    let (mut raw_ids, mut local_ids, mut model) = (Vec::new(), Vec::new(), None);
    for class in all_classes(&store).await? {
        let raw = args.raw_from.iter().any(|t| class.label.contains(t));
        let local = args.local_from.iter().any(|t| class.label.contains(t));
        if !(raw || local) {
            continue;
        }
        let (_, exemplars) = store.class(class.id).await?.context("class vanished")?;
        for e in exemplars {
            model.get_or_insert(e.model.clone());
            if raw {
                raw_ids.push(e.id);
            }
            if local {
                local_ids.push(e.id);
            }
        }
    }
    let raws = store.raw_features(Some(&raw_ids)).await?;
    let locals = store.local_features(&local_ids).await?;
    anyhow::ensure!(
        !raws.is_empty() && !locals.is_empty(),
        "no exemplar matches --raw-from ({}) or --local-from ({})",
        raws.len(),
        locals.len()
    );
    let model = model.context("no source exemplar")?;
    println!(
        "{have} exemplars; growing to {} from {} raw features and {} local feature sets",
        args.target,
        raws.len(),
        locals.len()
    );

    let mut stream = SplitMix64::new(args.seed);
    let started = Instant::now();
    let mut added = 0usize;
    let mut class_number = 0usize;
    while have + added < args.target {
        let count = args.per_class.min(args.target - have - added);
        let mut exemplars = Vec::with_capacity(count);
        let mut sources = Vec::with_capacity(count);
        for _ in 0..count {
            let (raw_a, raw_b) = two(&mut stream, &raws);
            let (local_a, local_b) = two(&mut stream, &locals);
            let pooled = PooledFeature(mix_raw(&mut stream, &raw_a.1, &raw_b.1));
            exemplars.push(NewExemplar {
                sha256: format!("{:064x}", have + added + exemplars.len()),
                original_name: None,
                descriptor: projection.apply(&pooled)?,
                raw_feature: pooled.0,
                model: model.clone(),
                projection: projection.version().to_string(),
                local_features: Some(mix_local(&mut stream, &local_a.1, &local_b.1)?),
                photo_kept: false,
            });
            sources.push(format!(
                "{}+{}/{}+{}",
                raw_a.0, raw_b.0, local_a.0, local_b.0
            ));
        }
        let metadata = Metadata::from([("grown_from".to_string(), sources.join(" "))]);
        store
            .create_class(&format!("grown/{class_number}"), &metadata, &exemplars)
            .await?;
        class_number += 1;
        added += count;
        if class_number.is_multiple_of(1000) {
            println!(
                "{} exemplars ({:.0} added/s)",
                have + added,
                added as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "added {added} exemplars in {class_number} classes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
