//! The store image: the replica written beside the store file at close (`<path>.image`),
//! so that the next open maps it instead of reading every row out of SQLite.
//!
//! Opening a 100,000 x 1536 store from SQLite copies ~900 MB into fresh memory (vectors,
//! their unit half-precision copy), and half of that time is the kernel zeroing the new
//! pages. An image holds the same rows in the arena's chunk layout, so the arena maps them
//! (privately: a write copies one page, the file never changes) and pages them in on first
//! use; only the records' fields are decoded at open.
//!
//! The image is a cache, never the truth. It is used only when
//! * it is whole: written to a temporary file, flushed to disk, then renamed; its header,
//!   records and norms carry a CRC-32 and its length is checked;
//! * it belongs to this store file: its random token equals the one the closing process
//!   committed to the store's `meta` table after the rename (a restored backup or another
//!   store's image has another token, or none);
//! * the store descends from it: same epoch (a reset bumps it), same dimension, and a
//!   sequence no newer than the store's. The engine then applies the changes committed
//!   after the image, exactly as it catches up with another process.
//!
//! Otherwise the store is read from SQLite as before. Layout (little-endian):
//!
//! ```text
//! header (HEADER_BYTES): magic, version, precision (0 f32, 1 f16, 2 int8), dim, rows,
//!                        epoch, seq, token, section offsets, file length,
//!                        CRC-32 of header + records + norms (+ int8 factors)
//! records              : per record its fields (strings as u32 length + UTF-8)
//! norms                : rows x f32 (1/|v|)
//! aux                  : f32 images: rows x dim x f32, page-aligned
//!                        int8 images: rows x f32, each row's quantisation factor
//!                        f16 images: none (offset 0)
//! search rows          : f32 and f16 images: rows x dim x u16 (binary16 of the unit vector)
//!                        int8 images: rows x dim x i8 (the quantised unit vector)
//!                        page-aligned
//! ```
//!
//! The rows are the replica's own, byte for byte: an int8 image holds the quantisation the
//! store made from the exact vectors, so a replica from the image equals one read from
//! SQLite. Readers that predate int8 images reject precision 2 and read the store.

use crate::arena::{Arena, Chunk, ZeroBits, CHUNK_ROWS};
use crate::cursor::Reader;
use crate::record::Record;
use crate::state::{ImageArenas, ImageRows, Precision, State};
use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"FMIMAGE\0";
const VERSION: u32 = 1;
/// The header occupies the first page; the sections that are mapped start on page bounds.
const HEADER_BYTES: usize = 4096;
const PAGE: u64 = 4096;
/// Bytes of the header that the CRC covers (everything before the CRC itself).
const HEADER_USED: usize = 8 + 4 + 4 + 8 * 4 + 16 + 8 * 6;

/// The image file of the store at `path`: `<path>.image`.
pub fn image_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".image");
    PathBuf::from(name)
}

/// A fresh token naming one image: unique, not secret (std's per-process random hash keys
/// mixed with the time, the process and a counter).
pub fn new_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for (i, h) in halves.iter_mut().enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_usize(i);
        *h = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

fn token_bytes(token: &str) -> Option<[u8; 16]> {
    if token.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(token.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_record(out: &mut Vec<u8>, r: &Record) {
    put_str(out, &r.id);
    put_str(out, &r.content);
    put_str(out, &r.scope);
    out.extend_from_slice(&(r.categories.len() as u32).to_le_bytes());
    for c in &r.categories {
        put_str(out, c);
    }
    put_str(out, &r.metadata_json);
    match &r.source {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
    for x in [r.importance, r.created_at, r.last_accessed] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.push(r.private as u8);
}

/// The bytes of `values`, for writing (every element type here has no padding, and the
/// image is read back as little-endian on this little-endian target: checked below).
fn bytes_of<T: Copy>(values: &[T]) -> &[u8] {
    // SAFETY: f32, u16 and i8 have no padding and every byte of them is initialised.
    unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) }
}

/// Writes the image of `state` to `target` with `token`: a temporary file beside it, flushed
/// to disk, then renamed over it. Writes nothing for an empty store.
pub fn write(state: &State, target: &Path, token: &str) -> std::io::Result<()> {
    let (Some(dim), false) = (state.dim, state.is_empty()) else { return Ok(()) };
    let token = token_bytes(token).ok_or_else(|| std::io::Error::other("an image token is 32 hex digits"))?;
    let rows = state.len() as u64;
    let values = rows * dim as u64;
    let mut records = Vec::with_capacity(state.len() * 64);
    let mut norms = Vec::with_capacity(state.len() * 4);
    for (rec, inv) in state.image_records() {
        encode_record(&mut records, rec);
        norms.extend_from_slice(&inv.to_le_bytes());
    }
    let vectors = state.image_vectors();
    // The int8 factors are small and checked like the norms; the large row sections are not
    // (a CRC over a gigabyte would cost the open its milliseconds).
    let factors: Vec<u8> = match &vectors {
        ImageRows::Int8 { slots, factors, .. } => slots.clone().flat_map(|s| factors[s].to_le_bytes()).collect(),
        _ => Vec::new(),
    };
    let (precision_code, row_bytes) = match &vectors {
        ImageRows::F32 { .. } => (0u32, 2),
        ImageRows::F16 { .. } => (1u32, 2),
        ImageRows::Int8 { .. } => (2u32, 1),
    };
    let records_off = HEADER_BYTES as u64;
    let norms_off = align_up(records_off + records.len() as u64, 64);
    let norms_end = norms_off + norms.len() as u64;
    let (aux_off, aux_end) = match &vectors {
        ImageRows::F32 { .. } => (align_up(norms_end, PAGE), align_up(norms_end, PAGE) + values * 4),
        ImageRows::F16 { .. } => (0, norms_end),
        ImageRows::Int8 { .. } => (norms_end, norms_end + factors.len() as u64),
    };
    let rows_off = align_up(aux_end, PAGE);
    let file_len = rows_off + values * row_bytes;

    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&precision_code.to_le_bytes());
    for x in [dim as u64, rows, state.epoch, state.seq] {
        header.extend_from_slice(&x.to_le_bytes());
    }
    header.extend_from_slice(&token);
    for x in [records_off, records.len() as u64, norms_off, aux_off, rows_off, file_len] {
        header.extend_from_slice(&x.to_le_bytes());
    }
    debug_assert_eq!(header.len(), HEADER_USED);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(&records);
    crc.update(&norms);
    crc.update(&factors);
    header.extend_from_slice(&crc.finalize().to_le_bytes());
    header.resize(HEADER_BYTES, 0);

    let tmp = {
        let mut name = target.as_os_str().to_owned();
        name.push(format!(".tmp{}", std::process::id()));
        PathBuf::from(name)
    };
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut at = 0u64;
        let mut put = |w: &mut BufWriter<File>, offset: u64, bytes: &[u8]| -> std::io::Result<()> {
            if offset > at {
                w.write_all(&vec![0u8; (offset - at) as usize])?;
                at = offset;
            }
            debug_assert_eq!(at, offset, "image sections are written in order");
            w.write_all(bytes)?;
            at += bytes.len() as u64;
            Ok(())
        };
        put(&mut w, 0, &header)?;
        put(&mut w, records_off, &records)?;
        put(&mut w, norms_off, &norms)?;
        match vectors {
            ImageRows::F32 { slots, vectors, half } => {
                for (i, s) in slots.clone().enumerate() {
                    put(&mut w, aux_off + i as u64 * dim as u64 * 4, bytes_of(vectors.row(s)))?;
                }
                for (i, s) in slots.enumerate() {
                    put(&mut w, rows_off + i as u64 * dim as u64 * 2, bytes_of(half.row(s)))?;
                }
            }
            ImageRows::F16 { slots, half } => {
                for (i, s) in slots.enumerate() {
                    put(&mut w, rows_off + i as u64 * dim as u64 * 2, bytes_of(half.row(s)))?;
                }
            }
            ImageRows::Int8 { slots, quant, .. } => {
                put(&mut w, aux_off, &factors)?;
                for (i, s) in slots.enumerate() {
                    put(&mut w, rows_off + i as u64 * dim as u64, bytes_of(quant.row(s)))?;
                }
            }
        }
        debug_assert_eq!(at, file_len);
        let file = w.into_inner().map_err(|e| e.into_error())?;
        // On disk before the rename: a crash must never leave a whole-looking image with
        // pages that were not written.
        file.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(not(target_endian = "little"))]
compile_error!("the store image stores values in the machine's byte order, assumed little-endian");

/// The image's header fields.
struct Header {
    precision: Precision,
    dim: usize,
    rows: usize,
    epoch: u64,
    seq: u64,
    token: [u8; 16],
    records: (usize, usize),
    norms_off: usize,
    aux_off: usize,
    rows_off: usize,
}

/// One record as `encode_record` wrote it.
fn read_record(r: &mut Reader<'_>) -> Option<Record> {
    let id = r.str()?;
    let content = r.str()?.to_owned();
    let scope = r.str()?.to_owned();
    let n = r.u32()? as usize;
    let mut categories = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        categories.push(r.str()?.to_owned());
    }
    let metadata_json = r.str()?.to_owned();
    let source = match r.u8()? {
        0 => None,
        1 => Some(r.str()?.to_owned()),
        _ => return None,
    };
    let (importance, created_at, last_accessed) = (r.f64()?, r.f64()?, r.f64()?);
    let private = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some(Record { id: id.into(), content, scope, categories, metadata_json, importance, created_at, last_accessed, source, private })
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let mut r = Reader { bytes: bytes.get(..HEADER_BYTES)?, at: 0 };
    if r.take(8)? != MAGIC || r.u32()? != VERSION {
        return None;
    }
    let precision = match r.u32()? {
        0 => Precision::F32,
        1 => Precision::F16,
        2 => Precision::Int8,
        _ => return None,
    };
    let (dim, rows, epoch, seq) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let token: [u8; 16] = r.take(16)?.try_into().ok()?;
    let (records_off, records_len, norms_off, aux_off, rows_off, file_len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let crc = r.u32()?;
    // Every section inside the file, in order, aligned where it is mapped.
    let values = dim.checked_mul(rows)?;
    let norms_end = norms_off.checked_add(rows.checked_mul(4)?)?;
    let (aux_ok, aux_end, row_bytes) = match precision {
        Precision::F32 => (aux_off % PAGE == 0 && aux_off >= norms_end, aux_off.checked_add(values.checked_mul(4)?)?, 2),
        Precision::F16 => (aux_off == 0, norms_end, 2),
        Precision::Int8 => (aux_off == norms_end, aux_off.checked_add(rows.checked_mul(4)?)?, 1),
    };
    let ok = dim > 0
        && rows > 0
        && file_len == bytes.len() as u64
        && records_off == HEADER_BYTES as u64
        && norms_off >= records_off.checked_add(records_len)?
        && norms_off % 4 == 0
        && aux_ok
        && rows_off % PAGE == 0
        && rows_off >= aux_end
        && file_len == rows_off.checked_add(values.checked_mul(row_bytes)?)?;
    if !ok {
        return None;
    }
    let (records_off, records_len, norms_off) = (records_off as usize, records_len as usize, norms_off as usize);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..HEADER_USED]);
    hasher.update(&bytes[records_off..records_off + records_len]);
    hasher.update(&bytes[norms_off..norms_off + rows as usize * 4]);
    if precision == Precision::Int8 {
        hasher.update(&bytes[aux_off as usize..aux_end as usize]);
    }
    if hasher.finalize() != crc {
        return None;
    }
    Some(Header {
        precision,
        dim: dim as usize,
        rows: rows as usize,
        epoch,
        seq,
        token,
        records: (records_off, records_len),
        norms_off,
        aux_off: aux_off as usize,
        rows_off: rows_off as usize,
    })
}

/// Little-endian f32s from `bytes` (a multiple of 4 long).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

/// The arena of `rows` rows of `dim` values of `T` at `offset` in `map`: full chunks stay in
/// the mapping, the last partial one is copied (so new rows can be appended to it).
fn mapped_arena<T: ZeroBits>(map: &Arc<MmapMut>, offset: usize, rows: usize, dim: usize) -> Arena<T> {
    let per_chunk = CHUNK_ROWS * dim;
    let size = std::mem::size_of::<T>();
    let mut chunks = Vec::with_capacity(rows.div_ceil(CHUNK_ROWS));
    for c in 0..rows.div_ceil(CHUNK_ROWS) {
        let start = offset + c * per_chunk * size;
        let used = (rows - c * CHUNK_ROWS).min(CHUNK_ROWS);
        if used == CHUNK_ROWS {
            // SAFETY: inside the mapping (parse_header checked the lengths), page-aligned
            // section plus whole chunks of `T` (so aligned), every bit pattern is a valid
            // f32 / u16 / i8, and chunks are disjoint.
            chunks.push(unsafe { Chunk::mapped(map, start, per_chunk) });
        } else {
            let mut owned = Chunk::zeroed(per_chunk);
            // SAFETY: as above, for the `used` rows present in the file.
            let src = unsafe { std::slice::from_raw_parts(map.as_ptr().add(start) as *const T, used * dim) };
            owned.as_mut_slice()[..used * dim].copy_from_slice(src);
            chunks.push(owned);
        }
    }
    Arena::from_chunks(dim, rows, chunks)
}

/// What the store says an image must be: its token (from `meta`), position and dimension.
pub struct Expected<'a> {
    pub token: &'a str,
    pub epoch: u64,
    pub seq: u64,
    pub dim: Option<usize>,
}

/// The replica held by the image at `file`, at the image's (epoch, seq), when the image is
/// whole and fits `expected`; None (the caller reads the store) otherwise.
pub fn load(file: &Path, expected: &Expected<'_>, precision: Precision) -> Option<State> {
    let f = File::open(file).ok()?;
    // SAFETY: the mapping is private (copy-on-write), so our writes never reach the file.
    // Images are only ever replaced by rename, never rewritten in place, so the mapped
    // file does not change under us.
    let map = Arc::new(unsafe { MmapOptions::new().map_copy(&f) }.ok()?);
    let h = parse_header(&map)?;
    // An f16 store can use the half rows of an f32 image; otherwise the kinds must match.
    let usable = h.precision == precision || (precision == Precision::F16 && h.precision == Precision::F32);
    if token_bytes(expected.token)? != h.token || h.epoch != expected.epoch || h.seq > expected.seq || expected.dim != Some(h.dim) || !usable {
        return None;
    }
    let mut r = Reader { bytes: &map[..h.records.0 + h.records.1], at: h.records.0 };
    let mut records = Vec::with_capacity(h.rows);
    for _ in 0..h.rows {
        records.push(read_record(&mut r)?);
    }
    if r.at != h.records.0 + h.records.1 {
        return None;
    }
    let inv_norm = f32s(&map[h.norms_off..h.norms_off + h.rows * 4]);
    let vectors = match precision {
        Precision::F32 => ImageArenas::F32 { vectors: mapped_arena(&map, h.aux_off, h.rows, h.dim), half: mapped_arena(&map, h.rows_off, h.rows, h.dim) },
        Precision::F16 => ImageArenas::F16 { half: mapped_arena(&map, h.rows_off, h.rows, h.dim) },
        Precision::Int8 => ImageArenas::Int8 {
            quant: mapped_arena(&map, h.rows_off, h.rows, h.dim),
            factors: f32s(&map[h.aux_off..h.aux_off + h.rows * 4]),
        },
    };
    State::from_image(h.dim, h.epoch, h.seq, records, vectors, inv_norm).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(token_bytes(&a).is_some());
        assert!(token_bytes("xyz").is_none());
        assert!(token_bytes(&"g".repeat(32)).is_none());
    }
}
