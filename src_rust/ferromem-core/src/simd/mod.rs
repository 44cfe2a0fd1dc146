//! Similarity kernels (f32 dot products) with run-time ISA dispatch.
//!
//! The crate is compiled for the baseline ISA of its target (no `-C target-cpu`), so one
//! build runs everywhere. Each accelerated path lives in a `#[target_feature]` function and
//! is chosen at run time:
//!
//! * the best path the CPU supports is detected once (`detected_isa`);
//! * the environment variable `FERROMEM_ISA` (`scalar` | `avx2` | `avx512` | `neon`) forces a
//!   path at first use; a value that is unknown or that the CPU cannot run is reported on
//!   stderr and the detected path is used instead;
//! * `force_isa` changes the path at run time (tests, benchmarks).
//!
//! The active choice is one `AtomicU8`, so a call costs one relaxed load and a `match`.
//! The batch entry points (`dot_rows`, `dot_gather`, `dot_rows_multi`) dispatch once per
//! call and loop inside the `#[target_feature]` function, where the dot product inlines.
//!
//! Invariant that makes the `unsafe` dispatch sound: the atomic only ever holds an ISA that
//! `supported_isas()` contains (every store goes through `is_supported`).
//!
//! Length preconditions are checked here, once per call, with panics that name the broken
//! contract: the kernels below read through raw pointers and rely on them.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

pub mod bf16;
pub mod half;
pub mod int8;
mod scalar;
mod shape;

#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;

#[cfg(test)]
mod tests;

/// An instruction-set path of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, auto-vectorised for the baseline target (SSE2 on x86_64).
    Scalar,
    /// x86_64 AVX2 + FMA, 256-bit.
    Avx2,
    /// x86_64 AVX-512F, 512-bit with masked tails.
    Avx512,
    /// aarch64 Advanced SIMD, 128-bit.
    Neon,
}

impl Isa {
    /// Every variant, in order of preference from the least to the most capable.
    const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The lowercase name used by `FERROMEM_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name produced by [`Isa::name`] (ASCII case-insensitive, surrounding
    /// whitespace ignored).
    pub fn from_name(s: &str) -> Option<Isa> {
        let s = s.trim();
        Isa::ALL.into_iter().find(|isa| isa.name().eq_ignore_ascii_case(s))
    }

    /// Code stored in the dispatch atomic; 0 is reserved for "not chosen yet".
    fn code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Neon => 4,
        }
    }

    fn from_code(code: u8) -> Option<Isa> {
        match code {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            4 => Some(Isa::Neon),
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU this process runs on cannot execute the requested ISA path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnsupportedIsa(pub Isa);

impl fmt::Display for UnsupportedIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let supported: Vec<&str> = supported_isas().into_iter().map(Isa::name).collect();
        write!(f, "ISA '{}' is not supported by this CPU (supported: {})", self.0.name(), supported.join(", "))
    }
}

impl std::error::Error for UnsupportedIsa {}

/// Whether this CPU can run `isa`. Cheap after the first call: std caches the CPUID bits.
fn is_supported(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The best path this CPU supports.
pub fn detected_isa() -> Isa {
    supported_isas().pop().unwrap_or(Isa::Scalar)
}

/// Every path this CPU can run, `Scalar` first and the best last.
pub fn supported_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|&isa| is_supported(isa)).collect()
}

/// 0 = not chosen yet; otherwise `Isa::code` of a supported ISA.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

const ENV_VAR: &str = "FERROMEM_ISA";

/// The path to start with, given the value of `FERROMEM_ISA` (`None` when unset): the
/// requested one when this CPU supports it, else the detected one. A request that cannot be
/// honoured is reported on stderr rather than failing: the kernels still work, only slower
/// or faster than asked.
fn initial_isa(requested: Option<&str>) -> Isa {
    let detected = detected_isa();
    let Some(raw) = requested.filter(|raw| !raw.trim().is_empty()) else {
        return detected;
    };
    match Isa::from_name(raw) {
        Some(isa) if is_supported(isa) => isa,
        Some(isa) => {
            eprintln!("ferromem: {ENV_VAR}={raw}: {}; using '{}'", UnsupportedIsa(isa), detected.name());
            detected
        }
        None => {
            eprintln!("ferromem: {ENV_VAR}={raw}: unknown ISA (expected scalar, avx2, avx512 or neon); using '{}'", detected.name());
            detected
        }
    }
}

#[cold]
fn initialise_active() -> Isa {
    let requested = std::env::var_os(ENV_VAR);
    let chosen = initial_isa(requested.as_ref().map(|raw| raw.to_string_lossy()).as_deref());
    // compare_exchange, not store: a `force_isa` that ran while we were reading the
    // environment wins, and concurrent first callers agree on one value.
    match ACTIVE.compare_exchange(0, chosen.code(), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(current) => Isa::from_code(current).unwrap_or(Isa::Scalar),
    }
}

/// The path dispatch uses now.
#[inline]
pub fn active_isa() -> Isa {
    match Isa::from_code(ACTIVE.load(Ordering::Relaxed)) {
        Some(isa) => isa,
        None => initialise_active(),
    }
}

/// Forces the dispatch path (`Some`) or returns to the detected best path (`None`).
/// Affects every thread. Errors, changing nothing, when the CPU cannot run the path.
pub fn force_isa(isa: Option<Isa>) -> Result<(), UnsupportedIsa> {
    let isa = isa.unwrap_or_else(detected_isa);
    if !is_supported(isa) {
        return Err(UnsupportedIsa(isa));
    }
    ACTIVE.store(isa.code(), Ordering::Relaxed);
    Ok(())
}

#[cold]
#[inline(never)]
#[track_caller]
fn length_mismatch(what: &str, expected: usize, got: usize) -> ! {
    panic!("ferromem simd: {what}: expected {expected}, got {got}");
}

#[inline]
#[track_caller]
fn checked_len(count: usize, dim: usize, what: &str) -> usize {
    count.checked_mul(dim).unwrap_or_else(|| panic!("ferromem simd: {what}: {count} x {dim} overflows usize"))
}

/// Dot product of two equal-length vectors on the given path.
///
/// Panics when the lengths differ.
#[inline]
fn dot_on(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        length_mismatch("dot_f32: b.len() (must equal a.len())", a.len(), b.len());
    }
    let n = a.len();
    match isa {
        // SAFETY (every arm): `isa` is supported by this CPU (callers pass the active ISA,
        // which only ever holds supported ones, or check support first) and both pointers
        // are valid for `n` reads.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::dot(a.as_ptr(), b.as_ptr(), n) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::dot(a.as_ptr(), b.as_ptr(), n) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { aarch64_neon::dot(a.as_ptr(), b.as_ptr(), n) },
        _ => scalar::dot(a, b),
    }
}

/// Dot product of two equal-length vectors. Panics when the lengths differ.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_on(active_isa(), a, b)
}

/// [`dot_f32`] on a chosen path, whatever the active one is (for tests and benchmarks).
pub fn dot_f32_with(isa: Isa, a: &[f32], b: &[f32]) -> Result<f32, UnsupportedIsa> {
    if !is_supported(isa) {
        return Err(UnsupportedIsa(isa));
    }
    Ok(dot_on(isa, a, b))
}

/// `out[i] = dot(query, arena[i*dim..(i+1)*dim])` for `i in 0..out.len()`.
///
/// Panics when `query.len() != dim` or the arena holds fewer than `out.len()` rows.
pub fn dot_rows(query: &[f32], arena: &[f32], dim: usize, out: &mut [f32]) {
    if query.len() != dim {
        length_mismatch("dot_rows: query.len() (must equal dim)", dim, query.len());
    }
    let needed = checked_len(out.len(), dim, "dot_rows: rows x dim");
    if arena.len() < needed {
        length_mismatch("dot_rows: arena.len() (at least rows x dim)", needed, arena.len());
    }
    match active_isa() {
        // SAFETY (every arm): the active ISA is supported; `query` holds `dim` floats, the
        // arena at least `out.len() * dim`, `out` exactly `out.len()` (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::dot_rows(query.as_ptr(), arena.as_ptr(), dim, out.as_mut_ptr(), out.len()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::dot_rows(query.as_ptr(), arena.as_ptr(), dim, out.as_mut_ptr(), out.len()) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { aarch64_neon::dot_rows(query.as_ptr(), arena.as_ptr(), dim, out.as_mut_ptr(), out.len()) },
        _ => scalar::dot_rows(query, arena, dim, out),
    }
}

/// `out[j] = dot(query, arena[rows[j]*dim..(rows[j]+1)*dim])` for every `j`.
///
/// Panics when `query.len() != dim`, `rows.len() != out.len()`, or a row index lies
/// outside the arena.
pub fn dot_gather(query: &[f32], arena: &[f32], dim: usize, rows: &[u32], out: &mut [f32]) {
    if query.len() != dim {
        length_mismatch("dot_gather: query.len() (must equal dim)", dim, query.len());
    }
    if rows.len() != out.len() {
        length_mismatch("dot_gather: out.len() (must equal rows.len())", rows.len(), out.len());
    }
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    let arena_rows = arena.len() / dim;
    // One sequential pass over the indices is cheap next to `dim` multiply-adds per row,
    // and it is what lets the kernels read rows without bounds checks.
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= arena_rows) {
        panic!("ferromem simd: dot_gather: row index {bad} outside an arena of {arena_rows} rows");
    }
    match active_isa() {
        // SAFETY (every arm): the active ISA is supported; every row index is below the
        // arena's row count; `query` holds `dim` floats; `rows` and `out` as many each.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::dot_gather(query.as_ptr(), arena.as_ptr(), dim, rows.as_ptr(), out.as_mut_ptr(), out.len()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::dot_gather(query.as_ptr(), arena.as_ptr(), dim, rows.as_ptr(), out.as_mut_ptr(), out.len()) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { aarch64_neon::dot_gather(query.as_ptr(), arena.as_ptr(), dim, rows.as_ptr(), out.as_mut_ptr(), out.len()) },
        _ => scalar::dot_gather(query, arena, dim, rows, out),
    }
}

/// Several queries against a contiguous block of rows:
/// `out[q*n + i] = dot(queries[q*dim..(q+1)*dim], arena[i*dim..(i+1)*dim])`.
///
/// The work is blocked: rows in chunks that stay in cache while every query passes over
/// them, and inside a chunk register tiles of several queries x several rows, so each row
/// is loaded once per tile of queries rather than once per query.
///
/// Panics when `queries.len() != nq*dim`, the arena holds fewer than `n` rows, or
/// `out.len() != nq*n`.
pub fn dot_rows_multi(queries: &[f32], nq: usize, arena: &[f32], dim: usize, n: usize, out: &mut [f32]) {
    let query_len = checked_len(nq, dim, "dot_rows_multi: nq x dim");
    if queries.len() != query_len {
        length_mismatch("dot_rows_multi: queries.len() (must equal nq x dim)", query_len, queries.len());
    }
    let needed = checked_len(n, dim, "dot_rows_multi: n x dim");
    if arena.len() < needed {
        length_mismatch("dot_rows_multi: arena.len() (at least n x dim)", needed, arena.len());
    }
    let out_len = checked_len(nq, n, "dot_rows_multi: nq x n");
    if out.len() != out_len {
        length_mismatch("dot_rows_multi: out.len() (must equal nq x n)", out_len, out.len());
    }
    if out_len == 0 {
        return;
    }
    match active_isa() {
        // SAFETY (every arm): the active ISA is supported; `queries` holds `nq * dim`
        // floats, the arena at least `n * dim`, `out` exactly `nq * n` (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::dot_rows_multi(queries.as_ptr(), nq, arena.as_ptr(), dim, n, out.as_mut_ptr()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::dot_rows_multi(queries.as_ptr(), nq, arena.as_ptr(), dim, n, out.as_mut_ptr()) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { aarch64_neon::dot_rows_multi(queries.as_ptr(), nq, arena.as_ptr(), dim, n, out.as_mut_ptr()) },
        _ => scalar::dot_rows_multi(queries, nq, arena, dim, n, out),
    }
}

/// Rows per cache chunk in `dot_rows_multi`: enough rows to fill about `bytes` of cache,
/// rounded down to a multiple of `tile_rows`, at least one tile. Shared by every path so
/// they block the same way.
#[inline]
fn rows_per_chunk(dim: usize, tile_rows: usize, bytes: usize) -> usize {
    let row_bytes = dim.max(1) * std::mem::size_of::<f32>();
    let rows = (bytes / row_bytes) / tile_rows * tile_rows;
    rows.max(tile_rows)
}

/// Cache budget for one chunk of rows in `dot_rows_multi`: half of a typical 512 KiB-2 MiB
/// per-core L2 so the queries of a tile and the output keep their place.
const MULTI_CHUNK_BYTES: usize = 256 * 1024;
