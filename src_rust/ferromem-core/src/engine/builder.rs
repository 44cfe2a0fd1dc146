//! The graph builder: a background thread that links changed records into a copy of the
//! graph under the state read lock and publishes it, then has the recall guard judge a
//! graph it has no evidence for (the bootstrap, see [`crate::guard`]); the index settings;
//! the graph file.

use super::Engine;
use crate::guard::{ensure_auditor, BOOTSTRAP_EXACT_TIMED, BOOTSTRAP_K, BOOTSTRAP_PROBES};
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
/// write lock. A reset or reload during a build voids it and the loop starts over. With no
/// build due, a graph in use that the recall guard has no evidence for is bootstrapped
/// (before `running` clears, so `wait_for_index` waits for the verdict too).
pub(super) fn build_graphs(state: &Arc<RwLock<State>>, builder: &IndexBuilder) {
    let mut scratch = crate::hnsw::GraphQuery::default();
    loop {
        let flush = builder.flush_waiters.load(Ordering::Acquire) > 0;
        let (build, bootstrap) = {
            let st = state.read();
            if builder.stop.load(Ordering::Acquire) {
                (None, false)
            } else if st.graph_build_due(flush) {
                (st.begin_graph_build(), false)
            } else {
                (None, st.guard_bootstrap_due())
            }
        };
        if bootstrap {
            bootstrap_guard(state, builder);
            continue;
        }
        let Some(mut build) = build else {
            builder.running.store(false, Ordering::Release);
            // A write that found the builder still running did not start another: look again.
            let due = work_due(&state.read(), builder);
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

/// Whether the builder has work: a graph build, or a recall guard bootstrap.
fn work_due(st: &State, builder: &IndexBuilder) -> bool {
    st.graph_build_due(builder.flush_waiters.load(Ordering::Acquire) > 0) || st.guard_bootstrap_due()
}

/// The recall guard's bootstrap: `BOOTSTRAP_PROBES` stored vectors (k = `BOOTSTRAP_K`, the
/// candidates' width on an int8 store) audited through the ladder and one batched exact
/// scan, so the guard has a verdict before live samples arrive; then the auditor starts.
/// Each audit runs under one read lock; a writer waiting for the write lock ends that lock
/// after the probe in progress, and the rest are audited under the next (the bootstrap
/// never mixes two store versions in one audit). A reset of the guard meanwhile voids it.
fn bootstrap_guard(state: &Arc<RwLock<State>>, builder: &IndexBuilder) {
    let t = Instant::now();
    let (guard, epoch, ladder, probes, k, dim) = {
        let st = state.read();
        let guard = Arc::clone(st.guard());
        let k = if st.precision.reranked() { super::search::rerank_width(BOOTSTRAP_K) } else { BOOTSTRAP_K };
        (Arc::clone(&guard), guard.epoch(), guard.ladder(), st.guard_probes(BOOTSTRAP_PROBES), k, st.dim.unwrap_or(1))
    };
    let give_way = || builder.writers_waiting.load(Ordering::Acquire) > 0 || builder.stop.load(Ordering::Acquire);
    let n = probes.len() / dim;
    // Probes per lock: all of them in one batched scan while no writer interrupts; after
    // an interruption, twice what the last lock got through (at least 4), so that a
    // stream of writes does not make every lock scan for probes it cannot audit.
    let mut chunk = n;
    let mut done = 0;
    while done < n {
        if builder.stop.load(Ordering::Acquire) || guard.epoch() != epoch {
            return;
        }
        let timed = BOOTSTRAP_EXACT_TIMED.saturating_sub(done);
        let end = (done + chunk).min(n);
        let audits = state.read().audit_probes(&probes[done * dim..end * dim], k, &ladder, timed, &give_way);
        if audits.is_empty() {
            break; // no graph in use any more, or the dimension changed: nothing to judge
        }
        if done + audits.len() < end {
            chunk = (2 * audits.len()).max(4);
        }
        done += audits.len();
        guard.record(epoch, &audits);
        std::thread::yield_now();
    }
    guard.bootstrapped(epoch, t.elapsed());
    ensure_auditor(state, &guard);
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

    /// Sets the recall target of the guard (0 < target <= 1): under `IndexMode::Auto` the
    /// graph serves only at a width measured to reach it (see [`crate::guard`]).
    pub fn set_recall_target(&self, target: f64) -> Result<()> {
        self.check_open()?;
        crate::guard::check_target(target).map_err(Error::InvalidInput)?;
        self.state.read().guard().set_target(target);
        Ok(())
    }

    /// Starts the background graph builder when a build is due and none runs. Cheap when
    /// nothing is due (one read lock).
    pub(super) fn kick_index_build(&self) {
        let b = &self.builder;
        if b.stop.load(Ordering::Acquire) || b.running.load(Ordering::Acquire) {
            return;
        }
        if !work_due(&self.state.read(), b) {
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
