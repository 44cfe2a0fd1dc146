//! Exact search on another device (a GPU): the device proposes candidates, the host proves
//! the answer.
//!
//! A [`CandidateDevice`] keeps a mirror of the store's unit rows (in its own precision,
//! e.g. f16) and, per query, proposes the `width` best slots by its approximate score,
//! whose error against the host's score it bounds ([`CandidateDevice::error_bound`]).
//! [`DeviceScorer`] re-scores those candidates on the host exactly as the CPU scan scores
//! them and keeps the answer only when it is provably the CPU's: a record the device left
//! out scored at most the width-th proposal `a_min` there, so at most `a_min + eps` on the
//! host; when that is below the k-th exact score (or `min_score`), it cannot enter the
//! top-k. Otherwise (near-duplicates, ties at the cut) that query is answered by the CPU
//! scan. So a device search returns the CPU's ids and bit-identical scores, by
//! construction, and the device only has to be fast and honest about its bound.
//!
//! The mirror follows the rows incrementally ([`RowsView::changed_since`]): a write sends
//! the rows it wrote, never the whole store again.

use crate::scorer::{CpuScorer, Plan, RowChanges, RowsView, Scorer};
use crate::state::inverse_norm;
use crate::vectors::SlotHits;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Candidates a device proposes beyond k: room for the proof above. On random 1536-d
/// vectors the k-th and (k + 32)-th scores of 1M rows lie ~0.008 apart, eight times an f16
/// mirror's error bound; on real text embeddings the gaps are wider.
pub const DEVICE_EXTRA: usize = 32;

/// Rows sent to the device per `apply` when it receives the whole store (so a 1M-row
/// upload never needs a second full f32 copy on the host: 96 MiB a chunk at 1536 dims).
const APPLY_CHUNK_ROWS: usize = 1 << 14;

/// After the device refused the store (out of memory, a driver error), searches do not
/// try it again for this long unless the store holds fewer slots (a reset): each try
/// costs a chunk of rows prepared on the host, and a store that did not fit a moment ago
/// rarely fits now.
const REFUSAL_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

/// A change of the mirror: rows to write (unit f32, `dim` per row) at `written` slots,
/// `freed` slots to drop; `reset`: drop everything first (the dimension may change).
pub struct MirrorUpdate<'a> {
    pub dim: usize,
    pub slot_count: usize,
    pub written: &'a [u32],
    pub rows: &'a [f32],
    pub freed: &'a [u32],
    pub reset: bool,
}

/// A device that proposes candidates (see the module doc). Errors are the device's own
/// words (out of memory, driver failure): the scorer then answers on the CPU.
pub trait CandidateDevice: Send + Sync {
    /// The device's name for stats and `explain` ("cuda:0 NVIDIA H100", "numpy").
    fn name(&self) -> String;
    /// An upper bound on |device score - host score| for unit query and row of `dim`.
    fn error_bound(&self, dim: usize) -> f32;
    /// Applies a change to the mirror; on an error the mirror is as it was before.
    fn apply(&self, update: &MirrorUpdate<'_>) -> Result<(), String>;
    /// Per query (`nq` unit rows of `dim`), the `width` best slots among `candidates`
    /// (None: every mirrored row), best first, with the device's score; fewer when fewer
    /// rows exist.
    fn propose(&self, queries: &[f32], nq: usize, dim: usize, width: usize, candidates: Option<&[u32]>) -> Result<SlotHits, String>;
}

/// Counters of a device scorer, for stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub name: String,
    /// Searches (queries) answered from the device's candidates, and those the proof sent
    /// to the CPU scan.
    pub proved: u64,
    pub fallbacks: u64,
    /// Rows sent to the mirror, and full uploads (at the first search, after a reset).
    pub rows_sent: u64,
    pub uploads: u64,
    /// The last error of the device (the search then ran on the CPU), if any.
    pub last_error: Option<String>,
}

/// A [`Scorer`] over a [`CandidateDevice`] (see the module doc).
pub struct DeviceScorer {
    device: Box<dyn CandidateDevice>,
    name: String,
    /// The search generation the mirror holds (None: nothing yet, or a failed update).
    synced: Mutex<Option<u64>>,
    proved: AtomicU64,
    fallbacks: AtomicU64,
    rows_sent: AtomicU64,
    uploads: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The slot count the device refused, when, and why (see `REFUSAL_BACKOFF`).
    refused: Mutex<Option<(usize, std::time::Instant, String)>>,
}

impl DeviceScorer {
    pub fn new(device: Box<dyn CandidateDevice>) -> Self {
        let name = device.name();
        DeviceScorer {
            device,
            name,
            synced: Mutex::new(None),
            proved: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            rows_sent: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            last_error: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            name: self.name.clone(),
            proved: self.proved.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            rows_sent: self.rows_sent.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }

    /// Rows the mirror needs before it can search `rows` (0 when in step): what a search
    /// would have to send first, for the planner's estimate.
    pub fn rows_behind(&self, rows: &RowsView<'_>) -> usize {
        match *self.synced.lock() {
            Some(g) if g == rows.generation() => 0,
            Some(g) => match rows.changed_since(g) {
                RowChanges::All => rows.slot_count(),
                RowChanges::Some { written, freed } => written.len() + freed.len(),
            },
            None => rows.slot_count(),
        }
    }

    /// Brings the mirror in step with `rows` (called under the state's read lock, so the
    /// rows cannot change meanwhile). Err with the device's words when it cannot hold them
    /// (the mirror is then rebuilt from nothing at the next try).
    pub fn sync(&self, rows: &RowsView<'_>) -> Result<(), String> {
        let mut synced = self.synced.lock();
        let generation = rows.generation();
        if *synced == Some(generation) {
            return Ok(());
        }
        if let Some((slots, at, why)) = self.refused.lock().as_ref() {
            if rows.slot_count() >= *slots && at.elapsed() < REFUSAL_BACKOFF {
                return Err(format!("{why} (not retried for {} s, or until the store is reset)", REFUSAL_BACKOFF.as_secs()));
            }
        }
        let result = self.send(rows, &mut synced);
        match &result {
            Ok(()) => *self.refused.lock() = None,
            Err(why) => *self.refused.lock() = Some((rows.slot_count(), std::time::Instant::now(), why.clone())),
        }
        result
    }

    /// The mirror update of `sync`: the rows changed since the mirror's generation (all of
    /// them when it has none), in chunks.
    fn send(&self, rows: &RowsView<'_>, synced: &mut Option<u64>) -> Result<(), String> {
        let generation = rows.generation();
        let Some(dim) = rows.dim() else {
            *synced = Some(generation);
            return Ok(());
        };
        let changes = match *synced {
            Some(g) => rows.changed_since(g),
            None => RowChanges::All,
        };
        // A failure below leaves the mirror partly updated: start again from nothing.
        *synced = None;
        let inv_norm = rows.inv_norm();
        let (written, freed, reset) = match changes {
            RowChanges::All => ((0..rows.slot_count() as u32).filter(|&s| inv_norm[s as usize] != 0.0).collect(), Vec::new(), true),
            RowChanges::Some { written, freed } => (written, freed, false),
        };
        let mut first = true;
        let mut buf: Vec<f32> = Vec::new();
        let chunks: Vec<&[u32]> = if written.is_empty() { vec![&[][..]] } else { written.chunks(APPLY_CHUNK_ROWS).collect() };
        for part in chunks {
            buf.resize(part.len() * dim, 0.0);
            for (&slot, out) in part.iter().zip(buf.chunks_exact_mut(dim)) {
                if !rows.vectors().unit_row(slot as usize, inv_norm[slot as usize], out) {
                    return Err(format!("a device cannot mirror {} rows", rows.precision().name()));
                }
            }
            let update = MirrorUpdate {
                dim,
                slot_count: rows.slot_count(),
                written: part,
                rows: &buf,
                freed: if first { &freed } else { &[] },
                reset: reset && first,
            };
            self.device.apply(&update)?;
            first = false;
            self.rows_sent.fetch_add(part.len() as u64, Ordering::Relaxed);
        }
        if reset {
            self.uploads.fetch_add(1, Ordering::Relaxed);
        }
        *synced = Some(generation);
        Ok(())
    }

    fn note_error(&self, why: String) {
        *self.last_error.lock() = Some(why);
    }

    /// The exact answer of query `q` from the device's `proposed` candidates, or None when
    /// the proof fails (see the module doc).
    fn prove(
        &self,
        plan: &Plan<'_>,
        q: usize,
        proposed: &[(f32, u32)],
        width: usize,
        eps: f32,
        rows: &RowsView<'_>,
    ) -> Option<Vec<(f32, u32)>> {
        let query = plan.query(q);
        let q_inv = inverse_norm(query);
        let inv_norm = rows.inv_norm();
        let vectors = rows.vectors();
        let graph_rows = vectors.graph_rows();
        let prepared = graph_rows.query(query);
        let live: Vec<(f32, u32)> =
            proposed.iter().copied().filter(|&(_, s)| inv_norm.get(s as usize).is_some_and(|&i| i != 0.0)).collect();
        if live.len() != proposed.len() {
            return None; // the mirror proposed a free slot: not in step, do not trust it
        }
        // A list shorter than the width holds every row the device could propose.
        let complete = proposed.len() < width;
        let a_min = proposed.iter().map(|e| e.0).fold(f32::INFINITY, f32::min);
        let mut exact: Vec<(f32, u32)> =
            live.iter().map(|&(_, s)| (vectors.graph_rescore(query, q_inv, &prepared, s, inv_norm[s as usize]), s)).collect();
        if let Some(m) = plan.min_score {
            exact.retain(|e| e.0 >= m);
        }
        rows.sort_hits(&mut exact);
        let bar = if exact.len() >= plan.k { Some(exact[plan.k - 1].0) } else { plan.min_score };
        if complete || bar.is_some_and(|bar| a_min + eps < bar) {
            exact.truncate(plan.k);
            Some(exact)
        } else {
            None
        }
    }
}

impl Scorer for DeviceScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn top_k(&self, plan: &Plan<'_>, rows: &RowsView<'_>) -> SlotHits {
        let cpu = |plan: &Plan<'_>| CpuScorer.top_k(plan, rows);
        if let Err(why) = self.sync(rows) {
            self.note_error(why);
            self.fallbacks.fetch_add(plan.nq as u64, Ordering::Relaxed);
            return cpu(plan);
        }
        let width = plan.k.saturating_add(DEVICE_EXTRA);
        let proposed = match self.device.propose(plan.queries, plan.nq, plan.dim, width, plan.candidates) {
            Ok(p) if p.len() == plan.nq => p,
            Ok(p) => {
                self.note_error(format!("the device answered {} queries of {}", p.len(), plan.nq));
                self.fallbacks.fetch_add(plan.nq as u64, Ordering::Relaxed);
                return cpu(plan);
            }
            Err(why) => {
                self.note_error(why);
                self.fallbacks.fetch_add(plan.nq as u64, Ordering::Relaxed);
                return cpu(plan);
            }
        };
        // The device bounds its distance from the cosine of the rows it mirrors; the host's
        // own scores may lie that far from it too at f16 (see `PrecisionRows::score_slack`).
        let eps = self.device.error_bound(plan.dim) + rows.vectors().score_slack(plan.dim);
        proposed
            .iter()
            .enumerate()
            .map(|(q, found)| match self.prove(plan, q, found, width, eps, rows) {
                Some(hits) => {
                    self.proved.fetch_add(1, Ordering::Relaxed);
                    hits
                }
                None => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let one = Plan { queries: plan.query(q), nq: 1, each: true, ..*plan };
                    cpu(&one).pop().expect("one query")
                }
            })
            .collect()
    }
}
