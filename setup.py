"""Builds rnnkern's compiled extensions (the package's metadata is in pyproject.toml): rnnkern._C, the
operators and kernels, and rnnkern._testing, hooks that only the tests import.

The C++ sources in csrc/ (the operator schemas and the CPU kernels) are always built. CUDA sources
(csrc/cuda/*.cu) are added when this torch is a CUDA build and nvcc is found; the decision does not
depend on a GPU being visible (CI builds the CUDA code on machines without one).

Environment:
  RNNKERN_NO_CUDA=1        build the CPU part only, even with a CUDA torch and nvcc
  CUDA_HOME                the CUDA toolkit (default: /usr/local/cuda, else the one holding nvcc)
  TORCH_CUDA_ARCH_LIST     GPU architectures (default: "8.0;9.0+PTX")
  MAX_JOBS                 parallel compile jobs (ninja)
  RNNKERN_DEBUG=1          -O0 -g
  RNNKERN_WERROR=0         warnings in rnnkern's own C++ are not errors (default: they are)
  RNNKERN_SANITIZE=address build the C++ with AddressSanitizer (make asan; load with LD_PRELOAD)
  RNNKERN_PTXAS_REPORT=1   print each CUDA kernel's registers, shared memory and stack (ptxas)
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _import_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(
            "rnnkern builds against the installed torch. Install torch first, then build without "
            "build isolation:\n  pip install torch && pip install --no-build-isolation -e ."
        )
    import torch

    return torch


def find_cuda_home() -> Path | None:
    """The CUDA toolkit to build with: CUDA_HOME, /usr/local/cuda, or the one nvcc belongs to."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return Path(candidate)
    return None


def cuda_library_includes() -> list[str]:
    """Headers of the CUDA libraries ATen's CUDA headers include (cublas_v2.h, cusparse.h, ...).

    pip's CUDA torch carries them in site-packages/nvidia/<...>/include rather than in the toolkit.
    """
    dirs = []
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            dirs += sorted(str(p) for p in nvidia.glob("*/include") if p.is_dir())
    return dirs


def build_with_cuda(torch, cuda_sources: list[str]) -> Path | None:
    """The CUDA toolkit to build the CUDA kernels with, or None; a CPU-only build says so, and why,
    in one line."""
    if os.environ.get("RNNKERN_NO_CUDA") == "1":
        reason = "RNNKERN_NO_CUDA=1"
    elif torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU-only build"
    elif not cuda_sources:
        reason = "no CUDA sources in csrc/cuda"
    elif (cuda_home := find_cuda_home()) is None:
        reason = "nvcc not found (set CUDA_HOME to build them)"
    else:
        return cuda_home
    print(f"rnnkern: building the CPU kernels only; the CUDA kernels are left out ({reason})")
    return None


def extension_modules():
    torch = _import_torch()
    from torch.utils import cpp_extension

    debug = os.environ.get("RNNKERN_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_sources = sorted(
        glob.glob("csrc/*.cpp") + glob.glob("csrc/layer/*.cpp") + glob.glob("csrc/cpu/*.cpp")
    )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    # The test-only module: the persistent kernels' plan and CPU emulation, built with or without CUDA.
    testing_sources = sorted(glob.glob("csrc/testing/*.cpp"))
    # Warnings are errors in our code only: torch's headers go in as system headers (GCC then ignores
    # the -I cpp_extension also adds for them).
    system_includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    werror = [] if os.environ.get("RNNKERN_WERROR") == "0" else ["-Werror"]
    sanitize = os.environ.get("RNNKERN_SANITIZE")
    sanitizer = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"] if sanitize else []
    cxx_flags = [*opt, "-fopenmp", "-Wall", "-Wextra", *werror, *sanitizer, *system_includes]

    def cpp_extension_module(name: str, sources: list[str]):
        return cpp_extension.CppExtension(
            name,
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp", *sanitizer],
        )

    testing = cpp_extension_module("rnnkern._testing", testing_sources)
    cuda_home = build_with_cuda(torch, cuda_sources)
    if cuda_home is None:
        return [cpp_extension_module("rnnkern._C", cxx_sources), testing]

    # torch.utils.cpp_extension reads these at import; set them before it builds anything.
    os.environ["CUDA_HOME"] = str(cuda_home)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    cpp_extension.CUDA_HOME = str(cuda_home)
    return [
        cpp_extension.CUDAExtension(
            "rnnkern._C",
            cxx_sources + cuda_sources,
            include_dirs=cuda_library_includes(),
            extra_compile_args={
                "cxx": [*cxx_flags, "-DRNNKERN_WITH_CUDA"],
                "nvcc": [
                    *opt,
                    "-DRNNKERN_WITH_CUDA",
                    "--expt-relaxed-constexpr",
                    "-lineinfo",
                    # A kernel that spills registers to local memory fails the build (and so CI);
                    # RNNKERN_PTXAS_REPORT=1 also prints each kernel's registers, shared memory
                    # and stack (what tools/ptxas_report.py reads).
                    "-Xptxas=--warn-on-spills,--warning-as-error"
                    + (",--verbose" if os.environ.get("RNNKERN_PTXAS_REPORT") == "1" else ""),
                ],
            },
            extra_link_args=["-fopenmp"],
        ),
        testing,
    ]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=extension_modules(), cmdclass=cmdclass())
