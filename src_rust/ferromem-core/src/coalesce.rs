//! Coalescing of concurrent single-query searches into batches.
//!
//! An exact scan of a large store is bound by memory bandwidth: eight threads each scanning
//! 600 MB for their own query read 4.8 GB, where one pass of the multi-query kernel
//! (`simd::dot_rows_multi`) reads the rows once for all eight. So concurrent single-query
//! scans queue here and run as one batch: the first caller that finds no batch running
//! takes everything queued and runs it; callers arriving meanwhile queue for the next
//! batch. The wait is bounded by one batch in flight, and a lone caller never waits (it
//! runs its own batch at once). Searches of small stores, and graph searches (random
//! access per query, nothing to share), do not come here.
//!
//! Jobs are grouped by (k, filter, min_score): each group is one `State::search` call.

use crate::filter::Filter;
use crate::state::Hit;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

/// One caller's search, and where its answer goes.
pub struct Job {
    pub query: Vec<f32>,
    pub k: usize,
    pub filter: Filter,
    pub min_score: Option<f32>,
    answer: Mutex<Option<Vec<Hit>>>,
    /// The replica position (epoch, seq, search generation) the answer was computed at,
    /// for callers that finish the answer themselves (int8 re-ranking).
    position: Mutex<Option<(u64, u64, u64)>>,
}

impl Job {
    pub fn new(query: Vec<f32>, k: usize, filter: Filter, min_score: Option<f32>) -> Arc<Job> {
        Arc::new(Job { query, k, filter, min_score, answer: Mutex::new(None), position: Mutex::new(None) })
    }

    /// Whether `other` can share a `State::search` call with this job.
    pub fn same_search(&self, other: &Job) -> bool {
        self.k == other.k && self.min_score.map(f32::to_bits) == other.min_score.map(f32::to_bits) && self.filter == other.filter
    }

    pub fn answer(&self, hits: Vec<Hit>) {
        *self.answer.lock() = Some(hits);
    }

    /// Records the replica position the answer is computed at (before `answer`).
    pub fn set_position(&self, epoch: u64, seq: u64, generation: u64) {
        *self.position.lock() = Some((epoch, seq, generation));
    }

    /// The position `set_position` recorded; None when the batch did not record one
    /// (it failed before answering).
    pub fn position(&self) -> Option<(u64, u64, u64)> {
        *self.position.lock()
    }
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Arc<Job>>,
    running: bool,
}

#[derive(Default)]
pub struct Coalescer {
    queue: Mutex<Queue>,
    done: Condvar,
}

/// Groups of jobs that share one search, in arrival order.
pub fn group(batch: &[Arc<Job>]) -> Vec<Vec<Arc<Job>>> {
    let mut groups: Vec<Vec<Arc<Job>>> = Vec::new();
    for job in batch {
        match groups.iter_mut().find(|g| g[0].same_search(job)) {
            Some(g) => g.push(Arc::clone(job)),
            None => groups.push(vec![Arc::clone(job)]),
        }
    }
    groups
}

impl Coalescer {
    /// Queues `job` and returns its hits: either this caller runs a batch that holds it
    /// (`run` must answer every job it is given, also on error paths) or another caller's
    /// batch answers it. Returns the batch size the job ran in.
    pub fn submit(&self, job: Arc<Job>, run: impl Fn(&[Arc<Job>])) -> (Vec<Hit>, usize) {
        let mut q = self.queue.lock();
        q.jobs.push(Arc::clone(&job));
        loop {
            if let Some(hits) = job.answer.lock().take() {
                return (hits, 0);
            }
            if !q.running {
                q.running = true;
                let batch = std::mem::take(&mut q.jobs);
                drop(q);
                // Answers every job even if `run` panics, so no caller waits forever.
                let guard = RunGuard { coalescer: self, batch: &batch };
                run(&batch);
                drop(guard);
                let n = batch.len();
                if let Some(hits) = job.answer.lock().take() {
                    return (hits, n);
                }
                q = self.queue.lock();
                continue;
            }
            self.done.wait(&mut q);
        }
    }
}

/// Ends a batch: marks the coalescer free and wakes every waiter. On a panic in `run`, the
/// jobs it left unanswered get an empty answer (the panic itself propagates to the
/// caller that ran the batch).
struct RunGuard<'a> {
    coalescer: &'a Coalescer,
    batch: &'a [Arc<Job>],
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for job in self.batch {
                let mut a = job.answer.lock();
                if a.is_none() {
                    *a = Some(Vec::new());
                }
            }
        }
        let mut q = self.coalescer.queue.lock();
        q.running = false;
        drop(q);
        self.coalescer.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_is_answered_once_with_its_own_result_and_batches_form() {
        let c = Coalescer::default();
        let batches = AtomicUsize::new(0);
        let biggest = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..64 {
                let (c, batches, biggest) = (&c, &batches, &biggest);
                s.spawn(move || {
                    for i in 0..50 {
                        let k = 1 + (t % 3);
                        let job = Job::new(vec![t as f32, i as f32], k, Filter::default(), None);
                        let (hits, _) = c.submit(job, |batch| {
                            batches.fetch_add(1, Ordering::Relaxed);
                            biggest.fetch_max(batch.len(), Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            for g in group(batch) {
                                assert!(g.iter().all(|j| j.k == g[0].k));
                                for j in g {
                                    j.answer(vec![(Arc::from(format!("{}-{}", j.query[0], j.query[1])), j.k as f32)]);
                                }
                            }
                        });
                        assert_eq!(hits, vec![(Arc::from(format!("{t}-{i}")), k as f32)]);
                    }
                });
            }
        });
        assert!(batches.load(Ordering::Relaxed) < 64 * 50, "no batch formed");
        assert!(biggest.load(Ordering::Relaxed) > 1);
    }
}
