//! The engine: one per open store. It owns the in-memory replica (`State`, behind a
//! RwLock so searches run in parallel) and the durable layer (`Storage`, one connection for
//! writes and one for catching up). Every write is one durable transaction first, then
//! applied to the replica; every operation first catches up with what other processes
//! committed, so a store shared by processes answers with their writes included.

use crate::cache::{CacheCounters, CacheStats, ResultCache, SearchKey};
use crate::coalesce::{group, Coalescer, Job};
use crate::filter::Filter;
use crate::image::{self, image_file};
use crate::metrics::{Metrics, Op, OpStats};
use crate::record::{metadata_scalars, Record};
use crate::simd;
use crate::state::{inverse_norm, Hit, IndexConfig, IndexStats, Precision, State};
use crate::storage::{self, Access, Changes, Damage, Durability, Location, Storage, StorageOptions, WriteOp};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The background graph builder's shared flags (see [`Engine::kick_index_build`]).
#[derive(Default)]
struct IndexBuilder {
    /// A builder thread is running (at most one per engine).
    running: AtomicBool,
    /// Set by `close`: the builder stops between batches.
    stop: AtomicBool,
    /// Callers of `wait_for_index`: while any waits, every pending change is linked.
    flush_waiters: AtomicUsize,
    builds: AtomicU64,
    /// Threads waiting for the state's write lock: the builder gives its read lock up
    /// after the round of links in progress instead of at the end of its time slice.
    writers_waiting: AtomicUsize,
}

/// Bounds on the graph parameters: beyond them a graph costs more than an exact scan.
const MAX_M: usize = 128;
const MAX_EF: usize = 100_000;

/// How long the builder holds the state read lock per slice when no writer waits for the
/// write lock (a waiting writer ends the slice after the round of links in progress).
const BUILD_BATCH: Duration = Duration::from_millis(4);

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
}

/// Entries of the result cache of a newly opened engine (see [`Engine::set_cache_capacity`]).
pub const DEFAULT_CACHE_ENTRIES: usize = 256;

/// Candidates an int8 search re-ranks for a top-k: k plus a margin, so that a record the
/// quantisation moved below the k-th place is still among them. Measured in one run
/// (numpy, the same quantisation): on the shared MiniLM set (60,000 x 384, 1,000 queries)
/// the int8 order alone has recall@10 0.994 and re-ranking its top 12 already gives 1.0;
/// on random vectors (30,000 x 384 and x 1536) 0.985 and 0.978 alone, 1.0 from the top
/// 15. `k + max(k, 16)` keeps about twice that margin; each candidate costs one point
/// read of its vector (~4 us).
fn rerank_width(k: usize) -> usize {
    k.saturating_add(k.max(RERANK_EXTRA))
}
const RERANK_EXTRA: usize = 16;

/// The backend's reads of exact vectors; an engine at f16 or int8 precision is only opened
/// on a backend that has them.
fn exact_vectors(storage: &mut dyn Storage) -> Result<&mut dyn storage::VectorsAt> {
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

/// An int8 store's vectors are at most `simd::int8::MAX_DIM` values long: beyond it the
/// kernels' i32 sums could overflow (they assert, which was a panic reaching Python).
fn check_int8_dim(precision: Precision, dim: usize) -> Result<()> {
    if precision == Precision::Int8 && dim > simd::int8::MAX_DIM {
        return Err(Error::InvalidVector(format!(
            "precision 'int8' takes vectors of at most {} values, not {dim}; use precision 'f32' or 'f16' for longer ones",
            simd::int8::MAX_DIM
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

/// The checks of `dim` and precision made before a store is opened (or created).
fn check_open_args(dim: Option<usize>, precision: Precision) -> Result<()> {
    if dim == Some(0) {
        return Err(Error::InvalidInput("dim must be at least 1".into()));
    }
    if let Some(d) = dim {
        check_int8_dim(precision, d)?;
    }
    Ok(())
}

impl Engine {
    /// Opens (or creates) a store. `path` None keeps everything in memory.
    pub fn open(path: Option<&Path>, dim: Option<usize>, durability: Durability) -> Result<Engine> {
        Engine::open_with(path, dim, durability, Precision::F32)
    }

    /// Opens a store holding its vectors in memory at `precision` (see [`Precision`]);
    /// f16 needs a path: the exact vectors live in the durable layer only.
    pub fn open_with(path: Option<&Path>, dim: Option<usize>, durability: Durability, precision: Precision) -> Result<Engine> {
        Engine::open_opts(path, dim, OpenOptions { durability, precision, ..OpenOptions::default() })
    }

    /// Opens a store with every option. With `fast_open`, a store that has an image that
    /// fits (see [`crate::image`]) maps it and applies the changes committed after it,
    /// instead of reading every row.
    pub fn open_opts(path: Option<&Path>, dim: Option<usize>, opts: OpenOptions) -> Result<Engine> {
        Engine::open_at(&Location::from_path(path), dim, opts)
    }

    /// Opens the store at `location` (see [`storage::Location`]) through the storage
    /// factory: one connection for writes, one for catching up and point reads.
    pub fn open_at(location: &Location, dim: Option<usize>, opts: OpenOptions) -> Result<Engine> {
        crate::fork::install();
        let t = Instant::now();
        check_open_args(dim, opts.precision)?;
        let access = if opts.read_only { Access::ReadOnly } else { Access::ReadWrite };
        let options = StorageOptions { durability: opts.durability, access, point_reads: false };
        let writer = storage::open(location, options)?;
        let reader = storage::open(location, StorageOptions { point_reads: opts.precision != Precision::F32, ..options })?;
        Engine::open_on(writer, reader, dim, opts, t)
    }

    /// Opens an engine on a backend the caller brings: `writer` and `reader` are two
    /// connections to one store (they may share it), the first for writes, the second for
    /// catching up and point reads. `opts.durability` is the backend's affair; f16 and
    /// int8 precision need a backend with [`storage::VectorsAt`].
    pub fn open_with_storage(writer: Box<dyn Storage>, reader: Box<dyn Storage>, dim: Option<usize>, opts: OpenOptions) -> Result<Engine> {
        crate::fork::install();
        let t = Instant::now();
        check_open_args(dim, opts.precision)?;
        Engine::open_on(writer, reader, dim, opts, t)
    }

    /// The rest of opening, on open connections; `t`: when the open began.
    fn open_on(
        mut writer: Box<dyn Storage>,
        mut reader: Box<dyn Storage>,
        dim: Option<usize>,
        opts: OpenOptions,
        t: Instant,
    ) -> Result<Engine> {
        let OpenOptions { precision, fast_open, read_only, .. } = opts;
        if precision != Precision::F32 && reader.as_vectors_at().is_none() {
            return Err(Error::InvalidInput(format!(
                "precision '{}' keeps the exact vectors on disk only, and an in-memory store has no disk: give a path or use 'f32'",
                precision.name()
            )));
        }
        // The caches (graph, image, reserve) live beside a store that is a local file.
        let path = writer.as_local_file().map(|f| f.path().to_path_buf());
        let path = path.as_deref();
        let mut image_damage = None;
        let from_image = match (path, writer.as_images()) {
            (Some(p), Some(images)) if fast_open => {
                let storage::ImagePosition { epoch, seq, dim: stored_dim, token } = images.image_position()?;
                token.and_then(|token| {
                    let expected = image::Expected { token: &token, epoch, seq, dim: stored_dim };
                    match image::load(&image_file(p), &expected, precision) {
                        image::Loaded::Image(state) => Some(*state),
                        image::Loaded::Unused => None,
                        // A cache: read the store as if there were none, and say why.
                        image::Loaded::Damaged(why) => {
                            image_damage = Some(why);
                            None
                        }
                    }
                })
            }
            _ => None,
        };
        let image_at = from_image.as_ref().map(|st| (st.epoch, st.seq));
        let mut state = match from_image {
            Some(state) => state,
            None => {
                let mut state = State::new();
                state.precision = precision;
                let loaded = writer.load_each(&mut |r| state.put(r.rec, &r.vector))?;
                state.epoch = loaded.epoch;
                state.seq = loaded.seq;
                state.dim = loaded.dim;
                state.quarantine(loaded.damaged);
                state
            }
        };
        if let (Some(want), Some(have)) = (dim, state.dim) {
            if want != have {
                return Err(Error::DimensionMismatch { expected: have, got: want });
            }
        }
        state.dim = state.dim.or(dim);
        let mut graph_damage = None;
        if let Some(p) = path {
            // The graph saved by the last close, when it was written at exactly this store
            // position; otherwise (and when it is damaged: said in stats) it is rebuilt in
            // the background.
            if let Ok(bytes) = std::fs::read(graph_file(p)) {
                graph_damage = state.install_graph_file(&bytes).err();
            }
            if !read_only {
                // A read-only open writes nothing, not even the reserve.
                make_reserve(p);
            }
        }
        let engine = Engine {
            state: Arc::new(RwLock::new(state)),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(Some(reader)),
            stale: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            metrics: Metrics::default(),
            cache: Mutex::new(ResultCache::new(DEFAULT_CACHE_ENTRIES)),
            cache_counters: CacheCounters::default(),
            path: path.map(Path::to_path_buf),
            builder: Arc::new(IndexBuilder::default()),
            coalescer: Coalescer::default(),
            coalesced_searches: AtomicU64::new(0),
            coalesced_batches: AtomicU64::new(0),
            fast_open,
            read_only,
            opened_from_image: image_at.is_some(),
            image_damage,
            graph_damage,
            image_at: Mutex::new(image_at),
        };
        if image_at.is_some() {
            // The image may be older than the store: apply what was committed after it.
            engine.stale.store(true, Ordering::Release);
            engine.catch_up()?;
        }
        engine.metrics.record(Op::open, t);
        // A large store's graph is built in the background: opening never waits on it,
        // and searches scan exactly until it is published.
        engine.kick_index_build();
        Ok(engine)
    }

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

    /// Applies what the durable layer says changed. Safe against a concurrent writer of this
    /// process: only changes newer than the replica's sequence are applied.
    fn apply_changes(&self, changes: Changes) -> Result<()> {
        match changes {
            Changes::None => Ok(()),
            Changes::Reload(snap) => {
                let mut st = self.write_state();
                if snap.epoch == st.epoch && snap.seq <= st.seq {
                    return Ok(());
                }
                st.clear();
                st.epoch = snap.epoch;
                st.seq = snap.seq;
                st.dim = snap.dim;
                for r in snap.records {
                    st.put(r.rec, &r.vector)?;
                }
                st.quarantine(snap.damaged);
                Ok(())
            }
            Changes::Delta { epoch, seq, dim, upserts, deletes, damaged } => {
                let mut st = self.write_state();
                if epoch != st.epoch || seq <= st.seq {
                    return Ok(());
                }
                let since = st.seq;
                // Deletions first: an id deleted then re-added has a newer record row.
                for (id, s) in deletes {
                    if s > since {
                        st.remove(&id);
                    }
                }
                for r in upserts {
                    if r.seq > since {
                        st.put(r.rec, &r.vector)?;
                    }
                }
                // A record rewritten since and now damaged on disk: its old version in the
                // replica is no longer the record, and the new one cannot be served.
                st.quarantine(damaged.into_iter().filter(|d| d.seq > since).collect());
                if st.dim.is_none() {
                    st.dim = dim;
                }
                st.seq = seq;
                Ok(())
            }
        }
    }

    /// Catches up with other processes' commits (a few microseconds when there are none).
    fn catch_up(&self) -> Result<()> {
        let mut guard = self.reader.lock();
        let reader = guard.as_mut().ok_or(Error::Closed)?;
        let stale = self.stale.swap(false, Ordering::AcqRel);
        if !reader.maybe_changed()? && !stale {
            return Ok(());
        }
        let t = Instant::now();
        let (epoch, seq) = {
            let st = self.state.read();
            (st.epoch, st.seq)
        };
        let result = reader.changes_since(epoch, seq).and_then(|c| self.apply_changes(c));
        if result.is_err() {
            self.stale.store(true, Ordering::Release);
        }
        drop(guard);
        self.kick_index_build();
        self.metrics.record(Op::catch_up, t);
        result
    }

    fn read_op<T>(&self, op: Op, f: impl FnOnce(&State) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        self.check_open()?;
        self.catch_up()?;
        let r = f(&self.state.read());
        self.metrics.record(op, t);
        r
    }

    /// Starts an exclusive write transaction and brings the replica up to the latest
    /// commit inside it, so what the caller computes next is against the newest state.
    /// Rolls back on error.
    fn begin_caught_up(&self, w: &mut dyn Storage) -> Result<()> {
        w.begin_write()?;
        let (epoch, seq) = {
            let st = self.state.read();
            (st.epoch, st.seq)
        };
        let caught_up = w.changes_since(epoch, seq).and_then(|c| self.apply_changes(c));
        if caught_up.is_err() {
            w.rollback();
        }
        caught_up
    }

    /// One durable write: inside an exclusive transaction, catch up, let `build` compute the
    /// changes against the latest state (validation happens there), write, commit, then
    /// apply to the replica. Any error rolls everything back.
    fn write_op<'v, T>(&self, op: Op, build: impl FnOnce(&State) -> Result<(Vec<OwnedOp<'v>>, T)>) -> Result<T> {
        let t = Instant::now();
        self.check_open()?;
        let mut guard = self.writer.lock();
        let w = guard.as_mut().ok_or(Error::Closed)?;
        self.begin_caught_up(w.as_mut())?;
        let staged = (|| {
            let st = self.state.read();
            let (ops, out) = build(&st)?;
            if ops.is_empty() {
                return Ok((ops, 0, out));
            }
            let new_seq = st.seq + 1;
            let dim = st.dim.or_else(|| {
                ops.iter().find_map(|o| match o {
                    OwnedOp::Put(_, v) => Some(v.len()),
                    OwnedOp::Delete(_) => None,
                })
            });
            drop(st);
            let refs: Vec<WriteOp<'_>> = ops
                .iter()
                .map(|o| match o {
                    OwnedOp::Put(rec, vector) => WriteOp::Put { rec, vector },
                    OwnedOp::Delete(id) => WriteOp::Delete { id },
                })
                .collect();
            w.write(&refs, new_seq, dim)?;
            Ok((ops, new_seq, out))
        })();
        let (ops, new_seq, out) = match staged {
            Ok(v) => v,
            Err(e) => {
                w.rollback();
                return Err(e);
            }
        };
        if ops.is_empty() {
            w.rollback();
        } else {
            w.commit()?;
            let mut st = self.write_state();
            // A concurrent catch-up may already have applied this commit (and newer ones).
            if st.seq < new_seq {
                for o in ops {
                    match o {
                        OwnedOp::Put(rec, vector) => st.put(rec, &vector)?,
                        OwnedOp::Delete(id) => {
                            st.remove(&id);
                        }
                    }
                }
                st.seq = new_seq;
            }
        }
        drop(guard);
        self.kick_index_build();
        self.metrics.record(op, t);
        Ok(out)
    }

    /// Adds or replaces records (one transaction). `vectors` is row-major, `dim` per row.
    pub fn upsert(&self, records: Vec<Record>, vectors: &[f32], dim: usize, mode: WriteMode) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        validate_stored_vectors(vectors, dim)?;
        if vectors.len() != records.len() * dim {
            return Err(Error::InvalidInput(format!("{} records but {} vectors", records.len(), vectors.len() / dim)));
        }
        let mut seen = HashSet::with_capacity(records.len());
        for r in &records {
            if r.id.is_empty() {
                return Err(Error::InvalidInput("ids must be non-empty strings".into()));
            }
            if !seen.insert(r.id.clone()) {
                return Err(Error::InvalidInput(format!("id {:?} appears twice in one batch", &*r.id)));
            }
            metadata_scalars(&r.metadata_json)?;
            for x in [r.importance, r.created_at, r.last_accessed] {
                if !x.is_finite() {
                    return Err(Error::InvalidInput("importance and timestamps must be finite numbers".into()));
                }
            }
        }
        let op = if mode == WriteMode::Insert { Op::add } else { Op::upsert };
        self.write_op(op, |st| {
            st.check_dim(dim)?;
            check_int8_dim(st.precision, dim)?;
            if mode == WriteMode::Insert {
                if let Some(r) = records.iter().find(|r| st.contains(&r.id)) {
                    return Err(Error::DuplicateId(r.id.to_string()));
                }
            }
            let ops = records.into_iter().zip(vectors.chunks_exact(dim)).map(|(rec, v)| OwnedOp::Put(rec, Cow::Borrowed(v))).collect();
            Ok((ops, ()))
        })
    }

    /// Top-k by cosine for each of the `queries` (row-major, `dim` per row): exact scans,
    /// or the graph (see [`crate::hnsw`]) when the index mode says so. A repeated single
    /// query may be answered from the result cache; concurrent single queries that scan a
    /// large store run as one batch (see [`crate::coalesce`]).
    pub fn search(&self, queries: &[f32], dim: usize, k: usize, filter: &Filter, min_score: Option<f32>) -> Result<Vec<Vec<Hit>>> {
        if k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".into()));
        }
        if min_score.is_some_and(|m| !m.is_finite()) {
            return Err(Error::InvalidInput("min_score must be a finite number".into()));
        }
        validate_vectors(queries, dim)?;
        let unit = unit_queries(queries, dim);
        let queries = unit.as_slice();
        let nq = queries.len() / dim;
        let t = Instant::now();
        self.check_open()?;
        self.catch_up()?;
        let (key, int8, shared) = {
            let st = self.state.read();
            st.check_dim(dim)?;
            // The state read lock held here keeps `search_generation` current throughout.
            let key = (nq == 1 && self.cache.lock().capacity() > 0).then(|| SearchKey::new(queries, k, filter, min_score));
            if let Some(key) = &key {
                if let Some(hits) = self.cache.lock().get(key, st.search_generation) {
                    self.cache_counters.hits.fetch_add(1, Ordering::Relaxed);
                    self.metrics.record(Op::search, t);
                    return Ok(vec![hits]);
                }
                self.cache_counters.misses.fetch_add(1, Ordering::Relaxed);
            }
            let shared = nq == 1 && st.scan_is_worth_sharing(filter);
            let int8 = st.precision == Precision::Int8;
            if !int8 && !shared {
                let results = st.search(queries, nq, k, filter, min_score);
                if let Some(key) = key {
                    self.cache.lock().insert(key, st.search_generation, results[0].clone());
                }
                self.metrics.record(Op::search, t);
                return Ok(results);
            }
            (key, int8, shared)
        };
        if int8 {
            let (results, generation) = if shared {
                self.search_reranked_shared(queries, dim, k, filter, min_score)?
            } else {
                self.search_reranked(queries, nq, dim, k, filter, min_score)?
            };
            if let Some(key) = key {
                self.cache.lock().insert(key, generation, results[0].clone());
            }
            self.metrics.record(Op::search, t);
            return Ok(results);
        }
        // Waiting for a batch must not hold the state lock: a writer queued behind it would
        // block the batch's own read lock.
        let job = Job::new(queries.to_vec(), k, filter.clone(), min_score);
        let (hits, _) = self.coalescer.submit(job, |batch| self.run_search_batch(batch));
        self.metrics.record(Op::search, t);
        Ok(vec![hits])
    }

    /// The search of an int8 store: the replica's int8 search (scan or graph) finds
    /// `rerank_width(k)` candidates per query; their exact vectors, read from the durable
    /// layer at the replica's exact position, give their exact cosines (computed as the f32
    /// scan computes them), and the best k of those are the answer. When another connection
    /// committed in between, the replica catches up and the search runs again, so scores
    /// never mix two versions of a record. Returns the search generation it ran at.
    fn search_reranked(
        &self,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        filter: &Filter,
        min_score: Option<f32>,
    ) -> Result<(Vec<Vec<Hit>>, u64)> {
        let width = rerank_width(k);
        loop {
            let (candidates, epoch, seq, generation) = {
                let st = self.state.read();
                st.check_dim(dim)?;
                // No score floor here: the int8 score of a record may sit below min_score
                // while its exact one does not.
                (st.search(queries, nq, width, filter, None), st.epoch, st.seq, st.search_generation)
            };
            match self.rerank(&candidates, queries, dim, k, min_score, epoch, seq)? {
                Some(results) => return Ok((results, generation)),
                None => self.catch_up()?,
            }
        }
    }

    /// `search_reranked` of one query whose int8 scan is worth sharing: concurrent ones
    /// find their candidates in one coalesced scan (bit-identical to each one's own: the
    /// int8 sums are exact integers), and each caller re-ranks its own at the position the
    /// batch ran at. When a candidate was rewritten or deleted since (or the batch
    /// failed), the query is searched again on its own.
    fn search_reranked_shared(
        &self,
        query: &[f32],
        dim: usize,
        k: usize,
        filter: &Filter,
        min_score: Option<f32>,
    ) -> Result<(Vec<Vec<Hit>>, u64)> {
        // Waiting for a batch must not hold the state lock (see `search`).
        let job = Job::new(query.to_vec(), rerank_width(k), filter.clone(), None);
        let (candidates, _) = self.coalescer.submit(job.clone(), |batch| self.run_search_batch(batch));
        if let Some((epoch, seq, generation)) = job.position() {
            if let Some(results) = self.rerank(&[candidates], query, dim, k, min_score, epoch, seq)? {
                return Ok((results, generation));
            }
        }
        self.search_reranked(query, 1, dim, k, filter, min_score)
    }

    /// The exact answer from int8 `candidates` (per query of `queries`): their exact
    /// vectors read from the durable layer at (epoch, seq), their exact cosines (computed
    /// as the f32 scan computes them), `min_score`, the best k. None when a candidate was
    /// rewritten or deleted after (epoch, seq) (writes to other records do not matter: the
    /// answer is then the one at (epoch, seq), a position the search saw).
    #[allow(clippy::too_many_arguments)]
    fn rerank(
        &self,
        candidates: &[Vec<Hit>],
        queries: &[f32],
        dim: usize,
        k: usize,
        min_score: Option<f32>,
        epoch: u64,
        seq: u64,
    ) -> Result<Option<Vec<Vec<Hit>>>> {
        let mut ids: Vec<Arc<str>> = candidates.iter().flatten().map(|h| h.0.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let vectors = {
            let mut guard = self.reader.lock();
            exact_vectors(guard.as_mut().ok_or(Error::Closed)?.as_mut())?.vectors_at(epoch, seq, &ids)?
        };
        let Some(vectors) = vectors else {
            return Ok(None);
        };
        let mut exact: HashMap<&str, (&[f32], f32)> = HashMap::with_capacity(ids.len());
        for (id, v) in ids.iter().zip(&vectors) {
            let v = v.as_deref().ok_or_else(|| Error::Storage("a record of the replica is missing from the store file".into()))?;
            exact.insert(&**id, (v, inverse_norm(v)));
        }
        let results = candidates
            .iter()
            .zip(queries.chunks_exact(dim))
            .map(|(found, query)| {
                let q_inv = inverse_norm(query);
                let mut hits: Vec<Hit> = found
                    .iter()
                    .map(|(id, _)| {
                        let (v, v_inv) = exact[&**id];
                        (id.clone(), (simd::dot_f32(query, v) * v_inv * q_inv).clamp(-1.0, 1.0))
                    })
                    .filter(|h| min_score.is_none_or(|m| h.1 >= m))
                    .collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                hits.truncate(k);
                hits
            })
            .collect();
        Ok(Some(results))
    }

    /// Runs a batch of coalesced single-query searches under one read lock: one
    /// multi-query scan per group of jobs with the same k, filter and min_score.
    fn run_search_batch(&self, batch: &[Arc<Job>]) {
        let st = self.state.read();
        let caching = self.cache.lock().capacity() > 0;
        for jobs in group(batch) {
            let (k, filter, min_score) = (jobs[0].k, &jobs[0].filter, jobs[0].min_score);
            let dim = jobs[0].query.len();
            if st.dim != Some(dim) {
                // The store was reset (by another process) and refilled at another
                // dimension since these callers checked: nothing of theirs matches.
                jobs.iter().for_each(|j| j.answer(Vec::new()));
                continue;
            }
            let queries: Vec<f32> = jobs.iter().flat_map(|j| j.query.iter().copied()).collect();
            let results = st.search_each(&queries, jobs.len(), k, filter, min_score);
            for (job, hits) in jobs.iter().zip(results) {
                job.set_position(st.epoch, st.seq, st.search_generation);
                // An int8 job's answer is its candidates, which its caller re-ranks and caches.
                if caching && st.precision != Precision::Int8 {
                    self.cache.lock().insert(SearchKey::new(&job.query, k, filter, min_score), st.search_generation, hits.clone());
                }
                job.answer(hits);
            }
        }
        if batch.len() > 1 {
            self.coalesced_searches.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.coalesced_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bounds the result cache to `entries` single-query searches (0 turns it off).
    pub fn set_cache_capacity(&self, entries: usize) {
        self.cache.lock().set_capacity(entries);
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
            if precision == Precision::F32 {
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

    /// Changes some fields of one record; false when the id does not exist.
    pub fn update(&self, id: &str, patch: Patch) -> Result<bool> {
        if let Some(v) = &patch.vector {
            validate_stored_vectors(v, v.len())?;
        }
        if let Some(m) = &patch.metadata_json {
            metadata_scalars(m)?;
        }
        self.write_op(Op::update, |st| {
            let Some((old, _)) = st.get(id) else { return Ok((Vec::new(), false)) };
            if let Some(v) = &patch.vector {
                st.check_dim(v.len())?;
                check_int8_dim(st.precision, v.len())?;
            }
            let mut rec = old.clone();
            let p = patch;
            if let Some(x) = p.content {
                rec.content = x
            }
            if let Some(x) = p.scope {
                rec.scope = x
            }
            if let Some(x) = p.categories {
                rec.categories = x
            }
            if let Some(x) = p.metadata_json {
                rec.metadata_json = x
            }
            if let Some(x) = p.importance {
                rec.importance = x
            }
            if let Some(x) = p.created_at {
                rec.created_at = x
            }
            if let Some(x) = p.last_accessed {
                rec.last_accessed = x
            }
            if let Some(x) = p.source {
                rec.source = x
            }
            if let Some(x) = p.private {
                rec.private = x
            }
            // No new vector: an empty one keeps the stored vector (nothing re-written).
            let vector = p.vector.unwrap_or_default();
            Ok((vec![OwnedOp::Put(rec, Cow::Owned(vector))], true))
        })
    }

    /// Sets last_accessed of the given records; returns how many existed.
    pub fn touch(&self, ids: &[String], at: f64) -> Result<usize> {
        if !at.is_finite() {
            return Err(Error::InvalidInput("the time must be a finite number".into()));
        }
        self.write_op(Op::touch, |st| {
            let mut seen = HashSet::new();
            let ops: Vec<OwnedOp> = ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| st.get(id))
                .map(|(r, _)| {
                    let mut rec = r.clone();
                    rec.last_accessed = at;
                    // An empty vector keeps the stored one: a touch rewrites no vector.
                    OwnedOp::Put(rec, Cow::Borrowed(&[][..]))
                })
                .collect();
            let n = ops.len();
            Ok((ops, n))
        })
    }

    /// Deletes the records matching the filter (which must restrict something); returns the count.
    pub fn delete(&self, filter: &Filter) -> Result<usize> {
        if filter.is_empty() {
            return Err(Error::InvalidFilter("delete needs at least one criterion; use reset() to delete everything".into()));
        }
        let delete = || {
            self.write_op(Op::delete, |st| {
                let slots = st.select(filter);
                let mut ops: Vec<OwnedOp> = st.ids_of(&slots).into_iter().map(OwnedOp::Delete).collect();
                // Damaged records named by id can be deleted too (that is how a user clears
                // them), when the filter asks for nothing else that their fields would decide.
                if let (Some(ids), true) = (&filter.ids, filter.only_ids()) {
                    let named: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
                    ops.extend(named.into_iter().filter(|id| st.damage_of(id).is_some()).map(|id| OwnedOp::Delete(Arc::from(id))));
                }
                let n = ops.len();
                Ok((ops, n))
            })
        };
        match delete() {
            // A full disk: the reserve beside the store gives the delete the room its WAL
            // frames need, so the API can still free space (see `make_reserve`).
            Err(e) if is_disk_full(&e) && self.path.as_deref().is_some_and(release_reserve) => delete(),
            result => result,
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

    /// Deletes every record and frees the dimension (one transaction, seen by other processes).
    pub fn reset(&self) -> Result<()> {
        let t = Instant::now();
        self.check_open()?;
        let mut guard = self.writer.lock();
        let w = guard.as_mut().ok_or(Error::Closed)?;
        self.begin_caught_up(w.as_mut())?;
        let staged = {
            let st = self.state.read();
            let (epoch, seq) = (st.epoch + 1, st.seq + 1);
            drop(st);
            w.reset(epoch, seq).map(|()| (epoch, seq))
        };
        let (epoch, seq) = match staged {
            Ok(v) => v,
            Err(e) => {
                w.rollback();
                return Err(e);
            }
        };
        w.commit()?;
        let mut st = self.write_state();
        if st.epoch < epoch || st.seq < seq {
            st.clear();
            st.epoch = epoch;
            st.seq = seq;
        }
        drop(st);
        drop(guard);
        self.metrics.record(Op::reset, t);
        Ok(())
    }

    /// Sets the index mode and search width; a graph the new mode wants is built in the
    /// background (searches stay exact scans until it is published).
    pub fn set_index(&self, config: IndexConfig) -> Result<()> {
        self.check_open()?;
        if config.ef_search == 0 || config.ef_search > MAX_EF {
            return Err(Error::InvalidInput(format!("ef_search must be between 1 and {MAX_EF}")));
        }
        if !(2..=MAX_M).contains(&config.params.m) || config.params.ef_construction == 0 || config.params.ef_construction > MAX_EF {
            return Err(Error::InvalidInput(format!("m must be between 2 and {MAX_M}, ef_construction between 1 and {MAX_EF}")));
        }
        self.write_state().set_index(config);
        self.kick_index_build();
        Ok(())
    }

    /// Starts the background graph builder when a build is due and none runs. Cheap when
    /// nothing is due (one read lock).
    fn kick_index_build(&self) {
        let b = &self.builder;
        if b.stop.load(Ordering::Acquire) || b.running.load(Ordering::Acquire) {
            return;
        }
        if !self.state.read().graph_build_due(b.flush_waiters.load(Ordering::Acquire) > 0) {
            return;
        }
        if b.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (state, builder) = (Arc::clone(&self.state), Arc::clone(&self.builder));
        let spawned = std::thread::Builder::new().name("ferromem-index".into()).spawn(move || build_graphs(&state, &builder));
        if spawned.is_err() {
            // No thread to be had: searches stay exact scans; the next write tries again.
            self.builder.running.store(false, Ordering::Release);
        }
    }

    /// Waits until every record is covered by the graph (when the index mode wants one);
    /// false when `timeout` passed first. Changes made meanwhile are linked too.
    pub fn wait_for_index(&self, timeout: Option<Duration>) -> Result<bool> {
        self.check_open()?;
        self.catch_up()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        self.builder.flush_waiters.fetch_add(1, Ordering::AcqRel);
        let done = loop {
            self.kick_index_build();
            let due = self.state.read().graph_build_due(true);
            if !due && !self.builder.running.load(Ordering::Acquire) {
                break true;
            }
            if self.is_closed() || deadline.is_some_and(|d| Instant::now() >= d) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.builder.flush_waiters.fetch_sub(1, Ordering::AcqRel);
        self.check_open()?;
        Ok(done)
    }

    /// Closes the durable layer; every later call fails with Closed. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.builder.stop.store(true, Ordering::Release);
        // Wait for an in-flight write to finish, then drop the connections.
        let writer = self.writer.lock().take();
        self.reader.lock().take();
        if self.read_only {
            return; // never a write: no graph, no image
        }
        if let Some(mut writer) = writer {
            self.save_graph();
            self.save_image(writer.as_mut());
        }
    }

    /// With `fast_open`, writes the store image when the replica changed since the image
    /// beside the store was written, then records its token in the store (see
    /// [`crate::image`]). Without, leaves any image alone: another process may be using
    /// the store with `fast_open`, and an image that no longer fits is never used. A
    /// failure costs the next open its speed, nothing else.
    fn save_image(&self, writer: &mut dyn Storage) {
        let (Some(path), Some(images)) = (&self.path, writer.as_images()) else { return };
        if !self.fast_open {
            return;
        }
        let target = image_file(path);
        let st = self.state.read();
        if st.is_empty() {
            let _ = std::fs::remove_file(&target);
            return;
        }
        let at = (st.epoch, st.seq);
        let mut image_at = self.image_at.lock();
        if *image_at == Some(at) && target.exists() {
            return;
        }
        let token = image::new_token();
        if image::write(&st, &target, &token).is_ok() && images.set_image_token(&token).is_ok() {
            *image_at = Some(at);
        }
    }

    /// Writes the published graph beside the store file, so the next open needs no
    /// rebuild. The file is only a cache: it is written whole then renamed over the old
    /// one, read back only when it matches the store's exact position, and a failure to
    /// write it costs a rebuild, nothing else.
    fn save_graph(&self) {
        let Some(path) = &self.path else { return };
        let Some(bytes) = self.state.read().graph_file_bytes() else {
            let _ = std::fs::remove_file(graph_file(path));
            return;
        };
        let target = graph_file(path);
        let tmp = target.with_extension(format!("hnsw.tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &target)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> EngineStats {
        // The writer mutex first, and released before the state lock: a writer holds the
        // mutex while it waits for the state lock, so the other order could deadlock.
        let disk_bytes = self.writer.lock().as_ref().and_then(|w| w.as_local_file()).map_or(0, |f| f.disk_bytes());
        let st = self.state.read();
        EngineStats {
            records: st.len(),
            dim: st.dim,
            memory_bytes: st.memory_bytes(),
            precision: st.precision,
            disk_bytes,
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

    pub fn cache_stats(&self) -> CacheStats {
        let c = self.cache.lock();
        CacheStats {
            capacity: c.capacity(),
            entries: c.len(),
            hits: self.cache_counters.hits.load(Ordering::Relaxed),
            misses: self.cache_counters.misses.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stops the builder (it holds its own reference to the state) and saves the graph.
        self.close();
    }
}

/// `<path>.reserve`: disk space held for deletes on a full disk (see `make_reserve`).
pub fn reserve_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reserve");
    PathBuf::from(name)
}

/// The reserve's size: 16 pages of 32 KiB. A delete of a few records appends about five
/// pages to the WAL (a table page, two index pages, the header), so this is room for a
/// few deletes once it is released.
pub const RESERVE_BYTES: usize = 512 * 1024;

/// Creates the reserve beside a store, when it is missing and the disk has the room: a
/// file of zeros (written, not sparse, so its blocks are really held). On a full disk a
/// save fails with a typed error and writes nothing; so would a delete, leaving the API
/// no way to free space, were it not for this: a delete that hits a full disk releases the
/// reserve and runs again. The next open makes a new reserve when there is room. Deleting
/// the file by hand is always safe. Best effort: a failure leaves the store without one.
fn make_reserve(path: &Path) {
    let target = reserve_file(path);
    if target.exists() {
        return;
    }
    let tmp = target.with_extension(format!("reserve.tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, vec![0u8; RESERVE_BYTES]).and_then(|()| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Frees the reserve; true when there was one to free.
fn release_reserve(path: &Path) -> bool {
    std::fs::remove_file(reserve_file(path)).is_ok()
}

/// Whether a storage error is SQLite's SQLITE_FULL. `Error::Storage` keeps only SQLite's
/// message, and "database or disk is full" is SQLite's fixed text for that code.
fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Storage(msg) if msg.contains("database or disk is full"))
}

/// The graph file of the store at `path`: `<path>.hnsw`.
pub fn graph_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".hnsw");
    PathBuf::from(name)
}

/// The background graph builder: while a build is due, copy the published graph (or start
/// one), link the pending records into the copy in batches under the state *read* lock
/// (searches go on; a writer waits at most one batch), then publish the copy under a brief
/// write lock. A reset or reload during a build voids it and the loop starts over.
fn build_graphs(state: &RwLock<State>, builder: &IndexBuilder) {
    let mut scratch = crate::hnsw::GraphQuery::default();
    loop {
        let flush = builder.flush_waiters.load(Ordering::Acquire) > 0;
        let build = {
            let st = state.read();
            if builder.stop.load(Ordering::Acquire) || !st.graph_build_due(flush) {
                None
            } else {
                st.begin_graph_build()
            }
        };
        let Some(mut build) = build else {
            builder.running.store(false, Ordering::Release);
            // A write that found the builder still running did not start another: look again.
            let due = state.read().graph_build_due(builder.flush_waiters.load(Ordering::Acquire) > 0);
            if due && !builder.stop.load(Ordering::Acquire) && !builder.running.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        };
        let mut next = 0;
        let mut void = false;
        while next < build.todo.len() {
            if builder.stop.load(Ordering::Acquire) {
                builder.running.store(false, Ordering::Release);
                return;
            }
            let st = state.read();
            if !st.graph_build_is_current(&build) {
                void = true;
                break;
            }
            let deadline = Instant::now() + BUILD_BATCH;
            let give_way = || Instant::now() >= deadline || builder.writers_waiting.load(Ordering::Acquire) > 0;
            next = st.extend_graph_build(&mut build, next, &give_way, &mut scratch);
            drop(st);
            std::thread::yield_now();
        }
        if !void && state.write().publish_graph(build) {
            builder.builds.fetch_add(1, Ordering::Relaxed);
        }
    }
}
