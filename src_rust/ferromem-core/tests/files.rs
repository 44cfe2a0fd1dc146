//! Whose file it is, and damage on disk: ferromem writes only to stores it identified, and
//! a record that fails its checksums is never served (see storage::sqlite and
//! storage::checksum).

use ferromem_core::storage::sqlite::{Access, SqliteStorage, APPLICATION_ID};
use ferromem_core::{Durability, Engine, Error, Filter, OpenOptions, Record, WriteMode};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;

fn rec(id: &str) -> Record {
    Record {
        id: Arc::from(id),
        content: format!("content {id}"),
        scope: "/s".into(),
        categories: vec!["c".into()],
        metadata_json: "{}".into(),
        importance: 0.5,
        created_at: 1.0,
        last_accessed: 1.0,
        source: None,
        private: false,
    }
}

fn store_with(path: &Path, ids: &[&str]) {
    let e = Engine::open(Some(path), None, Durability::Normal).unwrap();
    let vectors: Vec<f32> = (0..ids.len() * 4).map(|i| (i % 7) as f32 + 1.0).collect();
    e.upsert(ids.iter().map(|id| rec(id)).collect(), &vectors, 4, WriteMode::Upsert).unwrap();
    e.close();
}

/// Each file of `dir` with a checksum of its bytes (not the bytes: a failure message
/// would print them all).
fn all_bytes(dir: &Path) -> Vec<(String, u32, usize)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), crc32fast::hash(&bytes), bytes.len())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn another_applications_files_are_refused_and_left_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    type Maker = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Maker)> = vec![
        ("empty", Box::new(|p| std::fs::write(p, b"").unwrap())),
        ("one byte", Box::new(|p| std::fs::write(p, b"S").unwrap())),
        ("text", Box::new(|p| std::fs::write(p, b"hello, this is not a database at all, just some words").unwrap())),
        (
            "sqlite of another app",
            Box::new(|p| {
                let c = Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE notes(x); INSERT INTO notes VALUES (1);").unwrap();
            }),
        ),
        (
            "sqlite with our table names but no meta version",
            Box::new(|p| {
                let c = Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE meta(key, value); CREATE TABLE records(id); CREATE TABLE tombstones(id);").unwrap();
            }),
        ),
        (
            "sqlite with another application id",
            Box::new(|p| {
                let c = Connection::open(p).unwrap();
                c.execute_batch("PRAGMA application_id = 1234; CREATE TABLE t(x);").unwrap();
            }),
        ),
        (
            "empty sqlite in WAL mode",
            Box::new(|p| {
                let c = Connection::open(p).unwrap();
                c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).unwrap();
            }),
        ),
    ];
    for (name, make) in cases {
        let sub = dir.path().join(name.replace(' ', "_"));
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("app.db");
        make(&path);
        let before = all_bytes(&sub);
        for read_only in [false, true] {
            let opts = OpenOptions { read_only, ..OpenOptions::default() };
            match Engine::open_opts(Some(&path), None, opts) {
                Err(Error::NotAStore(msg)) => assert!(msg.contains("not a ferromem store"), "{name}: {msg}"),
                Err(e) => panic!("{name}: expected NotAStore, got {e:?}"),
                Ok(_) => panic!("{name}: opened as a store"),
            }
            assert_eq!(all_bytes(&sub), before, "{name}: the directory changed");
        }
    }
}

#[test]
fn a_new_store_is_marked_and_read_only_opens_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    let missing = Engine::open_opts(Some(&path), None, OpenOptions { read_only: true, ..OpenOptions::default() });
    assert!(matches!(missing, Err(Error::NotAStore(_))));
    assert!(!path.exists(), "a read-only open created the file");
    store_with(&path, &["a", "b"]);
    let head = std::fs::read(&path).unwrap();
    assert_eq!(i32::from_be_bytes(head[68..72].try_into().unwrap()), APPLICATION_ID);
    assert_eq!(u32::from_be_bytes(head[60..64].try_into().unwrap()), 2);
    // Only the store (and its disk-full reserve): the temporary file it was made in is gone.
    let names: Vec<_> = all_bytes(dir.path())
        .into_iter()
        .map(|(n, _, _)| n)
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm") && !n.ends_with(".reserve"))
        .collect();
    assert_eq!(names, ["s.ferro"]);
    let before = std::fs::read(&path).unwrap();
    let e = Engine::open_opts(Some(&path), None, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(e.count(&Filter::default()).unwrap(), 2);
    assert!(matches!(e.upsert(vec![rec("c")], &[1.0; 4], 4, WriteMode::Upsert), Err(Error::ReadOnly(_))));
    assert!(matches!(e.reset(), Err(Error::ReadOnly(_))));
    e.close();
    // The store file is unchanged (SQLite may leave its own -wal/-shm beside it).
    assert!(std::fs::read(&path).unwrap() == before, "a read-only open changed the store");
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ferro");
    store_with(&path, &["a"]);
    Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 3").unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(Engine::open(Some(&path), None, Durability::Normal), Err(Error::Incompatible(_))));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_version_1_store_is_upgraded_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.ferro");
    {
        // The version 1 layout, as earlier ferromem versions wrote it.
        let c = Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).unwrap();
        c.execute_batch(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE records(id TEXT PRIMARY KEY, content TEXT NOT NULL, scope TEXT NOT NULL,
                 categories TEXT NOT NULL, metadata TEXT NOT NULL, importance REAL NOT NULL,
                 created_at REAL NOT NULL, last_accessed REAL NOT NULL, source TEXT,
                 private INTEGER NOT NULL, vector BLOB NOT NULL, seq INTEGER NOT NULL);
             CREATE INDEX records_seq ON records(seq);
             CREATE TABLE tombstones(id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
             CREATE INDEX tombstones_seq ON tombstones(seq);
             INSERT INTO meta VALUES ('schema_version', '1'), ('dim', '2'), ('seq', '1'), ('epoch', '0');",
        )
        .unwrap();
        let blob: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        c.execute("INSERT INTO records VALUES ('a', 'hi', '/s', '[\"c\"]', '{}', 0.5, 1.0, 1.0, NULL, 0, ?1, 1)", [blob]).unwrap();
    }
    // Read-only: served as it is (no checksums to verify), and not upgraded.
    let ro = Engine::open_opts(Some(&path), None, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(ro.count(&Filter::default()).unwrap(), 1);
    ro.close();
    let mut check = SqliteStorage::open_as(&path, Durability::Normal, Access::ReadOnly).unwrap();
    assert!(check.verify().unwrap().iter().any(|p| p.contains("version 1")));
    drop(check);
    let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
    let got = e.get(&["a".to_string()]).unwrap();
    assert_eq!(got[0].as_ref().unwrap().1, vec![1.0, 2.0]);
    e.close();
    let c = Connection::open(&path).unwrap();
    let app: i32 = c.query_row("PRAGMA application_id", [], |r| r.get(0)).unwrap();
    assert_eq!(app, APPLICATION_ID);
    drop(c);
    let mut check = SqliteStorage::open_as(&path, Durability::Normal, Access::ReadOnly).unwrap();
    assert_eq!(check.verify().unwrap(), Vec::<String>::new());
}

/// Flips one bit of one column of record "b" behind ferromem's back.
fn damage(path: &Path, column: &str) {
    let c = Connection::open(path).unwrap();
    match column {
        "vector" => {
            let mut v: Vec<u8> = c.query_row("SELECT vector FROM records WHERE id = 'b'", [], |r| r.get(0)).unwrap();
            v[5] ^= 0x10;
            c.execute("UPDATE records SET vector = ?1 WHERE id = 'b'", [v]).unwrap();
        }
        "content" => {
            c.execute("UPDATE records SET content = 'content c' WHERE id = 'b'", []).unwrap();
        }
        "importance" => {
            c.execute("UPDATE records SET importance = 0.50000001 WHERE id = 'b'", []).unwrap();
        }
        "type" => {
            c.execute("UPDATE records SET scope = x'2f73' WHERE id = 'b'", []).unwrap();
            // a BLOB, not TEXT
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_damaged_record_is_quarantined_never_served() {
    for column in ["vector", "content", "importance", "type"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ferro");
        store_with(&path, &["a", "b", "c"]);
        // Another process has the store open when "b" is written again and then damaged
        // on disk: its catch-up reads the new row, which fails, so its old "b" goes too.
        let live = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        assert_eq!(live.count(&Filter::default()).unwrap(), 3);
        store_with(&path, &["b"]);
        damage(&path, column);
        let mut check = SqliteStorage::open_as(&path, Durability::Normal, Access::ReadOnly).unwrap();
        let problems = check.verify().unwrap();
        assert_eq!(problems.len(), 1, "{column}: {problems:?}");
        assert!(problems[0].contains("\"b\""), "{column}: {problems:?}");
        drop(check);

        let e = Engine::open(Some(&path), None, Durability::Normal).unwrap();
        for engine in [&e, &live] {
            assert_eq!(engine.count(&Filter::default()).unwrap(), 2, "{column}");
            let hits = engine.search(&[1.0, 2.0, 3.0, 4.0], 4, 10, &Filter::default(), None).unwrap();
            assert!(hits[0].iter().all(|(id, _)| &**id != "b"), "{column}");
            assert!(matches!(engine.get(&["b".to_string()]), Err(Error::Corrupt(m)) if m.contains("\"b\"")), "{column}");
            assert_eq!(engine.get(&["a".to_string()]).unwrap()[0].as_ref().unwrap().0.id.as_ref(), "a");
            let damaged = engine.stats().damaged;
            assert_eq!(damaged.len(), 1, "{column}");
            assert_eq!(damaged[0].id, "b");
        }
        // Deleting it by id clears it, in this process and the other.
        let only_b = Filter { ids: Some(vec!["b".into()]), ..Filter::default() };
        assert_eq!(e.delete(&only_b).unwrap(), 1);
        assert!(e.stats().damaged.is_empty());
        assert!(live.get(&["b".to_string()]).unwrap()[0].is_none());
        assert!(live.stats().damaged.is_empty());
        // Saving it again makes it whole.
        e.upsert(vec![rec("b")], &[4.0, 3.0, 2.0, 1.0], 4, WriteMode::Upsert).unwrap();
        assert_eq!(live.get(&["b".to_string()]).unwrap()[0].as_ref().unwrap().1, vec![4.0, 3.0, 2.0, 1.0]);
        e.close();
        live.close();
        let mut check = SqliteStorage::open_as(&path, Durability::Normal, Access::ReadOnly).unwrap();
        assert_eq!(check.verify().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn a_damaged_vector_read_from_disk_fails_typed() {
    // f16 and int8 replicas hold no exact vectors: get reads them from the file.
    for precision in [ferromem_core::state::Precision::F16, ferromem_core::state::Precision::Int8] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ferro");
        store_with(&path, &["a", "b"]);
        let e = Engine::open_opts(Some(&path), None, OpenOptions { precision, ..OpenOptions::default() }).unwrap();
        assert!(e.get(&["b".to_string()]).unwrap()[0].is_some());
        damage(&path, "vector");
        // The replica (opened before the damage) re-reads the changed row on catch-up? No:
        // the damage bypassed ferromem, so no change sequence moved; the point read checks.
        assert!(matches!(e.get(&["b".to_string()]), Err(Error::Corrupt(_))), "{precision:?}");
        e.close();
    }
}
