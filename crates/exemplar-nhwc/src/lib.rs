//! The fast CPU engine: feature maps in NHWC (channels last) and the few kernels the
//! backbones are made of.
//!
//! Candle's CPU convolution unfolds NCHW maps (im2col) into a fresh buffer per layer,
//! runs one matrix product per image and adds bias and activation in further passes,
//! each allocating; its grouped convolution runs one tiny convolution per channel. With
//! channels last, a 1x1 convolution *is* a matrix product over all pixels of the batch,
//! a k x k one unfolds into contiguous runs of channels, and a depthwise one vectorises
//! over channels. Each convolution here splits its output rows into tiles spread over
//! the threads (a pass's team, see [`team`], or the rayon pool); a tile is unfolded,
//! multiplied by weights packed once at load ([`PackedMatrix`]) and finished (bias,
//! residual, activation) while it is in cache.
//!
//! Vector code is compiled for SSE2…AVX-512 and chosen at run time (`pulp`); the
//! AVX-512 register blocks are assembly. Every `unsafe` block says why it is sound.

#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_arch = "x86_64")]
mod block_avx512;
mod channel_split;
mod conv;
mod depthwise;
mod expand_depthwise;
mod matmul;
mod max_pool;
pub mod team;
mod winograd;

pub use channel_split::{inverted_bottleneck_by_channels, ChannelShares};
pub use conv::{conv2d, ConvSpec};
pub use depthwise::depthwise_conv2d;
pub use expand_depthwise::{
    expand_depthwise, inverted_bottleneck, DepthwiseSpec, Expansion, Projection,
};
pub use matmul::{multiply, Finish, PackedMatrix};
pub use max_pool::max_pool2d;
pub use winograd::{winograd_conv3x3, worth_it as winograd_worth_it, WinogradWeights};

use candle_core::{Device, Result, Tensor};

/// A batch of feature maps, `batch x height x width x channels`, row-major. Its buffer
/// goes back to [`buffers`] when it is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    /// From Candle's `(batch, channels, height, width)`.
    pub fn from_nchw(t: &Tensor) -> Result<Self> {
        let (_, channels, height, width) = t.dims4()?;
        let per_image = (channels * height * width).max(1);
        // Straight from the tensor's storage: Candle's permute-then-copy walks a strided
        // index per value (0.6 ms of a 15 ms Lite0 pass for one 224x224 input).
        with_f32_values(t, |nchw| {
            let images: Vec<&[f32]> = nchw.chunks_exact(per_image).collect();
            Self::from_chw_images(&images, channels, height, width)
        })
    }

    /// The batch of `images`, each `channels x height x width` (CHW, as prepared for
    /// the network).
    ///
    /// # Panics
    /// When an image does not hold `channels x height x width` values.
    pub fn from_chw_images(
        images: &[&[f32]],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Self {
        let pixels = height * width;
        let per_image = channels * pixels;
        assert!(
            images.iter().all(|image| image.len() == per_image),
            "images do not hold {channels} x {height} x {width} values"
        );
        let mut data = buffers::take(images.len() * per_image);
        if per_image > 0 {
            // A network's RGB input: shares of pixels on every thread, each pixel written
            // whole from the three planes (the serial copy was 1-2 % of a batch-1 pass).
            const SHARE: usize = 4096;
            let share = if channels > 4 { pixels } else { SHARE };
            // (image, its first pixel, the pixels' output): every image's shares at once.
            let shares: Vec<(&[f32], usize, &mut [f32])> = data
                .chunks_mut(per_image)
                .zip(images)
                .flat_map(|(hwc, chw)| {
                    hwc.chunks_mut(share * channels)
                        .enumerate()
                        .map(move |(i, out)| (*chw, i * share, out))
                })
                .collect();
            team::for_each(shares, |(chw, first, out)| {
                if channels > 4 {
                    transpose(chw, out, channels, pixels);
                } else {
                    interleave(chw, pixels, first, out);
                }
            });
        }
        Self {
            batch: images.len(),
            height,
            width,
            channels,
            data,
        }
    }

    /// To Candle's `(batch, channels, height, width)`, contiguous.
    pub fn to_nchw(&self) -> Result<Tensor> {
        let pixels = self.height * self.width;
        // In blocks (see `transpose`): reading each channel's values one by one along
        // the map touches a new cache line per value.
        let mut nchw = vec![0f32; self.data.len()];
        let per_image = (pixels * self.channels).max(1);
        for (hwc, chw) in self
            .data
            .chunks_exact(per_image)
            .zip(nchw.chunks_exact_mut(per_image))
        {
            transpose(hwc, chw, pixels, self.channels);
        }
        let shape = (self.batch, self.channels, self.height, self.width);
        Tensor::from_vec(nchw, shape, &Device::Cpu)
    }

    /// The same values as [`FeatureMap::to_nchw`] without copying them: a
    /// `(batch, channels, height, width)` view of the channels-last buffer. Pooling
    /// reads it as it lies ([`with_channels_last_values`]); a transpose
    /// of Lite0's last map, then pooling it channel by channel, cost 0.14 ms of serial
    /// time per pass.
    pub fn into_nchw_view(mut self) -> Result<Tensor> {
        let data = std::mem::take(&mut self.data);
        let shape = (self.batch, self.height, self.width, self.channels);
        Tensor::from_vec(data, shape, &Device::Cpu)?.permute((0, 3, 1, 2))
    }

    /// One map per image of the batch.
    pub fn split_images(&self) -> Vec<FeatureMap> {
        let per_image = self.height * self.width * self.channels;
        self.data
            .chunks_exact(per_image.max(1))
            .map(|image| {
                let mut data = buffers::take(image.len());
                data.copy_from_slice(image);
                FeatureMap {
                    batch: 1,
                    data,
                    ..*self
                }
            })
            .collect()
    }

    /// The batch of `maps` (all of one size), in order.
    ///
    /// # Panics
    /// When `maps` is empty or their sizes differ.
    pub fn concat_images(maps: &[FeatureMap]) -> FeatureMap {
        let first = &maps[0];
        let total = maps.iter().map(|m| m.data.len()).sum();
        let mut data = buffers::take(total);
        let mut at = 0;
        for m in maps {
            assert_eq!(
                (m.height, m.width, m.channels),
                (first.height, first.width, first.channels),
                "maps of one batch have one size"
            );
            data[at..at + m.data.len()].copy_from_slice(&m.data);
            at += m.data.len();
        }
        FeatureMap {
            batch: maps.iter().map(|m| m.batch).sum(),
            data,
            ..*first
        }
    }

    /// Pixels over the whole batch: the rows of the map seen as a matrix.
    pub fn pixels(&self) -> usize {
        self.batch * self.height * self.width
    }
}

impl Drop for FeatureMap {
    fn drop(&mut self) {
        buffers::recycle(std::mem::take(&mut self.data));
    }
}

/// Recycled buffers for feature maps. A forward pass frees and allocates maps of the
/// same few sizes layer after layer; a fresh allocation of megabytes comes from the
/// system as untouched pages, and faulting them in costs more than the layer's
/// arithmetic (measured: batch 8 ran slower per image than batch 1 before this).
pub(crate) mod buffers {
    use std::sync::Mutex;

    /// At most this many buffers and this many floats are kept: a pass holds about
    /// three maps at once (input, expanded, residual) but Lite0 has a dozen sizes of
    /// them, each of which should find its own buffer again in the next pass.
    const MAX_BUFFERS: usize = 24;
    const MAX_FLOATS: usize = 48 << 20;
    /// Smaller buffers come cheaply from the allocator's own free lists.
    const MIN_FLOATS: usize = 16 << 10;

    static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

    /// A buffer of `len` floats. A recycled buffer keeps its old values (clearing
    /// megabytes costs a pass over memory): callers overwrite every element.
    pub fn take(len: usize) -> Vec<f32> {
        let mut buffer = if len < MIN_FLOATS {
            Vec::new()
        } else {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            // Growing a buffer's length past what it last held writes zeros over the
            // difference: a buffer that held at least `len` values comes first, then
            // the smallest that has the room. A buffer twice the size or more stays for
            // a larger map: handing it to a small one shortens it, and the next pass's
            // first layers then cleared megabytes (3 % of a Lite0 pass at batch 1).
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| (len..2 * len).contains(&b.capacity()))
                .min_by_key(|(_, b)| (b.len() < len, b.capacity()))
                .map(|(i, _)| i);
            best.map(|i| free.remove(i)).unwrap_or_default()
        };
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        buffer
    }

    pub fn recycle(buffer: Vec<f32>) {
        if buffer.capacity() < MIN_FLOATS || buffer.capacity() > MAX_FLOATS {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: the buffers a pass no longer asks for leave first.
        free.push(buffer);
        let mut total: usize = free.iter().map(Vec::capacity).sum();
        while free.len() > MAX_BUFFERS || total > MAX_FLOATS {
            total -= free.remove(0).capacity();
        }
    }
}

/// Pixels `first..` of a CHW image (`pixels` per channel plane) into `out`,
/// channels-last, as many as `out` holds.
fn interleave(chw: &[f32], pixels: usize, first: usize, out: &mut [f32]) {
    let channels = chw.len() / pixels;
    let n = out.len() / channels;
    if channels == 3 {
        let plane = |c: usize| &chw[c * pixels + first..c * pixels + first + n];
        for (((pixel, r), g), b) in out
            .chunks_exact_mut(3)
            .zip(plane(0))
            .zip(plane(1))
            .zip(plane(2))
        {
            pixel.copy_from_slice(&[*r, *g, *b]);
        }
    } else {
        for (p, pixel) in out.chunks_exact_mut(channels).enumerate() {
            for (c, value) in pixel.iter_mut().enumerate() {
                *value = chw[c * pixels + first + p];
            }
        }
    }
}

/// `dst = src^T` for a row-major `rows x cols` matrix, in 8 x 8 blocks held in
/// registers, so that both sides are read and written whole cache lines at a time.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    const B: usize = 8;
    let (whole_rows, whole_cols) = (rows / B * B, cols / B * B);
    for r0 in (0..whole_rows).step_by(B) {
        for c0 in (0..whole_cols).step_by(B) {
            let block: [[f32; B]; B] = std::array::from_fn(|i| {
                let at = (r0 + i) * cols + c0;
                src[at..at + B].try_into().expect("B values")
            });
            let columns: [[f32; B]; B] = std::array::from_fn(|j| block.map(|row| row[j]));
            for (j, column) in columns.iter().enumerate() {
                let at = (c0 + j) * rows + r0;
                dst[at..at + B].copy_from_slice(column);
            }
        }
    }
    // The edges: columns past the whole blocks, then rows past them.
    for r in 0..rows {
        let first = if r < whole_rows { whole_cols } else { 0 };
        for c in first..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// `data` cut into consecutive parts of `lengths` (what is left after them, dropped):
/// one `&mut` part per thread's share of a layer's output.
///
/// # Panics
/// When the lengths add up to more than `data` holds.
pub(crate) fn split_lengths<T>(
    mut data: &mut [T],
    lengths: impl IntoIterator<Item = usize>,
) -> Vec<&mut [T]> {
    lengths
        .into_iter()
        .map(|len| {
            let (part, rest) = std::mem::take(&mut data).split_at_mut(len);
            data = rest;
            part
        })
        .collect()
}

/// The first `len` floats of a worker's reusable buffer, grown but never shrunk: a
/// `Vec` resized down and up again writes zeros over the difference every time (1 % of
/// a Lite0 pass). The old values stay; callers overwrite what they read.
pub(crate) fn scratch(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Zero padding of a convolution or pooling window, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pads {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pads {
    pub fn output_size(&self, h: usize, w: usize, kernel: usize, stride: usize) -> (usize, usize) {
        (
            (h + self.top + self.bottom - kernel) / stride + 1,
            (w + self.left + self.right - kernel) / stride + 1,
        )
    }
}

/// The input pixels a window at output coordinate `o` covers along one axis: the first
/// kernel tap inside the map, the input coordinate of tap 0 (may be negative) and the
/// number of taps inside.
#[inline(always)]
fn taps(
    o: usize,
    stride: usize,
    pad_before: usize,
    kernel: usize,
    size: usize,
) -> (usize, isize, usize) {
    let start = (o * stride) as isize - pad_before as isize;
    let first = (-start).max(0) as usize;
    let end = (start + kernel as isize).min(size as isize);
    let count = (end - start - first as isize).max(0) as usize;
    (first, start, count)
}

/// The instruction set the kernels run with: the best this CPU has, unless a test forces
/// a narrower one ([`instruction_sets::on_every_one`]).
fn arch() -> pulp::Arch {
    #[cfg(test)]
    if let Some(forced) = instruction_sets::forced() {
        return forced;
    }
    pulp::Arch::new()
}

/// Kernel tests run on every instruction set the CPU has, each forced in turn, and say
/// loudly which they could not run here (the AVX-512 blocks are assembly: only a CPU
/// with AVX-512 tests them).
#[cfg(test)]
pub(crate) mod instruction_sets {
    use std::io::Write;
    use std::sync::Mutex;

    static FORCED: Mutex<Option<pulp::Arch>> = Mutex::new(None);
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    pub(crate) fn forced() -> Option<pulp::Arch> {
        *FORCED.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` while no other test forces an instruction set: for tests that compare two
    /// computations exactly or closely (the kernels round differently on each set).
    pub(crate) fn exclusive<R>(f: impl FnOnce() -> R) -> R {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    /// Runs `test` with the best instruction set, then with each narrower one this CPU
    /// has forced on every kernel (scalar, AVX2, AVX-512 on x86-64), alone among the
    /// tests that do the same (a set forced midway would mix roundings). Other tests
    /// running meanwhile take the forced set too; each set computes correct results.
    pub(crate) fn on_every_one(name: &str, test: impl Fn()) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        test();
        let mut sets = vec![("scalar", Some(pulp::Arch::Scalar))];
        #[cfg(target_arch = "x86_64")]
        {
            sets.push(("AVX2", pulp::x86::V3::try_new().map(pulp::Arch::V3)));
            sets.push((
                "AVX-512 (with the assembly blocks)",
                pulp::x86::V4::try_new().map(pulp::Arch::V4),
            ));
        }
        for (set, arch) in sets {
            let Some(arch) = arch else {
                // Straight to stderr: the test harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** {name}: NOT TESTED on {set}: this CPU does not have it ***\n"
                );
                continue;
            };
            *FORCED.lock().unwrap_or_else(|e| e.into_inner()) = Some(arch);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&test));
            *FORCED.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if let Err(panic) = result {
                let _ = writeln!(std::io::stderr(), "{name} failed on {set}");
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Calls `f` with a tensor's values in row-major order: borrowed from the tensor when it
/// is a contiguous f32 tensor on the CPU (no copy: 0.6 MB for one 224x224 input),
/// copied out otherwise.
pub fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Ok(values) = cpu.as_slice::<f32>() {
                return Ok(f(&values[start..end]));
            }
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// Calls `f` with a `(batch, channels, height, width)` tensor's values when they lie
/// channels-last in memory (`batch x height x width x channels`, row-major: the
/// engine's feature maps, see [`FeatureMap::into_nchw_view`]); `None` for any other
/// layout.
pub fn with_channels_last_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (b, c, h, w) = t.dims4().ok()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let values = cpu.as_slice::<f32>().ok()?;
    let start = layout.start_offset();
    let len = b * h * w * c;
    (layout.stride() == [h * w * c, 1, w * c, c] && start + len <= values.len())
        .then(|| f(&values[start..start + len]))
}

/// The largest absolute difference between two tensors of one shape (kernel tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    (got - want)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("f32 tensors on the CPU")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_round_trip_keeps_every_value_in_place() {
        let t = Tensor::arange(0f32, 2. * 3. * 4. * 5., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        let map = FeatureMap::from_nchw(&t).unwrap();
        assert_eq!(
            (map.batch, map.height, map.width, map.channels),
            (2, 4, 5, 3)
        );
        // Image 1, row 2, column 3, channel 1 is NCHW index ((1*3+1)*4+2)*5+3.
        let nhwc = ((4 + 2) * 5 + 3) * 3 + 1;
        assert_eq!(map.data[nhwc], (((3 + 1) * 4 + 2) * 5 + 3) as f32);
        let back = map.to_nchw().unwrap();
        assert_eq!(max_abs_diff(&back, &t), 0.0);
    }

    #[test]
    fn nchw_conversions_match_candles_permute_past_whole_tiles() {
        // 20 channels and 7 x 5 pixels: neither side a multiple of the 8 x 8 block;
        // 16 channels and 4 x 8 pixels: whole blocks only; 3 channels (an RGB input: its
        // own path); a tensor that is a strided view of another (not read in place).
        let t = Tensor::arange(0f32, 2. * 20. * 7. * 5., &Device::Cpu)
            .unwrap()
            .reshape((2, 20, 7, 5))
            .unwrap();
        let rgb = t.narrow(1, 4, 3).unwrap().contiguous().unwrap();
        let strided = t.transpose(2, 3).unwrap();
        let whole = Tensor::arange(0f32, 16. * 32., &Device::Cpu)
            .unwrap()
            .reshape((1, 16, 4, 8))
            .unwrap();
        for t in [t, rgb, strided, whole] {
            let map = FeatureMap::from_nchw(&t).unwrap();
            let want: Vec<f32> = t
                .permute((0, 2, 3, 1))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(map.data, want, "{:?}", t.shape());
            assert_eq!(max_abs_diff(&map.to_nchw().unwrap(), &t), 0.0);
        }
    }

    #[test]
    fn a_batch_split_into_images_and_joined_again_is_unchanged() {
        let t = Tensor::arange(0f32, 3. * 2. * 4. * 5., &Device::Cpu)
            .unwrap()
            .reshape((3, 2, 4, 5))
            .unwrap();
        let batch = FeatureMap::from_nchw(&t).unwrap();
        let images = batch.split_images();
        assert_eq!(images.len(), 3);
        let second = FeatureMap::from_nchw(&t.narrow(0, 1, 1).unwrap()).unwrap();
        assert_eq!(images[1], second);
        assert_eq!(FeatureMap::concat_images(&images), batch);
    }

    #[test]
    fn recycled_buffers_never_leak_old_values_into_results() {
        instruction_sets::exclusive(recycled_buffers_are_written_anew);
    }

    fn recycled_buffers_are_written_anew() {
        let x = FeatureMap {
            batch: 1,
            height: 64,
            width: 64,
            channels: 8,
            data: (0..64 * 64 * 8).map(|i| (i % 13) as f32 - 6.0).collect(),
        };
        let weight: Vec<f32> = (0..9 * 8).map(|i| (i % 5) as f32 * 0.1).collect();
        let bias = vec![0.5f32; 8];
        let one = Pads {
            top: 1,
            left: 1,
            bottom: 1,
            right: 1,
        };
        let run = || depthwise_conv2d(&x, &weight, &bias, (3, 1), one, None);
        let clean = run();
        for _ in 0..8 {
            // Poisoned buffers of the output's size go back to the pool...
            drop(FeatureMap {
                data: vec![f32::NAN; clean.data.len()],
                ..x.clone()
            });
        }
        // ...and whichever the next map gets, every value is written anew.
        assert_eq!(run(), clean);
        let spec = ConvSpec {
            kernel: 3,
            stride: 1,
            pads: one,
            clamp: None,
        };
        let dense_weight: Vec<f32> = (0..9 * 8 * 8).map(|i| (i % 7) as f32 * 0.01).collect();
        let dense_weight = PackedMatrix::pack(&dense_weight, 9 * 8, 8);
        let dense = conv2d(&x, &dense_weight, &bias, &spec, None);
        drop(FeatureMap {
            data: vec![f32::NAN; dense.data.len()],
            ..x.clone()
        });
        assert_eq!(conv2d(&x, &dense_weight, &bias, &spec, None), dense);
        assert!(dense.data.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn taps_cover_only_the_inside_of_the_map() {
        // 3 taps, stride 1, one pixel of padding, width 5.
        assert_eq!(taps(0, 1, 1, 3, 5), (1, -1, 2));
        assert_eq!(taps(2, 1, 1, 3, 5), (0, 1, 3));
        assert_eq!(taps(4, 1, 1, 3, 5), (0, 3, 2));
        // Stride 2, TF "SAME" padding after only.
        assert_eq!(taps(2, 2, 0, 3, 5), (0, 4, 1));
    }
}
