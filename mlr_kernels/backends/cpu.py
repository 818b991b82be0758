"""Fused multi-segment AdamW on CPU tensors: the C++ kernel of ``csrc/adamw_cpu.cpp``.

One OpenMP parallel region per step splits the tile list into one run per thread (as many threads
as ``torch.get_num_threads()``, fewer for a small step); inside a tile the element loop runs in
AVX-512, AVX2 or SSE2, picked for the CPU when the extension loads. Arguments are checked here, then
only their addresses cross into C++; the kernel itself refuses tiles that point outside the buffers.
See :mod:`mlr_kernels.backends` for the contract.

``stream_4r3w`` is the bandwidth ceiling the benchmarks compare against: the same memory traffic as
an fp32 step (28 bytes per parameter) with no math.
"""

from __future__ import annotations

import torch

from mlr_kernels.backends.checks import check_step_args
from mlr_kernels.segments import DTYPE_CODES, SegmentTable

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
# Elements per tile: enough that the per-tile work (a table row, two pow) vanishes, few enough that
# the threads' shares of a step stay even (a tile is the unit they are split by). On the 2-core
# EPYC, 16K, 64K and 256K all step a 64M fp32 buffer at 98-101% of the stream_4r3w ceiling.
TILE_SIZE = 1 << 16


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
) -> None:
    """One AdamW step over every active tile, in place. See ``mlr_kernels.backends``."""
    _require_extension()
    if table.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got a segment table on {table.device}")
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf)
    _cpu.adamw_step(
        hyper=_address(table.hyper),
        pointers=_address(table.pointers),
        num_segments=len(table),
        dtype=DTYPE_CODES[table.dtype],
        master=_address(master),
        exp_avg=_address(exp_avg),
        exp_avg_sq=_address(exp_avg_sq),
        max_exp_avg_sq=_address(max_exp_avg_sq),
        numel=table.length,
        tiles=_address(tiles),
        num_tiles=tiles.shape[0],
        grad_mult=_address(grad_mult),
        found_inf=_address(found_inf),
        num_threads=torch.get_num_threads(),
    )


def stream_4r3w(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> None:
    """``a += d; b += d; c += d`` over four float32 vectors of one length: it reads 4 streams and
    writes 3, fp32 AdamW's traffic (28 bytes per element), with no math, tiled and threaded like
    :func:`adamw_step`. Time it next to a step over as many elements to get the step's bandwidth as
    a share of what this machine can move in the same run."""
    _require_extension()
    for name, tensor in (("a", a), ("b", b), ("c", c), ("d", d)):
        if (tensor.device.type != "cpu" or tensor.dtype != torch.float32 or tensor.dim() != 1
                or not tensor.is_contiguous() or tensor.numel() != a.numel()):
            raise ValueError(f"{name} must be a contiguous 1-D float32 CPU tensor of a's length "
                             f"({a.numel()}), got {tensor.dtype} {tuple(tensor.shape)} on "
                             f"{tensor.device}")
    _cpu.stream_4r3w(a=a.data_ptr(), b=b.data_ptr(), c=c.data_ptr(), d=d.data_ptr(), n=a.numel(),
                     num_threads=torch.get_num_threads())
