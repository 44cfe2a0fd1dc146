//! The store image: the replica written beside the store file at close (`<path>.image`),
//! so that the next open maps it instead of reading every row out of SQLite.
//!
//! Opening a 100,000 x 1536 store from SQLite copies ~900 MB into fresh memory (vectors,
//! their unit half-precision copy), and half of that time is the kernel zeroing the new
//! pages. An image holds the same rows in the arena's chunk layout, so the arena maps them
//! (privately: a write copies one page, the file never changes); only the records' fields
//! are decoded at open.
//!
//! The image is a cache, never the truth. It is used only when
//! * it is whole: written to a temporary file, flushed to disk, then renamed; every
//!   section carries a CRC-32 (the header and the checksum table one, the records, the
//!   norms and the int8 factors one each, the row sections one per arena chunk of 4,096
//!   rows), and every section the replica will use is verified at open, before any row
//!   can be read (see [`load`]);
//! * it belongs to this store file: its random token equals the one the closing process
//!   committed to the store's `meta` table after the rename (a restored backup or another
//!   store's image has another token, or none);
//! * the store descends from it: same epoch (a reset bumps it), same dimension, and a
//!   sequence no newer than the store's. The engine then applies the changes committed
//!   after the image, exactly as it catches up with another process.
//!
//! Otherwise the store is read from SQLite as before. A damaged image ([`Loaded::Damaged`])
//! is reported with the reason, so the caller can say so; an image of another store,
//! position or format version is simply not used. Layout (little-endian):
//!
//! ```text
//! header (HEADER_BYTES): magic, version, precision (0 f32, 1 f16, 2 int8), dim, rows,
//!                        epoch, seq, token, section offsets, file length,
//!                        CRC-32 of the header fields and the checksum table
//! checksum table       : u32 CRC-32s: records, norms, then the aux section (f32: one per
//!                        chunk of rows; int8: one for the factors; f16: none), then the
//!                        search rows (one per chunk of rows)
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
//! SQLite. Version 1 images (no checksums over the rows) are not read: they are caches,
//! rewritten at the next close.

use crate::arena::{Arena, Chunk, ZeroBits, CHUNK_ROWS};
use crate::cursor::Reader;
use crate::record::Record;
use crate::state::State;
use crate::vectors::{AuxSection, ImageLayout, Precision};
use memmap2::{MmapMut, MmapOptions};
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"FMIMAGE\0";
/// Version 2: every section checksummed, the rows included (version 1 left them out).
const VERSION: u32 = 2;
/// The header occupies the first page; the sections that are mapped start on page bounds.
const HEADER_BYTES: usize = 4096;
const PAGE: u64 = 4096;
/// Bytes of header fields that the header CRC covers (everything before the CRC itself).
const HEADER_USED: usize = 8 + 4 + 4 + 8 * 4 + 16 + 8 * 6;
/// The widest rows an image holds. Wider stores keep no image: the arena's last chunk is
/// copied at open (4,096 rows of `dim` values), and a bound from the format keeps a
/// damaged or hostile header from asking for a huge allocation.
pub const MAX_DIM: usize = 65_536;
/// The fewest bytes a record takes in the records section (five empty strings, a
/// category count, a source flag, three f64, a private flag): bounds the records a
/// section of a given length can hold before anything is allocated for them.
const MIN_RECORD_BYTES: usize = 5 * 4 + 4 + 1 + 3 * 8 + 1;

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

fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

/// The sections of an image, as the checksum table and the problems name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Records,
    Norms,
    /// The f32 rows of an f32 image, the quantisation factors of an int8 one.
    Aux,
    /// The half-precision (f32, f16) or int8 rows that searches scan.
    Rows,
}

/// One checksummed piece of an image: a whole small section, or one arena chunk of rows.
struct Piece {
    section: Section,
    /// The rows the piece holds (all of them for a whole section).
    rows: Range<usize>,
    bytes: Range<usize>,
    crc: u32,
}

impl Piece {
    fn describe(&self, layout: &ImageLayout) -> String {
        let what = match self.section {
            Section::Records => "the records",
            Section::Norms => "the norms",
            Section::Aux => layout.aux_name,
            Section::Rows => layout.search_name,
        };
        match self.section {
            Section::Aux if layout.aux == AuxSection::Rows => format!("{what} {}..{}", self.rows.start, self.rows.end),
            Section::Rows => format!("{what} {}..{}", self.rows.start, self.rows.end),
            _ => what.to_owned(),
        }
    }
}

/// The checksummed pieces of a row section of `rows` x `dim` values of `elem` bytes at
/// `offset`: one per arena chunk, so that verification runs in parallel and a problem
/// names the rows it concerns. `crcs` yields the table's entries in order.
fn row_pieces(
    section: Section,
    offset: usize,
    rows: usize,
    dim: usize,
    elem: usize,
    crcs: &mut impl Iterator<Item = u32>,
    out: &mut Vec<Piece>,
) -> Option<()> {
    for c in 0..rows.div_ceil(CHUNK_ROWS) {
        let first = c * CHUNK_ROWS;
        let end = (first + CHUNK_ROWS).min(rows);
        let bytes = offset + first * dim * elem..offset + end * dim * elem;
        out.push(Piece { section, rows: first..end, bytes, crc: crcs.next()? });
    }
    Some(())
}

/// Entries of the checksum table of an image of `rows` rows laid out as `layout` says.
fn table_entries(layout: &ImageLayout, rows: usize) -> usize {
    let chunks = rows.div_ceil(CHUNK_ROWS);
    2 + chunks
        + match layout.aux {
            AuxSection::None => 0,
            AuxSection::PerRow => 1,
            AuxSection::Rows => chunks,
        }
}

/// The precision whose image code is `code`.
fn precision_of_code(code: u32) -> Option<Precision> {
    Precision::ALL.iter().copied().find(|p| p.image_layout().code == code)
}

/// Writes the image of `state` to `target` with `token`: a temporary file beside it, flushed
/// to disk, then renamed over it. Writes nothing for an empty store; refuses a store wider
/// than [`MAX_DIM`].
pub fn write(state: &State, target: &Path, token: &str) -> std::io::Result<()> {
    let (Some(dim), false) = (state.dim, state.is_empty()) else { return Ok(()) };
    if dim > MAX_DIM {
        return Err(std::io::Error::other(format!("a store image holds at most {MAX_DIM} dimensions")));
    }
    let token = token_bytes(token).ok_or_else(|| std::io::Error::other("an image token is 32 hex digits"))?;
    let rows = state.len() as u64;
    let values = rows * dim as u64;
    let mut records = Vec::with_capacity(state.len() * 64);
    let mut norms = Vec::with_capacity(state.len() * 4);
    for (rec, inv) in state.image_records() {
        encode_record(&mut records, rec);
        norms.extend_from_slice(&inv.to_le_bytes());
    }
    let vectors = state.vectors();
    let slots = state.image_slots();
    let layout = vectors.image_layout();
    let factors: Vec<u8> = match layout.aux {
        AuxSection::PerRow => slots.clone().flat_map(|s| vectors.image_aux_row(s).iter().copied()).collect(),
        AuxSection::None | AuxSection::Rows => Vec::new(),
    };
    let row_bytes = layout.search_value_bytes as u64;
    let table_bytes = 4 * table_entries(layout, state.len()) as u64;
    let records_off = HEADER_BYTES as u64 + table_bytes;
    let norms_off = align_up(records_off + records.len() as u64, 64);
    let norms_end = norms_off + norms.len() as u64;
    let (aux_off, aux_end) = match layout.aux {
        AuxSection::Rows => (align_up(norms_end, PAGE), align_up(norms_end, PAGE) + values * 4),
        AuxSection::None => (0, norms_end),
        AuxSection::PerRow => (norms_end, norms_end + factors.len() as u64),
    };
    let rows_off = align_up(aux_end, PAGE);
    let file_len = rows_off + values * row_bytes;

    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&layout.code.to_le_bytes());
    for x in [dim as u64, rows, state.epoch, state.seq] {
        header.extend_from_slice(&x.to_le_bytes());
    }
    header.extend_from_slice(&token);
    for x in [records_off, records.len() as u64, norms_off, aux_off, rows_off, file_len] {
        header.extend_from_slice(&x.to_le_bytes());
    }
    debug_assert_eq!(header.len(), HEADER_USED);

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
        // The header and the checksum table are written last (the row checksums are
        // computed while the rows are written): zeros hold their place meanwhile.
        put(&mut w, 0, &vec![0u8; records_off as usize])?;
        put(&mut w, records_off, &records)?;
        put(&mut w, norms_off, &norms)?;
        let mut table = vec![crc32(&records), crc32(&norms)];
        if !factors.is_empty() {
            // One value per row: the aux section, right after the norms.
            put(&mut w, aux_off, &factors)?;
            table.push(crc32(&factors));
        }
        // One CRC per arena chunk of rows, in row order.
        let mut put_rows = |w: &mut BufWriter<File>,
                            offset: u64,
                            row_len: u64,
                            rows: &mut dyn Iterator<Item = &[u8]>,
                            table: &mut Vec<u32>|
         -> std::io::Result<()> {
            let mut hasher = crc32fast::Hasher::new();
            let mut i = 0u64;
            for row in rows {
                put(w, offset + i * row_len, row)?;
                hasher.update(row);
                i += 1;
                if i.is_multiple_of(CHUNK_ROWS as u64) {
                    table.push(std::mem::take(&mut hasher).finalize());
                }
            }
            if !i.is_multiple_of(CHUNK_ROWS as u64) {
                table.push(hasher.finalize());
            }
            Ok(())
        };
        if layout.aux == AuxSection::Rows {
            put_rows(&mut w, aux_off, dim as u64 * 4, &mut slots.clone().map(|s| vectors.image_aux_row(s)), &mut table)?;
        }
        put_rows(&mut w, rows_off, dim as u64 * row_bytes, &mut slots.map(|s| vectors.image_search_row(s)), &mut table)?;
        debug_assert_eq!(table.len() as u64 * 4, table_bytes);
        let table: Vec<u8> = table.iter().flat_map(|c| c.to_le_bytes()).collect();
        let mut head = header.clone();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&table);
        head.extend_from_slice(&hasher.finalize().to_le_bytes());
        head.resize(HEADER_BYTES, 0);
        head.extend_from_slice(&table);
        w.seek(SeekFrom::Start(0))?;
        w.write_all(&head)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        debug_assert_eq!(file.metadata()?.len(), file_len);
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

/// The image's header fields and checksummed pieces.
struct Header {
    precision: Precision,
    dim: usize,
    rows: usize,
    epoch: u64,
    seq: u64,
    token: [u8; 16],
    records: Range<usize>,
    norms: Range<usize>,
    aux_off: usize,
    rows_off: usize,
    pieces: Vec<Piece>,
}

/// Why an image's bytes are not read.
enum Unread {
    /// Not damage: an image of another format version (a cache this build does not read).
    OtherVersion,
    /// Damage: what is wrong, in words.
    Damaged(String),
}

fn damaged<T>(why: impl Into<String>) -> Result<T, Unread> {
    Err(Unread::Damaged(why.into()))
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

/// The header and checksum table of an image, checked: magic, version, the header CRC,
/// and every section inside the file, in order, aligned where it is mapped. The sections'
/// own checksums are checked by [`damage`].
fn parse_header(bytes: &[u8]) -> Result<Header, Unread> {
    if bytes.len() < HEADER_BYTES {
        return damaged(format!("truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len()));
    }
    let mut r = Reader { bytes: &bytes[..HEADER_BYTES], at: 0 };
    let field = |x: Option<u64>| x.expect("inside the header page");
    if r.take(8) != Some(&MAGIC[..]) {
        return damaged("not a ferromem store image (wrong magic bytes)");
    }
    let version = field(r.u32().map(u64::from)) as u32;
    if version != VERSION {
        return Err(Unread::OtherVersion);
    }
    let code = field(r.u32().map(u64::from)) as u32;
    let (dim, rows, epoch, seq) = (field(r.u64()), field(r.u64()), field(r.u64()), field(r.u64()));
    let token: [u8; 16] = r.take(16).and_then(|t| t.try_into().ok()).expect("inside the header page");
    let (records_off, records_len, norms_off, aux_off, rows_off, file_len) =
        (field(r.u64()), field(r.u64()), field(r.u64()), field(r.u64()), field(r.u64()), field(r.u64()));
    let crc = field(r.u32().map(u64::from)) as u32;
    let Some(precision) = precision_of_code(code) else {
        return damaged(format!("unknown precision code {code} in the header"));
    };
    let layout = precision.image_layout();
    if dim == 0 || dim > MAX_DIM as u64 || rows == 0 {
        return damaged(format!("impossible shape in the header: {rows} rows of {dim} values"));
    }
    if rows > bytes.len() as u64 {
        return damaged(format!("truncated: {} bytes, too short for the header's {rows} rows", bytes.len()));
    }
    let (dim, rows) = (dim as usize, rows as usize);
    // The table's length follows from the shape, which is bounded by the file: nothing is
    // read or allocated for it before this check.
    let table_len = 4 * table_entries(layout, rows);
    let Some(table) = bytes.get(HEADER_BYTES..HEADER_BYTES + table_len) else {
        return damaged(format!("truncated: {} bytes, shorter than the header and checksum table", bytes.len()));
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..HEADER_USED]);
    hasher.update(table);
    if hasher.finalize() != crc {
        return damaged("the header or the checksum table fails its checksum");
    }
    if file_len != bytes.len() as u64 {
        return damaged(format!("truncated or extended: {} bytes where the header says {file_len}", bytes.len()));
    }
    // Every section inside the file, in order, aligned where it is mapped. The header
    // passed its checksum, so a failure here is a writer's bug or a forged file.
    let bad_layout = || Unread::Damaged("the header's section offsets do not describe a valid layout".into());
    let values = (dim as u64).checked_mul(rows as u64).ok_or_else(bad_layout)?;
    let norms_end = norms_off.checked_add(rows as u64 * 4).ok_or_else(bad_layout)?;
    let row_bytes = layout.search_value_bytes as u64;
    let (aux_ok, aux_end) = match layout.aux {
        AuxSection::Rows => {
            (aux_off.is_multiple_of(PAGE) && aux_off >= norms_end, aux_off.checked_add(values.checked_mul(4).ok_or_else(bad_layout)?))
        }
        AuxSection::None => (aux_off == 0, Some(norms_end)),
        AuxSection::PerRow => (aux_off == norms_end, aux_off.checked_add(rows as u64 * 4)),
    };
    let aux_end = aux_end.ok_or_else(bad_layout)?;
    let records_end = records_off.checked_add(records_len).ok_or_else(bad_layout)?;
    let rows_end = values.checked_mul(row_bytes).and_then(|b| rows_off.checked_add(b)).ok_or_else(bad_layout)?;
    let ok = records_off == (HEADER_BYTES + table_len) as u64
        && norms_off >= records_end
        && norms_off.is_multiple_of(4)
        && aux_ok
        && rows_off.is_multiple_of(PAGE)
        && rows_off >= aux_end
        && rows_end == file_len;
    if !ok {
        return Err(bad_layout());
    }
    let (records, norms) = (records_off as usize..records_end as usize, norms_off as usize..norms_end as usize);
    let (aux_off, rows_off) = (aux_off as usize, rows_off as usize);
    let mut crcs = table.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
    let next = |crcs: &mut dyn Iterator<Item = u32>| crcs.next().expect("the table's length follows from the shape");
    let mut pieces = vec![
        Piece { section: Section::Records, rows: 0..rows, bytes: records.clone(), crc: next(&mut crcs) },
        Piece { section: Section::Norms, rows: 0..rows, bytes: norms.clone(), crc: next(&mut crcs) },
    ];
    let found = match layout.aux {
        AuxSection::Rows => row_pieces(Section::Aux, aux_off, rows, dim, 4, &mut crcs, &mut pieces),
        AuxSection::None => Some(()),
        AuxSection::PerRow => {
            pieces.push(Piece { section: Section::Aux, rows: 0..rows, bytes: aux_off..aux_end as usize, crc: next(&mut crcs) });
            Some(())
        }
    };
    found
        .and_then(|()| row_pieces(Section::Rows, rows_off, rows, dim, layout.search_value_bytes, &mut crcs, &mut pieces))
        .expect("the table's length follows from the shape");
    Ok(Header { precision, dim, rows, epoch, seq, token, records, norms, aux_off, rows_off, pieces })
}

/// Verifies the pieces of `h` that `wanted` selects (all on all cores): the problems,
/// in file order, at most `limit` of them.
fn damage(bytes: &[u8], h: &Header, wanted: impl Fn(Section) -> bool + Sync, limit: usize) -> Vec<String> {
    let failed = |(i, p): (usize, &Piece)| {
        (wanted(p.section) && crc32(&bytes[p.bytes.clone()]) != p.crc)
            .then(|| (i, format!("{} fail their checksum", p.describe(h.precision.image_layout()))))
    };
    // On the calling thread in a forked child, whose inherited rayon pool may have no
    // threads left to run a job (see `crate::fork`).
    let mut bad: Vec<(usize, String)> = if crate::fork::threads() > 1 {
        h.pieces.par_iter().enumerate().filter_map(failed).collect()
    } else {
        h.pieces.iter().enumerate().filter_map(failed).collect()
    };
    bad.sort_by_key(|b| b.0);
    bad.into_iter().take(limit).map(|b| b.1).collect()
}

/// Every record of the records section, or what is wrong with it.
fn read_records(bytes: &[u8], h: &Header) -> Result<Vec<Record>, String> {
    let mut r = Reader { bytes: &bytes[..h.records.end], at: h.records.start };
    let mut records = Vec::with_capacity(h.rows.min(h.records.len() / MIN_RECORD_BYTES));
    for i in 0..h.rows {
        records.push(read_record(&mut r).ok_or_else(|| format!("record {i} of {} does not decode", h.rows))?);
    }
    if r.at != h.records.end {
        return Err(format!("{} bytes follow the last record", h.records.end - r.at));
    }
    Ok(records)
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

/// The mapped sections of an image a precision's rows are built from (see
/// [`crate::vectors::PrecisionKind::from_image`]).
pub struct ImageSections<'a> {
    pub dim: usize,
    rows: usize,
    map: &'a Arc<MmapMut>,
    aux_off: usize,
    rows_off: usize,
}

impl ImageSections<'_> {
    /// The aux section as rows of `dim` values (an image whose aux holds rows).
    pub fn aux_arena<T: ZeroBits>(&self) -> Arena<T> {
        mapped_arena(self.map, self.aux_off, self.rows, self.dim)
    }

    /// The search rows.
    pub fn search_arena<T: ZeroBits>(&self) -> Arena<T> {
        mapped_arena(self.map, self.rows_off, self.rows, self.dim)
    }

    /// The aux section as one f32 per row (an image whose aux holds one per row).
    pub fn aux_per_row(&self) -> Vec<f32> {
        f32s(&self.map[self.aux_off..self.aux_off + self.rows * 4])
    }
}

/// What the store says an image must be: its token (from `meta`), position and dimension.
pub struct Expected<'a> {
    pub token: &'a str,
    pub epoch: u64,
    pub seq: u64,
    pub dim: Option<usize>,
}

/// What [`load`] found beside the store.
pub enum Loaded {
    /// The replica the image holds, at the image's (epoch, seq), every section it uses
    /// verified.
    Image(Box<State>),
    /// No image, or one that is not this store's current one (another store's, a position
    /// the store has left, another precision or format version): not damage.
    Unused,
    /// The image is damaged (what is wrong, in words): it was not used.
    Damaged(String),
}

/// The replica held by the image at `file` when the image is whole and fits `expected`.
///
/// Every section the replica will use (records, norms, and the rows of its precision) is
/// checked against its CRC here, before the replica exists: no row is scored or returned
/// before it was verified. The chunks are verified in parallel, through the mapping, so
/// the pages are resident when the first search comes.
pub fn load(file: &Path, expected: &Expected<'_>, precision: Precision) -> Loaded {
    let Ok(f) = File::open(file) else { return Loaded::Unused };
    match f.metadata() {
        Ok(m) if m.len() < HEADER_BYTES as u64 => {
            return Loaded::Damaged(format!("truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header", m.len()))
        }
        Ok(_) => {}
        Err(_) => return Loaded::Unused,
    }
    // SAFETY: the mapping is private (copy-on-write), so our writes never reach the file.
    // Images are only ever replaced by rename, never rewritten in place, so the mapped
    // file does not change under us.
    let Ok(map) = (unsafe { MmapOptions::new().map_copy(&f) }) else { return Loaded::Unused };
    // The checksums read every page: map them all in one call rather than one fault per
    // few pages (read-only population: no page is copied). Not `MAP_POPULATE`, which on a
    // private writable mapping copies every page. Older kernels refuse the advice; the
    // pages then fault in as the checksums read them.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::PopulateRead);
    from_map(Arc::new(map), Some(expected), precision)
}

/// [`load`] on an image's bytes in `map`; with `expected` None, any store's image fits.
fn from_map(map: Arc<MmapMut>, expected: Option<&Expected<'_>>, precision: Precision) -> Loaded {
    let h = match parse_header(&map) {
        Ok(h) => h,
        Err(Unread::OtherVersion) => return Loaded::Unused,
        Err(Unread::Damaged(why)) => return Loaded::Damaged(why),
    };
    // A precision may read another's image (f16 the half rows of an f32 one).
    let usable = precision.reads_image_of(h.precision);
    let fits =
        expected.is_none_or(|e| token_bytes(e.token) == Some(h.token) && h.epoch == e.epoch && h.seq <= e.seq && e.dim == Some(h.dim));
    if !usable || !fits {
        return Loaded::Unused;
    }
    // An image's aux section serves stores of its own precision only.
    let uses_aux = h.precision == precision;
    if let Some(why) = damage(&map, &h, |s| s != Section::Aux || uses_aux, 1).pop() {
        return Loaded::Damaged(why);
    }
    let records = match read_records(&map, &h) {
        Ok(r) => r,
        Err(why) => return Loaded::Damaged(why),
    };
    let inv_norm = f32s(&map[h.norms.clone()]);
    let vectors =
        precision.rows_from_image(&ImageSections { dim: h.dim, rows: h.rows, map: &map, aux_off: h.aux_off, rows_off: h.rows_off });
    match State::from_image(h.dim, h.epoch, h.seq, records, vectors, inv_norm) {
        Ok(st) => Loaded::Image(Box::new(st)),
        Err(e) => Loaded::Damaged(format!("the records do not form a store: {e}")),
    }
}

/// The problems of an image's bytes, checked on their own (its checksums and structure,
/// not whether it is current for a store): empty when whole. An image of another format
/// version is not damage (it is never read, and rewritten at the next close): empty too.
pub fn verify_bytes(bytes: &[u8]) -> Vec<String> {
    let h = match parse_header(bytes) {
        Ok(h) => h,
        Err(Unread::OtherVersion) => return Vec::new(),
        Err(Unread::Damaged(why)) => return vec![why],
    };
    let mut problems = damage(bytes, &h, |_| true, 20);
    if problems.is_empty() {
        if let Err(why) = read_records(bytes, &h) {
            problems.push(why);
        }
    }
    problems
}

/// The problems of the image at `path`, or of the image of the store at `path` when it
/// does not end in `.image`: see [`verify_bytes`]. No image is not damage: empty.
pub fn verify_file(path: &Path) -> Vec<String> {
    let file = if path.extension().is_some_and(|e| e == "image") { path.to_path_buf() } else { image_file(path) };
    let f = match File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return vec![format!("cannot be read: {e}")],
    };
    match f.metadata() {
        Ok(m) if m.len() == 0 => return verify_bytes(&[]),
        Ok(_) => {}
        Err(e) => return vec![format!("cannot be read: {e}")],
    }
    // SAFETY: a read-only private mapping, read only; images are replaced by rename,
    // never rewritten in place.
    match unsafe { MmapOptions::new().map_copy_read_only(&f) } {
        Ok(map) => verify_bytes(&map),
        Err(e) => vec![format!("cannot be read: {e}")],
    }
}

/// The image reader on arbitrary bytes, for the fuzz target (`examples/fuzz_caches.rs`):
/// [`verify_bytes`], then the loader of every precision as if the image were this store's.
/// Must never panic, read out of bounds or allocate beyond a bound set by the input's
/// length. Returns whether any precision loaded it.
#[doc(hidden)]
pub fn fuzz_read(bytes: &[u8]) -> bool {
    let _ = verify_bytes(bytes);
    if bytes.is_empty() {
        return false;
    }
    let mut loaded = false;
    for &precision in Precision::ALL {
        let Ok(mut map) = MmapMut::map_anon(bytes.len()) else { return loaded };
        map.copy_from_slice(bytes);
        loaded |= matches!(from_map(Arc::new(map), None, precision), Loaded::Image(_));
    }
    loaded
}

/// Recomputes every checksum of an image whose header still parses (after a mutation), so
/// the fuzz target reaches the structure checks behind them. False when the header does
/// not give a table to fill.
#[doc(hidden)]
pub fn fuzz_reseal(bytes: &mut [u8]) -> bool {
    let Some(h) = bytes.get(..HEADER_USED) else { return false };
    if &h[..8] != MAGIC {
        return false;
    }
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let Some(precision) = precision_of_code(u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"))) else { return false };
    let layout = precision.image_layout();
    let (dim, rows) = (word(16), word(24));
    if dim == 0 || dim > MAX_DIM as u64 || rows == 0 || rows > bytes.len() as u64 {
        return false;
    }
    let (dim, rows) = (dim as usize, rows as usize);
    let table_len = 4 * table_entries(layout, rows);
    if bytes.len() < HEADER_BYTES + table_len {
        return false;
    }
    // The pieces as a reader would cut them from the header's offsets, clamped to the file.
    let (records_off, records_len, norms_off, aux_off, rows_off) = (word(64), word(72), word(80), word(88), word(96));
    let clamp = |a: u64, len: u64| {
        let a = a.min(bytes.len() as u64) as usize;
        a..(a as u64).saturating_add(len).min(bytes.len() as u64) as usize
    };
    let mut ranges = vec![clamp(records_off, records_len), clamp(norms_off, rows as u64 * 4)];
    let chunk_ranges = |off: u64, elem: u64, out: &mut Vec<Range<usize>>| {
        for c in 0..rows.div_ceil(CHUNK_ROWS) as u64 {
            let first = c * CHUNK_ROWS as u64;
            let n = (rows as u64 - first).min(CHUNK_ROWS as u64);
            out.push(clamp(off.saturating_add(first * dim as u64 * elem), n * dim as u64 * elem));
        }
    };
    match layout.aux {
        AuxSection::Rows => chunk_ranges(aux_off, 4, &mut ranges),
        AuxSection::None => {}
        AuxSection::PerRow => ranges.push(clamp(aux_off, rows as u64 * 4)),
    }
    chunk_ranges(rows_off, layout.search_value_bytes as u64, &mut ranges);
    for (i, r) in ranges.iter().enumerate() {
        let crc = crc32(&bytes[r.clone()]);
        bytes[HEADER_BYTES + 4 * i..HEADER_BYTES + 4 * i + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..HEADER_USED]);
    hasher.update(&bytes[HEADER_BYTES..HEADER_BYTES + table_len]);
    let crc = hasher.finalize();
    bytes[HEADER_USED..HEADER_USED + 4].copy_from_slice(&crc.to_le_bytes());
    true
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
