//! Times the NHWC kernels on one layer shape: `kernel_timing dw|conv|convr|wino|fused H W C [K S COUT]`
//! (`convr`: a convolution with a residual of the output's shape added, as in a ResNet
//! block's last layer; `wino`: a 3x3 stride-1 convolution by Winograd F(4x4, 3x3);
//! `fused`: a 1x1 expansion from C to COUT channels and a K x K depthwise layer in one
//! pass). Prints the median and the fastest of 500 calls.
use exemplar_nhwc::{
    conv2d, depthwise_conv2d, expand_depthwise, winograd_conv3x3, ConvSpec, DepthwiseSpec,
    Expansion, FeatureMap, PackedMatrix, Pads, WinogradWeights,
};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (h, w, c, k, s, cout) = (
        num(2, 112),
        num(3, 112),
        num(4, 32),
        num(5, 3),
        num(6, 1),
        num(7, 96),
    );
    let x = synthetic_map(h, w, c, 17);
    let pad = k / 2;
    let pads = Pads {
        top: pad,
        left: pad,
        bottom: pad,
        right: pad,
    };
    let dw_w: Vec<f32> = (0..k * k * c).map(|i| (i % 7) as f32 * 0.01).collect();
    let bias = vec![0.1f32; c];
    let cw: Vec<f32> = (0..k * k * c * cout)
        .map(|i| (i % 7) as f32 * 0.01)
        .collect();
    let cw = PackedMatrix::pack(&cw, k * k * c, cout);
    let cb = vec![0.1f32; cout];
    let spec = ConvSpec {
        kernel: k,
        stride: s,
        pads,
        clamp: Some((0.0, 6.0)),
    };
    // `convr`: a residual of the output's shape added before the activation.
    let (oh, ow) = pads.output_size(h, w, k, s);
    let residual = synthetic_map(oh, ow, cout, 13);
    let wino = (a[1] == "wino").then(|| WinogradWeights::new(&cw));
    // The fused layer's expansion is 1x1 (C to COUT) and its depthwise layer K x K.
    let expand = PackedMatrix::pack(
        &(0..c * cout)
            .map(|i| (i % 7) as f32 * 0.01)
            .collect::<Vec<_>>(),
        c,
        cout,
    );
    let fused_dw: Vec<f32> = (0..k * k * cout).map(|i| (i % 7) as f32 * 0.01).collect();
    let run = || match a[1].as_str() {
        "wino" => drop(winograd_conv3x3(
            &x,
            wino.as_ref().unwrap(),
            &cb,
            pads,
            Some((0.0, 6.0)),
            None,
        )),
        "dw" => drop(depthwise_conv2d(
            &x,
            &dw_w,
            &bias,
            (k, s),
            pads,
            Some((0.0, 6.0)),
        )),
        "fused" => drop(expand_depthwise(
            &x,
            &Expansion {
                weight: &expand,
                bias: &cb,
                clamp: Some((0.0, 6.0)),
            },
            &DepthwiseSpec {
                weight: &fused_dw,
                bias: &cb,
                kernel: k,
                stride: s,
                pads,
                clamp: Some((0.0, 6.0)),
            },
        )),
        "convr" => drop(conv2d(&x, &cw, &cb, &spec, Some(&residual))),
        _ => drop(conv2d(&x, &cw, &cb, &spec, None)),
    };
    for _ in 0..20 {
        run();
    }
    // Per-call times: the median, and the fastest (the machine is shared: a call that
    // overlapped another tenant's work is slower for reasons of its own).
    let mut times: Vec<f64> = (0..500)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "{} {h}x{w}x{c} k{k} s{s}: {:.3} ms median, {:.3} fastest",
        a[1],
        times[times.len() / 2],
        times[0]
    );
}

/// A one-image `h x w x c` map of small repeating values (period `period`).
fn synthetic_map(h: usize, w: usize, c: usize, period: usize) -> FeatureMap {
    FeatureMap {
        batch: 1,
        height: h,
        width: w,
        channels: c,
        data: (0..h * w * c).map(|i| (i % period) as f32 * 0.1).collect(),
    }
}
