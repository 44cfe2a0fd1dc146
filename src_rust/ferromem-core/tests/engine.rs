//! Engine-level tests: persistence, catch-up between two engines on one file, atomic
//! batches, typed errors, filters against a brute-force scan.

use ferromem_core::{Durability, Engine, Error, Filter, Privacy, Record, Scalar, WriteMode};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn rec(id: &str, scope: &str, cats: &[&str], meta: &str, created: f64) -> Record {
    Record {
        id: Arc::from(id),
        content: format!("content of {id}"),
        scope: scope.into(),
        categories: cats.iter().map(|c| c.to_string()).collect(),
        metadata_json: meta.into(),
        importance: 0.5,
        created_at: created,
        last_accessed: created,
        source: None,
        private: false,
    }
}

fn vecs(rng: &mut impl Rng, n: usize, dim: usize) -> Vec<f32> {
    (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

#[test]
fn writes_survive_reopen_and_reach_a_second_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.ferro");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let a = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    let b = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    let v = vecs(&mut rng, 3, 4);
    a.upsert(
        vec![rec("x", "/a", &["c"], "{}", 1.0), rec("y", "/a/b", &[], "{}", 2.0), rec("z", "/ab", &[], "{}", 3.0)],
        &v,
        4,
        WriteMode::Insert,
    )
    .unwrap();
    // b never wrote: it must catch up before answering.
    assert_eq!(b.count(&Filter::default()).unwrap(), 3);
    assert_eq!(b.dim().unwrap(), Some(4));
    let f = Filter { ids: Some(vec!["y".into()]), ..Filter::default() };
    assert_eq!(b.delete(&f).unwrap(), 1);
    assert!(a.get(&["y".into()]).unwrap()[0].is_none());
    let scoped = Filter { scope: Some("/a".into()), ..Filter::default() };
    assert_eq!(a.count(&scoped).unwrap(), 1);
    a.reset().unwrap();
    assert_eq!(b.count(&Filter::default()).unwrap(), 0);
    assert_eq!(b.dim().unwrap(), None);
    // After a reset the dimension is free again.
    let v8 = vecs(&mut rng, 1, 8);
    b.upsert(vec![rec("w", "/", &[], "{}", 4.0)], &v8, 8, WriteMode::Insert).unwrap();
    drop(a);
    drop(b);
    let c = Engine::open(Some(&path), None, Durability::Full).unwrap();
    let got = c.get(&["w".into()]).unwrap();
    let (r, vector) = got[0].as_ref().unwrap();
    assert_eq!(&*r.id, "w");
    assert_eq!(vector, &v8);
    assert_eq!(c.dim().unwrap(), Some(8));
}

#[test]
fn failed_batches_write_nothing() {
    let e = Engine::open(None, Some(3), Durability::Normal).unwrap();
    let good = [1.0f32, 0.0, 0.0];
    e.upsert(vec![rec("a", "/", &[], "{}", 1.0)], &good, 3, WriteMode::Insert).unwrap();
    let two = [0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0];
    // Duplicate of an existing id in insert mode.
    let err = e.upsert(vec![rec("b", "/", &[], "{}", 1.0), rec("a", "/", &[], "{}", 1.0)], &two, 3, WriteMode::Insert).unwrap_err();
    assert!(matches!(err, Error::DuplicateId(ref id) if id == "a"));
    // Wrong dimension.
    let err = e.upsert(vec![rec("c", "/", &[], "{}", 1.0)], &[1.0, 2.0], 2, WriteMode::Upsert).unwrap_err();
    assert!(matches!(err, Error::DimensionMismatch { expected: 3, got: 2 }));
    // NaN, zero vector, bad metadata.
    assert!(matches!(
        e.upsert(vec![rec("d", "/", &[], "{}", 1.0)], &[f32::NAN, 0.0, 1.0], 3, WriteMode::Upsert),
        Err(Error::InvalidVector(_))
    ));
    assert!(matches!(e.upsert(vec![rec("d", "/", &[], "{}", 1.0)], &[0.0; 3], 3, WriteMode::Upsert), Err(Error::InvalidVector(_))));
    assert!(matches!(e.upsert(vec![rec("d", "/", &[], "[1]", 1.0)], &good, 3, WriteMode::Upsert), Err(Error::InvalidMetadata(_))));
    assert_eq!(e.count(&Filter::default()).unwrap(), 1);
    assert!(e.get(&["b".into()]).unwrap()[0].is_none());
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn filtered_search_equals_brute_force() {
    // A narrow store scanned on one thread, and a small wide one whose scans (over 1M
    // multiply-adds) are split into blocks of fewer than BLOCK_ROWS rows for the cores.
    filtered_search_equals_brute_force_at(3000, 37);
    filtered_search_equals_brute_force_at(1500, 768);
}

fn filtered_search_equals_brute_force_at(n: usize, dim: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    let scopes = ["/a", "/a/b", "/ab", "/b", "/share\\", "/share\\docs"];
    let cats = ["x", "y", "z"];
    let v = vecs(&mut rng, n, dim);
    let mut recs = Vec::new();
    for i in 0..n {
        let mut r = rec(
            &format!("id{i:05}"),
            scopes[i % scopes.len()],
            &[cats[i % 3]],
            &format!("{{\"k\": {}, \"s\": \"v{}\"}}", i % 4, i % 2),
            i as f64,
        );
        r.private = i % 5 == 0;
        r.source = Some(format!("agent{}", i % 3));
        recs.push(r);
    }
    e.upsert(recs.clone(), &v, dim, WriteMode::Insert).unwrap();
    // Delete some, so free slots exist and get reused.
    let del = Filter { ids: Some((0..n).step_by(7).map(|i| format!("id{i:05}")).collect()), ..Filter::default() };
    let deleted = e.delete(&del).unwrap();
    assert_eq!(deleted, (0..n).step_by(7).count());
    let filters = [
        Filter::default(),
        Filter { scope: Some("/a".into()), ..Filter::default() },
        Filter { scope: Some("/share\\".into()), ..Filter::default() },
        Filter { categories: Some(vec!["x".into(), "z".into()]), ..Filter::default() },
        Filter { where_eq: vec![("k".into(), Scalar::num(2.0))], ..Filter::default() },
        Filter { privacy: Privacy::VisibleTo(Some("agent1".into())), ..Filter::default() },
        Filter {
            scope: Some("/a".into()),
            categories: Some(vec!["y".into()]),
            where_eq: vec![("s".into(), Scalar::Str("v1".into()))],
            older_than: Some(2000.0),
            ..Filter::default()
        },
    ];
    // k = n: every matching record, so a row a scan skips cannot hide below the top 10.
    for (f, k) in filters.iter().flat_map(|f| [(f, 10), (f, n)]) {
        let q = vecs(&mut rng, 3, dim);
        let got = e.search(&q, dim, k, f, None).unwrap();
        for (qi, hits) in got.iter().enumerate() {
            let qv = &q[qi * dim..(qi + 1) * dim];
            let mut want: Vec<(f64, String)> = (0..n)
                .filter(|i| i % 7 != 0)
                .filter(|&i| {
                    let r = &recs[i];
                    ferromem_core::filter::scope_matches(f.effective_scope().unwrap_or("/"), &r.scope)
                        && f.categories.as_ref().is_none_or(|c| r.categories.iter().any(|x| c.contains(x)))
                        && f.older_than.is_none_or(|t| r.created_at < t)
                        && f.where_eq.iter().all(|(k, val)| {
                            let m: serde_json::Value = serde_json::from_str(&r.metadata_json).unwrap();
                            m.get(k).and_then(Scalar::from_json).as_ref() == Some(val)
                        })
                        && match &f.privacy {
                            Privacy::Include => true,
                            Privacy::VisibleTo(who) => !r.private || r.source == *who,
                        }
                })
                .map(|i| (cosine(qv, &v[i * dim..(i + 1) * dim]), recs[i].id.to_string()))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            assert_eq!(hits.len(), want.len(), "filter {f:?}");
            let mut hits: Vec<(&str, f32)> = hits.iter().map(|(id, s)| (&**id, *s)).collect();
            if k == n {
                // All of them: f32 and f64 sums may order near-equal scores differently.
                hits.sort_by(|a, b| a.0.cmp(b.0));
                want.sort_by(|a, b| a.1.cmp(&b.1));
            }
            for (h, w) in hits.iter().zip(&want) {
                assert_eq!(h.0, w.1, "filter {f:?}");
                assert!((h.1 as f64 - w.0).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn closed_engine_refuses_work() {
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    e.close();
    assert!(matches!(e.count(&Filter::default()), Err(Error::Closed)));
}

#[test]
fn garbage_file_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.ferro");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    match Engine::open(Some(&path), None, Durability::Normal) {
        Err(Error::NotAStore(_)) => {}
        Err(e) => panic!("expected NotAStore, got {e:?}"),
        Ok(_) => panic!("opened garbage"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 8192]);
}

/// Large scans take the two-phase path (half-precision pre-scan, exact re-score). Its
/// answer must be bit-identical to scoring every matching record in f32, including ties
/// at the k-th place (exact duplicates) and near-duplicates closer than the f16 error.
#[test]
fn two_phase_search_is_bit_identical_to_the_f32_scan() {
    use ferromem_core::simd::dot_f32;
    use ferromem_core::state::inverse_norm;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (n, dim) = (24_000, 64); // 1.5M values: above the pre-scan threshold
    let mut v = vecs(&mut rng, n, dim);
    // 200 groups of 5 exact duplicates and 200 groups of near-duplicates (1e-6 apart).
    for g in 0..200 {
        for d in 1..5 {
            let (src, dst) = (g * 5 * dim, (g * 5 + d) * dim);
            v.copy_within(src..src + dim, dst);
        }
        let base = (2000 + g * 5) * dim;
        for d in 1..5 {
            for j in 0..dim {
                v[base + d * dim + j] = v[base + j] + 1e-6 * d as f32;
            }
        }
    }
    // 300 perturbations of one vector, closer to each other than binary16 can resolve: the
    // pre-scan cannot rank them, so the exactness check must send the query to the f32 scan.
    let base = 5000 * dim;
    for d in 1..300 {
        for j in 0..dim {
            v[base + d * dim + j] = v[base + j] * (1.0 + 2e-4 * rng.gen_range(-1.0f32..1.0));
        }
    }
    // 8 tight clusters of 1,000 records around 8 unit directions (noise of about 0.004 a
    // value): inside each, the f16 order is off by about the f16 error, so phase one
    // misses some of the true top 10 while its last candidate's approximate score sits
    // below the 10th exact one. Only the error bound then sends the query to the f32
    // scan (a zero bound fails this test; checked in numpy: ~80% of such queries).
    let mut centres = vecs(&mut rng, 8, dim);
    for c in centres.chunks_exact_mut(dim) {
        let inv = inverse_norm(c);
        c.iter_mut().for_each(|x| *x *= inv);
    }
    for (c, centre) in centres.chunks_exact(dim).enumerate() {
        for j in 0..1000 {
            let row = (6000 + c * 1000 + j) * dim;
            for (i, &x) in centre.iter().enumerate() {
                v[row + i] = x + 0.004 * 3f32.sqrt() * rng.gen_range(-1.0f32..1.0);
            }
        }
    }
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    let recs: Vec<Record> =
        (0..n).map(|i| rec(&format!("id{:05}", (i * 7919) % n), ["/a", "/b"][i % 2], &[["x", "y", "z"][i % 3]], "{}", i as f64)).collect();
    e.upsert(recs.clone(), &v, dim, WriteMode::Insert).unwrap();
    let mut queries: Vec<f32> = vecs(&mut rng, 6, dim);
    queries.extend_from_slice(&v[0..dim]); // ties: 5 identical best matches
    queries.extend_from_slice(&v[2000 * dim..2001 * dim]); // near-duplicates at the top
    queries.extend_from_slice(&v[base..base + dim]); // 300 records within f16 error of each other
    queries.extend_from_slice(&centres); // the tight clusters
    let nq = queries.len() / dim;
    let filters = [
        Filter::default(),
        Filter { scope: Some("/a".into()), ..Filter::default() },
        Filter { categories: Some(vec!["x".into(), "y".into()]), ..Filter::default() },
    ];
    for f in &filters {
        for k in [1usize, 3, 10, 50] {
            for min_score in [None, Some(0.2f32)] {
                // One query per call takes the two-phase path; a batch takes the f32
                // multi-query kernel, whose sums round differently (so near-ties may swap).
                let got: Vec<_> =
                    (0..nq).map(|q| e.search(&queries[q * dim..(q + 1) * dim], dim, k, f, min_score).unwrap().remove(0)).collect();
                let batch = e.search(&queries, dim, k, f, min_score).unwrap();
                for (one, many) in got.iter().zip(&batch) {
                    assert_eq!(one.len(), many.len());
                    for (a, b) in one.iter().zip(many) {
                        assert!((a.1 - b.1).abs() <= 1e-6, "{a:?} vs {b:?}");
                    }
                }
                for q in 0..nq {
                    // The engine scores the query normalised in f64 (any finite scale).
                    let qv = &ferromem_core::engine::unit_queries(&queries[q * dim..(q + 1) * dim], dim)[..];
                    let q_inv = inverse_norm(qv);
                    let mut want: Vec<(f32, &str)> = (0..n)
                        .filter(|&i| match (&f.scope, &f.categories) {
                            (Some(s), _) => recs[i].scope == *s,
                            (_, Some(c)) => c.contains(&recs[i].categories[0]),
                            _ => true,
                        })
                        .map(|i| {
                            let row = &v[i * dim..(i + 1) * dim];
                            ((dot_f32(qv, row) * inverse_norm(row) * q_inv).clamp(-1.0, 1.0), &*recs[i].id)
                        })
                        .filter(|s| min_score.is_none_or(|m| s.0 >= m))
                        .collect();
                    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
                    want.truncate(k);
                    let got_q: Vec<(f32, &str)> = got[q].iter().map(|(id, s)| (*s, &**id)).collect();
                    assert_eq!(got_q, want, "query {q}, k {k}, filter {f:?}, min_score {min_score:?}");
                }
            }
        }
    }
}

/// The result cache answers repeated searches and never serves a stale answer: every
/// change that can alter a result (insert, delete, vector, filterable field, reset, another
/// engine's write) misses; a touch does not. Checked against a cache-less engine.
#[test]
fn result_cache_is_exact_under_every_kind_of_write() {
    use ferromem_core::Patch;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.ferro");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let dim = 8;
    let cached = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    let other = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    plain.set_cache_capacity(0);
    let recs: Vec<Record> = (0..40).map(|i| rec(&format!("r{i}"), if i % 2 == 0 { "/a" } else { "/b" }, &["c"], "{}", i as f64)).collect();
    cached.upsert(recs, &vecs(&mut rng, 40, dim), dim, WriteMode::Insert).unwrap();
    let q = vecs(&mut rng, 1, dim);
    let scoped = Filter { scope: Some("/a".into()), ..Filter::default() };
    let check = |why: &str| {
        for f in [&Filter::default(), &scoped] {
            let got = cached.search(&q, dim, 5, f, None).unwrap();
            let want = plain.search(&q, dim, 5, f, None).unwrap();
            assert_eq!(got, want, "stale cache after {why}");
        }
    };
    check("the first search");
    let misses = cached.cache_stats().misses;
    check("nothing");
    let s = cached.cache_stats();
    assert_eq!((s.misses, s.hits), (misses, 2), "a repeated search must hit");
    // The best hit of the unfiltered query, to move around.
    let top = cached.search(&q, dim, 1, &Filter::default(), None).unwrap()[0][0].0.to_string();
    let misses = cached.cache_stats().misses;
    cached.touch(std::slice::from_ref(&top), 1e9).unwrap();
    check("a touch");
    assert_eq!(cached.cache_stats().misses, misses, "a touch must not invalidate");
    let moved = Patch { scope: Some("/b".into()), ..Patch::default() };
    cached.update(&top, moved).unwrap();
    check("a scope change");
    let content_only = Patch { content: Some("new words".into()), importance: Some(0.9), ..Patch::default() };
    cached.update(&top, content_only).unwrap();
    check("a content change");
    let near: Vec<f32> = q.iter().map(|x| x * 2.0).collect();
    other.upsert(vec![rec("from-other", "/a", &[], "{}", 99.0)], &near, dim, WriteMode::Insert).unwrap();
    check("another engine's insert");
    assert_eq!(cached.search(&q, dim, 1, &scoped, None).unwrap()[0][0].0.as_ref(), "from-other");
    let vector = Patch { vector: Some(vecs(&mut rng, 1, dim)), ..Patch::default() };
    other.update("from-other", vector).unwrap();
    check("another engine's vector change");
    other.delete(&Filter { ids: Some(vec!["r2".into(), "r3".into()]), ..Filter::default() }).unwrap();
    check("another engine's delete");
    other.reset().unwrap();
    other.upsert(vec![rec("after-reset", "/a", &[], "{}", 1.0)], &vecs(&mut rng, 1, dim), dim, WriteMode::Insert).unwrap();
    check("a reset");
    assert!(cached.cache_stats().entries <= 256);
}
