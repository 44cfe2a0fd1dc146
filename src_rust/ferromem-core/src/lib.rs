//! ferromem engine core. No Python here: the PyO3 crate `ferromem-py` wraps it.
pub mod simd;
