//! ferromem engine core. No Python here: the PyO3 crate `ferromem-py` wraps it.
//!
//! * [`engine::Engine`]: one open store: the in-memory replica plus the durable layer.
//! * [`state`]: vector arena, records, id map; exact filtered top-k search.
//! * [`index`]: filter indexes (scope prefix, categories, metadata equality, source, privacy).
//! * [`simd`]: dot-product kernels with run-time ISA dispatch.
//! * [`storage`]: the durable layer as a trait; SQLite (embedded) and in-memory.
//! * [`metrics`]: per-operation latency histograms.
//! * [`cache`]: results of repeated searches, invalidated exactly by the changes that matter.
//! * [`image`]: the store image written at close, which the next open maps.

pub mod arena;
pub mod cache;
pub mod coalesce;
mod cursor;
pub mod engine;
pub mod error;
pub mod filter;
pub mod fork;
pub mod hnsw;
pub mod image;
pub mod index;
pub mod interrupt;
pub mod metrics;
pub mod record;
pub mod simd;
pub mod state;
pub mod storage;
pub mod topk;

pub use engine::{Engine, OpenOptions, Patch, ScopeInfo, WriteMode};
pub use error::{Error, Result};
pub use filter::{Filter, Privacy, Scalar};
pub use record::Record;
pub use storage::Durability;
