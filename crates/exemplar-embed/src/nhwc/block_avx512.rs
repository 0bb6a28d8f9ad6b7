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
//! the broadcast folded into each multiply-add): 1.04-1.16x the Rust block per layer.

use core::arch::asm;
use core::arch::x86_64::__m512;

/// Rows of a block.
pub(super) const ROWS: usize = 12;
/// Floats per half panel row (one vector).
const HALF: usize = 16;

/// The accumulators of a block: two vectors (the panel's two halves) per row.
pub(super) type Accumulators = [[__m512; 2]; ROWS];

/// One step of `k` at byte offsets `$a` (activations) and `$b` (panel): two panel
/// vectors, then per row a broadcast and two multiply-adds.
#[rustfmt::skip] // one instruction per line
macro_rules! step {
    ($a:literal, $b:literal) => {
        concat!(
            "vmovups zmm24, [{b0} + ", $b, "]\n",
            "vmovups zmm25, [{b1} + ", $b, "]\n",
            rows3!("{a0}", $a, 0, 1, 2, 3, 4, 5),
            rows3!("{a3}", $a, 6, 7, 8, 9, 10, 11),
            rows3!("{a6}", $a, 12, 13, 14, 15, 16, 17),
            rows3!("{a9}", $a, 18, 19, 20, 21, 22, 23),
        )
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

/// Three rows from one base register, `[base]`, `[base + stride]` and
/// `[base + 2 * stride]`, into accumulators `$c0`..`$c5` (two per row).
#[rustfmt::skip]
macro_rules! rows3 {
    ($base:literal, $a:literal,
     $c0:literal, $c1:literal, $c2:literal, $c3:literal, $c4:literal, $c5:literal) => {
        concat!(
            "vbroadcastss zmm26, dword ptr [", $base, " + ", $a, "]\n",
            "vfmadd231ps zmm", $c0, ", zmm26, zmm24\n",
            "vfmadd231ps zmm", $c1, ", zmm26, zmm25\n",
            "vbroadcastss zmm27, dword ptr [", $base, " + {s} + ", $a, "]\n",
            "vfmadd231ps zmm", $c2, ", zmm27, zmm24\n",
            "vfmadd231ps zmm", $c3, ", zmm27, zmm25\n",
            "vbroadcastss zmm26, dword ptr [", $base, " + {s}*2 + ", $a, "]\n",
            "vfmadd231ps zmm", $c4, ", zmm26, zmm24\n",
            "vfmadd231ps zmm", $c5, ", zmm26, zmm25\n",
        )
    };
}

/// `sum over k < kc of a[r * a_stride + k] * [first[k], second[k]]` for each row `r` of
/// the block, where `first` and `second` are the panel's halves (`kc` rows of 16 floats).
/// With `next`, one line of each of its two halves is also fetched into L2 per step of
/// `k` (the next slice of weights, asked for while this one computes; a fetch is a
/// hint, valid at any address). `_avx512` proves the CPU has AVX-512F.
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
) -> Accumulators {
    assert!(a.len() >= (ROWS - 1) * a_stride + kc, "rows too short");
    assert!(first.len() >= kc * HALF && second.len() >= kc * HALF);
    let (a, halves) = (a.as_ptr(), [first.as_ptr(), second.as_ptr()]);
    // SAFETY: the token proves AVX-512F; the asserts bound every read (row r reads
    // a[r * a_stride..][..kc], half h reads h[..kc * 16]).
    unsafe {
        match next {
            None => block_asm(a, a_stride, halves, kc),
            Some(next) => block_fetch_asm(a, a_stride, halves, kc, next),
        }
    }
}

/// The block's loop: four steps of `k` at a time, then one at a time; `$step` is the
/// step, `$quad` and `$single` the further pointer advances after each, `$more` the
/// further operands.
macro_rules! block_loop {
    ($a:ident, $a_stride:ident, $halves:ident, $kc:ident, $c:ident, $step:ident,
     [$($quad:literal),*], [$($single:literal),*], $($more:tt)*) => {
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
            "add {b1}, 256",
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
            "add {b1}, 64",
            $($single,)*
            "dec {rest}",
            "jnz 4b",
            "5:",
            a0 = inout(reg) $a => _,
            a3 = inout(reg) $a.add(3 * $a_stride) => _,
            a6 = inout(reg) $a.add(6 * $a_stride) => _,
            a9 = inout(reg) $a.add(9 * $a_stride) => _,
            s = in(reg) $a_stride * 4,
            b0 = inout(reg) $halves[0] => _,
            b1 = inout(reg) $halves[1] => _,
            quads = inout(reg) $kc / 4 => _,
            rest = inout(reg) $kc % 4 => _,
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
            options(nostack, readonly),
        )
    };
}

/// # Safety
/// AVX-512F present; `a` readable for `11 * a_stride + kc` floats, each half for `kc * 16`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_asm(
    a: *const f32,
    a_stride: usize,
    halves: [*const f32; 2],
    kc: usize,
) -> Accumulators {
    let mut c = [core::arch::x86_64::_mm512_setzero_ps(); 2 * ROWS];
    block_loop!(a, a_stride, halves, kc, c, step, [], [],);
    core::array::from_fn(|r| [c[2 * r], c[2 * r + 1]])
}

/// [`block_asm`] fetching `next`'s lines as it goes.
///
/// # Safety
/// As [`block_asm`] (`next` may point anywhere).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_fetch_asm(
    a: *const f32,
    a_stride: usize,
    halves: [*const f32; 2],
    kc: usize,
    next: [*const f32; 2],
) -> Accumulators {
    let mut c = [core::arch::x86_64::_mm512_setzero_ps(); 2 * ROWS];
    block_loop!(
        a, a_stride, halves, kc, c, step_fetch,
        ["add {n0}, 256", "add {n1}, 256"],
        ["add {n0}, 64", "add {n1}, 64"],
        n0 = inout(reg) next[0] => _,
        n1 = inout(reg) next[1] => _,
    );
    core::array::from_fn(|r| [c[2 * r], c[2 * r + 1]])
}

/// The accumulators of a block over one half panel: one vector per row.
pub(super) type HalfAccumulators = [__m512; ROWS];

/// One step of `k` over a single half: its vector, then per row a multiply-add with the
/// row's value broadcast from memory.
#[rustfmt::skip]
macro_rules! half_step {
    ($a:literal, $b:literal) => {
        concat!(
            "vmovups zmm24, [{b0} + ", $b, "]\n",
            half_rows3!("{a0}", $a, 0, 1, 2),
            half_rows3!("{a3}", $a, 3, 4, 5),
            half_rows3!("{a6}", $a, 6, 7, 8),
            half_rows3!("{a9}", $a, 9, 10, 11),
        )
    };
}

#[rustfmt::skip]
macro_rules! half_rows3 {
    ($base:literal, $a:literal, $c0:literal, $c1:literal, $c2:literal) => {
        concat!(
            "vfmadd231ps zmm", $c0, ", zmm24, dword ptr [", $base, " + ", $a, "]{{1to16}}\n",
            "vfmadd231ps zmm", $c1, ", zmm24, dword ptr [", $base, " + {s} + ", $a, "]{{1to16}}\n",
            "vfmadd231ps zmm", $c2, ", zmm24, dword ptr [", $base, " + {s}*2 + ", $a, "]{{1to16}}\n",
        )
    };
}

/// `sum over k < kc of a[r * a_stride + k] * half[k]` for each row `r` of the block,
/// `half` being `kc` rows of 16 floats. `_avx512` proves the CPU has AVX-512F.
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
) -> HalfAccumulators {
    assert!(a.len() >= (ROWS - 1) * a_stride + kc, "rows too short");
    assert!(half.len() >= kc * HALF);
    // SAFETY: the token proves AVX-512F; the asserts bound every read (row r reads
    // a[r * a_stride..][..kc], the half half[..kc * 16]).
    unsafe { half_block_asm(a.as_ptr(), a_stride, half.as_ptr(), kc) }
}

/// # Safety
/// AVX-512F present; `a` readable for `11 * a_stride + kc` floats, `half` for `kc * 16`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn half_block_asm(
    a: *const f32,
    a_stride: usize,
    half: *const f32,
    kc: usize,
) -> HalfAccumulators {
    let mut c = [core::arch::x86_64::_mm512_setzero_ps(); ROWS];
    asm!(
        "test {quads}, {quads}",
        "jz 3f",
        "2:",
        half_step!("0", "0"),
        half_step!("4", "64"),
        half_step!("8", "128"),
        half_step!("12", "192"),
        "add {a0}, 16",
        "add {a3}, 16",
        "add {a6}, 16",
        "add {a9}, 16",
        "add {b0}, 256",
        "dec {quads}",
        "jnz 2b",
        "3:",
        "test {rest}, {rest}",
        "jz 5f",
        "4:",
        half_step!("0", "0"),
        "add {a0}, 4",
        "add {a3}, 4",
        "add {a6}, 4",
        "add {a9}, 4",
        "add {b0}, 64",
        "dec {rest}",
        "jnz 4b",
        "5:",
        a0 = inout(reg) a => _,
        a3 = inout(reg) a.add(3 * a_stride) => _,
        a6 = inout(reg) a.add(6 * a_stride) => _,
        a9 = inout(reg) a.add(9 * a_stride) => _,
        s = in(reg) a_stride * 4,
        b0 = inout(reg) half => _,
        quads = inout(reg) kc / 4 => _,
        rest = inout(reg) kc % 4 => _,
        inout("zmm0") c[0], inout("zmm1") c[1], inout("zmm2") c[2],
        inout("zmm3") c[3], inout("zmm4") c[4], inout("zmm5") c[5],
        inout("zmm6") c[6], inout("zmm7") c[7], inout("zmm8") c[8],
        inout("zmm9") c[9], inout("zmm10") c[10], inout("zmm11") c[11],
        out("zmm24") _,
        options(nostack, readonly),
    );
    c
}
