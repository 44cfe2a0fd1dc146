//! ferromem engine core. No Python here: the PyO3 crate `ferromem-py` wraps it.
//!
//! * [`engine::Engine`]: one open store: the in-memory replica plus the durable layer.
//! * [`state`]: records, id map, filter indexes; search planning; the graph's lifecycle.
//! * [`vectors`]: the vector rows of each stored precision (f32, f16, int8).
//! * [`scorer`]: the [`scorer::Scorer`] that runs a search plan over the rows (the CPU scan).
//! * [`device`]: exact search on another device: its candidates, proved on the host.
//! * [`planner`]: which path serves a search, from a cost model measured on this machine.
//! * [`ann`]: the approximate index behind [`ann::AnnIndex`] (HNSW, [`hnsw`]).
//! * [`index`]: filter indexes (scope prefix, categories, metadata equality, source, privacy).
//! * [`simd`]: dot-product kernels with run-time ISA dispatch.
//! * [`storage`]: the durable layer as a trait; SQLite (embedded) and in-memory.
//! * [`metrics`]: per-operation latency histograms.
//! * [`guard`]: the recall guard: whether the graph may serve, from audits of live queries.
//! * [`cache`]: results of repeated searches, invalidated exactly by the changes that matter.
//! * [`image`]: the store image written at close, which the next open maps.
//! * [`runtime`]: the process's Tokio runtime (PostgreSQL I/O, the async API).

pub mod ann;
pub mod arena;
pub mod cache;
pub mod coalesce;
mod cursor;
pub mod device;
pub mod engine;
pub mod error;
pub mod filter;
pub mod fork;
pub mod guard;
pub mod hnsw;
pub mod image;
pub mod index;
pub mod interrupt;
pub mod metrics;
pub mod planner;
pub mod record;
pub mod runtime;
pub mod scorer;
pub mod simd;
pub mod state;
pub mod storage;
pub mod topk;
pub mod vectors;

pub use engine::{Engine, OpenOptions, Patch, ScopeInfo, WriteMode};
pub use error::{Error, Result};
pub use filter::{Filter, Privacy, Scalar};
pub use record::Record;
pub use scorer::{CpuScorer, Plan, RowChanges, RowsView, Scorer};
pub use storage::Durability;
pub use vectors::Precision;
