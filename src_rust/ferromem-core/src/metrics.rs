//! Per-operation latency histograms kept by the engine at negligible cost: one clock read
//! at each end and two relaxed atomic adds per operation. Buckets are log-linear (8 per
//! power of two, so a percentile is exact to within 12.5%), in nanoseconds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

const SUB: usize = 8; // sub-buckets per power of two
const POWERS: usize = 42; // up to 2^42 ns (~73 minutes)
const BUCKETS: usize = POWERS * SUB;

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_ns: AtomicU64,
    total_ns: AtomicU64,
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let p = 63 - ns.leading_zeros() as usize; // floor(log2 ns) >= 3
    let sub = ((ns >> (p - 3)) & (SUB as u64 - 1)) as usize;
    ((p - 2) * SUB + sub).min(BUCKETS - 1)
}

/// Upper bound (ns) of a bucket, used as the reported value of a percentile.
fn bucket_upper(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let p = b / SUB + 2;
    let sub = (b % SUB) as u64;
    ((SUB as u64 + sub + 1) << (p - 3)) - 1
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpStats {
    pub count: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Histogram {
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.total_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    pub fn snapshot(&self) -> OpStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return OpStats::default();
        }
        let max_ns = self.max_ns.load(Relaxed);
        let pct = |q: f64| {
            let target = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (b, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= target {
                    return bucket_upper(b).min(max_ns) as f64 / 1000.0;
                }
            }
            max_ns as f64 / 1000.0
        };
        OpStats {
            count,
            p50_us: pct(0.50),
            p95_us: pct(0.95),
            p99_us: pct(0.99),
            max_us: max_ns as f64 / 1000.0,
            mean_us: self.total_ns.load(Relaxed) as f64 / count as f64 / 1000.0,
        }
    }
}

macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// The operations the engine times.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum Op { $($name),* }
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$name),*];
            pub fn name(self) -> &'static str { match self { $(Op::$name => stringify!($name)),* } }
        }
    };
}
ops!(open, add, upsert, search, get, update, touch, delete, list, count, scopes, reset, catch_up);

pub struct Metrics {
    hists: Vec<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { hists: Op::ALL.iter().map(|_| Histogram::default()).collect() }
    }
}

impl Metrics {
    pub fn record(&self, op: Op, since: Instant) {
        self.hists[op as usize].record(since.elapsed().as_nanos() as u64);
    }

    /// Operations that ran at least once, with their latency figures.
    pub fn snapshot(&self) -> Vec<(&'static str, OpStats)> {
        Op::ALL.iter().map(|&op| (op.name(), self.hists[op as usize].snapshot())).filter(|(_, s)| s.count > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [0u64, 1, 7, 8, 9, 15, 16, 100, 1000, 12345, 1 << 30, 1 << 41] {
            let b = bucket_of(ns);
            assert!(b >= last);
            last = b;
            let up = bucket_upper(b);
            assert!(up >= ns, "{ns} -> bucket {b} upper {up}");
            assert!(up as f64 <= ns as f64 * 1.125 + 1.0, "{ns} -> {up}");
        }
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() / 500.0 < 0.13, "{s:?}");
        assert!((s.p95_us - 950.0).abs() / 950.0 < 0.13, "{s:?}");
        assert_eq!(s.max_us, 1000.0);
    }
}
