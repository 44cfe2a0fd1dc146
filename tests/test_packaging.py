"""Packaging: the gpu extras, the sdist's contents, and an import of ferromem that leaves
CuPy alone.

* The extras are read from setup.cfg (what pip resolves for ``pip install ".[gpu]"``),
  their markers evaluated for Linux, Windows and macOS, and each is named in the install
  page of the docs.
* The sdist's file list is computed by setuptools' own MANIFEST.in machinery (the code
  ``setup.py sdist`` runs) over the source folders, so a rule that drops gpu/ or lets the
  device wheel (gpu/dist/) into the sdist is caught without building anything.
* ``import ferromem`` and ``import ferromem.gpu`` run in a child interpreter that has a
  stand-in ``cupy`` package on its path, which records being imported: CuPy is loaded
  lazily, only when the GPU path is asked for, whether or not it is installed.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

# Each gpu extra: the CuPy wheel it installs and the CUDA major version of that wheel and
# of the CUDA libraries that come with it (NVIDIA's wheels, so that only a driver is needed).
GPU_EXTRAS = {
    "gpu": ("cupy-cuda12x", 12),
    "gpu-cuda12": ("cupy-cuda12x", 12),
    "gpu-cuda13": ("cupy-cuda13x", 13),
}
# What the GPU path uses of CUDA: the runtime, cuBLAS (matrix products), NVRTC (kernels).
CUDA_LIBRARIES = {"cudart", "cublas", "nvrtc"}


def _gpu_extras() -> dict[str, list[Requirement]]:
    """setup.cfg's extras named gpu*, each as its list of requirements."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    section = config["options.extras_require"]
    return {
        name: [Requirement(line) for line in section[name].splitlines() if line.strip()]
        for name in section
        if name.startswith("gpu")
    }


def _installed_on(requirements: list[Requirement], platform: str) -> list[Requirement]:
    """The requirements of an extra that pip installs on ``platform`` (a sys.platform)."""
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"sys_platform": platform})]


def _summary(requirements: list[Requirement]) -> list[tuple[str, str, list[str]]]:
    return sorted((r.name, str(r.specifier), sorted(r.extras)) for r in requirements)


def test_setup_cfg_declares_the_gpu_extras():
    assert sorted(_gpu_extras()) == sorted(GPU_EXTRAS)


@pytest.mark.parametrize("extra", sorted(GPU_EXTRAS))
def test_gpu_extra_installs_cupy_and_the_cuda_libraries_of_one_major(extra):
    wheel, major = GPU_EXTRAS[extra]
    for platform in ("linux", "win32"):
        added = {r.name: r for r in _installed_on(_gpu_extras()[extra], platform)}
        assert sorted(added) == sorted([wheel, "cuda-toolkit"]), (extra, platform)
        # CuPy 14 finds the CUDA libraries of NVIDIA's wheels (cuda-pathfinder); 13 is not relied on.
        assert not added[wheel].specifier.contains("13.6.0"), added[wheel]
        assert added[wheel].specifier.contains("14.2.0"), added[wheel]
        toolkit = added["cuda-toolkit"]
        assert toolkit.extras == CUDA_LIBRARIES, toolkit
        assert toolkit.specifier.contains(f"{major}.9.0"), toolkit
        assert not toolkit.specifier.contains(f"{major + 1}.0.0"), toolkit
        assert not toolkit.specifier.contains(f"{major - 1}.9.0"), toolkit


@pytest.mark.parametrize("extra", sorted(GPU_EXTRAS))
def test_gpu_extra_installs_nothing_on_macos(extra):
    # No CUDA on macOS and no CuPy wheels for it: the extra must not make pip fail there.
    assert _installed_on(_gpu_extras()[extra], "darwin") == []


def test_default_gpu_extra_is_the_cuda12_one():
    extras = _gpu_extras()
    assert _summary(extras["gpu"]) == _summary(extras["gpu-cuda12"])


def test_gpu_extras_are_documented():
    page = (ROOT / "docs" / "gpu_install.md").read_text(encoding="utf-8")
    for extra, (wheel, _major) in GPU_EXTRAS.items():
        assert f'".[{extra}]"' in page, extra
        assert wheel in page, wheel


# --------------------------------------------------------------------------- the sdist


def _source_files() -> list[str]:
    """The files an sdist could take: the repository's files, without VCS data, virtual
    environments and build outputs (which MANIFEST.in never grafts), plus stand-ins for
    the build outputs that do sit inside grafted folders."""
    skipped_dirs = {"build", "dist", "target", "node_modules", "__pycache__"}
    files = []
    for folder, dirs, names in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        # Hidden folders: VCS data, virtual environments, tool caches.
        dirs[:] = [d for d in dirs if d not in skipped_dirs and not d.startswith(".")]
        files.extend((relative / name).as_posix() for name in names)
    files += [
        "gpu/dist/ferromem-0.1.0-cp311-abi3-linux_x86_64.whl",
        "src_rust/target/release/lib_core.so",
        "src_cython/ferromem/_buffers.c",
        "src_py/ferromem/_core.abi3.so",
    ]
    return files


@pytest.fixture(scope="module")
def sdist_files() -> set[str]:
    from setuptools.command.egg_info import FileList  # the test extra installs setuptools

    file_list = FileList()
    file_list.set_allfiles(_source_files())
    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            file_list.process_template_line(line)
    return set(file_list.files)


def test_sdist_has_the_gpu_package_and_its_build_script(sdist_files):
    gpu_sources = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "gpu").rglob("*")
        if path.is_file() and path.suffix in (".py", ".sh") and "dist" not in path.parts
    )
    assert "gpu/__init__.py" in gpu_sources
    assert "gpu/build_device_wheel.sh" in gpu_sources
    assert set(gpu_sources) <= sdist_files, sorted(set(gpu_sources) - sdist_files)


def test_sdist_has_what_the_build_needs(sdist_files):
    needed = {
        "setup.py",
        "setup.cfg",
        "pyproject.toml",
        "src_cython/ferromem/_buffers.pyx",
        "src_rust/Cargo.toml",
        "src_rust/Cargo.lock",
        "src_rust/ferromem-py/Cargo.toml",
        "src_rust/ferromem-py/src/lib.rs",
        "src_py/ferromem/__init__.py",
    }
    assert needed <= sdist_files, sorted(needed - sdist_files)


def test_sdist_leaves_out_build_outputs(sdist_files):
    outputs = {path for path in sdist_files if path.startswith(("gpu/dist/", "src_rust/target/"))}
    outputs |= {path for path in sdist_files if path.endswith((".so", ".whl", "_buffers.c"))}
    assert not outputs, sorted(outputs)


# --------------------------------------------------------------------------- import hygiene


def test_importing_ferromem_does_not_import_cupy(tmp_path):
    # A stand-in cupy that is importable and says so when it is imported: the check then
    # fails on an eager import whether or not the real CuPy is installed here.
    stand_in = tmp_path / "cupy"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("import sys\nsys.stderr.write('STAND-IN CUPY IMPORTED\\n')\n")
    probe = textwrap.dedent(
        """
        import sys
        import ferromem
        import ferromem.gpu
        import ferromem.exceptions
        loaded = sorted(name for name in sys.modules if name == "cupy" or name.startswith(("cupy.", "cupy_")))
        print("loaded:", loaded)
        sys.exit(1 if loaded else 0)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STAND-IN CUPY IMPORTED" not in done.stderr
    # The stand-in is really the cupy this interpreter would import.
    check = subprocess.run(
        [sys.executable, "-c", "import cupy"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert "STAND-IN CUPY IMPORTED" in check.stderr, check.stderr


def test_the_postgres_extra_exists_and_needs_nothing_beyond_the_core():
    """``pip install ".[postgres]"`` must resolve (pip warns about an unknown extra): the
    backend is compiled into the core, so the extra is declared and empty, and the page
    that documents the backend says so."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    section = config["options.extras_require"]
    assert "postgres" in section
    assert [line for line in section["postgres"].splitlines() if line.strip()] == []
    assert '".[postgres]"' in (ROOT / "docs" / "postgres.md").read_text(encoding="utf-8")
