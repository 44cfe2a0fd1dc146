//! The approximate-nearest-neighbour index behind one interface ([`AnnIndex`]), so that
//! the state's graph lifecycle (build off the write path, publish, save, load) works with
//! any index. [`Hnsw`] is the one there is; another index implements the trait and is
//! chosen in [`new_index`] and [`load_index`].
//!
//! An index holds no vectors: it measures distances on the rows the state keeps for its
//! scans ([`GraphRows`]), and it remembers the slot version it linked, so the state can
//! tell a current node from a stale one ([`Current`]).

use crate::hnsw::{Current, GraphQuery, GraphRows, GraphUnfit, Hnsw, HnswParams, SavedAt};
use rayon::prelude::*;

pub trait AnnIndex: Send + Sync {
    /// The index's name ("hnsw").
    fn kind(&self) -> &'static str;
    fn dim(&self) -> usize;
    /// The parameters it was built with (the state rebuilds when they change).
    fn params(&self) -> HnswParams;
    /// Slots linked (current or stale).
    fn nodes(&self) -> usize;
    fn memory_bytes(&self) -> usize;
    /// The version `slot` was linked at, None when it has no node.
    fn version(&self, slot: u32) -> Option<u32>;

    /// Up to `ef` slots that `accept` admits, near the prepared unit query `q`, with their
    /// approximate similarity, best first.
    fn search(&self, q: &GraphQuery, ef: usize, rows: &GraphRows<'_>, accept: &dyn Fn(u32) -> bool) -> Vec<(f32, u32)>;

    /// Links `batch` (slot, version): one by one, or, when `parallel`, the neighbour
    /// searches on every core and the linking after.
    fn link(&mut self, batch: &[(u32, u32)], parallel: bool, rows: &GraphRows<'_>, current: &Current<'_>, scratch: &mut GraphQuery);

    /// The index as a file's bytes, stamped with the store position `at`.
    fn to_bytes<'a>(&self, at: SavedAt, current: &Current<'_>, id_of: &dyn Fn(u32) -> &'a str) -> Vec<u8>;

    /// A copy to extend while searches keep using the original.
    fn clone_box(&self) -> Box<dyn AnnIndex>;

    /// Whether `slot` has a node linked at its current version (see [`Current`]).
    fn is_current(&self, slot: u32, current: &Current<'_>) -> bool {
        self.version(slot).is_some_and(|v| current(slot) == Some(v))
    }
}

/// A new, empty index of `dim` dimensions.
pub fn new_index(dim: usize, params: HnswParams) -> Box<dyn AnnIndex> {
    Box::new(Hnsw::new(dim, params))
}

/// An index read from a file written by [`AnnIndex::to_bytes`] at exactly `at`; `slot_of`
/// maps a saved id to its slot and current version.
pub fn load_index(
    bytes: &[u8],
    at: SavedAt,
    dim: usize,
    params: HnswParams,
    slot_of: impl Fn(&str) -> Option<(u32, u32)>,
) -> Result<Box<dyn AnnIndex>, GraphUnfit> {
    Ok(Box::new(Hnsw::from_bytes(bytes, at, dim, params, slot_of)?))
}

impl AnnIndex for Hnsw {
    fn kind(&self) -> &'static str {
        "hnsw"
    }
    fn dim(&self) -> usize {
        Hnsw::dim(self)
    }
    fn params(&self) -> HnswParams {
        Hnsw::params(self)
    }
    fn nodes(&self) -> usize {
        Hnsw::nodes(self)
    }
    fn memory_bytes(&self) -> usize {
        Hnsw::memory_bytes(self)
    }
    fn version(&self, slot: u32) -> Option<u32> {
        Hnsw::version(self, slot)
    }
    fn search(&self, q: &GraphQuery, ef: usize, rows: &GraphRows<'_>, accept: &dyn Fn(u32) -> bool) -> Vec<(f32, u32)> {
        Hnsw::search(self, q, ef, rows, accept)
    }
    fn is_current(&self, slot: u32, current: &Current<'_>) -> bool {
        Hnsw::is_current(self, slot, current)
    }
    fn link(&mut self, batch: &[(u32, u32)], parallel: bool, rows: &GraphRows<'_>, current: &Current<'_>, scratch: &mut GraphQuery) {
        if !parallel {
            for &(slot, v) in batch {
                self.insert(slot, v, rows, current, scratch);
            }
            return;
        }
        // The neighbour searches (nearly all the work) in parallel, the linking after.
        let graph = &*self;
        let plans: Vec<_> =
            batch.par_iter().map_init(GraphQuery::default, |sc, &(slot, v)| graph.plan_insert(slot, v, rows, current, sc)).collect();
        for plan in plans {
            self.apply_insert(plan, rows, current, scratch);
        }
    }
    fn to_bytes<'a>(&self, at: SavedAt, current: &Current<'_>, id_of: &dyn Fn(u32) -> &'a str) -> Vec<u8> {
        Hnsw::to_bytes(self, at, current, id_of)
    }
    fn clone_box(&self) -> Box<dyn AnnIndex> {
        Box::new(self.clone())
    }
}
