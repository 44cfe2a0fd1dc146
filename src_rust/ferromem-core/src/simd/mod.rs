//! Similarity kernels with run-time ISA dispatch. (placeholder scalar version; replaced by the SIMD work)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa { Scalar, Avx2, Avx512, Neon }

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() }

pub fn dot_rows(query: &[f32], arena: &[f32], dim: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() { *o = dot_f32(query, &arena[i * dim..(i + 1) * dim]); }
}

pub fn dot_gather(query: &[f32], arena: &[f32], dim: usize, rows: &[u32], out: &mut [f32]) {
    for (j, &r) in rows.iter().enumerate() { let r = r as usize; out[j] = dot_f32(query, &arena[r * dim..(r + 1) * dim]); }
}
