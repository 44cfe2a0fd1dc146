//! The durable layer behind the in-memory replica, as a trait: the engine (search, filters,
//! locking) never sees SQL. SQLite is the embedded default; a PostgreSQL backend shared by
//! many hosts implements the same operations. A store is opened from its [`Location`] (a
//! URL or a path) by one factory, [`open`].
//!
//! Every record carries checksums ([`checksum`]) verified when it is read into memory; a
//! record that fails them is reported as a [`Damage`], never served.
//!
//! Every write is stamped with a store-wide change sequence, and a reset bumps an epoch,
//! so any replica can catch up from "what changed since (epoch, seq)".

pub mod checksum;
mod location;
pub mod memory;
pub mod postgres;
pub mod sqlite;

pub use location::{open, Access, Location, StorageOptions};

use crate::record::Record;
use crate::Result;
use checksum::RawFields;
use std::path::Path;
use std::sync::Arc;

/// A record as stored, with its vector and the sequence number of its last change.
pub struct StoredRecord {
    pub rec: Record,
    pub vector: Vec<f32>,
    pub seq: u64,
}

/// Verifies one stored row against its checksums (`sums`: the stored (fields, vector)
/// sums; None for rows that carry none) and decodes it; or names what is damaged
/// ("fields", "vector" or "unreadable"). Every backend reads its rows through this.
pub(crate) fn decode_row(
    raw: RawFields<'_>,
    blob: &[u8],
    sums: Option<(i64, i64)>,
    seq: u64,
) -> std::result::Result<StoredRecord, &'static str> {
    if let Some((fields_sum, vector_sum)) = sums {
        if raw.crc() as i64 != fields_sum {
            return Err("fields");
        }
        if checksum::vector_crc(blob) as i64 != vector_sum {
            return Err("vector");
        }
    }
    let utf8 = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).ok();
    let (Some(id), Some(content), Some(scope), Some(metadata_json)) =
        (utf8(raw.id), utf8(raw.content), utf8(raw.scope), utf8(raw.metadata_json))
    else {
        return Err("unreadable");
    };
    let source = match raw.source.map(utf8) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => return Err("unreadable"),
    };
    let Ok(categories) = serde_json::from_slice::<Vec<String>>(raw.categories_json) else { return Err("unreadable") };
    let Some(vector) = sqlite::blob_to_vector(blob).ok().filter(|v| !v.is_empty()) else { return Err("unreadable") };
    let rec = Record {
        id: Arc::from(id),
        content,
        scope,
        categories,
        metadata_json,
        importance: raw.importance,
        created_at: raw.created_at,
        last_accessed: raw.last_accessed,
        source,
        private: raw.private,
    };
    Ok(StoredRecord { rec, vector, seq })
}

/// A stored record that failed its checksums (or could not be decoded): it is kept out of
/// the replica and reported (quarantined) until it is saved again or deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Damage {
    /// The id as stored (decoded lossily when the id itself is damaged).
    pub id: String,
    /// The sequence of the write that last changed the row, as stored.
    pub seq: u64,
    /// What failed: "vector", "fields" or "unreadable".
    pub what: &'static str,
}

impl Damage {
    pub fn describe(&self) -> String {
        match self.what {
            "vector" => format!("record {:?}: its vector fails its checksum", self.id),
            "fields" => format!("record {:?}: its fields fail their checksum", self.id),
            _ => format!("record {:?}: its stored values cannot be decoded", self.id),
        }
    }
}

/// Where a full read ended: the store's position, and the records it could not serve.
pub struct Loaded {
    pub epoch: u64,
    pub seq: u64,
    pub dim: Option<usize>,
    pub damaged: Vec<Damage>,
}

/// Everything a store holds, at one (epoch, seq).
pub struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    pub dim: Option<usize>,
    pub records: Vec<StoredRecord>,
    pub damaged: Vec<Damage>,
}

/// What changed after a given (epoch, seq).
pub enum Changes {
    /// Nothing committed since.
    None,
    /// Rows changed (upserted) and ids deleted after `since`, up to `seq`.
    /// `damaged`: rows changed after `since` that fail their checksums.
    Delta { epoch: u64, seq: u64, dim: Option<usize>, upserts: Vec<StoredRecord>, deletes: Vec<(String, u64)>, damaged: Vec<Damage> },
    /// The store was reset (or the changes are too old to replay): start again from this.
    Reload(Snapshot),
}

/// One change inside a write transaction.
pub enum WriteOp<'a> {
    /// Inserts or replaces a record. An empty `vector` keeps the stored one (the record
    /// exists: an update of other fields, or a touch), so no vector is rewritten.
    Put {
        rec: &'a Record,
        vector: &'a [f32],
    },
    Delete {
        id: &'a str,
    },
}

/// Durability of a commit; see docs/architecture.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the process; the last commits may be lost on power loss.
    Normal,
    /// Survives power loss too: one fsync per commit.
    Full,
}

impl Durability {
    pub fn from_name(s: &str) -> Option<Durability> {
        match s {
            "normal" => Some(Durability::Normal),
            "full" => Some(Durability::Full),
            _ => None,
        }
    }
}

/// What every durable backend does: read everything, say what changed since a position,
/// and apply writes inside an exclusive transaction. The engine holds two of them on one
/// store (one for writes, one for catching up and point reads), so a catch-up never waits
/// behind a write.
///
/// Optional capabilities are traits of their own, queried at run time through the `as_*`
/// accessors (None by default): [`VectorsAt`] (exact vectors read back at a position,
/// which f16 and int8 precision need), [`Images`] (the token of a store image) and
/// [`LocalFile`] (a store in a file of this machine, beside which the engine keeps its
/// caches). A backend implements only the ones it can honour.
pub trait Storage: Send {
    /// Reads everything, consistently.
    fn load(&mut self) -> Result<Snapshot> {
        let mut records = Vec::new();
        let Loaded { epoch, seq, dim, damaged } = self.load_each(&mut |r| {
            records.push(r);
            Ok(())
        })?;
        Ok(Snapshot { epoch, seq, dim, records, damaged })
    }
    /// Streams every record that passes its checksums to `sink`, consistently, and returns
    /// the position and the damaged records: opening a large store never holds its vectors
    /// twice.
    fn load_each(&mut self, sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Loaded>;
    /// Cheap check: may another connection have committed since the last call? The
    /// replica stands at (`epoch`, `seq`); a backend that learns positions from elsewhere
    /// (PostgreSQL's notifications) compares them with it.
    fn maybe_changed(&mut self, epoch: u64, seq: u64) -> Result<bool>;
    /// Reads what changed after (epoch, seq), consistently. Inside a write transaction it
    /// sees the latest committed state.
    fn changes_since(&mut self, epoch: u64, seq: u64) -> Result<Changes>;
    /// Starts an exclusive write transaction (waits for other writers, never fails on a lock).
    /// A store opened read-only answers with [`crate::Error::ReadOnly`].
    fn begin_write(&mut self) -> Result<()>;
    /// Applies ops stamped with `seq` and sets the dimension, inside the write transaction.
    fn write(&mut self, ops: &[WriteOp<'_>], seq: u64, dim: Option<usize>) -> Result<()>;
    /// Deletes everything, inside the write transaction, and moves to a new epoch.
    fn reset(&mut self, epoch: u64, seq: u64) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self);

    /// The exact vectors at a position, when this backend keeps them readable.
    fn as_vectors_at(&mut self) -> Option<&mut dyn VectorsAt> {
        None
    }
    /// The store image's token, when this backend can record one.
    fn as_images(&mut self) -> Option<&mut dyn Images> {
        None
    }
    /// The store's file, when it is one file of this machine.
    fn as_local_file(&self) -> Option<&dyn LocalFile> {
        None
    }
    /// What `stats()["storage"]` reports: the backend's name and state (a JSON object).
    /// Never a credential.
    fn status(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// A backend that reads exact vectors back by id at a position: int8 re-ranking and
/// `get`/`list` under f16 and int8 precision, whose replica holds no exact vectors.
pub trait VectorsAt {
    /// The vectors `ids` had at position (epoch, seq) (None for an id not stored then),
    /// read consistently; or None when that is no longer known: another epoch, or one of
    /// the rows written or deleted after `seq` (the caller catches up and asks again).
    /// Writes after `seq` to other rows do not matter.
    fn vectors_at(&mut self, epoch: u64, seq: u64, ids: &[Arc<str>]) -> Result<Option<Vec<Option<Vec<f32>>>>>;
}

/// Where a store stands, with the token of its image (see [`crate::image`]), read together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePosition {
    pub epoch: u64,
    pub seq: u64,
    pub dim: Option<usize>,
    /// None when the store names no image.
    pub token: Option<String>,
}

/// A backend that records which store image (see [`crate::image`]) matches it.
pub trait Images {
    /// The store's position and the token of its image, read consistently.
    fn image_position(&mut self) -> Result<ImagePosition>;
    /// Records `token` as the store's current image, in a transaction of its own.
    fn set_image_token(&mut self, token: &str) -> Result<()>;
}

/// A store kept in one file of this machine: the engine keeps its caches (the graph, the
/// image, the disk-full reserve) beside it.
pub trait LocalFile {
    fn path(&self) -> &Path;
    /// Bytes the store occupies on disk, with the files beside it.
    fn disk_bytes(&self) -> u64;
}
