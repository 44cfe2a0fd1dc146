//! The recall guard: the graph answers a search under `IndexMode::Auto` only while what it
//! returns on this store's own queries is measured to be as good as the exact scan's, to
//! the recall target, and cheaper.
//!
//! * **A ladder of widths.** The guard judges the graph at the configured `ef_search`,
//!   then twice it, four times... up to `16 * ef_search` or 1024 ([`ladder`]). An audited
//!   query runs, under one read lock of the state (so one store version), the graph at
//!   every width of the ladder and the exact scan ([`crate::scorer::CpuScorer`], same
//!   filter, same k), and records per width the query's recall@k against the exact answer
//!   and the time each took ([`Audit`]).
//! * **Sampling off the hot path.** A search the graph may serve offers its first query
//!   (`RecallGuard::offer`): one atomic counter; every `stride`-th offer copies the query
//!   into a bounded queue (full: dropped, and the stride doubles; the auditor halves it
//!   whenever it finds the queue empty). A background thread per engine, the auditor
//!   ([`run_auditor`]), evaluates the samples and then sleeps long enough that its busy
//!   time stays within [`AUDITOR_CPU_SHARE`] of one core.
//! * **A rolling estimate.** Per width, the mean recall of the last [`WINDOW`] audits and
//!   its standard error; the graph's and the exact scan's times are the windows' medians.
//! * **A verdict with hysteresis** ([`decide`]). The graph serves at the smallest width
//!   whose recall is confidently at or above the target (mean - 2 standard errors >= the
//!   target) and whose graph time is at most the exact time / 1.1; it keeps serving at that
//!   width until its recall is confidently below the target (mean + 2 standard errors <
//!   the target) or its graph time exceeds the exact time. Below [`MIN_SAMPLES`] audits
//!   the graph is not trusted: exact.
//! * **A bootstrap at publish.** When a graph is published without evidence for it (a new
//!   graph, another ladder), the graph builder audits [`BOOTSTRAP_PROBES`] stored vectors
//!   (spread over the slots, k = 10, no filter) with one batched exact scan, so the verdict
//!   exists before the first live sample (`engine::builder`).
//!
//! The guard is behind its own leaf locks (the state holds an `Arc` of it so that a search
//! reads the route without another argument): nothing else is locked while one of them is
//! held, and the state lock is never taken under them.

use crate::filter::Filter;
use crate::state::State;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The recall@k the graph must be measured to reach before it serves (`recall_target`).
pub const DEFAULT_RECALL_TARGET: f64 = 0.95;
/// The auditor's CPU budget: busy time over elapsed time, as a share of one core. After
/// each audit it sleeps `busy * (1 / share - 1)`, so every audit-and-sleep cycle (hence
/// any run of them) stays within it.
pub const AUDITOR_CPU_SHARE: f64 = 0.05;
/// Audits kept per width: the estimate follows the store's queries as they drift.
pub const WINDOW: usize = 256;
/// Fewer audits than this (bootstrap included): the graph is not trusted yet.
pub const MIN_SAMPLES: usize = 32;
/// The ladder stops at `LADDER_MAX_FACTOR * ef_search` and at `LADDER_MAX_EF`.
const LADDER_MAX_EF: usize = 1024;
const LADDER_MAX_FACTOR: usize = 16;
/// Standard errors between the mean and a bound (two: ~97.7% one-sided).
const CONFIDENCE_Z: f64 = 2.0;
/// To start serving, the graph must be this much faster than the exact scan (so that
/// timing noise alone does not switch the route back and forth).
const ENTER_TIME_MARGIN: f64 = 1.1;
/// Samples waiting for the auditor at most.
const QUEUE_CAPACITY: usize = 8;
const MAX_STRIDE: u64 = 1 << 16;
/// Probe queries per bootstrap, their k, and how many of them also time a lone exact scan.
pub const BOOTSTRAP_PROBES: usize = 64;
pub const BOOTSTRAP_K: usize = 10;
pub const BOOTSTRAP_EXACT_TIMED: usize = 4;
/// How long the auditor sleeps at most before it looks at the stop flag again.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Whether `target` is a recall target (0 < target <= 1); the message says what is wrong.
pub fn check_target(target: f64) -> Result<(), String> {
    if target > 0.0 && target <= 1.0 {
        Ok(())
    } else {
        Err(format!("recall_target must be a number in (0, 1], e.g. {DEFAULT_RECALL_TARGET}; got {target}"))
    }
}

/// The widths the guard judges: `ef_search`, then doubled while within
/// min(`16 * ef_search`, 1024) (and never below `ef_search`).
pub fn ladder(ef_search: usize) -> Vec<usize> {
    let ef_search = ef_search.max(1);
    let cap = ef_search.saturating_mul(LADDER_MAX_FACTOR).min(LADDER_MAX_EF).max(ef_search);
    let mut out = vec![ef_search];
    let mut ef = ef_search;
    while ef.saturating_mul(2) <= cap {
        ef *= 2;
        out.push(ef);
    }
    out
}

/// recall@k of `found` (the graph's answer, best first) against `exact` (the exact scan's,
/// any order): the share of the exact answer the graph's first `exact.len()` results
/// hold. A found record that scores at least the exact answer's lowest score counts as a
/// hit too (a tie at the k-th place: both answers are right). 1.0 when `exact` is empty.
pub fn recall_at_k(found: &[(f32, u32)], exact: &[(f32, u32)]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let kth = exact.iter().map(|h| h.0).fold(f32::INFINITY, f32::min);
    let mut slots: Vec<u32> = exact.iter().map(|h| h.1).collect();
    slots.sort_unstable();
    let hits = found.iter().take(exact.len()).filter(|h| h.0 >= kth || slots.binary_search(&h.1).is_ok()).count();
    hits as f64 / exact.len() as f64
}

/// One audited query: per ladder width, the graph answer's recall@k and the graph search's
/// seconds; the exact scan's seconds when this audit timed one alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Audit {
    pub recall: Vec<f64>,
    pub graph_secs: Vec<f64>,
    pub exact_secs: Option<f64>,
}

/// The last `WINDOW` values of a measurement.
#[derive(Clone, Debug, Default)]
struct Window {
    values: VecDeque<f64>,
}

impl Window {
    fn push(&mut self, x: f64) {
        if self.values.len() == WINDOW {
            self.values.pop_front();
        }
        self.values.push_back(x);
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn mean(&self) -> Option<f64> {
        (!self.values.is_empty()).then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// The standard error of the mean (None below two values).
    fn stderr(&self) -> Option<f64> {
        let n = self.values.len();
        if n < 2 {
            return None;
        }
        let mean = self.mean()?;
        let var = self.values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        Some((var / n as f64).sqrt())
    }

    /// The median: a time that one preempted run cannot move.
    fn median(&self) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.values.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
    }
}

/// What the guard knows of the graph at one width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RungEstimate {
    pub ef: usize,
    pub samples: usize,
    pub mean: f64,
    pub stderr: f64,
    /// The median graph search time at this width, in milliseconds.
    pub graph_ms: f64,
}

impl RungEstimate {
    fn lower(&self) -> f64 {
        self.mean - CONFIDENCE_Z * self.stderr
    }

    fn upper(&self) -> f64 {
        self.mean + CONFIDENCE_Z * self.stderr
    }
}

/// The guard's judgement of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Too few audits to judge: the exact scan answers.
    Unknown,
    /// No width reaches the target, or none is cheaper than the exact scan.
    Exact,
    /// The graph serves at the ladder's width number `rung`.
    Graph { rung: usize },
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Exact => "exact",
            Verdict::Graph { .. } => "graph",
        }
    }
}

/// The next verdict from the `current` one and the estimates (one per ladder width, in
/// ladder order) and the exact scan's median time (see the module doc: the smallest
/// width confidently at the target enters; a serving width leaves only when confidently
/// below it, or slower than exact; a cheaper width that qualifies replaces it).
pub fn decide(current: Verdict, rungs: &[RungEstimate], exact_ms: Option<f64>, target: f64) -> Verdict {
    let samples = rungs.iter().map(|r| r.samples).min().unwrap_or(0);
    let Some(exact_ms) = exact_ms else { return Verdict::Unknown };
    if samples < MIN_SAMPLES {
        return Verdict::Unknown;
    }
    let enters = |r: &RungEstimate| r.lower() >= target && r.graph_ms * ENTER_TIME_MARGIN <= exact_ms;
    let holds = |r: &RungEstimate| r.upper() >= target && r.graph_ms <= exact_ms;
    let cheapest = rungs.iter().position(enters);
    match current {
        Verdict::Graph { rung } if rungs.get(rung).is_some_and(holds) => match cheapest {
            Some(c) if c < rung => Verdict::Graph { rung: c },
            _ => Verdict::Graph { rung },
        },
        _ => cheapest.map_or(Verdict::Exact, |rung| Verdict::Graph { rung }),
    }
}

/// The audits of the current epoch and the verdict drawn from them.
#[derive(Clone, Debug)]
struct Evidence {
    ladder: Vec<usize>,
    recall: Vec<Window>,
    graph_secs: Vec<Window>,
    exact_secs: Window,
    verdict: Verdict,
    target: f64,
    /// A bootstrap ran in this epoch (so a thin window waits for live samples instead).
    bootstrapped: bool,
}

impl Evidence {
    fn new(ladder: Vec<usize>, target: f64) -> Evidence {
        let n = ladder.len();
        Evidence {
            ladder,
            recall: vec![Window::default(); n],
            graph_secs: vec![Window::default(); n],
            exact_secs: Window::default(),
            verdict: Verdict::Unknown,
            target,
            bootstrapped: false,
        }
    }

    fn samples(&self) -> usize {
        self.recall.first().map_or(0, Window::len)
    }

    fn add(&mut self, a: &Audit) {
        if a.recall.len() != self.ladder.len() || a.graph_secs.len() != self.ladder.len() {
            return;
        }
        for (w, &r) in self.recall.iter_mut().zip(&a.recall) {
            w.push(r);
        }
        for (w, &s) in self.graph_secs.iter_mut().zip(&a.graph_secs) {
            w.push(s);
        }
        if let Some(s) = a.exact_secs {
            self.exact_secs.push(s);
        }
    }

    fn estimates(&self) -> Vec<RungEstimate> {
        self.ladder
            .iter()
            .enumerate()
            .map(|(i, &ef)| RungEstimate {
                ef,
                samples: self.recall[i].len(),
                mean: self.recall[i].mean().unwrap_or(0.0),
                stderr: self.recall[i].stderr().unwrap_or(f64::INFINITY),
                graph_ms: self.graph_secs[i].median().map_or(f64::INFINITY, |s| s * 1e3),
            })
            .collect()
    }

    fn exact_ms(&self) -> Option<f64> {
        self.exact_secs.median().map(|s| s * 1e3)
    }

    fn redecide(&mut self) {
        self.verdict = decide(self.verdict, &self.estimates(), self.exact_ms(), self.target);
    }

    /// The width `IndexMode::Auto` serves the graph at, 0 for the exact scan.
    fn route(&self) -> usize {
        match self.verdict {
            Verdict::Graph { rung } => self.ladder[rung],
            _ => 0,
        }
    }
}

/// A query offered for audit: the unit query, k and filter of a search the graph may serve.
pub struct Sample {
    pub query: Vec<f32>,
    pub k: usize,
    pub filter: Filter,
    epoch: u64,
}

/// The guard's report (`stats()["index"]["recall"]`).
#[derive(Clone, Debug, PartialEq)]
pub struct RecallReport {
    pub target: f64,
    pub verdict: Verdict,
    pub ladder: Vec<RungReport>,
    /// The median exact scan time of the window, in milliseconds.
    pub exact_ms: Option<f64>,
    /// Searches that offered a sample, samples audited (bootstrap probes included) and
    /// samples dropped (queue full or busy).
    pub offered: u64,
    pub evaluated: u64,
    pub dropped: u64,
    /// One offer in this many is sampled now.
    pub sample_every: u64,
    /// The auditor's busy time over its lifetime (up to the end of its current pause), as
    /// a share of one core.
    pub auditor_share: f64,
    pub bootstraps: u64,
    /// How long the last bootstrap took, in milliseconds.
    pub bootstrap_ms: Option<f64>,
}

/// One ladder width in the report; the numbers are None before any audit.
#[derive(Clone, Debug, PartialEq)]
pub struct RungReport {
    pub ef: usize,
    pub samples: usize,
    pub mean: Option<f64>,
    pub stderr: Option<f64>,
    pub graph_ms: Option<f64>,
}

/// The recall guard of one engine (see the module doc).
pub struct RecallGuard {
    /// The width `IndexMode::Auto` serves the graph at now, 0 for the exact scan: the one
    /// load a search makes.
    route: AtomicUsize,
    /// Bumped (under the evidence lock) by every reset: audits of an older epoch are
    /// discarded, so the evidence never mixes two graphs or two ladders.
    epoch: AtomicU64,
    evidence: Mutex<Evidence>,
    queue: Mutex<VecDeque<Sample>>,
    wake: Condvar,
    offers: AtomicU64,
    stride: AtomicU64,
    dropped: AtomicU64,
    evaluated: AtomicU64,
    /// Set at close: the auditor ends and no other starts.
    stop: AtomicBool,
    auditor_running: AtomicBool,
    auditor_started: Mutex<Option<Instant>>,
    busy_ns: AtomicU64,
    /// When the auditor's current pause ends, in nanoseconds after it started: its busy
    /// share is reported over its lifetime up to there (the pause pays for the audit
    /// before it, so a report taken during a pause would otherwise count the audit
    /// without its pause).
    paused_until_ns: AtomicU64,
    bootstraps: AtomicU64,
    bootstrap_ns: AtomicU64,
}

impl Default for RecallGuard {
    fn default() -> Self {
        RecallGuard::new(crate::state::DEFAULT_EF_SEARCH, DEFAULT_RECALL_TARGET)
    }
}

impl RecallGuard {
    pub fn new(ef_search: usize, target: f64) -> RecallGuard {
        RecallGuard {
            route: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            evidence: Mutex::new(Evidence::new(ladder(ef_search), target)),
            queue: Mutex::new(VecDeque::with_capacity(QUEUE_CAPACITY)),
            wake: Condvar::new(),
            offers: AtomicU64::new(0),
            stride: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            evaluated: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            auditor_running: AtomicBool::new(false),
            auditor_started: Mutex::new(None),
            busy_ns: AtomicU64::new(0),
            paused_until_ns: AtomicU64::new(0),
            bootstraps: AtomicU64::new(0),
            bootstrap_ns: AtomicU64::new(0),
        }
    }

    /// The width `IndexMode::Auto` serves the graph at now; None: the exact scan.
    #[inline]
    pub fn route(&self) -> Option<usize> {
        match self.route.load(Ordering::Relaxed) {
            0 => None,
            ef => Some(ef),
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.evidence.lock().verdict
    }

    pub fn target(&self) -> f64 {
        self.evidence.lock().target
    }

    pub fn ladder(&self) -> Vec<usize> {
        self.evidence.lock().ladder.clone()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Sets the recall target (0 < target <= 1, checked by the caller); the verdict is
    /// drawn again from the evidence there is.
    pub fn set_target(&self, target: f64) {
        let mut ev = self.evidence.lock();
        ev.target = target;
        ev.redecide();
        self.route.store(ev.route(), Ordering::Relaxed);
    }

    /// The ladder for `ef_search`: when it changes, the evidence is void.
    pub fn configure(&self, ef_search: usize) {
        let wanted = ladder(ef_search);
        if self.evidence.lock().ladder != wanted {
            self.reset_with(wanted);
        }
    }

    /// Forgets every audit (a new graph, a reset of the store): the graph is not trusted
    /// until a bootstrap or live samples judge it again.
    pub fn reset(&self) {
        let ladder = self.ladder();
        self.reset_with(ladder);
    }

    fn reset_with(&self, ladder: Vec<usize>) {
        let mut ev = self.evidence.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *ev = Evidence::new(ladder, ev.target);
        self.route.store(0, Ordering::Relaxed);
        drop(ev);
        self.queue.lock().clear();
    }

    /// Records audits made in `epoch` (discarded when the evidence was reset since) and
    /// draws the verdict again.
    pub fn record(&self, epoch: u64, audits: &[Audit]) {
        let mut ev = self.evidence.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        for a in audits {
            ev.add(a);
        }
        ev.redecide();
        self.route.store(ev.route(), Ordering::Relaxed);
        self.evaluated.fetch_add(audits.len() as u64, Ordering::Relaxed);
    }

    /// Whether a bootstrap should judge the graph now: none ran in this epoch and the
    /// window is too thin to judge.
    pub fn needs_bootstrap(&self) -> bool {
        let ev = self.evidence.lock();
        !ev.bootstrapped && ev.samples() < MIN_SAMPLES
    }

    /// Marks the bootstrap of `epoch` done (it took `took`).
    pub fn bootstrapped(&self, epoch: u64, took: Duration) {
        let mut ev = self.evidence.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            ev.bootstrapped = true;
            self.bootstraps.fetch_add(1, Ordering::Relaxed);
            self.bootstrap_ns.store(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        }
    }

    /// Offers a search's unit `query` for audit. The hot path's cost: a counter and a
    /// load; every `stride`-th offer copies the query into the queue when there is room
    /// (never waiting for its lock).
    #[inline]
    pub fn offer(&self, query: &[f32], k: usize, filter: &Filter) {
        if !self.auditor_running.load(Ordering::Relaxed) {
            return;
        }
        let n = self.offers.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(self.stride.load(Ordering::Relaxed).max(1)) {
            return;
        }
        self.enqueue(query, k, filter);
    }

    #[cold]
    fn enqueue(&self, query: &[f32], k: usize, filter: &Filter) {
        let Some(mut q) = self.queue.try_lock() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if q.len() >= QUEUE_CAPACITY {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let s = self.stride.load(Ordering::Relaxed);
            self.stride.store((s * 2).min(MAX_STRIDE), Ordering::Relaxed);
            return;
        }
        q.push_back(Sample { query: query.to_vec(), k, filter: filter.clone(), epoch: self.epoch() });
        drop(q);
        self.wake.notify_one();
    }

    /// The next sample, waiting for one; None once stopped. Finding the queue empty
    /// halves the stride (the auditor has time for more).
    fn next_sample(&self) -> Option<Sample> {
        let mut q = self.queue.lock();
        let mut waited = false;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            if let Some(s) = q.pop_front() {
                if waited {
                    let s = self.stride.load(Ordering::Relaxed);
                    self.stride.store((s / 2).max(1), Ordering::Relaxed);
                }
                return Some(s);
            }
            waited = true;
            self.wake.wait_for(&mut q, Duration::from_millis(500));
        }
    }

    /// Stops the auditor (at close); no other starts after.
    pub fn stop_auditor(&self) {
        self.stop.store(true, Ordering::Release);
        let _q = self.queue.lock();
        self.wake.notify_all();
    }

    /// The median time of one graph search at width `ef` in the current window (ms).
    pub fn graph_ms_at(&self, ef: usize) -> Option<f64> {
        let ev = self.evidence.lock();
        let i = ev.ladder.iter().position(|&e| e == ef)?;
        ev.graph_secs[i].median().map(|s| s * 1e3)
    }

    pub fn report(&self) -> RecallReport {
        let ev = self.evidence.lock();
        let ladder = ev
            .ladder
            .iter()
            .enumerate()
            .map(|(i, &ef)| RungReport {
                ef,
                samples: ev.recall[i].len(),
                mean: ev.recall[i].mean(),
                stderr: ev.recall[i].stderr(),
                graph_ms: ev.graph_secs[i].median().map(|s| s * 1e3),
            })
            .collect();
        let busy = self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        let paused_until = self.paused_until_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        let elapsed = self.auditor_started.lock().map_or(0.0, |t| t.elapsed().as_secs_f64().max(paused_until));
        let bootstraps = self.bootstraps.load(Ordering::Relaxed);
        RecallReport {
            target: ev.target,
            verdict: ev.verdict,
            ladder,
            exact_ms: ev.exact_ms(),
            offered: self.offers.load(Ordering::Relaxed),
            evaluated: self.evaluated.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            sample_every: self.stride.load(Ordering::Relaxed),
            auditor_share: if elapsed > 0.0 { (busy / elapsed).min(1.0) } else { 0.0 },
            bootstraps,
            bootstrap_ms: (bootstraps > 0).then(|| self.bootstrap_ns.load(Ordering::Relaxed) as f64 * 1e-6),
        }
    }
}

/// Starts the engine's auditor thread unless it runs (or the engine closed). The thread
/// holds the state and the guard until `stop_auditor`.
pub fn ensure_auditor(state: &Arc<RwLock<State>>, guard: &Arc<RecallGuard>) {
    if guard.stop.load(Ordering::Acquire) || guard.auditor_running.swap(true, Ordering::AcqRel) {
        return;
    }
    let (state, g) = (Arc::clone(state), Arc::clone(guard));
    let spawned = std::thread::Builder::new().name("ferromem-recall".into()).spawn(move || run_auditor(&state, &g));
    if spawned.is_err() {
        // No thread to be had: no live samples; the bootstrap's verdict stands.
        guard.auditor_running.store(false, Ordering::Release);
    }
}

/// The auditor: audits each sample under one state read lock, records it, then sleeps so
/// that its busy time stays within `AUDITOR_CPU_SHARE` of one core. Its busy time counts
/// the exact scan once per core the scan may use (an upper bound of the CPU it took).
pub fn run_auditor(state: &RwLock<State>, guard: &RecallGuard) {
    let started = Instant::now();
    *guard.auditor_started.lock() = Some(started);
    while let Some(sample) = guard.next_sample() {
        let ladder = guard.ladder();
        let t = Instant::now();
        let audit = state.read().audit(&sample.query, sample.k, &sample.filter, &ladder);
        let wall = t.elapsed().as_secs_f64();
        let extra_cores = crate::fork::threads().saturating_sub(1) as f64;
        let busy = wall + audit.as_ref().and_then(|a| a.exact_secs).unwrap_or(0.0) * extra_cores;
        guard.busy_ns.fetch_add((busy * 1e9) as u64, Ordering::Relaxed);
        if let Some(a) = audit {
            guard.record(sample.epoch, &[a]);
        }
        let mut pause = Duration::from_secs_f64(busy * (1.0 / AUDITOR_CPU_SHARE - 1.0));
        let until = started.elapsed() + pause;
        guard.paused_until_ns.store(until.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        while !pause.is_zero() {
            if guard.stop.load(Ordering::Acquire) {
                break;
            }
            let step = pause.min(STOP_POLL);
            std::thread::sleep(step);
            pause -= step;
        }
    }
    guard.auditor_running.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(ef: usize, mean: f64, stderr: f64, graph_ms: f64) -> RungEstimate {
        RungEstimate { ef, samples: 64, mean, stderr, graph_ms }
    }

    #[test]
    fn ladder_doubles_from_ef_search_to_its_cap() {
        assert_eq!(ladder(96), vec![96, 192, 384, 768]);
        assert_eq!(ladder(8), vec![8, 16, 32, 64, 128]);
        assert_eq!(ladder(64), vec![64, 128, 256, 512, 1024]);
        assert_eq!(ladder(2000), vec![2000]);
        assert_eq!(ladder(0), vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn recall_counts_ties_at_the_kth_place() {
        let exact = [(0.9, 1), (0.8, 2), (0.7, 3)];
        assert_eq!(recall_at_k(&[(0.9, 1), (0.8, 2), (0.7, 3)], &exact), 1.0);
        assert_eq!(recall_at_k(&[(0.9, 1), (0.6, 9), (0.5, 8)], &exact), 1.0 / 3.0);
        // Another record at the k-th score is as right as the one the scan kept.
        assert_eq!(recall_at_k(&[(0.9, 1), (0.8, 2), (0.7, 7)], &exact), 1.0);
        // Only the first |exact| results count.
        assert_eq!(recall_at_k(&[(0.9, 1), (0.6, 9), (0.5, 8), (0.8, 2), (0.7, 3)], &exact), 1.0 / 3.0);
        assert_eq!(recall_at_k(&[], &[]), 1.0);
    }

    #[test]
    fn ladder_picks_the_smallest_width_confidently_at_the_target() {
        let rungs = [rung(96, 0.90, 0.01, 0.3), rung(192, 0.96, 0.01, 0.5), rung(384, 0.99, 0.005, 0.9)];
        // 192: 0.96 - 0.02 = 0.94 < 0.95; 384: 0.98 >= 0.95.
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 2 });
        let rungs = [rung(96, 0.90, 0.01, 0.3), rung(192, 0.98, 0.01, 0.5), rung(384, 0.99, 0.005, 0.9)];
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 1 });
        assert_eq!(decide(Verdict::Exact, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 1 });
    }

    #[test]
    fn exact_when_no_width_reaches_the_target() {
        let rungs = [rung(96, 0.11, 0.01, 0.3), rung(192, 0.2, 0.01, 0.5), rung(384, 0.4, 0.01, 0.9)];
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Exact);
        // A serving width confidently below the target leaves.
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Exact);
    }

    #[test]
    fn exact_when_the_graph_is_slower() {
        let rungs = [rung(96, 0.99, 0.001, 3.0), rung(192, 1.0, 0.0, 5.0)];
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Exact);
        // Faster, but not by the entry margin: stays exact.
        let rungs = [rung(96, 0.99, 0.001, 1.95)];
        assert_eq!(decide(Verdict::Exact, &rungs, Some(2.0), 0.95), Verdict::Exact);
        // Serving already at that time: keeps serving (hysteresis) until slower than exact.
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 0 });
        let rungs = [rung(96, 0.99, 0.001, 2.05)];
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Exact);
        // A high recall higher up the ladder does not help when it costs more than exact.
        let rungs = [rung(96, 0.5, 0.01, 0.5), rung(192, 0.99, 0.001, 2.5)];
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Exact);
    }

    #[test]
    fn unknown_without_enough_evidence() {
        let mut rungs = [rung(96, 1.0, 0.0, 0.1)];
        rungs[0].samples = MIN_SAMPLES - 1;
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Unknown);
        rungs[0].samples = MIN_SAMPLES;
        assert_eq!(decide(Verdict::Unknown, &rungs, None, 0.95), Verdict::Unknown);
        assert_eq!(decide(Verdict::Unknown, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 0 });
    }

    #[test]
    fn hysteresis_enters_above_and_leaves_below_the_band() {
        let at = |mean: f64| [rung(96, mean, 0.01, 0.3)];
        // Entering needs mean - 0.02 >= 0.95.
        assert_eq!(decide(Verdict::Exact, &at(0.965), Some(2.0), 0.95), Verdict::Exact);
        assert_eq!(decide(Verdict::Exact, &at(0.97), Some(2.0), 0.95), Verdict::Graph { rung: 0 });
        // Serving, it stays while mean + 0.02 >= 0.95, leaves below.
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &at(0.935), Some(2.0), 0.95), Verdict::Graph { rung: 0 });
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &at(0.925), Some(2.0), 0.95), Verdict::Exact);
    }

    #[test]
    fn a_serving_width_moves_down_only_to_a_qualifying_one_and_up_only_when_it_fails() {
        // Serving at 192; 96 now qualifies: the cheaper one serves.
        let rungs = [rung(96, 0.98, 0.005, 0.3), rung(192, 0.99, 0.005, 0.5)];
        assert_eq!(decide(Verdict::Graph { rung: 1 }, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 0 });
        // Serving at 96, inside the band; 192 qualifies but 96 holds: no move.
        let rungs = [rung(96, 0.945, 0.005, 0.3), rung(192, 0.99, 0.005, 0.5)];
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 0 });
        // 96 confidently below: up to 192.
        let rungs = [rung(96, 0.92, 0.005, 0.3), rung(192, 0.99, 0.005, 0.5)];
        assert_eq!(decide(Verdict::Graph { rung: 0 }, &rungs, Some(2.0), 0.95), Verdict::Graph { rung: 1 });
    }

    /// A deterministic stream of per-query recalls with a given mean (0/1 outcomes of a
    /// linear congruential generator): what the auditor sees of a graph.
    fn stream(mean: f64, n: usize, seed: &mut u64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (*seed >> 11) as f64 / (1u64 << 53) as f64;
                // Per-query recall@10: 1.0 mostly, 0.9 otherwise, giving `mean`.
                if u < (1.0 - mean) * 10.0 {
                    0.9
                } else {
                    1.0
                }
            })
            .collect()
    }

    fn audit(recall: f64) -> Audit {
        Audit { recall: vec![recall], graph_secs: vec![0.0003], exact_secs: Some(0.002) }
    }

    #[test]
    fn no_flapping_around_the_target() {
        // A graph whose true recall sits exactly at the target: either verdict is right,
        // but it must not switch back and forth as the window's mean wanders around the
        // target (which a plain `mean >= target` rule does all the time).
        let guard = RecallGuard::new(2000, 0.95);
        let epoch = guard.epoch();
        let mut seed = 42;
        let (mut switches, mut naive_switches) = (Vec::new(), 0);
        let (mut last, mut naive_last) = (guard.verdict(), None);
        let mut window = Window::default();
        for (i, r) in stream(0.95, 20_000, &mut seed).into_iter().enumerate() {
            guard.record(epoch, &[audit(r)]);
            let v = guard.verdict();
            if v != last && last != Verdict::Unknown {
                switches.push(i);
            }
            last = v;
            window.push(r);
            let naive = window.len() >= MIN_SAMPLES && window.mean().unwrap() >= 0.95;
            if naive_last.is_some_and(|n| n != naive) {
                naive_switches += 1;
            }
            naive_last = Some(naive);
        }
        assert!(naive_switches > 100, "the stream does wander around the target: {naive_switches}");
        // A switch takes the window's mean across a band of four standard errors: a
        // twentieth of the plain rule's switches at most, and never two close together.
        assert!(switches.len() * 20 <= naive_switches, "{switches:?} against {naive_switches}");
        assert!(switches.windows(2).all(|w| w[1] - w[0] >= WINDOW / 2), "{switches:?}");
    }

    #[test]
    fn enters_and_leaves_on_the_right_side_of_the_target() {
        let guard = RecallGuard::new(2000, 0.95);
        let epoch = guard.epoch();
        let mut seed = 7;
        for r in stream(0.99, 300, &mut seed) {
            guard.record(epoch, &[audit(r)]);
        }
        assert_eq!(guard.verdict(), Verdict::Graph { rung: 0 });
        assert_eq!(guard.route(), Some(2000));
        // The graph degrades (the store's queries changed): the guard leaves within a
        // window, and never while the estimate's upper bound is at the target.
        let mut left_after = None;
        for (i, r) in stream(0.90, 400, &mut seed).into_iter().enumerate() {
            guard.record(epoch, &[audit(r)]);
            if guard.verdict() == Verdict::Exact {
                left_after = Some(i);
                break;
            }
        }
        let left_after = left_after.expect("left the graph");
        assert!(left_after < WINDOW, "{left_after}");
        assert_eq!(guard.route(), None);
        // A target the graph does reach brings it back.
        guard.set_target(0.5);
        assert_eq!(guard.verdict(), Verdict::Graph { rung: 0 });
    }

    #[test]
    fn a_reset_voids_the_evidence_and_older_audits() {
        let guard = RecallGuard::new(2000, 0.95);
        let old = guard.epoch();
        for _ in 0..MIN_SAMPLES {
            guard.record(old, &[audit(1.0)]);
        }
        assert_eq!(guard.verdict(), Verdict::Graph { rung: 0 });
        assert!(!guard.needs_bootstrap());
        guard.reset();
        assert_eq!((guard.verdict(), guard.route()), (Verdict::Unknown, None));
        assert!(guard.needs_bootstrap());
        guard.record(old, &vec![audit(1.0); MIN_SAMPLES]);
        assert_eq!(guard.verdict(), Verdict::Unknown);
        // Another ladder voids it too; the same one does not.
        guard.record(guard.epoch(), &vec![audit(1.0); MIN_SAMPLES]);
        guard.configure(2000);
        assert_eq!(guard.verdict(), Verdict::Graph { rung: 0 });
        guard.configure(96);
        assert_eq!(guard.verdict(), Verdict::Unknown);
        assert_eq!(guard.report().ladder.len(), 4);
    }

    #[test]
    fn offers_are_dropped_when_the_queue_is_full_and_the_stride_grows() {
        let guard = RecallGuard::default();
        let f = Filter::default();
        guard.offer(&[1.0, 0.0], 10, &f);
        assert_eq!(guard.report().offered, 0, "no auditor: nothing offered");
        guard.auditor_running.store(true, Ordering::Relaxed);
        for _ in 0..QUEUE_CAPACITY + 3 {
            guard.offer(&[1.0, 0.0], 10, &f);
        }
        let r = guard.report();
        assert_eq!(guard.queue.lock().len(), QUEUE_CAPACITY);
        assert!(r.dropped >= 1 && r.sample_every >= 2, "{r:?}");
        // The auditor drains the queue; when it then has to wait for a sample, the
        // stride halves (it has time for more).
        let stride = r.sample_every;
        for _ in 0..QUEUE_CAPACITY {
            guard.next_sample().expect("sample");
        }
        let g = &guard;
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                // Enough offers that one of them is sampled at the current stride.
                while g.queue.lock().is_empty() {
                    g.offer(&[1.0, 0.0], 10, &Filter::default());
                }
            });
            g.next_sample().expect("sample");
        });
        assert_eq!(guard.report().sample_every, stride / 2);
        guard.stop_auditor();
        assert!(guard.next_sample().is_none());
    }
}
