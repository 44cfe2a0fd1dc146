//! The PostgreSQL backend against a real server: the ordering of the change sequence
//! under interleaved transactions (the classic trap of a sequence value committed after a
//! later one), catch-up between engines, and damage in the database.
//!
//! Needs `FERROMEM_TEST_POSTGRES_DSN` (e.g. `postgresql://postgres@127.0.0.1:5432/test`);
//! without it, or without a reachable server, each test says so and passes without
//! running (cargo has no skip).

use ferromem_core::storage::postgres::{drop_store, PostgresStorage};
use ferromem_core::storage::{Access, Changes, Durability, Storage, WriteOp};
use ferromem_core::{Engine, Filter, OpenOptions, Record, WriteMode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A URL of a store of its own for one test (in schema `ferromem_rust_tests`), or None
/// when no server is configured.
fn store_url(test: &str) -> Option<String> {
    let Ok(dsn) = std::env::var("FERROMEM_TEST_POSTGRES_DSN") else {
        eprintln!("skipped: FERROMEM_TEST_POSTGRES_DSN is not set");
        return None;
    };
    let sep = if dsn.contains('?') { '&' } else { '?' };
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let url = format!("{dsn}{sep}schema=ferromem_rust_tests&store={test}-{nonce}&reconnect_timeout=5");
    match PostgresStorage::open(&url, Access::ReadWrite, Durability::Normal) {
        Ok(_) => Some(url),
        Err(e) => {
            eprintln!("skipped: the PostgreSQL server of FERROMEM_TEST_POSTGRES_DSN cannot be used: {e}");
            None
        }
    }
}

fn open(url: &str) -> PostgresStorage {
    PostgresStorage::open(url, Access::ReadWrite, Durability::Normal).unwrap()
}

/// Writes one record whose id is its own sequence number, in one transaction on `s`,
/// holding it open for `hold` before committing.
fn write_numbered(s: &mut PostgresStorage, hold: Duration) -> u64 {
    s.begin_write().unwrap();
    let seq = match s.changes_since(0, 0).unwrap() {
        Changes::None => 0,
        Changes::Delta { seq, .. } => seq,
        Changes::Reload(snap) => snap.seq,
    } + 1;
    let rec = Record::bare(seq.to_string(), "/");
    s.write(&[WriteOp::Put { rec: &rec, vector: &[1.0, 0.0] }], seq, Some(2)).unwrap();
    std::thread::sleep(hold);
    s.commit().unwrap();
    seq
}

/// Ids of a change set's records, as numbers.
fn numbers(changes: &Changes) -> (u64, Vec<u64>) {
    match changes {
        Changes::None => (0, vec![]),
        Changes::Delta { seq, upserts, .. } => (*seq, upserts.iter().map(|r| r.rec.id.parse().unwrap()).collect()),
        Changes::Reload(s) => (s.seq, s.records.iter().map(|r| r.rec.id.parse().unwrap()).collect()),
    }
}

#[test]
fn a_later_writer_cannot_commit_before_an_earlier_one() {
    let Some(url) = store_url("order") else { return };
    let mut first = open(&url);
    let mut reader = open(&url);
    let mut second = open(&url);
    // The first writer takes sequence 1 and holds its transaction open.
    first.begin_write().unwrap();
    assert!(matches!(first.changes_since(0, 0).unwrap(), Changes::None));
    let one = Record::bare("1", "/");
    first.write(&[WriteOp::Put { rec: &one, vector: &[1.0, 0.0] }], 1, Some(2)).unwrap();

    // A second writer (another process, as far as the database knows) starts meanwhile.
    let (done_tx, done_rx) = mpsc::channel();
    let second = std::thread::spawn(move || {
        let seq = write_numbered(&mut second, Duration::ZERO);
        done_tx.send(seq).unwrap();
    });
    // It cannot take a sequence value, let alone commit one, while the first is open...
    assert!(done_rx.recv_timeout(Duration::from_millis(700)).is_err(), "the second writer committed before the first");
    // ... and a replica catching up now sees nothing: no later value is visible ahead of 1.
    assert!(matches!(reader.changes_since(0, 0).unwrap(), Changes::None));

    first.commit().unwrap();
    let second_seq = done_rx.recv_timeout(Duration::from_secs(10)).expect("the second writer never committed");
    second.join().unwrap();
    assert_eq!(second_seq, 2, "the second writer must number its write after the first's");
    let (seq, mut ids) = numbers(&reader.changes_since(0, 0).unwrap());
    ids.sort();
    assert_eq!((seq, ids), (2, vec![1, 2]));
    drop_store(&url).unwrap();
}

#[test]
fn a_replica_never_skips_a_sequence_value_under_random_interleavings() {
    let Some(url) = store_url("gaps") else { return };
    const WRITERS: usize = 4;
    const EACH: u64 = 40;
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    // The reader catches up as often as it can and checks that every delta holds every
    // sequence number after its position: a value committed late would be a hole.
    let reader = {
        let (url, stop, polls) = (url.clone(), stop.clone(), polls.clone());
        std::thread::spawn(move || {
            let mut r = open(&url);
            let mut at = 0u64;
            let mut seen = Vec::new();
            loop {
                let finished = stop.load(Ordering::Acquire);
                let (seq, mut ids) = numbers(&r.changes_since(0, at).unwrap());
                if seq > at {
                    ids.sort();
                    assert_eq!(ids, ((at + 1)..=seq).collect::<Vec<_>>(), "a replica at {at} missed a write");
                    seen.extend(ids);
                    at = seq;
                }
                polls.fetch_add(1, Ordering::Relaxed);
                if finished {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = open(&url);
                for i in 0..EACH {
                    // Transactions held open for different times, so commits interleave.
                    let hold = Duration::from_micros(((i * 7 + w as u64 * 13) % 5) * 400);
                    write_numbered(&mut s, hold);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let seen = reader.join().unwrap();
    assert_eq!(seen, (1..=WRITERS as u64 * EACH).collect::<Vec<_>>());
    assert!(polls.load(Ordering::Relaxed) > 10, "the reader should have caught up many times while writes ran");
    drop_store(&url).unwrap();
}

#[test]
fn two_engines_share_one_store_and_catch_up() {
    let Some(url) = store_url("engines") else { return };
    let location = ferromem_core::storage::Location::parse(&format!("{url}&max_staleness=0")).unwrap();
    let a = Engine::open_at(&location, Some(3), OpenOptions::default()).unwrap();
    let b = Engine::open_at(&location, Some(3), OpenOptions::default()).unwrap();
    let recs = vec![Record::bare("x", "/a"), Record::bare("y\0nul", "/b")];
    a.upsert(recs, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 3, WriteMode::Upsert).unwrap();
    // max_staleness=0: b asks the database before it answers.
    assert_eq!(b.count(&Filter::default()).unwrap(), 2);
    b.delete(&Filter { ids: Some(vec!["x".into()]), ..Filter::default() }).unwrap();
    assert_eq!(a.count(&Filter::default()).unwrap(), 1);
    let hits = a.search(&[0.0, 1.0, 0.0], 3, 1, &Filter::default(), None).unwrap();
    assert_eq!(&*hits[0][0].0, "y\0nul");
    a.reset().unwrap();
    assert_eq!(b.count(&Filter::default()).unwrap(), 0);
    a.close();
    b.close();
    drop_store(&url).unwrap();
}
