//! Single-thread GFLOP/s of the packed-weight product against the `gemm` crate on layer
//! shapes: `matmul_timing [M K N]...` (default: shapes from ResNet-50 and Lite0).
//! `COPIES=N`: rotate among N copies of the weights (cold, as in a network); `THREADS=N`.
use exemplar_nhwc::{multiply, Finish, PackedMatrix};
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let (t, mut n) = (Instant::now(), 0);
        while t.elapsed().as_secs_f64() < 0.2 {
            f();
            n += 1;
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    best
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes: Vec<(usize, usize, usize)> = if args.len() >= 3 {
        args.chunks_exact(3).map(|c| (c[0], c[1], c[2])).collect()
    } else {
        vec![
            (227, 576, 64),
            (196, 1024, 256),
            (196, 256, 1024),
            (49, 4608, 512),
            (1568, 24, 144),
            (196, 112, 672),
            (3136, 64, 256),
        ]
    };
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
        // COPIES=N rotates among N copies of the weights, as a network's layers do
        // (weights then come from L3 or memory, not L1/L2); THREADS=N shares the rows.
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        let copies: usize = env("COPIES").unwrap_or(1);
        let threads: usize = env("THREADS").unwrap_or(1);
        let packed: Vec<_> = (0..copies).map(|_| PackedMatrix::pack(&b, k, n)).collect();
        let mut dst = vec![0f32; m * n];
        let mut next = 0;
        let ours = time(|| {
            next = (next + 1) % copies;
            multiply(
                &mut dst,
                n,
                &a,
                k,
                m,
                &packed[next],
                Finish::default(),
                threads,
            )
        });
        let theirs = time(|| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        });
        let flop = 2.0 * (m * k * n) as f64;
        println!(
            "{m}x{k}x{n}: packed {:.1} GFLOP/s, gemm {:.1} GFLOP/s ({:.2}x)",
            flop / ours / 1e9,
            flop / theirs / 1e9,
            theirs / ours
        );
    }
}
