//! The graph index through the engine: recall against brute force, exact scores, filters
//! (selective ones exact), deletes and changed vectors never returned stale, resets during
//! a build, the auto threshold and the builder's shutdown.

use ferromem_core::hnsw::HnswParams;
use ferromem_core::state::{IndexConfig, IndexMode};
use ferromem_core::{Durability, Engine, Filter, Patch, Record, WriteMode};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn rec(i: usize) -> Record {
    Record {
        id: Arc::from(format!("r{i:05}")),
        content: String::new(),
        scope: format!("/s{}", i % 10),
        categories: vec![format!("c{}", i % 3)],
        metadata_json: "{}".into(),
        importance: 0.5,
        created_at: i as f64,
        last_accessed: i as f64,
        source: None,
        private: false,
    }
}

/// `n` vectors around 25 centres, like text embeddings (clustered, not uniform).
fn clustered(rng: &mut impl Rng, n: usize, dim: usize) -> Vec<f32> {
    let centres: Vec<Vec<f32>> = (0..25).map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect();
    (0..n).flat_map(|i| centres[i % 25].iter().map(|&c| c + 0.5 * rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// Brute-force top-k ids of `q` among `live` (index, vector) pairs passing `keep`.
fn brute(q: &[f32], vectors: &[f32], dim: usize, live: &HashSet<usize>, k: usize, keep: impl Fn(usize) -> bool) -> Vec<String> {
    let mut s: Vec<(f32, usize)> =
        live.iter().copied().filter(|&i| keep(i)).map(|i| (cosine(q, &vectors[i * dim..(i + 1) * dim]), i)).collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|(_, i)| format!("r{i:05}")).collect()
}

fn hnsw(ef_search: usize) -> IndexConfig {
    IndexConfig { mode: IndexMode::Hnsw, ef_search, params: HnswParams::default(), ..IndexConfig::default() }
}

fn load(e: &Engine, vectors: &[f32], dim: usize) {
    let n = vectors.len() / dim;
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        e.upsert((start..end).map(rec).collect(), &vectors[start * dim..end * dim], dim, WriteMode::Insert).unwrap();
    }
}

#[test]
fn graph_search_is_close_to_exact_and_never_returns_what_it_must_not() {
    let (n, dim, k) = (4000, 48, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut vectors = clustered(&mut rng, n, dim);
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    e.set_cache_capacity(0);
    load(&e, &vectors, dim);
    e.set_index(hnsw(160)).unwrap();
    assert!(e.wait_for_index(Some(Duration::from_secs(120))).unwrap());
    let st = e.stats().index;
    assert!(st.active && st.pending == 0 && st.graph_nodes == n, "{st:?}");

    let mut live: HashSet<usize> = (0..n).collect();
    let queries = clustered(&mut rng, 60, dim);
    let (mut hits, mut total) = (0, 0);
    for q in queries.chunks_exact(dim) {
        let got = e.search(q, dim, k, &Filter::default(), None).unwrap().pop().unwrap();
        let truth = brute(q, &vectors, dim, &live, k, |_| true);
        hits += got.iter().filter(|h| truth.contains(&h.0.to_string())).count();
        total += k;
        // Scores are the exact cosine (re-scored in f32), in order.
        for (id, score) in &got {
            let i: usize = id[1..].parse().unwrap();
            assert!((score - cosine(q, &vectors[i * dim..(i + 1) * dim])).abs() < 1e-5);
        }
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    let recall = hits as f64 / total as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");

    // A selective filter (one scope in ten, few values) is answered exactly.
    let scoped = Filter { scope: Some("/s3".into()), ..Filter::default() };
    for q in queries.chunks_exact(dim).take(10) {
        let got: Vec<String> = e.search(q, dim, k, &scoped, None).unwrap().pop().unwrap().into_iter().map(|h| h.0.to_string()).collect();
        assert_eq!(got, brute(q, &vectors, dim, &live, k, |i| i % 10 == 3));
    }
    // A broad filter walks the graph and admits only matching records.
    let broad = Filter { categories: Some(vec!["c0".into(), "c1".into()]), ..Filter::default() };
    for q in queries.chunks_exact(dim).take(10) {
        let got = e.search(q, dim, k, &broad, None).unwrap().pop().unwrap();
        assert_eq!(got.len(), k);
        assert!(got.iter().all(|h| h.0[1..].parse::<usize>().unwrap() % 3 != 2));
    }

    // Deleted records are never returned, though their nodes stay in the graph.
    let deleted: Vec<String> = (0..n).step_by(13).map(|i| format!("r{i:05}")).collect();
    e.delete(&Filter { ids: Some(deleted.clone()), ..Filter::default() }).unwrap();
    for i in (0..n).step_by(13) {
        live.remove(&i);
    }
    for q in queries.chunks_exact(dim) {
        for h in e.search(q, dim, 50, &Filter::default(), None).unwrap().pop().unwrap() {
            assert!(!deleted.contains(&h.0.to_string()), "{} was deleted", h.0);
        }
    }

    // A changed vector is found at once (scanned exactly beside the graph) and never under
    // its old one; after a flush the graph covers it.
    let q0 = &queries[..dim];
    let old = &vectors[5 * dim..6 * dim].to_vec();
    e.update("r00005", Patch { vector: Some(q0.to_vec()), ..Patch::default() }).unwrap();
    vectors[5 * dim..6 * dim].copy_from_slice(q0);
    assert_eq!(e.stats().index.pending, 1);
    let top = e.search(q0, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!((&*top[0].0, top[0].1), ("r00005", 1.0));
    let around_old = e.search(old, dim, 5, &Filter::default(), None).unwrap().pop().unwrap();
    assert!(around_old.iter().all(|h| &*h.0 != "r00005" || (h.1 - cosine(old, q0)).abs() < 1e-5));
    assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    assert_eq!(e.stats().index.pending, 0);
    let top = e.search(q0, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(&*top[0].0, "r00005");

    // min_score holds; a batch (searched in parallel) equals its single queries.
    for h in e.search(q0, dim, 100, &Filter::default(), Some(0.6)).unwrap().pop().unwrap() {
        assert!(h.1 >= 0.6);
    }
    let batch = e.search(&queries[..6 * dim], dim, k, &Filter::default(), None).unwrap();
    for (i, q) in queries[..6 * dim].chunks_exact(dim).enumerate() {
        assert_eq!(batch[i], e.search(q, dim, k, &Filter::default(), None).unwrap()[0]);
    }
    // Asking for more than the graph search keeps (ef) still returns k.
    assert_eq!(e.search(q0, dim, 500, &Filter::default(), None).unwrap()[0].len(), 500);
}

#[test]
fn a_reset_during_a_build_voids_it() {
    let (n, dim) = (20_000, 32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let vectors = clustered(&mut rng, n, dim);
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    load(&e, &vectors, dim);
    e.set_index(hnsw(32)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    e.reset().unwrap();
    e.upsert((0..10).map(rec).collect(), &vectors[..10 * dim], dim, WriteMode::Insert).unwrap();
    assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    let st = e.stats().index;
    assert_eq!((st.graph_nodes, st.pending), (10, 0), "{st:?}");
    let got = e.search(&vectors[..dim], dim, 20, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(got.len(), 10);
}

#[test]
fn auto_mode_leaves_small_stores_to_the_exact_scan() {
    let dim = 64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let vectors = clustered(&mut rng, 2000, dim);
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(Some(&dir.path().join("s.ferro")), None, Durability::Normal).unwrap();
    load(&e, &vectors, dim);
    assert!(e.wait_for_index(Some(Duration::from_secs(5))).unwrap());
    let s = e.stats();
    assert_eq!((s.index.mode, s.index.active, s.index.graph_nodes, s.index_builds), (IndexMode::Auto, false, 0, 0));
    // Switching to the graph builds one; switching to exact stops using it.
    e.set_index(hnsw(16)).unwrap();
    assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    assert!(e.stats().index.active);
    e.set_index(IndexConfig { mode: IndexMode::Exact, ..hnsw(16) }).unwrap();
    assert!(!e.stats().index.active);
    // Bad parameters are typed errors.
    assert!(e.set_index(hnsw(0)).is_err());
    assert!(e.set_index(IndexConfig { params: HnswParams { m: 1, ef_construction: 8 }, ..hnsw(8) }).is_err());
}

#[test]
fn close_stops_the_builder() {
    let (n, dim) = (20_000, 64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let vectors = clustered(&mut rng, n, dim);
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    load(&e, &vectors, dim);
    e.set_index(hnsw(16)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    e.close();
    let t = std::time::Instant::now();
    while e.stats().index_building {
        assert!(t.elapsed() < Duration::from_secs(5), "the builder kept running after close");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(e.wait_for_index(None).is_err());
}

#[test]
fn concurrent_single_queries_share_scans_and_get_their_own_answers() {
    // 4,000 x 512 = 2M values: above the size where concurrent scans are batched.
    let (n, dim, k) = (4000, 512, 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let vectors = clustered(&mut rng, n, dim);
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    e.set_cache_capacity(0);
    load(&e, &vectors, dim);
    let queries = clustered(&mut rng, 64, dim);
    let scoped = Filter { scope: Some("/s1".into()), ..Filter::default() };
    let all = Filter::default();
    let expected: Vec<_> = queries
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, q)| e.search(q, dim, k + i % 3, if i % 2 == 0 { &scoped } else { &all }, None).unwrap().pop().unwrap())
        .collect();
    let start = std::sync::Barrier::new(16);
    std::thread::scope(|s| {
        for t in 0..16 {
            let (e, queries, expected, scoped, all, start) = (&e, &queries, &expected, &scoped, &all, &start);
            s.spawn(move || {
                start.wait();
                for round in 0..32 {
                    let i = (t * 32 + round) % 64;
                    let f = if i % 2 == 0 { scoped } else { all };
                    let got = e.search(&queries[i * dim..(i + 1) * dim], dim, k + i % 3, f, None).unwrap().pop().unwrap();
                    assert_eq!(got, expected[i]);
                }
            });
        }
    });
    let st = e.stats();
    assert!(
        st.coalesced_batches > 0 && st.coalesced_searches >= 2 * st.coalesced_batches,
        "{} {}",
        st.coalesced_searches,
        st.coalesced_batches
    );
}

#[test]
fn the_graph_is_saved_on_close_and_reused_only_at_the_same_store_position() {
    let (n, dim, k) = (3000, 32, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let vectors = clustered(&mut rng, n, dim);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.ferro");
    let graph_path = ferromem_core::engine::graph_file(&path);
    let queries = clustered(&mut rng, 20, dim);
    let answers = {
        let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        load(&e, &vectors, dim);
        e.set_index(hnsw(64)).unwrap();
        assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
        let a: Vec<_> = queries.chunks_exact(dim).map(|q| e.search(q, dim, k, &Filter::default(), None).unwrap()).collect();
        e.close();
        a
    };
    assert!(graph_path.is_file());
    // Reopened unchanged: the saved graph is published at open, no build runs, and the
    // answers are the same.
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    e.set_index(hnsw(64)).unwrap();
    let st = e.stats();
    assert!(st.index.active && st.index.graph_nodes == n && st.index.pending == 0 && st.index_builds == 0, "{:?}", st.index);
    for (q, a) in queries.chunks_exact(dim).zip(&answers) {
        assert_eq!(&e.search(q, dim, k, &Filter::default(), None).unwrap(), a);
    }
    // A write after the save makes the file stale: the next open ignores it and builds.
    e.upsert(vec![rec(n)], &vectors[..dim], dim, WriteMode::Insert).unwrap();
    drop(e); // saves the graph at the new position
    let saved = std::fs::read(&graph_path).unwrap();
    let other = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    other.upsert(vec![rec(n + 1)], &vectors[dim..2 * dim], dim, WriteMode::Insert).unwrap();
    drop(other);
    std::fs::write(&graph_path, &saved).unwrap(); // one write behind the store
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    e.set_index(hnsw(64)).unwrap();
    assert_eq!(e.stats().index.graph_nodes, 0);
    assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    assert_eq!(e.stats().index.graph_nodes, n + 2);
    e.close();
    // A torn or foreign file is refused, never half-read: the graph is rebuilt.
    let mut bytes = std::fs::read(&graph_path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&graph_path, &bytes).unwrap();
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    e.set_index(hnsw(64)).unwrap();
    assert_eq!(e.stats().index.graph_nodes, 0);
    assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    assert_eq!(e.search(&vectors[..dim], dim, 1, &Filter::default(), None).unwrap()[0].len(), 1);
}

#[test]
fn a_damaged_graph_file_is_rejected_reported_and_rebuilt() {
    let (n, dim) = (1500, 16);
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let vectors = clustered(&mut rng, n, dim);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.ferro");
    let graph_path = ferromem_core::engine::graph_file(&path);
    {
        let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        load(&e, &vectors, dim);
        e.set_index(hnsw(64)).unwrap();
        assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
    }
    let good = std::fs::read(&graph_path).unwrap();
    assert!(ferromem_core::hnsw::verify_graph_file(&graph_path).is_empty());
    // Header (68 bytes): magic, epoch, seq, dim, m, ef_construction, count, the nodes' and
    // the links' lengths and CRCs, the header's CRC; then the nodes, then the links.
    let nodes_len = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
    let cases: Vec<(Vec<u8>, &str)> = {
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x04;
            b
        };
        let mut count = good.clone();
        count[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        ferromem_core::hnsw::fuzz_reseal(&mut count);
        let mut link = good.clone();
        let last = link.len() - 4; // the last link of the last node: an index past the end
        link[last..].copy_from_slice(&u32::MAX.to_le_bytes());
        ferromem_core::hnsw::fuzz_reseal(&mut link);
        vec![
            (flip(30), "header"),
            (flip(68 + 3), "nodes section"),
            (flip(68 + nodes_len + 9), "links section"),
            (flip(good.len() - 1), "links section"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            (good[..68 + nodes_len].to_vec(), "truncated"),
            (good[..40].to_vec(), "truncated"),
            (count, "impossible header"),
            (link, "links to node"),
        ]
    };
    for (bad, why) in cases {
        std::fs::write(&graph_path, &bad).unwrap();
        let problems = ferromem_core::hnsw::verify_graph_file(&graph_path);
        assert!(problems.iter().any(|p| p.contains(why)), "{problems:?}, expected {why:?}");
        let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        e.set_index(hnsw(64)).unwrap();
        let st = e.stats();
        assert_eq!(st.index.graph_nodes, 0, "a damaged graph ({why}) was installed");
        assert!(st.graph_damage.as_deref().unwrap_or_default().contains(why), "{:?}", st.graph_damage);
        // Searches are exact meanwhile, and the graph is rebuilt in the background.
        assert_eq!(e.search(&vectors[..dim], dim, 1, &Filter::default(), None).unwrap()[0][0].0.as_ref(), "r00000");
        assert!(e.wait_for_index(Some(Duration::from_secs(60))).unwrap());
        assert_eq!(e.stats().index.graph_nodes, n);
        std::mem::forget(e); // keep the damaged file for the next case
    }
    // A version 1 file is not read, and is not damage.
    let mut old = good.clone();
    old[..8].copy_from_slice(b"FMHNSW01");
    std::fs::write(&graph_path, &old).unwrap();
    assert!(ferromem_core::hnsw::verify_graph_file(&graph_path).is_empty());
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert!(e.stats().graph_damage.is_none());
    std::mem::forget(e);
    // The whole file is installed at open.
    std::fs::write(&graph_path, &good).unwrap();
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    e.set_index(hnsw(64)).unwrap();
    assert_eq!(e.stats().index.graph_nodes, n);
    assert!(e.stats().graph_damage.is_none());
}
