"""CUDA C++ backend: the kernel of ``csrc/adamw_cuda.cu``, called through ctypes.

``stream_4r3w`` is the bandwidth ceiling the benchmarks compare against: the same memory traffic as
an fp32 step (28 bytes per parameter) with no math, with the kernel's 16-byte accesses.

``setup.py`` compiles that file with nvcc into ``mlr_kernels/_adamw_cuda.so`` when nvcc exists. The
library is loaded on the first call with a CUDA tensor, never at import, so this module imports
anywhere. Arguments are checked here, at the boundary: the kernel trusts its pointers. It launches
on the current stream of the buffers' device and reads ``grad_mult``/``found_inf``/``hyper`` on
the device, so a step neither syncs nor breaks a CUDA-graph capture.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from mlr_kernels.backends.checks import check_step_args, check_stream_args
from mlr_kernels.segments import DTYPE_CODES, STATE_DTYPE_CODES, VECTOR_BYTES, SegmentTable

NAME = "cuda"
# It reads only the segment table's rows (addresses), not table.params or table.grads.
READS_TENSORS = False
TILE_SIZE = 1 << 14
LIBRARY_PATH = Path(__file__).resolve().parent.parent / "_adamw_cuda.so"
_MAX_GRID_BLOCKS = 2**31 - 1

_library: ctypes.CDLL | None = None
_load_error: str | None = None


def _load_library() -> ctypes.CDLL | None:
    """The kernel library, loaded once; None (and ``_load_error`` set) when it cannot be."""
    global _library, _load_error
    if _library is not None or _load_error is not None:
        return _library
    if not LIBRARY_PATH.exists():
        _load_error = "the CUDA kernel library was not built (nvcc missing at install time)"
        return None
    try:
        library = ctypes.CDLL(str(LIBRARY_PATH))
    except OSError as error:
        _load_error = f"the CUDA kernel library {LIBRARY_PATH} cannot be loaded ({error})"
        return None
    pointer = ctypes.c_void_p
    library.mlr_adamw_cuda_step.argtypes = [
        pointer, pointer, pointer, pointer, ctypes.c_int64,  # hyper, pointers, steps, tiles, num_tiles
        ctypes.c_int, ctypes.c_int,  # dtype, state dtype
        pointer, pointer, pointer, pointer, pointer,  # master, compensation, exp_avg, exp_avg_sq, max
        pointer, pointer, pointer,  # grad_mult, found_inf, stream
    ]
    library.mlr_adamw_cuda_step.restype = ctypes.c_int
    library.mlr_stream_4r3w_cuda.argtypes = [pointer, pointer, pointer, pointer, ctypes.c_int64, pointer]
    library.mlr_stream_4r3w_cuda.restype = ctypes.c_int
    library.mlr_adamw_cuda_error_string.argtypes = [ctypes.c_int]
    library.mlr_adamw_cuda_error_string.restype = ctypes.c_char_p
    _library = library
    return _library


def unavailable_reason(device: torch.device | str) -> str | None:
    """None for CUDA tensors when torch sees a GPU and the kernel library loads; else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the CUDA kernel runs on CUDA tensors only, not {device.type}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if _load_library() is None:
        return _load_error
    return None


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


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
    """One AdamW step over every active tile, in one launch. See ``mlr_kernels.backends``.

    With ``max_exp_avg_sq`` None the AMSGRAD column is not read: checking it would sync."""
    reason = unavailable_reason(table.device)
    if reason is not None:
        raise RuntimeError(f"the CUDA backend cannot run on {table.device}: {reason}")
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf,
                    compensation)
    state = {"master": master, "compensation": compensation, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
             "max_exp_avg_sq": max_exp_avg_sq}
    misaligned = [name for name, t in state.items() if t is not None and t.data_ptr() % VECTOR_BYTES]
    if misaligned:
        raise ValueError(f"{', '.join(misaligned)} must start on a {VECTOR_BYTES}-byte boundary "
                         "for the kernel's vector accesses (a view at an offset?)")
    num_tiles = tiles.shape[0]
    if num_tiles > _MAX_GRID_BLOCKS:
        raise ValueError(f"{num_tiles} tiles exceed one launch's {_MAX_GRID_BLOCKS} blocks; "
                         "use a larger tile size")
    if num_tiles == 0:
        return
    library = _load_library()
    with torch.cuda.device(table.device):
        error = library.mlr_adamw_cuda_step(
            _address(table.hyper), _address(table.pointers), _address(table.steps), _address(tiles),
            num_tiles, DTYPE_CODES[table.dtype], STATE_DTYPE_CODES[exp_avg.dtype], _address(master),
            _address(compensation), _address(exp_avg), _address(exp_avg_sq), _address(max_exp_avg_sq),
            _address(grad_mult), _address(found_inf),
            torch.cuda.current_stream(table.device).cuda_stream,
        )
    if error:
        message = library.mlr_adamw_cuda_error_string(error).decode()
        raise RuntimeError(f"the AdamW CUDA kernel failed to launch: {message} (cudaError {error})")


def stream_4r3w(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> None:
    """``a += d; b += d; c += d`` over four float32 CUDA vectors of one length, on the current
    stream: fp32 AdamW's traffic (28 bytes per element) with no math. See the CPU backend's."""
    reason = unavailable_reason(a.device)
    if reason is not None:
        raise RuntimeError(f"the CUDA backend cannot run on {a.device}: {reason}")
    check_stream_args("cuda", a=a, b=b, c=c, d=d)
    misaligned = [name for name, t in zip("abcd", (a, b, c, d)) if t.data_ptr() % VECTOR_BYTES]
    if misaligned:
        raise ValueError(f"{', '.join(misaligned)} must start on a {VECTOR_BYTES}-byte boundary")
    library = _load_library()
    with torch.cuda.device(a.device):
        error = library.mlr_stream_4r3w_cuda(a.data_ptr(), b.data_ptr(), c.data_ptr(), d.data_ptr(),
                                             a.numel(), torch.cuda.current_stream(a.device).cuda_stream)
    if error:
        message = library.mlr_adamw_cuda_error_string(error).decode()
        raise RuntimeError(f"the stream kernel failed to launch: {message} (cudaError {error})")
