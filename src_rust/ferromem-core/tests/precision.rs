//! f16 precision: only the unit half-precision rows in memory, the exact vectors on disk.
//! Searches stay within the f16 error bound of the f32 engine on the same file; get, list,
//! update, touch and a second process see and keep the exact vectors.

use ferromem_core::simd::half::prescan_error_bound;
use ferromem_core::state::Precision;
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

#[test]
fn f16_engine_answers_within_the_bound_and_keeps_exact_vectors() {
    let (n, dim, k) = (3000, 64, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let centres: Vec<Vec<f32>> = (0..30).map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect();
    let vectors: Vec<f32> = (0..n).flat_map(|i| centres[i % 30].iter().map(|&c| c + 0.4 * rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>()).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ferro");
    assert!(matches!(Engine::open_with(None, None, Durability::Normal, Precision::F16), Err(Error::InvalidInput(_))));
    let full = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    full.upsert((0..n).map(rec).collect(), &vectors, dim, WriteMode::Insert).unwrap();
    let half = Engine::open_with(Some(&path), None, Durability::Normal, Precision::F16).unwrap();
    let (mf, mh) = (full.stats().memory_bytes, half.stats().memory_bytes);
    // The f32 rows (4 bytes a value) are not held; the half-precision ones (2) are.
    assert_eq!(mf - mh, n * dim * 4, "f16 {mh} bytes vs f32 {mf}");

    let eps = prescan_error_bound(dim) + 1e-6;
    let (mut same, mut total) = (0, 0);
    for q in (0..100).map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<f32>>()) {
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
    let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    half.update("r00009", Patch { vector: Some(v.clone()), ..Patch::default() }).unwrap();
    assert_eq!(full.get(&["r00009".into()]).unwrap()[0].as_ref().unwrap().1, v);
    assert_eq!(&*half.search(&v, dim, 1, &Filter::default(), None).unwrap()[0][0].0, "r00009");
    let w: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    full.upsert(vec![rec(5000)], &w, dim, WriteMode::Insert).unwrap();
    let top = half.search(&w, dim, 1, &Filter::default(), None).unwrap().pop().unwrap();
    assert_eq!(&*top[0].0, "r05000");
    assert!((top[0].1 - 1.0).abs() <= eps);
    assert_eq!(half.get(&["r05000".into()]).unwrap()[0].as_ref().unwrap().1, w);
}
