//! The vector arena: rows of `dim` float32 values in fixed-size chunks.
//!
//! Chunks instead of one growing Vec: growing never copies what is stored (a Vec doubling
//! at 100k x 1536 would copy 600 MB and briefly hold twice that), and the unused tail of
//! the last chunk is zeroed memory the OS has not committed yet, so RSS tracks the rows
//! actually stored. Rows inside a chunk are contiguous, which is what the SIMD kernels scan.
//!
//! A chunk either owns its memory or lies in a private (copy-on-write) mapping of a store
//! image (see `crate::image`): a store opened from its image pages its vectors in on first
//! use instead of copying them, and a write to a mapped row copies only that page.

use memmap2::MmapMut;
use std::ptr::NonNull;
use std::sync::Arc;

/// Rows per chunk; a multiple of the search block size so no block straddles two chunks.
pub const CHUNK_ROWS: usize = 4096;

/// The memory of one chunk: exactly `CHUNK_ROWS * dim` values.
pub enum Chunk<T> {
    Owned(Box<[T]>),
    /// Values inside a private file mapping, which `_map` keeps alive. No two chunks share a
    /// value, and nothing else reads or writes the mapping, so a chunk's values are as
    /// exclusively its own as an owned box's.
    Mapped { ptr: NonNull<T>, len: usize, _map: Arc<MmapMut> },
}

// SAFETY: a mapped chunk is memory owned by this chunk alone (see `Chunk::Mapped`); it
// moves and is shared across threads exactly like the `Box<[T]>` of an owned one.
unsafe impl<T: Send> Send for Chunk<T> {}
unsafe impl<T: Sync> Sync for Chunk<T> {}

impl<T: Copy> Chunk<T> {
    /// The `len` values of `T` at `byte_offset` in `map`.
    ///
    /// # Safety
    /// The range must lie inside the mapping, be aligned for `T`, hold valid values of `T`,
    /// and overlap no other chunk of the same mapping.
    pub unsafe fn mapped(map: &Arc<MmapMut>, byte_offset: usize, len: usize) -> Chunk<T> {
        debug_assert!(byte_offset + len * std::mem::size_of::<T>() <= map.len());
        let base = map.as_ptr().add(byte_offset) as *mut T;
        debug_assert!(base.is_aligned());
        Chunk::Mapped { ptr: NonNull::new_unchecked(base), len, _map: Arc::clone(map) }
    }

    fn as_slice(&self) -> &[T] {
        match self {
            Chunk::Owned(b) => b,
            // SAFETY: see `Chunk::mapped`; the mapping outlives `self` through `_map`.
            Chunk::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Chunk::Owned(b) => b,
            // SAFETY: as above, and `&mut self` makes this the only access to the range.
            Chunk::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
        }
    }
}

/// Rows of `dim` values of `T`: f32 for the vectors as stored, u16 (binary16 bits) for the
/// normalised half-precision copy the search pre-scans.
pub struct Arena<T = f32> {
    dim: usize,
    rows: usize,
    chunks: Vec<Chunk<T>>,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena { dim: 0, rows: 0, chunks: Vec::new() }
    }
}

impl<T: Copy + Default> Arena<T> {
    pub fn new(dim: usize) -> Arena<T> {
        Arena { dim, rows: 0, chunks: Vec::new() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a zeroed row and returns its index.
    pub fn push_row(&mut self) -> usize {
        if self.rows == self.chunks.len() * CHUNK_ROWS {
            // alloc_zeroed: pages are committed only when a row is written.
            self.chunks.push(Chunk::Owned(vec![T::default(); CHUNK_ROWS * self.dim].into_boxed_slice()));
        }
        self.rows += 1;
        self.rows - 1
    }

    pub fn row(&self, r: usize) -> &[T] {
        let off = (r % CHUNK_ROWS) * self.dim;
        &self.chunks[r / CHUNK_ROWS].as_slice()[off..off + self.dim]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        let off = (r % CHUNK_ROWS) * self.dim;
        &mut self.chunks[r / CHUNK_ROWS].as_mut_slice()[off..off + self.dim]
    }

    /// Rows start..end, contiguous; they must lie in one chunk.
    pub fn block(&self, start: usize, end: usize) -> &[T] {
        let c = start / CHUNK_ROWS;
        debug_assert!(end == start || (end - 1) / CHUNK_ROWS == c, "a block straddles two chunks");
        let base = c * CHUNK_ROWS;
        &self.chunks[c].as_slice()[(start - base) * self.dim..(end - base) * self.dim]
    }

    /// The whole chunk `c` (all CHUNK_ROWS rows, used or not).
    pub fn chunk(&self, c: usize) -> &[T] {
        self.chunks[c].as_slice()
    }

    /// An arena of `rows` rows held by `chunks` (each `CHUNK_ROWS * dim` values; the rows
    /// past `rows` in the last one are zero).
    pub fn from_chunks(dim: usize, rows: usize, chunks: Vec<Chunk<T>>) -> Arena<T> {
        assert_eq!(chunks.len(), rows.div_ceil(CHUNK_ROWS), "chunks do not match the rows");
        assert!(chunks.iter().all(|c| c.as_slice().len() == CHUNK_ROWS * dim), "a chunk of the wrong size");
        Arena { dim, rows, chunks }
    }

    /// Bytes of the rows in use.
    pub fn bytes(&self) -> usize {
        self.rows * self.dim * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_span_chunks() {
        let mut a: Arena<f32> = Arena::new(3);
        for i in 0..CHUNK_ROWS + 10 {
            let r = a.push_row();
            assert_eq!(r, i);
            a.row_mut(r).copy_from_slice(&[i as f32, 1.0, 2.0]);
        }
        assert_eq!(a.row(CHUNK_ROWS + 3)[0], (CHUNK_ROWS + 3) as f32);
        assert_eq!(a.block(CHUNK_ROWS, CHUNK_ROWS + 2), &[CHUNK_ROWS as f32, 1.0, 2.0, (CHUNK_ROWS + 1) as f32, 1.0, 2.0]);
        assert_eq!(a.chunk(1).len(), CHUNK_ROWS * 3);
    }
}
