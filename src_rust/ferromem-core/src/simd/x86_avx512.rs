//! AVX-512F kernels: 16 f32 lanes, FMA, masked loads for the tail (no scalar remainder).
//!
//! # Safety (every function)
//! The CPU must support AVX-512F, and the pointers must be valid for the reads and writes
//! that the documented lengths imply. `super` checks both before calling.

use std::arch::x86_64::*;

const LANES: usize = 16;

/// Mask selecting the first `rem` lanes, `0 < rem < LANES`.
#[inline(always)]
fn tail_mask(rem: usize) -> __mmask16 {
    debug_assert!(rem > 0 && rem < LANES);
    ((1u32 << rem) - 1) as __mmask16
}

/// Dot product of `n` floats at `a` and `b`.
///
/// Four independent accumulators: an FMA has a latency of about four cycles and two can
/// issue per cycle, so one accumulator would leave most of the FMA throughput idle.
/// When `PREFETCH` is set, the row at `next` (also `n` floats) is prefetched into L1 at
/// the pace of the current one, so that a gather keeps two rows in flight.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dot_impl<const PREFETCH: bool>(a: *const f32, b: *const f32, n: usize, next: *const f32) -> f32 {
    unsafe {
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut acc2 = _mm512_setzero_ps();
        let mut acc3 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 4 * LANES <= n {
            if PREFETCH {
                // 64 floats = four cache lines of the next row.
                let p = next.add(i) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.add(64));
                _mm_prefetch::<_MM_HINT_T0>(p.add(128));
                _mm_prefetch::<_MM_HINT_T0>(p.add(192));
            }
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i + LANES)), _mm512_loadu_ps(b.add(i + LANES)), acc1);
            acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i + 2 * LANES)), _mm512_loadu_ps(b.add(i + 2 * LANES)), acc2);
            acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i + 3 * LANES)), _mm512_loadu_ps(b.add(i + 3 * LANES)), acc3);
            i += 4 * LANES;
        }
        if PREFETCH && i < n {
            // The lines of the next row that the loop above did not reach (at most 4).
            let mut j = i;
            while j < n {
                _mm_prefetch::<_MM_HINT_T0>(next.add(j) as *const i8);
                j += LANES;
            }
        }
        while i + LANES <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc0);
            i += LANES;
        }
        if i < n {
            // Masked-off lanes are neither read nor faulted on, so the tail may end
            // anywhere, even at the last byte of a mapping.
            let m = tail_mask(n - i);
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.add(i)), _mm512_maskz_loadu_ps(m, b.add(i)), acc1);
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3));
        _mm512_reduce_add_ps(sum)
    }
}

/// Dot product of `n` floats at `a` and `b`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    unsafe { dot_impl::<false>(a, b, n, std::ptr::null()) }
}

/// `out[i] = dot(query, arena + i*dim)` for `i < n`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_rows(query: *const f32, arena: *const f32, dim: usize, out: *mut f32, n: usize) {
    unsafe {
        for i in 0..n {
            *out.add(i) = dot_impl::<false>(query, arena.add(i * dim), dim, std::ptr::null());
        }
    }
}

/// `out[j] = dot(query, arena + rows[j]*dim)` for `j < n`; every `rows[j]` is a valid row.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_gather(query: *const f32, arena: *const f32, dim: usize, rows: *const u32, out: *mut f32, n: usize) {
    unsafe {
        if n == 0 {
            return;
        }
        for j in 0..n - 1 {
            let row = arena.add(*rows.add(j) as usize * dim);
            let next = arena.add(*rows.add(j + 1) as usize * dim);
            *out.add(j) = dot_impl::<true>(query, row, dim, next);
        }
        let last = arena.add(*rows.add(n - 1) as usize * dim);
        *out.add(n - 1) = dot_impl::<false>(query, last, dim, std::ptr::null());
    }
}

/// Register tile: `QB` queries (stride `dim`) x `RB` rows (stride `dim`), written to
/// `out[i*out_stride + j]`. `QB*RB` accumulators, `RB` row registers and one query
/// register must fit the 32 zmm registers: 4x4 uses 21.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const QB: usize, const RB: usize>(queries: *const f32, rows: *const f32, dim: usize, out: *mut f32, out_stride: usize) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); RB]; QB];
        let mut k = 0;
        while k + LANES <= dim {
            let mut r = [_mm512_setzero_ps(); RB];
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = _mm512_loadu_ps(rows.add(j * dim + k));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let q = _mm512_loadu_ps(queries.add(i * dim + k));
                for (j, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(q, r[j], *a);
                }
            }
            k += LANES;
        }
        if k < dim {
            let m = tail_mask(dim - k);
            let mut r = [_mm512_setzero_ps(); RB];
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = _mm512_maskz_loadu_ps(m, rows.add(j * dim + k));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let q = _mm512_maskz_loadu_ps(m, queries.add(i * dim + k));
                for (j, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(q, r[j], *a);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, a) in acc_i.iter().enumerate() {
                *out.add(i * out_stride + j) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

super::define_dot_rows_multi!("avx512f", 4, 4);
