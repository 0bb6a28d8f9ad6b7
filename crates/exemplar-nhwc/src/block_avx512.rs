//! The AVX-512 inner loop of the matrix products, a block of 12 rows by one 32-column
//! panel, written in assembly.
//!
//! Why assembly: the same loop in Rust (`matmul::Block::rows`) keeps its 24 accumulators
//! in registers but not the 12 row addresses of the activations; the compiler recomputed
//! them at every step of `k` (11 additions per 24 multiply-adds), and ResNet-50's 1x1
//! convolutions ran 12-24 % behind ONNX Runtime's (whose kernel is assembly too). Three
//! other shapes of the Rust loop did no better. Here four base registers, one per group of
//! three rows, reach the rows by the addressing modes `[base]`, `[base + stride]` and
//! `[base + 2 * stride]`, and four steps of `k` are unrolled with constant offsets, so the
//! only integer work is six additions per four steps. A second loop does the same for a
//! single 16-column half (the narrow last panels of Lite0's layers, 12 x 16 blocks, with
//! the broadcast folded into each multiply-add).
//! Both have a narrow variant for a last half holding at most 8 columns (Lite0's 24 and
//! 40 channels): that half in 8-lane registers, whose multiply-adds cost half as much on
//! cores that split 16-lane ones in two; elsewhere the same count of instructions.

use core::arch::asm;
use core::arch::x86_64::__m512;

/// Rows of a block.
pub(super) const ROWS: usize = 12;
/// Floats per half panel row (one vector).
const HALF: usize = 16;

/// The accumulators of a block: two vectors (the panel's two halves) per row.
pub(super) type Accumulators = [[__m512; 2]; ROWS];

/// One step of `k` at byte offsets `$a` (activations) and `$b` (panel): two panel
/// vectors, then per row a broadcast and two multiply-adds. `$second` names the
/// registers of the second half: `zmm`, or `ymm` where it holds at most 8 columns.
#[rustfmt::skip] // one instruction per line
macro_rules! step_in {
    ($second:literal, $a:literal, $b:literal) => {
        concat!(
            "vmovups zmm24, [{b0} + ", $b, "]\n",
            "vmovups ", $second, "25, [{b1} + ", $b, "]\n",
            rows3!($second, "{a0}", $a, 0, 1, 2, 3, 4, 5),
            rows3!($second, "{a3}", $a, 6, 7, 8, 9, 10, 11),
            rows3!($second, "{a6}", $a, 12, 13, 14, 15, 16, 17),
            rows3!($second, "{a9}", $a, 18, 19, 20, 21, 22, 23),
        )
    };
}

macro_rules! step {
    ($a:literal, $b:literal) => {
        step_in!("zmm", $a, $b)
    };
}

macro_rules! narrow_step {
    ($a:literal, $b:literal) => {
        step_in!("ymm", $a, $b)
    };
}

/// One step of `k` with one line of each of the next slice's halves fetched into L2.
#[rustfmt::skip]
macro_rules! step_fetch {
    ($a:literal, $b:literal) => {
        concat!(
            "prefetcht1 byte ptr [{n0} + ", $b, "]\n",
            "prefetcht1 byte ptr [{n1} + ", $b, "]\n",
            step!($a, $b),
        )
    };
}

#[rustfmt::skip]
macro_rules! narrow_step_fetch {
    ($a:literal, $b:literal) => {
        concat!(
            "prefetcht1 byte ptr [{n0} + ", $b, "]\n",
            "prefetcht1 byte ptr [{n1} + ", $b, "]\n",
            narrow_step!($a, $b),
        )
    };
}

/// Three rows from one base register, `[base]`, `[base + stride]` and
/// `[base + 2 * stride]`, into accumulators `$c0`..`$c5` (two per row; the second of
/// each in `$second` registers).
#[rustfmt::skip]
macro_rules! rows3 {
    ($second:literal, $base:literal, $a:literal,
     $c0:literal, $c1:literal, $c2:literal, $c3:literal, $c4:literal, $c5:literal) => {
        concat!(
            "vbroadcastss zmm26, dword ptr [", $base, " + ", $a, "]\n",
            "vfmadd231ps zmm", $c0, ", zmm26, zmm24\n",
            "vfmadd231ps ", $second, $c1, ", ", $second, "26, ", $second, "25\n",
            "vbroadcastss zmm27, dword ptr [", $base, " + {s} + ", $a, "]\n",
            "vfmadd231ps zmm", $c2, ", zmm27, zmm24\n",
            "vfmadd231ps ", $second, $c3, ", ", $second, "27, ", $second, "25\n",
            "vbroadcastss zmm26, dword ptr [", $base, " + {s}*2 + ", $a, "]\n",
            "vfmadd231ps zmm", $c4, ", zmm26, zmm24\n",
            "vfmadd231ps ", $second, $c5, ", ", $second, "26, ", $second, "25\n",
        )
    };
}

/// `sum over k < kc of a[r * a_stride + k] * [first[k], second[k]]` for each row `r` of
/// the block, where `first` and `second` are the panel's halves (`kc` rows of 16 floats).
/// With `next`, one line of each of its two halves is also fetched into L2 per step of
/// `k` (the next slice of weights, asked for while this one computes; a fetch is a
/// hint, valid at any address). `narrow`: only the first 8 columns of `second` are
/// wanted (a narrow last panel: 24 columns, as Lite0's 24-channel layers); they are
/// multiplied as 8-lane vectors, whose multiply-adds cost half as much on cores that
/// split 16-lane ones in two, and the other 8 come out zero. `_avx512` proves
/// the CPU has AVX-512F and VL.
///
/// # Panics
/// When `a` holds fewer than 12 rows of `kc` or a half fewer than `kc` rows.
#[inline(always)]
pub(super) fn block(
    _avx512: pulp::x86::V4,
    a: &[f32],
    a_stride: usize,
    [first, second]: [&[f32]; 2],
    kc: usize,
    next: Option<[*const f32; 2]>,
    narrow: bool,
) -> Accumulators {
    assert!(a.len() >= (ROWS - 1) * a_stride + kc, "rows too short");
    assert!(first.len() >= kc * HALF && second.len() >= kc * HALF);
    let (a, halves) = (a.as_ptr(), [first.as_ptr(), second.as_ptr()]);
    // SAFETY: the token proves AVX-512F and VL; the asserts bound every read (row r
    // reads a[r * a_stride..][..kc], half h reads h[..kc * 16]).
    unsafe {
        match (next, narrow) {
            (None, false) => block_asm(a, a_stride, halves, kc),
            (None, true) => narrow_block_asm(a, a_stride, halves, kc),
            (Some(next), false) => block_fetch_asm(a, a_stride, halves, kc, next),
            (Some(next), true) => narrow_block_fetch_asm(a, a_stride, halves, kc, next),
        }
    }
}

/// The loop over `k` of both kinds of block: four steps at a time, then one at a time;
/// `$step` is the step, `$quad` and `$single` the further pointer advances after each
/// (the activations' four row bases and `{b0}` advance here), `$operands` the block's
/// own operands (`b0`, its accumulators, scratch registers).
macro_rules! k_loop {
    ($a:ident, $a_stride:ident, $kc:ident, $step:ident,
     [$($quad:literal),*], [$($single:literal),*], $($operands:tt)*) => {
        asm!(
            "test {quads}, {quads}",
            "jz 3f",
            "2:",
            $step!("0", "0"),
            $step!("4", "64"),
            $step!("8", "128"),
            $step!("12", "192"),
            "add {a0}, 16",
            "add {a3}, 16",
            "add {a6}, 16",
            "add {a9}, 16",
            "add {b0}, 256",
            $($quad,)*
            "dec {quads}",
            "jnz 2b",
            "3:",
            "test {rest}, {rest}",
            "jz 5f",
            "4:",
            $step!("0", "0"),
            "add {a0}, 4",
            "add {a3}, 4",
            "add {a6}, 4",
            "add {a9}, 4",
            "add {b0}, 64",
            $($single,)*
            "dec {rest}",
            "jnz 4b",
            "5:",
            a0 = inout(reg) $a => _,
            a3 = inout(reg) $a.add(3 * $a_stride) => _,
            a6 = inout(reg) $a.add(6 * $a_stride) => _,
            a9 = inout(reg) $a.add(9 * $a_stride) => _,
            s = in(reg) $a_stride * 4,
            quads = inout(reg) $kc / 4 => _,
            rest = inout(reg) $kc % 4 => _,
            $($operands)*
            options(nostack, readonly),
        )
    };
}

/// The full block's loop: [`k_loop`] over both halves into 24 accumulators; `$more`
/// adds advances and operands (the fetching of the next slice).
macro_rules! block_loop {
    ($a:ident, $a_stride:ident, $halves:ident, $kc:ident, $c:ident, $step:ident,
     [$($quad:literal),*], [$($single:literal),*], $($more:tt)*) => {
        k_loop!(
            $a, $a_stride, $kc, $step,
            ["add {b1}, 256" $(, $quad)*],
            ["add {b1}, 64" $(, $single)*],
            b0 = inout(reg) $halves[0] => _,
            b1 = inout(reg) $halves[1] => _,
            inout("zmm0") $c[0], inout("zmm1") $c[1], inout("zmm2") $c[2],
            inout("zmm3") $c[3], inout("zmm4") $c[4], inout("zmm5") $c[5],
            inout("zmm6") $c[6], inout("zmm7") $c[7], inout("zmm8") $c[8],
            inout("zmm9") $c[9], inout("zmm10") $c[10], inout("zmm11") $c[11],
            inout("zmm12") $c[12], inout("zmm13") $c[13], inout("zmm14") $c[14],
            inout("zmm15") $c[15], inout("zmm16") $c[16], inout("zmm17") $c[17],
            inout("zmm18") $c[18], inout("zmm19") $c[19], inout("zmm20") $c[20],
            inout("zmm21") $c[21], inout("zmm22") $c[22], inout("zmm23") $c[23],
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            $($more)*
        )
    };
}

/// The block functions over one kind of step: `$plain` without fetching, `$fetching`
/// fetching `next`'s lines as it goes.
macro_rules! block_fns {
    ($plain:ident, $fetching:ident, $step:ident, $step_fetch:ident) => {
        /// # Safety
        /// AVX-512F and VL present; `a` readable for `11 * a_stride + kc` floats, each
        /// half for `kc * 16`.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn $plain(
            a: *const f32,
            a_stride: usize,
            halves: [*const f32; 2],
            kc: usize,
        ) -> Accumulators {
            let mut c = [core::arch::x86_64::_mm512_setzero_ps(); 2 * ROWS];
            block_loop!(a, a_stride, halves, kc, c, $step, [], [],);
            core::array::from_fn(|r| [c[2 * r], c[2 * r + 1]])
        }

        /// # Safety
        /// As the block without fetching (`next` may point anywhere).
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn $fetching(
            a: *const f32,
            a_stride: usize,
            halves: [*const f32; 2],
            kc: usize,
            next: [*const f32; 2],
        ) -> Accumulators {
            let mut c = [core::arch::x86_64::_mm512_setzero_ps(); 2 * ROWS];
            block_loop!(
                a, a_stride, halves, kc, c, $step_fetch,
                ["add {n0}, 256", "add {n1}, 256"],
                ["add {n0}, 64", "add {n1}, 64"],
                n0 = inout(reg) next[0] => _,
                n1 = inout(reg) next[1] => _,
            );
            core::array::from_fn(|r| [c[2 * r], c[2 * r + 1]])
        }
    };
}

block_fns!(block_asm, block_fetch_asm, step, step_fetch);
block_fns!(
    narrow_block_asm,
    narrow_block_fetch_asm,
    narrow_step,
    narrow_step_fetch
);

/// The accumulators of a block over one half panel: one vector per row.
pub(super) type HalfAccumulators = [__m512; ROWS];

/// One step of `k` over a single half: its vector, then per row a multiply-add with the
/// row's value broadcast from memory; `$w` names the registers (`zmm`, or `ymm` for
/// 8 columns) and `$lanes` the broadcast (`1to16`, `1to8`).
#[rustfmt::skip]
macro_rules! half_step_in {
    ($w:literal, $lanes:literal, $a:literal, $b:literal) => {
        concat!(
            "vmovups ", $w, "24, [{b0} + ", $b, "]\n",
            half_rows3!($w, $lanes, "{a0}", $a, 0, 1, 2),
            half_rows3!($w, $lanes, "{a3}", $a, 3, 4, 5),
            half_rows3!($w, $lanes, "{a6}", $a, 6, 7, 8),
            half_rows3!($w, $lanes, "{a9}", $a, 9, 10, 11),
        )
    };
}

macro_rules! half_step {
    ($a:literal, $b:literal) => {
        half_step_in!("zmm", "1to16", $a, $b)
    };
}

macro_rules! narrow_half_step {
    ($a:literal, $b:literal) => {
        half_step_in!("ymm", "1to8", $a, $b)
    };
}

#[rustfmt::skip]
macro_rules! half_rows3 {
    ($w:literal, $lanes:literal, $base:literal, $a:literal,
     $c0:literal, $c1:literal, $c2:literal) => {
        concat!(
            "vfmadd231ps ", $w, $c0, ", ", $w, "24, dword ptr [", $base, " + ", $a, "]{{", $lanes, "}}\n",
            "vfmadd231ps ", $w, $c1, ", ", $w, "24, dword ptr [", $base, " + {s} + ", $a, "]{{", $lanes, "}}\n",
            "vfmadd231ps ", $w, $c2, ", ", $w, "24, dword ptr [", $base, " + {s}*2 + ", $a, "]{{", $lanes, "}}\n",
        )
    };
}

/// `sum over k < kc of a[r * a_stride + k] * half[k]` for each row `r` of the block,
/// `half` being `kc` rows of 16 floats; `narrow`: only its first 8 columns are wanted
/// (8-lane vectors, as in [`block`]; the other 8 come out zero). `_avx512` proves the
/// CPU has AVX-512F and VL.
///
/// # Panics
/// When `a` holds fewer than 12 rows of `kc` or `half` fewer than `kc` rows.
#[inline(always)]
pub(super) fn half_block(
    _avx512: pulp::x86::V4,
    a: &[f32],
    a_stride: usize,
    half: &[f32],
    kc: usize,
    narrow: bool,
) -> HalfAccumulators {
    assert!(a.len() >= (ROWS - 1) * a_stride + kc, "rows too short");
    assert!(half.len() >= kc * HALF);
    let (a, half) = (a.as_ptr(), half.as_ptr());
    // SAFETY: the token proves AVX-512F and VL; the asserts bound every read (row r
    // reads a[r * a_stride..][..kc], the half half[..kc * 16]).
    unsafe {
        if narrow {
            narrow_half_block_asm(a, a_stride, half, kc)
        } else {
            half_block_asm(a, a_stride, half, kc)
        }
    }
}

/// The half block's function over one kind of step.
macro_rules! half_block_fn {
    ($name:ident, $step:ident) => {
        /// # Safety
        /// AVX-512F and VL present; `a` readable for `11 * a_stride + kc` floats,
        /// `half` for `kc * 16`.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn $name(
            a: *const f32,
            a_stride: usize,
            half: *const f32,
            kc: usize,
        ) -> HalfAccumulators {
            let mut c = [core::arch::x86_64::_mm512_setzero_ps(); ROWS];
            k_loop!(
                a, a_stride, kc, $step, [], [],
                b0 = inout(reg) half => _,
                inout("zmm0") c[0], inout("zmm1") c[1], inout("zmm2") c[2],
                inout("zmm3") c[3], inout("zmm4") c[4], inout("zmm5") c[5],
                inout("zmm6") c[6], inout("zmm7") c[7], inout("zmm8") c[8],
                inout("zmm9") c[9], inout("zmm10") c[10], inout("zmm11") c[11],
                out("zmm24") _,
            );
            c
        }
    };
}

half_block_fn!(half_block_asm, half_step);
half_block_fn!(narrow_half_block_asm, narrow_half_step);
