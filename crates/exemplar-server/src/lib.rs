//! The `exemplar` binary: configuration, telemetry, the HTTP server and the commands that
//! compose the domain core with its adapters (embedding, verification, index, store).

pub mod alloc;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod data_dir;
pub mod dto;
pub mod http;
pub mod model;
pub mod progress;
pub mod reindex;
pub mod replica;
pub mod serve;
pub mod telemetry;
pub mod train_job;
pub mod training;
