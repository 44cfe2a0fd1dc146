//! The search planner: which path serves an exact search, chosen per call from a cost model
//! whose constants are measured on this machine.
//!
//! Paths ([`Route`]): the CPU scan query by query (`CpuOne`: each query scored by the
//! single-query kernels, sharing each block of rows while it is in cache; what coalesced
//! single queries need, since they must be bit-identical to their own scan), the CPU batch
//! kernel (`CpuBatch`: one pass, several queries per row), and a device's candidates proved
//! on the host (`Device`, see [`crate::device`]). Whether the graph serves instead of an
//! exact scan is the recall guard's decision (it needs recall, which a cost model cannot
//! give); the planner prices the exact side.
//!
//! Model, in nanoseconds, with `v = rows x dim` values scanned and `nq` queries:
//! * `CpuOne`   = nq (call + v one_value)
//! * `CpuBatch` = call + v (pass_value + nq batch_value)
//! * `Device`   = device.call + nq dim device.query_value + nq v device.value
//!   + behind dim device.sync_value + nq (k + extra) dim one_value (the host's proof)
//!
//! The CPU constants are fitted by [`calibrate_cpu`] (a short timing of the real kernels on
//! synthetic rows; the caller caches them on disk keyed by hardware and software), the
//! device's by its own calibration (Python's `ferromem.gpu`). Each route's observed times
//! then scale its prediction for that kind of call (a bounded running ratio per size
//! bucket), and a route chosen for a kind of call stays chosen until another is predicted cheaper by a margin ([`HYSTERESIS`]), so
//! noise near a crossover does not flap between paths.

use crate::device::DEVICE_EXTRA;
use crate::record::Record;
use crate::scorer::{CpuScorer, Plan, RowsView, Scorer};
use crate::state::State;
use crate::vectors::Precision;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    CpuOne,
    CpuBatch,
    Device,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::CpuOne, Route::CpuBatch, Route::Device];

    pub fn parse(s: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::CpuOne => "cpu-one",
            Route::CpuBatch => "cpu-batch",
            Route::Device => "gpu-exact",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which devices a search may use: the planner's choice, the CPU only, or the device only
/// (an error when there is none or it cannot hold the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Auto,
    Cpu,
    Gpu,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "auto" => Some(Policy::Auto),
            "cpu" => Some(Policy::Cpu),
            "gpu" => Some(Policy::Gpu),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Cpu => "cpu",
            Policy::Gpu => "gpu",
        }
    }
}

/// What the planner knows of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub nq: usize,
    /// Rows the filter leaves to score (every live row without a filter).
    pub rows: usize,
    pub dim: usize,
    pub k: usize,
    /// Every query must get its own scan's answer bit for bit (coalesced single queries):
    /// the batch kernel is not allowed.
    pub each: bool,
    /// Rows the device's mirror lacks (sent before it can search).
    pub behind: usize,
}

/// The CPU constants (ns); see the module doc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuCosts {
    pub call: f64,
    pub one_value: f64,
    pub pass_value: f64,
    pub batch_value: f64,
}

/// The device constants (ns); see the module doc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceCosts {
    pub call: f64,
    pub query_value: f64,
    pub value: f64,
    pub sync_value: f64,
}

/// A table of cost constants by name: what crosses to Python (stats, the calibration
/// cache) and back, so the names are spelled once, here.
pub trait NamedCosts: Sized {
    const NAMES: [&'static str; 4];
    fn values(&self) -> [f64; 4];
    fn from_values(values: [f64; 4]) -> Self;
}

impl NamedCosts for CpuCosts {
    const NAMES: [&'static str; 4] = ["call", "one_value", "pass_value", "batch_value"];
    fn values(&self) -> [f64; 4] {
        [self.call, self.one_value, self.pass_value, self.batch_value]
    }
    fn from_values([call, one_value, pass_value, batch_value]: [f64; 4]) -> Self {
        CpuCosts { call, one_value, pass_value, batch_value }
    }
}

impl NamedCosts for DeviceCosts {
    const NAMES: [&'static str; 4] = ["call", "query_value", "value", "sync_value"];
    fn values(&self) -> [f64; 4] {
        [self.call, self.query_value, self.value, self.sync_value]
    }
    fn from_values([call, query_value, value, sync_value]: [f64; 4]) -> Self {
        DeviceCosts { call, query_value, value, sync_value }
    }
}

impl CpuCosts {
    /// Until a calibration is loaded: measured on a 2-core AVX2 x86-64 (see
    /// `calibrate_cpu`), so the first calls are planned sensibly.
    pub const DEFAULT: CpuCosts = CpuCosts { call: 4_000.0, one_value: 0.12, pass_value: 0.06, batch_value: 0.03 };
}

/// A route chosen for a call, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub route: Route,
    /// Each eligible route's predicted time (ns), cheapest first.
    pub predicted: Vec<(Route, f64)>,
    pub reason: String,
}

impl Decision {
    pub fn predicted_ns(&self) -> f64 {
        self.predicted.iter().find(|p| p.0 == self.route).map_or(f64::NAN, |p| p.1)
    }
}

/// A route must be predicted this much cheaper than the one a kind of call last took
/// before the planner switches (see the module doc).
pub const HYSTERESIS: f64 = 0.15;

/// How observed times scale a route's prediction: a running ratio observed/predicted, its
/// weight per observation, and its bounds (a wild observation cannot derail the model).
const CORRECTION_WEIGHT: f64 = 0.1;
const CORRECTION_RANGE: (f64, f64) = (0.25, 4.0);

/// A kind of call for hysteresis: sizes by powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Bucket {
    nq: u32,
    rows: u32,
    dim: usize,
    k: u32,
    each: bool,
}

impl Bucket {
    fn of(c: &Call) -> Bucket {
        let log = |x: usize| usize::BITS - x.max(1).leading_zeros();
        Bucket { nq: log(c.nq), rows: log(c.rows), dim: c.dim, k: log(c.k), each: c.each }
    }
}

#[derive(Debug)]
struct Model {
    cpu: CpuCosts,
    cpu_calibrated: bool,
    device: Option<DeviceCosts>,
    /// observed / predicted per kind of call and route (see `CORRECTION_*`): the model's
    /// error depends on the size (a store in cache scans faster per value than one beyond
    /// it), so each kind of call learns its own.
    correction: HashMap<(Bucket, Route), f64>,
    chosen: HashMap<Bucket, Route>,
    counts: [u64; 3],
    /// A route every call takes when it is eligible (benchmarks of the fixed paths).
    forced: Option<Route>,
}

/// The planner of one engine (see the module doc).
#[derive(Debug)]
pub struct Planner {
    model: Mutex<Model>,
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            model: Mutex::new(Model {
                cpu: CpuCosts::DEFAULT,
                cpu_calibrated: false,
                device: None,
                correction: HashMap::new(),
                chosen: HashMap::new(),
                counts: [0; 3],
                forced: None,
            }),
        }
    }
}

/// What the planner reports in stats.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerStats {
    pub cpu: CpuCosts,
    pub cpu_calibrated: bool,
    pub device: Option<DeviceCosts>,
    /// Per route: the kinds of call with a correction, and the smallest and largest.
    pub correction: Vec<(&'static str, usize, f64, f64)>,
    pub routes: Vec<(&'static str, u64)>,
}

impl CpuCosts {
    fn predict(&self, route: Route, c: &Call) -> f64 {
        let v = (c.rows * c.dim) as f64;
        let nq = c.nq as f64;
        match route {
            Route::CpuOne => nq * (self.call + v * self.one_value),
            Route::CpuBatch => self.call + v * (self.pass_value + nq * self.batch_value),
            Route::Device => f64::INFINITY,
        }
    }
}

fn predict_device(d: &DeviceCosts, cpu: &CpuCosts, c: &Call) -> f64 {
    let (nq, dim) = (c.nq as f64, c.dim as f64);
    let v = (c.rows * c.dim) as f64;
    let proof = nq * ((c.k + DEVICE_EXTRA) as f64) * dim * cpu.one_value;
    d.call + nq * dim * d.query_value + nq * v * d.value + c.behind as f64 * dim * d.sync_value + proof
}

impl Planner {
    pub fn set_cpu_costs(&self, costs: CpuCosts) {
        let mut m = self.model.lock();
        m.cpu = costs;
        m.cpu_calibrated = true;
        m.correction.clear();
        m.chosen.clear();
    }

    /// Makes every call take `route` when it is eligible (None: the model decides again):
    /// how a benchmark measures each fixed path through the same code.
    pub fn force(&self, route: Option<Route>) {
        self.model.lock().forced = route;
    }

    pub fn cpu_calibrated(&self) -> bool {
        self.model.lock().cpu_calibrated
    }

    pub fn set_device_costs(&self, costs: Option<DeviceCosts>) {
        let mut m = self.model.lock();
        m.device = costs;
        m.correction.retain(|(_, r), _| *r != Route::Device);
        m.chosen.clear();
    }

    /// Each route's prediction for `c` (scaled by what was observed), without choosing.
    pub fn predict(&self, route: Route, c: &Call) -> f64 {
        let m = self.model.lock();
        Self::predict_in(&m, route, c)
    }

    fn predict_in(m: &Model, route: Route, c: &Call) -> f64 {
        let raw = match route {
            Route::Device => m.device.as_ref().map_or(f64::INFINITY, |d| predict_device(d, &m.cpu, c)),
            _ => m.cpu.predict(route, c),
        };
        raw * m.correction.get(&(Bucket::of(c), route)).copied().unwrap_or(1.0)
    }

    /// The route for `c` under `policy`; `device`: whether a device is attached and able
    /// to take this store. Err with the reason when the policy cannot be met (`Gpu`
    /// without a device).
    pub fn choose(&self, c: &Call, policy: Policy, device: Result<(), &str>) -> Result<Decision, String> {
        let mut m = self.model.lock();
        let mut eligible: Vec<Route> = Vec::with_capacity(3);
        match policy {
            Policy::Gpu => {
                if let Err(why) = device {
                    return Err(why.to_string());
                }
                eligible.push(Route::Device);
            }
            Policy::Cpu | Policy::Auto => {
                eligible.push(Route::CpuOne);
                if c.nq > 1 && !c.each {
                    eligible.push(Route::CpuBatch);
                }
                if policy == Policy::Auto && device.is_ok() && m.device.is_some() {
                    eligible.push(Route::Device);
                }
            }
        }
        let mut predicted: Vec<(Route, f64)> = eligible.iter().map(|&r| (r, Self::predict_in(&m, r, c))).collect();
        predicted.sort_by(|a, b| a.1.total_cmp(&b.1));
        let cheapest = predicted[0].0;
        if let Some(forced) = m.forced.filter(|r| eligible.contains(r)) {
            m.counts[forced.index()] += 1;
            return Ok(Decision { route: forced, predicted, reason: format!("{} forced (Planner::force)", forced.name()) });
        }
        let bucket = Bucket::of(c);
        let previous = m.chosen.get(&bucket).copied().filter(|r| eligible.contains(r));
        let (route, reason) = match previous {
            Some(prev) if prev != cheapest => {
                let prev_ns = predicted.iter().find(|p| p.0 == prev).map_or(f64::INFINITY, |p| p.1);
                if predicted[0].1 < prev_ns * (1.0 - HYSTERESIS) {
                    (
                        cheapest,
                        format!(
                            "{} is predicted cheapest, by more than the {:.0}% hysteresis over {}",
                            cheapest.name(),
                            HYSTERESIS * 100.0,
                            prev.name()
                        ),
                    )
                } else {
                    (
                        prev,
                        format!(
                            "{} kept: {} is predicted cheaper by less than the {:.0}% hysteresis",
                            prev.name(),
                            cheapest.name(),
                            HYSTERESIS * 100.0
                        ),
                    )
                }
            }
            _ if eligible.len() == 1 => (cheapest, Self::only_reason(policy, c, device)),
            _ => (cheapest, format!("{} is predicted cheapest", cheapest.name())),
        };
        m.chosen.insert(bucket, route);
        m.counts[route.index()] += 1;
        Ok(Decision { route, predicted, reason })
    }

    fn only_reason(policy: Policy, c: &Call, device: Result<(), &str>) -> String {
        match policy {
            Policy::Gpu => "device policy 'gpu'".into(),
            Policy::Cpu => "device policy 'cpu'; one query".to_string(),
            Policy::Auto => {
                let mut why = if c.nq == 1 { "one query".to_string() } else { "queries coalesced from concurrent callers".to_string() };
                match device {
                    Err(d) => why.push_str(&format!("; no device ({d})")),
                    Ok(()) => why.push_str("; the device is not calibrated"),
                }
                why
            }
        }
    }

    /// Feeds back a route's observed time for `c`.
    pub fn observe(&self, route: Route, c: &Call, observed_ns: f64) {
        let mut m = self.model.lock();
        let key = (Bucket::of(c), route);
        let base = Self::predict_in(&m, route, c) / m.correction.get(&key).copied().unwrap_or(1.0);
        if !(base.is_finite() && base > 0.0 && observed_ns.is_finite() && observed_ns > 0.0) {
            return;
        }
        let ratio = (observed_ns / base).clamp(CORRECTION_RANGE.0, CORRECTION_RANGE.1);
        let slot = m.correction.entry(key).or_insert(1.0);
        *slot = (*slot * (1.0 - CORRECTION_WEIGHT) + ratio * CORRECTION_WEIGHT).clamp(CORRECTION_RANGE.0, CORRECTION_RANGE.1);
    }

    pub fn stats(&self) -> PlannerStats {
        let m = self.model.lock();
        PlannerStats {
            cpu: m.cpu,
            cpu_calibrated: m.cpu_calibrated,
            device: m.device,
            correction: Route::ALL
                .iter()
                .map(|&r| {
                    let xs: Vec<f64> = m.correction.iter().filter(|((_, route), _)| *route == r).map(|(_, &x)| x).collect();
                    (
                        r.name(),
                        xs.len(),
                        xs.iter().copied().fold(f64::INFINITY, f64::min),
                        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    )
                })
                .collect(),
            routes: Route::ALL.iter().map(|r| (r.name(), m.counts[r.index()])).collect(),
        }
    }
}

/// Values scanned at each calibration size: one that stays in cache and one beyond it.
const CALIBRATION_VALUES: [usize; 2] = [1 << 19, 1 << 23];
/// Batch sizes timed through the batch kernel.
const CALIBRATION_BATCHES: [usize; 3] = [4, 16, 64];

/// Times the CPU scorer on synthetic unit rows of `dim` at `precision` and fits
/// [`CpuCosts`] (least squares; a constant that fits below zero is taken as zero).
/// Takes about a quarter of a second; the caller caches the result.
pub fn calibrate_cpu(precision: Precision, dim: usize) -> CpuCosts {
    let mut one: Vec<([f64; 2], f64)> = Vec::new();
    let mut batch: Vec<([f64; 3], f64)> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for &values in &CALIBRATION_VALUES {
        let rows = (values / dim.max(1)).max(64);
        let mut st = State::new();
        st.precision = precision;
        for i in 0..rows {
            let v: Vec<f32> = (0..dim).map(|_| next()).collect();
            let rec = Record::bare(format!("c{i}"), "/");
            if st.put(rec, &v).is_err() {
                return CpuCosts::DEFAULT;
            }
        }
        let view = RowsView { state: &st };
        let max_nq = *CALIBRATION_BATCHES.iter().max().unwrap_or(&1);
        let queries: Vec<f32> = (0..max_nq * dim).map(|_| next()).collect();
        let queries = crate::engine::unit_queries(&queries, dim);
        let v = (rows * dim) as f64;
        let time = |nq: usize, each: bool| {
            let plan = Plan { queries: &queries[..nq * dim], nq, dim, k: 10, candidates: None, min_score: None, each };
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(CpuScorer.top_k(&plan, &view));
                    t.elapsed().as_nanos() as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        one.push(([1.0, v], time(1, false)));
        for &nq in &CALIBRATION_BATCHES {
            batch.push(([1.0, v, v * nq as f64], time(nq, false)));
        }
    }
    let [call1, one_value] = least_squares(&one);
    let [call2, pass_value, batch_value] = least_squares(&batch);
    CpuCosts {
        call: ((call1 + call2) / 2.0).max(0.0),
        one_value: one_value.max(1e-4),
        pass_value: pass_value.max(0.0),
        batch_value: batch_value.max(1e-5),
    }
}

/// Ordinary least squares of `y ~ x . beta` by the normal equations (N <= 3 unknowns),
/// rows weighted by 1/y so that small and large timings count alike.
#[allow(clippy::needless_range_loop)] // index arithmetic of a small matrix reads best as indices
fn least_squares<const N: usize>(points: &[([f64; N], f64)]) -> [f64; N] {
    let mut a = [[0.0f64; N]; N];
    let mut b = [0.0f64; N];
    for (x, y) in points {
        let w = 1.0 / (y * y).max(1.0);
        for i in 0..N {
            b[i] += w * x[i] * y;
            for j in 0..N {
                a[i][j] += w * x[i] * x[j];
            }
        }
    }
    // Gaussian elimination with partial pivoting.
    let mut beta = [0.0f64; N];
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        if a[col][col].abs() < 1e-300 {
            return beta;
        }
        for row in col + 1..N {
            let f = a[row][col] / a[col][col];
            for j in col..N {
                a[row][j] -= f * a[col][j];
            }
            b[row] -= f * b[col];
        }
    }
    for col in (0..N).rev() {
        let s: f64 = (col + 1..N).map(|j| a[col][j] * beta[j]).sum();
        beta[col] = (b[col] - s) / a[col][col];
    }
    beta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(nq: usize, rows: usize, dim: usize) -> Call {
        Call { nq, rows, dim, k: 10, each: false, behind: 0 }
    }

    #[test]
    fn least_squares_recovers_a_linear_model() {
        let points: Vec<([f64; 3], f64)> =
            [(1.0, 2.0), (3.0, 1.0), (5.0, 7.0), (2.0, 9.0)].iter().map(|&(a, b)| ([1.0, a, b], 4.0 + 2.0 * a + 0.5 * b)).collect();
        let beta = least_squares(&points);
        for (got, want) in beta.iter().zip([4.0, 2.0, 0.5]) {
            assert!((got - want).abs() < 1e-9, "{beta:?}");
        }
    }

    #[test]
    fn one_query_is_the_scan_and_batches_go_to_the_batch_kernel_when_cheaper() {
        let p = Planner::default();
        let d = p.choose(&call(1, 10_000, 384), Policy::Auto, Err("none")).unwrap();
        assert_eq!(d.route, Route::CpuOne);
        assert_eq!(d.predicted.len(), 1);
        let d = p.choose(&call(64, 100_000, 384), Policy::Auto, Err("none")).unwrap();
        assert_eq!(d.route, Route::CpuBatch, "{d:?}");
        // Coalesced queries must stay bit-identical: never the batch kernel.
        let d = p.choose(&Call { each: true, ..call(64, 100_000, 384) }, Policy::Auto, Err("none")).unwrap();
        assert_eq!(d.route, Route::CpuOne);
    }

    #[test]
    fn gpu_policy_fails_closed_without_a_device_and_auto_never_picks_an_absent_one() {
        let p = Planner::default();
        assert_eq!(p.choose(&call(256, 1_000_000, 1536), Policy::Gpu, Err("no CUDA device")).unwrap_err(), "no CUDA device");
        p.set_device_costs(Some(DeviceCosts { call: 1.0, query_value: 0.0, value: 0.0, sync_value: 0.0 }));
        let d = p.choose(&call(256, 1_000_000, 1536), Policy::Auto, Err("no CUDA device")).unwrap();
        assert_ne!(d.route, Route::Device);
        let d = p.choose(&call(256, 1_000_000, 1536), Policy::Cpu, Ok(())).unwrap();
        assert_ne!(d.route, Route::Device);
    }

    /// On a grid of synthetic calibrations, the route is the cheapest of the model's
    /// predictions (a fresh planner per point: no hysteresis carried over).
    #[test]
    fn choices_match_the_cost_model_on_a_grid_of_calibrations() {
        let cpus = [CpuCosts::DEFAULT, CpuCosts { call: 50_000.0, one_value: 0.05, pass_value: 0.2, batch_value: 0.01 }];
        let devices = [
            DeviceCosts { call: 30_000.0, query_value: 1.0, value: 0.0005, sync_value: 1.0 },
            DeviceCosts { call: 2_000_000.0, query_value: 10.0, value: 0.01, sync_value: 5.0 },
        ];
        for cpu in cpus {
            for dev in devices {
                for nq in [1, 16, 256] {
                    for rows in [1_000, 10_000, 100_000, 1_000_000] {
                        for dim in [384, 1536] {
                            for behind in [0, 1000] {
                                let p = Planner::default();
                                p.set_cpu_costs(cpu);
                                p.set_device_costs(Some(dev));
                                let c = Call { behind, ..call(nq, rows, dim) };
                                let d = p.choose(&c, Policy::Auto, Ok(())).unwrap();
                                let best = Route::ALL
                                    .iter()
                                    .filter(|&&r| nq > 1 || r != Route::CpuBatch)
                                    .map(|&r| (r, p.predict(r, &c)))
                                    .min_by(|a, b| a.1.total_cmp(&b.1))
                                    .unwrap();
                                assert_eq!(d.route, best.0, "{cpu:?} {dev:?} {c:?} {d:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hysteresis_keeps_a_route_until_another_is_clearly_cheaper() {
        let p = Planner::default();
        p.set_device_costs(Some(DeviceCosts { call: 0.0, query_value: 0.0, value: 0.0, sync_value: 0.0 }));
        let c = call(16, 100_000, 384);
        let first = p.choose(&c, Policy::Auto, Ok(())).unwrap();
        assert_eq!(first.route, Route::Device);
        let cpu_ns = p.predict(Route::CpuBatch, &c);
        // The device becomes slightly dearer than the CPU: kept.
        let dev_near = cpu_ns * 1.05;
        let per = dev_near - p.predict(Route::Device, &c);
        let total_value = (c.nq * c.rows * c.dim) as f64;
        p.model.lock().device = Some(DeviceCosts { call: 0.0, query_value: 0.0, value: per / total_value, sync_value: 0.0 });
        assert_eq!(p.choose(&c, Policy::Auto, Ok(())).unwrap().route, Route::Device);
        // Clearly dearer: switched.
        p.model.lock().device =
            Some(DeviceCosts { call: 0.0, query_value: 0.0, value: 2.0 * per / total_value + cpu_ns / total_value, sync_value: 0.0 });
        assert_eq!(p.choose(&c, Policy::Auto, Ok(())).unwrap().route, Route::CpuBatch);
    }

    #[test]
    fn observations_scale_a_route_within_bounds() {
        let p = Planner::default();
        let c = call(1, 10_000, 384);
        let before = p.predict(Route::CpuOne, &c);
        for _ in 0..200 {
            p.observe(Route::CpuOne, &c, before * 100.0);
        }
        let after = p.predict(Route::CpuOne, &c);
        assert!((after / before - CORRECTION_RANGE.1).abs() < 1e-6, "{before} {after}");
    }

    #[test]
    fn calibration_fits_positive_constants() {
        let c = calibrate_cpu(Precision::F32, 256);
        assert!(c.one_value > 0.0 && c.batch_value > 0.0 && c.call >= 0.0, "{c:?}");
    }
}
