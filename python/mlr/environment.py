"""The environment a run ran in, for its report: a figure means little without the versions, the
kernel and the machine that produced it.

``environment()`` gives the Python and library versions, the MLRAdamW kernel each bucket of the
run's optimizers resolved to (``MLRAdamW.backends``, as the run recorded them), the SIMD level the
C++ CPU kernel runs at (``mlr_kernels.backends.cpu.simd_level()``, which honours
``$MLR_CPU_SIMD``), whether the optimizer's per-step reads run in C++ or Python
(``mlr_kernels.host_reads.host_reads()``), the CPU model, the thread and core counts, and the device.
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlr_kernels.backends import cpu as cpu_kernel
from mlr_kernels.host_reads import host_reads

PACKAGES = ("torch", "transformers", "tokenizers", "numpy")
CPUINFO = Path("/proc/cpuinfo")


def environment(device: str, kernel_backends: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The environment of this process as a JSON-ready dict. ``device``: the torch device the
    run used; ``kernel_backends``: the optimizer's ``backends`` mapping of the run, e.g.
    ``{"cpu/torch.float32": "cpu"}`` (None: no optimizer ran)."""
    return {
        "python": platform.python_version(),
        **{name: importlib.import_module(name).__version__ for name in PACKAGES},
        "kernel_backends": None if kernel_backends is None else dict(kernel_backends),
        "simd_level": simd_level(),
        "host_reads": host_reads(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": device_name(device),
    }


def simd_level() -> str | None:
    """The SIMD level of the C++ CPU kernel (``$MLR_CPU_SIMD`` when set), or None when the
    extension is not built or ``$MLR_CPU_SIMD`` names a level this CPU cannot run (then no run
    used that kernel)."""
    try:
        return cpu_kernel.simd_level()
    except (RuntimeError, ValueError):
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str) -> str:
    """``device``, with the GPU's name for a CUDA device."""
    parsed = torch.device(device)
    if parsed.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(parsed)})"
    return device


def describe(env: Mapping[str, Any]) -> str:
    """The environment in one paragraph, for report.md."""
    backends = env["kernel_backends"]
    kernels = ("not recorded" if not backends
               else ", ".join(f"{bucket}: {name}" for bucket, name in backends.items()))
    return (f"Python {env['python']}, "
            + ", ".join(f"{name} {env[name]}" for name in PACKAGES)
            + f"; MLRAdamW kernel {kernels}, CPU SIMD level {env['simd_level'] or 'n/a'}, "
            f"host reads in {env.get('host_reads', 'n/a')}; "
            f"CPU {env['cpu']} ({env['cpu_count']} logical CPUs), {env['torch_threads']} torch "
            f"thread(s) per process; device {env['device']}.")
