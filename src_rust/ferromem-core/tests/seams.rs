//! The core's seams: a scorer plugged into a real engine (here a naive scalar loop that
//! reads the rows as buffers) answers as the CPU scorer does, for each precision, with and
//! without a filter; and a device mirror's view of the rows (buffers, slot -> id, the rows
//! changed since a generation) sees inserts, updates and deletes.

use ferromem_core::vectors::{RowBuffer, RowChunks};
use ferromem_core::{CpuScorer, Durability, Engine, Filter, Patch, Plan, Precision, Record, RowChanges, RowsView, Scorer, WriteMode};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const CHUNK_ROWS: usize = ferromem_core::arena::CHUNK_ROWS;

fn rec(i: usize) -> Record {
    Record {
        id: Arc::from(format!("r{i:04}")),
        content: String::new(),
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

/// A scorer another device would be: it reads the rows only through their buffers and
/// scores them in a plain loop (f64 sums), counting its calls.
#[derive(Default)]
struct NaiveScorer {
    calls: AtomicUsize,
}

/// Row `slot` of a buffer as f64 values.
fn row_of(buffer: &RowBuffer<'_>, slot: usize) -> Vec<f64> {
    let (c, r, n) = (slot / CHUNK_ROWS, slot % CHUNK_ROWS, buffer.per_row);
    match &buffer.chunks {
        RowChunks::F32(chunks) => chunks[c][r * n..(r + 1) * n].iter().map(|&x| x as f64).collect(),
        RowChunks::U16(chunks) => chunks[c][r * n..(r + 1) * n].iter().map(|&x| half::f16::from_bits(x).to_f64()).collect(),
        RowChunks::I8(chunks) => chunks[c][r * n..(r + 1) * n].iter().map(|&x| x as f64).collect(),
    }
}

impl Scorer for NaiveScorer {
    fn name(&self) -> &str {
        "naive"
    }

    fn top_k(&self, plan: &Plan<'_>, rows: &RowsView<'_>) -> Vec<Vec<(f32, u32)>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let buffers = rows.buffers();
        let named = |name: &str| buffers.iter().find(|b| b.name == name);
        let inv_norm = rows.inv_norm();
        let slots: Vec<u32> = match plan.candidates {
            Some(c) => c.to_vec(),
            None => (0..rows.slot_count() as u32).filter(|&s| inv_norm[s as usize] != 0.0).collect(),
        };
        (0..plan.nq)
            .map(|q| {
                let query: Vec<f64> = plan.query(q).iter().map(|&x| x as f64).collect();
                let qn = query.iter().map(|x| x * x).sum::<f64>().sqrt();
                let mut hits: Vec<(f32, u32)> = slots
                    .iter()
                    .map(|&s| {
                        // The exact vector when the rows keep it, else the unit row they keep.
                        let (row, scale) = if let Some(b) = named("f32") {
                            (row_of(b, s as usize), inv_norm[s as usize] as f64)
                        } else if let Some(b) = named("f16") {
                            (row_of(b, s as usize), 1.0)
                        } else {
                            let factors = named("int8_factors").expect("int8 rows have factors");
                            (row_of(named("int8").expect("int8 rows"), s as usize), row_of(factors, s as usize)[0])
                        };
                        let dot: f64 = row.iter().zip(&query).map(|(a, b)| a * b).sum();
                        ((dot * scale / qn) as f32, s)
                    })
                    .filter(|h| plan.min_score.is_none_or(|m| h.0 >= m))
                    .collect();
                hits.sort_by(|a, b| b.0.total_cmp(&a.0));
                hits.truncate(plan.k);
                hits
            })
            .collect()
    }
}

#[test]
fn a_plugged_scorer_answers_as_the_cpu_scorer_for_each_precision() {
    let (n, dim, k) = (400, 24, 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let vectors: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let queries: Vec<f32> = (0..3 * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    {
        let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        e.upsert((0..n).map(rec).collect(), &vectors, dim, WriteMode::Insert).unwrap();
    }
    let scoped = Filter { scope: Some("/s1".into()), ..Filter::default() };
    for &precision in Precision::ALL {
        let e = Engine::open_with(Some(&path), None, Durability::Normal, precision).unwrap();
        assert_eq!(e.scorer().name(), "cpu");
        let answers = |e: &Engine| -> Vec<Vec<(Arc<str>, f32)>> {
            let mut out = Vec::new();
            for filter in [&Filter::default(), &scoped] {
                for q in queries.chunks_exact(dim) {
                    out.extend(e.search(q, dim, k, filter, None).unwrap());
                }
                out.extend(e.search(&queries, dim, k, filter, Some(0.1)).unwrap());
            }
            out
        };
        let cpu = answers(&e);
        let naive = Arc::new(NaiveScorer::default());
        e.set_scorer(naive.clone());
        let plugged = answers(&e);
        assert!(naive.calls.load(Ordering::Relaxed) >= 8, "{precision:?}: the plugged scorer ran the searches");
        // f32 and int8 (re-ranked exactly) agree to f32 rounding; f16 to its rows' error.
        let tolerance = if precision == Precision::F16 { 2e-3 } else { 1e-5 };
        assert_eq!(cpu.len(), plugged.len());
        for (a, b) in cpu.iter().zip(&plugged) {
            assert_eq!(a.len(), b.len(), "{precision:?}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.0, y.0, "{precision:?}: {a:?} vs {b:?}");
                assert!((x.1 - y.1).abs() <= tolerance, "{precision:?}: {a:?} vs {b:?}");
            }
        }
        e.set_scorer(Arc::new(CpuScorer));
        assert_eq!(answers(&e), cpu, "{precision:?}: the CPU scorer back");
    }
}

#[test]
fn the_rows_changed_since_a_generation_show_inserts_updates_and_deletes() {
    let dim = 8;
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    let v = |i: usize| -> Vec<f32> { (0..dim).map(|j| ((i * 7 + j) % 5) as f32 + 1.0).collect() };
    e.upsert((0..3).map(rec).collect(), &(0..3).flat_map(v).collect::<Vec<_>>(), dim, WriteMode::Insert).unwrap();
    let slot_of = |id: &str| e.with_rows(|r| (0..r.slot_count() as u32).find(|&s| r.id(s) == Some(id))).unwrap();
    let g0 = e.with_rows(|r| r.generation()).unwrap();
    assert_eq!(e.with_rows(|r| r.changed_since(g0)).unwrap(), RowChanges::Some { written: vec![], freed: vec![] });

    // An insert, an update of a vector, a touch (no row change) and a delete.
    e.upsert(vec![rec(3)], &v(3), dim, WriteMode::Insert).unwrap();
    let s3 = slot_of("r0003").unwrap();
    assert_eq!(e.with_rows(|r| r.changed_since(g0)).unwrap(), RowChanges::Some { written: vec![s3], freed: vec![] });
    let g1 = e.with_rows(|r| r.generation()).unwrap();
    let s1 = slot_of("r0001").unwrap();
    assert!(e.update("r0001", Patch { vector: Some(v(9)), ..Patch::default() }).unwrap());
    e.touch(&["r0002".to_string()], 99.0).unwrap();
    assert_eq!(e.with_rows(|r| r.changed_since(g1)).unwrap(), RowChanges::Some { written: vec![s1], freed: vec![] });
    let s0 = slot_of("r0000").unwrap();
    e.delete(&Filter { ids: Some(vec!["r0000".into()]), ..Filter::default() }).unwrap();
    assert_eq!(e.with_rows(|r| r.changed_since(g1)).unwrap(), RowChanges::Some { written: vec![s1], freed: vec![s0] });
    let mut both = vec![s1, s3];
    both.sort();
    assert_eq!(e.with_rows(|r| r.changed_since(g0)).unwrap(), RowChanges::Some { written: both, freed: vec![s0] });

    // The buffers hold the rows in place: the f32 row of a slot is the stored vector.
    e.with_rows(|r| {
        let buffers = r.buffers();
        assert_eq!(buffers.iter().map(|b| b.name).collect::<Vec<_>>(), ["f32", "f16"]);
        let RowChunks::F32(chunks) = &buffers[0].chunks else { panic!("f32 rows") };
        assert_eq!(&chunks[0][s1 as usize * dim..(s1 as usize + 1) * dim], v(9).as_slice());
        assert_eq!(r.select(&Filter { scope: Some("/s3".into()), ..Filter::default() }), vec![s3]);
    })
    .unwrap();

    // A reset changes every row.
    let g2 = e.with_rows(|r| r.generation()).unwrap();
    e.reset().unwrap();
    assert_eq!(e.with_rows(|r| r.changed_since(g2)).unwrap(), RowChanges::All);
}
