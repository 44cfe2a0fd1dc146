//! The in-memory replica of a store: the records, the id map and the filter indexes
//! (here), the vector rows of its precision (`crate::vectors`), the graph over them
//! (`graph`), search planning (`search`) and the store image's import and export (`image`).
//! The engine guards it with one RwLock: searches share it, writes (already committed to
//! the durable layer) take it exclusively for a moment.

mod graph;
mod image;
mod search;

pub use graph::GraphBuild;

use crate::ann::AnnIndex;
use crate::filter::{child_of, scope_matches, Filter, Scalar};
use crate::guard::{RecallGuard, RecallReport};
use crate::hnsw::HnswParams;
use crate::index::FilterIndexes;
use crate::record::{metadata_scalars, Record};
use crate::scorer::RowChanges;
use crate::storage::Damage;
use crate::vectors::PrecisionRows;
use crate::{Error, Result};
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub use crate::vectors::Precision;

/// One search hit: the record's id and its cosine score.
pub type Hit = (Arc<str>, f32);

struct Slot {
    rec: Record,
    meta: Vec<(String, Scalar)>,
}

/// Which search a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// The graph once the store holds at least `IndexConfig::auto_min_values` values
    /// (rows x dim), the exact scan below that; and the graph serves only while the recall
    /// guard (see [`crate::guard`]) finds it at the recall target and cheaper than exact.
    Auto,
    /// Always the exact scan.
    Exact,
    /// The graph at any size, at `ef_search`, whatever the recall guard finds.
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
    /// `IndexMode::Auto` wants a graph from this many stored values (rows x dim) on.
    pub auto_min_values: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { mode: IndexMode::Auto, ef_search: DEFAULT_EF_SEARCH, params: HnswParams::default(), auto_min_values: AUTO_MIN_VALUES }
    }
}

pub const DEFAULT_EF_SEARCH: usize = 96;
/// `IndexMode::Auto` builds the graph from this many stored values on by default (2^25:
/// 21,845 records of 1536 dimensions, 87,381 of 384), where an exact scan passes ~2 ms
/// here (`IndexConfig::auto_min_values`).
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

#[derive(Clone, Debug, PartialEq)]
pub struct IndexStats {
    pub mode: IndexMode,
    pub ef_search: usize,
    pub params: HnswParams,
    pub auto_min_values: usize,
    /// Whether searches use the graph now.
    pub active: bool,
    /// The width a graph search runs at now (the recall guard's under `Auto`); None while
    /// searches scan exactly.
    pub serving_ef: Option<usize>,
    /// The recall guard's estimate and verdict (see [`crate::guard`]).
    pub recall: RecallReport,
    pub graph_nodes: usize,
    /// Records searched exactly beside the graph (all of them while none is built).
    pub pending: usize,
    pub graph_bytes: usize,
}

#[derive(Default)]
pub struct State {
    pub dim: Option<usize>,
    /// Durable-layer position this replica reflects: reset generation and change sequence.
    pub epoch: u64,
    pub seq: u64,
    /// Bumped by every change that can alter a search result (see [`crate::cache`]).
    pub search_generation: u64,
    /// The vector rows, at `precision` (see [`crate::vectors`]).
    rows: Box<dyn PrecisionRows>,
    /// 1/|v| per slot; 0.0 marks a free slot (stored vectors are never all zeros).
    inv_norm: Vec<f32>,
    /// Bumped whenever a slot gets a different vector; the graph remembers the version it
    /// linked, so a changed or reused slot is never returned from a stale node.
    slot_version: Vec<u32>,
    /// The published graph, when one is built (see `crate::hnsw`).
    ann: Option<Arc<dyn AnnIndex>>,
    /// Live slots the graph does not cover at their current version: scanned exactly.
    unindexed: RoaringBitmap,
    /// The engine's recall guard: whether `IndexMode::Auto` lets the graph serve, and at
    /// which width. Its own locks (leaves) guard it; it is kept here so that a search reads
    /// the route under the lock it already holds, and it outlives `clear`.
    guard: Arc<RecallGuard>,
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
    /// The search generation at which each slot's row was last written or freed, and at
    /// which the rows were last cleared (see [`State::rows_changed_since`]).
    row_changed_at: Vec<u64>,
    rows_cleared_at: u64,
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
        let guard = Arc::clone(&self.guard);
        *self = State::default();
        // The graph is gone: what the guard knew of it is void.
        guard.reset();
        self.guard = guard;
        self.rows_cleared_at = generation + 1;
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
        let same_filterables = replaced.is_some_and(|slot| self.same_filterables(slot, &rec));
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
                        self.rows = self.precision.new_rows(dim);
                    }
                    self.slots.push(None);
                    self.inv_norm.push(0.0);
                    self.slot_version.push(0);
                    self.row_changed_at.push(0);
                    self.rows.push_row();
                    slot
                }
            },
        };
        let s = slot as usize;
        // Whether searches see the same row as before (only a replaced record can).
        let same_vector = self.rows.put(s, vector, inv) && replaced.is_some();
        if !(same_vector && same_filterables) {
            self.search_generation += 1;
        }
        if !same_vector {
            self.slot_version[s] = self.slot_version[s].wrapping_add(1);
            self.row_changed_at[s] = self.search_generation;
            self.unindexed.insert(slot);
        }
        self.inv_norm[s] = inv;
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
        self.row_changed_at[s] = self.search_generation;
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
        (rec, self.rows.exact_vector(s).unwrap_or(&[]))
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

    /// Approximate bytes held by the replica (rows, norms, ids, graph), for stats.
    pub fn memory_bytes(&self) -> usize {
        self.rows.memory_bytes()
            + self.inv_norm.capacity() * 8
            + self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
            + self.ann.as_ref().map_or(0, |g| g.memory_bytes())
    }

    /// Slots held, live or free.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// 1/|v| per slot; 0.0 marks a free slot.
    pub fn inv_norms(&self) -> &[f32] {
        &self.inv_norm
    }

    /// The id of the record in `slot`, None for a free slot.
    #[inline]
    pub fn id_at(&self, slot: u32) -> Option<&str> {
        self.slots.get(slot as usize)?.as_ref().map(|s| &*s.rec.id)
    }

    /// The engine's recall guard (see [`crate::guard`]).
    pub fn guard(&self) -> &Arc<RecallGuard> {
        &self.guard
    }

    /// The vector rows.
    pub fn vectors(&self) -> &dyn PrecisionRows {
        &*self.rows
    }

    /// The rows written or freed since the search generation `generation` (see
    /// [`crate::scorer::RowsView::changed_since`]).
    pub fn rows_changed_since(&self, generation: u64) -> RowChanges {
        if generation < self.rows_cleared_at {
            return RowChanges::All;
        }
        let (mut written, mut freed) = (Vec::new(), Vec::new());
        for (slot, &at) in self.row_changed_at.iter().enumerate() {
            if at > generation {
                if self.inv_norm[slot] == 0.0 {
                    freed.push(slot as u32);
                } else {
                    written.push(slot as u32);
                }
            }
        }
        RowChanges::Some { written, freed }
    }
}
