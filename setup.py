"""Build both native extensions into one wheel.

* ``ferromem._core``: the PyO3 crate in src_rust/ferromem-py, built by setuptools-rust
  (which hooks cargo into ``build_ext``), always in release mode.
* ``ferromem._buffers``: the Cython data plane in src_cython/.

Metadata and options are in setup.cfg; the build requirements in pyproject.toml.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension

cython_extensions = cythonize(
    [
        Extension(
            "ferromem._buffers",
            ["src_cython/ferromem/_buffers.pyx"],
            extra_compile_args=["-O3"],
        )
    ],
    compiler_directives={
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    },
)

setup(
    ext_modules=cython_extensions,
    rust_extensions=[
        RustExtension(
            "ferromem._core",
            path="src_rust/ferromem-py/Cargo.toml",
            binding=Binding.PyO3,
            debug=False,
        )
    ],
)
