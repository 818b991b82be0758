"""Fused multi-segment AdamW on CPU tensors: the C++ kernel of ``csrc/adamw_cpu.cpp``.

One OpenMP parallel region per step splits the tile list into one run per thread (as many threads
as ``torch.get_num_threads()``, fewer for a small step); inside a tile the element loop runs at one
SIMD level, AVX-512, AVX2 or the SSE2 baseline: the widest this CPU runs, or the one named by the
environment variable ``MLR_CPU_SIMD`` (:func:`simd_level`). Every level writes the same bits.
Arguments are checked here, then only their addresses cross into C++; the kernel itself refuses
tiles that point outside the buffers. See :mod:`mlr_kernels.backends` for the contract.

``stream_4r3w`` is the bandwidth ceiling the benchmarks compare against: the same memory traffic as
an fp32 step (28 bytes per parameter) with no math.
"""

from __future__ import annotations

import functools
import os

import torch

from mlr_kernels.backends.checks import check_step_args, check_stream_args
from mlr_kernels.segments import DTYPE_CODES, STATE_DTYPE_CODES, SegmentTable

try:
    from mlr_kernels import _cpu
except ImportError as error:
    _cpu = None
    _IMPORT_ERROR: str | None = (
        f"the C++ extension mlr_kernels._cpu cannot be imported ({error}); build it with "
        "`python setup.py build_ext --inplace` or `pip install .`"
    )
else:
    _IMPORT_ERROR = None

NAME = "cpu"
# It reads only the segment table's rows (addresses), not table.params or table.grads.
READS_TENSORS = False
# Elements per tile: enough that the per-tile work (a table row, two pow) vanishes, few enough that
# the threads' shares of a step stay even (a tile is the unit they are split by). On the 2-core
# EPYC, 16K, 64K and 256K all step a 64M fp32 buffer at 98-101% of the stream_4r3w ceiling.
TILE_SIZE = 1 << 16


# The instruction-set levels the kernel is compiled for, narrowest first; a level's index is its code
# in csrc/cpu_vectorize.h (SimdLevel).
SIMD_LEVELS = ("baseline", "avx2", "avx512")
SIMD_ENV = "MLR_CPU_SIMD"


def simd_levels() -> list[str]:
    """The SIMD levels this build has and this CPU runs, narrowest first (``[]`` without the
    extension). On x86-64 with GCC: ``baseline`` (SSE2), ``avx2`` (x86-64-v3), ``avx512``
    (x86-64-v4); elsewhere ``baseline`` only."""
    if _cpu is None:
        return []
    return [name for code, name in enumerate(SIMD_LEVELS) if _cpu.simd_level_supported(code)]


def simd_level() -> str:
    """The SIMD level :func:`adamw_step` runs at: ``$MLR_CPU_SIMD`` when set (``baseline``,
    ``avx2`` or ``avx512``; to run or test another level on this CPU, as ``ATEN_CPU_CAPABILITY``
    does for torch), else the widest in :func:`simd_levels`.

    Raises:
        RuntimeError: the extension is not built.
        ValueError: ``$MLR_CPU_SIMD`` names an unknown level or one this CPU cannot run."""
    _require_extension()
    return _resolve_simd_level(os.environ.get(SIMD_ENV, ""))


@functools.cache
def _resolve_simd_level(requested: str) -> str:
    levels = simd_levels()
    if not requested:
        return levels[-1]
    if requested not in levels:
        known = "unknown" if requested not in SIMD_LEVELS else "not supported by this CPU or build"
        raise ValueError(f"{SIMD_ENV}={requested!r} is {known}; this CPU runs: {', '.join(levels)}")
    return requested


def unavailable_reason(device: torch.device | str) -> str | None:
    """None for CPU tensors once the extension is built; else why not."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    device = torch.device(device)
    return None if device.type == "cpu" else f"the C++ kernel runs on CPU tensors only, not {device.type}"


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _require_extension() -> None:
    if _cpu is None:
        raise RuntimeError(_IMPORT_ERROR)


def adamw_step(
    table: SegmentTable,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    compensation: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile, in place. See ``mlr_kernels.backends``."""
    _require_extension()
    if table.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got a segment table on {table.device}")
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf,
                    compensation)
    _cpu.adamw_step(
        hyper=_address(table.hyper),
        pointers=_address(table.pointers),
        steps=_address(table.steps),
        num_segments=len(table),
        dtype=DTYPE_CODES[table.dtype],
        master=_address(master),
        compensation=_address(compensation),
        exp_avg=_address(exp_avg),
        exp_avg_sq=_address(exp_avg_sq),
        max_exp_avg_sq=_address(max_exp_avg_sq),
        state_dtype=STATE_DTYPE_CODES[exp_avg.dtype],
        numel=table.length,
        tiles=_address(tiles),
        num_tiles=tiles.shape[0],
        grad_mult=_address(grad_mult),
        found_inf=_address(found_inf),
        num_threads=torch.get_num_threads(),
        simd_level=SIMD_LEVELS.index(simd_level()),
    )


def stream_4r3w(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> None:
    """``a += d; b += d; c += d`` over four float32 vectors of one length: it reads 4 streams and
    writes 3, fp32 AdamW's traffic (28 bytes per element), with no math, tiled and threaded like
    :func:`adamw_step`. Time it next to a step over as many elements to get the step's bandwidth as
    a share of what this machine can move in the same run."""
    _require_extension()
    check_stream_args("cpu", a=a, b=b, c=c, d=d)
    _cpu.stream_4r3w(a=a.data_ptr(), b=b.data_ptr(), c=c.data_ptr(), d=d.data_ptr(), n=a.numel(),
                     num_threads=torch.get_num_threads(), simd_level=SIMD_LEVELS.index(simd_level()))
