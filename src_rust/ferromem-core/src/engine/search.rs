//! Searches: the result cache, coalescing of concurrent single queries, the scorer the
//! exact scans run on (replaceable: `set_scorer`, with the rows lent by `with_rows`), and
//! the re-ranking of int8 candidates with the exact vectors read from the durable layer.

use super::{unit_queries, validate_vectors, Engine};
use crate::cache::{CacheStats, SearchKey};
use crate::coalesce::{group, Job};
use crate::filter::Filter;
use crate::metrics::Op;
use crate::planner::Policy;
use crate::scorer::{RowsView, Scorer};
use crate::simd;
use crate::state::{inverse_norm, Hit};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Candidates an int8 search re-ranks for a top-k: k plus a margin, so that a record the
/// quantisation moved below the k-th place is still among them. Measured in one run
/// (numpy, the same quantisation): on the shared MiniLM set (60,000 x 384, 1,000 queries)
/// the int8 order alone has recall@10 0.994 and re-ranking its top 12 already gives 1.0;
/// on random vectors (30,000 x 384 and x 1536) 0.985 and 0.978 alone, 1.0 from the top
/// 15. `k + max(k, 16)` keeps about twice that margin; each candidate costs one point
/// read of its vector (~4 us).
pub(super) fn rerank_width(k: usize) -> usize {
    k.saturating_add(k.max(RERANK_EXTRA))
}
pub(super) const RERANK_EXTRA: usize = 16;

/// The queries of a search as unit rows, after the checks every search makes: k >= 1, a
/// finite `min_score`, finite non-zero query rows of `dim`.
pub(super) fn checked_queries(queries: &[f32], dim: usize, k: usize, min_score: Option<f32>) -> Result<Vec<f32>> {
    if k == 0 {
        return Err(Error::InvalidInput("k must be at least 1".into()));
    }
    if min_score.is_some_and(|m| !m.is_finite()) {
        return Err(Error::InvalidInput("min_score must be a finite number".into()));
    }
    validate_vectors(queries, dim)?;
    Ok(unit_queries(queries, dim))
}

impl Engine {
    /// Top-k by cosine for each of the `queries` (row-major, `dim` per row): exact scans,
    /// or the graph (see [`crate::hnsw`]) when the index mode says so. A repeated single
    /// query may be answered from the result cache; concurrent single queries that scan a
    /// large store run as one batch (see [`crate::coalesce`]).
    pub fn search(&self, queries: &[f32], dim: usize, k: usize, filter: &Filter, min_score: Option<f32>) -> Result<Vec<Vec<Hit>>> {
        self.search_with_policy(queries, dim, k, filter, min_score, None)
    }

    /// `search` under a device policy (None: the engine's, see [`Engine::set_policy`]):
    /// the planner routes each exact scan (see [`crate::planner`]).
    pub fn search_with_policy(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        filter: &Filter,
        min_score: Option<f32>,
        policy: Option<Policy>,
    ) -> Result<Vec<Vec<Hit>>> {
        let policy = policy.unwrap_or_else(|| self.policy());
        let unit = checked_queries(queries, dim, k, min_score)?;
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
            // Coalesced batches run under the engine's policy, and never fail for a device.
            let shared = nq == 1 && policy == self.policy() && policy != Policy::Gpu && st.scan_is_worth_sharing(filter);
            let int8 = st.precision.reranked();
            if int8 && policy == Policy::Gpu {
                return Err(Error::Device(format!(
                    "device policy 'gpu' cannot be met: a device does not mirror {} rows (use precision 'f32' or 'f16')",
                    st.precision.name()
                )));
            }
            if !int8 && !shared {
                let (results, _) = self.search_routed(&st, queries, nq, k, filter, min_score, policy, false, false)?;
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
    pub(super) fn search_reranked(
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
                (st.search(&*self.scorer(), queries, nq, width, filter, None), st.epoch, st.seq, st.search_generation)
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
    pub(super) fn search_reranked_shared(
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
    pub(super) fn rerank(
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
            super::exact_vectors(guard.as_mut().ok_or(Error::Closed)?.as_mut())?.vectors_at(epoch, seq, &ids)?
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
    pub(super) fn run_search_batch(&self, batch: &[Arc<Job>]) {
        let scorer = self.scorer();
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
            let results = if st.precision.reranked() {
                st.search_each(&*scorer, &queries, jobs.len(), k, filter, min_score)
            } else {
                // The engine's policy is never "gpu" here (see `search`), so this cannot fail.
                match self.search_routed(&st, &queries, jobs.len(), k, filter, min_score, self.policy(), true, false) {
                    Ok((results, _)) => results,
                    Err(_) => st.search_each(&*scorer, &queries, jobs.len(), k, filter, min_score),
                }
            };
            for (job, hits) in jobs.iter().zip(results) {
                job.set_position(st.epoch, st.seq, st.search_generation);
                // An int8 job's answer is its candidates, which its caller re-ranks and caches.
                if caching && !st.precision.reranked() {
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

    /// The scorer that runs exact scans.
    pub fn scorer(&self) -> Arc<dyn Scorer> {
        Arc::clone(&self.scorer.read())
    }

    /// Replaces the scorer that runs exact scans (another device's, or a test's). Cached
    /// results were computed by the old one: the cache is emptied.
    pub fn set_scorer(&self, scorer: Arc<dyn Scorer>) {
        *self.scorer.write() = scorer;
        let mut cache = self.cache.lock();
        let capacity = cache.capacity();
        cache.set_capacity(0);
        cache.set_capacity(capacity);
    }

    /// Lends the vector rows (buffers, slot -> id map, filter candidates, rows changed since
    /// a generation: see [`RowsView`]) to `f` under the state's read lock, after catching up
    /// with other processes. Nothing is copied; writes wait until `f` returns.
    pub fn with_rows<T>(&self, f: impl FnOnce(&RowsView<'_>) -> T) -> Result<T> {
        self.check_open()?;
        self.catch_up()?;
        let st = self.state.read();
        Ok(f(&RowsView { state: &st }))
    }

    /// Bounds the result cache to `entries` single-query searches (0 turns it off).
    pub fn set_cache_capacity(&self, entries: usize) {
        self.cache.lock().set_capacity(entries);
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
