//! The vector rows of a store, one layout per stored precision behind one interface
//! ([`PrecisionRows`]): putting a row, the scans the CPU scorer runs over them (one query
//! or a batch, every row or a candidate list), the exact re-score, the rows the graph
//! measures, the buffers another device's scorer reads, and the rows' sections of a store
//! image each live in the precision's own file.
//!
//! Adding a precision: a new file here with a type implementing [`PrecisionRows`], and one
//! line in the [`precisions!`] table below (its variant, its name, its type).

mod f16_rows;
mod f32_rows;
mod int8_rows;

pub use f16_rows::F16Rows;
pub use f32_rows::F32Rows;
pub use int8_rows::Int8Rows;

use crate::arena::{Arena, ZeroBits, CHUNK_ROWS};
use crate::hnsw::{GraphQuery, GraphRows};
use crate::image::ImageSections;
use crate::scorer::{Plan, RowsView};

/// Scores of the queries of a plan, per query: (score, slot), at most k, unordered.
pub type SlotHits = Vec<Vec<(f32, u32)>>;

/// One precision's rows: a row per slot (free slots keep whatever row they last held; the
/// state's 1/|v| of 0 marks them). Rows are written by the state under its write lock and
/// read by searches under its read lock.
pub trait PrecisionRows: Send + Sync {
    /// Empty rows of `dim` values.
    fn new(dim: usize) -> Self
    where
        Self: Sized;

    fn precision(&self) -> Precision;

    /// Rows held (live or free).
    fn rows(&self) -> usize;

    /// Appends a zeroed row (a new slot).
    fn push_row(&mut self);

    /// Writes the row of `slot` for `vector` (1/|vector| = `inv`). Returns whether the slot
    /// held exactly that row already (as searches see it: the f32 vector bit for bit, or,
    /// where only a derived row is kept, that row), so the caller knows whether searches
    /// can change.
    fn put(&mut self, slot: usize, vector: &[f32], inv: f32) -> bool;

    /// The exact vector of `slot` when this precision keeps it in memory; None when it
    /// lives in the durable layer only (the engine reads it from there).
    fn exact_vector(&self, slot: usize) -> Option<&[f32]>;

    /// Writes the unit row of `slot` (1/|v| = `inv`) as f32 into `out`, as a device mirror
    /// takes it: false when this precision's rows are not unit vectors one can rebuild
    /// (int8 keeps quantised codes only, so a device does not mirror it).
    fn unit_row(&self, slot: usize, inv: f32, out: &mut [f32]) -> bool;

    /// How far this precision's scores may lie from the cosine of the rows it keeps (0 for
    /// exact rows; the f16 rows' rounding for f16): a device's proof adds it to the
    /// device's own bound.
    fn score_slack(&self, _dim: usize) -> f32 {
        0.0
    }

    /// Bytes of the rows in use (including what a precision keeps per row beside them).
    fn memory_bytes(&self) -> usize;

    /// The rows the graph measures distances on.
    fn graph_rows(&self) -> GraphRows<'_>;

    /// The rows as buffers, without a copy (see [`RowBuffer`]).
    fn buffers(&self) -> Vec<RowBuffer<'_>>;

    /// The CPU search of a plan (the scan, and for exact precisions the proof that makes a
    /// cheaper first pass exact): per query the best `plan.k` of the candidates, with the
    /// scores this precision defines (see [`Precision`]), `plan.min_score` applied.
    fn cpu_search(&self, plan: &Plan<'_>, view: &RowsView<'_>) -> SlotHits;

    /// The score the CPU search gives `slot` (whose 1/|v| is `inv`) for the unit query
    /// `query` (1/|query| = `q_inv`; `prepared`: the same query as the graph takes it),
    /// computed as the scans compute it: the graph re-scores its finds with it.
    fn graph_rescore(&self, query: &[f32], q_inv: f32, prepared: &GraphQuery, slot: u32, inv: f32) -> f32;

    /// The rows of a store image (see [`crate::image`]): how they are laid out, and the
    /// bytes of one slot's row in each section.
    fn image_layout(&self) -> &'static ImageLayout {
        self.precision().image_layout()
    }
    fn image_aux_row(&self, slot: usize) -> &[u8];
    fn image_search_row(&self, slot: usize) -> &[u8];
}

/// A precision's sections of a store image (see [`crate::image`] for the file's layout):
/// the aux section beside the norms and the search rows. The image code reads and writes
/// them from this description, so a precision's place in the format is said once, here.
#[derive(Debug)]
pub struct ImageLayout {
    /// The precision's code in the image header.
    pub code: u32,
    pub aux: AuxSection,
    /// Bytes per value of the search rows (one row of `dim` values per record).
    pub search_value_bytes: usize,
    /// The sections' names in damage reports.
    pub aux_name: &'static str,
    pub search_name: &'static str,
}

/// What a precision keeps in an image's aux section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuxSection {
    /// Nothing (offset 0).
    None,
    /// One f32 per row (right after the norms, one checksum).
    PerRow,
    /// A row of `dim` f32 values per record (page-aligned, a checksum per arena chunk).
    Rows,
}

/// One buffer of rows: `chunks[c]` holds the rows of slots `c * CHUNK_ROWS ..`, `per_row`
/// values each (`dim` for vectors, 1 for a factor per row); the last chunk is cut at the
/// last row held.
pub struct RowBuffer<'a> {
    /// What the buffer holds: "f32" (the exact vectors), "f16" (binary16 bits of the unit
    /// vectors), "int8" (the quantised unit vectors), "int8_factors".
    pub name: &'static str,
    pub per_row: usize,
    pub chunks: RowChunks<'a>,
}

pub enum RowChunks<'a> {
    F32(Vec<&'a [f32]>),
    U16(Vec<&'a [u16]>),
    I8(Vec<&'a [i8]>),
}

/// The chunks of an arena, the last one cut at its last row.
pub(crate) fn arena_chunks<T: ZeroBits>(arena: &Arena<T>, dim: usize) -> Vec<&[T]> {
    let rows = arena.rows();
    (0..rows.div_ceil(CHUNK_ROWS)).map(|c| &arena.chunk(c)[..(rows - c * CHUNK_ROWS).min(CHUNK_ROWS) * dim]).collect()
}

/// Little-endian bytes of a slice of plain numbers.
pub(crate) fn bytes_of<T: ZeroBits>(v: &[T]) -> &[u8] {
    // SAFETY: ZeroBits types are plain numbers (no padding, any bit pattern valid); the
    // image is little-endian only (see `crate::image`).
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Declares the precisions: the public [`Precision`] enum, its names, and the rows type
/// each one is held in. One line per precision.
macro_rules! precisions {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $rows:ty;)*) => {
        /// How vectors are held in memory.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub enum Precision {
            $($(#[$doc])* $variant,)*
        }

        impl Precision {
            /// Every precision, in the order they were added.
            pub const ALL: &'static [Precision] = &[$(Precision::$variant),*];

            pub fn from_name(s: &str) -> Option<Precision> {
                match s {
                    $($name => Some(Precision::$variant),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Precision::$variant => $name,)*
                }
            }

            /// Empty rows of `dim` values held at this precision.
            pub fn new_rows(self, dim: usize) -> Box<dyn PrecisionRows> {
                match self {
                    $(Precision::$variant => Box::new(<$rows>::new(dim)),)*
                }
            }

            /// How this precision's rows sit in a store image.
            pub fn image_layout(self) -> &'static ImageLayout {
                match self {
                    $(Precision::$variant => &<$rows>::IMAGE,)*
                }
            }

            /// Whether this precision keeps the exact vectors in memory (the others need a
            /// durable layer to read them from).
            pub fn keeps_exact_vectors(self) -> bool {
                match self {
                    $(Precision::$variant => <$rows>::KEEPS_EXACT,)*
                }
            }

            /// Whether searches at this precision return candidates that the engine
            /// re-ranks with the exact vectors read from the durable layer.
            pub fn reranked(self) -> bool {
                match self {
                    $(Precision::$variant => <$rows>::RERANKED,)*
                }
            }

            /// The most values a vector may have at this precision (its kernels' sums must
            /// not overflow).
            pub fn max_dim(self) -> usize {
                match self {
                    $(Precision::$variant => <$rows>::MAX_DIM,)*
                }
            }

            /// Whether a store held at this precision can be built from an image written at
            /// `image` (its own, or one whose search rows are this precision's).
            pub fn reads_image_of(self, image: Precision) -> bool {
                match self {
                    $(Precision::$variant => <$rows>::reads_image_of(image),)*
                }
            }

            /// This precision's rows from a store image's sections.
            pub fn rows_from_image(self, sections: &ImageSections<'_>) -> Box<dyn PrecisionRows> {
                match self {
                    $(Precision::$variant => Box::new(<$rows>::from_image(sections)),)*
                }
            }
        }
    };
}

precisions! {
    /// The f32 vectors as stored, plus their unit half-precision copy for the pre-scan:
    /// exact scores. The default.
    #[default]
    F32 => "f32", F32Rows;
    /// Only the unit half-precision copy (a third of the memory): scores within
    /// `simd::half::prescan_error_bound` of the exact cosine. The exact vectors stay in the
    /// durable layer, where `get` and `list` read them.
    F16 => "f16", F16Rows;
    /// Only the unit vectors quantised to int8 with one factor each (a quarter of the f32
    /// bytes, a sixth of `F32`'s memory). Searches here return candidates by their int8
    /// score; the engine re-ranks them with the exact vectors read from the durable layer
    /// (see `Engine::search`), so scores are exact and only recall can suffer.
    Int8 => "int8", Int8Rows;
}

impl Default for Box<dyn PrecisionRows> {
    fn default() -> Self {
        Precision::default().new_rows(0)
    }
}

/// What each precision's rows type says about the precision itself, beside [`PrecisionRows`]
/// (the `precisions!` table dispatches to these).
pub trait PrecisionKind: Sized {
    const IMAGE: ImageLayout;
    const KEEPS_EXACT: bool;
    const RERANKED: bool = false;
    const MAX_DIM: usize = usize::MAX;
    fn reads_image_of(image: Precision) -> bool;
    fn from_image(sections: &ImageSections<'_>) -> Self;
}
