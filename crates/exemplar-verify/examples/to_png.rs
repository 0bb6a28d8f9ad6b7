//! Writes a downscaled PNG copy of an image (for looking at evaluation cases).
//!
//!     cargo run -p exemplar-verify --example to_png -- IN OUT.png [MAX_SIDE]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let max: u32 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(480);
    image::open(&args[0])
        .unwrap()
        .thumbnail(max, max)
        .save(&args[1])
        .unwrap();
}
