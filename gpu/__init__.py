"""ferromem.gpu: the home of the optional GPU path (CuPy kernels for large similarity
batches, chosen per call by a dispatcher that measures batch size and hardware).

Nothing is implemented here yet: every search runs on the CPU kernels of the Rust core.
The package exists so that the layout (``gpu/`` installed as ``ferromem.gpu``) and the
wheel's contents stay stable when the GPU path lands, together with its ``[gpu]`` extra.
"""

__all__: list[str] = []
