//! The storage seam: a backend written here, implementing only `Storage` (no exact
//! vectors at a position, no images, no file), plugged into real engines through
//! `Engine::open_with_storage`. Writes, reads, catch-up between two engines sharing it,
//! and a reopen all work; precisions that need exact vectors read back are refused.

use ferromem_core::state::Precision;
use ferromem_core::storage::{Changes, Loaded, Snapshot, Storage, StoredRecord, WriteOp};
use ferromem_core::{Engine, Error, Filter, OpenOptions, Patch, Record, Result, WriteMode};
use std::sync::{Arc, Condvar, Mutex};

/// What the fake store holds: committed rows and tombstones, each stamped with the
/// sequence of its last change, as a durable backend keeps them.
#[derive(Clone, Default)]
struct Committed {
    epoch: u64,
    seq: u64,
    dim: Option<usize>,
    rows: Vec<(Record, Vec<f32>, u64)>,
    tombstones: Vec<(String, u64)>,
    /// Bumped by every commit, for `maybe_changed`.
    version: u64,
}

#[derive(Default)]
struct Shared {
    committed: Mutex<Committed>,
    /// Whether a connection holds the write transaction, and the wait for it.
    writing: Mutex<bool>,
    released: Condvar,
}

/// One connection to the shared fake store.
struct VecStorage {
    shared: Arc<Shared>,
    seen_version: u64,
    /// The transaction's working copy, committed whole.
    pending: Option<Committed>,
}

impl VecStorage {
    fn connect(shared: &Arc<Shared>) -> Box<dyn Storage> {
        Box::new(VecStorage { shared: shared.clone(), seen_version: 0, pending: None })
    }

    fn stored(row: &(Record, Vec<f32>, u64)) -> StoredRecord {
        StoredRecord { rec: row.0.clone(), vector: row.1.clone(), seq: row.2 }
    }

    fn pending(&mut self) -> &mut Committed {
        self.pending.as_mut().expect("a write outside a transaction")
    }

    fn end_transaction(&mut self) {
        self.pending = None;
        *self.shared.writing.lock().unwrap() = false;
        self.shared.released.notify_one();
    }
}

impl Storage for VecStorage {
    fn load_each(&mut self, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Loaded> {
        let now = self.shared.committed.lock().unwrap().clone();
        for row in &now.rows {
            sink(VecStorage::stored(row))?;
        }
        Ok(Loaded { epoch: now.epoch, seq: now.seq, dim: now.dim, damaged: Vec::new() })
    }

    fn maybe_changed(&mut self, _epoch: u64, _seq: u64) -> Result<bool> {
        let version = self.shared.committed.lock().unwrap().version;
        let changed = version != self.seen_version;
        self.seen_version = version;
        Ok(changed)
    }

    fn changes_since(&mut self, epoch: u64, seq: u64) -> Result<Changes> {
        let now = self.shared.committed.lock().unwrap().clone();
        if now.epoch != epoch || now.seq < seq {
            let records = now.rows.iter().map(VecStorage::stored).collect();
            return Ok(Changes::Reload(Snapshot { epoch: now.epoch, seq: now.seq, dim: now.dim, records, damaged: Vec::new() }));
        }
        if now.seq == seq {
            return Ok(Changes::None);
        }
        Ok(Changes::Delta {
            epoch: now.epoch,
            seq: now.seq,
            dim: now.dim,
            upserts: now.rows.iter().filter(|r| r.2 > seq).map(VecStorage::stored).collect(),
            deletes: now.tombstones.iter().filter(|t| t.1 > seq).cloned().collect(),
            damaged: Vec::new(),
        })
    }

    fn begin_write(&mut self) -> Result<()> {
        let mut writing = self.shared.writing.lock().unwrap();
        while *writing {
            writing = self.shared.released.wait(writing).unwrap();
        }
        *writing = true;
        self.pending = Some(self.shared.committed.lock().unwrap().clone());
        Ok(())
    }

    fn write(&mut self, ops: &[WriteOp<'_>], seq: u64, dim: Option<usize>) -> Result<()> {
        let txn = self.pending();
        for op in ops {
            match op {
                WriteOp::Put { rec, vector } => {
                    let at = txn.rows.iter().position(|r| r.0.id == rec.id);
                    // An empty vector keeps the stored one (an update of other fields).
                    let vector = match (vector.is_empty(), at) {
                        (true, Some(i)) => txn.rows[i].1.clone(),
                        (true, None) => return Err(Error::Storage(format!("record {:?} vanished", &*rec.id))),
                        (false, _) => vector.to_vec(),
                    };
                    let row = ((*rec).clone(), vector, seq);
                    match at {
                        Some(i) => txn.rows[i] = row,
                        None => txn.rows.push(row),
                    }
                    txn.tombstones.retain(|t| *t.0 != *rec.id);
                }
                WriteOp::Delete { id } => {
                    txn.rows.retain(|r| &*r.0.id != *id);
                    txn.tombstones.retain(|t| t.0 != *id);
                    txn.tombstones.push((id.to_string(), seq));
                }
            }
        }
        txn.seq = seq;
        txn.dim = dim;
        Ok(())
    }

    fn reset(&mut self, epoch: u64, seq: u64) -> Result<()> {
        let txn = self.pending();
        txn.rows.clear();
        txn.tombstones.clear();
        (txn.epoch, txn.seq, txn.dim) = (epoch, seq, None);
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let mut txn = self.pending.take().expect("a commit outside a transaction");
        {
            let mut committed = self.shared.committed.lock().unwrap();
            txn.version = committed.version + 1;
            *committed = txn;
        }
        self.end_transaction();
        Ok(())
    }

    fn rollback(&mut self) {
        if self.pending.is_some() {
            self.end_transaction();
        }
    }
}

fn open(shared: &Arc<Shared>, precision: Precision) -> Result<Engine> {
    let opts = OpenOptions { precision, ..OpenOptions::default() };
    Engine::open_with_storage(VecStorage::connect(shared), VecStorage::connect(shared), None, opts)
}

fn rec(id: &str, scope: &str) -> Record {
    Record {
        id: Arc::from(id),
        content: format!("content of {id}"),
        scope: scope.into(),
        categories: vec!["c".into()],
        metadata_json: "{}".into(),
        importance: 0.5,
        created_at: 1.0,
        last_accessed: 1.0,
        source: None,
        private: false,
    }
}

#[test]
fn an_engine_on_a_backend_with_storage_only_writes_reads_and_reopens() {
    let shared = Arc::new(Shared::default());
    let e = open(&shared, Precision::F32).unwrap();
    assert_eq!(e.path(), None, "a backend that is no local file has no path");
    let v = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    e.upsert(vec![rec("x", "/a"), rec("y", "/a/b"), rec("z", "/c")], &v, 3, WriteMode::Insert).unwrap();
    assert_eq!(e.count(&Filter::default()).unwrap(), 3);
    let hits = e.search(&[0.0, 1.0, 0.0], 3, 1, &Filter::default(), None).unwrap();
    assert_eq!(&*hits[0][0].0, "y");
    let got = e.get(&["z".into()]).unwrap();
    assert_eq!(got[0].as_ref().unwrap().1, vec![0.0, 0.0, 1.0]);
    assert!(e.update("x", Patch { content: Some("new".into()), ..Patch::default() }).unwrap());
    assert_eq!(e.delete(&Filter { ids: Some(vec!["y".into()]), ..Filter::default() }).unwrap(), 1);
    assert_eq!(e.stats().disk_bytes, 0);
    e.close();

    // Reopened on the same store: everything committed is there, the vectors too.
    let again = open(&shared, Precision::F32).unwrap();
    assert_eq!(again.count(&Filter::default()).unwrap(), 2);
    assert_eq!(again.dim().unwrap(), Some(3));
    let got = again.get(&["x".into(), "y".into()]).unwrap();
    let (x, xv) = got[0].as_ref().unwrap();
    assert_eq!((x.content.as_str(), xv.as_slice()), ("new", &v[..3]));
    assert!(got[1].is_none());
}

#[test]
fn two_engines_sharing_the_backend_catch_up_with_each_other() {
    let shared = Arc::new(Shared::default());
    let a = open(&shared, Precision::F32).unwrap();
    let b = open(&shared, Precision::F32).unwrap();
    a.upsert(vec![rec("x", "/"), rec("y", "/")], &[1.0, 0.0, 0.0, 1.0], 2, WriteMode::Insert).unwrap();
    // b never wrote: it catches up before answering.
    assert_eq!(b.count(&Filter::default()).unwrap(), 2);
    assert_eq!(b.delete(&Filter { ids: Some(vec!["x".into()]), ..Filter::default() }).unwrap(), 1);
    assert!(a.get(&["x".into()]).unwrap()[0].is_none());
    // An insert of an id the other engine wrote meanwhile is refused: the writer catches
    // up inside its transaction.
    b.upsert(vec![rec("w", "/")], &[0.5, 0.5], 2, WriteMode::Insert).unwrap();
    let err = a.upsert(vec![rec("w", "/")], &[0.5, 0.5], 2, WriteMode::Insert).unwrap_err();
    assert!(matches!(err, Error::DuplicateId(ref id) if id == "w"), "{err:?}");
    // A reset is a new epoch: the other engine reloads, and the dimension is free again.
    a.reset().unwrap();
    assert_eq!(b.count(&Filter::default()).unwrap(), 0);
    assert_eq!(b.dim().unwrap(), None);
    b.upsert(vec![rec("v", "/")], &[1.0, 2.0, 3.0], 3, WriteMode::Insert).unwrap();
    assert_eq!(a.dim().unwrap(), Some(3));
}

#[test]
fn precisions_that_read_exact_vectors_back_need_a_backend_that_can() {
    let shared = Arc::new(Shared::default());
    for precision in [Precision::F16, Precision::Int8] {
        let err = open(&shared, precision).err().expect("opened without exact vectors");
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
    // f32 keeps the exact vectors in memory: no capability needed.
    assert!(open(&shared, Precision::F32).is_ok());
}
