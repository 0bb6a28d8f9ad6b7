//! Progress on stderr: a live bar on a terminal, a line every 10 % otherwise (CI logs).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    total: u64,
    done: u64,
    last_decile: u64,
    start: Instant,
}

impl Progress {
    pub fn new(label: &'static str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(label);
            bar
        });
        Self {
            bar,
            label,
            total: total as u64,
            done: 0,
            last_decile: 0,
            start: Instant::now(),
        }
    }

    pub fn advance(&mut self, n: usize) {
        self.done += n as u64;
        match &self.bar {
            Some(bar) => bar.inc(n as u64),
            None => {
                let decile = self.done * 10 / self.total.max(1);
                if decile > self.last_decile {
                    self.last_decile = decile;
                    let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("{}: {}/{} ({rate:.1}/s)", self.label, self.done, self.total);
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
