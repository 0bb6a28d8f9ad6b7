//! The `exemplar` binary as a user runs it: the CLI commands, and the HTTP service on
//! port 0 with a temp data dir, both with the real EfficientNet-Lite0 weights; and the
//! catalogue service as the server composes it (real store, indexes and verifier).

mod cli;
mod common;
mod console;
mod crash;
mod harness;
mod hostile;
mod http;
mod photos;
mod reindex;
mod replicas;
mod train;
mod unknowns;
mod words;
