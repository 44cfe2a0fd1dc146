//! Typed errors of the engine. The Python binding maps each variant to one class of
//! `ferromem/exceptions.py`, so the kinds here mirror that hierarchy.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidVector(String),
    #[error("vector has {got} dimensions but the store holds {expected}-dimensional vectors")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("{0}")]
    InvalidMetadata(String),
    #[error("{0}")]
    InvalidFilter(String),
    #[error("id {0:?} already exists; use upsert to replace it")]
    DuplicateId(String),
    #[error("the store is closed; open it again to use it")]
    Closed,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("damaged store: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Incompatible(String),
    /// The file at the path is not a ferromem store (another application's, empty, or not
    /// SQLite at all); nothing was written to it.
    #[error("{0}")]
    NotAStore(String),
    /// A write to a store opened read-only.
    #[error("{0}")]
    ReadOnly(String),
    /// A store location this build cannot open (an unknown scheme, or a backend it lacks).
    #[error("{0}")]
    Unsupported(String),
    /// A search that must run on a device (policy "gpu") cannot: none is attached, or it
    /// cannot hold the store, or it failed. Nothing was searched.
    #[error("{0}")]
    Device(String),
    /// The database server cannot be reached (past the reconnect timeout), or a write's
    /// connection was lost before its commit. Nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// No pooled connection became free within the pool's timeout. Nothing was written.
    #[error("{0}")]
    PoolExhausted(String),
    /// Internal: a write transaction was lost before it committed (its connection broke);
    /// the engine runs the write again from the start. Never reaches a caller: after too
    /// many tries it becomes [`Error::Unavailable`].
    #[error("{0}")]
    Retry(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Error::Corrupt(e.to_string())
            }
            _ => Error::Storage(e.to_string()),
        }
    }
}
