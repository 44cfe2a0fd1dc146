//! AVX2 + FMA: 8 f32 lanes, masked loads (`vmaskmovps`) for the tail. The kernels are the
//! shapes of [`super::shape`] on these operations.
//!
//! # Safety (every function)
//! The CPU must support AVX2 and FMA, and the pointers must be valid for the reads and
//! writes that the documented lengths imply. `super` checks both before calling.

use std::arch::x86_64::*;

pub(super) const LANES: usize = 8;
pub(super) type V = __m256;

#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn zero() -> V {
    _mm256_setzero_ps()
}

#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn load(p: *const f32) -> V {
    unsafe { _mm256_loadu_ps(p) }
}

/// The first `rem` values at `p`, `0 < rem < LANES`: masked-off lanes are not read.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn load_partial(p: *const f32, rem: usize) -> V {
    debug_assert!(rem > 0 && rem < LANES);
    let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    unsafe { _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lane_index)) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn fma(a: V, b: V, acc: V) -> V {
    _mm256_fmadd_ps(a, b, acc)
}

#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn add(a: V, b: V) -> V {
    _mm256_add_ps(a, b)
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn reduce(v: V) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn prefetch(p: *const f32) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
}

super::shape::define_f32_kernels!("avx2,fma");
// 4x2 tiles: 8 accumulators, 2 row registers and a query register of the 16 ymm.
super::shape::define_dot_rows_multi!("avx2,fma", 4, 2);
