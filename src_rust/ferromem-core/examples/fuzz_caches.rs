//! A fuzz target for the readers of the files ferromem keeps beside a store: the store
//! image (`<path>.image`, `ferromem_core::image`) and the saved graph (`<path>.hnsw`,
//! `ferromem_core::hnsw`). It runs on stable Rust (`cargo fuzz` needs nightly):
//!
//! ```text
//! cargo run --profile fuzz --example fuzz_caches -- image|graph|all [SECONDS] [SEED] [ITERATION]
//! ```
//!
//! Inputs: random bytes, and files written by the real writers (f32, f16 and int8 images
//! of one and of several chunks of rows; graphs) mutated: bit flips, truncation at and
//! around every section boundary, bytes inserted and deleted, header fields (lengths,
//! offsets, counts, shape) set to extremes, sections spliced from another file. Half the
//! mutated inputs get their checksums recomputed, so the structure checks behind them are
//! reached too. The readers must not panic, read out of bounds (the parsers are safe Rust
//! over `&[u8]`; the mapped arenas are cut only from checked offsets) or allocate more
//! than [`ALLOC_LIMIT`] at once. Iteration `i` of seed `s` is reproducible on its own:
//! `fuzz_caches image 0 s i` replays exactly that input.

use ferromem_core::hnsw::HnswParams;
use ferromem_core::state::{IndexConfig, IndexMode, Precision};
use ferromem_core::{Durability, Engine, OpenOptions, Record, WriteMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest single allocation a reader may make. The largest legitimate one is an
/// arena chunk for the last, partial chunk of rows of the widest image (4,096 rows x
/// 65,536 values x 4 bytes = 1 GiB, zeroed by calloc, so committed only where written);
/// anything from a length the reader did not bound by the file is far beyond it.
const ALLOC_LIMIT: usize = (1 << 30) + (1 << 20);

static SEED: AtomicU64 = AtomicU64::new(0);
static ITERATION: AtomicU64 = AtomicU64::new(0);

struct Bounded;

// SAFETY: forwards to the system allocator; only refuses (by aborting) what is too large.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOC_LIMIT {
        eprintln!(
            "FUZZ FAILURE: an allocation of {size} bytes (limit {ALLOC_LIMIT}); replay with: fuzz_caches <target> 0 {} {}",
            SEED.load(Ordering::Relaxed),
            ITERATION.load(Ordering::Relaxed)
        );
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

fn rec(i: usize) -> Record {
    Record {
        id: Arc::from(format!("r{i:05}")),
        content: format!("content {i} ✓"),
        scope: format!("/crew/a{}", i % 5),
        categories: (0..i % 3).map(|c| format!("cat{c}")).collect(),
        metadata_json: format!("{{\"turn\": {i}}}"),
        importance: (i % 10) as f64 / 10.0,
        created_at: i as f64,
        last_accessed: i as f64 + 0.5,
        source: i.is_multiple_of(2).then(|| format!("src{}", i % 4)),
        private: i.is_multiple_of(6),
    }
}

/// Images and graphs written by the real engine, to mutate.
fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    let shapes: &[(usize, usize)] = &[(1, 3), (40, 8), (4100, 4)];
    for (n, &(rows, dim)) in shapes.iter().enumerate() {
        for (p, precision) in [Precision::F32, Precision::F16, Precision::Int8].into_iter().enumerate() {
            let path = dir.path().join(format!("s{n}-{p}.ferro"));
            let e = Engine::open_opts(
                Some(&path),
                None,
                OpenOptions { durability: Durability::Normal, precision, fast_open: true, ..OpenOptions::default() },
            )
            .expect("open");
            let vectors: Vec<f32> = (0..rows * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            e.upsert((0..rows).map(rec).collect(), &vectors, dim, WriteMode::Upsert).expect("fill");
            if kind != "image" && rows > 1 && precision == Precision::F32 {
                let params = HnswParams { m: 4 + 4 * n, ef_construction: 16 };
                e.set_index(IndexConfig { mode: IndexMode::Hnsw, ef_search: 16, params, ..IndexConfig::default() }).expect("index");
                assert!(e.wait_for_index(Some(Duration::from_secs(120))).expect("build"));
            }
            e.close();
            let file = if kind == "image" { ferromem_core::image::image_file(&path) } else { ferromem_core::engine::graph_file(&path) };
            if let Ok(bytes) = std::fs::read(&file) {
                out.push(bytes);
            }
        }
    }
    assert!(!out.is_empty(), "the writers produced no {kind} file");
    out
}

/// Offsets worth cutting at: the image's header fields and section offsets, the graph's
/// header and section boundary.
fn boundaries(kind: &str, b: &[u8]) -> Vec<usize> {
    let u64_at = |at: usize| b.get(at..at + 8).map(|x| u64::from_le_bytes(x.try_into().unwrap()) as usize);
    let mut cuts = vec![0, 1, 8];
    if kind == "image" {
        cuts.extend([12, 16, 64, 112, 116, 4096]);
        for at in [64, 80, 88, 96] {
            cuts.extend(u64_at(at));
        }
        if let (Some(off), Some(len)) = (u64_at(64), u64_at(72)) {
            cuts.push(off.saturating_add(len));
        }
    } else {
        cuts.extend([24, 40, 56, 64, 68]);
        cuts.extend(u64_at(40).map(|n| 68usize.saturating_add(n)));
    }
    cuts.push(b.len());
    cuts
}

/// Header fields (offset, width) whose values the mutator sets to extremes.
fn fields(kind: &str) -> &'static [(usize, usize)] {
    if kind == "image" {
        &[(8, 4), (12, 4), (16, 8), (24, 8), (32, 8), (40, 8), (64, 8), (72, 8), (80, 8), (88, 8), (96, 8), (104, 8)]
    } else {
        &[(8, 8), (16, 8), (24, 4), (28, 4), (32, 4), (36, 4), (40, 8), (48, 8)]
    }
}

fn input(kind: &str, corpus: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
    let strategy = rng.gen_range(0..7);
    if strategy == 0 {
        // Random bytes, half the time behind a valid magic.
        let mut b: Vec<u8> = (0..rng.gen_range(0..10_000)).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.5) {
            let magic: &[u8] = if kind == "image" { b"FMIMAGE\0\x02\0\0\0" } else { b"FMHNSW02" };
            let n = magic.len().min(b.len());
            b[..n].copy_from_slice(&magic[..n]);
        }
        return b;
    }
    let mut b = corpus[rng.gen_range(0..corpus.len())].clone();
    for _ in 0..rng.gen_range(1..4) {
        match strategy {
            1 => {
                for _ in 0..rng.gen_range(1..8) {
                    if !b.is_empty() {
                        let at = rng.gen_range(0..b.len());
                        b[at] ^= 1 << rng.gen_range(0..8);
                    }
                }
            }
            2 => {
                let cuts = boundaries(kind, &b);
                let at = (cuts[rng.gen_range(0..cuts.len())] as i64 + rng.gen_range(-2i64..=2)).clamp(0, b.len() as i64) as usize;
                b.truncate(at);
            }
            3 => {
                let at = rng.gen_range(0..=b.len());
                if rng.gen_bool(0.5) {
                    let n = rng.gen_range(1..64);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    b.splice(at..at, bytes);
                } else {
                    let end = (at + rng.gen_range(1..64)).min(b.len());
                    b.drain(at..end);
                }
            }
            4 | 5 => {
                let &(at, width) = &fields(kind)[rng.gen_range(0..fields(kind).len())];
                let len = b.len() as u64;
                let v: u64 = match rng.gen_range(0..9) {
                    0 => 0,
                    1 => 1,
                    2 => u64::MAX,
                    3 => u32::MAX as u64,
                    4 => len,
                    5 => len + 1,
                    6 => len.saturating_sub(1),
                    7 => 1 << rng.gen_range(0..64),
                    _ => rng.gen(),
                };
                if let Some(field) = b.get_mut(at..at + width) {
                    field.copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            _ => {
                // A section of another file spliced in at a boundary.
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let (cuts, other_cuts) = (boundaries(kind, &b), boundaries(kind, other));
                let at = cuts[rng.gen_range(0..cuts.len())].min(b.len());
                let from = other_cuts[rng.gen_range(0..other_cuts.len())].min(other.len());
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
        }
    }
    if rng.gen_bool(0.5) {
        if kind == "image" {
            ferromem_core::image::fuzz_reseal(&mut b);
        } else {
            ferromem_core::hnsw::fuzz_reseal(&mut b);
        }
    }
    b
}

fn run(kind: &str, seconds: f64, seed: u64, only: Option<u64>) -> bool {
    let corpus = corpus(kind);
    // Every file the writers produced reads back whole.
    for b in &corpus {
        let (problems, read) = if kind == "image" {
            (ferromem_core::image::verify_bytes(b), ferromem_core::image::fuzz_read(b))
        } else {
            (ferromem_core::hnsw::verify_graph_bytes(b), ferromem_core::hnsw::fuzz_read(b))
        };
        assert!(problems.is_empty() && read, "a file from the real writer does not read back: {problems:?}");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut iterations, mut accepted) = (0u64, 0u64);
    let range = match only {
        Some(i) => i..i + 1,
        None => 0..u64::MAX,
    };
    for i in range {
        if only.is_none() && Instant::now() >= deadline {
            break;
        }
        ITERATION.store(i, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bytes = input(kind, &corpus, &mut rng);
        let result = std::panic::catch_unwind(|| {
            if kind == "image" {
                ferromem_core::image::fuzz_read(&bytes)
            } else {
                ferromem_core::hnsw::fuzz_read(&bytes)
            }
        });
        match result {
            Ok(read) => accepted += read as u64,
            Err(_) => {
                let out = std::env::temp_dir().join(format!("fuzz-{kind}-{seed}-{i}.bin"));
                let _ = std::fs::write(&out, &bytes);
                eprintln!("FUZZ FAILURE: the {kind} reader panicked on seed {seed} iteration {i} (input saved to {}); replay with: fuzz_caches {kind} 0 {seed} {i}", out.display());
                return false;
            }
        }
        iterations += 1;
    }
    println!("fuzz {kind}: seed {seed}, {iterations} inputs, {accepted} read as whole, no panic");
    true
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map_or("all", String::as_str).to_owned();
    let seconds: f64 =
        args.get(1).and_then(|s| s.parse().ok()).or_else(|| std::env::var("FUZZ_SECONDS").ok()?.parse().ok()).unwrap_or(10.0);
    let seed: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .or_else(|| std::env::var("FUZZ_SEED").ok()?.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    let only: Option<u64> = args.get(3).and_then(|s| s.parse().ok());
    SEED.store(seed, Ordering::Relaxed);
    println!("fuzz_caches {kind}: seed {seed}, {seconds} s per target");
    // A panic is reported by `run` with its replay line; keep the default message short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let kinds: Vec<&str> = match kind.as_str() {
        "image" => vec!["image"],
        "graph" => vec!["graph"],
        "all" => vec!["image", "graph"],
        other => {
            eprintln!("unknown target {other:?}: image, graph or all");
            std::process::exit(2);
        }
    };
    let mut ok = true;
    for k in kinds {
        ok &= run(k, seconds, seed, only);
    }
    std::process::exit(if ok { 0 } else { 1 });
}
