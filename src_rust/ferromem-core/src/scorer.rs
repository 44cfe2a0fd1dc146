//! Scoring: a [`Scorer`] runs a [`Plan`] (one query or a batch, every record or a
//! candidate set, k, a score floor) over the vector rows and returns each query's top k.
//!
//! [`CpuScorer`] is the SIMD scan: blocks of rows shared by the cores, and per precision
//! the pass its rows allow (the f32 rows' half-precision pre-scan with its exactness proof,
//! see `vectors::F32Rows`). The engine holds one scorer, chosen at open and replaceable
//! (`Engine::set_scorer`): another device's scorer plugs in there, reading the rows through
//! [`RowsView`] (the buffers, the slot -> id map, the rows changed since a generation)
//! without a copy.

use crate::arena::CHUNK_ROWS;
use crate::filter::Filter;
use crate::state::State;
use crate::topk::TopK;
use crate::vectors::Precision;
use crate::vectors::{PrecisionRows, RowBuffer, SlotHits};
use rayon::prelude::*;

/// What a search asks of a scorer. `queries` are unit vectors (the engine normalises them),
/// `nq` rows of `dim`. `candidates`: the slots a filter allows, ascending (None: every slot;
/// free slots, whose 1/|v| is 0, are never returned). `each`: every query of the batch must
/// get the answer it would get alone, bit for bit (coalesced single queries).
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    pub queries: &'a [f32],
    pub nq: usize,
    pub dim: usize,
    pub k: usize,
    pub candidates: Option<&'a [u32]>,
    pub min_score: Option<f32>,
    pub each: bool,
}

impl<'a> Plan<'a> {
    /// Query `q` of the plan.
    pub fn query(&self, q: usize) -> &'a [f32] {
        &self.queries[q * self.dim..(q + 1) * self.dim]
    }
}

/// Runs plans. Scores are those the store's precision defines (see
/// [`crate::vectors::Precision`]): the exact cosine for f32 rows, the query against the
/// unit half-precision row for f16, the int8 approximation for int8 (the engine re-ranks
/// those exactly). Ties may be returned in any order: the caller orders results (score
/// descending, then id).
pub trait Scorer: Send + Sync {
    /// A short name for stats and logs ("cpu", "cuda", ...).
    fn name(&self) -> &str;

    /// Per query of `plan`, its best `plan.k` candidates with scores >= `plan.min_score`:
    /// (score, slot), unordered.
    fn top_k(&self, plan: &Plan<'_>, rows: &RowsView<'_>) -> SlotHits;
}

/// The SIMD scan on this machine's cores (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuScorer;

impl Scorer for CpuScorer {
    fn name(&self) -> &str {
        "cpu"
    }

    fn top_k(&self, plan: &Plan<'_>, rows: &RowsView<'_>) -> SlotHits {
        rows.vectors().cpu_search(plan, rows)
    }
}

/// The vector rows of a store as its state holds them, read under the state's read lock:
/// what a scorer reads, and what `Engine::with_rows` lends.
#[derive(Clone, Copy)]
pub struct RowsView<'a> {
    pub(crate) state: &'a State,
}

/// What changed in the rows since a search generation (see [`RowsView::changed_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowChanges {
    /// Every row may have changed (a reset or a reload since): read them all again.
    All,
    /// `written`: live slots whose row was written since (an insert, or an update of the
    /// vector; a reused slot is one of them); `freed`: slots whose record was deleted since
    /// and that hold none now. Ascending.
    Some { written: Vec<u32>, freed: Vec<u32> },
}

impl<'a> RowsView<'a> {
    pub fn precision(&self) -> Precision {
        self.state.precision
    }

    /// The dimension (None while the store holds no vector).
    pub fn dim(&self) -> Option<usize> {
        self.state.dim
    }

    /// Slots held, live or free: slot numbers are below it.
    pub fn slot_count(&self) -> usize {
        self.state.slot_count()
    }

    /// 1/|v| per slot; 0.0 marks a free slot.
    pub fn inv_norm(&self) -> &'a [f32] {
        self.state.inv_norms()
    }

    /// The id of the record in `slot`, None for a free slot.
    pub fn id(&self, slot: u32) -> Option<&'a str> {
        self.state.id_at(slot)
    }

    /// The rows' own interface (scans, gathers, re-scores).
    pub fn vectors(&self) -> &'a dyn PrecisionRows {
        self.state.vectors()
    }

    /// The rows as buffers (arena chunks of `CHUNK_ROWS` rows): slot s is row
    /// `s % CHUNK_ROWS` of chunk `s / CHUNK_ROWS`.
    pub fn buffers(&self) -> Vec<RowBuffer<'a>> {
        self.state.vectors().buffers()
    }

    /// The live slots matching `filter`, ascending: the candidate set of a filtered search.
    pub fn select(&self, filter: &Filter) -> Vec<u32> {
        self.state.select(filter)
    }

    /// The state's search generation now: pass it to a later `changed_since`.
    pub fn generation(&self) -> u64 {
        self.state.search_generation
    }

    /// The rows written or freed since `generation` (an earlier [`RowsView::generation`]),
    /// for a device mirror that updates incrementally.
    pub fn changed_since(&self, generation: u64) -> RowChanges {
        self.state.rows_changed_since(generation)
    }

    /// Whether `a`'s record ranks before `b`'s at an equal score (ids ascending).
    #[inline]
    pub(crate) fn id_less(&self, a: u32, b: u32) -> bool {
        self.state.id_at(a) < self.state.id_at(b)
    }

    /// Score descending, ties by id ascending: the order of every search result.
    pub(crate) fn sort_hits(&self, hits: &mut [(f32, u32)]) {
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| self.state.id_at(a.1).cmp(&self.state.id_at(b.1))));
    }
}

/// Rows scored per block; one block's scores fit in L1 and its rows stream through L2.
const BLOCK_ROWS: usize = 1024;
/// Below this many multiply-adds a scan stays on the calling thread (spawning costs more).
const PARALLEL_MIN_FLOPS: usize = 1_000_000;
/// The smallest block a parallel scan splits a store into (smaller ones cost more to hand
/// out than they save).
const MIN_BLOCK_ROWS: usize = 256;

/// One pass of a scan over one kind of rows, for every query of a batch: what
/// [`scan`] runs per block. Implemented per precision (`crate::vectors`); generic, so
/// each scan is monomorphic (no virtual call per row).
pub(crate) trait BlockKernel: Sync {
    fn nq(&self) -> usize;
    fn dim(&self) -> usize;
    /// Raw scores of the rows `start..end` (inside one chunk) for every query:
    /// `scores[q * n + i]` for row `start + i`, n = end - start.
    fn score_block(&self, start: usize, end: usize, scores: &mut [f32]);
    /// Raw scores of query `q` for `slots` (ascending, all in chunk `chunk`, `local` their
    /// rows inside it) into `out`.
    fn score_run(&self, q: usize, chunk: usize, local: &[u32], slots: &[u32], out: &mut [f32]);
    /// The score of a raw score of query `q` for a row with 1/|v| = `inv`, or None when
    /// the floor rejects it.
    fn finish(&self, q: usize, raw: f32, inv: f32) -> Option<f32>;
}

/// Top-`k` heaps, one per query, over `candidates` (or every slot), in blocks of rows that
/// the cores share when the scan is large.
pub(crate) fn scan<K: BlockKernel>(kernel: &K, view: &RowsView<'_>, k: usize, candidates: Option<&[u32]>) -> Vec<TopK> {
    let (nq, dim) = (kernel.nq(), kernel.dim());
    let inv_norm = view.inv_norm();
    let rows = candidates.map_or(view.slot_count(), |c| c.len());
    let threads = crate::fork::threads();
    let parallel = threads > 1 && rows * dim * nq >= PARALLEL_MIN_FLOPS;
    // A parallel scan of a small store still gives every core about four blocks (so a
    // core that wakes late is not left with half the work): blocks are a power of two
    // rows, so they never straddle an arena chunk, from MIN_BLOCK_ROWS to BLOCK_ROWS.
    let block_rows = if parallel { rows.div_ceil(threads * 4).next_power_of_two().clamp(MIN_BLOCK_ROWS, BLOCK_ROWS) } else { BLOCK_ROWS };
    let blocks: Vec<(usize, usize)> = (0..rows).step_by(block_rows).map(|s| (s, (s + block_rows).min(rows))).collect();
    let scan_block = |heaps: &mut Vec<TopK>, scores: &mut Vec<f32>, (start, end): (usize, usize)| {
        let n = end - start;
        scores.resize(n * nq, 0.0);
        let slots_of_block: Option<&[u32]> = candidates.map(|c| &c[start..end]);
        match slots_of_block {
            None => kernel.score_block(start, end, scores),
            Some(slots) => {
                // Candidates are in slot order: score each chunk's run of them at once.
                let mut i = 0;
                let mut local: Vec<u32> = Vec::with_capacity(slots.len());
                while i < slots.len() {
                    let c = slots[i] as usize / CHUNK_ROWS;
                    let base = (c * CHUNK_ROWS) as u32;
                    let run = slots[i..].iter().take_while(|&&s| s as usize / CHUNK_ROWS == c).count();
                    local.clear();
                    local.extend(slots[i..i + run].iter().map(|&s| s - base));
                    for q in 0..nq {
                        kernel.score_run(q, c, &local, &slots[i..i + run], &mut scores[q * n + i..q * n + i + run]);
                    }
                    i += run;
                }
            }
        }
        for q in 0..nq {
            let heap = &mut heaps[q];
            for i in 0..n {
                let slot = slots_of_block.map_or((start + i) as u32, |s| s[i]);
                let inv = inv_norm[slot as usize];
                if inv == 0.0 {
                    continue; // free slot
                }
                if let Some(score) = kernel.finish(q, scores[q * n + i], inv) {
                    heap.offer(score, slot, |a, b| view.id_less(a, b));
                }
            }
        }
    };
    let new_heaps = || (0..nq).map(|_| TopK::new(k)).collect::<Vec<_>>();
    if parallel && blocks.len() > 1 {
        blocks
            .par_iter()
            .fold(
                || (new_heaps(), Vec::new()),
                |(mut heaps, mut scores), &b| {
                    scan_block(&mut heaps, &mut scores, b);
                    (heaps, scores)
                },
            )
            .map(|(heaps, _)| heaps)
            .reduce(new_heaps, |mut a, b| {
                for (ha, hb) in a.iter_mut().zip(b) {
                    for (score, slot) in hb.into_entries() {
                        ha.offer(score, slot, |x, y| view.id_less(x, y));
                    }
                }
                a
            })
    } else {
        let mut heaps = new_heaps();
        let mut scores = Vec::new();
        for &b in &blocks {
            scan_block(&mut heaps, &mut scores, b);
        }
        heaps
    }
}

/// The unit queries of a plan (nq rows of dim) scaled by their 1/|q| again (the scans of
/// the normalised rows take the query as a unit vector, computed as the state always has).
pub(crate) fn scaled_queries(queries: &[f32], dim: usize, q_inv: &[f32]) -> Vec<f32> {
    queries.chunks_exact(dim).zip(q_inv).flat_map(|(q, &inv)| q.iter().map(move |x| x * inv)).collect()
}

/// Drops the hits below `min_score`.
pub(crate) fn floor(mut hits: Vec<(f32, u32)>, min_score: Option<f32>) -> Vec<(f32, u32)> {
    if let Some(m) = min_score {
        hits.retain(|e| e.0 >= m);
    }
    hits
}
