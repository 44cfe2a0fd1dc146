//! Portable kernels: the reference path and the fallback on CPUs without a SIMD path.
//!
//! Eight independent partial sums, not one running sum: the compiler may not reorder float
//! additions, so a single sum would be one long dependency chain (slow) that also
//! accumulates rounding error linearly in the length. Eight lanes let it vectorise to the
//! baseline SIMD (two SSE2 registers on x86_64) and keep the error close to the SIMD paths.

const LANES: usize = 8;

/// Dot product of two slices of equal length (the caller checks).
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (x, y)) in tail_a.iter().zip(tail_b).enumerate() {
        acc[k] += x * y;
    }
    let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3])
}

/// `out[i] = dot(query, row i)`; the caller checked `arena.len() >= out.len() * dim`.
pub(super) fn dot_rows(query: &[f32], arena: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(arena.chunks_exact(dim)) {
        *o = dot(query, row);
    }
}

/// `out[j] = dot(query, row rows[j])`; the caller checked the indices.
pub(super) fn dot_gather(query: &[f32], arena: &[f32], dim: usize, rows: &[u32], out: &mut [f32]) {
    for (o, &r) in out.iter_mut().zip(rows) {
        let start = r as usize * dim;
        *o = dot(query, &arena[start..start + dim]);
    }
}

/// `out[q*n + i] = dot(query q, row i)`, rows in cache-sized chunks so every query of the
/// batch reads a chunk while it is still in cache.
pub(super) fn dot_rows_multi(queries: &[f32], nq: usize, arena: &[f32], dim: usize, n: usize, out: &mut [f32]) {
    debug_assert_eq!(queries.len(), nq * dim);
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    let chunk = super::rows_per_chunk(dim, 1, super::MULTI_CHUNK_BYTES);
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + chunk).min(n);
        let rows = &arena[c0 * dim..c1 * dim];
        for (query, out_q) in queries.chunks_exact(dim).zip(out.chunks_exact_mut(n)) {
            dot_rows(query, rows, dim, &mut out_q[c0..c1]);
        }
        c0 = c1;
    }
}
