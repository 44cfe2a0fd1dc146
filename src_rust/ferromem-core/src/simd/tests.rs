//! Kernel tests: every ISA path this CPU supports, forced in turn, against an f64 baseline.
//!
//! Buffers are padded with NaN before and after the data a kernel may use, so a kernel that
//! reads past a slice (a full-width load where a masked one was due, a wrong row stride)
//! and lets the value reach its result fails with NaN instead of passing by luck.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Mutex, MutexGuard};

/// Lane boundaries of every path (4, 8, 16 lanes; 4 accumulators; masked tails) and the
/// embedding sizes the engine sees in practice.
fn dims() -> Vec<usize> {
    let mut dims: Vec<usize> = (1..=70).collect();
    dims.extend([127, 128, 129, 255, 256, 257, 383, 384, 385, 767, 768, 1023, 1024, 1535, 1536, 1537]);
    dims
}

/// Serialises the tests that change the process-wide active ISA.
pub(super) static FORCE_LOCK: Mutex<()> = Mutex::new(());

/// Holds `FORCE_LOCK` and puts the ISA that was active before back on drop, even when the
/// test panics, so that a failure does not leave later tests on a forced path.
struct ForcedIsa {
    previous: Isa,
    _lock: MutexGuard<'static, ()>,
}

impl ForcedIsa {
    fn lock() -> ForcedIsa {
        // A panicking test poisons the lock; the guarded state (the ISA) is restored by
        // Drop regardless, so the poison carries no information here.
        let lock = FORCE_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ForcedIsa { previous: active_isa(), _lock: lock }
    }

    fn force(&self, isa: Isa) {
        force_isa(Some(isa)).expect("supported_isas() lists only ISAs force_isa accepts");
        assert_eq!(active_isa(), isa);
    }
}

impl Drop for ForcedIsa {
    fn drop(&mut self) {
        force_isa(Some(self.previous)).expect("the previous ISA was supported");
    }
}

/// Runs `check` once per ISA this CPU supports, with that ISA forced.
fn for_each_isa(mut check: impl FnMut(Isa)) {
    let forced = ForcedIsa::lock();
    for isa in supported_isas() {
        forced.force(isa);
        check(isa);
    }
}

#[derive(Clone, Copy, Debug)]
enum Values {
    /// Uniform in [-1, 1): typical normalised embeddings.
    Uniform,
    /// Random sign and a magnitude of 10^e, e uniform in [-18, 15]: products span 1e-36 to
    /// 1e30, so the sum mixes huge and subnormal terms and cancels heavily. The bounds keep
    /// a 1537-term sum below f32::MAX.
    Adversarial,
}

fn random_values(rng: &mut StdRng, len: usize, kind: Values) -> Vec<f32> {
    (0..len)
        .map(|_| match kind {
            Values::Uniform => rng.gen_range(-1.0f32..1.0),
            Values::Adversarial => {
                let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
                let exponent = rng.gen_range(-18.0f64..15.0);
                (sign * 10f64.powf(exponent)) as f32
            }
        })
        .collect()
}

/// `data` placed at `offset` floats into a buffer whose other elements are NaN
/// (`offset` before, 17 after: more than one 16-lane vector).
struct Padded {
    buf: Vec<f32>,
    offset: usize,
    len: usize,
}

impl Padded {
    fn new(data: &[f32], offset: usize) -> Padded {
        let mut buf = vec![f32::NAN; offset + data.len() + 17];
        buf[offset..offset + data.len()].copy_from_slice(data);
        Padded { buf, offset, len: data.len() }
    }

    fn slice(&self) -> &[f32] {
        &self.buf[self.offset..self.offset + self.len]
    }
}

/// Exact-ish dot product and the sum of |a_i * b_i| (the scale of the rounding error).
fn dot_f64(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(sum, abs), (&x, &y)| {
        let p = x as f64 * y as f64;
        (sum + p, abs + p.abs())
    })
}

/// f32 accumulation over `dim` terms in a few dozen partial sums: the error stays well
/// inside 1e-5 of the magnitude sum (about 170 f32 ulps).
fn assert_close(got: f32, a: &[f32], b: &[f32], context: &dyn Fn() -> String) {
    let (exact, abs_sum) = dot_f64(a, b);
    let err = (got as f64 - exact).abs();
    let tolerance = 1e-5 * abs_sum + 1e-6;
    assert!(err <= tolerance, "{}: got {got}, expected {exact}, |err| {err:e} > tolerance {tolerance:e}", context());
}

#[test]
fn dot_f32_matches_f64_baseline_on_every_isa() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0001);
    for_each_isa(|isa| {
        for dim in dims() {
            for kind in [Values::Uniform, Values::Adversarial] {
                let a = random_values(&mut rng, dim, kind);
                let b = random_values(&mut rng, dim, kind);
                for (offset_a, offset_b) in [(0, 0), (1, 1), (0, 1), (1, 0)] {
                    let pa = Padded::new(&a, offset_a);
                    let pb = Padded::new(&b, offset_b);
                    let got = dot_f32(pa.slice(), pb.slice());
                    assert_close(got, &a, &b, &|| format!("{isa:?} dot_f32 dim {dim} {kind:?} offsets ({offset_a}, {offset_b})"));
                    // The explicit-ISA entry point runs the same code: bit-identical.
                    let with = dot_f32_with(isa, pa.slice(), pb.slice()).unwrap();
                    assert_eq!(with.to_bits(), got.to_bits(), "{isa:?} dot_f32_with dim {dim}");
                }
            }
        }
    });
}

#[test]
fn dot_f32_of_empty_slices_is_zero() {
    for_each_isa(|isa| {
        assert_eq!(dot_f32(&[], &[]), 0.0, "{isa:?}");
    });
}

#[test]
fn dot_f32_exact_on_small_integers() {
    // Integer products and sums below 2^24 are exact in f32 whatever the summation order,
    // so every path must give exactly the same answer.
    for_each_isa(|isa| {
        for dim in dims() {
            let a: Vec<f32> = (0..dim).map(|i| (i % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..dim).map(|i| (i % 5) as f32 - 2.0).collect();
            let expected: f32 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum::<f64>() as f32;
            assert_eq!(dot_f32(&a, &b), expected, "{isa:?} dim {dim}");
        }
    });
}

#[test]
fn dot_f32_with_checks_support_and_not_the_active_isa() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0002);
    let a = random_values(&mut rng, 1537, Values::Uniform);
    let b = random_values(&mut rng, 1537, Values::Uniform);
    for isa in supported_isas() {
        let got = dot_f32_with(isa, &a, &b).unwrap();
        assert_close(got, &a, &b, &|| format!("{isa:?} dot_f32_with"));
    }
    for isa in unsupported_isas() {
        assert_eq!(dot_f32_with(isa, &a, &b), Err(UnsupportedIsa(isa)));
    }
}

#[test]
fn dot_rows_matches_baseline_and_reads_only_its_rows() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0003);
    for_each_isa(|isa| {
        for dim in dims() {
            for kind in [Values::Uniform, Values::Adversarial] {
                let n = 7;
                let query = random_values(&mut rng, dim, kind);
                // One extra row of NaN after the n rows: out.len() bounds the rows read.
                let mut arena = random_values(&mut rng, n * dim, kind);
                arena.extend(std::iter::repeat_n(f32::NAN, dim));
                for offset in [0, 1] {
                    let pq = Padded::new(&query, offset);
                    let pa = Padded::new(&arena, offset);
                    let mut out = vec![f32::NAN; n];
                    dot_rows(pq.slice(), pa.slice(), dim, &mut out);
                    for (i, &got) in out.iter().enumerate() {
                        let row = &arena[i * dim..(i + 1) * dim];
                        assert_close(got, &query, row, &|| format!("{isa:?} dot_rows dim {dim} {kind:?} offset {offset} row {i}"));
                        // The engine ranks one query's rows against each other, whichever
                        // entry point scored them: same bits as the single dot product.
                        assert_eq!(got.to_bits(), dot_f32(pq.slice(), row).to_bits(), "{isa:?} dim {dim} row {i}");
                    }
                }
            }
        }
    });
}

#[test]
fn dot_rows_with_no_rows_or_zero_dim() {
    for_each_isa(|isa| {
        let mut out: Vec<f32> = vec![];
        dot_rows(&[1.0, 2.0], &[3.0, 4.0], 2, &mut out);
        let mut out = vec![f32::NAN; 3];
        dot_rows(&[], &[], 0, &mut out);
        assert_eq!(out, vec![0.0; 3], "{isa:?}");
    });
}

#[test]
fn dot_gather_matches_baseline_and_skips_unselected_rows() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0004);
    let arena_rows = 9;
    // Unordered, repeated, first and last rows; rows 1, 4 and 6 are never selected.
    let rows: Vec<u32> = vec![8, 0, 3, 3, 7, 2, 5, 0, 8];
    for_each_isa(|isa| {
        for dim in dims() {
            for kind in [Values::Uniform, Values::Adversarial] {
                let query = random_values(&mut rng, dim, kind);
                let mut arena = random_values(&mut rng, arena_rows * dim, kind);
                for unselected in [1, 4, 6] {
                    arena[unselected * dim..(unselected + 1) * dim].fill(f32::NAN);
                }
                for offset in [0, 1] {
                    let pq = Padded::new(&query, offset);
                    let pa = Padded::new(&arena, offset);
                    for take in [0, 1, 2, rows.len()] {
                        let mut out = vec![f32::NAN; take];
                        dot_gather(pq.slice(), pa.slice(), dim, &rows[..take], &mut out);
                        for (j, &got) in out.iter().enumerate() {
                            let r = rows[j] as usize;
                            let row = &arena[r * dim..(r + 1) * dim];
                            assert_close(got, &query, row, &|| format!("{isa:?} dot_gather dim {dim} {kind:?} offset {offset} row {r}"));
                            assert_eq!(got.to_bits(), dot_f32(pq.slice(), row).to_bits(), "{isa:?} dim {dim} row {r}");
                        }
                    }
                }
            }
        }
    });
}

/// Dimensions for the multi-query kernel: every tail length of the 4-, 8- and 16-lane
/// paths once, and the large embedding sizes.
fn multi_dims() -> Vec<usize> {
    let mut dims: Vec<usize> = (1..=33).collect();
    dims.extend([63, 64, 65, 127, 128, 129, 383, 384, 385, 1535, 1536, 1537]);
    dims
}

fn check_dot_rows_multi(isa: Isa, rng: &mut StdRng, nq: usize, dim: usize, n: usize, kind: Values, offset: usize) {
    let queries = random_values(rng, nq * dim, kind);
    // A NaN row after the n rows: n, not the arena's length, bounds the rows read.
    let mut arena = random_values(rng, n * dim, kind);
    arena.extend(std::iter::repeat_n(f32::NAN, dim));
    let pq = Padded::new(&queries, offset);
    let pa = Padded::new(&arena, offset);
    let mut out = vec![f32::NAN; nq * n];
    dot_rows_multi(pq.slice(), nq, pa.slice(), dim, n, &mut out);
    for q in 0..nq {
        let query = &queries[q * dim..(q + 1) * dim];
        for i in 0..n {
            let row = &arena[i * dim..(i + 1) * dim];
            assert_close(out[q * n + i], query, row, &|| {
                format!("{isa:?} dot_rows_multi nq {nq} n {n} dim {dim} {kind:?} offset {offset} query {q} row {i}")
            });
        }
    }
}

#[test]
fn dot_rows_multi_matches_baseline_for_every_tile_remainder() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0005);
    for_each_isa(|isa| {
        for dim in multi_dims() {
            for nq in 1..=9 {
                // Row counts around the 1-, 2- and 4-row tiles, none a multiple of 4 but 8.
                for n in [1, 3, 8, 13] {
                    let kind = if (dim + nq + n) % 2 == 0 { Values::Uniform } else { Values::Adversarial };
                    check_dot_rows_multi(isa, &mut rng, nq, dim, n, kind, (nq + n) % 2);
                }
            }
        }
    });
}

#[test]
fn dot_rows_multi_spans_several_cache_chunks() {
    // Enough rows that the cache blocking splits them into chunks, the last one partial
    // and not a multiple of the row tile.
    let mut rng = StdRng::seed_from_u64(0x5EED_0006);
    for_each_isa(|isa| {
        for dim in [384, 1536, 1537] {
            let n = 2 * rows_per_chunk(dim, 4, MULTI_CHUNK_BYTES) + 7;
            for nq in [1, 4, 7] {
                for kind in [Values::Uniform, Values::Adversarial] {
                    check_dot_rows_multi(isa, &mut rng, nq, dim, n, kind, 1);
                }
            }
        }
    });
}

#[test]
fn dot_rows_multi_with_nothing_to_do() {
    for_each_isa(|_| {
        dot_rows_multi(&[], 0, &[1.0; 8], 4, 2, &mut []);
        dot_rows_multi(&[1.0; 8], 2, &[], 4, 0, &mut []);
        let mut out = vec![f32::NAN; 6];
        dot_rows_multi(&[], 2, &[], 0, 3, &mut out);
        assert_eq!(out, vec![0.0; 6]);
    });
}

fn unsupported_isas() -> Vec<Isa> {
    let supported = supported_isas();
    Isa::ALL.into_iter().filter(|isa| !supported.contains(isa)).collect()
}

#[test]
fn force_isa_rejects_what_the_cpu_lacks_and_changes_nothing() {
    let forced = ForcedIsa::lock();
    forced.force(Isa::Scalar);
    // On x86_64 Neon is never supported, on aarch64 neither AVX path is.
    let unsupported = unsupported_isas();
    assert!(!unsupported.is_empty());
    for isa in unsupported {
        let err = force_isa(Some(isa)).unwrap_err();
        assert_eq!(err, UnsupportedIsa(isa));
        assert!(err.to_string().contains(isa.name()), "{err}");
        assert_eq!(active_isa(), Isa::Scalar, "a failed force_isa({isa:?}) changed the active ISA");
    }
}

#[test]
fn force_isa_none_returns_to_the_detected_isa() {
    let forced = ForcedIsa::lock();
    forced.force(Isa::Scalar);
    force_isa(None).unwrap();
    assert_eq!(active_isa(), detected_isa());
}

#[test]
fn detection_lists_scalar_first_and_the_best_last() {
    let supported = supported_isas();
    assert_eq!(supported.first(), Some(&Isa::Scalar));
    assert_eq!(supported.last(), Some(&detected_isa()));
    #[cfg(target_arch = "aarch64")]
    assert_eq!(detected_isa(), Isa::Neon);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(!supported.contains(&Isa::Neon));
        assert_eq!(supported.contains(&Isa::Avx2), is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        assert_eq!(supported.contains(&Isa::Avx512), is_x86_feature_detected!("avx512f"));
    }
}

#[test]
fn isa_names_round_trip() {
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
        assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
        assert_eq!(isa.to_string(), isa.name());
    }
    assert_eq!(Isa::from_name(" avx2\n"), Some(Isa::Avx2));
    assert_eq!(Isa::from_name("sse"), None);
    assert_eq!(Isa::from_name(""), None);
    assert_eq!(Isa::from_name("avx-512"), None);
}

#[test]
fn environment_request_falls_back_to_detected() {
    assert_eq!(initial_isa(None), detected_isa());
    assert_eq!(initial_isa(Some("")), detected_isa());
    assert_eq!(initial_isa(Some("scalar")), Isa::Scalar);
    assert_eq!(initial_isa(Some("definitely-not-an-isa")), detected_isa());
    for isa in supported_isas() {
        assert_eq!(initial_isa(Some(isa.name())), isa);
    }
    for isa in unsupported_isas() {
        assert_eq!(initial_isa(Some(isa.name())), detected_isa());
    }
}

#[test]
#[should_panic(expected = "dot_f32")]
fn dot_f32_panics_on_length_mismatch() {
    dot_f32(&[1.0, 2.0], &[1.0]);
}

#[test]
#[should_panic(expected = "dot_rows: arena.len()")]
fn dot_rows_panics_on_short_arena() {
    let mut out = [0.0; 3];
    dot_rows(&[1.0, 2.0], &[1.0; 5], 2, &mut out);
}

#[test]
#[should_panic(expected = "dot_rows: query.len()")]
fn dot_rows_panics_on_query_of_wrong_dim() {
    let mut out = [0.0; 1];
    dot_rows(&[1.0, 2.0, 3.0], &[1.0; 4], 2, &mut out);
}

#[test]
#[should_panic(expected = "row index 3 outside an arena of 3 rows")]
fn dot_gather_panics_on_row_outside_arena() {
    let mut out = [0.0; 2];
    dot_gather(&[1.0, 2.0], &[1.0; 6], 2, &[0, 3], &mut out);
}

#[test]
#[should_panic(expected = "dot_gather: out.len()")]
fn dot_gather_panics_when_out_and_rows_differ() {
    let mut out = [0.0; 1];
    dot_gather(&[1.0, 2.0], &[1.0; 6], 2, &[0, 1], &mut out);
}

#[test]
#[should_panic(expected = "dot_rows_multi: out.len()")]
fn dot_rows_multi_panics_on_wrong_out_len() {
    let mut out = [0.0; 5];
    dot_rows_multi(&[1.0; 4], 2, &[1.0; 6], 2, 3, &mut out);
}

#[test]
#[should_panic(expected = "dot_rows_multi: queries.len()")]
fn dot_rows_multi_panics_on_wrong_queries_len() {
    let mut out = [0.0; 6];
    dot_rows_multi(&[1.0; 5], 2, &[1.0; 6], 2, 3, &mut out);
}

/// bfloat16 rounding is round-to-nearest-even on the top 16 bits (checked against the
/// `half` crate's conversion, and on the ties themselves), and widening is exact.
#[test]
fn bf16_rounding_and_widening() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0B16);
    let mut values = random_values(&mut rng, 20_000, Values::Adversarial);
    values.extend(random_values(&mut rng, 20_000, Values::Uniform));
    values.extend([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY]);
    // Exact ties between two bf16 values: kept bit even stays, odd rounds up.
    values.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::from_bits(0xbf81_8000)]);
    let mut bits = vec![0u16; values.len()];
    bf16::to_bf16_bits(&values, 1.0, &mut bits);
    for (&x, &b) in values.iter().zip(&bits) {
        assert_eq!(b, ::half::bf16::from_f32(x).to_bits(), "rounding {x:e} ({:#010x})", x.to_bits());
    }
    assert_eq!(&bits[bits.len() - 3..], &[0x3f80, 0x3f82, 0xbf82]);
    let mut nan = [0u16];
    bf16::to_bf16_bits(&[f32::NAN], 1.0, &mut nan);
    assert!(bf16::to_f32(nan[0]).is_nan());
    // Every bf16 value widens to the f32 with the same top half and a zero bottom half.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut wide = vec![0f32; all.len()];
    bf16::widen(&all, &mut wide);
    for (&b, &w) in all.iter().zip(&wide) {
        assert_eq!(w.to_bits(), (b as u32) << 16);
    }
}

/// The bf16 kernels on every ISA (and, under AVX-512, `vdpbf16ps` where the CPU has
/// AVX-512 BF16) against the f64 sums of the widened values, at every lane boundary.
#[test]
fn bf16_kernels_match_the_widened_f64_sum_on_every_isa() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0B17);
    for_each_isa(|isa| {
        for dim in dims() {
            let n = 5;
            let query = random_values(&mut rng, dim, Values::Uniform);
            let rows_f32 = random_values(&mut rng, n * dim, Values::Uniform);
            let mut rows = vec![0u16; n * dim];
            bf16::to_bf16_bits(&rows_f32, 1.0, &mut rows);
            // A bf16 row buffer followed by NaNs: a read past the rows poisons the result.
            let mut padded = rows.clone();
            padded.extend([0x7fc0u16; 40]);
            let mut query_bits = vec![0u16; dim];
            bf16::to_bf16_bits(&query, 1.0, &mut query_bits);
            let mut wide_rows = vec![0f32; n * dim];
            bf16::widen(&rows, &mut wide_rows);
            let mut wide_query = vec![0f32; dim];
            bf16::widen(&query_bits, &mut wide_query);

            let mut out = vec![f32::NAN; n];
            bf16::dot_rows_bf16(&query, &padded, dim, &mut out);
            let mut pairs = vec![f32::NAN; n];
            bf16::dot_rows_bf16_pairs(&query_bits, &padded, dim, &mut pairs);
            for j in 0..n {
                let row = &wide_rows[j * dim..(j + 1) * dim];
                let context = || format!("{isa:?} ({}), dim {dim}, row {j}", bf16::path_name(isa));
                assert_close(out[j], &query, row, &context);
                assert_close(pairs[j], &wide_query, row, &context);
            }
        }
    });
}
