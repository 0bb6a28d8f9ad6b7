//! An import manifest (`label,image,...` CSV): any bytes give a plan or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let _ = exemplar_server::commands::import::plan_manifest(file.path());
});
