"""ferromem.gpu: CuPy kernels for large similarity batches (imported lazily)."""
