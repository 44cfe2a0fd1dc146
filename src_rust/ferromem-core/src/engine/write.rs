//! The write protocol: every write is one durable transaction (begun caught up with other
//! processes, computed against the newest state, committed) and then applied to the
//! replica; and the reserve that lets a delete free space on a full disk.

use super::{check_precision_dim, validate_stored_vectors, Engine, OwnedOp, Patch, WriteMode};
use crate::filter::Filter;
use crate::metrics::Op;
use crate::record::{metadata_scalars, Record};
use crate::state::State;
use crate::storage::{Storage, WriteOp};
use crate::{Error, Result};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `<path>.reserve`: disk space held for deletes on a full disk (see `make_reserve`).
pub fn reserve_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reserve");
    PathBuf::from(name)
}

/// The reserve's size: 16 pages of 32 KiB. A delete of a few records appends about five
/// pages to the WAL (a table page, two index pages, the header), so this is room for a
/// few deletes once it is released.
pub const RESERVE_BYTES: usize = 512 * 1024;

/// Creates the reserve beside a store, when it is missing and the disk has the room: a
/// file of zeros (written, not sparse, so its blocks are really held). On a full disk a
/// save fails with a typed error and writes nothing; so would a delete, leaving the API
/// no way to free space, were it not for this: a delete that hits a full disk releases the
/// reserve and runs again. The next open makes a new reserve when there is room. Deleting
/// the file by hand is always safe. Best effort: a failure leaves the store without one.
pub(super) fn make_reserve(path: &Path) {
    let target = reserve_file(path);
    if target.exists() {
        return;
    }
    let tmp = target.with_extension(format!("reserve.tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, vec![0u8; RESERVE_BYTES]).and_then(|()| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Frees the reserve; true when there was one to free.
pub(super) fn release_reserve(path: &Path) -> bool {
    std::fs::remove_file(reserve_file(path)).is_ok()
}

/// Whether a storage error is SQLite's SQLITE_FULL. `Error::Storage` keeps only SQLite's
/// message, and "database or disk is full" is SQLite's fixed text for that code.
pub(super) fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Storage(msg) if msg.contains("database or disk is full"))
}

/// How many times a write whose transaction was lost before it committed runs again. Each
/// try waits for the backend to reconnect (up to its own timeout), so this only bounds a
/// connection that keeps breaking.
const WRITE_TRIES: usize = 8;

/// Runs `attempt` again while the backend reports that its transaction was lost before
/// it committed ([`Error::Retry`]: nothing of it was written). The attempt starts over
/// from the latest state, so what it writes is computed afresh.
fn retrying<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match attempt() {
            Err(Error::Retry(why)) => {
                tries += 1;
                if tries >= WRITE_TRIES {
                    return Err(Error::Unavailable(format!("a write lost its connection {tries} times before it could commit: {why}")));
                }
            }
            other => return other,
        }
    }
}

impl Engine {
    /// Starts an exclusive write transaction and brings the replica up to the latest
    /// commit inside it, so what the caller computes next is against the newest state.
    /// Rolls back on error.
    pub(super) fn begin_caught_up(&self, w: &mut dyn Storage) -> Result<()> {
        w.begin_write()?;
        let (epoch, seq) = {
            let st = self.state.read();
            (st.epoch, st.seq)
        };
        let caught_up = w.changes_since(epoch, seq).and_then(|c| self.apply_changes(c));
        if caught_up.is_err() {
            w.rollback();
        }
        caught_up
    }

    /// One durable write: inside an exclusive transaction, catch up, let `build` compute the
    /// changes against the latest state (validation happens there), write, commit, then
    /// apply to the replica. Any error rolls everything back.
    pub(super) fn write_op<'v, T>(&self, op: Op, mut build: impl FnMut(&State) -> Result<(Vec<OwnedOp<'v>>, T)>) -> Result<T> {
        let t = Instant::now();
        self.check_open()?;
        let out = retrying(|| self.write_once(&mut build))?;
        self.kick_index_build();
        self.metrics.record(op, t);
        Ok(out)
    }

    /// One attempt at a durable write (see `write_op`).
    fn write_once<'v, T>(&self, build: &mut impl FnMut(&State) -> Result<(Vec<OwnedOp<'v>>, T)>) -> Result<T> {
        let mut guard = self.writer.lock();
        let w = guard.as_mut().ok_or(Error::Closed)?;
        self.begin_caught_up(w.as_mut())?;
        let staged = (|| {
            let st = self.state.read();
            let (ops, out) = build(&st)?;
            if ops.is_empty() {
                return Ok((ops, 0, out));
            }
            let new_seq = st.seq + 1;
            let dim = st.dim.or_else(|| {
                ops.iter().find_map(|o| match o {
                    OwnedOp::Put(_, v) => Some(v.len()),
                    OwnedOp::Delete(_) => None,
                })
            });
            drop(st);
            let refs: Vec<WriteOp<'_>> = ops
                .iter()
                .map(|o| match o {
                    OwnedOp::Put(rec, vector) => WriteOp::Put { rec, vector },
                    OwnedOp::Delete(id) => WriteOp::Delete { id },
                })
                .collect();
            w.write(&refs, new_seq, dim)?;
            Ok((ops, new_seq, out))
        })();
        let (ops, new_seq, out) = match staged {
            Ok(v) => v,
            Err(e) => {
                w.rollback();
                return Err(e);
            }
        };
        if ops.is_empty() {
            w.rollback();
        } else {
            w.commit()?;
            let mut st = self.write_state();
            // A concurrent catch-up may already have applied this commit (and newer ones).
            if st.seq < new_seq {
                for o in ops {
                    match o {
                        OwnedOp::Put(rec, vector) => st.put(rec, &vector)?,
                        OwnedOp::Delete(id) => {
                            st.remove(&id);
                        }
                    }
                }
                st.seq = new_seq;
            }
        }
        Ok(out)
    }

    /// Adds or replaces records (one transaction). `vectors` is row-major, `dim` per row.
    pub fn upsert(&self, records: Vec<Record>, vectors: &[f32], dim: usize, mode: WriteMode) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        validate_stored_vectors(vectors, dim)?;
        if vectors.len() != records.len() * dim {
            return Err(Error::InvalidInput(format!("{} records but {} vectors", records.len(), vectors.len() / dim)));
        }
        let mut seen = HashSet::with_capacity(records.len());
        for r in &records {
            if r.id.is_empty() {
                return Err(Error::InvalidInput("ids must be non-empty strings".into()));
            }
            if !seen.insert(r.id.clone()) {
                return Err(Error::InvalidInput(format!("id {:?} appears twice in one batch", &*r.id)));
            }
            metadata_scalars(&r.metadata_json)?;
            for x in [r.importance, r.created_at, r.last_accessed] {
                if !x.is_finite() {
                    return Err(Error::InvalidInput("importance and timestamps must be finite numbers".into()));
                }
            }
        }
        let op = if mode == WriteMode::Insert { Op::add } else { Op::upsert };
        self.write_op(op, |st| {
            st.check_dim(dim)?;
            check_precision_dim(st.precision, dim)?;
            if mode == WriteMode::Insert {
                if let Some(r) = records.iter().find(|r| st.contains(&r.id)) {
                    return Err(Error::DuplicateId(r.id.to_string()));
                }
            }
            // Cloned, not moved: a write whose connection is lost runs again (`retrying`).
            let ops = records.iter().cloned().zip(vectors.chunks_exact(dim)).map(|(rec, v)| OwnedOp::Put(rec, Cow::Borrowed(v))).collect();
            Ok((ops, ()))
        })
    }

    /// Changes some fields of one record; false when the id does not exist.
    pub fn update(&self, id: &str, patch: Patch) -> Result<bool> {
        if let Some(v) = &patch.vector {
            validate_stored_vectors(v, v.len())?;
        }
        if let Some(m) = &patch.metadata_json {
            metadata_scalars(m)?;
        }
        self.write_op(Op::update, |st| {
            let Some((old, _)) = st.get(id) else { return Ok((Vec::new(), false)) };
            if let Some(v) = &patch.vector {
                st.check_dim(v.len())?;
                check_precision_dim(st.precision, v.len())?;
            }
            let mut rec = old.clone();
            let p = patch.clone();
            if let Some(x) = p.content {
                rec.content = x
            }
            if let Some(x) = p.scope {
                rec.scope = x
            }
            if let Some(x) = p.categories {
                rec.categories = x
            }
            if let Some(x) = p.metadata_json {
                rec.metadata_json = x
            }
            if let Some(x) = p.importance {
                rec.importance = x
            }
            if let Some(x) = p.created_at {
                rec.created_at = x
            }
            if let Some(x) = p.last_accessed {
                rec.last_accessed = x
            }
            if let Some(x) = p.source {
                rec.source = x
            }
            if let Some(x) = p.private {
                rec.private = x
            }
            // No new vector: an empty one keeps the stored vector (nothing re-written).
            let vector = p.vector.unwrap_or_default();
            Ok((vec![OwnedOp::Put(rec, Cow::Owned(vector))], true))
        })
    }

    /// Sets last_accessed of the given records; returns how many existed.
    pub fn touch(&self, ids: &[String], at: f64) -> Result<usize> {
        if !at.is_finite() {
            return Err(Error::InvalidInput("the time must be a finite number".into()));
        }
        self.write_op(Op::touch, |st| {
            let mut seen = HashSet::new();
            let ops: Vec<OwnedOp> = ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| st.get(id))
                .map(|(r, _)| {
                    let mut rec = r.clone();
                    rec.last_accessed = at;
                    // An empty vector keeps the stored one: a touch rewrites no vector.
                    OwnedOp::Put(rec, Cow::Borrowed(&[][..]))
                })
                .collect();
            let n = ops.len();
            Ok((ops, n))
        })
    }

    /// Deletes the records matching the filter (which must restrict something); returns the count.
    pub fn delete(&self, filter: &Filter) -> Result<usize> {
        if filter.is_empty() {
            return Err(Error::InvalidFilter("delete needs at least one criterion; use reset() to delete everything".into()));
        }
        let delete = || {
            self.write_op(Op::delete, |st| {
                let slots = st.select(filter);
                let mut ops: Vec<OwnedOp> = st.ids_of(&slots).into_iter().map(OwnedOp::Delete).collect();
                // Damaged records named by id can be deleted too (that is how a user clears
                // them), when the filter asks for nothing else that their fields would decide.
                if let (Some(ids), true) = (&filter.ids, filter.only_ids()) {
                    let named: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
                    ops.extend(named.into_iter().filter(|id| st.damage_of(id).is_some()).map(|id| OwnedOp::Delete(Arc::from(id))));
                }
                let n = ops.len();
                Ok((ops, n))
            })
        };
        match delete() {
            // A full disk: the reserve beside the store gives the delete the room its WAL
            // frames need, so the API can still free space (see `make_reserve`).
            Err(e) if is_disk_full(&e) && self.path.as_deref().is_some_and(release_reserve) => delete(),
            result => result,
        }
    }

    /// Deletes every record and frees the dimension (one transaction, seen by other processes).
    pub fn reset(&self) -> Result<()> {
        let t = Instant::now();
        self.check_open()?;
        retrying(|| self.reset_once())?;
        self.metrics.record(Op::reset, t);
        Ok(())
    }

    fn reset_once(&self) -> Result<()> {
        let mut guard = self.writer.lock();
        let w = guard.as_mut().ok_or(Error::Closed)?;
        self.begin_caught_up(w.as_mut())?;
        let staged = {
            let st = self.state.read();
            let (epoch, seq) = (st.epoch + 1, st.seq + 1);
            drop(st);
            w.reset(epoch, seq).map(|()| (epoch, seq))
        };
        let (epoch, seq) = match staged {
            Ok(v) => v,
            Err(e) => {
                w.rollback();
                return Err(e);
            }
        };
        w.commit()?;
        let mut st = self.write_state();
        if st.epoch < epoch || st.seq < seq {
            st.clear();
            st.epoch = epoch;
            st.seq = seq;
        }
        drop(st);
        drop(guard);
        Ok(())
    }
}
