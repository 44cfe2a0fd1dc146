//! Routing exact searches: the planner's choice of path per call (see [`crate::planner`]),
//! the device searches may run on (see [`crate::device`]), and `explain`.

use super::Engine;
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
    /// The graph would serve, but the device's exact scan was chosen instead.
    instead_of_graph: bool,
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
        let dim = st.dim.unwrap_or(0);
        let device = if policy == Policy::Cpu { Err("device policy 'cpu'".to_string()) } else { self.device_for(st) };
        let view = RowsView { state: st };
        let behind = device.as_ref().map_or(0, |d| d.rows_behind(&view));
        let rows = match st.exact_rows(filter) {
            Some(rows) => rows,
            None => return self.route_instead_of_graph(st, nq, k, filter, policy, each, device.ok(), behind),
        };
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
        Ok(Some(Routed { decision, call, device: chosen_device, instead_of_graph: false }))
    }

    /// When the recall guard lets the graph serve (`index="auto"`): the device's exact scan
    /// instead, under policy "gpu", or under "auto" when it is predicted cheaper than the
    /// graph's measured time by more than the hysteresis margin (exact is then both faster
    /// and better). None: the graph serves.
    #[allow(clippy::too_many_arguments)]
    fn route_instead_of_graph(
        &self,
        st: &State,
        nq: usize,
        k: usize,
        filter: &Filter,
        policy: Policy,
        each: bool,
        device: Option<Arc<DeviceScorer>>,
        behind: usize,
    ) -> Result<Option<Routed>> {
        let (Some(device), Some((ef, graph_ms))) = (device, st.auto_graph_serving(filter)) else { return Ok(None) };
        let rows = st.filter_rows(filter);
        let call = Call { nq, rows, dim: st.dim.unwrap_or(0), k, each, behind };
        let device_ns = self.planner.predict(Route::Device, &call);
        let graph_ns = graph_ms.map_or(f64::INFINITY, |ms| ms * 1e6 * nq as f64);
        let reason = match policy {
            Policy::Gpu => format!("device policy 'gpu': an exact scan on the device instead of the graph (ef {ef})"),
            _ if device_ns < graph_ns * (1.0 - crate::planner::HYSTERESIS) => format!(
                "the device's exact scan is predicted cheaper ({:.3} ms) than the graph at ef {ef} measured by the recall guard ({:.3} ms)",
                device_ns / 1e6,
                graph_ns / 1e6
            ),
            _ => return Ok(None),
        };
        match device.sync(&RowsView { state: st }) {
            Ok(()) => {}
            Err(why) if policy == Policy::Gpu => return Err(Error::Device(format!("the device cannot search this store: {why}"))),
            Err(_) => return Ok(None),
        }
        let decision = Decision { route: Route::Device, predicted: vec![(Route::Device, device_ns)], reason };
        Ok(Some(Routed { decision, call, device: Some(device), instead_of_graph: true }))
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
            (Route::Device, Some(d)) if routed.instead_of_graph => {
                st.search_exact_only(&**d as &dyn Scorer, queries, nq, k, filter, min_score, each)
            }
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
        let unit = super::search::checked_queries(queries, dim, k, min_score)?;
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
                reason: if st.is_empty() { "the store holds no record".into() } else { graph_reason(&st, filter) },
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

/// Why the graph served: the index mode, and under "auto" the recall guard's estimate at
/// the width it serves.
fn graph_reason(st: &State, filter: &Filter) -> String {
    match st.auto_graph_serving(filter) {
        Some((ef, graph_ms)) => {
            let report = st.guard().report();
            let rung = report.ladder.iter().find(|r| r.ef == ef);
            let estimate = match rung.and_then(|r| Some((r.mean?, r.stderr?, r.samples))) {
                Some((mean, stderr, n)) => format!("recall@k {mean:.3} +- {stderr:.3} over {n} audits"),
                None => "no audit yet".into(),
            };
            format!(
                "the recall guard lets the graph serve at ef {ef}: {estimate}, target {:.2}; graph {} ms against exact {} ms measured",
                report.target,
                graph_ms.map_or("?".into(), |m| format!("{m:.3}")),
                report.exact_ms.map_or("?".into(), |m| format!("{m:.3}"))
            )
        }
        None => format!("index mode '{}' serves this search from the graph", st.index.mode.name()),
    }
}

/// The error of a search that policy "gpu" cannot run.
fn gpu_refused(why: &str) -> String {
    format!("device policy 'gpu' cannot be met: {why}")
}
