//! The in-memory replica of a store: the vector arena (contiguous chunks), the records, the id map
//! and the filter indexes. The engine guards it with one RwLock: searches share it,
//! writes (already committed to the durable layer) take it exclusively for a moment.

use crate::arena::{Arena, CHUNK_ROWS};
use crate::filter::{child_of, scope_matches, Filter, Scalar};
use crate::hnsw::{GraphQuery, GraphRows, GraphUnfit, Hnsw, HnswParams, SavedAt};
use crate::index::FilterIndexes;
use crate::record::{metadata_scalars, Record};
use crate::simd;
use crate::storage::Damage;
use crate::topk::TopK;
use crate::{Error, Result};
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
const PARALLEL_MIN_FLOPS: usize = 1_000_000;
/// The smallest block a parallel scan splits a store into (smaller ones cost more to hand
/// out than they save).
const MIN_BLOCK_ROWS: usize = 256;
/// Scans of at least this many values use the half-precision pre-scan (smaller ones are
/// cache-resident, where the second phase would cost more than it saves).
const PRESCAN_MIN_VALUES: usize = 1 << 20;
/// Batches larger than this skip the pre-scan: the f32 multi-query kernel reads each row
/// once for the whole batch, which beats one half-precision pass per query.
const PRESCAN_MAX_QUERIES: usize = 2;
/// Half-precision values a batch scan widens to f32 at a time: 512 KiB of f32 rows,
/// which stay in L2 while every query of the batch passes over them.
const WIDEN_VALUES: usize = 1 << 17;
/// Candidates beyond k kept by the pre-scan, so that the exactness check rarely fails.
const PRESCAN_EXTRA: usize = 32;

/// How vectors are held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// The f32 vectors as stored, plus their unit half-precision copy for the pre-scan:
    /// exact scores.
    #[default]
    F32,
    /// Only the unit half-precision copy (a third of the memory): scores within
    /// `simd::half::prescan_error_bound` of the exact cosine. The exact vectors stay in the
    /// durable layer, where `get` and `list` read them.
    F16,
    /// Only the unit vectors quantised to int8 with one factor each (a quarter of the f32
    /// bytes, a sixth of `F32`'s memory). Searches here return candidates by their int8
    /// score; the engine re-ranks them with the exact vectors read from the durable layer
    /// (see `Engine::search`), so scores are exact and only recall can suffer.
    Int8,
}

impl Precision {
    pub fn from_name(s: &str) -> Option<Precision> {
        match s {
            "f32" => Some(Precision::F32),
            "f16" => Some(Precision::F16),
            "int8" => Some(Precision::Int8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }
}

/// Which search a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// The graph once the store holds at least `AUTO_MIN_VALUES` values (rows x dim),
    /// the exact scan below that.
    Auto,
    /// Always the exact scan.
    Exact,
    /// The graph at any size.
    Hnsw,
}

impl IndexMode {
    pub fn from_name(s: &str) -> Option<IndexMode> {
        match s {
            "auto" => Some(IndexMode::Auto),
            "exact" => Some(IndexMode::Exact),
            "hnsw" => Some(IndexMode::Hnsw),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IndexMode::Auto => "auto",
            IndexMode::Exact => "exact",
            IndexMode::Hnsw => "hnsw",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    pub mode: IndexMode,
    /// Width of a graph search (results considered before re-scoring); at least k is used.
    pub ef_search: usize,
    pub params: HnswParams,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { mode: IndexMode::Auto, ef_search: DEFAULT_EF_SEARCH, params: HnswParams::default() }
    }
}

pub const DEFAULT_EF_SEARCH: usize = 96;
/// `IndexMode::Auto` uses the graph from this many stored values on (2^25: 21,845 records
/// of 1536 dimensions, 87,381 of 384), where an exact scan passes ~2 ms here.
pub const AUTO_MIN_VALUES: usize = 1 << 25;
/// Records changed since the graph was built are scanned exactly beside it; a rebuild
/// starts once this many have gathered (their scan then costs about what a graph search does).
pub const PENDING_REBUILD: u64 = 1024;
/// A filter whose candidates hold at most this many values (rows x dim), or fewer than
/// 1/`SELECTIVE_RATIO` of the records, is answered by an exact scan of its candidates:
/// cheaper than a graph walk that must pass many rejected nodes, and exact.
const FILTER_EXACT_VALUES: u64 = 1 << 22;
const SELECTIVE_RATIO: u64 = 20;
/// Graph builds link up to this many records per parallel round (two per core) once the
/// graph holds `BUILD_PARALLEL_MIN_NODES` (before that, one by one, so the first nodes
/// see each other).
const BUILD_PARALLEL_BATCH: usize = 16;
const BUILD_PARALLEL_MIN_NODES: usize = 1024;
/// Concurrent single-query scans of at least this many values (4 MB of f32 rows) run as
/// one batch; smaller ones finish before a batch would form.
const SHARED_SCAN_MIN_VALUES: usize = 1 << 20;

/// A graph being built off the write path (see `crate::engine`): the slots still to link,
/// and the index generation it belongs to (a reset or reload makes it void).
pub struct GraphBuild {
    pub graph: Hnsw,
    pub todo: Vec<u32>,
    pub generation: u64,
}

/// What a scan computes: exact cosine scores in f32, or dot products of the unit query
/// with the half-precision unit rows (phase one of `State::search`).
#[derive(Clone, Copy)]
enum Scan<'a> {
    /// `each`: several queries are scored one by one over each block (bit-identical to
    /// scanning for each alone) instead of by the multi-query kernel.
    Exact { q_inv: &'a [f32], min_score: Option<f32>, each: bool },
    /// `multi`: a batch whose queries may be scored by the f32 multi-query kernel on rows
    /// widened to f32 a few at a time (see `WIDEN_VALUES`), not bit-identical to scanning
    /// each alone.
    Half { multi: bool },
    /// The queries quantised (`quantised`, nq rows of dim, with their `factors`) against
    /// the int8 rows: approximate cosines (int8 precision).
    Int8 { quantised: &'a [i8], factors: &'a [f32] },
}

/// The row a vector is searched by: its unit half-precision row (f32 and f16 precision),
/// or its unit vector quantised to int8 with the factor (int8 precision).
enum SearchRow {
    Half(Vec<u16>),
    Int8(Vec<i8>, f32),
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

/// A filter as the graph search applies it: the candidate bitmap from the indexes (None:
/// every record), the unindexed `older_than` bound, and how many records match at most.
struct GraphPlan {
    allowed: Option<RoaringBitmap>,
    older_than: Option<f64>,
    matching: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    pub mode: IndexMode,
    pub ef_search: usize,
    pub params: HnswParams,
    /// Whether searches use the graph now.
    pub active: bool,
    pub graph_nodes: usize,
    /// Records searched exactly beside the graph (all of them while none is built).
    pub pending: usize,
    pub graph_bytes: usize,
}

/// The rows a store image writes, live records in slot order (`slots`), per precision.
pub enum ImageRows<'a, I> {
    /// The f32 vectors and their unit half-precision copy.
    F32 {
        slots: I,
        vectors: &'a Arena,
        half: &'a Arena<u16>,
    },
    F16 {
        slots: I,
        half: &'a Arena<u16>,
    },
    /// The unit vectors quantised to int8, and each one's factor.
    Int8 {
        slots: I,
        quant: &'a Arena<i8>,
        factors: &'a [f32],
    },
}

/// The rows a store image gives back, row `i` for the image's record `i`.
pub enum ImageArenas {
    F32 { vectors: Arena, half: Arena<u16> },
    F16 { half: Arena<u16> },
    Int8 { quant: Arena<i8>, factors: Vec<f32> },
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
    /// The normalised vectors in binary16, scanned first by large searches (f32 and f16
    /// precision).
    half: Arena<u16>,
    /// The normalised vectors quantised to int8 and each one's factor (int8 precision only).
    quant: Arena<i8>,
    quant_factor: Vec<f32>,
    /// 1/|v| per slot; 0.0 marks a free slot (stored vectors are never all zeros).
    inv_norm: Vec<f32>,
    /// Bumped whenever a slot gets a different vector; the graph remembers the version it
    /// linked, so a changed or reused slot is never returned from a stale node.
    slot_version: Vec<u32>,
    /// The published graph, when one is built (see `crate::hnsw`).
    ann: Option<Arc<Hnsw>>,
    /// Live slots the graph does not cover at their current version: scanned exactly.
    unindexed: RoaringBitmap,
    pub index: IndexConfig,
    /// Set before the first record is put; kept across `clear`.
    pub precision: Precision,
    /// Bumped by `clear`: a graph built before it is void.
    index_generation: u64,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    live: RoaringBitmap,
    idx: FilterIndexes,
    /// Records whose stored bytes fail their checksums, by id as stored: kept out of the
    /// replica (never scored or returned) and reported until saved again or deleted.
    quarantined: BTreeMap<String, Damage>,
}

/// Whether scanning the `matching` records of a filter beats walking the graph for them
/// (`IndexMode::Auto` picks the cheaper; `Hnsw` walks whenever the filter is broad).
///
/// A filtered walk admits a `matching / live` share of the nodes it passes, so it visits
/// about `ef * 2M * live / matching` nodes, each a random fetch (~100 ns) plus `dim`
/// half-precision values (~0.1 ns each). The exact scan streams `matching * dim` values
/// (~0.2 ns each with the half-precision pre-scan). Measured on 100,000 x 1536 with 1 record
/// in 12 matching: walk 14 ms, scan ~3 ms; the model puts the break-even there at 1 in 6.
fn filtered_scan_is_cheaper(matching: u64, live: u64, dim: usize, index: IndexConfig) -> bool {
    let walk = (index.ef_search as f64) * (2 * index.params.m) as f64 * (live as f64 / matching.max(1) as f64) * (dim as f64 * 0.1 + 100.0);
    let scan = matching as f64 * dim as f64 * 0.2;
    scan <= walk
}

/// An upper bound on the difference between two f32 cosine scores of the same unit-norm
/// pair summed in different orders: each sum is within d 2^-24 of the exact value (a worst
/// case), plus slack for the scaling.
fn reordered_sum_bound(dim: usize) -> f32 {
    (2.0 * dim as f64 * 2f64.powi(-24) + 1e-6) as f32
}

/// 1/|v| in f32, computed in f64. New stored vectors are within the range of
/// `engine::validate_stored_vectors`, where this is at most 2^100; a row stored before that
/// check (a subnormal one) saturates at f32::MAX instead of becoming infinity, which times
/// an underflowed dot product of 0 made NaN.
pub fn inverse_norm(v: &[f32]) -> f32 {
    let sq: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sq > 0.0 {
        (1.0 / sq.sqrt()).min(f32::MAX as f64) as f32
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
        let (index, index_generation, precision) = (self.index, self.index_generation, self.precision);
        *self = State::default();
        self.precision = precision;
        self.epoch = epoch;
        self.seq = seq;
        self.search_generation = generation + 1;
        self.index = index;
        self.index_generation = index_generation + 1;
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Keeps damaged records out of the replica: a version of them it holds is dropped (a
    /// damaged row is the newest write of its id), and each is remembered for `damaged`.
    pub fn quarantine(&mut self, damaged: Vec<Damage>) {
        for d in damaged {
            self.remove(&d.id);
            self.quarantined.insert(d.id.clone(), d);
        }
    }

    /// The quarantined records, by id.
    pub fn damaged(&self) -> Vec<Damage> {
        self.quarantined.values().cloned().collect()
    }

    pub fn damage_of(&self, id: &str) -> Option<&Damage> {
        self.quarantined.get(id)
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
    /// right length) and the metadata JSON. An empty `vector` replaces the other fields of
    /// an existing record and keeps its vector (see `WriteOp::Put`).
    pub fn put(&mut self, rec: Record, vector: &[f32]) -> Result<()> {
        if !self.quarantined.is_empty() {
            self.quarantined.remove(&*rec.id); // saved again: whole
        }
        if vector.is_empty() {
            return self.put_fields(rec);
        }
        let dim = *self.dim.get_or_insert(vector.len());
        if dim != vector.len() {
            return Err(Error::DimensionMismatch { expected: dim, got: vector.len() });
        }
        let meta = metadata_scalars(&rec.metadata_json)?;
        let replaced = self.ids.get(&*rec.id).copied();
        let inv = inverse_norm(vector);
        let row = self.search_row(vector, inv);
        let same_vector = replaced.is_some_and(|slot| self.same_vector(slot, vector, &row));
        if !(same_vector && self.same_filterables(replaced.expect("replaced"), &rec)) {
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
                    let slot =
                        u32::try_from(self.slots.len()).map_err(|_| Error::InvalidInput("a store holds at most 2^32 records".into()))?;
                    if self.slots.is_empty() {
                        self.arena = Arena::new(dim);
                        self.half = Arena::new(dim);
                        self.quant = Arena::new(dim);
                    }
                    self.slots.push(None);
                    self.inv_norm.push(0.0);
                    self.slot_version.push(0);
                    match self.precision {
                        Precision::F32 => {
                            self.arena.push_row();
                            self.half.push_row();
                        }
                        Precision::F16 => {
                            self.half.push_row();
                        }
                        Precision::Int8 => {
                            self.quant.push_row();
                            self.quant_factor.push(0.0);
                        }
                    }
                    slot
                }
            },
        };
        let s = slot as usize;
        if !same_vector {
            self.slot_version[s] = self.slot_version[s].wrapping_add(1);
            self.unindexed.insert(slot);
        }
        if self.precision == Precision::F32 {
            self.arena.row_mut(s).copy_from_slice(vector);
        }
        self.inv_norm[s] = inv;
        match row {
            SearchRow::Half(half_row) => self.half.row_mut(s).copy_from_slice(&half_row),
            SearchRow::Int8(q, factor) => {
                self.quant.row_mut(s).copy_from_slice(&q);
                self.quant_factor[s] = factor;
            }
        }
        self.idx.insert(slot, &rec, &meta);
        self.ids.insert(rec.id.clone(), slot);
        self.live.insert(slot);
        self.slots[s] = Some(Slot { rec, meta });
        Ok(())
    }

    /// Whether replacing the record in `slot` by `rec` (with the same vector) leaves every
    /// search result as it is: same filterable fields (a touch, a new content or importance
    /// change nothing a search returns).
    fn same_filterables(&self, slot: u32, rec: &Record) -> bool {
        let Some(old) = self.slots[slot as usize].as_ref().map(|s| &s.rec) else { return false };
        old.scope == rec.scope
            && old.categories == rec.categories
            && old.metadata_json == rec.metadata_json
            && old.source == rec.source
            && old.private == rec.private
            && old.created_at.to_bits() == rec.created_at.to_bits()
    }

    /// The row searches scan for `vector` (with 1/|vector| = `inv`) at this precision.
    fn search_row(&self, vector: &[f32], inv: f32) -> SearchRow {
        if self.precision == Precision::Int8 {
            let unit: Vec<f32> = vector.iter().map(|x| x * inv).collect();
            let mut q = vec![0i8; vector.len()];
            let factor = simd::int8::quantize_i8(&unit, &mut q);
            SearchRow::Int8(q, factor)
        } else {
            let mut half_row = vec![0u16; vector.len()];
            simd::half::to_f16_bits(vector, inv, &mut half_row);
            SearchRow::Half(half_row)
        }
    }

    /// Whether `slot` holds exactly `vector` (bit for bit), or under f16 and int8
    /// precision, where searches see only the row `search_row` makes, that row.
    fn same_vector(&self, slot: u32, vector: &[f32], row: &SearchRow) -> bool {
        let s = slot as usize;
        match (self.precision, row) {
            (Precision::F32, _) => self.arena.row(s).iter().zip(vector).all(|(a, b)| a.to_bits() == b.to_bits()),
            (_, SearchRow::Half(half_row)) => self.half.row(s) == half_row.as_slice(),
            (_, SearchRow::Int8(q, factor)) => self.quant.row(s) == q.as_slice() && self.quant_factor[s].to_bits() == factor.to_bits(),
        }
    }

    /// Replaces the fields of an existing record, keeping its vector.
    fn put_fields(&mut self, rec: Record) -> Result<()> {
        let Some(&slot) = self.ids.get(&*rec.id) else {
            return Err(Error::InvalidInput(format!("record {:?} does not exist: a new record needs a vector", &*rec.id)));
        };
        let meta = metadata_scalars(&rec.metadata_json)?;
        if !self.same_filterables(slot, &rec) {
            self.search_generation += 1;
        }
        let old = self.slots[slot as usize].take().expect("id map points at a live slot");
        self.idx.remove(slot, &old.rec, &old.meta);
        self.idx.insert(slot, &rec, &meta);
        self.slots[slot as usize] = Some(Slot { rec, meta });
        Ok(())
    }

    /// Removes a record; returns whether it existed.
    pub fn remove(&mut self, id: &str) -> bool {
        if !self.quarantined.is_empty() {
            self.quarantined.remove(id);
        }
        let Some(slot) = self.ids.remove(id) else { return false };
        self.search_generation += 1;
        let s = slot as usize;
        let old = self.slots[s].take().expect("id map points at a live slot");
        self.idx.remove(slot, &old.rec, &old.meta);
        self.inv_norm[s] = 0.0;
        self.live.remove(slot);
        self.unindexed.remove(slot);
        self.free.push(slot);
        // The slot is reused by the next insert; reopening a store packs the arena densely.
        true
    }

    pub fn get(&self, id: &str) -> Option<(&Record, &[f32])> {
        let &slot = self.ids.get(id)?;
        Some(self.slot(slot))
    }

    /// A record and its vector; the vector is empty under f16 and int8 precision (the
    /// engine reads it from the durable layer).
    fn slot(&self, slot: u32) -> (&Record, &[f32]) {
        let s = slot as usize;
        let rec = &self.slots[s].as_ref().expect("live slot").rec;
        match self.precision {
            Precision::F32 => (rec, self.arena.row(s)),
            Precision::F16 | Precision::Int8 => (rec, &[]),
        }
    }

    fn id_of(&self, slot: u32) -> &Arc<str> {
        &self.slots[slot as usize].as_ref().expect("live slot").rec.id
    }

    /// Every live slot matching the filter, in slot order.
    pub fn select(&self, f: &Filter) -> Vec<u32> {
        self.select_from(f, self.candidates(f).as_ref())
    }

    /// The indexed part of a filter: the live slots its indexed fields allow, or None when
    /// it has none (every live slot; `older_than` is checked per record by `select_from`).
    fn candidates(&self, f: &Filter) -> Option<RoaringBitmap> {
        self.idx.candidates(f, &self.live, |id| self.ids.get(id).copied())
    }

    /// `select` with the filter's `candidates` already computed.
    fn select_from(&self, f: &Filter, cands: Option<&RoaringBitmap>) -> Vec<u32> {
        let bitmap = cands.unwrap_or(&self.live);
        match f.older_than {
            None => bitmap.iter().collect(),
            Some(t) => bitmap.iter().filter(|&s| self.slots[s as usize].as_ref().is_some_and(|x| x.rec.created_at < t)).collect(),
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
        self.search_with(queries, nq, k, f, min_score, false)
    }

    /// As `search`, but every query's result is bit-identical to what searching it alone
    /// returns (coalesced single queries, see [`crate::coalesce`]): batches share each
    /// block of rows while it is in cache, but score it with the single-query kernels
    /// instead of the multi-query one (whose different summation order may move the last
    /// bit of a score).
    pub fn search_each(&self, queries: &[f32], nq: usize, k: usize, f: &Filter, min_score: Option<f32>) -> Vec<Vec<Hit>> {
        self.search_with(queries, nq, k, f, min_score, true)
    }

    /// The graph when the mode and the filter call for it (each query searched on its
    /// own, so `each` holds there by construction), else the exact scan.
    fn search_with(&self, queries: &[f32], nq: usize, k: usize, f: &Filter, min_score: Option<f32>, each: bool) -> Vec<Vec<Hit>> {
        let Some(dim) = self.dim else { return vec![Vec::new(); nq] };
        if self.is_empty() || k == 0 {
            return vec![Vec::new(); nq];
        }
        let allowed = if f.is_empty() { None } else { self.candidates(f) };
        let allowed = match self.usable_graph() {
            Some(graph) => match self.graph_plan(f, dim, allowed) {
                Ok(plan) => return self.search_graph(graph, &plan, queries, nq, dim, k, f, min_score),
                Err(allowed) => allowed,
            },
            None => allowed,
        };
        self.search_exact(queries, nq, dim, k, f, allowed.as_ref(), min_score, each)
    }

    /// The exact search of `search` (one or two phases, see there); `each`: score every
    /// query as if alone (see `search_each`).
    #[allow(clippy::too_many_arguments)]
    /// `allowed`: the filter's `candidates`, computed by the caller.
    #[allow(clippy::too_many_arguments)]
    fn search_exact(
        &self,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        f: &Filter,
        allowed: Option<&RoaringBitmap>,
        min_score: Option<f32>,
        each: bool,
    ) -> Vec<Vec<Hit>> {
        let q_inv: Vec<f32> = queries.chunks_exact(dim).map(inverse_norm).collect();
        let candidates = if f.is_empty() { None } else { Some(self.select_from(f, allowed)) };
        let rows = candidates.as_ref().map_or(self.slots.len(), |c| c.len());
        let exact_score = |q: usize, slot: u32| self.exact_score(&queries[q * dim..(q + 1) * dim], q_inv[q], slot);
        let finish = |hits: Vec<(f32, u32)>| self.finish(hits);
        if self.precision == Precision::Int8 {
            // The int8 scores are the answer here; the engine re-ranks them exactly.
            let (quantised, factors) = quantize_queries(queries, dim, &q_inv);
            let heaps = self.scan(&[], nq, dim, k, candidates.as_deref(), Scan::Int8 { quantised: &quantised, factors: &factors });
            return heaps
                .into_iter()
                .map(|h| {
                    let mut hits = h.into_entries();
                    if let Some(m) = min_score {
                        hits.retain(|e| e.0 >= m);
                    }
                    finish(hits)
                })
                .collect();
        }
        if self.precision == Precision::F16 {
            // One pass over the only copy there is; scores as `exact_score` computes them.
            let unit: Vec<f32> = queries.chunks_exact(dim).zip(&q_inv).flat_map(|(q, &inv)| q.iter().map(move |x| x * inv)).collect();
            let multi = nq > PRESCAN_MAX_QUERIES && !each;
            let heaps = self.scan(&unit, nq, dim, k, candidates.as_deref(), Scan::Half { multi });
            return heaps
                .into_iter()
                .enumerate()
                .map(|(q, h)| {
                    let query = &queries[q * dim..(q + 1) * dim];
                    let mut hits: Vec<(f32, u32)> =
                        h.into_entries().into_iter().map(|(_, slot)| (self.exact_score(query, q_inv[q], slot), slot)).collect();
                    if let Some(m) = min_score {
                        hits.retain(|e| e.0 >= m);
                    }
                    finish(hits)
                })
                .collect();
        }
        let k1 = k.saturating_add(PRESCAN_EXTRA);
        if rows.saturating_mul(dim) < PRESCAN_MIN_VALUES || rows <= k1 || (nq > PRESCAN_MAX_QUERIES && !each) {
            let heaps = self.scan(queries, nq, dim, k, candidates.as_deref(), Scan::Exact { q_inv: &q_inv, min_score, each });
            return heaps.into_iter().map(|h| finish(h.into_entries())).collect();
        }
        let (approx, eps) = if nq > PRESCAN_MAX_QUERIES {
            // A coalesced batch (`each`): phase one is the multi-query f32 kernel, whose
            // scores differ from the single-query kernel's only by summation order; phase
            // two below makes every answer bit-identical to the query's own scan.
            let heaps = self.scan(queries, nq, dim, k1, candidates.as_deref(), Scan::Exact { q_inv: &q_inv, min_score: None, each: false });
            (heaps, reordered_sum_bound(dim))
        } else {
            let unit: Vec<f32> = queries.chunks_exact(dim).zip(&q_inv).flat_map(|(q, &inv)| q.iter().map(move |x| x * inv)).collect();
            (self.scan(&unit, nq, dim, k1, candidates.as_deref(), Scan::Half { multi: false }), simd::half::prescan_error_bound(dim))
        };
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
                self.sort_hits(&mut exact);
                // The score a record left out would have to reach to change the answer.
                let bar = if exact.len() >= k { Some(exact[k - 1].0) } else { min_score };
                if complete || bar.is_some_and(|bar| a_min + eps < bar) {
                    exact.truncate(k);
                    finish(exact)
                } else {
                    let q_one = &queries[q * dim..(q + 1) * dim];
                    let heaps =
                        self.scan(q_one, 1, dim, k, candidates.as_deref(), Scan::Exact { q_inv: &q_inv[q..q + 1], min_score, each });
                    finish(heaps.into_iter().next().expect("one query").into_entries())
                }
            })
            .collect()
    }

    /// The cosine of `query` (with 1/|query| = `q_inv`) and the record in `slot`, computed
    /// exactly as the scans compute it.
    /// (Under f16 precision: the query against the unit half-precision row. Not for int8
    /// precision, whose scans score quantised queries: see `int8_score`.)
    fn exact_score(&self, query: &[f32], q_inv: f32, slot: u32) -> f32 {
        match self.precision {
            Precision::F32 => {
                let dot = simd::dot_f32(query, self.arena.row(slot as usize));
                (dot * self.inv_norm[slot as usize] * q_inv).clamp(-1.0, 1.0)
            }
            Precision::F16 => (simd::half::dot_f16(query, self.half.row(slot as usize)) * q_inv).clamp(-1.0, 1.0),
            Precision::Int8 => unreachable!("int8 precision scores quantised queries (int8_score)"),
        }
    }

    /// The approximate cosine of the quantised unit query `quantised` (factor `factor`) and
    /// the record in `slot`, computed exactly as the int8 scans compute it.
    fn int8_score(&self, quantised: &[i8], factor: f32, slot: u32) -> f32 {
        let s = slot as usize;
        simd::int8::dot_i8(quantised, self.quant.row(s)) as f32 * factor * self.quant_factor[s]
    }

    /// The rows the graph measures distances on at this precision.
    fn graph_rows(&self) -> GraphRows<'_> {
        match self.precision {
            Precision::Int8 => GraphRows::Int8 { rows: &self.quant, factors: &self.quant_factor },
            Precision::F32 | Precision::F16 => GraphRows::Half(&self.half),
        }
    }

    /// Score descending, ties by id ascending: the order of every search result.
    fn sort_hits(&self, hits: &mut [(f32, u32)]) {
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| self.id_of(a.1).cmp(self.id_of(b.1))));
    }

    fn finish(&self, mut hits: Vec<(f32, u32)>) -> Vec<Hit> {
        self.sort_hits(&mut hits);
        hits.into_iter().map(|(s, slot)| (self.id_of(slot).clone(), s)).collect()
    }

    /// Whether the index mode asks for the graph at the store's current size.
    pub fn graph_wanted(&self) -> bool {
        match self.index.mode {
            IndexMode::Exact => false,
            IndexMode::Hnsw => true,
            IndexMode::Auto => (self.live.len() as usize).saturating_mul(self.dim.unwrap_or(0)) >= AUTO_MIN_VALUES,
        }
    }

    fn usable_graph(&self) -> Option<&Hnsw> {
        self.ann.as_deref().filter(|g| self.graph_wanted() && Some(g.dim()) == self.dim)
    }

    /// The slot's version while it holds a record; None for a free slot.
    #[inline]
    fn current_version(&self, slot: u32) -> Option<u32> {
        match self.inv_norm.get(slot as usize) {
            Some(&inv) if inv != 0.0 => Some(self.slot_version[slot as usize]),
            _ => None,
        }
    }

    /// How a filter is searched with the graph, given its `candidates` (`allowed`); or,
    /// when an exact scan of them is the better (and exact) answer (a selective filter),
    /// `allowed` back for that scan, so the indexes are consulted once per search.
    fn graph_plan(&self, f: &Filter, dim: usize, allowed: Option<RoaringBitmap>) -> std::result::Result<GraphPlan, Option<RoaringBitmap>> {
        if f.is_empty() {
            return Ok(GraphPlan { allowed: None, older_than: None, matching: self.live.len() });
        }
        let matching = allowed.as_ref().map_or(self.live.len(), |b| b.len());
        if matching.saturating_mul(dim as u64) <= FILTER_EXACT_VALUES || matching.saturating_mul(SELECTIVE_RATIO) < self.live.len() {
            return Err(allowed);
        }
        if self.index.mode == IndexMode::Auto && filtered_scan_is_cheaper(matching, self.live.len(), dim, self.index) {
            return Err(allowed);
        }
        Ok(GraphPlan { allowed, older_than: f.older_than, matching })
    }

    /// Graph search: per query, up to ef nodes accepted by the filter are found in the graph
    /// and re-scored in f32 exactly, the records changed since the graph was built are
    /// scored exactly, and the best k of both are returned. A query for which the graph
    /// finds fewer than k of the matching records (a filter that splits the graph) is
    /// answered by the exact scan instead.
    #[allow(clippy::too_many_arguments)]
    fn search_graph(
        &self,
        graph: &Hnsw,
        plan: &GraphPlan,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        f: &Filter,
        min_score: Option<f32>,
    ) -> Vec<Vec<Hit>> {
        let accepts = |slot: u32| {
            plan.allowed.as_ref().is_none_or(|b| b.contains(slot))
                && plan.older_than.is_none_or(|t| self.slots[slot as usize].as_ref().is_some_and(|x| x.rec.created_at < t))
        };
        let pending: Vec<u32> = self.unindexed.iter().filter(|&s| accepts(s)).collect();
        let current = |s: u32| self.current_version(s);
        let ef = self.index.ef_search.max(k);
        let rows = self.graph_rows();
        let one = |q: usize| -> Vec<Hit> {
            let query = &queries[q * dim..(q + 1) * dim];
            let q_inv = inverse_norm(query);
            let unit: Vec<f32> = query.iter().map(|x| x * q_inv).collect();
            let prepared = rows.query(&unit);
            let found = graph.search(&prepared, ef, &rows, &|s| graph.is_current(s, &current) && accepts(s));
            let reached = found.len() + pending.len();
            // Re-scored as the exact scan scores (int8 precision: as the int8 scan does,
            // which is the graph's own int8 similarity).
            let score = |s: u32| match self.precision {
                Precision::Int8 => rows.dot(&prepared, s),
                Precision::F32 | Precision::F16 => self.exact_score(query, q_inv, s),
            };
            let mut hits: Vec<(f32, u32)> =
                found.into_iter().chain(pending.iter().map(|&s| (0.0, s))).map(|(_, s)| (score(s), s)).collect();
            if reached < k && (reached as u64) < plan.matching {
                return self.search_exact(query, 1, dim, k, f, plan.allowed.as_ref(), min_score, true).pop().expect("one query");
            }
            if let Some(m) = min_score {
                hits.retain(|h| h.0 >= m);
            }
            self.sort_hits(&mut hits);
            hits.truncate(k);
            self.finish(hits)
        };
        if nq >= 4 && crate::fork::threads() > 1 {
            (0..nq).into_par_iter().map(one).collect()
        } else {
            (0..nq).map(one).collect()
        }
    }

    /// Whether a single-query search with this filter is a scan big enough that
    /// concurrent ones should share it (see [`crate::coalesce`]): an exact scan (no graph
    /// in use for it) over at least `SHARED_SCAN_MIN_VALUES` values.
    pub fn scan_is_worth_sharing(&self, f: &Filter) -> bool {
        let Some(dim) = self.dim else { return false };
        if (self.live.len() as usize).saturating_mul(dim) < SHARED_SCAN_MIN_VALUES {
            return false;
        }
        let allowed = if f.is_empty() { None } else { self.candidates(f) };
        let rows = allowed.as_ref().map_or(self.live.len(), |b| b.len());
        if self.usable_graph().is_some() && self.graph_plan(f, dim, allowed).is_ok() {
            return false;
        }
        (rows as usize).saturating_mul(dim) >= SHARED_SCAN_MIN_VALUES
    }

    /// Whether a graph build should run now: the graph is wanted and either none is
    /// published or `PENDING_REBUILD` records changed since (any change when `flush`).
    pub fn graph_build_due(&self, flush: bool) -> bool {
        let threshold = if flush || self.ann.is_none() { 1 } else { PENDING_REBUILD };
        self.graph_wanted() && self.dim.is_some() && self.unindexed.len() >= threshold
    }

    /// Starts a graph build from the published graph (a copy; searches keep using the
    /// original) or, when more than half its nodes are stale, from nothing.
    pub fn begin_graph_build(&self) -> Option<GraphBuild> {
        let dim = self.dim?;
        let reuse = self.ann.as_deref().filter(|g| {
            let current = self.live.len() - self.unindexed.len();
            g.dim() == dim && g.params() == self.index.params && (g.nodes() as u64) < 2 * current.max(1)
        });
        let (graph, todo) = match reuse {
            Some(g) => (g.clone(), self.unindexed.iter().collect()),
            None => (Hnsw::new(dim, self.index.params), self.live.iter().collect()),
        };
        Some(GraphBuild { graph, todo, generation: self.index_generation })
    }

    /// Links the slots `build.todo[from..]` into the build's graph, a round at a time,
    /// until `stop()` says so after a round; returns where it stopped. Slots freed or
    /// already current are skipped.
    pub fn extend_graph_build(&self, build: &mut GraphBuild, from: usize, stop: &dyn Fn() -> bool, scratch: &mut GraphQuery) -> usize {
        let current = |s: u32| self.current_version(s);
        let rows = self.graph_rows();
        let mut i = from;
        while i < build.todo.len() {
            // A round is what a writer waiting for the state lock may have to wait for: one
            // record while the graph is small (linked one by one), else two per core.
            let sequential = build.graph.nodes() < BUILD_PARALLEL_MIN_NODES || crate::fork::threads() < 2;
            let round = if sequential { 1 } else { (2 * crate::fork::threads()).min(BUILD_PARALLEL_BATCH) };
            let mut batch: Vec<(u32, u32)> = Vec::with_capacity(round);
            while i < build.todo.len() && batch.len() < round {
                let slot = build.todo[i];
                i += 1;
                if let Some(v) = current(slot) {
                    if build.graph.version(slot) != Some(v) {
                        batch.push((slot, v));
                    }
                }
            }
            if sequential {
                for (slot, v) in batch {
                    build.graph.insert(slot, v, &rows, &current, scratch);
                }
            } else {
                // The neighbour searches (nearly all the work) in parallel, the linking after.
                let graph = &build.graph;
                let plans: Vec<_> = batch
                    .par_iter()
                    .map_init(GraphQuery::default, |sc, &(slot, v)| graph.plan_insert(slot, v, &rows, &current, sc))
                    .collect();
                for plan in plans {
                    build.graph.apply_insert(plan, &rows, &current, scratch);
                }
            }
            if stop() {
                break;
            }
        }
        i
    }

    /// Whether `build` still belongs to this state (no reset or reload since it began).
    pub fn graph_build_is_current(&self, build: &GraphBuild) -> bool {
        build.generation == self.index_generation
    }

    /// Publishes a finished build: searches use it from now on, and the records it covers
    /// at their current version leave the exact-scanned set. False when the build is void.
    pub fn publish_graph(&mut self, build: GraphBuild) -> bool {
        if !self.graph_build_is_current(&build) || Some(build.graph.dim()) != self.dim {
            return false;
        }
        let g = build.graph;
        let covered: Vec<u32> =
            self.unindexed.iter().filter(|&s| g.version(s).is_some() && g.version(s) == self.current_version(s)).collect();
        for s in covered {
            self.unindexed.remove(s);
        }
        self.ann = Some(Arc::new(g));
        // Approximate results may differ from the previous graph's: cached ones are void.
        self.search_generation += 1;
        true
    }

    /// The published graph as a file's bytes (see `Hnsw::to_bytes`), or None without one.
    pub fn graph_file_bytes(&self) -> Option<Vec<u8>> {
        let g = self.ann.as_deref()?;
        let current = |s: u32| self.current_version(s);
        Some(g.to_bytes(SavedAt { epoch: self.epoch, seq: self.seq }, &current, |s| self.id_of(s)))
    }

    /// Publishes a graph read from a file written at this replica's exact position: Ok(true)
    /// when published, Ok(false) (and nothing changes) when the file does not fit it, Err
    /// with what is wrong when the file is damaged (nothing changes either).
    pub fn install_graph_file(&mut self, bytes: &[u8]) -> std::result::Result<bool, String> {
        let Some(dim) = self.dim else { return Ok(false) };
        let at = SavedAt { epoch: self.epoch, seq: self.seq };
        let graph = Hnsw::from_bytes(bytes, at, dim, self.index.params, |id| {
            let slot = *self.ids.get(id)?;
            Some((slot, self.current_version(slot)?))
        });
        let graph = match graph {
            Ok(g) => g,
            Err(GraphUnfit::Stale) => return Ok(false),
            Err(GraphUnfit::Damaged(why)) => return Err(why),
        };
        let build = GraphBuild { graph, todo: Vec::new(), generation: self.index_generation };
        Ok(self.publish_graph(build))
    }

    /// The live records in slot order, each with 1/|v|: the records and norms of a store
    /// image. [`State::image_vectors`] gives their rows in the same order.
    pub fn image_records(&self) -> impl Iterator<Item = (&Record, f32)> + '_ {
        self.live.iter().map(move |slot| (&self.slots[slot as usize].as_ref().expect("live slot").rec, self.inv_norm[slot as usize]))
    }

    /// The rows of the live records in slot order, as this precision keeps them.
    pub fn image_vectors(&self) -> ImageRows<'_, impl Iterator<Item = usize> + Clone + '_> {
        let slots = self.live.iter().map(|s| s as usize);
        match self.precision {
            Precision::F32 => ImageRows::F32 { slots, vectors: &self.arena, half: &self.half },
            Precision::F16 => ImageRows::F16 { slots, half: &self.half },
            Precision::Int8 => ImageRows::Int8 { slots, quant: &self.quant, factors: &self.quant_factor },
        }
    }

    /// A replica at (epoch, seq) from a store image: row `i` of `vectors` and `inv_norm`
    /// belongs to `records[i]`. Errors (and the image is not used) when a record's metadata
    /// does not parse or an id repeats.
    pub fn from_image(dim: usize, epoch: u64, seq: u64, records: Vec<Record>, vectors: ImageArenas, inv_norm: Vec<f32>) -> Result<State> {
        let n = records.len();
        assert_eq!(inv_norm.len(), n);
        let mut st = State { dim: Some(dim), epoch, seq, inv_norm, ..State::default() };
        match vectors {
            ImageArenas::F32 { vectors, half } => {
                assert!(vectors.rows() == n && half.rows() == n);
                (st.precision, st.arena, st.half) = (Precision::F32, vectors, half);
            }
            ImageArenas::F16 { half } => {
                assert_eq!(half.rows(), n);
                (st.precision, st.half) = (Precision::F16, half);
            }
            ImageArenas::Int8 { quant, factors } => {
                assert!(quant.rows() == n && factors.len() == n);
                (st.precision, st.quant, st.quant_factor) = (Precision::Int8, quant, factors);
            }
        }
        st.slot_version = vec![1; n];
        st.slots.reserve_exact(n);
        st.ids.reserve(n);
        for (slot, rec) in records.into_iter().enumerate() {
            let slot = slot as u32;
            if st.inv_norm[slot as usize] <= 0.0 || !st.inv_norm[slot as usize].is_finite() {
                return Err(Error::Corrupt(format!("record {:?} has no valid norm", &*rec.id)));
            }
            let meta = metadata_scalars(&rec.metadata_json)?;
            if st.ids.insert(rec.id.clone(), slot).is_some() {
                return Err(Error::Corrupt(format!("record {:?} appears twice", &*rec.id)));
            }
            st.idx.insert(slot, &rec, &meta);
            st.slots.push(Some(Slot { rec, meta }));
        }
        st.live.insert_range(0..n as u32);
        st.unindexed = st.live.clone();
        Ok(st)
    }

    /// Changes the index mode or search width (results may change: the cache is voided).
    pub fn set_index(&mut self, config: IndexConfig) {
        if config.params != self.index.params {
            self.ann = None;
            self.unindexed = self.live.clone();
        }
        self.index = config;
        self.search_generation += 1;
    }

    /// (graph nodes, graph memory) and the records scanned exactly beside the graph.
    pub fn index_stats(&self) -> IndexStats {
        IndexStats {
            mode: self.index.mode,
            ef_search: self.index.ef_search,
            params: self.index.params,
            active: self.usable_graph().is_some(),
            graph_nodes: self.ann.as_ref().map_or(0, |g| g.nodes()),
            pending: if self.ann.is_some() { self.unindexed.len() as usize } else { self.len() },
            graph_bytes: self.ann.as_ref().map_or(0, |g| g.memory_bytes()),
        }
    }

    /// Top-`k` heaps, one per query, over `candidates` (or every slot), in blocks of rows
    /// that the cores share when the scan is large.
    fn scan(&self, queries: &[f32], nq: usize, dim: usize, k: usize, candidates: Option<&[u32]>, mode: Scan<'_>) -> Vec<TopK> {
        let rows = candidates.map_or(self.slots.len(), |c| c.len());
        let threads = crate::fork::threads();
        let parallel = threads > 1 && rows * dim * nq >= PARALLEL_MIN_FLOPS;
        // A parallel scan of a small store still gives every core about four blocks (so a
        // core that wakes late is not left with half the work): blocks are a power of two
        // rows, so they never straddle an arena chunk, from MIN_BLOCK_ROWS to BLOCK_ROWS.
        let block_rows =
            if parallel { rows.div_ceil(threads * 4).next_power_of_two().clamp(MIN_BLOCK_ROWS, BLOCK_ROWS) } else { BLOCK_ROWS };
        let blocks: Vec<(usize, usize)> = (0..rows).step_by(block_rows).map(|s| (s, (s + block_rows).min(rows))).collect();
        let scan_block = |heaps: &mut Vec<TopK>, scores: &mut Vec<f32>, (start, end): (usize, usize)| {
            let n = end - start;
            scores.resize(n * nq, 0.0);
            let slots_of_block: Option<&[u32]> = candidates.map(|c| &c[start..end]);
            match (slots_of_block, mode) {
                (None, Scan::Exact { each, .. }) => {
                    let block = self.arena.block(start, end);
                    if nq == 1 || each {
                        for q in 0..nq {
                            simd::dot_rows(&queries[q * dim..(q + 1) * dim], block, dim, &mut scores[q * n..(q + 1) * n]);
                        }
                    } else {
                        simd::dot_rows_multi(queries, nq, block, dim, n, &mut scores[..n * nq]);
                    }
                }
                (None, Scan::Half { multi: true }) => {
                    // Each row is widened once for the whole batch, then every query meets
                    // it in the register tiles of the f32 multi-query kernel.
                    let block = self.half.block(start, end);
                    let step = (WIDEN_VALUES / dim).max(1);
                    let mut wide = vec![0f32; step.min(n) * dim];
                    let mut part = vec![0f32; nq * step.min(n)];
                    for r0 in (0..n).step_by(step) {
                        let r = (n - r0).min(step);
                        simd::half::widen(&block[r0 * dim..(r0 + r) * dim], &mut wide[..r * dim]);
                        simd::dot_rows_multi(queries, nq, &wide[..r * dim], dim, r, &mut part[..nq * r]);
                        for q in 0..nq {
                            scores[q * n + r0..q * n + r0 + r].copy_from_slice(&part[q * r..(q + 1) * r]);
                        }
                    }
                }
                (None, Scan::Half { multi: false }) => {
                    let block = self.half.block(start, end);
                    for q in 0..nq {
                        simd::half::dot_rows_f16(&queries[q * dim..(q + 1) * dim], block, dim, &mut scores[q * n..(q + 1) * n]);
                    }
                }
                (None, Scan::Int8 { quantised, factors }) => {
                    let block = self.quant.block(start, end);
                    let mut dots = vec![0i32; n];
                    for q in 0..nq {
                        simd::int8::dot_rows_i8(&quantised[q * dim..(q + 1) * dim], block, dim, &mut dots);
                        let row_factors = &self.quant_factor[start..end];
                        for ((out, &d), &f) in scores[q * n..(q + 1) * n].iter_mut().zip(&dots).zip(row_factors) {
                            *out = d as f32 * factors[q] * f;
                        }
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
                            let out = &mut scores[q * n + i..q * n + i + run];
                            match mode {
                                Scan::Exact { .. } => {
                                    simd::dot_gather(&queries[q * dim..(q + 1) * dim], self.arena.chunk(c), dim, &local, out)
                                }
                                Scan::Half { .. } => {
                                    simd::half::dot_gather_f16(&queries[q * dim..(q + 1) * dim], self.half.chunk(c), dim, &local, out)
                                }
                                Scan::Int8 { quantised, factors } => {
                                    let query = &quantised[q * dim..(q + 1) * dim];
                                    for (o, &slot) in out.iter_mut().zip(&slots[i..i + run]) {
                                        *o = self.int8_score(query, factors[q], slot);
                                    }
                                }
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
                        Scan::Exact { q_inv, min_score, .. } => {
                            let s = (raw * inv * q_inv[q]).clamp(-1.0, 1.0);
                            if min_score.is_some_and(|m| s < m) {
                                continue;
                            }
                            s
                        }
                        Scan::Half { .. } | Scan::Int8 { .. } => raw,
                    };
                    heap.offer(score, slot, |a, b| self.id_of(a) < self.id_of(b));
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
        self.arena.bytes()
            + self.half.bytes()
            + self.quant.bytes()
            + self.quant_factor.capacity() * 4
            + self.inv_norm.capacity() * 8
            + self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
            + self.ann.as_ref().map_or(0, |g| g.memory_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_scans_moderately_selective_filters_and_walks_broad_ones() {
        let index = IndexConfig::default();
        // 100,000 x 1536, as measured: 1 record in 12 is scanned, half the store is walked.
        assert!(filtered_scan_is_cheaper(100_000 / 12, 100_000, 1536, index));
        assert!(!filtered_scan_is_cheaper(50_000, 100_000, 1536, index));
        // A million small vectors: even 1 in 12 is a long scan.
        assert!(!filtered_scan_is_cheaper(1_000_000 / 12, 1_000_000, 384, index));
        // A wider search makes the walk dearer.
        let wide = IndexConfig { ef_search: 1000, ..index };
        assert!(filtered_scan_is_cheaper(50_000, 100_000, 1536, wide));
    }

    /// A graph build gives way between rounds, and a round is small: one record while the
    /// graph is small, then at most two per core. This bounds how long a writer waiting
    /// for the state lock waits on the builder (`engine::build_graphs`).
    #[test]
    fn graph_builds_stop_after_one_round_when_asked() {
        let (n, dim) = (BUILD_PARALLEL_MIN_NODES + 200, 8);
        let mut st = State::new();
        let mut seed = 7u64;
        for i in 0..n {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let rec = Record {
                id: format!("r{i}").into(),
                content: String::new(),
                scope: "/".into(),
                categories: Vec::new(),
                metadata_json: "{}".into(),
                importance: 0.5,
                created_at: 0.0,
                last_accessed: 0.0,
                source: None,
                private: false,
            };
            st.put(rec, &v).unwrap();
        }
        let mut build = st.begin_graph_build().unwrap();
        let mut scratch = GraphQuery::default();
        let asked = || true;
        // Linked one by one while the graph is small.
        assert_eq!(st.extend_graph_build(&mut build, 0, &asked, &mut scratch), 1);
        let mut at = 1;
        while build.graph.nodes() < BUILD_PARALLEL_MIN_NODES {
            at = st.extend_graph_build(&mut build, at, &asked, &mut scratch);
        }
        assert_eq!(at, BUILD_PARALLEL_MIN_NODES);
        // Then a round of at most two records per core.
        let next = st.extend_graph_build(&mut build, at, &asked, &mut scratch);
        let per_round = (2 * crate::fork::threads()).min(BUILD_PARALLEL_BATCH);
        assert!(next > at && next - at <= per_round.max(1), "{at} -> {next}");
        // Without a stop, the build runs to the end and covers every record.
        assert_eq!(st.extend_graph_build(&mut build, next, &|| false, &mut scratch), n);
        assert_eq!(build.graph.nodes(), n);
    }
}
