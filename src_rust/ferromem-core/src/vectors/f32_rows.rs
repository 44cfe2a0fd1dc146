//! f32 precision: the vectors as stored (exact scores), plus their unit half-precision copy
//! that large searches scan first. The two-phase search and its exactness proof live here.

use super::f16_rows::{half_row, HalfKernel};
use super::{arena_chunks, AuxSection, ImageLayout, PrecisionKind, PrecisionRows, RowBuffer, RowChunks, SlotHits};
use crate::arena::Arena;
use crate::hnsw::{GraphQuery, GraphRows};
use crate::image::ImageSections;
use crate::scorer::{floor, scaled_queries, scan, BlockKernel, Plan, RowsView};
use crate::simd;
use crate::state::inverse_norm;
use crate::vectors::Precision;

/// Scans of at least this many values use the half-precision pre-scan (smaller ones are
/// cache-resident, where the second phase would cost more than it saves).
const PRESCAN_MIN_VALUES: usize = 1 << 20;
/// Batches larger than this skip the pre-scan: the f32 multi-query kernel reads each row
/// once for the whole batch, which beats one half-precision pass per query.
const PRESCAN_MAX_QUERIES: usize = 2;
/// Candidates beyond k kept by the pre-scan, so that the exactness check rarely fails.
const PRESCAN_EXTRA: usize = 32;

#[derive(Default)]
pub struct F32Rows {
    dim: usize,
    vectors: Arena<f32>,
    /// The normalised vectors in binary16, scanned first by large searches.
    half: Arena<u16>,
}

/// Exact cosines in f32: the query against the stored row, times both inverse norms.
struct ExactKernel<'a> {
    vectors: &'a Arena<f32>,
    queries: &'a [f32],
    q_inv: &'a [f32],
    nq: usize,
    dim: usize,
    min_score: Option<f32>,
    /// Several queries are scored one by one over each block (bit-identical to scanning
    /// for each alone) instead of by the multi-query kernel.
    each: bool,
}

impl BlockKernel for ExactKernel<'_> {
    fn nq(&self) -> usize {
        self.nq
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn score_block(&self, start: usize, end: usize, scores: &mut [f32]) {
        let (n, nq, dim) = (end - start, self.nq, self.dim);
        let block = self.vectors.block(start, end);
        if nq == 1 || self.each {
            for q in 0..nq {
                simd::dot_rows(&self.queries[q * dim..(q + 1) * dim], block, dim, &mut scores[q * n..(q + 1) * n]);
            }
        } else {
            simd::dot_rows_multi(self.queries, nq, block, dim, n, &mut scores[..n * nq]);
        }
    }
    fn score_run(&self, q: usize, chunk: usize, local: &[u32], _slots: &[u32], out: &mut [f32]) {
        let dim = self.dim;
        simd::dot_gather(&self.queries[q * dim..(q + 1) * dim], self.vectors.chunk(chunk), dim, local, out)
    }
    #[inline]
    fn finish(&self, q: usize, raw: f32, inv: f32) -> Option<f32> {
        let s = (raw * inv * self.q_inv[q]).clamp(-1.0, 1.0);
        if self.min_score.is_some_and(|m| s < m) {
            None
        } else {
            Some(s)
        }
    }
}

/// An upper bound on the difference between two f32 cosine scores of the same unit-norm
/// pair summed in different orders: each sum is within d 2^-24 of the exact value (a worst
/// case), plus slack for the scaling.
fn reordered_sum_bound(dim: usize) -> f32 {
    (2.0 * dim as f64 * 2f64.powi(-24) + 1e-6) as f32
}

impl F32Rows {
    fn exact_kernel<'a>(&'a self, queries: &'a [f32], q_inv: &'a [f32], min_score: Option<f32>, each: bool) -> ExactKernel<'a> {
        ExactKernel { vectors: &self.vectors, queries, q_inv, nq: q_inv.len(), dim: self.dim, min_score, each }
    }
}

impl F32Rows {
    /// The cosine of `query` (1/|query| = `q_inv`) and the row in `slot` (1/|v| = `inv`),
    /// computed exactly as the scans compute it.
    fn exact_score(&self, query: &[f32], q_inv: f32, slot: u32, inv: f32) -> f32 {
        let dot = simd::dot_f32(query, self.vectors.row(slot as usize));
        (dot * inv * q_inv).clamp(-1.0, 1.0)
    }
}

impl PrecisionKind for F32Rows {
    const IMAGE: ImageLayout = ImageLayout {
        code: 0,
        aux: AuxSection::Rows,
        search_value_bytes: 2,
        aux_name: "the f32 rows",
        search_name: "the half-precision rows",
    };
    const KEEPS_EXACT: bool = true;

    fn reads_image_of(image: Precision) -> bool {
        image == Precision::F32
    }

    fn from_image(sections: &ImageSections<'_>) -> Self {
        F32Rows { dim: sections.dim, vectors: sections.aux_arena(), half: sections.search_arena() }
    }
}

impl PrecisionRows for F32Rows {
    fn new(dim: usize) -> Self {
        F32Rows { dim, vectors: Arena::new(dim), half: Arena::new(dim) }
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn rows(&self) -> usize {
        self.vectors.rows()
    }
    fn push_row(&mut self) {
        self.vectors.push_row();
        self.half.push_row();
    }
    fn put(&mut self, slot: usize, vector: &[f32], inv: f32) -> bool {
        let same = self.vectors.row(slot).iter().zip(vector).all(|(a, b)| a.to_bits() == b.to_bits());
        self.vectors.row_mut(slot).copy_from_slice(vector);
        self.half.row_mut(slot).copy_from_slice(&half_row(vector, inv));
        same
    }
    fn unit_row(&self, slot: usize, inv: f32, out: &mut [f32]) -> bool {
        // v * (1/|v|), as the half-precision rows are made from it (`to_f16_bits`).
        out.iter_mut().zip(self.vectors.row(slot)).for_each(|(o, &x)| *o = x * inv);
        true
    }
    fn exact_vector(&self, slot: usize) -> Option<&[f32]> {
        Some(self.vectors.row(slot))
    }
    fn memory_bytes(&self) -> usize {
        self.vectors.bytes() + self.half.bytes()
    }
    fn graph_rows(&self) -> GraphRows<'_> {
        GraphRows::Half(&self.half)
    }
    fn buffers(&self) -> Vec<RowBuffer<'_>> {
        vec![
            RowBuffer { name: "f32", per_row: self.dim, chunks: RowChunks::F32(arena_chunks(&self.vectors, self.dim)) },
            RowBuffer { name: "f16", per_row: self.dim, chunks: RowChunks::U16(arena_chunks(&self.half, self.dim)) },
        ]
    }

    /// Exact top-k by cosine. Large scans run in two phases that keep the result exact.
    /// Phase one scans the half-precision copy of the normalised vectors (half the bytes of
    /// a memory-bound scan) for the best `k + PRESCAN_EXTRA` candidates. Phase two scores
    /// those in f32 exactly as the one-phase scan does. Any record left out scored at most
    /// `a_min` in phase one, so at most `a_min + eps` exactly (`prescan_error_bound`); when
    /// that is below the k-th exact score (or below `min_score`), nothing left out can
    /// enter the top-k and the answer is the exact one. Otherwise (ties at the cut,
    /// near-duplicates) that query is answered by the one-phase f32 scan.
    fn cpu_search(&self, plan: &Plan<'_>, view: &RowsView<'_>) -> SlotHits {
        let &Plan { queries, nq, dim, k, candidates, min_score, each } = plan;
        let q_inv: Vec<f32> = queries.chunks_exact(dim).map(inverse_norm).collect();
        let rows = candidates.map_or(view.slot_count(), |c| c.len());
        let k1 = k.saturating_add(PRESCAN_EXTRA);
        if rows.saturating_mul(dim) < PRESCAN_MIN_VALUES || rows <= k1 || (nq > PRESCAN_MAX_QUERIES && !each) {
            let heaps = scan(&self.exact_kernel(queries, &q_inv, min_score, each), view, k, candidates);
            return heaps.into_iter().map(|h| h.into_entries()).collect();
        }
        let (approx, eps) = if nq > PRESCAN_MAX_QUERIES {
            // A coalesced batch (`each`): phase one is the multi-query f32 kernel, whose
            // scores differ from the single-query kernel's only by summation order; phase
            // two below makes every answer bit-identical to the query's own scan.
            let heaps = scan(&self.exact_kernel(queries, &q_inv, None, false), view, k1, candidates);
            (heaps, reordered_sum_bound(dim))
        } else {
            let unit = scaled_queries(queries, dim, &q_inv);
            let kernel = HalfKernel { half: &self.half, queries: &unit, nq, dim, multi: false };
            (scan(&kernel, view, k1, candidates), simd::half::prescan_error_bound(dim))
        };
        approx
            .into_iter()
            .enumerate()
            .map(|(q, heap)| {
                let kept = heap.into_entries();
                // A heap that is not full holds every live candidate: nothing was left out.
                let complete = kept.len() < k1;
                let a_min = kept.iter().map(|e| e.0).fold(f32::INFINITY, f32::min);
                let inv_norm = view.inv_norm();
                let exact: Vec<(f32, u32)> = kept
                    .iter()
                    .map(|&(_, slot)| (self.exact_score(plan.query(q), q_inv[q], slot, inv_norm[slot as usize]), slot))
                    .collect();
                let mut exact = floor(exact, min_score);
                view.sort_hits(&mut exact);
                // The score a record left out would have to reach to change the answer.
                let bar = if exact.len() >= k { Some(exact[k - 1].0) } else { min_score };
                if complete || bar.is_some_and(|bar| a_min + eps < bar) {
                    exact.truncate(k);
                    exact
                } else {
                    let kernel = self.exact_kernel(plan.query(q), &q_inv[q..q + 1], min_score, each);
                    scan(&kernel, view, k, candidates).into_iter().next().expect("one query").into_entries()
                }
            })
            .collect()
    }

    fn graph_rescore(&self, query: &[f32], q_inv: f32, _prepared: &GraphQuery, slot: u32, inv: f32) -> f32 {
        self.exact_score(query, q_inv, slot, inv)
    }

    fn image_aux_row(&self, slot: usize) -> &[u8] {
        super::bytes_of(self.vectors.row(slot))
    }
    fn image_search_row(&self, slot: usize) -> &[u8] {
        super::bytes_of(self.half.row(slot))
    }
}
