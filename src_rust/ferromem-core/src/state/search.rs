//! Search planning: the graph when the index mode, the filter and the recall guard call
//! for it, else an exact scan of the filter's candidates run by the engine's [`Scorer`];
//! and the recall guard's audits (the graph at each width of its ladder against the exact
//! scan, under one read lock: see [`crate::guard`]).

use super::{Hit, IndexConfig, IndexMode, State, FILTER_EXACT_VALUES, SELECTIVE_RATIO, SHARED_SCAN_MIN_VALUES};
use crate::ann::AnnIndex;
use crate::filter::Filter;
use crate::guard::{recall_at_k, Audit};
use crate::scorer::{CpuScorer, Plan, RowsView, Scorer};
use crate::state::inverse_norm;
use crate::vectors::SlotHits;
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::time::Instant;

/// A filter as the graph search applies it: the candidate bitmap from the indexes (None:
/// every record), the unindexed `older_than` bound, and how many records match at most.
struct GraphPlan {
    allowed: Option<RoaringBitmap>,
    older_than: Option<f64>,
    matching: u64,
}

impl GraphPlan {
    /// Whether the record in `slot` passes the filter.
    fn accepts(&self, st: &State, slot: u32) -> bool {
        self.allowed.as_ref().is_none_or(|b| b.contains(slot))
            && self.older_than.is_none_or(|t| st.slots[slot as usize].as_ref().is_some_and(|x| x.rec.created_at < t))
    }
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

impl State {
    /// Top-k by cosine for each query of `queries` (nq unit rows of `dim`), over the
    /// records matching `f` (selected from the indexes first), with scores >= `min_score`:
    /// the graph when the index mode says so, else `scorer`'s scan (see
    /// [`crate::vectors`] for what each precision's scores are).
    pub fn search(&self, scorer: &dyn Scorer, queries: &[f32], nq: usize, k: usize, f: &Filter, min_score: Option<f32>) -> Vec<Vec<Hit>> {
        self.search_with(scorer, queries, nq, k, f, min_score, false)
    }

    /// As `search`, but every query's result is bit-identical to what searching it alone
    /// returns (coalesced single queries, see [`crate::coalesce`]): batches share each
    /// block of rows while it is in cache, but score it with the single-query kernels
    /// instead of the multi-query one (whose different summation order may move the last
    /// bit of a score).
    pub fn search_each(
        &self,
        scorer: &dyn Scorer,
        queries: &[f32],
        nq: usize,
        k: usize,
        f: &Filter,
        min_score: Option<f32>,
    ) -> Vec<Vec<Hit>> {
        self.search_with(scorer, queries, nq, k, f, min_score, true)
    }

    /// The graph when the mode and the filter call for it (each query searched on its
    /// own, so `each` holds there by construction), else the exact scan.
    #[allow(clippy::too_many_arguments)]
    fn search_with(
        &self,
        scorer: &dyn Scorer,
        queries: &[f32],
        nq: usize,
        k: usize,
        f: &Filter,
        min_score: Option<f32>,
        each: bool,
    ) -> Vec<Vec<Hit>> {
        let (dim, allowed) = match self.prepare_search(nq, k, f) {
            Ok(prepared) => prepared,
            Err(nothing) => return nothing,
        };
        let allowed = match self.usable_graph() {
            Some(graph) => match self.graph_plan(f, dim, allowed) {
                Ok(plan) => {
                    // A search the graph may serve: the recall guard may audit it.
                    self.guard.offer(&queries[..dim], k, f);
                    match self.graph_width() {
                        Some(ef) => return self.search_graph(scorer, graph, &plan, queries, nq, dim, k, f, min_score, ef),
                        None => plan.allowed,
                    }
                }
                Err(allowed) => allowed,
            },
            None => allowed,
        };
        self.search_exact(scorer, queries, nq, dim, k, f, allowed.as_ref(), min_score, each)
    }

    /// The exact search of `search`, the graph skipped (the planner found an exact scan on
    /// another device cheaper than the graph the recall guard allows).
    #[allow(clippy::too_many_arguments)]
    pub fn search_exact_only(
        &self,
        scorer: &dyn Scorer,
        queries: &[f32],
        nq: usize,
        k: usize,
        f: &Filter,
        min_score: Option<f32>,
        each: bool,
    ) -> Vec<Vec<Hit>> {
        match self.prepare_search(nq, k, f) {
            Ok((dim, allowed)) => self.search_exact(scorer, queries, nq, dim, k, f, allowed.as_ref(), min_score, each),
            Err(nothing) => nothing,
        }
    }

    /// The dimension and the filter's indexed candidates of a search, or its (empty)
    /// answer when there is nothing to search (no vector yet, no record, k = 0).
    #[allow(clippy::type_complexity)]
    fn prepare_search(&self, nq: usize, k: usize, f: &Filter) -> std::result::Result<(usize, Option<RoaringBitmap>), Vec<Vec<Hit>>> {
        match self.dim {
            Some(dim) if !self.is_empty() && k > 0 => Ok((dim, if f.is_empty() { None } else { self.candidates(f) })),
            _ => Err(vec![Vec::new(); nq]),
        }
    }

    /// How many records the indexed part of the filter leaves (every live one without a
    /// filter): the rows an exact scan of it scores at most.
    pub fn filter_rows(&self, f: &Filter) -> usize {
        (if f.is_empty() { None } else { self.candidates(f) }).as_ref().map_or(self.live.len(), |b| b.len()) as usize
    }

    /// Under `IndexMode::Auto`, the width the graph serves this filter at (None: an exact
    /// scan answers it), and the recall guard's measured time of one graph search at that
    /// width (ms). None under the other modes (`Hnsw` forces the graph; `Exact` never).
    pub fn auto_graph_serving(&self, f: &Filter) -> Option<(usize, Option<f64>)> {
        if self.index.mode != IndexMode::Auto || self.exact_rows(f).is_some() {
            return None;
        }
        let ef = self.graph_width()?;
        Some((ef, self.guard.graph_ms_at(ef)))
    }

    /// The width a graph search runs at now: `ef_search` under `IndexMode::Hnsw`, the
    /// recall guard's verdict under `Auto` (None: it does not trust the graph, the exact
    /// scan answers).
    pub(super) fn graph_width(&self) -> Option<usize> {
        match self.index.mode {
            IndexMode::Hnsw => Some(self.index.ef_search),
            IndexMode::Auto => self.guard.route(),
            IndexMode::Exact => None,
        }
    }

    /// The exact search: the filter's candidates (`allowed`: its indexed part, computed by
    /// the caller), scored by `scorer`; `each`: score every query as if alone (see
    /// `search_each`).
    #[allow(clippy::too_many_arguments)]
    fn search_exact(
        &self,
        scorer: &dyn Scorer,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        f: &Filter,
        allowed: Option<&RoaringBitmap>,
        min_score: Option<f32>,
        each: bool,
    ) -> Vec<Vec<Hit>> {
        self.scan(scorer, queries, nq, dim, k, f, allowed, min_score, each).into_iter().map(|hits| self.finish(hits)).collect()
    }

    /// `search_exact`'s scan: per query its best k (score, slot), unordered.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        scorer: &dyn Scorer,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        f: &Filter,
        allowed: Option<&RoaringBitmap>,
        min_score: Option<f32>,
        each: bool,
    ) -> SlotHits {
        let candidates = if f.is_empty() { None } else { Some(self.select_from(f, allowed)) };
        let plan = Plan { queries, nq, dim, k, candidates: candidates.as_deref(), min_score, each };
        scorer.top_k(&plan, &RowsView { state: self })
    }

    /// Score descending, ties by id ascending: the order of every search result.
    fn sort_hits(&self, hits: &mut [(f32, u32)]) {
        RowsView { state: self }.sort_hits(hits)
    }

    fn finish(&self, mut hits: Vec<(f32, u32)>) -> Vec<Hit> {
        self.sort_hits(&mut hits);
        hits.into_iter().map(|(s, slot)| (self.id_of(slot).clone(), s)).collect()
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

    /// Graph search at width `ef`: per query, up to ef nodes accepted by the filter are
    /// found in the graph and re-scored as the exact scan scores them, the records changed
    /// since the graph was built are scored the same way, and the best k of both are
    /// returned. A query for which the graph finds fewer than k of the matching records (a
    /// filter that splits the graph) is answered by the exact scan instead.
    #[allow(clippy::too_many_arguments)]
    fn search_graph(
        &self,
        scorer: &dyn Scorer,
        graph: &dyn AnnIndex,
        plan: &GraphPlan,
        queries: &[f32],
        nq: usize,
        dim: usize,
        k: usize,
        f: &Filter,
        min_score: Option<f32>,
        ef: usize,
    ) -> Vec<Vec<Hit>> {
        let pending = self.pending_for(plan);
        let one = |q: usize| -> Vec<Hit> {
            let query = &queries[q * dim..(q + 1) * dim];
            match self.graph_one(graph, plan, &pending, query, ef, k, min_score) {
                Some(hits) => self.finish(hits),
                None => self.search_exact(scorer, query, 1, dim, k, f, plan.allowed.as_ref(), min_score, true).pop().expect("one query"),
            }
        };
        if nq >= 4 && crate::fork::threads() > 1 {
            (0..nq).into_par_iter().map(one).collect()
        } else {
            (0..nq).map(one).collect()
        }
    }

    /// The records the graph does not cover at their current version that pass the plan's
    /// filter: a graph search scores them beside the graph's finds.
    fn pending_for(&self, plan: &GraphPlan) -> Vec<u32> {
        self.unindexed.iter().filter(|&s| plan.accepts(self, s)).collect()
    }

    /// One query's graph answer at width max(`ef`, k): its best k (score, slot), best
    /// first, `min_score` applied; None when the graph reached fewer than k of the
    /// matching records (the exact scan must answer).
    #[allow(clippy::too_many_arguments)]
    fn graph_one(
        &self,
        graph: &dyn AnnIndex,
        plan: &GraphPlan,
        pending: &[u32],
        query: &[f32],
        ef: usize,
        k: usize,
        min_score: Option<f32>,
    ) -> Option<Vec<(f32, u32)>> {
        let current = |s: u32| self.current_version(s);
        let rows = self.rows.graph_rows();
        let q_inv = inverse_norm(query);
        let unit: Vec<f32> = query.iter().map(|x| x * q_inv).collect();
        let prepared = rows.query(&unit);
        let found = graph.search(&prepared, ef.max(k), &rows, &|s| graph.is_current(s, &current) && plan.accepts(self, s));
        let reached = found.len() + pending.len();
        if reached < k && (reached as u64) < plan.matching {
            return None;
        }
        // Re-scored as the exact scan scores (int8 precision: as the int8 scan does,
        // which is the graph's own int8 similarity).
        let score = |s: u32| self.rows.graph_rescore(query, q_inv, &prepared, s, self.inv_norm[s as usize]);
        let mut hits: Vec<(f32, u32)> = found.into_iter().map(|(_, s)| s).chain(pending.iter().copied()).map(|s| (score(s), s)).collect();
        if let Some(m) = min_score {
            hits.retain(|h| h.0 >= m);
        }
        self.sort_hits(&mut hits);
        hits.truncate(k);
        Some(hits)
    }

    /// The recall guard's audit of one live search (its unit `query`, k and filter) under
    /// this one read lock: the exact scan ([`CpuScorer`], timed) and the graph at each
    /// width of `ladder` (each timed), with each width's recall@k against the exact answer
    /// (see [`crate::guard`]). None when the graph would not serve this search now (no
    /// graph in use, a filter answered by a scan) or nothing matches. On an int8 store, `k`
    /// is the width of the candidates the engine re-ranks, and both sides are int8
    /// searches: the audit measures the graph step against the int8 scan it replaces.
    pub(crate) fn audit(&self, query: &[f32], k: usize, f: &Filter, ladder: &[usize]) -> Option<Audit> {
        let dim = self.dim?;
        if query.len() != dim || self.is_empty() || k == 0 {
            return None;
        }
        let graph = self.usable_graph()?;
        let allowed = if f.is_empty() { None } else { self.candidates(f) };
        let plan = self.graph_plan(f, dim, allowed).ok()?;
        let t = Instant::now();
        let exact = self.scan(&CpuScorer, query, 1, dim, k, f, plan.allowed.as_ref(), None, true).pop()?;
        let exact_secs = t.elapsed().as_secs_f64();
        if exact.is_empty() {
            return None;
        }
        Some(self.audit_ladder(graph, &plan, query, k, ladder, &exact, Some(exact_secs)))
    }

    /// The graph at each width of `ladder` for one query, against its `exact` answer.
    #[allow(clippy::too_many_arguments)]
    fn audit_ladder(
        &self,
        graph: &dyn AnnIndex,
        plan: &GraphPlan,
        query: &[f32],
        k: usize,
        ladder: &[usize],
        exact: &[(f32, u32)],
        exact_secs: Option<f64>,
    ) -> Audit {
        let pending = self.pending_for(plan);
        let mut audit = Audit { recall: Vec::with_capacity(ladder.len()), graph_secs: Vec::with_capacity(ladder.len()), exact_secs };
        for &ef in ladder {
            let t = Instant::now();
            let found = self.graph_one(graph, plan, &pending, query, ef, k, None);
            let secs = t.elapsed().as_secs_f64();
            match found {
                Some(found) => {
                    audit.recall.push(recall_at_k(&found, exact));
                    audit.graph_secs.push(secs);
                }
                // The graph gives way to the exact scan for this query: exact, at both costs.
                None => {
                    audit.recall.push(1.0);
                    audit.graph_secs.push(secs + exact_secs.unwrap_or(0.0));
                }
            }
        }
        audit
    }

    /// Probe queries for the recall guard's bootstrap: the unit rows the graph measures of
    /// up to `n` stored records, spread evenly over the live slots (deterministic).
    pub(crate) fn guard_probes(&self, n: usize) -> Vec<f32> {
        let live = self.live.len();
        let n = (n as u64).min(live);
        let rows = self.rows.graph_rows();
        let mut out = Vec::new();
        for i in 0..n {
            if let Some(slot) = self.live.select((i * live / n.max(1)) as u32) {
                out.extend(rows.unit_row(slot));
            }
        }
        out
    }

    /// The bootstrap's audits of probe `queries` (unit rows, no filter), under this one
    /// read lock: one batched exact scan of all of them (the truth), a lone exact scan of
    /// the first `timed` (the exact cost a search pays), then the graph ladder per probe
    /// until `give_way()` says so after one (a writer waits). The probes audited come
    /// first in the result; the caller audits the rest under its next lock.
    pub(crate) fn audit_probes(
        &self,
        queries: &[f32],
        k: usize,
        ladder: &[usize],
        timed: usize,
        give_way: &dyn Fn() -> bool,
    ) -> Vec<Audit> {
        let (Some(dim), Some(graph)) = (self.dim, self.usable_graph()) else { return Vec::new() };
        if queries.is_empty() || !queries.len().is_multiple_of(dim) || k == 0 || self.is_empty() {
            return Vec::new();
        }
        let nq = queries.len() / dim;
        let f = Filter::default();
        let plan = GraphPlan { allowed: None, older_than: None, matching: self.live.len() };
        // Bit for bit as each probe alone (`each`), so ties at the k-th place compare equal.
        let truth = self.scan(&CpuScorer, queries, nq, dim, k, &f, None, None, true);
        let mut audits = Vec::with_capacity(nq);
        for (q, exact) in truth.iter().enumerate() {
            let query = &queries[q * dim..(q + 1) * dim];
            let exact_secs = (q < timed).then(|| {
                let t = Instant::now();
                self.scan(&CpuScorer, query, 1, dim, k, &f, None, None, true);
                t.elapsed().as_secs_f64()
            });
            audits.push(self.audit_ladder(graph, &plan, query, k, ladder, exact, exact_secs));
            if give_way() {
                break;
            }
        }
        audits
    }

    /// The rows an exact search with this filter scores (at most: the indexed part of the
    /// filter, before `older_than`), or None when the graph serves it instead (in use, the
    /// filter is broad, and the recall guard trusts it under `IndexMode::Auto`).
    pub fn exact_rows(&self, f: &Filter) -> Option<usize> {
        let dim = self.dim?;
        let allowed = if f.is_empty() { None } else { self.candidates(f) };
        let rows = allowed.as_ref().map_or(self.live.len(), |b| b.len());
        if self.usable_graph().is_some() && self.graph_width().is_some() && self.graph_plan(f, dim, allowed).is_ok() {
            return None;
        }
        Some(rows as usize)
    }

    /// Whether a single-query search with this filter is a scan big enough that
    /// concurrent ones should share it (see [`crate::coalesce`]): an exact scan (no graph
    /// in use for it, or the recall guard's verdict is exact) over at least
    /// `SHARED_SCAN_MIN_VALUES` values.
    pub fn scan_is_worth_sharing(&self, f: &Filter) -> bool {
        let Some(dim) = self.dim else { return false };
        if (self.live.len() as usize).saturating_mul(dim) < SHARED_SCAN_MIN_VALUES {
            return false;
        }
        let allowed = if f.is_empty() { None } else { self.candidates(f) };
        let rows = allowed.as_ref().map_or(self.live.len(), |b| b.len());
        if self.usable_graph().is_some() && self.graph_width().is_some() && self.graph_plan(f, dim, allowed).is_ok() {
            return false;
        }
        (rows as usize).saturating_mul(dim) >= SHARED_SCAN_MIN_VALUES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ladder;
    use crate::hnsw::GraphQuery;
    use crate::record::Record;
    use crate::vectors::Precision;

    /// A state at `precision` holding `n` random vectors of `dim` (scope "/even" or "/odd"
    /// by parity), with its graph built and published under `IndexMode::Hnsw`.
    fn state_with_graph(precision: Precision, n: usize, dim: usize) -> State {
        let mut st = State::new();
        st.precision = precision;
        st.set_index(IndexConfig { mode: IndexMode::Hnsw, ..IndexConfig::default() });
        let mut seed = 11u64;
        for i in 0..n {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let rec = Record::bare(format!("r{i:05}"), if i % 2 == 0 { "/even" } else { "/odd" });
            st.put(rec, &v).unwrap();
        }
        let mut build = st.begin_graph_build().unwrap();
        st.extend_graph_build(&mut build, 0, &|| false, &mut GraphQuery::default());
        assert!(st.publish_graph(build));
        st
    }

    #[test]
    fn an_audit_measures_every_width_against_the_exact_scan() {
        let st = state_with_graph(Precision::F32, 600, 32);
        let widths = ladder(16);
        let query = st.guard_probes(1);
        let audit = st.audit(&query, 10, &Filter::default(), &widths).expect("audited");
        assert_eq!((audit.recall.len(), audit.graph_secs.len()), (widths.len(), widths.len()));
        assert!(audit.recall.iter().all(|r| (0.0..=1.0).contains(r)) && audit.exact_secs.is_some());
        // At a width beyond the store's size the walk reaches every record: exact.
        assert_eq!(st.audit(&query, 10, &Filter::default(), &[1024]).unwrap().recall, vec![1.0]);
        // A selective filter is answered by a scan, never the graph: nothing to audit.
        let one = Filter { scope: Some("/even".into()), ..Filter::default() };
        assert!(st.audit(&query, 10, &one, &widths).is_none());
    }

    #[test]
    fn the_int8_graph_step_is_measured_against_the_int8_scan() {
        // Both sides are int8 searches (the re-rank comes after, in the engine): at a width
        // that reaches every record, the graph's candidates are the int8 scan's, so the
        // recall is 1 for every probe.
        let st = state_with_graph(Precision::Int8, 500, 48);
        let probes = st.guard_probes(16);
        let audits = st.audit_probes(&probes, 26, &[1024], 4, &|| false);
        assert_eq!(audits.len(), 16);
        assert!(audits.iter().all(|a| a.recall == vec![1.0]), "{audits:?}");
    }

    #[test]
    fn bootstrap_probes_are_spread_timed_and_give_way_to_writers() {
        let st = state_with_graph(Precision::F32, 300, 16);
        let probes = st.guard_probes(64);
        assert_eq!(probes.len(), 64 * 16);
        // Spread over the slots: no probe twice.
        let rows: std::collections::BTreeSet<Vec<u32>> = probes.chunks(16).map(|r| r.iter().map(|x| x.to_bits()).collect()).collect();
        assert_eq!(rows.len(), 64);
        let audits = st.audit_probes(&probes, 10, &ladder(8), 4, &|| false);
        assert_eq!(audits.len(), 64);
        assert!(audits.iter().take(4).all(|a| a.exact_secs.is_some()));
        assert!(audits.iter().skip(4).all(|a| a.exact_secs.is_none()));
        // A waiting writer ends the lock after the probe in progress.
        assert_eq!(st.audit_probes(&probes, 10, &ladder(8), 4, &|| true).len(), 1);
        // A store smaller than the probe count gives one probe per record.
        assert_eq!(st.guard_probes(1000).len(), 300 * 16);
    }

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
}
