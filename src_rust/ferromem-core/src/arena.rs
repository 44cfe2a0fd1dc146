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
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

/// Rows per chunk; a multiple of the search block size so no block straddles two chunks.
pub const CHUNK_ROWS: usize = 4096;

/// Owned chunks start on a cache line. The AVX-512 kernels load 64 bytes at a time, and
/// from a chunk that the allocator placed 16 bytes past a page (what a large `Vec` gets)
/// three loads in four straddle two lines. Measured on one thread, AMD EPYC: an f32 scan
/// of 1536-dim rows streamed 34.6 GB/s from 16-byte-aligned rows and 50.9 GB/s from
/// 64-byte-aligned ones (AVX2, 32-byte loads: 46 to 50 either way). Mapped chunks start
/// on a page.
const CHUNK_ALIGN: usize = 64;

/// Element types whose all-zero bit pattern is the value zero (what a fresh chunk holds).
///
/// # Safety
/// Every value read from a fresh chunk is all-zero bits: implement this only for types
/// for which that is a valid value.
pub unsafe trait ZeroBits: Copy + Default {}
// SAFETY: all-zero bits are 0.0, 0 and 0.
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for u16 {}
unsafe impl ZeroBits for i8 {}

/// The memory of one chunk: exactly `CHUNK_ROWS * dim` values.
pub enum Chunk<T> {
    /// `len` values at `ptr`, the first cache line inside an allocation of its own that
    /// starts at `base` (freed on drop).
    Owned { ptr: NonNull<T>, len: usize, base: NonNull<u8> },
    /// Values inside a private file mapping, which `_map` keeps alive. No two chunks share a
    /// value, and nothing else reads or writes the mapping, so a chunk's values are as
    /// exclusively its own as an owned box's.
    Mapped { ptr: NonNull<T>, len: usize, _map: Arc<MmapMut> },
}

// SAFETY: an owned chunk's allocation and a mapped chunk's range are memory of this chunk
// alone (see the variants); it moves and is shared across threads like a `Box<[T]>`.
unsafe impl<T: Send> Send for Chunk<T> {}
unsafe impl<T: Sync> Sync for Chunk<T> {}

/// The allocation of an owned chunk of `len` values: room for them after skipping up to
/// one cache line. Its alignment stays the allocator's minimum on purpose: a zeroed
/// allocation of that alignment is `calloc`, whose fresh pages the OS commits only when
/// written, whereas an over-aligned one is zeroed by writing every byte (which committed
/// a whole 4096-row chunk of RSS for the first row).
fn owned_layout<T>(len: usize) -> Layout {
    let bytes = len.checked_mul(std::mem::size_of::<T>()).and_then(|b| b.checked_add(CHUNK_ALIGN)).expect("a chunk larger than memory");
    Layout::from_size_align(bytes, std::mem::align_of::<T>()).expect("a chunk larger than memory")
}

impl<T: ZeroBits> Chunk<T> {
    /// `len` zeros starting on a cache line, in a fresh allocation zeroed by the allocator
    /// (so the pages are committed only when a row is written).
    pub fn zeroed(len: usize) -> Chunk<T> {
        let layout = owned_layout::<T>(len);
        // SAFETY: the layout's size is at least CHUNK_ALIGN.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // The first line boundary at or after `base`: a multiple of T's alignment too (64
        // is), and `len` values fit before the end of the allocation.
        let skip = raw.align_offset(CHUNK_ALIGN);
        debug_assert!(skip < CHUNK_ALIGN);
        // SAFETY: `skip + len * size_of::<T>()` <= the layout's size; all-zero bits are
        // valid zeros of T (`ZeroBits`).
        let ptr = unsafe { NonNull::new_unchecked(raw.add(skip) as *mut T) };
        Chunk::Owned { ptr, len, base }
    }
}

impl<T> Drop for Chunk<T> {
    fn drop(&mut self) {
        if let Chunk::Owned { len, base, .. } = *self {
            // SAFETY: `base` was allocated by `Chunk::zeroed` with this very layout, and
            // is freed once.
            unsafe { std::alloc::dealloc(base.as_ptr(), owned_layout::<T>(len)) };
        }
    }
}

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

    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            // SAFETY: `len` initialised values of this chunk's own (see the variants); a
            // mapping outlives `self` through `_map`.
            Chunk::Owned { ptr, len, .. } | Chunk::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            // SAFETY: as above, and `&mut self` makes this the only access to the values.
            Chunk::Owned { ptr, len, .. } | Chunk::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
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

impl<T: ZeroBits> Arena<T> {
    pub fn new(dim: usize) -> Arena<T> {
        Arena { dim, rows: 0, chunks: Vec::new() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a zeroed row and returns its index.
    pub fn push_row(&mut self) -> usize {
        if self.rows == self.chunks.len() * CHUNK_ROWS {
            self.chunks.push(Chunk::zeroed(CHUNK_ROWS * self.dim));
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

    #[test]
    fn owned_chunks_start_on_a_cache_line_and_hold_zeros() {
        let mut a: Arena<u16> = Arena::new(5);
        let mut b: Arena<i8> = Arena::new(3);
        for _ in 0..2 * CHUNK_ROWS + 1 {
            a.push_row();
            b.push_row();
        }
        for c in 0..3 {
            assert_eq!(a.chunk(c).as_ptr() as usize % CHUNK_ALIGN, 0);
            assert_eq!(b.chunk(c).as_ptr() as usize % CHUNK_ALIGN, 0);
            assert!(a.chunk(c).iter().all(|&x| x == 0) && b.chunk(c).iter().all(|&x| x == 0));
        }
    }
}
