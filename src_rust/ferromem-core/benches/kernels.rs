//! Throughput of the similarity kernels, one line per (kernel, shape, ISA).
//!
//!     cargo bench -p ferromem-core --bench kernels            # everything
//!     cargo bench -p ferromem-core --bench kernels -- multi   # lines whose label contains "multi"
//!
//! A measurement, not a test: nothing here asserts a speed. Each figure is the best of
//! several passes (the least disturbed by other processes), single-threaded.
//!
//! * `dot_rows`: one query against every row; the arena is streamed once per pass, so
//!   100k x 1536 (614 MB) measures memory bandwidth and 10k x 384 (15 MB) mostly the
//!   last-level cache.
//! * `dot_rows_f16`, `dot_rows_i8`: the same with the rows stored as binary16 and as int8
//!   (half and a quarter of the bytes).
//! * `dot_gather`: one query against 10% of the rows in random order (a filtered search).
//! * `dot_rows_multi`: a batch of queries against every row, reported in GFLOP/s (2 flops
//!   per multiply-add) next to the same work done as one `dot_rows` per query.

use ferromem_core::simd::{self, Isa};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Deterministic values in [-1, 1) without a dependency: a 64-bit LCG, high bits.
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Every tenth row index below `n`, in a fixed pseudo-random order (xorshift Fisher-Yates).
fn tenth_shuffled(n: usize) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..n as u32).filter(|r| r % 10 == 3).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..rows.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        rows.swap(i, (state % (i as u64 + 1)) as usize);
    }
    rows
}

/// Best wall time of one call of `pass`, over at least `min_passes` passes and about
/// `budget` of total time.
fn best_time(min_passes: usize, budget: Duration, mut pass: impl FnMut()) -> Duration {
    pass(); // warm-up: page faults, caches, CPU frequency
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < min_passes || started.elapsed() < budget {
        let t = Instant::now();
        pass();
        best = best.min(t.elapsed());
        passes += 1;
    }
    best
}

struct Bench {
    filter: Option<String>,
    budget: Duration,
}

impl Bench {
    fn wants(&self, label: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| label.contains(f))
    }

    fn rows(&self, isa: Isa, arena: &[f32], n: usize, dim: usize) {
        let label = format!("dot_rows        {n:>6} x {dim:<5} {:<7}", isa.name());
        if !self.wants(&label) {
            return;
        }
        let query = fill(dim, 7);
        let mut out = vec![0.0f32; n];
        let t = best_time(5, self.budget, || {
            simd::dot_rows(black_box(&query), black_box(&arena[..n * dim]), dim, &mut out);
            black_box(&out);
        });
        let secs = t.as_secs_f64();
        let gbps = (n * dim * 4) as f64 / secs / 1e9;
        println!("{label} {:>8.2} GB/s {:>9.1} ns/row", gbps, secs * 1e9 / n as f64);
    }

    /// One query against every row stored as binary16 and as int8 (`simd::half`,
    /// `simd::int8`): the same rows, fewer bytes.
    fn rows_narrow(&self, isa: Isa, arena: &[f32], n: usize, dim: usize) {
        let values = &arena[..n * dim];
        let mut half = vec![0u16; values.len()];
        simd::half::to_f16_bits(values, 1.0, &mut half);
        let mut int8 = vec![0i8; values.len()];
        for (row, out) in values.chunks_exact(dim).zip(int8.chunks_exact_mut(dim)) {
            simd::int8::quantize_i8(row, out);
        }
        let label = format!("dot_rows_f16    {n:>6} x {dim:<5} {:<7}", isa.name());
        if self.wants(&label) {
            let query = fill(dim, 7);
            let mut out = vec![0.0f32; n];
            let t = best_time(5, self.budget, || {
                simd::half::dot_rows_f16(black_box(&query), black_box(&half), dim, &mut out);
                black_box(&out);
            });
            let secs = t.as_secs_f64();
            println!("{label} {:>8.2} GB/s {:>9.1} ns/row", (n * dim * 2) as f64 / secs / 1e9, secs * 1e9 / n as f64);
        }
        let label = format!("dot_rows_i8     {n:>6} x {dim:<5} {:<7} ({})", isa.name(), simd::int8::path_name(isa));
        if self.wants(&label) {
            let mut query = vec![0i8; dim];
            simd::int8::quantize_i8(&fill(dim, 7), &mut query);
            let mut out = vec![0i32; n];
            let t = best_time(5, self.budget, || {
                simd::int8::dot_rows_i8(black_box(&query), black_box(&int8), dim, &mut out);
                black_box(&out);
            });
            let secs = t.as_secs_f64();
            println!("{label} {:>8.2} GB/s {:>9.1} ns/row", (n * dim) as f64 / secs / 1e9, secs * 1e9 / n as f64);
        }
    }

    fn gather(&self, isa: Isa, arena: &[f32], n: usize, dim: usize, rows: &[u32]) {
        let label = format!("dot_gather      {:>6} of {n:>6} x {dim:<5} {:<7}", rows.len(), isa.name());
        if !self.wants(&label) {
            return;
        }
        let query = fill(dim, 11);
        let mut out = vec![0.0f32; rows.len()];
        let t = best_time(5, self.budget, || {
            simd::dot_gather(black_box(&query), black_box(&arena[..n * dim]), dim, rows, &mut out);
            black_box(&out);
        });
        let secs = t.as_secs_f64();
        let gbps = (rows.len() * dim * 4) as f64 / secs / 1e9;
        println!("{label} {:>8.2} GB/s {:>9.1} ns/row", gbps, secs * 1e9 / rows.len() as f64);
    }

    fn multi(&self, isa: Isa, arena: &[f32], n: usize, dim: usize, nq: usize) {
        let label = format!("dot_rows_multi  {n:>6} x {dim:<5} nq {nq:<3} {:<7}", isa.name());
        if !self.wants(&label) {
            return;
        }
        let queries = fill(nq * dim, 13);
        let mut out = vec![0.0f32; nq * n];
        let arena = &arena[..n * dim];
        let blocked = best_time(3, self.budget, || {
            simd::dot_rows_multi(black_box(&queries), nq, black_box(arena), dim, n, &mut out);
            black_box(&out);
        });
        let one_by_one = best_time(3, self.budget, || {
            for (q, out_q) in out.chunks_exact_mut(n).enumerate() {
                simd::dot_rows(black_box(&queries[q * dim..(q + 1) * dim]), black_box(arena), dim, out_q);
            }
            black_box(&out);
        });
        let flops = 2.0 * (nq * n * dim) as f64;
        println!(
            "{label} {:>8.2} GFLOP/s ({:.2} GFLOP/s as {nq} x dot_rows: {:.2}x)",
            flops / blocked.as_secs_f64() / 1e9,
            flops / one_by_one.as_secs_f64() / 1e9,
            one_by_one.as_secs_f64() / blocked.as_secs_f64()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the first other argument filters the lines.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let bench = Bench { filter, budget: Duration::from_millis(400) };
    let isas = simd::supported_isas();
    let names: Vec<&str> = isas.iter().map(|isa| isa.name()).collect();
    println!("# ferromem kernels: detected {}, supported [{}]", simd::detected_isa().name(), names.join(", "));

    let big = (100_000, 1536);
    let small = (10_000, 384);
    let big_arena = fill(big.0 * big.1, 1);
    let small_arena = fill(small.0 * small.1, 2);
    let big_gather = tenth_shuffled(big.0);
    let small_gather = tenth_shuffled(small.0);

    for &isa in &isas {
        simd::force_isa(Some(isa)).expect("supported");
        bench.rows(isa, &big_arena, big.0, big.1);
        bench.rows(isa, &small_arena, small.0, small.1);
        bench.rows_narrow(isa, &big_arena, big.0, big.1);
        bench.rows_narrow(isa, &small_arena, small.0, small.1);
        bench.gather(isa, &big_arena, big.0, big.1, &big_gather);
        bench.gather(isa, &small_arena, small.0, small.1, &small_gather);
    }
    for &isa in &isas {
        simd::force_isa(Some(isa)).expect("supported");
        for nq in [16, 64] {
            bench.multi(isa, &small_arena, small.0, small.1, nq);
            bench.multi(isa, &big_arena, big.0, big.1, nq);
        }
    }
    simd::force_isa(None).expect("the detected ISA is supported");
}
