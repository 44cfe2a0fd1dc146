//! The graph builder: a background thread that links changed records into a copy of the
//! graph under the state read lock and publishes it; the index settings; the graph file.

use super::Engine;
use crate::state::{IndexConfig, State};
use crate::{Error, Result};
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The background graph builder's shared flags (see [`Engine::kick_index_build`]).
#[derive(Default)]
pub(super) struct IndexBuilder {
    /// A builder thread is running (at most one per engine).
    pub(super) running: AtomicBool,
    /// Set by `close`: the builder stops between batches.
    pub(super) stop: AtomicBool,
    /// Callers of `wait_for_index`: while any waits, every pending change is linked.
    pub(super) flush_waiters: AtomicUsize,
    pub(super) builds: AtomicU64,
    /// Threads waiting for the state's write lock: the builder gives its read lock up
    /// after the round of links in progress instead of at the end of its time slice.
    pub(super) writers_waiting: AtomicUsize,
}

/// Bounds on the graph parameters: beyond them a graph costs more than an exact scan.
pub(super) const MAX_M: usize = 128;
pub(super) const MAX_EF: usize = 100_000;

/// How long the builder holds the state read lock per slice when no writer waits for the
/// write lock (a waiting writer ends the slice after the round of links in progress).
pub(super) const BUILD_BATCH: Duration = Duration::from_millis(4);

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
pub(super) fn build_graphs(state: &RwLock<State>, builder: &IndexBuilder) {
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

impl Engine {
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
    pub(super) fn kick_index_build(&self) {
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

    /// Writes the published graph beside the store file, so the next open needs no
    /// rebuild. The file is only a cache: it is written whole then renamed over the old
    /// one, read back only when it matches the store's exact position, and a failure to
    /// write it costs a rebuild, nothing else.
    pub(super) fn save_graph(&self) {
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
}
