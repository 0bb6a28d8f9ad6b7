//! A legacy torch `.pth` weights file (a user's file): any bytes give tensors or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(
    init: {
        // The reader contains the panics of Candle's pickle machine (see `read_pickle`);
        // libFuzzer's hook would abort on those before they are caught. A panic that
        // escapes the reader still aborts the run.
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(data).unwrap();
        let _ = exemplar_embed::legacy_pth::read_legacy_pth(file.path());
    }
);
