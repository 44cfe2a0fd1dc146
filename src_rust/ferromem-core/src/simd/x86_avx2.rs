//! AVX2 + FMA kernels: 8 f32 lanes, masked loads (`vmaskmovps`) for the tail.
//!
//! # Safety (every function)
//! The CPU must support AVX2 and FMA, and the pointers must be valid for the reads and
//! writes that the documented lengths imply. `super` checks both before calling.

use std::arch::x86_64::*;

const LANES: usize = 8;

/// Mask selecting the first `rem` lanes, `0 < rem < LANES`.
#[target_feature(enable = "avx2")]
#[inline]
fn tail_mask(rem: usize) -> __m256i {
    debug_assert!(rem > 0 && rem < LANES);
    let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lane_index)
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Dot product of `n` floats at `a` and `b`; four accumulators to cover the FMA latency.
/// When `PREFETCH` is set, the row at `next` (also `n` floats) is prefetched into L1 at
/// the pace of the current one, so that a gather keeps two rows in flight.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_impl<const PREFETCH: bool>(a: *const f32, b: *const f32, n: usize, next: *const f32) -> f32 {
    unsafe {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let mut acc3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 4 * LANES <= n {
            if PREFETCH {
                // 32 floats = two cache lines of the next row.
                let p = next.add(i) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.add(64));
            }
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + LANES)), _mm256_loadu_ps(b.add(i + LANES)), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 2 * LANES)), _mm256_loadu_ps(b.add(i + 2 * LANES)), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 3 * LANES)), _mm256_loadu_ps(b.add(i + 3 * LANES)), acc3);
            i += 4 * LANES;
        }
        if PREFETCH && i < n {
            _mm_prefetch::<_MM_HINT_T0>(next.add(i) as *const i8);
            if i + 16 < n {
                _mm_prefetch::<_MM_HINT_T0>(next.add(i + 16) as *const i8);
            }
        }
        while i + LANES <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc0);
            i += LANES;
        }
        if i < n {
            // Masked-off lanes are not read, so the tail may end at the end of a mapping.
            let m = tail_mask(n - i);
            acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(a.add(i), m), _mm256_maskload_ps(b.add(i), m), acc1);
        }
        hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)))
    }
}

/// Dot product of `n` floats at `a` and `b`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    unsafe { dot_impl::<false>(a, b, n, std::ptr::null()) }
}

/// `out[i] = dot(query, arena + i*dim)` for `i < n`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_rows(query: *const f32, arena: *const f32, dim: usize, out: *mut f32, n: usize) {
    unsafe {
        for i in 0..n {
            *out.add(i) = dot_impl::<false>(query, arena.add(i * dim), dim, std::ptr::null());
        }
    }
}

/// `out[j] = dot(query, arena + rows[j]*dim)` for `j < n`; every `rows[j]` is a valid row.
#[target_feature(enable = "avx2,fma")]
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
/// register must fit the 16 ymm registers: 4x2 uses 11.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const QB: usize, const RB: usize>(queries: *const f32, rows: *const f32, dim: usize, out: *mut f32, out_stride: usize) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RB]; QB];
        let mut k = 0;
        while k + LANES <= dim {
            let mut r = [_mm256_setzero_ps(); RB];
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = _mm256_loadu_ps(rows.add(j * dim + k));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let q = _mm256_loadu_ps(queries.add(i * dim + k));
                for (j, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(q, r[j], *a);
                }
            }
            k += LANES;
        }
        if k < dim {
            let m = tail_mask(dim - k);
            let mut r = [_mm256_setzero_ps(); RB];
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = _mm256_maskload_ps(rows.add(j * dim + k), m);
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let q = _mm256_maskload_ps(queries.add(i * dim + k), m);
                for (j, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(q, r[j], *a);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, a) in acc_i.iter().enumerate() {
                *out.add(i * out_stride + j) = hsum(*a);
            }
        }
    }
}

super::define_dot_rows_multi!("avx2,fma", 4, 2);
