//! int8 precision: the unit vectors quantised to int8 with one factor each (a sixth of the
//! f32 precision's memory). Searches return candidates by their int8 score; the engine
//! re-ranks them with the exact vectors read from the durable layer.

use super::{arena_chunks, AuxSection, ImageLayout, PrecisionKind, PrecisionRows, RowBuffer, RowChunks, SlotHits};
use crate::arena::Arena;
use crate::hnsw::{GraphQuery, GraphRows};
use crate::image::ImageSections;
use crate::scorer::{floor, scan, BlockKernel, Plan, RowsView};
use crate::simd;
use crate::state::inverse_norm;
use crate::vectors::Precision;

#[derive(Default)]
pub struct Int8Rows {
    dim: usize,
    quant: Arena<i8>,
    /// Each row's quantisation factor.
    factors: Vec<f32>,
}

/// The unit queries of `queries` (nq rows of `dim`, with 1/|q| in `q_inv`) quantised to
/// int8, and their factors: the int8 scans' form of a query.
fn quantize_queries(queries: &[f32], dim: usize, q_inv: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quantised = vec![0i8; queries.len()];
    let mut unit = vec![0f32; dim];
    let factors = queries
        .chunks_exact(dim)
        .zip(quantised.chunks_exact_mut(dim))
        .zip(q_inv)
        .map(|((q, out), &inv)| {
            unit.iter_mut().zip(q).for_each(|(u, &x)| *u = x * inv);
            simd::int8::quantize_i8(&unit, out)
        })
        .collect();
    (quantised, factors)
}

/// The quantised queries against the int8 rows: approximate cosines (int8 precision).
struct Int8Kernel<'a> {
    rows: &'a Int8Rows,
    quantised: &'a [i8],
    factors: &'a [f32],
    nq: usize,
}

impl Int8Kernel<'_> {
    /// The approximate cosine of query `q` and the row of `slot`, as the block scan computes it.
    #[inline]
    fn score(&self, q: usize, slot: u32) -> f32 {
        let (dim, s) = (self.rows.dim, slot as usize);
        simd::int8::dot_i8(&self.quantised[q * dim..(q + 1) * dim], self.rows.quant.row(s)) as f32 * self.factors[q] * self.rows.factors[s]
    }
}

impl BlockKernel for Int8Kernel<'_> {
    fn nq(&self) -> usize {
        self.nq
    }
    fn dim(&self) -> usize {
        self.rows.dim
    }
    fn score_block(&self, start: usize, end: usize, scores: &mut [f32]) {
        let (n, dim) = (end - start, self.rows.dim);
        let block = self.rows.quant.block(start, end);
        let mut dots = vec![0i32; n];
        let row_factors = &self.rows.factors[start..end];
        for q in 0..self.nq {
            simd::int8::dot_rows_i8(&self.quantised[q * dim..(q + 1) * dim], block, dim, &mut dots);
            for ((out, &d), &f) in scores[q * n..(q + 1) * n].iter_mut().zip(&dots).zip(row_factors) {
                *out = d as f32 * self.factors[q] * f;
            }
        }
    }
    fn score_run(&self, q: usize, _chunk: usize, _local: &[u32], slots: &[u32], out: &mut [f32]) {
        for (o, &slot) in out.iter_mut().zip(slots) {
            *o = self.score(q, slot);
        }
    }
    #[inline]
    fn finish(&self, _q: usize, raw: f32, _inv: f32) -> Option<f32> {
        Some(raw)
    }
}

impl PrecisionKind for Int8Rows {
    const IMAGE: ImageLayout = ImageLayout {
        code: 2,
        aux: AuxSection::PerRow,
        search_value_bytes: 1,
        aux_name: "the int8 quantisation factors",
        search_name: "the int8 rows",
    };
    const KEEPS_EXACT: bool = false;
    const RERANKED: bool = true;
    /// Beyond it the kernels' i32 sums could overflow.
    const MAX_DIM: usize = simd::int8::MAX_DIM;

    fn reads_image_of(image: Precision) -> bool {
        image == Precision::Int8
    }

    fn from_image(sections: &ImageSections<'_>) -> Self {
        Int8Rows { dim: sections.dim, quant: sections.search_arena(), factors: sections.aux_per_row() }
    }
}

impl PrecisionRows for Int8Rows {
    fn new(dim: usize) -> Self {
        Int8Rows { dim, quant: Arena::new(dim), factors: Vec::new() }
    }
    fn precision(&self) -> Precision {
        Precision::Int8
    }
    fn rows(&self) -> usize {
        self.quant.rows()
    }
    fn push_row(&mut self) {
        self.quant.push_row();
        self.factors.push(0.0);
    }
    fn put(&mut self, slot: usize, vector: &[f32], inv: f32) -> bool {
        let unit: Vec<f32> = vector.iter().map(|x| x * inv).collect();
        let mut q = vec![0i8; vector.len()];
        let factor = simd::int8::quantize_i8(&unit, &mut q);
        let same = self.quant.row(slot) == q.as_slice() && self.factors[slot].to_bits() == factor.to_bits();
        self.quant.row_mut(slot).copy_from_slice(&q);
        self.factors[slot] = factor;
        same
    }
    fn unit_row(&self, _slot: usize, _inv: f32, _out: &mut [f32]) -> bool {
        false
    }
    fn exact_vector(&self, _slot: usize) -> Option<&[f32]> {
        None
    }
    fn memory_bytes(&self) -> usize {
        self.quant.bytes() + self.factors.capacity() * 4
    }
    fn graph_rows(&self) -> GraphRows<'_> {
        GraphRows::Int8 { rows: &self.quant, factors: &self.factors }
    }
    fn buffers(&self) -> Vec<RowBuffer<'_>> {
        vec![
            RowBuffer { name: "int8", per_row: self.dim, chunks: RowChunks::I8(arena_chunks(&self.quant, self.dim)) },
            RowBuffer { name: "int8_factors", per_row: 1, chunks: RowChunks::F32(vec![&self.factors]) },
        ]
    }

    /// The int8 scores are the answer here; the engine re-ranks them exactly.
    fn cpu_search(&self, plan: &Plan<'_>, view: &RowsView<'_>) -> SlotHits {
        let q_inv: Vec<f32> = plan.queries.chunks_exact(plan.dim).map(inverse_norm).collect();
        let (quantised, factors) = quantize_queries(plan.queries, plan.dim, &q_inv);
        let kernel = Int8Kernel { rows: self, quantised: &quantised, factors: &factors, nq: plan.nq };
        scan(&kernel, view, plan.k, plan.candidates).into_iter().map(|h| floor(h.into_entries(), plan.min_score)).collect()
    }

    /// The graph's own int8 similarity, which is the int8 scan's.
    fn graph_rescore(&self, _query: &[f32], _q_inv: f32, prepared: &GraphQuery, slot: u32, _inv: f32) -> f32 {
        self.graph_rows().dot(prepared, slot)
    }

    fn image_aux_row(&self, slot: usize) -> &[u8] {
        super::bytes_of(std::slice::from_ref(&self.factors[slot]))
    }
    fn image_search_row(&self, slot: usize) -> &[u8] {
        super::bytes_of(self.quant.row(slot))
    }
}
