//! The device path end to end in a real engine, with a device that is a plain CPU mirror of
//! f16 unit rows (what ferromem.gpu keeps on a GPU): its candidates, proved on the host,
//! give the CPU's ids and bit-identical scores; the mirror follows writes incrementally;
//! a failing device falls back under "auto" and fails closed under "gpu".

use ferromem_core::device::{CandidateDevice, MirrorUpdate};
use ferromem_core::planner::{DeviceCosts, Policy};
use ferromem_core::{Durability, Engine, Error, Filter, Patch, Precision, Record, WriteMode};
use half::f16;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn rec(i: usize) -> Record {
    Record { created_at: i as f64, last_accessed: i as f64, ..Record::bare(format!("r{i:05}"), format!("/s{}", i % 5)) }
}

/// The mirror: f16 unit rows per slot (None: no row), like a GPU's.
#[derive(Default)]
struct MirrorState {
    dim: usize,
    rows: Vec<Option<Vec<f16>>>,
}

#[derive(Default, Clone)]
struct FakeDevice {
    mirror: Arc<Mutex<MirrorState>>,
    rows_received: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl CandidateDevice for FakeDevice {
    fn name(&self) -> String {
        "fake-f16".into()
    }
    fn error_bound(&self, dim: usize) -> f32 {
        // Row and query rounded to f16 (2^-11 relative each), f32 sums.
        (2.0 * 2f64.powi(-11) + 2.0 * dim as f64 * 2f64.powi(-24) + 1e-6) as f32
    }
    fn apply(&self, u: &MirrorUpdate<'_>) -> Result<(), String> {
        if self.failing.load(Ordering::Relaxed) {
            return Err("out of device memory (test)".into());
        }
        let mut m = self.mirror.lock();
        if u.reset {
            m.rows.clear();
            m.dim = u.dim;
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
        let n = u.slot_count.max(m.rows.len());
        m.rows.resize(n, None);
        for (&slot, row) in u.written.iter().zip(u.rows.chunks_exact(u.dim)) {
            m.rows[slot as usize] = Some(row.iter().map(|&x| f16::from_f32(x)).collect());
        }
        for &slot in u.freed {
            m.rows[slot as usize] = None;
        }
        self.rows_received.fetch_add(u.written.len(), Ordering::Relaxed);
        Ok(())
    }
    fn propose(
        &self,
        queries: &[f32],
        nq: usize,
        dim: usize,
        width: usize,
        candidates: Option<&[u32]>,
    ) -> Result<Vec<Vec<(f32, u32)>>, String> {
        if self.failing.load(Ordering::Relaxed) {
            return Err("device lost (test)".into());
        }
        let m = self.mirror.lock();
        let slots: Vec<u32> = match candidates {
            Some(c) => c.to_vec(),
            None => (0..m.rows.len() as u32).collect(),
        };
        Ok((0..nq)
            .map(|q| {
                let query: Vec<f32> = queries[q * dim..(q + 1) * dim].iter().map(|&x| f16::from_f32(x).to_f32()).collect();
                let mut hits: Vec<(f32, u32)> = slots
                    .iter()
                    .filter_map(|&s| m.rows.get(s as usize)?.as_ref().map(|r| (r.iter().zip(&query).map(|(a, b)| a.to_f32() * b).sum(), s)))
                    .collect();
                hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                hits.truncate(width);
                hits
            })
            .collect())
    }
}

type Hits = Vec<Vec<(Arc<str>, f32)>>;

/// The CPU's answer to each query searched alone: what a device search equals bit for bit
/// (its candidates are re-scored as the single-query scan scores; the batch kernel sums in
/// another order, which moves the last bit of a score on some ISAs, e.g. NEON).
fn cpu_each(e: &Engine, qs: &[f32], dim: usize, k: usize, f: &Filter, min_score: Option<f32>) -> Hits {
    qs.chunks_exact(dim).map(|q| e.search_with_policy(q, dim, k, f, min_score, Some(Policy::Cpu)).unwrap().pop().unwrap()).collect()
}

/// The same ids, and scores equal within the summation-order bound of two CPU kernels.
fn assert_close(got: &Hits, want: &Hits, why: &str) {
    assert_eq!(got.len(), want.len(), "{why}");
    for (g, w) in got.iter().zip(want) {
        let ids = |h: &Vec<(Arc<str>, f32)>| h.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(w), "{why}");
        for (a, b) in g.iter().zip(w) {
            assert!((a.1 - b.1).abs() <= 1e-6, "{why}: {} vs {}", a.1, b.1);
        }
    }
}

const DIM: usize = 48;

fn fill(e: &Engine, rng: &mut rand::rngs::StdRng, range: std::ops::Range<usize>, dup_every: usize) -> Vec<f32> {
    let mut data = Vec::new();
    let same: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
    for i in range.clone() {
        // Many copies of one vector, so that ties at the cut force the proof to fall back.
        let v: Vec<f32> =
            if dup_every > 0 && i % dup_every == 0 { same.clone() } else { (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        data.extend_from_slice(&v);
    }
    let recs: Vec<Record> = range.map(rec).collect();
    e.upsert(recs, &data, DIM, WriteMode::Upsert).unwrap();
    data
}

fn queries(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n * DIM).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

#[test]
fn device_answers_equal_the_cpu_for_each_mirrored_precision() {
    for precision in [Precision::F32, Precision::F16] {
        let dir = tempfile::tempdir().unwrap();
        let cpu = Engine::open_with(Some(&dir.path().join("a.db")), None, Durability::Normal, precision).unwrap();
        let gpu = Engine::open_with(Some(&dir.path().join("b.db")), None, Durability::Normal, precision).unwrap();
        let device = FakeDevice::default();
        gpu.attach_device(Some(Box::new(device.clone())), None);
        cpu.set_cache_capacity(0);
        gpu.set_cache_capacity(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let data = fill(&cpu, &mut rng, 0..3000, 50);
        let recs: Vec<Record> = (0..3000).map(rec).collect();
        gpu.upsert(recs, &data, DIM, WriteMode::Upsert).unwrap();
        let qs = queries(&mut rng, 40);
        let filters = [Filter::default(), Filter { scope: Some("/s2".into()), ..Filter::default() }];
        for f in &filters {
            for (k, min_score) in [(1, None), (10, None), (100, None), (10, Some(0.3f32))] {
                let want = cpu_each(&cpu, &qs, DIM, k, f, min_score);
                let got = gpu.search_with_policy(&qs, DIM, k, f, min_score, Some(Policy::Gpu)).unwrap();
                assert_eq!(got, want, "{precision:?} k={k} {f:?} {min_score:?}");
                let batch = cpu.search_with_policy(&qs, DIM, k, f, min_score, Some(Policy::Cpu)).unwrap();
                assert_close(&got, &batch, "against the CPU's batch");
                // One query at a time, too (queries of a stored vector included).
                for q in [&qs[..DIM], &data[5 * DIM..6 * DIM], &data[50 * DIM..51 * DIM]] {
                    let want = cpu.search_with_policy(q, DIM, k, f, min_score, Some(Policy::Cpu)).unwrap();
                    let got = gpu.search_with_policy(q, DIM, k, f, min_score, Some(Policy::Gpu)).unwrap();
                    assert_eq!(got, want, "{precision:?} single k={k} {f:?}");
                }
            }
        }
        let stats = gpu.device_stats().unwrap();
        assert!(stats.proved > 0, "{stats:?}");
        // The 60 copies of one vector tie at the cut for a query of it: those fell back.
        assert!(stats.fallbacks > 0, "{stats:?}");
        assert_eq!(stats.uploads, 1, "one upload; {stats:?}");
    }
}

#[test]
fn the_mirror_follows_writes_incrementally() {
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    let cpu = Engine::open(None, None, Durability::Normal).unwrap();
    e.set_cache_capacity(0);
    let device = FakeDevice::default();
    e.attach_device(Some(Box::new(device.clone())), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data = fill(&e, &mut rng, 0..2000, 0);
    cpu.upsert((0..2000).map(rec).collect(), &data, DIM, WriteMode::Upsert).unwrap();
    let qs = queries(&mut rng, 8);
    let check = |why: &str| {
        let want = cpu_each(&cpu, &qs, DIM, 10, &Filter::default(), None);
        let got = e.search_with_policy(&qs, DIM, 10, &Filter::default(), None, Some(Policy::Gpu)).unwrap();
        assert_eq!(got, want, "{why}");
    };
    check("first search");
    assert_eq!(device.rows_received.load(Ordering::Relaxed), 2000);
    // An insert, an update of a vector, a delete: only the rows written travel.
    let more = fill(&e, &mut rng, 2000..2003, 0);
    cpu.upsert((2000..2003).map(rec).collect(), &more, DIM, WriteMode::Upsert).unwrap();
    let v: Vec<f32> = qs[..DIM].iter().map(|x| x * 3.0).collect();
    let patch = Patch { vector: Some(v.clone()), ..Patch::default() };
    assert!(e.update("r00010", patch.clone()).unwrap());
    assert!(cpu.update("r00010", patch).unwrap());
    e.delete(&Filter { ids: Some(vec!["r00020".to_string()]), ..Filter::default() }).unwrap();
    cpu.delete(&Filter { ids: Some(vec!["r00020".to_string()]), ..Filter::default() }).unwrap();
    check("after writes");
    assert_eq!(device.rows_received.load(Ordering::Relaxed), 2004, "3 inserts and 1 update sent, nothing else");
    assert_eq!(device.resets.load(Ordering::Relaxed), 1);
    // The updated record now leads the first query; the deleted one is gone.
    let top = e.search_with_policy(&qs[..DIM], DIM, 1, &Filter::default(), None, Some(Policy::Gpu)).unwrap();
    assert_eq!(&*top[0][0].0, "r00010");
    // A reset (everything deleted, refilled at another dimension) re-uploads.
    e.reset().unwrap();
    let other: Vec<f32> = (0..16 * 8).map(|_| rng.gen_range(-1.0..1.0)).collect();
    e.upsert((0..16).map(rec).collect(), &other, 8, WriteMode::Upsert).unwrap();
    let got = e.search_with_policy(&other[..8], 8, 1, &Filter::default(), None, Some(Policy::Gpu)).unwrap();
    assert_eq!(&*got[0][0].0, "r00000");
    assert_eq!(device.resets.load(Ordering::Relaxed), 2);
}

#[test]
fn a_failing_device_falls_back_under_auto_and_fails_closed_under_gpu() {
    let e = Engine::open(None, None, Durability::Normal).unwrap();
    e.set_cache_capacity(0);
    let device = FakeDevice::default();
    // Costs that make the device the planner's choice for every call.
    e.attach_device(Some(Box::new(device.clone())), Some(DeviceCosts { call: 0.0, query_value: 0.0, value: 0.0, sync_value: 0.0 }));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    fill(&e, &mut rng, 0..500, 0);
    let qs = queries(&mut rng, 4);
    let want = cpu_each(&e, &qs, DIM, 5, &Filter::default(), None);
    let (got, how) = e.explain(&qs, DIM, 5, &Filter::default(), None, None).unwrap();
    assert_eq!(got, want);
    assert_eq!(how.path, "gpu-exact", "{how:?}");
    device.failing.store(true, Ordering::Relaxed);
    // A write, so the mirror must be updated (and fails).
    fill(&e, &mut rng, 500..501, 0);
    let want = e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, Some(Policy::Cpu)).unwrap();
    let (got, how) = e.explain(&qs, DIM, 5, &Filter::default(), None, None).unwrap();
    assert_close(&got, &want, "the CPU's answer after the device failed");
    assert!(how.reason.contains("out of device memory"), "{how:?}");
    match e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, Some(Policy::Gpu)) {
        Err(Error::Device(why)) => assert!(why.contains("out of device memory"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A refusal is not retried at every search: the device is left alone for a while
    // even when it could take the store again.
    device.failing.store(false, Ordering::Relaxed);
    let received = device.rows_received.load(Ordering::Relaxed);
    let (_, how) = e.explain(&qs, DIM, 5, &Filter::default(), None, None).unwrap();
    assert!(how.reason.contains("not retried"), "{how:?}");
    assert_eq!(device.rows_received.load(Ordering::Relaxed), received);
    // A reset (fewer slots) lets it try again at once.
    e.reset().unwrap();
    fill(&e, &mut rng, 0..50, 0);
    let (got, how) = e.explain(&qs, DIM, 5, &Filter::default(), None, None).unwrap();
    assert_eq!(how.path, "gpu-exact", "{how:?}");
    assert_eq!(got, cpu_each(&e, &qs, DIM, 5, &Filter::default(), None));
    // No device at all: "gpu" is refused, "auto" answers on the CPU.
    e.attach_device(None, None);
    assert!(matches!(e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, Some(Policy::Gpu)), Err(Error::Device(_))));
    let want = e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, Some(Policy::Cpu)).unwrap();
    assert_close(&e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, None).unwrap(), &want, "auto without a device");
}

#[test]
fn int8_stores_are_not_mirrored() {
    let e = Engine::open_with(None, None, Durability::Normal, Precision::Int8);
    let Ok(e) = e else { return }; // int8 needs a durable layer with exact vectors
    e.attach_device(Some(Box::new(FakeDevice::default())), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    fill(&e, &mut rng, 0..100, 0);
    let qs = queries(&mut rng, 1);
    match e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, Some(Policy::Gpu)) {
        Err(Error::Device(why)) => assert!(why.contains("int8"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.search_with_policy(&qs, DIM, 5, &Filter::default(), None, None).unwrap()[0].len(), 5);
}
