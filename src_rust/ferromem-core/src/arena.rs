//! The vector arena: rows of `dim` float32 values in fixed-size chunks.
//!
//! Chunks instead of one growing Vec: growing never copies what is stored (a Vec doubling
//! at 100k x 1536 would copy 600 MB and briefly hold twice that), and the unused tail of
//! the last chunk is zeroed memory the OS has not committed yet, so RSS tracks the rows
//! actually stored. Rows inside a chunk are contiguous, which is what the SIMD kernels scan.

/// Rows per chunk; a multiple of the search block size so no block straddles two chunks.
pub const CHUNK_ROWS: usize = 4096;

/// Rows of `dim` values of `T`: f32 for the vectors as stored, u16 (binary16 bits) for the
/// normalised half-precision copy the search pre-scans.
pub struct Arena<T = f32> {
    dim: usize,
    rows: usize,
    chunks: Vec<Box<[T]>>,
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
            self.chunks.push(vec![T::default(); CHUNK_ROWS * self.dim].into_boxed_slice());
        }
        self.rows += 1;
        self.rows - 1
    }

    pub fn row(&self, r: usize) -> &[T] {
        let off = (r % CHUNK_ROWS) * self.dim;
        &self.chunks[r / CHUNK_ROWS][off..off + self.dim]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        let off = (r % CHUNK_ROWS) * self.dim;
        &mut self.chunks[r / CHUNK_ROWS][off..off + self.dim]
    }

    /// Rows start..end, contiguous; they must lie in one chunk.
    pub fn block(&self, start: usize, end: usize) -> &[T] {
        let c = start / CHUNK_ROWS;
        debug_assert!(end == start || (end - 1) / CHUNK_ROWS == c, "a block straddles two chunks");
        let base = c * CHUNK_ROWS;
        &self.chunks[c][(start - base) * self.dim..(end - base) * self.dim]
    }

    /// The whole chunk `c` (all CHUNK_ROWS rows, used or not).
    pub fn chunk(&self, c: usize) -> &[T] {
        &self.chunks[c]
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
