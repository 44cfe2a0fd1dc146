//! Dot products of an f32 query with rows stored as IEEE binary16 (`u16` bits).
//!
//! The engine keeps a half-precision copy of every *normalised* vector and scans it first:
//! half the bytes of the f32 scan, which is memory-bound. The candidates it finds are then
//! re-scored in f32, and [`prescan_error_bound`] says when that is provably the exact top-k
//! (see `State::search`). Dispatch follows the active f32 ISA: AVX-512F has the f16->f32
//! conversion; the AVX2 path also needs F16C (checked); NEON converts with the base
//! Advanced SIMD `FCVTL`/`FCVTN`; the scalar path is portable code.

use super::{active_isa, Isa};
use half::f16;

/// Rounds each value times `scale` to the nearest binary16 (ties to even), as bits. Every
/// store and load of a vector converts it, so the conversion uses the CPU's F16C
/// instructions where present (bit-identical to the portable rounding, which a test
/// checks on every path).
pub fn to_f16_bits(v: &[f32], scale: f32, out: &mut [u16]) {
    assert_eq!(v.len(), out.len(), "to_f16_bits: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if path() != Path::Scalar && is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX (every SIMD path implies it) and F16C; lengths are equal.
        unsafe { x86::to_f16_f16c(v, scale, out) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if path() == Path::Neon {
        // SAFETY: the Neon path is chosen only where the CPU has NEON; lengths are equal.
        unsafe { neon::to_f16(v, scale, out) };
        return;
    }
    to_f16_portable(v, scale, out);
}

fn to_f16_portable(v: &[f32], scale: f32, out: &mut [u16]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = f16::from_f32(x * scale).to_bits();
    }
}

/// An upper bound on |f16 score - f32 score| for unit-norm query and row of `dim` values:
/// binary16 rounding (relative 2^-11 per value, and at most 2^-25 absolute below its normal
/// range) summed by Cauchy-Schwarz, plus f32 accumulation error of both computations
/// (dim * 2^-24 each, a worst case), plus slack for the final scaling.
pub fn prescan_error_bound(dim: usize) -> f32 {
    let d = dim as f64;
    (2f64.powi(-11) + d.sqrt() * 2f64.powi(-25) + 2.0 * d * 2f64.powi(-24) + 1e-6) as f32
}

fn scalar_dot(q: &[f32], r: &[u16]) -> f32 {
    q.iter().zip(r).map(|(&a, &b)| a * f16::from_bits(b).to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::shape::{define_rows, in_blocks, widened_dot};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(x86_avx512, n,
                load: |i| (_mm512_loadu_ps(q.add(i)), _mm512_cvtph_ps(_mm256_loadu_si256(r.add(i) as *const __m256i))),
                tail: |i| *q.add(i) * half::f16::from_bits(*r.add(i)).to_f32())
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn to_f16_f16c(v: &[f32], scale: f32, out: &mut [u16]) {
        let s = _mm256_set1_ps(scale);
        in_blocks!(v.len(), 8,
            block: |i| {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(_mm256_loadu_ps(v.as_ptr().add(i)), s));
                _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h)
            },
            rest: |i| super::to_f16_portable(&v[i..], scale, &mut out[i..]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(x86_avx2, n,
                load: |i| (_mm256_loadu_ps(q.add(i)), _mm256_cvtph_ps(_mm_loadu_si128(r.add(i) as *const __m128i))),
                tail: |i| *q.add(i) * half::f16::from_bits(*r.add(i)).to_f32())
        }
    }

    /// out[i] = bits[i] as f32, 16 (AVX-512F) or 8 (F16C) values per instruction.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen_avx512(bits: &[u16], out: &mut [f32]) {
        in_blocks!(bits.len(), 16,
            block: |i| _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(_mm256_loadu_si256(bits.as_ptr().add(i) as *const __m256i))),
            rest: |i| super::widen_portable(&bits[i..], &mut out[i..]))
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16c(bits: &[u16], out: &mut [f32]) {
        in_blocks!(bits.len(), 8,
            block: |i| _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(i) as *const __m128i))),
            rest: |i| super::widen_portable(&bits[i..], &mut out[i..]))
    }

    define_rows!(rows_avx512, "avx512f", dot_avx512, f32);
    define_rows!(rows_avx2, "avx2,fma,f16c", dot_avx2, f32);
}

/// aarch64: binary16 <-> f32 with the base Advanced SIMD conversions (`FCVTL`, `FCVTL2`,
/// `FCVTN`, `FCVTN2`: every ARMv8-A core has them). Written as inline assembly because the
/// intrinsics take Rust's unstable `f16` vector types. The narrowing rounds in the FPCR's
/// mode, which is round-to-nearest-even unless a program changes it (a test checks the
/// results bit for bit against the portable rounding).
#[cfg(target_arch = "aarch64")]
mod neon {
    use crate::simd::shape::{define_rows, in_blocks, widened_dot};
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// The 4 binary16 values at `p`, widened (exactly) to f32.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn widen4(p: *const u16) -> float32x4_t {
        let h = vld1_u16(p);
        let x: float32x4_t;
        asm!(
            "fcvtl {x:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            x = lateout(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
        x
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot(q: *const f32, r: *const u16, n: usize) -> f32 {
        unsafe {
            widened_dot!(aarch64_neon, n,
                load: |i| (vld1q_f32(q.add(i)), widen4(r.add(i))),
                tail: |i| *q.add(i) * half::f16::from_bits(*r.add(i)).to_f32())
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn widen(bits: &[u16], out: &mut [f32]) {
        in_blocks!(bits.len(), 4,
            block: |i| vst1q_f32(out.as_mut_ptr().add(i), widen4(bits.as_ptr().add(i))),
            rest: |i| super::widen_portable(&bits[i..], &mut out[i..]))
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn to_f16(v: &[f32], scale: f32, out: &mut [u16]) {
        in_blocks!(v.len(), 8,
            block: |i| {
                let lo = vmulq_n_f32(vld1q_f32(v.as_ptr().add(i)), scale);
                let hi = vmulq_n_f32(vld1q_f32(v.as_ptr().add(i + 4)), scale);
                let h: uint16x8_t;
                // `out`, not `lateout`: `h` is written before `hi` is read.
                asm!(
                    "fcvtn {h:v}.4h, {lo:v}.4s",
                    "fcvtn2 {h:v}.8h, {hi:v}.4s",
                    lo = in(vreg) lo,
                    hi = in(vreg) hi,
                    h = out(vreg) h,
                    options(pure, nomem, nostack, preserves_flags),
                );
                vst1q_u16(out.as_mut_ptr().add(i), h)
            },
            rest: |i| super::to_f16_portable(&v[i..], scale, &mut out[i..]))
    }

    define_rows!(rows, "neon", dot, f32);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

fn path() -> Path {
    match active_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Path::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if is_x86_feature_detected!("f16c") => Path::Avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Path::Neon,
        _ => Path::Scalar,
    }
}

fn rows_impl(query: &[f32], rows: &[u16], dim: usize, idx: Option<&[u32]>, out: &mut [f32]) {
    assert_eq!(query.len(), dim, "f16 kernels: query length differs from dim");
    let needed = match idx {
        None => out.len(),
        Some(ix) => {
            assert_eq!(ix.len(), out.len(), "f16 kernels: rows and out lengths differ");
            ix.iter().map(|&r| r as usize + 1).max().unwrap_or(0)
        }
    };
    assert!(needed.checked_mul(dim).is_some_and(|n| n <= rows.len()), "f16 kernels: a row lies outside the arena");
    match path() {
        // SAFETY: `path` returns a SIMD path only when the CPU has its features; the
        // asserts above keep every row read inside `rows`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::rows_avx512(query, rows, dim, idx, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::rows_avx2(query, rows, dim, idx, out) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::rows(query, rows, dim, idx, out) },
        Path::Scalar => {
            for (j, o) in out.iter_mut().enumerate() {
                let r = idx.map_or(j, |ix| ix[j] as usize);
                *o = scalar_dot(query, &rows[r * dim..(r + 1) * dim]);
            }
        }
    }
}

/// dot(query, one f16 row): the distance of graph search (`crate::hnsw`), where rows are
/// visited one at a time.
#[inline]
pub fn dot_f16(query: &[f32], row: &[u16]) -> f32 {
    assert_eq!(query.len(), row.len(), "dot_f16: lengths differ");
    match path() {
        // SAFETY: `path` returns a SIMD path only when the CPU has its features; both slices
        // hold `len` values (checked above).
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::dot_avx512(query.as_ptr(), row.as_ptr(), row.len()) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::dot_avx2(query.as_ptr(), row.as_ptr(), row.len()) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::dot(query.as_ptr(), row.as_ptr(), row.len()) },
        Path::Scalar => scalar_dot(query, row),
    }
}

/// Converts binary16 bits to f32 (exact: every binary16 value is an f32 value), so that a
/// block of half-precision rows can go through the f32 multi-query kernel: a batch of
/// queries then converts each row once instead of once per query.
pub fn widen(bits: &[u16], out: &mut [f32]) {
    assert_eq!(bits.len(), out.len(), "widen: lengths differ");
    match path() {
        // SAFETY: `path` returns a SIMD path only when the CPU has its features (AVX-512F,
        // AVX2 with F16C, or NEON); the lengths are equal (checked above).
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::widen_avx512(bits, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::widen_f16c(bits, out) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::widen(bits, out) },
        Path::Scalar => widen_portable(bits, out),
    }
}

fn widen_portable(bits: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = f16::from_bits(b).to_f32();
    }
}

/// out[i] = dot(query, f16 row i of `rows`) for i in 0..out.len().
pub fn dot_rows_f16(query: &[f32], rows: &[u16], dim: usize, out: &mut [f32]) {
    rows_impl(query, rows, dim, None, out)
}

/// out[j] = dot(query, f16 row `idx[j]` of `rows`).
pub fn dot_gather_f16(query: &[f32], rows: &[u16], dim: usize, idx: &[u32], out: &mut [f32]) {
    rows_impl(query, rows, dim, Some(idx), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_bit_identical_on_every_path() {
        let _guard = super::super::tests::FORCE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut seed = 9;
        let mut values: Vec<f32> = (0..4099).map(|_| lcg(&mut seed) * 3.0).collect();
        // Ties, subnormal and overflowing results, zeros of both signs, extremes.
        values.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            6.1e-5,
            6.0e-8,
            3.0e-8,
            2.9e-8,
            1e-10,
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ]);
        for scale in [1.0f32, 0.3, 1e-3, 7.0] {
            let mut want = vec![0u16; values.len()];
            to_f16_portable(&values, scale, &mut want);
            for isa in super::super::supported_isas() {
                super::super::force_isa(Some(isa)).unwrap();
                for len in [0, 1, 7, 8, 9, 31, values.len()] {
                    let mut got = vec![0u16; len];
                    to_f16_bits(&values[..len], scale, &mut got);
                    assert_eq!(got, want[..len], "{isa:?} scale {scale} len {len}");
                }
            }
        }
        super::super::force_isa(None).unwrap();
    }

    #[test]
    fn widening_is_exact_on_every_path() {
        let _guard = super::super::tests::FORCE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // Every binary16 bit pattern but the NaNs (stored rows are finite, and hardware may
        // quieten a signalling NaN), at every tail length.
        let bits: Vec<u16> = (0..=u16::MAX).filter(|&b| !f16::from_bits(b).is_nan()).collect();
        let want: Vec<u32> = bits.iter().map(|&b| f16::from_bits(b).to_f32().to_bits()).collect();
        for isa in super::super::supported_isas() {
            super::super::force_isa(Some(isa)).unwrap();
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, bits.len()] {
                let mut got = vec![0f32; len];
                widen(&bits[..len], &mut got);
                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want[..len], "{isa:?} len {len}");
            }
        }
        super::super::force_isa(None).unwrap();
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn every_path_matches_f64_on_the_rounded_values_and_the_bound_holds() {
        let _guard = super::super::tests::FORCE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut seed = 3;
        for isa in super::super::supported_isas() {
            super::super::force_isa(Some(isa)).unwrap();
            for dim in [1usize, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 384, 385, 1536, 1537] {
                let norm = |v: Vec<f32>| {
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.into_iter().map(|x| x / n).collect::<Vec<_>>()
                };
                let q = norm((0..dim).map(|_| lcg(&mut seed)).collect());
                let rows: Vec<Vec<f32>> = (0..5).map(|_| norm((0..dim).map(|_| lcg(&mut seed)).collect())).collect();
                let mut bits = vec![0u16; 5 * dim];
                for (i, r) in rows.iter().enumerate() {
                    to_f16_bits(r, 1.0, &mut bits[i * dim..(i + 1) * dim]);
                }
                let mut out = vec![0.0f32; 5];
                dot_rows_f16(&q, &bits, dim, &mut out);
                let mut gathered = vec![0.0f32; 3];
                dot_gather_f16(&q, &bits, dim, &[4, 0, 2], &mut gathered);
                assert_eq!(gathered, vec![out[4], out[0], out[2]]);
                assert_eq!(dot_f16(&q, &bits[4 * dim..5 * dim]), out[4]);
                for (i, r) in rows.iter().enumerate() {
                    let on_rounded: f64 = (0..dim).map(|j| q[j] as f64 * f16::from_bits(bits[i * dim + j]).to_f32() as f64).sum();
                    assert!((out[i] as f64 - on_rounded).abs() <= 1e-5, "{isa:?} dim {dim}");
                    let exact: f64 = (0..dim).map(|j| q[j] as f64 * r[j] as f64).sum();
                    assert!((out[i] as f64 - exact).abs() <= prescan_error_bound(dim) as f64, "{isa:?} dim {dim}");
                }
            }
        }
        super::super::force_isa(None).unwrap();
    }
}
