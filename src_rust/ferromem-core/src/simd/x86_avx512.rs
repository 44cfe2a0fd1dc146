//! AVX-512F: 16 f32 lanes, FMA, masked loads for the tail (no scalar remainder). The
//! kernels are the shapes of [`super::shape`] on these operations.
//!
//! # Safety (every function)
//! The CPU must support AVX-512F, and the pointers must be valid for the reads and writes
//! that the documented lengths imply. `super` checks both before calling.

use std::arch::x86_64::*;

pub(super) const LANES: usize = 16;
pub(super) type V = __m512;

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn zero() -> V {
    _mm512_setzero_ps()
}

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn load(p: *const f32) -> V {
    unsafe { _mm512_loadu_ps(p) }
}

/// The first `rem` values at `p`, `0 < rem < LANES`: masked-off lanes are neither read nor
/// faulted on, so the tail may end anywhere, even at the last byte of a mapping.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn load_partial(p: *const f32, rem: usize) -> V {
    debug_assert!(rem > 0 && rem < LANES);
    unsafe { _mm512_maskz_loadu_ps(((1u32 << rem) - 1) as __mmask16, p) }
}

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn fma(a: V, b: V, acc: V) -> V {
    _mm512_fmadd_ps(a, b, acc)
}

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn add(a: V, b: V) -> V {
    _mm512_add_ps(a, b)
}

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn reduce(v: V) -> f32 {
    _mm512_reduce_add_ps(v)
}

#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn prefetch(p: *const f32) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
}

super::shape::define_f32_kernels!("avx512f");
// 4x4 tiles: 16 accumulators, 4 row registers and a query register of the 32 zmm.
super::shape::define_dot_rows_multi!("avx512f", 4, 4);
