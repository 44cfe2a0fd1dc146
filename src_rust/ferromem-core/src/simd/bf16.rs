//! Dot products with rows stored as bfloat16 (`u16` bits: the top half of an f32).
//!
//! No storage precision of the engine uses bfloat16 (see docs/architecture.md, "Why no
//! bf16 or AVX-512 FP16 kind": for unit vectors it holds the same 2 bytes as binary16
//! with 3 fewer significant bits). These kernels are for callers whose vectors already
//! are bfloat16, and they give the benchmarks the bf16 row of the kernel grid.
//!
//! Two kernels, two contracts:
//! * [`dot_rows_bf16`]: an f32 query against bf16 rows. A bf16 value widens to f32
//!   exactly (a 16-bit shift), so each product is the f32 one; paths differ only in
//!   summation order. AVX2 and AVX-512F shift and multiply-add.
//! * [`dot_rows_bf16_pairs`]: a bf16 query against bf16 rows. Where the CPU has AVX-512
//!   BF16, `vdpbf16ps` multiplies and adds pairs of bf16 values into f32 sums; elsewhere
//!   both sides are widened. The products of two bf16 values are exact in f32, so the
//!   paths again differ only in summation order (and `vdpbf16ps` treats values below
//!   f32's normal range, |x| < 1.2e-38, as zero).
//!
//! Dispatch follows the active ISA ([`super::active_isa`]). NEON widens with `SHLL` and
//! multiply-adds, for both kernels. It does not use `BFDOT` (FEAT_BF16): unless the FPCR
//! selects the extended behaviour (FEAT_EBF16), `BFDOT` rounds its pair sums to odd and
//! flushes values below f32's normal range, so its results would depend on the core.

use super::{active_isa, Isa};

/// Rounds each value times `scale` to the nearest bfloat16 (ties to even), as bits. NaN
/// stays NaN (quiet); infinities stay infinite.
pub fn to_bf16_bits(v: &[f32], scale: f32, out: &mut [u16]) {
    assert_eq!(v.len(), out.len(), "to_bf16_bits: lengths differ");
    for (o, &x) in out.iter_mut().zip(v) {
        *o = round_bf16(x * scale);
    }
}

fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x0040) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a carry into
    // the exponent is the correct rounding up (to the next binade, or to infinity).
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of a bfloat16 (exact).
#[inline]
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// out[i] = bits[i] as f32 (exact).
pub fn widen(bits: &[u16], out: &mut [f32]) {
    assert_eq!(bits.len(), out.len(), "bf16 widen: lengths differ");
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = to_f32(b);
    }
}

/// Portable dot product over values that `qv` and `rv` widen to f32, in eight partial
/// sums (as `scalar::dot`: the compiler may not reorder float additions, so one running
/// sum would neither vectorise nor keep the error small).
#[inline]
fn scalar_dot_by<Q: Copy>(q: &[Q], r: &[u16], qv: impl Fn(Q) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let (qc, rc) = (q.chunks_exact(LANES), r.chunks_exact(LANES));
    let (q_tail, r_tail) = (qc.remainder(), rc.remainder());
    for (x, y) in qc.zip(rc) {
        for k in 0..LANES {
            acc[k] += qv(x[k]) * to_f32(y[k]);
        }
    }
    for (k, (&x, &y)) in q_tail.iter().zip(r_tail).enumerate() {
        acc[k] += qv(x) * to_f32(y);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

fn scalar_dot(q: &[f32], r: &[u16]) -> f32 {
    scalar_dot_by(q, r, |x| x)
}

fn scalar_dot_pairs(q: &[u16], r: &[u16]) -> f32 {
    scalar_dot_by(q, r, to_f32)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::to_f32;
    use crate::simd::shape::{define_rows, widened_dot};
    use std::arch::x86_64::*;

    /// 16 bf16 values at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
    }

    /// 8 bf16 values at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(x86_avx512, n, load: |i| (_mm512_loadu_ps(q.add(i)), load16(r.add(i))), tail: |i| *q.add(i) * to_f32(*r.add(i)))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(x86_avx2, n, load: |i| (_mm256_loadu_ps(q.add(i)), load8(r.add(i))), tail: |i| *q.add(i) * to_f32(*r.add(i)))
        }
    }

    /// bf16 x bf16 with `vdpbf16ps`: 32 pairs of values per instruction.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_pairs_bf16(q: *const u16, r: *const u16, n: usize) -> f32 {
        let load = |p: *const u16| -> __m512bh { std::mem::transmute(_mm512_loadu_si512(p as *const __m512i)) };
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 64 <= n {
            a0 = _mm512_dpbf16_ps(a0, load(q.add(i)), load(r.add(i)));
            a1 = _mm512_dpbf16_ps(a1, load(q.add(i + 32)), load(r.add(i + 32)));
            i += 64;
        }
        while i + 32 <= n {
            a0 = _mm512_dpbf16_ps(a0, load(q.add(i)), load(r.add(i)));
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        while i < n {
            s += to_f32(*q.add(i)) * to_f32(*r.add(i));
            i += 1;
        }
        s
    }

    /// bf16 x bf16 by widening both sides (AVX-512F without BF16).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_pairs_avx512(q: *const u16, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(x86_avx512, n, load: |i| (load16(q.add(i)), load16(r.add(i))), tail: |i| to_f32(*q.add(i)) * to_f32(*r.add(i)))
        }
    }

    /// bf16 x bf16 by widening both sides (AVX2).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_pairs_avx2(q: *const u16, r: *const u16, n: usize) -> f32 {
        unsafe { widened_dot!(x86_avx2, n, load: |i| (load8(q.add(i)), load8(r.add(i))), tail: |i| to_f32(*q.add(i)) * to_f32(*r.add(i))) }
    }

    define_rows!(rows_avx512, "avx512f", dot_avx512, f32);
    define_rows!(rows_avx2, "avx2,fma", dot_avx2, f32);
    define_rows!(pairs_rows_bf16, "avx512f,avx512bf16", dot_pairs_bf16, u16);
    define_rows!(pairs_rows_avx512, "avx512f", dot_pairs_avx512, u16);
    define_rows!(pairs_rows_avx2, "avx2,fma", dot_pairs_avx2, u16);
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::to_f32;
    use crate::simd::shape::{define_rows, widened_dot};
    use std::arch::aarch64::*;

    /// 4 bf16 values at `p` widened to f32 (`SHLL` by 16).
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load4(p: *const u16) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe { widened_dot!(aarch64_neon, n, load: |i| (vld1q_f32(q.add(i)), load4(r.add(i))), tail: |i| *q.add(i) * to_f32(*r.add(i))) }
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot_pairs(q: *const u16, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(aarch64_neon, n, load: |i| (load4(q.add(i)), load4(r.add(i))), tail: |i| to_f32(*q.add(i)) * to_f32(*r.add(i)))
        }
    }

    define_rows!(rows, "neon", dot, f32);
    define_rows!(pairs_rows, "neon", dot_pairs, u16);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512F with AVX-512 BF16 (`vdpbf16ps`), for bf16 x bf16.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// The path `isa` runs for bf16 x bf16 (`pairs`) or f32 x bf16. `isa` is supported (the
/// dispatch atomic holds only supported ones), so its base features are present.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn path_of(isa: Isa, pairs: bool) -> Path {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if pairs && std::arch::is_x86_feature_detected!("avx512bf16") => Path::Avx512Bf16,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Path::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Path::Avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Path::Neon,
        _ => Path::Scalar,
    }
}

/// The bf16 x bf16 kernel path an ISA runs: "avx512-bf16", "avx512", "avx2", "neon" or
/// "scalar".
pub fn path_name(isa: Isa) -> &'static str {
    match path_of(isa, true) {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Bf16 => "avx512-bf16",
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => "avx2",
        #[cfg(target_arch = "aarch64")]
        Path::Neon => "neon",
        Path::Scalar => "scalar",
    }
}

fn check_lengths(kernel: &str, query: &[impl Copy], rows: &[u16], dim: usize, out: &[f32]) {
    assert_eq!(query.len(), dim, "{kernel}: query length differs from dim");
    assert!(out.len().checked_mul(dim).is_some_and(|n| n <= rows.len()), "{kernel}: fewer rows than outputs");
}

/// out[j] = dot(query, row j) for an f32 query and rows of `dim` bf16 values.
pub fn dot_rows_bf16(query: &[f32], rows: &[u16], dim: usize, out: &mut [f32]) {
    check_lengths("dot_rows_bf16", query, rows, dim, out);
    match path_of(active_isa(), false) {
        // SAFETY: `path_of` picks a SIMD path only for a supported ISA (so the CPU has its
        // features); `check_lengths` keeps every row read inside `rows`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 | Path::Avx512Bf16 => unsafe { x86::rows_avx512(query, rows, dim, None, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::rows_avx2(query, rows, dim, None, out) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::rows(query, rows, dim, None, out) },
        Path::Scalar => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = scalar_dot(query, &rows[j * dim..(j + 1) * dim]);
            }
        }
    }
}

/// out[j] = dot(query, row j) for a bf16 query and rows of `dim` bf16 values (round an
/// f32 query with [`to_bf16_bits`]).
pub fn dot_rows_bf16_pairs(query: &[u16], rows: &[u16], dim: usize, out: &mut [f32]) {
    check_lengths("dot_rows_bf16_pairs", query, rows, dim, out);
    match path_of(active_isa(), true) {
        // SAFETY: as in `dot_rows_bf16`; the BF16 path is picked only when detected.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Bf16 => unsafe { x86::pairs_rows_bf16(query, rows, dim, None, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::pairs_rows_avx512(query, rows, dim, None, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::pairs_rows_avx2(query, rows, dim, None, out) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::pairs_rows(query, rows, dim, None, out) },
        Path::Scalar => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = scalar_dot_pairs(query, &rows[j * dim..(j + 1) * dim]);
            }
        }
    }
}
