"""Builds genfast._C: CPU kernels always; CUDA kernels when nvcc is found and a GPU
is visible or GENFAST_FORCE_CUDA=1. The sources are every file under csrc/ (the same
folders CMakeLists.txt compiles), so there is one source list.

Environment:
  GENFAST_FORCE_CUDA=1   compile the CUDA kernels without a GPU (CI); a failure is an error
  GENFAST_NO_EXTENSION=1 install the pure-Python package only (reference kernels)
  TORCH_CUDA_ARCH_LIST   CUDA architectures, default "8.0;9.0"
  MAX_JOBS               parallel compile jobs (ninja)
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def _warn(msg):
    print(f"genfast setup: {msg}", file=sys.stderr)


def _extension_build():
    """Returns (ext_modules, cmdclass), or ([], {}) when no extension can be built."""
    if os.environ.get("GENFAST_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _warn("torch is not installed in the build environment: installing without compiled "
              "kernels (use pip install --no-build-isolation)")
        return [], {}

    force_cuda = os.environ.get("GENFAST_FORCE_CUDA") == "1"
    cuda_found = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    with_cuda = cuda_found and (force_cuda or torch.cuda.is_available())
    if force_cuda and not cuda_found:
        raise RuntimeError("GENFAST_FORCE_CUDA=1 but no CUDA toolkit (set CUDA_HOME) or torch is "
                           "a CPU-only build")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    cpu_sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/python/*.cpp")
    # torch picks the C++ standard; at::parallel_for is inline OpenMP, so without
    # -fopenmp the CPU kernels would run on one thread.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "genfast._C",
            cpu_sources + _sources("csrc/cuda/*.cu"),
            define_macros=[("GENFAST_WITH_CUDA", None)],
            extra_link_args=["-fopenmp"],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
        )
    else:
        ext = cpp_extension.CppExtension("genfast._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=["-fopenmp"])

    class BuildExt(cpp_extension.BuildExtension):
        """A failed CUDA build falls back to the CPU kernels, a failed CPU build (or no
        compiler at all) to the reference ops, unless the build was forced or strict
        (CI must fail loudly)."""

        def build_extensions(self):
            try:
                super().build_extensions()
                return
            except Exception as exc:  # compiler missing or a compile error
                if force_cuda or os.environ.get("GENFAST_STRICT_BUILD") == "1":
                    raise
                failure = exc
            if with_cuda:
                _warn(f"building the CUDA kernels failed ({failure}); retrying with CPU kernels only")
                ext.sources = cpu_sources
                ext.define_macros = []
                ext.extra_compile_args = {"cxx": cxx_flags}
                try:
                    super().build_extensions()
                    return
                except Exception as exc:
                    failure = exc
            _warn(f"building genfast._C failed ({failure}); genfast will use its reference implementations")
            self.extensions = []  # nothing to install or copy

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
