//! f16 precision: only the unit vectors in binary16 (a third of the f32 precision's
//! memory). Scores are the f32 query against the half row; the exact vectors stay in the
//! durable layer. The half-precision scan kernel here is also the f32 precision's pre-scan.

use super::{arena_chunks, AuxSection, ImageLayout, PrecisionKind, PrecisionRows, RowBuffer, RowChunks, SlotHits};
use crate::arena::Arena;
use crate::hnsw::{GraphQuery, GraphRows};
use crate::image::ImageSections;
use crate::scorer::{floor, scaled_queries, scan, BlockKernel, Plan, RowsView};
use crate::simd;
use crate::state::inverse_norm;
use crate::vectors::Precision;

/// Batches larger than this score half rows widened to f32 by the multi-query kernel
/// instead of one half-precision pass per query.
pub(crate) const HALF_MULTI_MIN_QUERIES: usize = 3;
/// Half-precision values a batch scan widens to f32 at a time: 512 KiB of f32 rows,
/// which stay in L2 while every query of the batch passes over them.
const WIDEN_VALUES: usize = 1 << 17;

#[derive(Default)]
pub struct F16Rows {
    dim: usize,
    pub(crate) half: Arena<u16>,
}

/// The binary16 bits of the unit `vector` (1/|vector| = `inv`).
pub(crate) fn half_row(vector: &[f32], inv: f32) -> Vec<u16> {
    let mut row = vec![0u16; vector.len()];
    simd::half::to_f16_bits(vector, inv, &mut row);
    row
}

/// The unit queries (already scaled) against half rows: dot products, scores as they
/// are (the rows are unit vectors).
pub(crate) struct HalfKernel<'a> {
    pub half: &'a Arena<u16>,
    pub queries: &'a [f32],
    pub nq: usize,
    pub dim: usize,
    /// Score a batch with the f32 multi-query kernel on rows widened a few at a time (not
    /// bit-identical to scanning each query alone).
    pub multi: bool,
}

impl BlockKernel for HalfKernel<'_> {
    fn nq(&self) -> usize {
        self.nq
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn score_block(&self, start: usize, end: usize, scores: &mut [f32]) {
        let (n, nq, dim) = (end - start, self.nq, self.dim);
        let block = self.half.block(start, end);
        if self.multi {
            // Each row is widened once for the whole batch, then every query meets it in
            // the register tiles of the f32 multi-query kernel.
            let step = (WIDEN_VALUES / dim).max(1);
            let mut wide = vec![0f32; step.min(n) * dim];
            let mut part = vec![0f32; nq * step.min(n)];
            for r0 in (0..n).step_by(step) {
                let r = (n - r0).min(step);
                simd::half::widen(&block[r0 * dim..(r0 + r) * dim], &mut wide[..r * dim]);
                simd::dot_rows_multi(self.queries, nq, &wide[..r * dim], dim, r, &mut part[..nq * r]);
                for q in 0..nq {
                    scores[q * n + r0..q * n + r0 + r].copy_from_slice(&part[q * r..(q + 1) * r]);
                }
            }
        } else {
            for q in 0..nq {
                simd::half::dot_rows_f16(&self.queries[q * dim..(q + 1) * dim], block, dim, &mut scores[q * n..(q + 1) * n]);
            }
        }
    }
    fn score_run(&self, q: usize, chunk: usize, local: &[u32], _slots: &[u32], out: &mut [f32]) {
        let dim = self.dim;
        simd::half::dot_gather_f16(&self.queries[q * dim..(q + 1) * dim], self.half.chunk(chunk), dim, local, out)
    }
    #[inline]
    fn finish(&self, _q: usize, raw: f32, _inv: f32) -> Option<f32> {
        Some(raw)
    }
}

impl F16Rows {
    /// The query (1/|query| = `q_inv`) against the unit half row of `slot`: this
    /// precision's score, computed as the scans compute it.
    fn half_score(&self, query: &[f32], q_inv: f32, slot: u32) -> f32 {
        (simd::half::dot_f16(query, self.half.row(slot as usize)) * q_inv).clamp(-1.0, 1.0)
    }
}

impl PrecisionKind for F16Rows {
    const IMAGE: ImageLayout =
        ImageLayout { code: 1, aux: AuxSection::None, search_value_bytes: 2, aux_name: "", search_name: "the half-precision rows" };
    const KEEPS_EXACT: bool = false;

    /// An f32 image's search rows are the same half rows.
    fn reads_image_of(image: Precision) -> bool {
        image == Precision::F16 || image == Precision::F32
    }

    fn from_image(sections: &ImageSections<'_>) -> Self {
        F16Rows { dim: sections.dim, half: sections.search_arena() }
    }
}

impl PrecisionRows for F16Rows {
    fn new(dim: usize) -> Self {
        F16Rows { dim, half: Arena::new(dim) }
    }
    fn precision(&self) -> Precision {
        Precision::F16
    }
    fn rows(&self) -> usize {
        self.half.rows()
    }
    fn push_row(&mut self) {
        self.half.push_row();
    }
    fn put(&mut self, slot: usize, vector: &[f32], inv: f32) -> bool {
        let row = half_row(vector, inv);
        let same = self.half.row(slot) == row.as_slice();
        self.half.row_mut(slot).copy_from_slice(&row);
        same
    }
    fn unit_row(&self, slot: usize, _inv: f32, out: &mut [f32]) -> bool {
        // The half row is a unit vector rounded to binary16 (its norm is 1 within about
        // 2^-11): a device takes it normalised again, and the proof adds the f16 rows' own
        // distance from the cosine (`DeviceScorer`).
        simd::half::widen(self.half.row(slot), out);
        let norm = out.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x = ((*x as f64) / norm) as f32);
        }
        true
    }
    fn score_slack(&self, dim: usize) -> f32 {
        simd::half::prescan_error_bound(dim)
    }
    fn exact_vector(&self, _slot: usize) -> Option<&[f32]> {
        None
    }
    fn memory_bytes(&self) -> usize {
        self.half.bytes()
    }
    fn graph_rows(&self) -> GraphRows<'_> {
        GraphRows::Half(&self.half)
    }
    fn buffers(&self) -> Vec<RowBuffer<'_>> {
        vec![RowBuffer { name: "f16", per_row: self.dim, chunks: RowChunks::U16(arena_chunks(&self.half, self.dim)) }]
    }

    /// One pass over the only copy there is; scores as `half_score` computes them.
    fn cpu_search(&self, plan: &Plan<'_>, view: &RowsView<'_>) -> SlotHits {
        let (nq, dim) = (plan.nq, plan.dim);
        let q_inv: Vec<f32> = plan.queries.chunks_exact(dim).map(inverse_norm).collect();
        let unit = scaled_queries(plan.queries, dim, &q_inv);
        let multi = nq >= HALF_MULTI_MIN_QUERIES && !plan.each;
        let kernel = HalfKernel { half: &self.half, queries: &unit, nq, dim, multi };
        scan(&kernel, view, plan.k, plan.candidates)
            .into_iter()
            .enumerate()
            .map(|(q, h)| {
                let query = plan.query(q);
                let hits = h.into_entries().into_iter().map(|(_, slot)| (self.half_score(query, q_inv[q], slot), slot)).collect();
                floor(hits, plan.min_score)
            })
            .collect()
    }

    fn graph_rescore(&self, query: &[f32], q_inv: f32, _prepared: &GraphQuery, slot: u32, _inv: f32) -> f32 {
        self.half_score(query, q_inv, slot)
    }

    fn image_aux_row(&self, _slot: usize) -> &[u8] {
        &[]
    }
    fn image_search_row(&self, slot: usize) -> &[u8] {
        super::bytes_of(self.half.row(slot))
    }
}
