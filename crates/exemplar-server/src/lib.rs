//! The `exemplar` command line (and, next, the HTTP server): configuration, telemetry and
//! the commands that wire the domain core to the embedding pipeline.

pub mod alloc;
pub mod cli;
pub mod commands;
pub mod data_dir;
pub mod http;
pub mod progress;
pub mod serve;
pub mod telemetry;
