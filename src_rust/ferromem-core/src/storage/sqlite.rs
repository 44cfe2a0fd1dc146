//! The embedded durable layer: one SQLite file in WAL mode (SQLite is compiled into the
//! extension, so no system library is needed). Schema version 2:
//!
//! ```sql
//! -- page 1: PRAGMA application_id = APPLICATION_ID, PRAGMA user_version = 2
//! meta(key TEXT PRIMARY KEY, value TEXT)   -- schema_version, dim ('' = none), seq, epoch,
//!                                          -- image (token of the store image, if any)
//! records(id TEXT PRIMARY KEY, content, scope, categories /*JSON array*/, metadata /*JSON object*/,
//!         importance, created_at, last_accessed, source, private, vector /*LE f32 BLOB*/, seq,
//!         fields_crc, vector_crc /*see storage::checksum*/)
//! tombstones(id TEXT PRIMARY KEY, seq)     -- deletions, so other replicas can catch up
//! ```
//!
//! **Whose file it is.** ferromem writes only to a file it created or has identified as a
//! store: the SQLite header's application id and user version are read (through an
//! `immutable=1` connection, see [`inspect`]) before SQLite opens it for writing, and anything else (another application's
//! database, an empty or truncated file, not SQLite at all) is refused with
//! [`Error::NotAStore`], byte for byte untouched. A new store is made whole in a temporary
//! file beside the path and linked into place, so the path never names a half-made store
//! and an empty file there is never one of ours. Version 1 stores (no application id,
//! identified by their exact tables) are upgraded in place, under the write lock.
//!
//! The NumPy reference engine reads and writes the same schema.

use super::checksum::{vector_crc, RawFields};
use super::decode_row;
pub use super::Access;
use super::{Changes, Damage, Durability, ImagePosition, Images, Loaded, LocalFile, Snapshot, Storage, StoredRecord, VectorsAt, WriteOp};
use crate::{Error, Result};
use rusqlite::types::ValueRef;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, ToSql};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The schema this version writes; older ones are upgraded, newer ones refused.
pub const SCHEMA_VERSION: u32 = 2;
/// SQLite's `PRAGMA application_id` of a ferromem store: "FeRm".
pub const APPLICATION_ID: i32 = 0x4665_526D;
/// How long a writer waits for another process's write lock before giving up. Long on
/// purpose: a lock wait must never surface as an error while the other writer progresses.
const WRITE_LOCK_PATIENCE: Duration = Duration::from_secs(600);

const TABLES: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records(
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
    seq INTEGER NOT NULL,
    fields_crc INTEGER NOT NULL,
    vector_crc INTEGER NOT NULL
);
CREATE INDEX records_seq ON records(seq);
CREATE TABLE tombstones(id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX tombstones_seq ON tombstones(seq);
INSERT INTO meta(key, value) VALUES ('schema_version', '2'), ('dim', ''), ('seq', '0'), ('epoch', '0');
";

const RECORD_COLUMNS: &str =
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector, seq, fields_crc, vector_crc";
/// Version 1 rows have no checksums: read-only opens of such a store select NULLs.
const RECORD_COLUMNS_V1: &str =
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector, seq, NULL, NULL";

pub struct SqliteStorage {
    conn: Connection,
    path: PathBuf,
    data_version: i64,
    in_write: bool,
    access: Access,
    /// False only for a version 1 store opened read-only (its rows carry no checksums).
    checksums: bool,
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ffi::ErrorCode::DatabaseBusy | rusqlite::ffi::ErrorCode::DatabaseLocked))
}

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

/// Runs `f`, retrying while SQLite reports the database busy (another process holds a lock
/// beyond the busy handler's wait), with a growing pause, up to WRITE_LOCK_PATIENCE.
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

/// One row of `records` as read: a whole record, or the damage that keeps it out.
enum RowRead {
    Good(StoredRecord),
    Damaged(Damage),
}

/// A row's stored values as they are, before decoding; None when a value has a type no
/// store writes (damage).
fn raw_row<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<Option<(RawFields<'r>, &'r [u8])>> {
    let text = |i: usize| -> rusqlite::Result<Option<&'r [u8]>> {
        Ok(match row.get_ref(i)? {
            ValueRef::Text(t) => Some(t),
            _ => None,
        })
    };
    let real = |i: usize| -> rusqlite::Result<Option<f64>> {
        Ok(match row.get_ref(i)? {
            ValueRef::Real(x) => Some(x),
            ValueRef::Integer(x) => Some(x as f64),
            _ => None,
        })
    };
    let (Some(id), Some(content), Some(scope), Some(categories_json), Some(metadata_json)) =
        (text(0)?, text(1)?, text(2)?, text(3)?, text(4)?)
    else {
        return Ok(None);
    };
    let (Some(importance), Some(created_at), Some(last_accessed)) = (real(5)?, real(6)?, real(7)?) else {
        return Ok(None);
    };
    let source = match row.get_ref(8)? {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some(t),
        _ => return Ok(None),
    };
    let private = match row.get_ref(9)? {
        ValueRef::Integer(p @ (0 | 1)) => p == 1,
        _ => return Ok(None),
    };
    let ValueRef::Blob(blob) = row.get_ref(10)? else { return Ok(None) };
    let fields = RawFields { id, content, scope, categories_json, metadata_json, importance, created_at, last_accessed, source, private };
    Ok(Some((fields, blob)))
}

/// Decodes and verifies one row selected with RECORD_COLUMNS (or RECORD_COLUMNS_V1).
fn read_row(row: &rusqlite::Row<'_>, checksums: bool) -> rusqlite::Result<RowRead> {
    let seq = match row.get_ref(11)? {
        ValueRef::Integer(s) => s.max(0) as u64,
        _ => 0,
    };
    let raw_id = match row.get_ref(0)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        other => format!("<{:?} id>", other.data_type()),
    };
    let damaged = |what| Ok(RowRead::Damaged(Damage { id: raw_id.clone(), seq, what }));
    let Some((raw, blob)) = raw_row(row)? else { return damaged("unreadable") };
    let sums = if checksums {
        let (ValueRef::Integer(fields_sum), ValueRef::Integer(vector_sum)) = (row.get_ref(12)?, row.get_ref(13)?) else {
            return damaged("unreadable");
        };
        Some((fields_sum, vector_sum))
    } else {
        None
    };
    Ok(match decode_row(raw, blob, sums, seq) {
        Ok(r) => RowRead::Good(r),
        Err(what) => RowRead::Damaged(Damage { id: raw_id, seq, what }),
    })
}

/// What the first 100 bytes of a file say it is.
enum Found {
    Missing,
    /// A ferromem store of this schema version (from the SQLite header).
    Store(u32),
    /// A SQLite database without an application id: a version 1 store, or not ours.
    Unmarked,
}

fn not_a_store(path: &Path, what: &str) -> Error {
    not_a_store_because(path, what, "")
}

/// `what` the file is, then `hint`: what the user can do about it.
fn not_a_store_because(path: &Path, what: &str, hint: &str) -> Error {
    Error::NotAStore(format!("{} {what}: it is not a ferromem store, and ferromem left it untouched.{hint}", path.display()))
}

/// Identifies the file at `path` from its SQLite header, without writing or locking.
///
/// The header is read through SQLite (`immutable=1`), never with a plain file descriptor:
/// closing any descriptor of a file releases every POSIX lock the process holds on it, so
/// a plain read would drop the locks of this process's open connections to the same
/// store (SQLite's own opens keep such descriptors until the locks are gone). Files too
/// short to be a database are read directly, for the message: no store is that short.
fn inspect(path: &Path) -> Result<Found> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(Error::Storage(format!("cannot read {}: {e}", path.display()))),
    };
    if meta.is_dir() {
        return Err(not_a_store(path, "is a directory"));
    }
    if meta.len() == 0 {
        return Err(not_a_store_because(
            path,
            "is empty (0 bytes)",
            " A store is never empty: if this file was one, it was truncated, and only a backup can restore it.",
        ));
    }
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    if meta.len() < 512 {
        let mut head = Vec::with_capacity(100);
        std::fs::File::open(path)
            .and_then(|f| f.take(100).read_to_end(&mut head))
            .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
        if MAGIC.starts_with(&head[..head.len().min(16)]) || head.starts_with(MAGIC) {
            return Err(not_a_store_because(
                path,
                &format!("is truncated ({} bytes, shorter than any SQLite database)", meta.len()),
                " If this file was a store, only a backup can restore it.",
            ));
        }
        return Err(not_a_store(path, "is not a SQLite database"));
    }
    let read_header = |params: &str| -> rusqlite::Result<(i32, u32)> {
        let conn = Connection::open_with_flags(
            file_uri(path, params),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Reading the schema makes SQLite check the header; the pragmas read its fields.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        let application_id = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let user_version = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?;
        Ok((application_id, user_version as u32))
    };
    let header = match read_header("immutable=1") {
        // `immutable=1` reads the file without its WAL. After a crash in the middle of a
        // checkpoint the file alone holds a mix of old and new pages, whole only with the
        // WAL applied: read it again through SQLite's WAL recovery (read-only).
        Err(rusqlite::Error::SqliteFailure(f, _)) if matches!(f.code, rusqlite::ffi::ErrorCode::DatabaseCorrupt) && has_wal(path) => {
            read_header("mode=ro")
        }
        other => other,
    };
    let (application_id, user_version) = match header {
        Ok(h) => h,
        Err(rusqlite::Error::SqliteFailure(f, _)) if matches!(f.code, rusqlite::ffi::ErrorCode::NotADatabase) => {
            return Err(not_a_store(path, "is not a SQLite database"));
        }
        Err(e) => return Err(Error::from(e)),
    };
    match application_id {
        APPLICATION_ID => Ok(Found::Store(user_version)),
        0 => Ok(Found::Unmarked),
        other => Err(not_a_store(path, &format!("is a SQLite database of another application (application_id {other:#010x})"))),
    }
}

/// `file:` URI of a path, for opening with URI parameters.
fn file_uri(path: &Path, params: &str) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        // SQLite decodes %XX in the path; ASCII other than its delimiters goes as it is.
        if b.is_ascii() && !matches!(b, b'?' | b'#' | b'%') {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{uri}?{params}")
}

/// Whether a non-empty `-wal` file is beside `path` (commits not yet in the file itself).
fn has_wal(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0)
}

/// Whether an unmarked SQLite file is a version 1 ferromem store: exactly its tables, and
/// meta's schema_version '1'. Read with `immutable=1`, which takes no lock and creates no
/// `-wal` or `-shm` file beside someone else's database.
fn is_version_1(path: &Path) -> Result<bool> {
    let look = |params: &str| -> Result<(Vec<String>, Option<String>)> {
        let conn = Connection::open_with_flags(
            file_uri(path, params),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
        let tables = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        let version = if tables.iter().any(|t| t == "meta") {
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional()?
        } else {
            None
        };
        Ok((tables, version))
    };
    let (mut tables, mut version) = look("immutable=1")?;
    if tables.is_empty() && has_wal(path) {
        // A version 1 store whose tables are still only in its WAL.
        (tables, version) = look("mode=ro")?;
    }
    Ok(tables == ["meta", "records", "tombstones"] && version.as_deref() == Some("1"))
}

/// Makes a new, empty store at `path`: built whole in a temporary file beside it, then
/// linked into place, so no process ever sees a half-made store at the path. Returns
/// without error when another process created the store first.
fn create(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::InvalidInput(format!("{} names no file", path.display())))?;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{}.new-{}-{nonce:08x}", name.to_string_lossy(), std::process::id()));
    let made = (|| -> Result<()> {
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // 32 KiB pages: a 1536-dim float32 vector (6 KiB) plus its text packs five to a page
        // instead of spilling into overflow pages, so disk per record is ~1.07x its bytes
        // (4 KiB pages: 1.34x). Only takes effect before the file's first write.
        conn.execute_batch("PRAGMA page_size=32768")?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Storage(format!("could not switch {} to WAL mode (got {mode})", tmp.display())));
        }
        conn.execute_batch(&format!(
            "BEGIN; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; {TABLES} COMMIT;"
        ))?;
        conn.close().map_err(|(_, e)| Error::from(e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::Storage(format!("cannot sync {}: {e}", tmp.display())))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {} // another process won
            Err(_) if !path.exists() => {
                // A file system without hard links: rename, which could replace a store made
                // by another process in the instant between the check and the rename.
                std::fs::rename(&tmp, path).map_err(|e| Error::Storage(format!("cannot create {}: {e}", path.display())))?;
            }
            Err(_) => {}
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all(); // the new name survives power loss
        }
        Ok(())
    })();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = tmp.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    made.map_err(|e| match e {
        Error::Storage(m) => Error::Storage(format!("cannot create a store at {}: {m}", path.display())),
        other => other,
    })
}

impl SqliteStorage {
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStorage> {
        SqliteStorage::open_as(path, durability, Access::ReadWrite)
    }

    /// Opens the store at `path` (creating it when nothing is there and `access` allows),
    /// after identifying the file as a store (see the module's documentation).
    pub fn open_as(path: &Path, durability: Durability, access: Access) -> Result<SqliteStorage> {
        let mut found = inspect(path)?;
        if matches!(found, Found::Missing) {
            if access == Access::ReadOnly {
                return Err(Error::NotAStore(format!("{} does not exist: there is no store to open read-only", path.display())));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::Storage(format!("cannot create directory {}: {e}", parent.display())))?;
            }
            create(path)?;
            found = inspect(path)?;
        }
        let version_1 = match found {
            Found::Missing => return Err(Error::Storage(format!("{} vanished while it was being opened", path.display()))),
            Found::Store(v) if v > SCHEMA_VERSION => {
                return Err(Error::Incompatible(format!(
                    "{} has ferromem schema version {v}; this ferromem reads up to version {SCHEMA_VERSION}: upgrade ferromem (the store is left as it is)",
                    path.display()
                )))
            }
            Found::Store(v) if v == SCHEMA_VERSION => false,
            Found::Store(v) => return Err(Error::Corrupt(format!("{} says it has ferromem schema version {v}, which never existed", path.display()))),
            Found::Unmarked if is_version_1(path)? => true,
            Found::Unmarked => return Err(not_a_store(path, "is a SQLite database of another application (its tables are not a store's)")),
        };
        let flags = match access {
            Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        };
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_handler(Some(busy_wait))?;
        let mode: String = retry_busy(|| conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Corrupt(format!("{} is not in WAL mode (got {mode}), as every store is", path.display())));
        }
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF; \
             PRAGMA wal_autocheckpoint=256; PRAGMA journal_size_limit=8388608;"
        ))?;
        let mut s = SqliteStorage { conn, path: path.to_path_buf(), data_version: 0, in_write: false, access, checksums: true };
        if version_1 {
            match access {
                Access::ReadWrite => s.upgrade_from_1()?,
                Access::ReadOnly => s.checksums = s.application_id()? == APPLICATION_ID,
            }
        }
        s.check_schema()?;
        s.data_version = s.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(s)
    }

    fn application_id(&self) -> Result<i32> {
        Ok(self.conn.query_row("PRAGMA application_id", [], |r| r.get(0))?)
    }

    /// Upgrades a version 1 store to version 2, under the write lock (another process may
    /// be doing the same: the second finds it done): adds the checksum columns, sums every
    /// row as it is, and marks the file. One transaction; a crash leaves version 1.
    fn upgrade_from_1(&mut self) -> Result<()> {
        retry_busy(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        let r = (|| -> Result<()> {
            if self.application_id()? == APPLICATION_ID {
                return Ok(());
            }
            self.conn.execute_batch(
                "ALTER TABLE records ADD COLUMN fields_crc INTEGER NOT NULL DEFAULT 0; \
                 ALTER TABLE records ADD COLUMN vector_crc INTEGER NOT NULL DEFAULT 0;",
            )?;
            let mut sums = Vec::new();
            {
                let mut stmt = self.conn.prepare(&format!("SELECT {RECORD_COLUMNS}, rowid FROM records"))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let rowid: i64 = row.get(14)?;
                    // Rows are summed as they are: version 1 kept no sums to check them by.
                    // A row no store could have written stays unsummed and reads as damaged.
                    if let Some((raw, blob)) = raw_row(row)? {
                        sums.push((rowid, raw.crc(), vector_crc(blob)));
                    }
                }
            }
            let mut set = self.conn.prepare("UPDATE records SET fields_crc = ?2, vector_crc = ?3 WHERE rowid = ?1")?;
            for (rowid, fields, vector) in sums {
                set.execute(params![rowid, fields as i64, vector as i64])?;
            }
            self.conn.execute_batch(&format!(
                "UPDATE meta SET value = '2' WHERE key = 'schema_version'; \
                 PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))?;
            Ok(())
        })();
        match r {
            Ok(()) => retry_busy(|| self.conn.execute_batch("COMMIT")),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn check_schema(&self) -> Result<()> {
        // The header again, through the connection: a change still in the WAL is seen here.
        let user_version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if user_version > SCHEMA_VERSION as i64 {
            return Err(Error::Incompatible(format!(
                "{} has ferromem schema version {user_version}; this ferromem reads up to version {SCHEMA_VERSION}: upgrade ferromem (the store is left as it is)",
                self.path.display()
            )));
        }
        let version: Option<String> =
            self.conn.query_row("SELECT value FROM meta WHERE key='schema_version'", [], |r| r.get(0)).optional()?;
        let expected = if self.checksums { "2" } else { "1" };
        match version.as_deref() {
            Some(v) if v == expected => Ok(()),
            other => Err(Error::Corrupt(format!(
                "{}: its header says ferromem schema {expected} but its meta table says {other:?}",
                self.path.display()
            ))),
        }
    }

    fn columns(&self) -> &'static str {
        if self.checksums {
            RECORD_COLUMNS
        } else {
            RECORD_COLUMNS_V1
        }
    }

    fn writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => {
                Err(Error::ReadOnly(format!("{} was opened read-only: open it without read_only=True to change it", self.path.display())))
            }
        }
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

    fn records_where(&self, sql_tail: &str, seq: u64) -> Result<(Vec<StoredRecord>, Vec<Damage>)> {
        let mut out = Vec::new();
        let damaged = self.each_record(sql_tail, seq, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok((out, damaged))
    }

    /// Streams the rows selected by `sql_tail` (bound to `seq`) that pass their checksums
    /// to `sink`, and returns the ones that do not.
    fn each_record(&self, sql_tail: &str, seq: u64, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Vec<Damage>> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {} FROM records {sql_tail}", self.columns()))?;
        let mut rows = stmt.query(params![seq as i64])?;
        let mut damaged = Vec::new();
        while let Some(row) = rows.next()? {
            match read_row(row, self.checksums)? {
                RowRead::Good(r) => sink(r)?,
                RowRead::Damaged(d) => damaged.push(d),
            }
        }
        Ok(damaged)
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
        let (records, damaged) = self.records_where("WHERE seq >= ?1", 0)?;
        Ok(Snapshot { epoch, seq, dim, records, damaged })
    }

    /// Everything `ferromem check` verifies of the file, read-only: SQLite's own
    /// structure (`PRAGMA integrity_check`), the meta table, and every record's checksums.
    /// Returns one line per problem found; empty when the store is whole.
    pub fn verify(&mut self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        {
            let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
            let lines = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            problems.extend(lines.into_iter().filter(|l| l != "ok").map(|l| format!("SQLite: {l}")));
        }
        if !self.checksums {
            problems
                .push("the store has schema version 1, whose records carry no checksums: open it once for writing to upgrade it".into());
        }
        let dim = match self.meta() {
            Ok((_, _, dim)) => dim,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let damaged = self.in_read(|s| {
            s.each_record("WHERE seq >= ?1", 0, &mut |r| {
                if let Some(d) = dim.filter(|&d| d != r.vector.len()) {
                    problems.push(format!(
                        "record {:?}: its vector has {} values but the store's dimension is {d}",
                        &*r.rec.id,
                        r.vector.len()
                    ));
                }
                Ok(())
            })
        });
        match damaged {
            Ok(damaged) => problems.extend(damaged.iter().map(Damage::describe)),
            Err(e) => problems.push(format!("the records cannot be read: {e}")),
        }
        Ok(problems)
    }
}

impl Storage for SqliteStorage {
    fn load_each(&mut self, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Loaded> {
        self.in_read(|s| {
            let (epoch, seq, dim) = s.meta()?;
            let damaged = s.each_record("WHERE seq >= ?1", 0, sink)?;
            Ok(Loaded { epoch, seq, dim, damaged })
        })
    }

    fn maybe_changed(&mut self, _epoch: u64, _seq: u64) -> Result<bool> {
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
            let (upserts, damaged) = s.records_where("WHERE seq > ?1", seq)?;
            let mut stmt = s.conn.prepare_cached("SELECT id, seq FROM tombstones WHERE seq > ?1")?;
            let deletes = stmt
                .query_map(params![seq as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Changes::Delta { epoch: db_epoch, seq: db_seq, dim, upserts, deletes, damaged })
        })
    }

    fn begin_write(&mut self) -> Result<()> {
        self.writable()?;
        retry_busy(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        self.in_write = true;
        Ok(())
    }

    fn write(&mut self, ops: &[WriteOp<'_>], seq: u64, dim: Option<usize>) -> Result<()> {
        let seq_i = seq as i64;
        {
            let mut put = self.conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO records({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?;
            let mut put_fields = self.conn.prepare_cached(
                "UPDATE records SET content = ?2, scope = ?3, categories = ?4, metadata = ?5, importance = ?6, \
                 created_at = ?7, last_accessed = ?8, source = ?9, private = ?10, seq = ?11, fields_crc = ?12 WHERE id = ?1",
            )?;
            let mut untomb = self.conn.prepare_cached("DELETE FROM tombstones WHERE id = ?1")?;
            let mut del = self.conn.prepare_cached("DELETE FROM records WHERE id = ?1")?;
            let mut tomb = self.conn.prepare_cached("INSERT OR REPLACE INTO tombstones(id, seq) VALUES (?1, ?2)")?;
            for op in ops {
                match op {
                    WriteOp::Put { rec, vector } => {
                        let categories =
                            serde_json::to_string(&rec.categories).map_err(|e| Error::InvalidInput(format!("categories: {e}")))?;
                        let (id, private): (&str, i64) = (&rec.id, rec.private as i64);
                        let fields_sum = RawFields::of(rec, &categories).crc() as i64;
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
                            let n = put_fields.execute(params_from_iter(fields.into_iter().chain([&seq_i as &dyn ToSql, &fields_sum])))?;
                            if n != 1 {
                                return Err(Error::Storage(format!("record {:?} vanished inside its write transaction", &*rec.id)));
                            }
                        } else {
                            let blob = vector_to_blob(vector);
                            let vector_sum = vector_crc(&blob) as i64;
                            put.execute(params_from_iter(fields.into_iter().chain([
                                &blob as &dyn ToSql,
                                &seq_i,
                                &fields_sum,
                                &vector_sum,
                            ])))?;
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

    fn as_vectors_at(&mut self) -> Option<&mut dyn VectorsAt> {
        Some(self)
    }

    fn as_images(&mut self) -> Option<&mut dyn Images> {
        Some(self)
    }

    fn as_local_file(&self) -> Option<&dyn LocalFile> {
        Some(self)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "backend": "sqlite", "location": self.path.display().to_string() })
    }
}

impl VectorsAt for SqliteStorage {
    fn vectors_at(&mut self, epoch: u64, seq: u64, ids: &[Arc<str>]) -> Result<Option<Vec<Option<Vec<f32>>>>> {
        self.in_read(|s| {
            let (db_epoch, db_seq, _) = s.meta()?;
            if db_epoch != epoch || db_seq < seq {
                return Ok(None);
            }
            // Each row carries the sequence of the write that last changed it. A row no
            // newer than `seq` holds what it held at `seq`, so the store may have moved on
            // in between (other rows written) and the read is still the one at `seq`.
            let sum_column = if s.checksums { "vector_crc" } else { "NULL" };
            let mut stmt = s.conn.prepare_cached(&format!("SELECT vector, seq, {sum_column} FROM records WHERE id = ?1"))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row: Option<(Vec<u8>, i64, Option<i64>)> =
                    stmt.query_row(params![&**id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
                match row {
                    Some((_, row_seq, _)) if row_seq as u64 > seq => return Ok(None), // rewritten since
                    Some((blob, _, sum)) => {
                        // Verified on every read: the replica of an f16 or int8 store holds
                        // no exact vectors, so this read is where they enter memory.
                        if s.checksums && sum != Some(vector_crc(&blob) as i64) {
                            return Err(Error::Corrupt(format!(
                                "record {:?} is damaged on disk: its vector fails its checksum. Save the record again or delete it; `ferromem check` lists all damage",
                                &**id
                            )));
                        }
                        out.push(Some(blob_to_vector(&blob)?))
                    }
                    None if db_seq > seq => return Ok(None), // possibly deleted since
                    None => out.push(None),
                }
            }
            Ok(Some(out))
        })
    }
}

impl Images for SqliteStorage {
    fn image_position(&mut self) -> Result<ImagePosition> {
        self.in_read(|s| {
            let (epoch, seq, dim) = s.meta()?;
            let token = s.conn.query_row("SELECT value FROM meta WHERE key = 'image'", [], |r| r.get(0)).optional()?;
            Ok(ImagePosition { epoch, seq, dim, token })
        })
    }

    fn set_image_token(&mut self, token: &str) -> Result<()> {
        if self.access == Access::ReadOnly {
            return Ok(()); // a read-only open writes no image, so it names none
        }
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
}

impl LocalFile for SqliteStorage {
    fn path(&self) -> &Path {
        &self.path
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
