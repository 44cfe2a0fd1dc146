//! The graph's lifecycle over the replica: when one is wanted, building it off the write
//! path (a copy extended under the read lock, then published), saving and loading it. The
//! index itself is behind [`AnnIndex`].

use super::{IndexConfig, IndexMode, IndexStats, State, BUILD_PARALLEL_BATCH, BUILD_PARALLEL_MIN_NODES, PENDING_REBUILD};
use crate::ann::{load_index, new_index, AnnIndex};
use crate::hnsw::{GraphQuery, GraphUnfit, SavedAt};
use std::sync::Arc;

/// A graph being built off the write path (see `crate::engine`): the slots still to link,
/// the index generation it belongs to (a reset or reload makes it void), and whether it is
/// a new graph (not an extension of the published one: the recall guard judges it anew).
pub struct GraphBuild {
    pub graph: Box<dyn AnnIndex>,
    pub todo: Vec<u32>,
    pub generation: u64,
    pub fresh: bool,
}

impl State {
    /// Whether the index mode asks for the graph at the store's current size.
    pub fn graph_wanted(&self) -> bool {
        match self.index.mode {
            IndexMode::Exact => false,
            IndexMode::Hnsw => true,
            IndexMode::Auto => (self.live.len() as usize).saturating_mul(self.dim.unwrap_or(0)) >= self.index.auto_min_values,
        }
    }

    pub(super) fn usable_graph(&self) -> Option<&dyn AnnIndex> {
        self.ann.as_deref().filter(|g| self.graph_wanted() && Some(g.dim()) == self.dim)
    }

    /// The slot's version while it holds a record; None for a free slot.
    #[inline]
    pub(super) fn current_version(&self, slot: u32) -> Option<u32> {
        match self.inv_norm.get(slot as usize) {
            Some(&inv) if inv != 0.0 => Some(self.slot_version[slot as usize]),
            _ => None,
        }
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
        let (graph, todo, fresh) = match reuse {
            Some(g) => (g.clone_box(), self.unindexed.iter().collect(), false),
            None => (new_index(dim, self.index.params), self.live.iter().collect(), true),
        };
        Some(GraphBuild { graph, todo, generation: self.index_generation, fresh })
    }

    /// Links the slots `build.todo[from..]` into the build's graph, a round at a time,
    /// until `stop()` says so after a round; returns where it stopped. Slots freed or
    /// already current are skipped.
    pub fn extend_graph_build(&self, build: &mut GraphBuild, from: usize, stop: &dyn Fn() -> bool, scratch: &mut GraphQuery) -> usize {
        let current = |s: u32| self.current_version(s);
        let rows = self.rows.graph_rows();
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
            build.graph.link(&batch, !sequential, &rows, &current, scratch);
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
        if build.fresh {
            // Another graph: what the guard measured of the old one does not hold for it.
            self.guard.reset();
        }
        let covered: Vec<u32> =
            self.unindexed.iter().filter(|&s| g.version(s).is_some() && g.version(s) == self.current_version(s)).collect();
        for s in covered {
            self.unindexed.remove(s);
        }
        self.ann = Some(Arc::from(g));
        // Approximate results may differ from the previous graph's: cached ones are void.
        self.search_generation += 1;
        true
    }

    /// The published graph as a file's bytes (see `Hnsw::to_bytes`), or None without one.
    pub fn graph_file_bytes(&self) -> Option<Vec<u8>> {
        let g = self.ann.as_deref()?;
        let current = |s: u32| self.current_version(s);
        Some(g.to_bytes(SavedAt { epoch: self.epoch, seq: self.seq }, &current, &|s| &**self.id_of(s)))
    }

    /// Publishes a graph read from a file written at this replica's exact position: Ok(true)
    /// when published, Ok(false) (and nothing changes) when the file does not fit it, Err
    /// with what is wrong when the file is damaged (nothing changes either).
    pub fn install_graph_file(&mut self, bytes: &[u8]) -> std::result::Result<bool, String> {
        let Some(dim) = self.dim else { return Ok(false) };
        let at = SavedAt { epoch: self.epoch, seq: self.seq };
        let graph = load_index(bytes, at, dim, self.index.params, |id| {
            let slot = *self.ids.get(id)?;
            Some((slot, self.current_version(slot)?))
        });
        let graph = match graph {
            Ok(g) => g,
            Err(GraphUnfit::Stale) => return Ok(false),
            Err(GraphUnfit::Damaged(why)) => return Err(why),
        };
        let build = GraphBuild { graph, todo: Vec::new(), generation: self.index_generation, fresh: true };
        Ok(self.publish_graph(build))
    }

    /// Changes the index mode or search width (results may change: the cache is voided).
    pub fn set_index(&mut self, config: IndexConfig) {
        if config.params != self.index.params {
            self.ann = None;
            self.unindexed = self.live.clone();
            self.guard.reset();
        }
        // Another ladder of widths: the guard's evidence is void.
        self.guard.configure(config.ef_search);
        self.index = config;
        self.search_generation += 1;
    }

    /// Whether the recall guard should judge the published graph with probe queries now
    /// (it is in use and the guard has no evidence for it: see [`crate::guard`]).
    pub fn guard_bootstrap_due(&self) -> bool {
        self.usable_graph().is_some() && self.guard.needs_bootstrap()
    }

    /// (graph nodes, graph memory), the records scanned exactly beside the graph, and the
    /// recall guard's report.
    pub fn index_stats(&self) -> IndexStats {
        let serving_ef = self.usable_graph().and(self.graph_width());
        IndexStats {
            mode: self.index.mode,
            ef_search: self.index.ef_search,
            params: self.index.params,
            auto_min_values: self.index.auto_min_values,
            active: serving_ef.is_some(),
            serving_ef,
            recall: self.guard.report(),
            graph_nodes: self.ann.as_ref().map_or(0, |g| g.nodes()),
            pending: if self.ann.is_some() { self.unindexed.len() as usize } else { self.len() },
            graph_bytes: self.ann.as_ref().map_or(0, |g| g.memory_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

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
            let rec = Record::bare(format!("r{i}"), "/");
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
