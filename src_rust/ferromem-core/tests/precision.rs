//! f16 precision: only the unit half-precision rows in memory, the exact vectors on disk.
//! Searches stay within the f16 error bound of the f32 engine on the same file; get, list,
//! update, touch and a second process see and keep the exact vectors.

use ferromem_core::simd::half::prescan_error_bound;
use ferromem_core::state::{IndexConfig, IndexMode, Precision};
use ferromem_core::{Durability, Engine, Error, Filter, Patch, Record, WriteMode};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn rec(i: usize) -> Record {
    Record {
        id: Arc::from(format!("r{i:05}")),
        content: format!("c{i}"),
        scope: format!("/s{}", i % 4),
        categories: vec![],
        metadata_json: "{}".into(),
        importance: 0.5,
        created_at: i as f64,
        last_accessed: i as f64,
        source: None,
        private: false,
    }
}

/// `len` values uniform in [-1, 1).
fn uniform(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// `n` rows of `dim` around 30 random centres (clustered, like text embeddings).
fn clustered(rng: &mut impl Rng, n: usize, dim: usize) -> Vec<f32> {
    let centres: Vec<Vec<f32>> = (0..30).map(|_| uniform(rng, dim)).collect();
    (0..n).flat_map(|i| centres[i % 30].iter().map(|&c| c + 0.4 * rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>()).collect()
}

/// A store file in a fresh directory (keep it alive) holding records 0..n with `vectors`,
/// and the f32 engine that wrote it.
fn written_store(vectors: &[f32], dim: usize) -> (tempfile::TempDir, std::path::PathBuf, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ferro");
    let full = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    full.upsert((0..vectors.len() / dim).map(rec).collect(), vectors, dim, WriteMode::Insert).unwrap();
    (dir, path, full)
}

#[test]
fn f16_engine_answers_within_the_bound_and_keeps_exact_vectors() {
    let (n, dim, k) = (3000, 64, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let vectors = clustered(&mut rng, n, dim);
    assert!(matches!(Engine::open_with(None, None, Durability::Normal, Precision::F16), Err(Error::InvalidInput(_))));
    let (_dir, path, full) = written_store(&vectors, dim);
    let half = Engine::open_with(Some(&path), None, Durability::Normal, Precision::F16).unwrap();
    let (mf, mh) = (full.stats().memory_bytes, half.stats().memory_bytes);
    // The f32 rows (4 bytes a value) are not held; the half-precision ones (2) are.
    assert_eq!(mf - mh, n * dim * 4, "f16 {mh} bytes vs f32 {mf}");

    let eps = prescan_error_bound(dim) + 1e-6;
    let (mut same, mut total) = (0, 0);
    for q in (0..100).map(|_| uniform(&mut rng, dim)) {
        for f in [Filter::default(), Filter { scope: Some("/s2".into()), ..Filter::default() }] {
            let exact = full.search(&q, dim, k, &f, None).unwrap().pop().unwrap();
            let approx = half.search(&q, dim, k, &f, None).unwrap().pop().unwrap();
            assert_eq!(approx.len(), k);
            for (id, score) in &approx {
                let i: usize = id[1..].parse().unwrap();
                let truth = full.search(&vectors[i * dim..(i + 1) * dim], dim, 1, &Filter::default(), None).unwrap();
                assert_eq!(&*truth[0][0].0, &**id);
                let exact_score = exact.iter().find(|h| h.0 == *id).map(|h| h.1);
                if let Some(s) = exact_score {
                    assert!((s - score).abs() <= eps, "{s} vs {score}");
                }
            }
            same += approx.iter().filter(|h| exact.iter().any(|e| e.0 == h.0)).count();
            total += k;
        }
    }
    assert!(same as f64 / total as f64 >= 0.995, "recall {}", same as f64 / total as f64);

    // get and list return the exact vectors from disk.
    let ids: Vec<String> = ["r00007", "r02999", "nope"].iter().map(|s| s.to_string()).collect();
    assert_eq!(half.get(&ids).unwrap(), full.get(&ids).unwrap());
    let scoped = Filter { scope: Some("/s1".into()), ..Filter::default() };
    assert_eq!(half.list(&scoped, 3, Some(20)).unwrap(), full.list(&scoped, 3, Some(20)).unwrap());
    // Field updates and touches keep the stored vector exactly, seen by both engines.
    assert!(half.update("r00007", Patch { content: Some("new".into()), ..Patch::default() }).unwrap());
    assert_eq!(half.touch(&["r00007".into(), "r00008".into()], 99.0).unwrap(), 2);
    for e in [&full, &half] {
        let got = e.get(&["r00007".into()]).unwrap().pop().unwrap().unwrap();
        assert_eq!((got.0.content.as_str(), got.0.last_accessed), ("new", 99.0));
        assert_eq!(got.1, &vectors[7 * dim..8 * dim]);
    }
    // A new vector from the f16 engine, and a record added by the other engine.
    let v = uniform(&mut rng, dim);
    half.update("r00009", Patch { vector: Some(v.clone()), ..Patch::default() }).unwrap();
    assert_eq!(full.get(&["r00009".into()]).unwrap()[0].as_ref().unwrap().1, v);
    assert_eq!(&*half.search(&v, dim, 1, &Filter::default(), None).unwrap()[0][0].0, "r00009");
    let w = uniform(&mut rng, dim);
    full.upsert(vec![rec(5000)], &w, dim, WriteMode::Insert).unwrap();
    let top = half.search(&w, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(&*top[0].0, "r05000");
    assert!((top[0].1 - 1.0).abs() <= eps);
    assert_eq!(half.get(&["r05000".into()]).unwrap()[0].as_ref().unwrap().1, w);
}

/// An f16 batch (rows widened to f32 a few hundred at a time, then the f32 multi-query
/// kernel) finds what each query finds alone, with the same scores (re-scored as a single
/// query is). 384 dimensions: several widened pieces per block of rows, the last partial.
#[test]
fn f16_batches_answer_as_single_queries() {
    let (n, dim, k) = (2500, 384, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let vectors = uniform(&mut rng, n * dim);
    let (_dir, path, _) = written_store(&vectors, dim);
    let half = Engine::open_with(Some(&path), None, Durability::Normal, Precision::F16).unwrap();
    // Queries near stored rows spread over every piece of every block.
    let picks = [3usize, 340, 341, 700, 1023, 1024, 1500, 2047, 2048, 2499];
    let batch: Vec<f32> = picks.iter().flat_map(|&i| vectors[i * dim..(i + 1) * dim].iter().map(|x| x + 0.01)).collect();
    let together = half.search(&batch, dim, k, &Filter::default(), None).unwrap();
    for ((q, hits), &i) in batch.chunks_exact(dim).zip(&together).zip(&picks) {
        assert_eq!(&*hits[0].0, format!("r{i:05}"));
        assert_eq!(hits, &half.search(q, dim, k, &Filter::default(), None).unwrap()[0]);
    }
}

/// Exact cosine scores of every record for `q`, from the f32 engine's own scan.
fn exact_scores(full: &Engine, q: &[f32], dim: usize, n: usize, f: &Filter) -> Vec<(Arc<str>, f32)> {
    full.search(q, dim, n, f, None).unwrap().pop().unwrap()
}

#[test]
fn int8_engine_reranks_to_exact_scores_and_keeps_exact_vectors() {
    let (n, dim, k) = (3000, 64, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let vectors = clustered(&mut rng, n, dim);
    assert!(matches!(Engine::open_with(None, None, Durability::Normal, Precision::Int8), Err(Error::InvalidInput(_))));
    let (_dir, path, full) = written_store(&vectors, dim);
    let int8 = Engine::open_with(Some(&path), None, Durability::Normal, Precision::Int8).unwrap();
    assert_eq!(int8.stats().precision, Precision::Int8);
    let (mf, mi) = (full.stats().memory_bytes, int8.stats().memory_bytes);
    // f32 (4 bytes a value) and f16 (2) rows replaced by int8 ones (1) and a factor a row.
    let saved = mf - mi;
    assert!(saved <= n * dim * 5 && saved >= n * dim * 5 - 2 * n * 4, "int8 {mi} bytes vs f32 {mf}");

    let scoped = Filter { scope: Some("/s2".into()), ..Filter::default() };
    let (mut same, mut total) = (0, 0);
    for q in (0..100).map(|_| uniform(&mut rng, dim)) {
        for f in [&Filter::default(), &scoped] {
            let all = exact_scores(&full, &q, dim, n, f);
            let got = int8.search(&q, dim, k, f, None).unwrap().pop().unwrap();
            assert_eq!(got.len(), k);
            // Every score is the f32 engine's exact score of that record, bit for bit, and
            // the order is the exact one (score descending, ties by id).
            for (id, score) in &got {
                let truth = all.iter().find(|h| h.0 == *id).expect("a matching record").1;
                assert_eq!(score.to_bits(), truth.to_bits(), "{id}: {score} vs {truth}");
            }
            assert!(got.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
            same += got.iter().filter(|h| all[..k].iter().any(|e| e.0 == h.0)).count();
            total += k;
            // A score floor applies to the exact scores: exactly the records above it.
            let floor = all[4].1;
            let above = int8.search(&q, dim, k, f, Some(floor)).unwrap().pop().unwrap();
            assert!(above.iter().all(|h| h.1 >= floor));
            assert_eq!(above.len(), all.iter().filter(|h| h.1 >= floor).count().min(k));
        }
    }
    let recall = same as f64 / total as f64;
    assert!(recall >= 0.995, "recall {recall}");

    // The graph over the int8 rows: re-ranked to exact scores too.
    int8.set_index(IndexConfig { mode: IndexMode::Hnsw, ..IndexConfig::default() }).unwrap();
    assert!(int8.wait_for_index(Some(std::time::Duration::from_secs(60))).unwrap());
    assert!(int8.stats().index.active);
    let (mut same, mut total) = (0, 0);
    for q in (0..50).map(|_| uniform(&mut rng, dim)) {
        let all = exact_scores(&full, &q, dim, n, &Filter::default());
        let got = int8.search(&q, dim, k, &Filter::default(), None).unwrap().pop().unwrap();
        for (id, score) in &got {
            assert_eq!(score.to_bits(), all.iter().find(|h| h.0 == *id).unwrap().1.to_bits());
        }
        same += got.iter().filter(|h| all[..k].iter().any(|e| e.0 == h.0)).count();
        total += k;
    }
    assert!(same as f64 / total as f64 >= 0.95, "graph recall {}", same as f64 / total as f64);

    // get and list return the exact vectors from disk; writes from either engine are seen.
    let ids: Vec<String> = ["r00007", "r02999", "nope"].iter().map(|s| s.to_string()).collect();
    assert_eq!(int8.get(&ids).unwrap(), full.get(&ids).unwrap());
    assert_eq!(int8.list(&scoped, 3, Some(20)).unwrap(), full.list(&scoped, 3, Some(20)).unwrap());
    let v = uniform(&mut rng, dim);
    int8.update("r00009", Patch { vector: Some(v.clone()), ..Patch::default() }).unwrap();
    assert_eq!(full.get(&["r00009".into()]).unwrap()[0].as_ref().unwrap().1, v);
    let top = int8.search(&v, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(&*top[0].0, "r00009");
    assert_eq!(top[0].1.to_bits(), full.search(&v, dim, 1, &Filter::default(), None).unwrap()[0][0].1.to_bits());
    let w = uniform(&mut rng, dim);
    full.upsert(vec![rec(5000)], &w, dim, WriteMode::Insert).unwrap();
    let top = int8.search(&w, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(&*top[0].0, "r05000");
    assert!((top[0].1 - 1.0).abs() <= 1e-6);
}

/// A writer in another engine keeps replacing one record's vector while the int8 engine
/// searches for it: every answer scores that record with one version's exact cosine,
/// never a mix of the candidate search at one version and the vectors of another.
#[test]
fn int8_search_never_mixes_versions_under_a_concurrent_writer() {
    let (n, dim) = (500, 32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let vectors = uniform(&mut rng, n * dim);
    let (_dir, path, writer) = written_store(&vectors, dim);
    let int8 = Engine::open_with(Some(&path), None, Durability::Normal, Precision::Int8).unwrap();
    let a = uniform(&mut rng, dim);
    let b: Vec<f32> = a.iter().map(|x| x + 0.3 * rng.gen_range(-1.0f32..1.0)).collect();
    writer.update("r00001", Patch { vector: Some(a.clone()), ..Patch::default() }).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                let v = if i % 2 == 0 { &a } else { &b };
                writer.update("r00001", Patch { vector: Some(v.clone()), ..Patch::default() }).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        let cos = |v: &[f32]| {
            let full = Engine::open(None, None, Durability::Normal).unwrap();
            full.upsert(vec![rec(1)], v, dim, WriteMode::Insert).unwrap();
            full.search(&a, dim, 1, &Filter::default(), None).unwrap()[0][0].1
        };
        let (score_a, score_b) = (cos(&a), cos(&b));
        let mut searches = 0;
        while !stop.load(std::sync::atomic::Ordering::Acquire) || searches < 50 {
            let top = int8.search(&a, dim, 3, &Filter::default(), None).unwrap().pop().unwrap();
            let hit = top.iter().find(|h| &*h.0 == "r00001").expect("the record near the query is found");
            assert!(
                hit.1.to_bits() == score_a.to_bits() || hit.1.to_bits() == score_b.to_bits(),
                "{} is neither {score_a} nor {score_b}",
                hit.1
            );
            searches += 1;
        }
    });
}

/// Concurrent single int8 queries over a store large enough to share scans: they are
/// coalesced into shared int8 scans, and each caller, re-ranking its own candidates,
/// gets exactly what it gets alone.
#[test]
fn concurrent_int8_queries_share_scans_and_get_their_own_answers() {
    // 8,000 x 512 = 4M values: above the size where concurrent scans are batched (the
    // scoped quarter, 1M values, is just below it and runs alone).
    let (n, dim) = (8000, 512);
    let mut rng = rand::rngs::StdRng::seed_from_u64(25);
    let vectors = uniform(&mut rng, n * dim);
    let (_dir, path, _) = written_store(&vectors, dim);
    let e = Engine::open_with(Some(&path), None, Durability::Normal, Precision::Int8).unwrap();
    e.set_cache_capacity(0);
    let queries = uniform(&mut rng, 32 * dim);
    let scoped = Filter { scope: Some("/s1".into()), ..Filter::default() };
    let all = Filter::default();
    let filter_of = |i: usize| if i.is_multiple_of(2) { &all } else { &scoped };
    let expected: Vec<_> = queries
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, q)| e.search(q, dim, 5 + i % 3, filter_of(i), None).unwrap().pop().unwrap())
        .collect();
    let start = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (e, queries, expected, start, filter_of) = (&e, &queries, &expected, &start, &filter_of);
            s.spawn(move || {
                start.wait();
                for round in 0..24 {
                    let i = (t * 24 + round) % 32;
                    let got = e.search(&queries[i * dim..(i + 1) * dim], dim, 5 + i % 3, filter_of(i), None).unwrap().pop().unwrap();
                    assert_eq!(got, expected[i]);
                }
            });
        }
    });
    let st = e.stats();
    assert!(st.coalesced_batches > 0, "{} {}", st.coalesced_searches, st.coalesced_batches);
}

/// The exact-vector reads of int8 re-ranking (and of f16/int8 `get`) are reads at the
/// replica's position. They still succeed after other records were written, since a row
/// no newer than that position holds what it held there, and fail (so the caller catches
/// up) once one of the rows asked for was rewritten or deleted, or the store was reset.
#[test]
fn reads_at_a_position_survive_writes_to_other_records() {
    use ferromem_core::storage::{sqlite::SqliteStorage, Images, VectorsAt};
    let (n, dim) = (50, 16);
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let vectors = uniform(&mut rng, n * dim);
    let (_dir, path, writer) = written_store(&vectors, dim);
    let mut reader = SqliteStorage::open(&path, Durability::Normal).unwrap();
    let position = |r: &mut SqliteStorage| {
        let at = r.image_position().unwrap();
        (at.epoch, at.seq)
    };
    let ids: Vec<Arc<str>> = vec!["r00001".into(), "r00002".into()];
    let row = |i: usize| Some(vectors[i * dim..(i + 1) * dim].to_vec());
    let (epoch, seq) = position(&mut reader);
    assert_eq!(reader.vectors_at(epoch, seq, &ids).unwrap(), Some(vec![row(1), row(2)]));

    // Other records written, inserted, deleted: still the read at `seq`.
    writer.update("r00007", Patch { vector: Some(uniform(&mut rng, dim)), ..Patch::default() }).unwrap();
    writer.upsert(vec![rec(n)], &uniform(&mut rng, dim), dim, WriteMode::Insert).unwrap();
    writer.delete(&Filter { ids: Some(vec!["r00009".into()]), ..Filter::default() }).unwrap();
    assert!(position(&mut reader).1 > seq);
    assert_eq!(reader.vectors_at(epoch, seq, &ids).unwrap(), Some(vec![row(1), row(2)]));

    // One of them rewritten (even a field only): unknown at `seq`, known at the new position.
    writer.update("r00002", Patch { content: Some("new".into()), ..Patch::default() }).unwrap();
    assert_eq!(reader.vectors_at(epoch, seq, &ids).unwrap(), None);
    let (_, seq) = position(&mut reader);
    assert_eq!(reader.vectors_at(epoch, seq, &ids).unwrap(), Some(vec![row(1), row(2)]));

    // One of them deleted: unknown at the old position; absent at the new one.
    writer.delete(&Filter { ids: Some(vec!["r00001".into()]), ..Filter::default() }).unwrap();
    assert_eq!(reader.vectors_at(epoch, seq, &ids).unwrap(), None);
    let (_, now) = position(&mut reader);
    assert_eq!(reader.vectors_at(epoch, now, &ids).unwrap(), Some(vec![None, row(2)]));

    // A reset: another epoch, nothing is known at the old one.
    writer.reset().unwrap();
    writer.upsert(vec![rec(2)], &vectors[2 * dim..3 * dim], dim, WriteMode::Insert).unwrap();
    assert_eq!(reader.vectors_at(epoch, now, &ids).unwrap(), None);
}
