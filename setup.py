"""Build both native extensions into one wheel.

* ``ferromem._core``: the PyO3 crate in src_rust/ferromem-py, built by setuptools-rust
  (which hooks cargo into ``build_ext``), always in release mode.
* ``ferromem._buffers``: the Cython data plane in src_cython/.

Metadata and options are in setup.cfg; the build requirements in pyproject.toml.

``FERROMEM_ABI3=1`` builds both against CPython's stable ABI (the limited API of 3.11),
so that one wheel (tagged ``cp311-abi3``) loads on every CPython from 3.11 on: this is
the wheel carried to a machine that has another Python and no Rust toolchain
(gpu/build_device_wheel.sh). 3.11, because both modules read vectors through the buffer
protocol, which entered the limited API in 3.11. Without the variable the build is the
ordinary one, for the running interpreter only (and for 3.10 too).
"""

import os
import sys

import Cython
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension, Strip

# The oldest CPython an abi3 build supports, as (major, minor).
ABI3_MINIMUM = (3, 11)


def abi3_requested() -> bool:
    """Whether FERROMEM_ABI3 asks for the stable-ABI build ("1"), or not ("0" or unset)."""
    value = os.environ.get("FERROMEM_ABI3", "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"FERROMEM_ABI3 must be 1 (stable-ABI build) or 0 (ordinary build), got {value!r}")
    if value != "1":
        return False
    if sys.version_info[:2] < ABI3_MINIMUM:
        minimum = "{}.{}".format(*ABI3_MINIMUM)
        raise SystemExit(
            f"FERROMEM_ABI3=1 needs CPython {minimum} or later to build (the buffer protocol is in "
            f"the limited API from {minimum} on); this is {sys.version_info[0]}.{sys.version_info[1]}"
        )
    cython_version = tuple(int(part) for part in Cython.__version__.split(".")[:2] if part.isdigit())
    if cython_version < (3, 1):
        raise SystemExit(
            f"FERROMEM_ABI3=1 needs Cython 3.1 or later (limited-API memoryviews); this is Cython {Cython.__version__}"
        )
    return True


ABI3 = abi3_requested()
# The limited API's version as CPython's hex form (0x030B0000 for 3.11), and the wheel tag.
LIMITED_API_HEX = "0x{:02X}{:02X}0000".format(*ABI3_MINIMUM)
ABI3_TAG = "cp{}{}".format(*ABI3_MINIMUM)

# setuptools-rust reads bdist_wheel's py_limited_api: with it, cargo builds PyO3 with the
# feature abi3-py311 (the stable ABI), and the wheel is tagged cp311-abi3. The stable-ABI
# build has a build folder of its own: a wheel packs everything under build/lib, and the
# ordinary build's modules there must not travel in the abi3 wheel beside their abi3 twins.
ABI3_OPTIONS = {
    "bdist_wheel": {"py_limited_api": ABI3_TAG},
    "build": {"build_base": os.path.join("build", "abi3")},
}

cython_extensions = cythonize(
    [
        Extension(
            "ferromem._buffers",
            ["src_cython/ferromem/_buffers.pyx"],
            # The stable-ABI wheel travels: no debug information (-g0 overrides Python's -g).
            extra_compile_args=["-O3", "-g0"] if ABI3 else ["-O3"],
            define_macros=[("Py_LIMITED_API", LIMITED_API_HEX)] if ABI3 else [],
            py_limited_api=ABI3,
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
            # The stable-ABI wheel travels: its library loses the local symbols (`strip -x`
            # after cargo, so cargo's own build of the crates is the ordinary build's).
            strip=Strip.All if ABI3 else Strip.No,
        )
    ],
    options=ABI3_OPTIONS if ABI3 else {},
)
