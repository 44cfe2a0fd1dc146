//! The store image (`fast_open`): an engine opened from it holds exactly what an engine
//! reading the store file holds, whatever happened after the image was written (writes,
//! deletes, a reset, a crash, a restored backup, a damaged image), and writes to mapped
//! rows never reach the image file. Engines opened without `fast_open` leave images alone.

use ferromem_core::image::image_file;
use ferromem_core::state::{IndexConfig, IndexMode, Precision};
use ferromem_core::{Durability, Engine, Filter, OpenOptions, Patch, Record, WriteMode};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

const DIM: usize = 24;

fn rec(i: usize) -> Record {
    Record {
        id: Arc::from(format!("r{i:05}")),
        content: format!("content {i} ✓"),
        scope: format!("/crew/a{}", i % 5),
        categories: (0..i % 3).map(|c| format!("cat{c}")).collect(),
        metadata_json: format!("{{\"turn\": {}, \"tag\": \"t{}\"}}", i, i % 7),
        importance: (i % 10) as f64 / 10.0,
        created_at: i as f64,
        last_accessed: i as f64 + 0.5,
        source: i.is_multiple_of(2).then(|| format!("src{}", i % 4)),
        private: i.is_multiple_of(6),
    }
}

fn vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * DIM).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn opts(fast_open: bool, precision: Precision) -> OpenOptions {
    OpenOptions { durability: Durability::Normal, precision, fast_open, ..OpenOptions::default() }
}

fn open(path: &Path, fast_open: bool) -> Engine {
    Engine::open_opts(Some(path), None, opts(fast_open, Precision::F32)).unwrap()
}

fn fill(e: &Engine, range: std::ops::Range<usize>, seed: u64) {
    let n = range.len();
    e.upsert(range.map(rec).collect(), &vectors(n, seed), DIM, WriteMode::Upsert).unwrap();
}

/// Everything an engine holds, in id order, with vectors as bits.
fn content(e: &Engine) -> Vec<(Record, Vec<u32>)> {
    let mut all: Vec<_> =
        e.list(&Filter::default(), 0, None).unwrap().into_iter().map(|(r, v)| (r, v.iter().map(|x| x.to_bits()).collect())).collect();
    all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    all
}

/// Asserts that `got` answers like `want`: same records and vectors, same searches (with
/// and without filters).
fn assert_same(got: &Engine, want: &Engine) {
    assert_eq!(content(got), content(want));
    let queries = vectors(8, 99);
    let filters = [
        Filter::default(),
        Filter { scope: Some("/crew/a2".into()), ..Filter::default() },
        Filter { categories: Some(vec!["cat1".into()]), ..Filter::default() },
    ];
    for f in &filters {
        assert_eq!(got.search(&queries, DIM, 7, f, None).unwrap(), want.search(&queries, DIM, 7, f, None).unwrap());
        assert_eq!(got.count(f).unwrap(), want.count(f).unwrap());
    }
}

#[test]
fn an_image_opens_to_exactly_the_stored_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    // More than one chunk of rows (4096), so full chunks are mapped and the last is copied.
    let e = open(&path, true);
    fill(&e, 0..5000, 1);
    e.delete(&Filter { ids: Some(vec!["r00007".into(), "r04999".into()]), ..Filter::default() }).unwrap();
    assert!(!e.stats().opened_from_image);
    drop(e);
    assert!(image_file(&path).exists(), "close writes the image");

    let fast = open(&path, true);
    assert!(fast.stats().opened_from_image);
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert!(!plain.stats().opened_from_image);
    assert_same(&fast, &plain);
    drop(plain);

    // Writes to mapped rows, to the copied last chunk and beyond, deletes: all as on a
    // store read from the file, and the image file itself never changes.
    let before = std::fs::read(image_file(&path)).unwrap();
    fill(&fast, 100..200, 2); // new vectors for mapped rows
    fill(&fast, 5000..9000, 3); // the copied partial chunk, then new chunks
    fast.update("r00300", Patch { content: Some("new".into()), ..Patch::default() }).unwrap();
    fast.delete(&Filter { scope: Some("/crew/a3".into()), ..Filter::default() }).unwrap();
    assert_eq!(std::fs::read(image_file(&path)).unwrap(), before, "a private mapping never writes the file");
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert_same(&fast, &plain);
    drop(plain);
    drop(fast);

    // The image rewritten at close serves the next open.
    let again = open(&path, true);
    assert!(again.stats().opened_from_image);
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert_same(&again, &plain);
}

#[test]
fn changes_after_the_image_are_applied_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let e = open(&path, true);
    fill(&e, 0..600, 4);
    drop(e); // image at this position
    let image = std::fs::read(image_file(&path)).unwrap();

    // A process that opened from the image, wrote and died without closing.
    let crashed = open(&path, true);
    assert!(crashed.stats().opened_from_image);
    fill(&crashed, 550..800, 5);
    crashed.delete(&Filter { scope: Some("/crew/a1".into()), ..Filter::default() }).unwrap();
    crashed.update("r00002", Patch { vector: Some(vectors(1, 6)), scope: Some("/moved".into()), ..Patch::default() }).unwrap();
    crashed.touch(&["r00003".into()], 1e9).unwrap();
    std::mem::forget(crashed);
    assert_eq!(std::fs::read(image_file(&path)).unwrap(), image, "no close, no new image");

    let fast = open(&path, true);
    assert!(fast.stats().opened_from_image, "an older image is used, with the changes after it");
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert_same(&fast, &plain);
}

#[test]
fn an_image_that_does_not_fit_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let e = open(&path, true);
    fill(&e, 0..300, 7);
    drop(e);
    let backup = dir.path().join("backup.ferro");
    std::fs::copy(&path, &backup).unwrap();
    let e = open(&path, true);
    fill(&e, 300..400, 8);
    drop(e);

    // A restored backup, written to until its sequence reaches the image's: its token
    // names the older image, not the one beside it.
    std::fs::copy(&backup, &path).unwrap();
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    fill(&plain, 400..450, 15);
    drop(plain);
    let fast = open(&path, true);
    assert!(!fast.stats().opened_from_image);
    assert_eq!(fast.count(&Filter::default()).unwrap(), 350);
    drop(fast); // writes an image of the restored store

    // Damaged images: a flipped byte in the records, a truncated file, garbage.
    let good = std::fs::read(image_file(&path)).unwrap();
    let mut flipped = good.clone();
    flipped[4096 + 10] ^= 0x40;
    for bad in [flipped, good[..good.len() - 4096].to_vec(), vec![7u8; 10_000]] {
        std::fs::write(image_file(&path), &bad).unwrap();
        let e = open(&path, true);
        assert!(!e.stats().opened_from_image);
        let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        assert_same(&e, &plain);
        std::mem::forget(e); // keep the damaged image for the next round
    }

    // A reset after the image: a new epoch.
    std::fs::write(image_file(&path), &good).unwrap();
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    plain.reset().unwrap();
    fill(&plain, 0..5, 9);
    drop(plain);
    let fast = open(&path, true);
    assert!(!fast.stats().opened_from_image);
    assert_eq!(fast.count(&Filter::default()).unwrap(), 5);
}

#[test]
fn images_across_precisions_and_without_fast_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let e = open(&path, true);
    fill(&e, 0..500, 10);
    drop(e);
    // An f32 image also serves f16 (it holds the half-precision rows).
    let half = Engine::open_opts(Some(&path), None, opts(true, Precision::F16)).unwrap();
    assert!(half.stats().opened_from_image);
    let half_plain = Engine::open_opts(Some(&path), None, opts(false, Precision::F16)).unwrap();
    assert_same(&half, &half_plain);
    std::mem::forget(half_plain);
    fill(&half, 500..520, 11);
    drop(half); // an f16 image: no f32 rows
                // ... which cannot serve f32: read from the file instead.
    let full = open(&path, true);
    assert!(!full.stats().opened_from_image);
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert_same(&full, &plain);
    drop(full); // f32 image again
    let written = std::fs::read(image_file(&path)).unwrap();
    fill(&plain, 600..610, 14);
    drop(plain); // without fast_open: the image is left as it is (and no longer fits)
    assert_eq!(std::fs::read(image_file(&path)).unwrap(), written);
    let fast = open(&path, true);
    assert!(fast.stats().opened_from_image, "an older image, with the changes after it");
    let plain = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    assert_same(&fast, &plain);
    // An in-memory store has no image and opens as always.
    let mem = Engine::open_opts(None, None, opts(true, Precision::F32)).unwrap();
    fill(&mem, 0..10, 12);
    assert!(!mem.stats().opened_from_image);
}

#[test]
fn the_saved_graph_serves_a_store_opened_from_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let e = open(&path, true);
    e.set_index(IndexConfig { mode: IndexMode::Hnsw, ..IndexConfig::default() }).unwrap();
    fill(&e, 0..2000, 13);
    assert!(e.wait_for_index(None).unwrap());
    drop(e);
    let fast = open(&path, true);
    fast.set_index(IndexConfig { mode: IndexMode::Hnsw, ..IndexConfig::default() }).unwrap();
    let s = fast.stats();
    assert!(s.opened_from_image);
    assert!(s.index.active && s.index.graph_nodes == 2000 && s.index.pending == 0, "{:?}", s.index);
}

#[test]
fn int8_images_hold_the_quantised_rows_and_serve_only_int8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let int8 = |fast_open| Engine::open_opts(Some(&path), None, opts(fast_open, Precision::Int8)).unwrap();
    let e = int8(true);
    fill(&e, 0..5000, 16); // a mapped full chunk and a copied partial one
    e.delete(&Filter { ids: Some(vec!["r00011".into()]), ..Filter::default() }).unwrap();
    drop(e);

    let fast = int8(true);
    assert!(fast.stats().opened_from_image);
    let plain = int8(false);
    assert!(!plain.stats().opened_from_image);
    // Same candidates from the same int8 rows and factors, re-ranked by the same vectors.
    assert_same(&fast, &plain);
    std::mem::forget(plain);

    // Writes over mapped rows and past them; the image file never changes.
    let before = std::fs::read(image_file(&path)).unwrap();
    fill(&fast, 10..60, 17);
    fill(&fast, 4990..6000, 18);
    assert_eq!(std::fs::read(image_file(&path)).unwrap(), before);
    assert_same(&fast, &int8(false));
    drop(fast); // rewrites the int8 image

    // An int8 image serves neither f32 nor f16 stores, which read the file as always...
    for precision in [Precision::F32, Precision::F16] {
        let other = Engine::open_opts(Some(&path), None, opts(true, precision)).unwrap();
        assert!(!other.stats().opened_from_image);
        assert_same(&other, &Engine::open_opts(Some(&path), None, opts(false, precision)).unwrap());
        std::mem::forget(other); // leave the int8 image in place
    }
    // ... nor does an f32 image serve int8.
    drop(open(&path, true));
    let from_f32 = int8(true);
    assert!(!from_f32.stats().opened_from_image);
    assert_same(&from_f32, &int8(false));
    drop(from_f32);

    // A flipped bit in the factors (checked like the records) makes the image unusable.
    let from_int8 = int8(true);
    assert!(from_int8.stats().opened_from_image);
    std::mem::forget(from_int8);
    let mut flipped = std::fs::read(image_file(&path)).unwrap();
    // Header: magic (8), version, precision (4 each), dim, rows, epoch, seq (8 each), the
    // token (16), then the section offsets.
    let u64_at = |at: usize| u64::from_le_bytes(flipped[at..at + 8].try_into().unwrap()) as usize;
    let (rows, norms_off, aux_off) = (u64_at(24), u64_at(64 + 16), u64_at(64 + 24));
    assert_eq!(rows, 6000);
    assert_eq!(aux_off, norms_off + 4 * rows, "the factors follow the norms");
    flipped[aux_off + 4 * 123 + 1] ^= 0x08;
    std::fs::write(image_file(&path), &flipped).unwrap();
    let damaged = int8(true);
    assert!(!damaged.stats().opened_from_image);
    assert_same(&damaged, &int8(false));
}

/// Reads header field `at` (a u64) of an image.
fn field(bytes: &[u8], at: usize) -> usize {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
}

/// Writes `bad` as the image of `path`, opens it with `fast_open` and checks that it was
/// rejected as damaged for a reason containing `why`, that the engine answers exactly like
/// one reading the store file, and that `verify_file` finds the damage too.
fn assert_rejected(path: &Path, bad: &[u8], precision: Precision, why: &str) {
    std::fs::write(image_file(path), bad).unwrap();
    let problems = ferromem_core::image::verify_file(path);
    assert!(problems.iter().any(|p| p.contains(why)), "verify_file: {problems:?}, expected {why:?}");
    let e = Engine::open_opts(Some(path), None, opts(true, precision)).unwrap();
    let st = e.stats();
    assert!(!st.opened_from_image, "a damaged image ({why}) was used");
    let damage = st.image_damage.clone().unwrap_or_default();
    assert!(damage.contains(why), "image_damage {damage:?}, expected {why:?}");
    assert_same(&e, &Engine::open_opts(Some(path), None, opts(false, precision)).unwrap());
    std::mem::forget(e); // a close would write a new image: keep the damaged one
}

#[test]
fn damage_in_any_section_of_an_image_is_rejected_and_reported() {
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ferro");
        let e = Engine::open_opts(Some(&path), None, opts(true, precision)).unwrap();
        fill(&e, 0..5000, 21); // two chunks of rows: a full (mapped) one and a partial one
        drop(e);
        let good = std::fs::read(image_file(&path)).unwrap();
        assert!(ferromem_core::image::verify_file(&path).is_empty());
        assert!(ferromem_core::image::verify_file(&image_file(&path)).is_empty());
        let (records_off, norms_off, aux_off, rows_off) = (field(&good, 64), field(&good, 80), field(&good, 88), field(&good, 96));
        let chunk = 4096;
        let (row_elem, aux) = match precision {
            Precision::F32 => (2, vec![(aux_off + 5, "the f32 rows 0..4096"), (aux_off + chunk * DIM * 4 + 7, "the f32 rows 4096..5000")]),
            Precision::F16 => (2, vec![]),
            Precision::Int8 => (1, vec![(aux_off + 4 * 77, "the int8 quantisation factors")]),
        };
        let rows_name = if precision == Precision::Int8 { "the int8 rows" } else { "the half-precision rows" };
        let mut flips = vec![
            (20, "header"),       // the dimension field
            (4096 + 1, "header"), // the checksum table
            (records_off + 10, "the records"),
            (norms_off + 4 * 9, "the norms"),
            (rows_off + 3, "0..4096"),
            (rows_off + chunk * DIM * row_elem + 1, "4096..5000"),
            (good.len() - 1, "4096..5000"),
        ];
        flips.extend(aux);
        for (at, why) in flips {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert_rejected(&path, &bad, precision, why);
        }
        let rows_msg = format!("{rows_name} 0..4096");
        let mut bad = good.clone();
        bad[rows_off + 100] ^= 0x01;
        assert_rejected(&path, &bad, precision, &rows_msg);
        // Cut at and next to every section boundary.
        for cut in [0, 1, 100, 4095, 4096, records_off, norms_off, aux_off.max(1), rows_off, rows_off + 1, good.len() - 1] {
            assert_rejected(&path, &good[..cut], precision, "truncated");
        }
        // Lengths and shapes at extremes, with every checksum recomputed: the structure
        // checks behind the checksums reject them without a panic or a huge allocation.
        for (at, value) in [
            (24, u64::MAX),
            (24, 1 << 40),
            (16, u64::MAX),
            (16, 1 << 20),
            (72, u64::MAX),
            (80, u64::MAX - 3),
            (96, u64::MAX),
            (104, u64::MAX),
        ] {
            let mut bad = good.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            ferromem_core::image::fuzz_reseal(&mut bad);
            std::fs::write(image_file(&path), &bad).unwrap();
            assert!(!ferromem_core::image::verify_file(&path).is_empty(), "field {at} = {value}");
            let e = Engine::open_opts(Some(&path), None, opts(true, precision)).unwrap();
            assert!(!e.stats().opened_from_image && e.stats().image_damage.is_some());
            std::mem::forget(e);
        }
        // An image of another format version is a cache this build does not read: not
        // used, and not damage.
        let mut old = good.clone();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(image_file(&path), &old).unwrap();
        assert!(ferromem_core::image::verify_file(&path).is_empty());
        let e = Engine::open_opts(Some(&path), None, opts(true, precision)).unwrap();
        assert!(!e.stats().opened_from_image && e.stats().image_damage.is_none());
        drop(e); // rewrites the image in the current version
        let e = Engine::open_opts(Some(&path), None, opts(true, precision)).unwrap();
        assert!(e.stats().opened_from_image && e.stats().image_damage.is_none());
        // No image: nothing to verify.
        drop(e);
        std::fs::remove_file(image_file(&path)).unwrap();
        assert!(ferromem_core::image::verify_file(&path).is_empty());
    }
}
