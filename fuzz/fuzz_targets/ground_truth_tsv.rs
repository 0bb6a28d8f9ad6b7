//! An evaluation's `groundtruth.tsv`: any bytes give a ground truth or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groundtruth.tsv");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(data)
        .unwrap();
    let _ = exemplar_eval::GroundTruth::load(&path);
});
