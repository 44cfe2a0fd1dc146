//! Dot products of 8-bit quantised vectors, exact in integers.
//!
//! A vector is quantised symmetrically with one factor per vector ([`quantize_i8`]):
//! `q[i] = round(v[i] / f)` with `f = max|v| / 127`, so `v ~ f * q` and
//! `dot(a, b) ~ fa * fb * dot_i8(qa, qb)`, within [`int8_error_bound`]. A quarter of the
//! bytes of f32 per value: the kernel a quantised pre-scan streams.
//!
//! Every path returns the exact `i32` sum, so they agree bit for bit (the tests check it):
//!
//! * AVX-512 with VNNI (`vpdpbusd`, 64 products per instruction): VNNI multiplies unsigned
//!   by signed bytes, so the row is read as `r + 128` (a sign-bit flip) and `128 * sum(q)`
//!   is subtracted once at the end;
//! * AVX2: bytes widened to 16 bits, `vpmaddwd` (16 products per instruction). Not the
//!   `vpmaddubsw` trick: its 16-bit pair sums saturate for -128 inputs;
//! * aarch64 with the dot-product extension (FEAT_DotProd: Apple M1 and later, Neoverse,
//!   Cortex-A76 and later): `SDOT`, 16 signed products summed into 4 lanes per instruction;
//! * aarch64 without it: `SMULL` to 16-bit products (exact: |-128 * -128| < 2^15), then
//!   `SADALP` adds neighbouring pairs into 32-bit lanes;
//! * portable code elsewhere.
//!
//! Sums are exact while `dim <= MAX_DIM` (the VNNI sum of `(r + 128) * q` stays in i32).

#[cfg(test)]
use super::supported_isas;
use super::{active_isa, is_supported, Isa, UnsupportedIsa};

/// Longest vectors the kernels take: `MAX_DIM * 255 * 128 < 2^31`.
pub const MAX_DIM: usize = 65_536;

/// Quantises `v` into `out` and returns the factor `f` with `v ~ f * out` (0.0 for an
/// all-zero vector). Values land in [-127, 127].
pub fn quantize_i8(v: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(v.len(), out.len(), "quantize_i8: lengths differ");
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let f = max / 127.0;
    let inv = 127.0 / max;
    for (o, &x) in out.iter_mut().zip(v) {
        *o = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    f
}

/// An upper bound on |fa * fb * dot_i8(qa, qb) - dot(a, b)| for vectors of `dim` values
/// whose Euclidean norms are at most `na` and `nb`, quantised with factors `fa` and `fb`:
/// each value is within f/2 of its quantised one, so by Cauchy-Schwarz the error is at
/// most `sqrt(dim) * (na * fb + nb * fa) / 2 + dim * fa * fb / 4`, plus f32 rounding slack.
pub fn int8_error_bound(dim: usize, na: f32, fa: f32, nb: f32, fb: f32) -> f32 {
    let d = dim as f64;
    let (na, fa, nb, fb) = (na as f64, fa as f64, nb as f64, fb as f64);
    (d.sqrt() * (na * fb + nb * fa) / 2.0 + d * fa * fb / 4.0 + 1e-6) as f32
}

fn scalar_dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// The products from value `from` to `n` of `q` and `r`: the tail a SIMD kernel leaves
/// after its last full vector.
///
/// # Safety
/// Both pointers are valid for `n` reads and `from <= n`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline]
unsafe fn tail_dot(q: *const i8, r: *const i8, from: usize, n: usize) -> i32 {
    let len = n - from;
    scalar_dot(std::slice::from_raw_parts(q.add(from), len), std::slice::from_raw_parts(r.add(from), len))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Whether this CPU has what the VNNI path needs besides AVX-512F.
    pub(super) fn has_vnni() -> bool {
        is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_vnni(q: *const i8, r: *const i8, n: usize, q_sum: i32) -> i32 {
        let flip = _mm512_set1_epi8(-128);
        let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut i = 0;
        while i + 128 <= n {
            let r0 = _mm512_xor_si512(_mm512_loadu_si512(r.add(i) as *const _), flip);
            let r1 = _mm512_xor_si512(_mm512_loadu_si512(r.add(i + 64) as *const _), flip);
            a0 = _mm512_dpbusd_epi32(a0, r0, _mm512_loadu_si512(q.add(i) as *const _));
            a1 = _mm512_dpbusd_epi32(a1, r1, _mm512_loadu_si512(q.add(i + 64) as *const _));
            i += 128;
        }
        while i < n {
            // Masked: lanes past the end load as 0 in both, and (0 ^ 0x80) * 0 adds nothing.
            let left = (n - i).min(64);
            let mask: __mmask64 = if left == 64 { !0 } else { (1u64 << left) - 1 };
            let rv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, r.add(i)), flip);
            a0 = _mm512_dpbusd_epi32(a0, rv, _mm512_maskz_loadu_epi8(mask, q.add(i)));
            i += left;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1)) - 128 * q_sum
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_avx2(q: *const i8, r: *const i8, n: usize) -> i32 {
        let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        while i + 32 <= n {
            let widen = |p: *const i8| _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(widen(q.add(i)), widen(r.add(i))));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(widen(q.add(i + 16)), widen(r.add(i + 16))));
            i += 32;
        }
        let v = _mm256_add_epi32(a0, a1);
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s) + super::tail_dot(q, r, i, n)
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// Whether this CPU has `SDOT` (FEAT_DotProd).
    pub(super) fn has_dotprod() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    /// `SDOT` through inline assembly: its intrinsic (`vdotq_s32`) is not stable Rust.
    /// Each instruction adds four products of signed bytes into each of 4 i32 lanes.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn dot_sdot(q: *const i8, r: *const i8, n: usize) -> i32 {
        let (mut a0, mut a1) = (vdupq_n_s32(0), vdupq_n_s32(0));
        let mut i = 0;
        while i + 32 <= n {
            let (q0, r0) = (vld1q_s8(q.add(i)), vld1q_s8(r.add(i)));
            let (q1, r1) = (vld1q_s8(q.add(i + 16)), vld1q_s8(r.add(i + 16)));
            asm!(
                "sdot {a0:v}.4s, {q0:v}.16b, {r0:v}.16b",
                "sdot {a1:v}.4s, {q1:v}.16b, {r1:v}.16b",
                a0 = inout(vreg) a0,
                a1 = inout(vreg) a1,
                q0 = in(vreg) q0,
                r0 = in(vreg) r0,
                q1 = in(vreg) q1,
                r1 = in(vreg) r1,
                options(pure, nomem, nostack, preserves_flags),
            );
            i += 32;
        }
        if i + 16 <= n {
            let (q0, r0) = (vld1q_s8(q.add(i)), vld1q_s8(r.add(i)));
            asm!(
                "sdot {a0:v}.4s, {q0:v}.16b, {r0:v}.16b",
                a0 = inout(vreg) a0,
                q0 = in(vreg) q0,
                r0 = in(vreg) r0,
                options(pure, nomem, nostack, preserves_flags),
            );
            i += 16;
        }
        vaddvq_s32(vaddq_s32(a0, a1)) + super::tail_dot(q, r, i, n)
    }

    /// Base Advanced SIMD: `SMULL`/`SMULL2` to 8 exact i16 products each, `SADALP` to add
    /// neighbouring products into i32 lanes.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_neon(q: *const i8, r: *const i8, n: usize) -> i32 {
        let (mut a0, mut a1) = (vdupq_n_s32(0), vdupq_n_s32(0));
        let mut i = 0;
        while i + 16 <= n {
            let (qv, rv) = (vld1q_s8(q.add(i)), vld1q_s8(r.add(i)));
            a0 = vpadalq_s16(a0, vmull_s8(vget_low_s8(qv), vget_low_s8(rv)));
            a1 = vpadalq_s16(a1, vmull_high_s8(qv, rv));
            i += 16;
        }
        vaddvq_s32(vaddq_s32(a0, a1)) + super::tail_dot(q, r, i, n)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

/// The int8 path of an f32 ISA: AVX-512 means VNNI where the CPU has it (else the AVX2
/// code, which every AVX-512 CPU runs); NEON means `SDOT` where the CPU has it.
fn path_of(isa: Isa) -> Path {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if x86::has_vnni() => Path::Vnni,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => Path::Avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if neon::has_dotprod() => Path::NeonDot,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Path::Neon,
        _ => Path::Scalar,
    }
}

fn name_of(path: Path) -> &'static str {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => "avx512-vnni",
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => "avx2",
        #[cfg(target_arch = "aarch64")]
        Path::NeonDot => "neon-dotprod",
        #[cfg(target_arch = "aarch64")]
        Path::Neon => "neon",
        Path::Scalar => "scalar",
    }
}

/// The name of the int8 path `isa` runs ("avx512-vnni", "avx2", "neon-dotprod", "neon" or
/// "scalar"), for reports.
pub fn path_name(isa: Isa) -> &'static str {
    name_of(path_of(isa))
}

// `q_sum` serves the VNNI path only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_on(path: Path, q: &[i8], r: &[i8], q_sum: i32) -> i32 {
    match path {
        // SAFETY (every arm): `path_of` picks a SIMD path only for a supported ISA whose
        // CPU has the features (VNNI and SDOT checked); both slices hold `q.len()` values.
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => unsafe { x86::dot_vnni(q.as_ptr(), r.as_ptr(), q.len(), q_sum) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::dot_avx2(q.as_ptr(), r.as_ptr(), q.len()) },
        #[cfg(target_arch = "aarch64")]
        Path::NeonDot => unsafe { neon::dot_sdot(q.as_ptr(), r.as_ptr(), q.len()) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { neon::dot_neon(q.as_ptr(), r.as_ptr(), q.len()) },
        Path::Scalar => scalar_dot(q, r),
    }
}

/// Every int8 path this CPU can run. An ISA maps to one path, so plain NEON on a CPU with
/// `SDOT` is reachable only through this list (tests).
#[cfg(test)]
fn runnable_paths() -> Vec<Path> {
    let mut paths: Vec<Path> = supported_isas().into_iter().map(path_of).collect();
    #[cfg(target_arch = "aarch64")]
    if paths.contains(&Path::NeonDot) {
        paths.push(Path::Neon);
    }
    paths.dedup();
    paths
}

fn check_dim(dim: usize) {
    assert!(dim <= MAX_DIM, "int8 kernels: {dim} values exceed MAX_DIM ({MAX_DIM})");
}

/// The exact dot product of two quantised vectors. Panics when the lengths differ or
/// exceed [`MAX_DIM`].
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len(), "dot_i8: lengths differ");
    check_dim(a.len());
    let path = path_of(active_isa());
    dot_on(path, a, b, a.iter().map(|&x| x as i32).sum())
}

/// [`dot_i8`] on a chosen path, whatever the active one is (tests, benchmarks).
pub fn dot_i8_with(isa: Isa, a: &[i8], b: &[i8]) -> Result<i32, UnsupportedIsa> {
    if !is_supported(isa) {
        return Err(UnsupportedIsa(isa));
    }
    assert_eq!(a.len(), b.len(), "dot_i8: lengths differ");
    check_dim(a.len());
    Ok(dot_on(path_of(isa), a, b, a.iter().map(|&x| x as i32).sum()))
}

/// `out[i] = dot_i8(query, row i of rows)` for i in 0..out.len(). Panics when
/// `query.len() != dim`, `dim > MAX_DIM` or `rows` holds fewer than `out.len()` rows.
pub fn dot_rows_i8(query: &[i8], rows: &[i8], dim: usize, out: &mut [i32]) {
    assert_eq!(query.len(), dim, "dot_rows_i8: query length differs from dim");
    check_dim(dim);
    assert!(out.len().checked_mul(dim).is_some_and(|n| n <= rows.len()), "dot_rows_i8: a row lies outside `rows`");
    let path = path_of(active_isa());
    let q_sum: i32 = query.iter().map(|&x| x as i32).sum();
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_on(path, query, &rows[i * dim..(i + 1) * dim], q_sum);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{force_isa, tests::FORCE_LOCK};
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_path_is_exact_for_every_byte_value_and_length() {
        let _guard = FORCE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut dims: Vec<usize> = (0..=200).collect();
        dims.extend([255, 256, 257, 383, 384, 385, 1535, 1536, 1537, 4096]);
        for dim in dims {
            // The full byte range, -128 included, and runs of extremes.
            let a: Vec<i8> = (0..dim).map(|i| if i % 17 == 0 { -128 } else { rng.gen() }).collect();
            let b: Vec<i8> = (0..dim)
                .map(|i| {
                    if i % 13 == 0 {
                        -128
                    } else if i % 11 == 0 {
                        127
                    } else {
                        rng.gen()
                    }
                })
                .collect();
            let want: i64 = a.iter().zip(&b).map(|(&x, &y)| x as i64 * y as i64).sum();
            let a_sum: i32 = a.iter().map(|&x| x as i32).sum();
            for isa in supported_isas() {
                assert_eq!(dot_i8_with(isa, &a, &b).unwrap() as i64, want, "{isa:?} ({}) dim {dim}", path_name(isa));
            }
            for path in runnable_paths() {
                assert_eq!(dot_on(path, &a, &b, a_sum) as i64, want, "{} dim {dim}", name_of(path));
            }
        }
        // The longest vectors at the extremes: no overflow on any path.
        let (a, b) = (vec![-128i8; MAX_DIM], vec![-128i8; MAX_DIM]);
        let c = vec![127i8; MAX_DIM];
        let a_sum = -128 * MAX_DIM as i32;
        for path in runnable_paths() {
            assert_eq!(dot_on(path, &a, &b, a_sum) as i64, 128 * 128 * MAX_DIM as i64, "{}", name_of(path));
            assert_eq!(dot_on(path, &a, &c, a_sum) as i64, -128 * 127 * MAX_DIM as i64, "{}", name_of(path));
        }
        // The batch entry point on the forced paths.
        let dim = 385;
        let rows: Vec<i8> = (0..dim * 9).map(|_| rng.gen()).collect();
        let q: Vec<i8> = (0..dim).map(|_| rng.gen()).collect();
        let want: Vec<i32> = rows.chunks_exact(dim).map(|r| scalar_dot(&q, r)).collect();
        for isa in supported_isas() {
            force_isa(Some(isa)).unwrap();
            let mut out = vec![0i32; 9];
            dot_rows_i8(&q, &rows, dim, &mut out);
            assert_eq!(out, want, "{isa:?}");
            assert_eq!(dot_i8(&q, &rows[..dim]), want[0]);
        }
        force_isa(None).unwrap();
    }

    #[test]
    fn avx512_means_vnni_and_neon_means_sdot_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            let vnni = is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni");
            assert_eq!(path_name(Isa::Avx512), if vnni { "avx512-vnni" } else { "avx2" });
        }
        #[cfg(target_arch = "aarch64")]
        if is_supported(Isa::Neon) {
            let sdot = std::arch::is_aarch64_feature_detected!("dotprod");
            assert_eq!(path_name(Isa::Neon), if sdot { "neon-dotprod" } else { "neon" });
        }
        assert_eq!(path_name(Isa::Scalar), "scalar");
    }

    #[test]
    fn quantised_dot_products_stay_within_the_bound() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for dim in [1usize, 3, 64, 384, 1536] {
            for _ in 0..50 {
                let unit = |rng: &mut rand::rngs::StdRng| {
                    let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
                };
                let (a, b) = (unit(&mut rng), unit(&mut rng));
                let (mut qa, mut qb) = (vec![0i8; dim], vec![0i8; dim]);
                let (fa, fb) = (quantize_i8(&a, &mut qa), quantize_i8(&b, &mut qb));
                assert!(qa.iter().chain(&qb).all(|&x| x != -128));
                let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
                let approx = fa as f64 * fb as f64 * dot_i8(&qa, &qb) as f64;
                assert!((approx - exact).abs() <= int8_error_bound(dim, 1.0, fa, 1.0, fb) as f64, "dim {dim}: {approx} vs {exact}");
            }
        }
        let mut out = [5i8; 3];
        assert_eq!(quantize_i8(&[0.0, 0.0, 0.0], &mut out), 0.0);
        assert_eq!(out, [0, 0, 0]);
        assert_eq!(quantize_i8(&[2.0, -1.0, 0.5], &mut out), 2.0 / 127.0);
        assert_eq!(out, [127, -64, 32]);
    }
}
