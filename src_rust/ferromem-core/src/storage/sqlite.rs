//! The embedded durable layer: one SQLite file in WAL mode (SQLite is compiled into the
//! extension, so no system library is needed). Schema version 1:
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value TEXT)   -- schema_version, dim ('' = none), seq, epoch,
//!                                          -- image (token of the store image, if any)
//! records(id TEXT PRIMARY KEY, content, scope, categories /*JSON array*/, metadata /*JSON object*/,
//!         importance, created_at, last_accessed, source, private, vector /*LE f32 BLOB*/, seq)
//! tombstones(id TEXT PRIMARY KEY, seq)     -- deletions, so other replicas can catch up
//! ```
//!
//! The NumPy reference engine reads and writes the same schema.

use super::{Changes, Durability, Snapshot, Storage, StoredRecord, WriteOp};
use crate::record::Record;
use crate::{Error, Result};
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, ToSql};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SCHEMA_VERSION: &str = "1";
/// How long a writer waits for another process's write lock before giving up. Long on
/// purpose: a lock wait must never surface as an error while the other writer progresses.
const WRITE_LOCK_PATIENCE: Duration = Duration::from_secs(600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
    id TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    scope TEXT NOT NULL,
    categories TEXT NOT NULL,
    metadata TEXT NOT NULL,
    importance REAL NOT NULL,
    created_at REAL NOT NULL,
    last_accessed REAL NOT NULL,
    source TEXT,
    private INTEGER NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_seq ON records(seq);
CREATE TABLE IF NOT EXISTS tombstones(id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones(seq);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1'), ('dim', ''), ('seq', '0'), ('epoch', '0');
";

const RECORD_COLUMNS: &str =
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector, seq";

pub struct SqliteStorage {
    conn: Connection,
    path: PathBuf,
    data_version: i64,
    in_write: bool,
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ffi::ErrorCode::DatabaseBusy | rusqlite::ffi::ErrorCode::DatabaseLocked))
}

/// Runs `f`, retrying while SQLite reports the database busy (another process holds a lock
/// beyond the busy timeout), with a growing pause, up to WRITE_LOCK_PATIENCE.
/// SQLite's wait for a lock another connection holds (in place of `busy_timeout(60 s)`):
/// pauses of 1, 2, 4 ... then 50 ms, about 60 s in all, given up as soon as the caller is
/// interrupted (Ctrl-C), so a wait on another process's write lock ends within a pause of
/// the signal. Returns whether SQLite should try again.
fn busy_wait(attempts: i32) -> bool {
    if crate::interrupt::requested() {
        return false;
    }
    let pause_ms = 1u64 << attempts.clamp(0, 6);
    std::thread::sleep(Duration::from_millis(pause_ms.min(50)));
    // 63 ms for the first six, then 50 ms each: 60 s after 1,205 attempts.
    attempts < 1_205
}

fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if is_busy(&e) && start.elapsed() < WRITE_LOCK_PATIENCE && !crate::interrupt::requested() => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn blob_to_vector(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(Error::Corrupt(format!("a stored vector has {} bytes, not a multiple of 4", b.len())));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Record, Vec<u8>, i64)> {
    let categories: String = row.get(3)?;
    let categories: Vec<String> = serde_json::from_str(&categories).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let id: String = row.get(0)?;
    Ok((
        Record {
            id: Arc::from(id),
            content: row.get(1)?,
            scope: row.get(2)?,
            categories,
            metadata_json: row.get(4)?,
            importance: row.get(5)?,
            created_at: row.get(6)?,
            last_accessed: row.get(7)?,
            source: row.get(8)?,
            private: row.get::<_, i64>(9)? != 0,
        },
        row.get(10)?,
        row.get(11)?,
    ))
}

impl SqliteStorage {
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStorage> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Storage(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_handler(Some(busy_wait))?;
        // 32 KiB pages: a 1536-dim float32 vector (6 KiB) plus its text packs five to a page
        // instead of spilling into overflow pages, so disk per record is ~1.07x its bytes
        // (4 KiB pages: 1.34x). Takes effect only when the file is created.
        conn.execute_batch("PRAGMA page_size=32768")?;
        let mode: String = retry_busy(|| conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Storage(format!("could not switch {} to WAL mode (got {mode})", path.display())));
        }
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF; \
             PRAGMA wal_autocheckpoint=256; PRAGMA journal_size_limit=8388608;"))?;
        let mut s = SqliteStorage { conn, path: path.to_path_buf(), data_version: 0, in_write: false };
        s.ensure_schema()?;
        s.data_version = s.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(s)
    }

    /// Reads this connection's pages through a memory mapping instead of copying each
    /// 32 KiB page out of the OS cache: for the connection that serves point reads of
    /// exact vectors on the search path (re-ranking under int8 precision, `get` and `list`
    /// under f16 and int8), it halves their cost. SQLite caps the mapping at its compiled
    /// limit (2 GiB by default) and reads beyond it as usual. Mapped pages are the OS
    /// cache's, counted in RSS only as shared, reclaimable file pages. ferromem never
    /// truncates a store file, which is what would make a mapping unsafe.
    pub fn map_reads(&mut self) -> Result<()> {
        self.conn.query_row("PRAGMA mmap_size=1099511627776", [], |_| Ok(()))?;
        Ok(())
    }

    fn ensure_schema(&mut self) -> Result<()> {
        let version: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key='schema_version'", [], |r| r.get(0))
            .optional()
            .or_else(|e| match &e {
                rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.contains("no such table") => Ok(None),
                _ => Err(e),
            })?;
        match version.as_deref() {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(other) => Err(Error::Incompatible(format!(
                "{} has ferromem schema version {other}; this ferromem reads version {SCHEMA_VERSION}: upgrade ferromem",
                self.path.display()
            ))),
            None => {
                retry_busy(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
                let r = self.conn.execute_batch(SCHEMA);
                match r {
                    Ok(()) => retry_busy(|| self.conn.execute_batch("COMMIT")),
                    Err(e) => {
                        let _ = self.conn.execute_batch("ROLLBACK");
                        Err(e.into())
                    }
                }
            }
        }
    }

    fn meta(&self) -> Result<(u64, u64, Option<usize>)> {
        let mut stmt = self.conn.prepare_cached("SELECT key, value FROM meta")?;
        let mut rows = stmt.query([])?;
        let (mut epoch, mut seq, mut dim) = (0u64, 0u64, None);
        let bad = |k: &str, v: &str| Error::Corrupt(format!("meta {k} = {v:?} is not a number"));
        while let Some(row) = rows.next()? {
            let k: String = row.get(0)?;
            let v: String = row.get(1)?;
            match k.as_str() {
                "epoch" => epoch = v.parse().map_err(|_| bad(&k, &v))?,
                "seq" => seq = v.parse().map_err(|_| bad(&k, &v))?,
                "dim" if !v.is_empty() => dim = Some(v.parse().map_err(|_| bad(&k, &v))?),
                _ => {}
            }
        }
        Ok((epoch, seq, dim))
    }

    fn records_where(&self, sql_tail: &str, seq: u64) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        self.each_record(sql_tail, seq, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn each_record(&self, sql_tail: &str, seq: u64, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records {sql_tail}"))?;
        let rows = stmt.query_map(params![seq as i64], row_to_record)?;
        for row in rows {
            let (rec, blob, seq) = row?;
            sink(StoredRecord { rec, vector: blob_to_vector(&blob)?, seq: seq as u64 })?;
        }
        Ok(())
    }

    /// Runs `f` inside a read transaction (a consistent snapshot), unless a write
    /// transaction is already open on this connection.
    fn in_read<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.in_write {
            return f(self);
        }
        self.conn.execute_batch("BEGIN")?;
        let r = f(self);
        let _ = self.conn.execute_batch(if r.is_ok() { "COMMIT" } else { "ROLLBACK" });
        r
    }

    fn load_inner(&mut self) -> Result<Snapshot> {
        let (epoch, seq, dim) = self.meta()?;
        let records = self.records_where("WHERE seq >= ?1", 0)?;
        Ok(Snapshot { epoch, seq, dim, records })
    }
}

impl Storage for SqliteStorage {
    fn load_each(&mut self, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<(u64, u64, Option<usize>)> {
        self.in_read(|s| {
            let meta = s.meta()?;
            s.each_record("WHERE seq >= ?1", 0, sink)?;
            Ok(meta)
        })
    }

    fn maybe_changed(&mut self) -> Result<bool> {
        let v: i64 = self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let changed = v != self.data_version;
        self.data_version = v;
        Ok(changed)
    }

    fn changes_since(&mut self, epoch: u64, seq: u64) -> Result<Changes> {
        self.in_read(|s| {
            let (db_epoch, db_seq, dim) = s.meta()?;
            if db_epoch != epoch || db_seq < seq {
                return Ok(Changes::Reload(s.load_inner()?));
            }
            if db_seq == seq {
                return Ok(Changes::None);
            }
            let upserts = s.records_where("WHERE seq > ?1", seq)?;
            let mut stmt = s.conn.prepare_cached("SELECT id, seq FROM tombstones WHERE seq > ?1")?;
            let deletes = stmt
                .query_map(params![seq as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Changes::Delta { epoch: db_epoch, seq: db_seq, dim, upserts, deletes })
        })
    }

    fn begin_write(&mut self) -> Result<()> {
        retry_busy(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        self.in_write = true;
        Ok(())
    }

    fn write(&mut self, ops: &[WriteOp<'_>], seq: u64, dim: Option<usize>) -> Result<()> {
        let seq_i = seq as i64;
        {
            let mut put = self.conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO records({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?;
            let mut put_fields = self.conn.prepare_cached(
                "UPDATE records SET content = ?2, scope = ?3, categories = ?4, metadata = ?5, importance = ?6, \
                 created_at = ?7, last_accessed = ?8, source = ?9, private = ?10, seq = ?11 WHERE id = ?1",
            )?;
            let mut untomb = self.conn.prepare_cached("DELETE FROM tombstones WHERE id = ?1")?;
            let mut del = self.conn.prepare_cached("DELETE FROM records WHERE id = ?1")?;
            let mut tomb = self.conn.prepare_cached("INSERT OR REPLACE INTO tombstones(id, seq) VALUES (?1, ?2)")?;
            for op in ops {
                match op {
                    WriteOp::Put { rec, vector } => {
                        let categories = serde_json::to_string(&rec.categories)
                            .map_err(|e| Error::InvalidInput(format!("categories: {e}")))?;
                        let (id, private): (&str, i64) = (&rec.id, rec.private as i64);
                        let fields: [&dyn ToSql; 10] = [
                            &id,
                            &rec.content,
                            &rec.scope,
                            &categories,
                            &rec.metadata_json,
                            &rec.importance,
                            &rec.created_at,
                            &rec.last_accessed,
                            &rec.source,
                            &private,
                        ];
                        if vector.is_empty() {
                            // The record exists (the engine checked inside this transaction).
                            let n = put_fields.execute(params_from_iter(fields.into_iter().chain([&seq_i as &dyn ToSql])))?;
                            if n != 1 {
                                return Err(Error::Storage(format!("record {:?} vanished inside its write transaction", &*rec.id)));
                            }
                        } else {
                            let blob = vector_to_blob(vector);
                            put.execute(params_from_iter(fields.into_iter().chain([&blob as &dyn ToSql, &seq_i])))?;
                            untomb.execute(params![&*rec.id])?;
                        }
                    }
                    WriteOp::Delete { id } => {
                        del.execute(params![id])?;
                        tomb.execute(params![id, seq_i])?;
                    }
                }
            }
        }
        let mut set = self.conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
        set.execute(params!["seq", seq.to_string()])?;
        set.execute(params!["dim", dim.map(|d| d.to_string()).unwrap_or_default()])?;
        Ok(())
    }

    fn reset(&mut self, epoch: u64, seq: u64) -> Result<()> {
        self.conn.execute_batch("DELETE FROM records; DELETE FROM tombstones;")?;
        let mut set = self.conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
        set.execute(params!["seq", seq.to_string()])?;
        set.execute(params!["epoch", epoch.to_string()])?;
        set.execute(params!["dim", ""])?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let r = retry_busy(|| self.conn.execute_batch("COMMIT"));
        if r.is_err() {
            self.rollback();
        }
        self.in_write = false;
        r
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.in_write = false;
    }

    fn vectors_at(&mut self, epoch: u64, seq: u64, ids: &[Arc<str>]) -> Result<Option<Vec<Option<Vec<f32>>>>> {
        self.in_read(|s| {
            let (db_epoch, db_seq, _) = s.meta()?;
            if db_epoch != epoch || db_seq < seq {
                return Ok(None);
            }
            // Each row carries the sequence of the write that last changed it. A row no
            // newer than `seq` holds what it held at `seq`, so the store may have moved on
            // in between (other rows written) and the read is still the one at `seq`.
            let mut stmt = s.conn.prepare_cached("SELECT vector, seq FROM records WHERE id = ?1")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row: Option<(Vec<u8>, i64)> = stmt.query_row(params![&**id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                match row {
                    Some((_, row_seq)) if row_seq as u64 > seq => return Ok(None), // rewritten since
                    Some((blob, _)) => out.push(Some(blob_to_vector(&blob)?)),
                    None if db_seq > seq => return Ok(None), // possibly deleted since
                    None => out.push(None),
                }
            }
            Ok(Some(out))
        })
    }

    fn image_position(&mut self) -> Result<(u64, u64, Option<usize>, Option<String>)> {
        self.in_read(|s| {
            let (epoch, seq, dim) = s.meta()?;
            let token = s.conn.query_row("SELECT value FROM meta WHERE key = 'image'", [], |r| r.get(0)).optional()?;
            Ok((epoch, seq, dim, token))
        })
    }

    fn set_image_token(&mut self, token: &str) -> Result<()> {
        self.begin_write()?;
        let r = self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('image', ?1)", params![token]);
        match r {
            Ok(_) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e.into())
            }
        }
    }

    fn disk_bytes(&self) -> u64 {
        // The store file with its WAL, and the caches beside it (graph, image).
        ["", "-wal", "-shm", ".hnsw", ".image"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum()
    }
}
