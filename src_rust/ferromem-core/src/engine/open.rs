//! Opening a store (its durable layer, the image or the rows, the saved graph), catching up
//! with what other processes committed, and closing it (the image and the graph it leaves).

use super::write::make_reserve;
use super::{check_precision_dim, graph_file, Engine, IndexBuilder, OpenOptions, DEFAULT_CACHE_ENTRIES};
use crate::cache::{CacheCounters, ResultCache};
use crate::coalesce::Coalescer;
use crate::image::{self, image_file};
use crate::metrics::{Metrics, Op};
use crate::planner::{Planner, Policy};
use crate::scorer::CpuScorer;
use crate::state::{Precision, State};
use crate::storage::{self, Access, Changes, Durability, Location, Storage, StorageOptions};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The checks of `dim` and precision made before a store is opened (or created).
fn check_open_args(dim: Option<usize>, precision: Precision) -> Result<()> {
    if dim == Some(0) {
        return Err(Error::InvalidInput("dim must be at least 1".into()));
    }
    if let Some(d) = dim {
        check_precision_dim(precision, d)?;
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
        let reader = storage::open(location, StorageOptions { point_reads: !opts.precision.keeps_exact_vectors(), ..options })?;
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
        if !precision.keeps_exact_vectors() && reader.as_vectors_at().is_none() {
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
            scorer: RwLock::new(Arc::new(CpuScorer)),
            planner: Planner::default(),
            device: RwLock::new(None),
            policy: AtomicU8::new(Policy::Auto as u8),
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

    /// Applies what the durable layer says changed. Safe against a concurrent writer of this
    /// process: only changes newer than the replica's sequence are applied.
    pub(super) fn apply_changes(&self, changes: Changes) -> Result<()> {
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
    pub(super) fn catch_up(&self) -> Result<()> {
        let mut guard = self.reader.lock();
        let reader = guard.as_mut().ok_or(Error::Closed)?;
        let stale = self.stale.swap(false, Ordering::AcqRel);
        let (epoch, seq) = {
            let st = self.state.read();
            (st.epoch, st.seq)
        };
        match reader.maybe_changed(epoch, seq) {
            Ok(false) if !stale => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                self.stale.fetch_or(stale, Ordering::AcqRel);
                return Err(e);
            }
        }
        let t = Instant::now();
        let result = reader.changes_since(epoch, seq).and_then(|c| self.apply_changes(c));
        if result.is_err() {
            self.stale.store(true, Ordering::Release);
        }
        drop(guard);
        self.kick_index_build();
        self.metrics.record(Op::catch_up, t);
        result
    }

    /// Closes the durable layer; every later call fails with Closed. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.builder.stop.store(true, Ordering::Release);
        self.state.read().guard().stop_auditor();
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
    pub(super) fn save_image(&self, writer: &mut dyn Storage) {
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
}
