//! The engine: one per open store. It owns the in-memory replica (`State`, behind a
//! RwLock so searches run in parallel) and the durable layer (`Storage`, one connection for
//! writes and one for catching up). Every write is one durable transaction first, then
//! applied to the replica; every operation first catches up with what other processes
//! committed, so a store shared by processes answers with their writes included.
//!
//! `Engine` orchestrates; each concern lives in a file of its own:
//! * `open`: opening (durable layer, image or rows, saved graph), catch-up, close;
//! * `write`: the write protocol (one transaction, then the replica) and the disk reserve;
//! * `search`: the result cache, coalescing, the scorer (`set_scorer`, `with_rows`) and
//!   the re-ranking of int8 candidates;
//! * `builder`: the background graph builder and the index settings.
//!
//! Reads (`get`, `list`, `count`, scopes), validation and stats are here.

use crate::cache::{CacheCounters, CacheStats, ResultCache};
use crate::coalesce::Coalescer;
use crate::device::DeviceScorer;
use crate::filter::Filter;
use crate::metrics::{Metrics, Op, OpStats};
use crate::planner::Planner;
use crate::record::Record;
use crate::scorer::Scorer;
use crate::state::{IndexStats, Precision, State};
use crate::storage::{Damage, Durability, Storage};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod builder;
mod open;
mod plan;
mod search;
mod write;

pub use builder::graph_file;
use builder::IndexBuilder;
pub use plan::Explanation;
pub use write::{reserve_file, RESERVE_BYTES};

/// How `upsert` treats an id that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// An existing id is an error (DuplicateId) and nothing is written.
    Insert,
    /// An existing id is replaced, whole.
    Upsert,
}

/// How a store is opened (see [`Engine::open_opts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    pub durability: Durability,
    pub precision: Precision,
    /// Keep a store image beside the file (written at close when the store changed) and
    /// open from it when it fits: see [`crate::image`].
    pub fast_open: bool,
    /// Never write to the file: writes fail with [`Error::ReadOnly`], and close writes no
    /// graph or image. A store must exist at the path.
    pub read_only: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { durability: Durability::Normal, precision: Precision::F32, fast_open: false, read_only: false }
    }
}

/// Fields to change in `update`; None leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    pub content: Option<String>,
    pub scope: Option<String>,
    pub categories: Option<Vec<String>>,
    pub metadata_json: Option<String>,
    pub importance: Option<f64>,
    pub created_at: Option<f64>,
    pub last_accessed: Option<f64>,
    pub source: Option<Option<String>>,
    pub private: Option<bool>,
    pub vector: Option<Vec<f32>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScopeInfo {
    pub path: String,
    pub record_count: usize,
    pub categories: Vec<String>,
    pub oldest: Option<f64>,
    pub newest: Option<f64>,
    pub child_scopes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct EngineStats {
    pub records: usize,
    pub dim: Option<usize>,
    pub memory_bytes: usize,
    pub disk_bytes: u64,
    /// The durable backend and its state (see [`crate::storage::Storage::status`]).
    pub storage: serde_json::Value,
    pub precision: Precision,
    pub operations: Vec<(&'static str, OpStats)>,
    pub cache: CacheStats,
    pub index: IndexStats,
    /// Graph builds published since the engine opened.
    pub index_builds: u64,
    pub index_building: bool,
    /// Single-query searches that ran in a batch shared with others, and those batches.
    pub coalesced_searches: u64,
    pub coalesced_batches: u64,
    /// Whether the store keeps an image (`OpenOptions::fast_open`), and whether this
    /// engine was opened from one.
    pub fast_open: bool,
    pub opened_from_image: bool,
    /// Why the image beside the store was rejected as damaged at open (it was ignored and
    /// the store read from SQLite), None when it was used, absent or merely not current.
    pub image_damage: Option<String>,
    /// Why the saved graph was rejected as damaged at open (it is rebuilt in the
    /// background), None when it was used, absent or merely not current.
    pub graph_damage: Option<String>,
    pub read_only: bool,
    /// Records kept out of the replica because they fail their checksums on disk.
    pub damaged: Vec<Damage>,
}

/// A record with its vector, as `get` and `list` return them.
pub type RecordWithVector = (Record, Vec<f32>);

/// A change staged by a write. A vector is borrowed from the caller's buffer when it comes
/// from one (saves), owned when it is copied out of the state (update, touch).
enum OwnedOp<'v> {
    Put(Record, Cow<'v, [f32]>),
    Delete(Arc<str>),
}

pub struct Engine {
    /// Shared with the background graph builder.
    state: Arc<RwLock<State>>,
    writer: Mutex<Option<Box<dyn Storage>>>,
    reader: Mutex<Option<Box<dyn Storage>>>,
    /// Set when a catch-up failed half-way, so the next operation retries it.
    stale: AtomicBool,
    closed: AtomicBool,
    metrics: Metrics,
    path: Option<PathBuf>,
    /// A leaf lock, taken under the state read lock only (see [`crate::cache`]).
    cache: Mutex<ResultCache>,
    cache_counters: CacheCounters,
    builder: Arc<IndexBuilder>,
    coalescer: Coalescer,
    coalesced_searches: AtomicU64,
    coalesced_batches: AtomicU64,
    fast_open: bool,
    read_only: bool,
    opened_from_image: bool,
    /// See [`EngineStats::image_damage`] and [`EngineStats::graph_damage`].
    image_damage: Option<String>,
    graph_damage: Option<String>,
    /// The (epoch, seq) of the image beside the store when it is known to hold exactly
    /// that replica (opened from it, or written by this engine): no rewrite needed.
    image_at: Mutex<Option<(u64, u64)>>,
    /// Runs the exact scans (see [`crate::scorer`]); a leaf lock, held only to clone it.
    scorer: RwLock<Arc<dyn Scorer>>,
    /// Chooses the path of each exact search (see [`crate::planner`]).
    planner: Planner,
    /// The device searches may run on, with the fork generation it was attached at (a
    /// device does not survive a fork); a leaf lock, held only to clone it.
    device: RwLock<Option<(Arc<DeviceScorer>, u64)>>,
    /// The default device policy (a `Policy` as u8).
    policy: AtomicU8,
}

/// Entries of the result cache of a newly opened engine (see [`Engine::set_cache_capacity`]).
pub const DEFAULT_CACHE_ENTRIES: usize = 256;

/// The backend's reads of exact vectors; an engine at f16 or int8 precision is only opened
/// on a backend that has them.
fn exact_vectors(storage: &mut dyn Storage) -> Result<&mut dyn crate::storage::VectorsAt> {
    storage.as_vectors_at().ok_or_else(|| Error::Storage("this store's backend cannot read exact vectors back".into()))
}

/// The error a read of a quarantined record gets.
fn damaged_record_error(d: &Damage) -> Error {
    Error::Corrupt(format!("{} on disk. Save the record again (or delete it) to clear it; `ferromem check` lists all damage", d.describe()))
}

/// Checks a row-major matrix of `dim`-vectors: finite values and no all-zero row (queries;
/// stored vectors also need [`validate_stored_vectors`]'s range).
pub fn validate_vectors(data: &[f32], dim: usize) -> Result<()> {
    check_rows(data, dim, None)
}

/// Checks vectors to be stored: those of [`validate_vectors`], and each row's largest
/// absolute value within [`MIN_STORED_MAGNITUDE`, `MAX_STORED_MAGNITUDE`].
pub fn validate_stored_vectors(data: &[f32], dim: usize) -> Result<()> {
    check_rows(data, dim, Some(MIN_STORED_MAGNITUDE..=MAX_STORED_MAGNITUDE))
}

/// One pass over each row (its largest absolute value, or None at a non-finite value)
/// decides every check; the messages are worked out only for a row that fails.
fn check_rows(data: &[f32], dim: usize, range: Option<std::ops::RangeInclusive<f32>>) -> Result<()> {
    if dim == 0 || data.is_empty() {
        return Err(Error::InvalidVector("empty vector: a vector needs at least one value".into()));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(Error::InvalidVector(format!("{} values do not make rows of {dim}", data.len())));
    }
    for (r, row) in data.chunks_exact(dim).enumerate() {
        let largest = row.iter().try_fold(0.0f32, |m, &x| x.is_finite().then(|| m.max(x.abs())));
        match largest {
            None => {
                let c = row.iter().position(|x| !x.is_finite()).unwrap_or(0);
                return Err(Error::InvalidVector(format!("vector {r} has a non-finite value ({}) at position {c}", row[c])));
            }
            Some(0.0) => return Err(Error::InvalidVector(format!("vector {r} is all zeros: a zero vector has no direction"))),
            Some(max) if range.as_ref().is_some_and(|range| !range.contains(&max)) => {
                return Err(Error::InvalidVector(format!(
                    "vector {r} has largest absolute value {max:e}: a stored vector's largest absolute value must lie between 2^-100 (about 7.9e-31) and 2^100 (about 1.3e30); cosine similarity does not depend on scale, so rescale it (e.g. divide it by its norm)"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The range of a stored vector's largest absolute value: 2^-100 ..= 2^100. A search
/// scores the f64-normalised query against the stored f32 row (dot product in f32, then
/// times the row's 1/|v|), so every intermediate stays in f32's normal range inside it:
/// the dot is at most |v| <= sqrt(d) 2^100 (no overflow below 2^56 dimensions), 1/|v| at
/// most 2^100, and the dot of a unit query with a row of |v| >= 2^-100 stays above the
/// subnormals (2^-126) for any cosine the f32 sums resolve. The normalised f16 and int8
/// copies are made from v * (1/|v|), within range too. Outside it a vector scored NaN, 0
/// or +-1 against itself; it is refused instead (cosine does not depend on scale, so the
/// caller can rescale it).
pub const MIN_STORED_MAGNITUDE: f32 = 7.888_609e-31; // 2^-100
pub const MAX_STORED_MAGNITUDE: f32 = 1.267_650_6e30; // 2^100

/// A precision's vectors are at most `Precision::max_dim` values long (an int8 store's
/// `simd::int8::MAX_DIM`: beyond it the kernels' i32 sums could overflow; they assert,
/// which was a panic reaching Python).
fn check_precision_dim(precision: Precision, dim: usize) -> Result<()> {
    if dim > precision.max_dim() {
        return Err(Error::InvalidVector(format!(
            "precision '{}' takes vectors of at most {} values, not {dim}; use precision 'f32' or 'f16' for longer ones",
            precision.name(),
            precision.max_dim()
        )));
    }
    Ok(())
}

/// The rows of `queries` scaled to unit length, computed in f64: any finite, non-zero
/// query (1e-42 subnormals, 3e38) becomes a unit f32 vector, so the f32 kernels never see
/// a product or sum outside their range. Cosine does not depend on the query's scale.
pub fn unit_queries(queries: &[f32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(queries.len());
    for row in queries.chunks_exact(dim) {
        // f32 squares lie in [2^-298, 2^256] and their sum below 2^256 d: no f64 overflow,
        // and no underflow to zero for a non-zero row.
        let sq: f64 = row.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let inv = 1.0 / sq.sqrt();
        out.extend(row.iter().map(|&x| ((x as f64) * inv) as f32));
    }
    out
}

impl Engine {
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The store's dimension, after catching up with other processes (one of them may
    /// have reset the store and started again at another dimension).
    pub fn dim(&self) -> Result<Option<usize>> {
        self.check_open()?;
        self.catch_up()?;
        Ok(self.state.read().dim)
    }

    /// The state's write lock, announced to the graph builder while it is awaited (see
    /// `IndexBuilder::writers_waiting`).
    fn write_state(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.builder.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let guard = self.state.write();
        self.builder.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn read_op<T>(&self, op: Op, f: impl FnOnce(&State) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        self.check_open()?;
        self.catch_up()?;
        let r = f(&self.state.read());
        self.metrics.record(op, t);
        r
    }

    /// The records with these ids (None where none is stored). A record that is stored
    /// but damaged is an error naming it, never None: it exists, and it cannot be served.
    pub fn get(&self, ids: &[String]) -> Result<Vec<Option<RecordWithVector>>> {
        let out = self.read_with_vectors(Op::get, |st| ids.iter().map(|id| st.get(id).map(|(r, v)| (r.clone(), v.to_vec()))).collect())?;
        if out.iter().any(Option::is_none) {
            let st = self.state.read();
            if let Some(d) = ids.iter().zip(&out).filter(|(_, r)| r.is_none()).find_map(|(id, _)| st.damage_of(id)) {
                return Err(damaged_record_error(d));
            }
        }
        Ok(out)
    }

    /// A read that returns records with their vectors. Under f16 precision the replica
    /// has no exact vectors: they are read from the durable layer at the replica's exact
    /// position (epoch, seq); if one of those records was written since, catch up and read
    /// again, so a record never comes back with another version's vector.
    fn read_with_vectors(&self, op: Op, f: impl Fn(&State) -> Vec<Option<RecordWithVector>>) -> Result<Vec<Option<RecordWithVector>>> {
        let t = Instant::now();
        self.check_open()?;
        loop {
            self.catch_up()?;
            let (mut out, epoch, seq, precision) = {
                let st = self.state.read();
                (f(&st), st.epoch, st.seq, st.precision)
            };
            if precision.keeps_exact_vectors() {
                self.metrics.record(op, t);
                return Ok(out);
            }
            let ids: Vec<Arc<str>> = out.iter().flatten().map(|(r, _)| r.id.clone()).collect();
            let vectors = {
                let mut guard = self.reader.lock();
                exact_vectors(guard.as_mut().ok_or(Error::Closed)?.as_mut())?.vectors_at(epoch, seq, &ids)?
            };
            let Some(vectors) = vectors else { continue };
            for ((_, v), stored) in out.iter_mut().flatten().zip(vectors) {
                *v = stored.ok_or_else(|| Error::Storage("a record of the replica is missing from the store file".into()))?;
            }
            self.metrics.record(op, t);
            return Ok(out);
        }
    }

    pub fn list(&self, filter: &Filter, offset: usize, limit: Option<usize>) -> Result<Vec<RecordWithVector>> {
        let rows = self.read_with_vectors(Op::list, |st| {
            st.list(filter, offset, limit).into_iter().map(|(r, v)| Some((r.clone(), v.to_vec()))).collect()
        })?;
        Ok(rows.into_iter().flatten().collect())
    }

    pub fn count(&self, filter: &Filter) -> Result<usize> {
        self.read_op(Op::count, |st| Ok(st.count(filter)))
    }

    pub fn child_scopes(&self, scope: &str) -> Result<Vec<String>> {
        self.read_op(Op::scopes, |st| Ok(st.child_scopes(scope)))
    }

    pub fn category_counts(&self, filter: &Filter) -> Result<Vec<(String, usize)>> {
        self.read_op(Op::scopes, |st| Ok(st.category_counts(filter)))
    }

    pub fn scope_info(&self, scope: &str) -> Result<ScopeInfo> {
        self.read_op(Op::scopes, |st| {
            let f = Filter { scope: Some(scope.to_string()), ..Filter::default() };
            let slots = st.select(&f);
            let recs = st.records(&slots);
            let mut cats: Vec<String> = recs.iter().flat_map(|(r, _)| r.categories.iter().cloned()).collect();
            cats.sort();
            cats.dedup();
            let times = recs.iter().map(|(r, _)| r.created_at);
            Ok(ScopeInfo {
                path: if scope.is_empty() { "/".into() } else { scope.to_string() },
                record_count: recs.len(),
                categories: cats,
                oldest: times.clone().reduce(f64::min),
                newest: times.reduce(f64::max),
                child_scopes: st.child_scopes(scope),
            })
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> EngineStats {
        // The writer mutex first, and released before the state lock: a writer holds the
        // mutex while it waits for the state lock, so the other order could deadlock.
        let disk_bytes = self.writer.lock().as_ref().and_then(|w| w.as_local_file()).map_or(0, |f| f.disk_bytes());
        // From the reader: the writer may be waiting on another process's write.
        let storage = self.reader.lock().as_ref().map_or(serde_json::Value::Null, |r| r.status());
        let st = self.state.read();
        EngineStats {
            records: st.len(),
            dim: st.dim,
            memory_bytes: st.memory_bytes(),
            precision: st.precision,
            disk_bytes,
            storage,
            operations: self.metrics.snapshot(),
            cache: self.cache_stats(),
            index: st.index_stats(),
            index_builds: self.builder.builds.load(Ordering::Relaxed),
            index_building: self.builder.running.load(Ordering::Relaxed),
            coalesced_searches: self.coalesced_searches.load(Ordering::Relaxed),
            coalesced_batches: self.coalesced_batches.load(Ordering::Relaxed),
            fast_open: self.fast_open,
            opened_from_image: self.opened_from_image,
            image_damage: self.image_damage.clone(),
            graph_damage: self.graph_damage.clone(),
            read_only: self.read_only,
            damaged: st.damaged(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stops the builder (it holds its own reference to the state) and saves the graph.
        self.close();
    }
}
