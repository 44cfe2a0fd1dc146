//! The loop shapes of the SIMD kernels, written once. Each ISA module (`x86_avx2`,
//! `x86_avx512`, `aarch64_neon`) supplies only its vector operations, every one a
//! `#[target_feature]` `#[inline]` function of the module:
//!
//! | item                    | what it is                                                   |
//! |-------------------------|--------------------------------------------------------------|
//! | `LANES`, `V`            | f32 lanes of a vector, and the vector type                   |
//! | `zero()`                | a vector of zeros                                            |
//! | `load(p)`               | `LANES` values at `p`                                        |
//! | `load_partial(p, rem)`  | the `rem < LANES` values at `p`, zeros above; reads no more  |
//! | `fma(a, b, acc)`        | `acc + a * b`, fused                                         |
//! | `add(a, b)`, `reduce(v)`| lane-wise sum; the sum of the lanes                          |
//! | `prefetch(p)`           | the cache line at `p` into L1 (a no-op where unavailable)    |
//!
//! and expands [`define_f32_kernels!`] and [`define_dot_rows_multi!`] with its target
//! features. The kernels of other element types (`half`, `bf16`) run their own loads
//! through [`widened_dot!`] on the same operations. Because the shapes are macros expanded
//! inside `#[target_feature]` functions, every operation inlines into one loop, as if each
//! kernel were written out by hand.

/// Defines, in the ISA module that expands it, `dot` (one query x one row), `dot_rows`
/// (x consecutive rows), `dot_gather` (x rows by index, prefetching the next row while
/// scoring one) and `tile::<QB, RB>` (the register tile of [`define_dot_rows_multi!`]).
macro_rules! define_f32_kernels {
    ($features:literal) => {
        /// Floats per 64-byte cache line, the step of the prefetches.
        const FLOATS_PER_LINE: usize = 16;

        /// Dot product of `n` floats at `a` and `b`. Four independent accumulators: an FMA
        /// has a latency of about four cycles and two can issue per cycle, so one
        /// accumulator would leave most of the FMA throughput idle. When `PREFETCH` is set,
        /// the row at `next` (also `n` floats) is prefetched into L1 at the pace of the
        /// current one, so that a gather keeps two rows in flight.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dot_impl<const PREFETCH: bool>(a: *const f32, b: *const f32, n: usize, next: *const f32) -> f32 {
            unsafe {
                let (mut acc0, mut acc1, mut acc2, mut acc3) = (zero(), zero(), zero(), zero());
                let mut i = 0;
                while i + 4 * LANES <= n {
                    if PREFETCH {
                        // The lines of the next row that this step's values span.
                        let mut line = 0;
                        while line < 4 * LANES {
                            prefetch(next.add(i + line));
                            line += FLOATS_PER_LINE;
                        }
                    }
                    acc0 = fma(load(a.add(i)), load(b.add(i)), acc0);
                    acc1 = fma(load(a.add(i + LANES)), load(b.add(i + LANES)), acc1);
                    acc2 = fma(load(a.add(i + 2 * LANES)), load(b.add(i + 2 * LANES)), acc2);
                    acc3 = fma(load(a.add(i + 3 * LANES)), load(b.add(i + 3 * LANES)), acc3);
                    i += 4 * LANES;
                }
                if PREFETCH {
                    // The lines of the next row that the loop above did not reach.
                    let mut line = i;
                    while line < n {
                        prefetch(next.add(line));
                        line += FLOATS_PER_LINE;
                    }
                }
                while i + LANES <= n {
                    acc0 = fma(load(a.add(i)), load(b.add(i)), acc0);
                    i += LANES;
                }
                if i < n {
                    // Nothing beyond the tail is read, so it may end at the end of a mapping.
                    acc1 = fma(load_partial(a.add(i), n - i), load_partial(b.add(i), n - i), acc1);
                }
                reduce(add(add(acc0, acc1), add(acc2, acc3)))
            }
        }

        /// Dot product of `n` floats at `a` and `b`.
        #[target_feature(enable = $features)]
        #[inline]
        pub(super) unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
            unsafe { dot_impl::<false>(a, b, n, std::ptr::null()) }
        }

        /// `out[i] = dot(query, arena + i*dim)` for `i < n`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_rows(query: *const f32, arena: *const f32, dim: usize, out: *mut f32, n: usize) {
            unsafe {
                for i in 0..n {
                    *out.add(i) = dot_impl::<false>(query, arena.add(i * dim), dim, std::ptr::null());
                }
            }
        }

        /// `out[j] = dot(query, arena + rows[j]*dim)` for `j < n`; every `rows[j]` is a valid row.
        #[target_feature(enable = $features)]
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
        /// register must fit the ISA's vector registers.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn tile<const QB: usize, const RB: usize>(
            queries: *const f32,
            rows: *const f32,
            dim: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            unsafe {
                let mut acc = [[zero(); RB]; QB];
                let mut k = 0;
                while k + LANES <= dim {
                    tile_step::<QB, RB, false>(&mut acc, queries, rows, dim, k);
                    k += LANES;
                }
                if k < dim {
                    tile_step::<QB, RB, true>(&mut acc, queries, rows, dim, k);
                }
                for (i, acc_i) in acc.iter().enumerate() {
                    for (j, a) in acc_i.iter().enumerate() {
                        *out.add(i * out_stride + j) = reduce(*a);
                    }
                }
            }
        }

        /// One step of `tile`: the values at `k` (the last `dim - k < LANES` when `PARTIAL`).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn tile_step<const QB: usize, const RB: usize, const PARTIAL: bool>(
            acc: &mut [[V; RB]; QB],
            queries: *const f32,
            rows: *const f32,
            dim: usize,
            k: usize,
        ) {
            unsafe {
                let take = |p: *const f32| if PARTIAL { load_partial(p, dim - k) } else { load(p) };
                let mut r = [zero(); RB];
                for (j, rj) in r.iter_mut().enumerate() {
                    *rj = take(rows.add(j * dim + k));
                }
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let q = take(queries.add(i * dim + k));
                    for (j, a) in acc_i.iter_mut().enumerate() {
                        *a = fma(q, r[j], *a);
                    }
                }
            }
        }
    };
}
pub(super) use define_f32_kernels;

/// Defines `dot_rows_multi` in a SIMD module from that module's `tile::<QB, RB>` (a
/// register tile of QB queries x RB rows) and `dot` (one query x one row), so that every
/// path shares one blocking scheme:
///
/// ```text
/// for each chunk of rows that fits MULTI_CHUNK_BYTES (read from memory once):
///     for each tile of QB queries:            tile::<QB, RB> over the chunk, tile::<QB, 1> for its tail
///     for each query left over (nq % QB):     tile::<1, RB> over the chunk, dot for its tail
/// ```
macro_rules! define_dot_rows_multi {
    ($features:literal, $query_tile:literal, $row_tile:literal) => {
        /// `out[q*n + i] = dot(queries + q*dim, arena + i*dim)` for `q < nq`, `i < n`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_rows_multi(queries: *const f32, nq: usize, arena: *const f32, dim: usize, n: usize, out: *mut f32) {
            const QB: usize = $query_tile;
            const RB: usize = $row_tile;
            unsafe {
                let chunk = super::rows_per_chunk(dim, RB, super::MULTI_CHUNK_BYTES);
                let mut c0 = 0;
                while c0 < n {
                    let c1 = (c0 + chunk).min(n);
                    let mut q0 = 0;
                    while q0 + QB <= nq {
                        let qp = queries.add(q0 * dim);
                        let mut r0 = c0;
                        while r0 + RB <= c1 {
                            tile::<QB, RB>(qp, arena.add(r0 * dim), dim, out.add(q0 * n + r0), n);
                            r0 += RB;
                        }
                        while r0 < c1 {
                            tile::<QB, 1>(qp, arena.add(r0 * dim), dim, out.add(q0 * n + r0), n);
                            r0 += 1;
                        }
                        q0 += QB;
                    }
                    while q0 < nq {
                        let qp = queries.add(q0 * dim);
                        let mut r0 = c0;
                        while r0 + RB <= c1 {
                            tile::<1, RB>(qp, arena.add(r0 * dim), dim, out.add(q0 * n + r0), n);
                            r0 += RB;
                        }
                        while r0 < c1 {
                            *out.add(q0 * n + r0) = dot(qp, arena.add(r0 * dim), dim);
                            r0 += 1;
                        }
                        q0 += 1;
                    }
                    c0 = c1;
                }
            }
        }
    };
}
pub(super) use define_dot_rows_multi;

/// The dot product of `n` values whose vectors `load` gives as `(query, row)` f32 vectors
/// of the ISA module `$isa` at value `i`: four accumulators over `4 * LANES` values, then
/// one vector at a time, then `tail` (the f32 product at `i`) one value at a time. The
/// shape of every widening kernel (binary16 and bfloat16 rows, bfloat16 queries); expand
/// it inside a function with the ISA's target features.
macro_rules! widened_dot {
    ($isa:ident, $n:expr, load: |$i:ident| $load:expr, tail: |$t:ident| $tail:expr) => {{
        use crate::simd::$isa as isa;
        let n: usize = $n;
        let (mut a0, mut a1, mut a2, mut a3) = (isa::zero(), isa::zero(), isa::zero(), isa::zero());
        let mut i = 0;
        while i + 4 * isa::LANES <= n {
            let step = |$i: usize| $load;
            let ((q0, r0), (q1, r1)) = (step(i), step(i + isa::LANES));
            let ((q2, r2), (q3, r3)) = (step(i + 2 * isa::LANES), step(i + 3 * isa::LANES));
            a0 = isa::fma(q0, r0, a0);
            a1 = isa::fma(q1, r1, a1);
            a2 = isa::fma(q2, r2, a2);
            a3 = isa::fma(q3, r3, a3);
            i += 4 * isa::LANES;
        }
        while i + isa::LANES <= n {
            let $i = i;
            let (q, r) = $load;
            a0 = isa::fma(q, r, a0);
            i += isa::LANES;
        }
        let mut s = isa::reduce(isa::add(isa::add(a0, a1), isa::add(a2, a3)));
        while i < n {
            let $t = i;
            s += $tail;
            i += 1;
        }
        s
    }};
}
pub(super) use widened_dot;

/// Defines `$name(q, rows, dim, idx, out)`: `out[j] = $dot(q, row j)` (or row `idx[j]`),
/// one dispatch per call with the loop over rows inside the target-feature function, where
/// the dot product inlines. The callers checked that every row lies inside `rows`.
macro_rules! define_rows {
    ($name:ident, $features:literal, $dot:ident, $query:ty) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(q: &[$query], rows: &[u16], dim: usize, idx: Option<&[u32]>, out: &mut [f32]) {
            for (j, o) in out.iter_mut().enumerate() {
                let r = idx.map_or(j, |ix| ix[j] as usize);
                *o = unsafe { $dot(q.as_ptr(), rows.as_ptr().add(r * dim), dim) };
            }
        }
    };
}
pub(super) use define_rows;

/// Converts `$n` values a block of `$lanes` at a time with `block` (the values from `i`),
/// then the rest, from `i` on, with `rest` (the portable conversion): the shape of every
/// element-type conversion (f32 <-> binary16).
macro_rules! in_blocks {
    ($n:expr, $lanes:expr, block: |$i:ident| $block:expr, rest: |$r:ident| $rest:expr) => {{
        let n: usize = $n;
        let mut i = 0;
        while i + $lanes <= n {
            let $i = i;
            $block;
            i += $lanes;
        }
        let $r = i;
        $rest
    }};
}
pub(super) use in_blocks;
