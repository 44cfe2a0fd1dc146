//! Routing exact searches: the planner's choice of path per call (see [`crate::planner`]),
//! the device searches may run on (see [`crate::device`]), and `explain`.

use super::{unit_queries, validate_vectors, Engine};
use crate::device::{CandidateDevice, DeviceScorer, DeviceStats};
use crate::filter::Filter;
use crate::planner::{Call, CpuCosts, Decision, DeviceCosts, Planner, Policy, Route};
use crate::scorer::{RowsView, Scorer};
use crate::state::{Hit, State};
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// How a search was served, for `explain`.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// "cpu-one", "cpu-batch", "gpu-exact", or "graph" when the graph served.
    pub path: String,
    pub reason: String,
    pub policy: Policy,
    pub nq: usize,
    /// Rows an exact search scored (the filter's candidates), None when the graph served.
    pub rows: Option<usize>,
    /// Each eligible exact route's predicted time (ns), cheapest first (empty when the
    /// graph served).
    pub predicted: Vec<(Route, f64)>,
    pub observed_ns: f64,
    pub device: Option<String>,
}

/// An exact search's route, decided under the state's read lock.
struct Routed {
    decision: Decision,
    call: Call,
    device: Option<Arc<DeviceScorer>>,
}

impl Engine {
    /// The policy searches use when the call names none.
    pub fn policy(&self) -> Policy {
        match self.policy.load(Ordering::Relaxed) {
            x if x == Policy::Cpu as u8 => Policy::Cpu,
            x if x == Policy::Gpu as u8 => Policy::Gpu,
            _ => Policy::Auto,
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(policy as u8, Ordering::Relaxed);
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Sets the CPU constants of the cost model (from `planner::calibrate_cpu`, or a cache
    /// of it).
    pub fn set_cpu_costs(&self, costs: CpuCosts) {
        self.planner.set_cpu_costs(costs);
    }

    /// Attaches a device (its calibrated costs; without them `auto` does not pick it), or
    /// detaches it (None). Its mirror is filled at its first search.
    pub fn attach_device(&self, device: Option<Box<dyn CandidateDevice>>, costs: Option<DeviceCosts>) {
        let attached = device.map(|d| (Arc::new(DeviceScorer::new(d)), crate::fork::generation()));
        self.planner.set_device_costs(attached.as_ref().and(costs));
        *self.device.write() = attached;
    }

    pub fn device_stats(&self) -> Option<DeviceStats> {
        self.device.read().as_ref().map(|(d, _)| d.stats())
    }

    /// The attached device when it can search this state, else why not.
    fn device_for(&self, st: &State) -> std::result::Result<Arc<DeviceScorer>, String> {
        let guard = self.device.read();
        let Some((device, forks)) = guard.as_ref() else {
            return Err("no device is attached to this store (ferromem.gpu found none, or device='cpu' at open)".into());
        };
        if *forks != crate::fork::generation() {
            return Err("the device was attached before this process forked; a CUDA context does not survive fork()".into());
        }
        if st.precision.reranked() {
            return Err(format!("a device does not mirror {} rows (use precision 'f32' or 'f16')", st.precision.name()));
        }
        Ok(Arc::clone(device))
    }

    /// The route of an exact search of `nq` queries with `filter`, or None when the graph
    /// serves it. A device route has its mirror in step when this returns.
    fn route(&self, st: &State, nq: usize, k: usize, filter: &Filter, policy: Policy, each: bool) -> Result<Option<Routed>> {
        let Some(rows) = st.exact_rows(filter) else { return Ok(None) };
        let dim = st.dim.unwrap_or(0);
        let device = if policy == Policy::Cpu { Err("device policy 'cpu'".to_string()) } else { self.device_for(st) };
        let view = RowsView { state: st };
        let behind = device.as_ref().map_or(0, |d| d.rows_behind(&view));
        let call = Call { nq, rows, dim, k, each, behind };
        let mut decision = self
            .planner
            .choose(&call, policy, device.as_ref().map(|_| ()).map_err(String::as_str))
            .map_err(|why| Error::Device(gpu_refused(&why)))?;
        let mut chosen_device = None;
        if decision.route == Route::Device {
            let d = device.expect("the planner routes to a device only when one is attached");
            match d.sync(&view) {
                Ok(()) => chosen_device = Some(d),
                Err(why) if policy == Policy::Gpu => return Err(Error::Device(format!("the device cannot search this store: {why}"))),
                Err(why) => {
                    let fallback = if nq > 1 && !each { Route::CpuBatch } else { Route::CpuOne };
                    decision = Decision {
                        route: fallback,
                        predicted: decision.predicted,
                        reason: format!("the device failed ({why}); answered on the CPU"),
                    };
                }
            }
        }
        Ok(Some(Routed { decision, call, device: chosen_device }))
    }

    /// An exact-or-graph search of `nq` unit queries under the read lock `st`, routed by the
    /// planner; `each`: every query's answer bit-identical to its own scan. Returns the
    /// results and the route taken (None: the graph served, or planning was not needed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn search_routed(
        &self,
        st: &State,
        queries: &[f32],
        nq: usize,
        k: usize,
        filter: &Filter,
        min_score: Option<f32>,
        policy: Policy,
        each: bool,
        force_plan: bool,
    ) -> Result<(Vec<Vec<Hit>>, Option<Decision>)> {
        let scorer = self.scorer();
        // One query without a device has one path: no planning on the hot path.
        let trivial = nq == 1 && policy != Policy::Gpu && self.device.read().is_none();
        if trivial && !force_plan {
            return Ok((st.search(&*scorer, queries, nq, k, filter, min_score), None));
        }
        let Some(routed) = self.route(st, nq, k, filter, policy, each)? else {
            return Ok((st.search(&*scorer, queries, nq, k, filter, min_score), None));
        };
        let t = Instant::now();
        let results = match (routed.decision.route, &routed.device) {
            (Route::Device, Some(d)) => st.search(&**d as &dyn Scorer, queries, nq, k, filter, min_score),
            (Route::CpuBatch, _) => st.search(&*scorer, queries, nq, k, filter, min_score),
            _ => st.search_each(&*scorer, queries, nq, k, filter, min_score),
        };
        self.planner.observe(routed.decision.route, &routed.call, t.elapsed().as_nanos() as f64);
        Ok((results, Some(routed.decision)))
    }

    /// Searches as [`Engine::search_with_policy`] does, without the result cache or
    /// coalescing, and says how: the path, why, each route's predicted time and the
    /// observed one.
    pub fn explain(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        filter: &Filter,
        min_score: Option<f32>,
        policy: Option<Policy>,
    ) -> Result<(Vec<Vec<Hit>>, Explanation)> {
        if k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".into()));
        }
        validate_vectors(queries, dim)?;
        let unit = unit_queries(queries, dim);
        let nq = unit.len() / dim;
        let policy = policy.unwrap_or_else(|| self.policy());
        self.check_open()?;
        self.catch_up()?;
        let st = self.state.read();
        st.check_dim(dim)?;
        if policy == Policy::Gpu {
            self.device_for(&st).map_err(|why| Error::Device(gpu_refused(&why)))?;
        }
        let t = Instant::now();
        let (results, decision) = self.search_routed(&st, &unit, nq, k, filter, min_score, policy, false, true)?;
        let observed_ns = t.elapsed().as_nanos() as f64;
        let device = self.device.read().as_ref().map(|(d, _)| d.name().to_string());
        let explanation = match decision {
            Some(d) => Explanation {
                path: d.route.name().to_string(),
                reason: d.reason,
                policy,
                nq,
                rows: st.exact_rows(filter),
                predicted: d.predicted,
                observed_ns,
                device,
            },
            None => Explanation {
                path: if st.is_empty() { "empty".into() } else { "graph".into() },
                reason: if st.is_empty() {
                    "the store holds no record".into()
                } else {
                    format!("the index mode ({}) serves this search from the graph", st.index.mode.name())
                },
                policy,
                nq,
                rows: None,
                predicted: Vec::new(),
                observed_ns,
                device,
            },
        };
        Ok((results, explanation))
    }
}

/// The error of a search that policy "gpu" cannot run.
fn gpu_refused(why: &str) -> String {
    format!("device policy 'gpu' cannot be met: {why}")
}
