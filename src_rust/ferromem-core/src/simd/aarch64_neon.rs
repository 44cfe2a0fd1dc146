//! aarch64 Advanced SIMD (NEON): 4 f32 lanes, fused multiply-add. The kernels are the
//! shapes of [`super::shape`] on these operations.
//!
//! NEON is architecturally mandatory on aarch64, so this path is always supported there;
//! the `target_feature` attributes keep it correct on targets that disable it by default.
//! No software prefetch: the stable intrinsic is x86-only, and aarch64 cores prefetch
//! streams within a row well on their own.
//!
//! # Safety (every function)
//! The CPU must support NEON, and the pointers must be valid for the reads and writes that
//! the documented lengths imply. `super` checks both before calling.

use std::arch::aarch64::*;

pub(super) const LANES: usize = 4;
pub(super) type V = float32x4_t;

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn zero() -> V {
    vdupq_n_f32(0.0)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) unsafe fn load(p: *const f32) -> V {
    unsafe { vld1q_f32(p) }
}

/// The first `rem` values at `p`, `0 < rem < LANES`, through a zeroed buffer: NEON has no
/// masked load, and nothing beyond the tail may be read.
#[target_feature(enable = "neon")]
#[inline]
pub(super) unsafe fn load_partial(p: *const f32, rem: usize) -> V {
    debug_assert!(rem > 0 && rem < LANES);
    let mut buf = [0.0f32; LANES];
    unsafe {
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem);
        vld1q_f32(buf.as_ptr())
    }
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn fma(a: V, b: V, acc: V) -> V {
    vfmaq_f32(acc, a, b)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn add(a: V, b: V) -> V {
    vaddq_f32(a, b)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn reduce(v: V) -> f32 {
    vaddvq_f32(v)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) unsafe fn prefetch(_p: *const f32) {}

super::shape::define_f32_kernels!("neon");
// 4x4 tiles: 16 accumulators, 4 row registers and a query register of the 32 registers.
super::shape::define_dot_rows_multi!("neon", 4, 4);
