//! aarch64 Advanced SIMD (NEON) kernels: 4 f32 lanes, fused multiply-add, scalar tail.
//!
//! NEON is architecturally mandatory on aarch64, so this path is always supported there;
//! the `target_feature` attributes keep it correct on targets that disable it by default.
//!
//! # Safety (every function)
//! The CPU must support NEON, and the pointers must be valid for the reads and writes that
//! the documented lengths imply. `super` checks both before calling.

use std::arch::aarch64::*;

const LANES: usize = 4;

/// Dot product of `n` floats at `a` and `b`.
///
/// Four independent accumulators of four lanes cover the FMA latency of current cores.
#[target_feature(enable = "neon")]
#[inline]
pub(super) unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        let mut acc2 = vdupq_n_f32(0.0);
        let mut acc3 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 4 * LANES <= n {
            // vfmaq_f32(acc, x, y) = acc + x * y
            acc0 = vfmaq_f32(acc0, vld1q_f32(a.add(i)), vld1q_f32(b.add(i)));
            acc1 = vfmaq_f32(acc1, vld1q_f32(a.add(i + LANES)), vld1q_f32(b.add(i + LANES)));
            acc2 = vfmaq_f32(acc2, vld1q_f32(a.add(i + 2 * LANES)), vld1q_f32(b.add(i + 2 * LANES)));
            acc3 = vfmaq_f32(acc3, vld1q_f32(a.add(i + 3 * LANES)), vld1q_f32(b.add(i + 3 * LANES)));
            i += 4 * LANES;
        }
        while i + LANES <= n {
            acc0 = vfmaq_f32(acc0, vld1q_f32(a.add(i)), vld1q_f32(b.add(i)));
            i += LANES;
        }
        let mut sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
        while i < n {
            sum += *a.add(i) * *b.add(i);
            i += 1;
        }
        sum
    }
}

/// `out[i] = dot(query, arena + i*dim)` for `i < n`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_rows(query: *const f32, arena: *const f32, dim: usize, out: *mut f32, n: usize) {
    unsafe {
        for i in 0..n {
            *out.add(i) = dot(query, arena.add(i * dim), dim);
        }
    }
}

/// `out[j] = dot(query, arena + rows[j]*dim)` for `j < n`; every `rows[j]` is a valid row.
/// No software prefetch: the stable intrinsic is x86-only, and aarch64 cores prefetch
/// streams within a row well on their own.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_gather(query: *const f32, arena: *const f32, dim: usize, rows: *const u32, out: *mut f32, n: usize) {
    unsafe {
        for j in 0..n {
            *out.add(j) = dot(query, arena.add(*rows.add(j) as usize * dim), dim);
        }
    }
}

/// Register tile: `QB` queries (stride `dim`) x `RB` rows (stride `dim`), written to
/// `out[i*out_stride + j]`. `QB*RB` accumulators, `RB` row registers and one query
/// register must fit the 32 vector registers: 4x4 uses 21.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn tile<const QB: usize, const RB: usize>(queries: *const f32, rows: *const f32, dim: usize, out: *mut f32, out_stride: usize) {
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); RB]; QB];
        let mut k = 0;
        while k + LANES <= dim {
            let mut r = [vdupq_n_f32(0.0); RB];
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = vld1q_f32(rows.add(j * dim + k));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let q = vld1q_f32(queries.add(i * dim + k));
                for (j, a) in acc_i.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, q, r[j]);
                }
            }
            k += LANES;
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, a) in acc_i.iter().enumerate() {
                let mut sum = vaddvq_f32(*a);
                for t in k..dim {
                    sum += *queries.add(i * dim + t) * *rows.add(j * dim + t);
                }
                *out.add(i * out_stride + j) = sum;
            }
        }
    }
}

super::define_dot_rows_multi!("neon", 4, 4);
