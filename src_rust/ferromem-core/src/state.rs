//! The in-memory replica of a store: the vector arena (contiguous chunks), the records, the id map
//! and the filter indexes. The engine guards it with one RwLock: searches share it,
//! writes (already committed to the durable layer) take it exclusively for a moment.

use crate::arena::{Arena, CHUNK_ROWS};
use crate::filter::{child_of, scope_matches, Filter, Scalar};
use crate::index::FilterIndexes;
use crate::record::{metadata_scalars, Record};
use crate::simd;
use crate::topk::TopK;
use crate::{Error, Result};
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One search hit: the record's id and its cosine score.
pub type Hit = (Arc<str>, f32);

struct Slot {
    rec: Record,
    meta: Vec<(String, Scalar)>,
}

/// Rows scored per block; one block's scores fit in L1 and its rows stream through L2.
const BLOCK_ROWS: usize = 1024;
/// Below this many multiply-adds a scan stays on the calling thread (spawning costs more).
const PARALLEL_MIN_FLOPS: usize = 4_000_000;
/// Scans of at least this many values use the half-precision pre-scan (smaller ones are
/// cache-resident, where the second phase would cost more than it saves).
const PRESCAN_MIN_VALUES: usize = 1 << 20;
/// Batches larger than this skip the pre-scan: the f32 multi-query kernel reads each row
/// once for the whole batch, which beats one half-precision pass per query.
const PRESCAN_MAX_QUERIES: usize = 2;
/// Candidates beyond k kept by the pre-scan, so that the exactness check rarely fails.
const PRESCAN_EXTRA: usize = 32;

/// What a scan computes: exact cosine scores in f32, or dot products of the unit query
/// with the half-precision unit rows (phase one of `State::search`).
#[derive(Clone, Copy)]
enum Scan<'a> {
    Exact { q_inv: &'a [f32], min_score: Option<f32> },
    Half,
}

#[derive(Default)]
pub struct State {
    pub dim: Option<usize>,
    /// Durable-layer position this replica reflects: reset generation and change sequence.
    pub epoch: u64,
    pub seq: u64,
    /// Bumped by every change that can alter a search result (see [`crate::cache`]).
    pub search_generation: u64,
    arena: Arena,
    /// The normalised vectors in binary16, scanned first by large searches.
    half: Arena<u16>,
    /// 1/|v| per slot; 0.0 marks a free slot (stored vectors are never all zeros).
    inv_norm: Vec<f32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    live: RoaringBitmap,
    idx: FilterIndexes,
}

pub fn inverse_norm(v: &[f32]) -> f32 {
    let sq: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sq > 0.0 {
        (1.0 / sq.sqrt()) as f32
    } else {
        0.0
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Forgets every record and the dimension (the durable layer was reset).
    pub fn clear(&mut self) {
        let (epoch, seq, generation) = (self.epoch, self.seq, self.search_generation);
        *self = State::default();
        self.epoch = epoch;
        self.seq = seq;
        self.search_generation = generation + 1;
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn check_dim(&self, got: usize) -> Result<()> {
        match self.dim {
            Some(expected) if expected != got => Err(Error::DimensionMismatch { expected, got }),
            _ => Ok(()),
        }
    }

    /// Inserts or replaces a record. The caller has validated the vector (finite, non-zero,
    /// right length) and the metadata JSON.
    pub fn put(&mut self, rec: Record, vector: &[f32]) -> Result<()> {
        let dim = *self.dim.get_or_insert(vector.len());
        if dim != vector.len() {
            return Err(Error::DimensionMismatch { expected: dim, got: vector.len() });
        }
        let meta = metadata_scalars(&rec.metadata_json)?;
        let replaced = self.ids.get(&*rec.id).copied();
        if !replaced.is_some_and(|slot| self.same_for_search(slot, &rec, vector)) {
            self.search_generation += 1;
        }
        let slot = match replaced {
            Some(slot) => {
                let old = self.slots[slot as usize].take().expect("id map points at a live slot");
                self.idx.remove(slot, &old.rec, &old.meta);
                slot
            }
            None => match self.free.pop() {
                Some(slot) => slot,
                None => {
                    let slot = u32::try_from(self.slots.len())
                        .map_err(|_| Error::InvalidInput("a store holds at most 2^32 records".into()))?;
                    if self.arena.rows() == 0 && self.slots.is_empty() {
                        self.arena = Arena::new(dim);
                        self.half = Arena::new(dim);
                    }
                    self.slots.push(None);
                    self.inv_norm.push(0.0);
                    self.arena.push_row();
                    self.half.push_row();
                    slot
                }
            },
        };
        let s = slot as usize;
        self.arena.row_mut(s).copy_from_slice(vector);
        let inv = inverse_norm(vector);
        self.inv_norm[s] = inv;
        simd::half::to_f16_bits(vector, inv, self.half.row_mut(s));
        self.idx.insert(slot, &rec, &meta);
        self.ids.insert(rec.id.clone(), slot);
        self.live.insert(slot);
        self.slots[s] = Some(Slot { rec, meta });
        Ok(())
    }

    /// Whether replacing the record in `slot` by `rec` and `vector` leaves every search
    /// result as it is: same vector and same filterable fields (a touch, a new content or
    /// importance change nothing a search returns).
    fn same_for_search(&self, slot: u32, rec: &Record, vector: &[f32]) -> bool {
        let Some(old) = self.slots[slot as usize].as_ref().map(|s| &s.rec) else { return false };
        old.scope == rec.scope
            && old.categories == rec.categories
            && old.metadata_json == rec.metadata_json
            && old.source == rec.source
            && old.private == rec.private
            && old.created_at.to_bits() == rec.created_at.to_bits()
            && self.arena.row(slot as usize).iter().zip(vector).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Removes a record; returns whether it existed.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.ids.remove(id) else { return false };
        self.search_generation += 1;
        let s = slot as usize;
        let old = self.slots[s].take().expect("id map points at a live slot");
        self.idx.remove(slot, &old.rec, &old.meta);
        self.inv_norm[s] = 0.0;
        self.live.remove(slot);
        self.free.push(slot);
        // The slot is reused by the next insert; reopening a store packs the arena densely.
        true
    }

    pub fn get(&self, id: &str) -> Option<(&Record, &[f32])> {
        let &slot = self.ids.get(id)?;
        Some(self.slot(slot))
    }

    fn slot(&self, slot: u32) -> (&Record, &[f32]) {
        let s = slot as usize;
        let rec = &self.slots[s].as_ref().expect("live slot").rec;
        (rec, self.arena.row(s))
    }

    fn id_of(&self, slot: u32) -> &Arc<str> {
        &self.slots[slot as usize].as_ref().expect("live slot").rec.id
    }

    /// Every live slot matching the filter, in slot order.
    pub fn select(&self, f: &Filter) -> Vec<u32> {
        let cands = self.idx.candidates(f, &self.live, |id| self.ids.get(id).copied());
        let bitmap = cands.as_ref().unwrap_or(&self.live);
        match f.older_than {
            None => bitmap.iter().collect(),
            Some(t) => bitmap
                .iter()
                .filter(|&s| self.slots[s as usize].as_ref().is_some_and(|x| x.rec.created_at < t))
                .collect(),
        }
    }

    pub fn records(&self, slots: &[u32]) -> Vec<(&Record, &[f32])> {
        slots.iter().map(|&s| self.slot(s)).collect()
    }

    pub fn ids_of(&self, slots: &[u32]) -> Vec<Arc<str>> {
        slots.iter().map(|&s| self.id_of(s).clone()).collect()
    }

    pub fn count(&self, f: &Filter) -> usize {
        if f.is_empty() {
            self.len()
        } else if f.older_than.is_none() {
            self.idx.candidates(f, &self.live, |id| self.ids.get(id).copied()).map_or(self.len(), |b| b.len() as usize)
        } else {
            self.select(f).len()
        }
    }

    /// Records matching `f`, newest first (created_at descending, ties by id ascending).
    pub fn list(&self, f: &Filter, offset: usize, limit: Option<usize>) -> Vec<(&Record, &[f32])> {
        let mut slots = self.select(f);
        slots.sort_by(|&a, &b| {
            let (ra, rb) = (&self.slot(a).0, &self.slot(b).0);
            rb.created_at.total_cmp(&ra.created_at).then_with(|| ra.id.cmp(&rb.id))
        });
        let end = limit.map_or(slots.len(), |l| offset.saturating_add(l).min(slots.len()));
        let start = offset.min(slots.len());
        self.records(&slots[start..end])
    }

    pub fn child_scopes(&self, parent: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        for scope in self.idx.scopes.keys() {
            if let Some(child) = child_of(parent, scope) {
                if scope_matches(parent, child) {
                    out.insert(child.to_string());
                }
            }
        }
        out.into_iter().collect()
    }

    pub fn category_counts(&self, f: &Filter) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        if f.is_empty() {
            return {
                let mut v: Vec<_> = self.idx.categories.iter().map(|(c, b)| (c.clone(), b.len() as usize)).collect();
                v.sort();
                v
            };
        }
        for s in self.select(f) {
            for c in &self.slot(s).0.categories {
                *counts.entry(c.as_str()).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
        v.sort();
        v
    }

    /// Exact top-k by cosine for each query of `queries` (nq rows of `dim`), over the records
    /// matching `f` (selected from the indexes first), with scores >= `min_score`.
    ///
    /// Large scans run in two phases that keep the result exact. Phase one scans the
    /// half-precision copy of the normalised vectors (half the bytes of a memory-bound scan)
    /// for the best `k + PRESCAN_EXTRA` candidates. Phase two scores those in f32 exactly as
    /// the one-phase scan does. Any record left out scored at most `a_min` in phase one, so
    /// at most `a_min + eps` exactly (`prescan_error_bound`); when that is below the k-th
    /// exact score (or below `min_score`), nothing left out can enter the top-k and the
    /// answer is the exact one. Otherwise (ties at the cut, near-duplicates) that query is
    /// answered by the one-phase f32 scan.
    pub fn search(&self, queries: &[f32], nq: usize, k: usize, f: &Filter, min_score: Option<f32>) -> Vec<Vec<Hit>> {
        let Some(dim) = self.dim else { return vec![Vec::new(); nq] };
        if self.is_empty() || k == 0 {
            return vec![Vec::new(); nq];
        }
        let q_inv: Vec<f32> = queries.chunks_exact(dim).map(inverse_norm).collect();
        let candidates = if f.is_empty() { None } else { Some(self.select(f)) };
        let rows = candidates.as_ref().map_or(self.slots.len(), |c| c.len());
        let exact_score = |q: usize, slot: u32| -> f32 {
            let dot = simd::dot_f32(&queries[q * dim..(q + 1) * dim], self.arena.row(slot as usize));
            (dot * self.inv_norm[slot as usize] * q_inv[q]).clamp(-1.0, 1.0)
        };
        let finish = |mut hits: Vec<(f32, u32)>| -> Vec<Hit> {
            hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| self.id_of(a.1).cmp(self.id_of(b.1))));
            hits.into_iter().map(|(s, slot)| (self.id_of(slot).clone(), s)).collect()
        };
        let k1 = k.saturating_add(PRESCAN_EXTRA);
        if rows.saturating_mul(dim) < PRESCAN_MIN_VALUES || rows <= k1 || nq > PRESCAN_MAX_QUERIES {
            let heaps = self.scan(queries, nq, dim, k, candidates.as_deref(), Scan::Exact { q_inv: &q_inv, min_score });
            return heaps.into_iter().map(|h| finish(h.into_entries())).collect();
        }
        let unit: Vec<f32> = queries.chunks_exact(dim).zip(&q_inv).flat_map(|(q, &inv)| q.iter().map(move |x| x * inv)).collect();
        let approx = self.scan(&unit, nq, dim, k1, candidates.as_deref(), Scan::Half);
        let eps = simd::half::prescan_error_bound(dim);
        approx
            .into_iter()
            .enumerate()
            .map(|(q, heap)| {
                let kept = heap.into_entries();
                // A heap that is not full holds every live candidate: nothing was left out.
                let complete = kept.len() < k1;
                let a_min = kept.iter().map(|e| e.0).fold(f32::INFINITY, f32::min);
                let mut exact: Vec<(f32, u32)> = kept.iter().map(|&(_, slot)| (exact_score(q, slot), slot)).collect();
                if let Some(m) = min_score {
                    exact.retain(|e| e.0 >= m);
                }
                exact.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| self.id_of(a.1).cmp(self.id_of(b.1))));
                // The score a record left out would have to reach to change the answer.
                let bar = if exact.len() >= k { Some(exact[k - 1].0) } else { min_score };
                if complete || bar.is_some_and(|bar| a_min + eps < bar) {
                    exact.truncate(k);
                    finish(exact)
                } else {
                    let q_one = &queries[q * dim..(q + 1) * dim];
                    let heaps = self.scan(q_one, 1, dim, k, candidates.as_deref(), Scan::Exact { q_inv: &q_inv[q..q + 1], min_score });
                    finish(heaps.into_iter().next().expect("one query").into_entries())
                }
            })
            .collect()
    }

    /// Top-`k` heaps, one per query, over `candidates` (or every slot), in blocks of rows
    /// that the cores share when the scan is large.
    fn scan(&self, queries: &[f32], nq: usize, dim: usize, k: usize, candidates: Option<&[u32]>, mode: Scan<'_>) -> Vec<TopK> {
        let rows = candidates.map_or(self.slots.len(), |c| c.len());
        let blocks: Vec<(usize, usize)> = (0..rows).step_by(BLOCK_ROWS).map(|s| (s, (s + BLOCK_ROWS).min(rows))).collect();
        let scan_block = |heaps: &mut Vec<TopK>, scores: &mut Vec<f32>, (start, end): (usize, usize)| {
            let n = end - start;
            scores.resize(n * nq, 0.0);
            let slots_of_block: Option<&[u32]> = candidates.map(|c| &c[start..end]);
            match (slots_of_block, mode) {
                (None, Scan::Exact { .. }) => {
                    let block = self.arena.block(start, end);
                    if nq == 1 {
                        simd::dot_rows(queries, block, dim, &mut scores[..n]);
                    } else {
                        simd::dot_rows_multi(queries, nq, block, dim, n, &mut scores[..n * nq]);
                    }
                }
                (None, Scan::Half) => {
                    let block = self.half.block(start, end);
                    for q in 0..nq {
                        simd::half::dot_rows_f16(&queries[q * dim..(q + 1) * dim], block, dim, &mut scores[q * n..(q + 1) * n]);
                    }
                }
                (Some(slots), mode) => {
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
                            let query = &queries[q * dim..(q + 1) * dim];
                            let out = &mut scores[q * n + i..q * n + i + run];
                            match mode {
                                Scan::Exact { .. } => simd::dot_gather(query, self.arena.chunk(c), dim, &local, out),
                                Scan::Half => simd::half::dot_gather_f16(query, self.half.chunk(c), dim, &local, out),
                            }
                        }
                        i += run;
                    }
                }
            }
            for q in 0..nq {
                let heap = &mut heaps[q];
                for i in 0..n {
                    let slot = slots_of_block.map_or((start + i) as u32, |s| s[i]);
                    let inv = self.inv_norm[slot as usize];
                    if inv == 0.0 {
                        continue; // free slot
                    }
                    let raw = scores[q * n + i];
                    let score = match mode {
                        Scan::Exact { q_inv, min_score } => {
                            let s = (raw * inv * q_inv[q]).clamp(-1.0, 1.0);
                            if min_score.is_some_and(|m| s < m) {
                                continue;
                            }
                            s
                        }
                        Scan::Half => raw,
                    };
                    heap.offer(score, slot, |a, b| self.id_of(a) < self.id_of(b));
                }
            }
        };
        let new_heaps = || (0..nq).map(|_| TopK::new(k)).collect::<Vec<_>>();
        if rows * dim * nq >= PARALLEL_MIN_FLOPS && blocks.len() > 1 {
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
                            ha.offer(score, slot, |x, y| self.id_of(x) < self.id_of(y));
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

    /// Approximate bytes held by the replica (arena, norms, ids), for stats.
    pub fn memory_bytes(&self) -> usize {
        self.arena.bytes() + self.half.bytes() + self.inv_norm.capacity() * 4 + self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
    }
}
