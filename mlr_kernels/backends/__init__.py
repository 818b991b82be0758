"""AdamW kernel backends over a segment table and flat state buffers.

Every backend module exposes the same names:

    NAME: str                               "cpu", "triton", "cuda" or "reference"
    TILE_SIZE: int                          tile length (elements) it wants from the table
    READS_TENSORS: bool                     it reads ``table.params``/``table.grads`` (the tensors),
                                            not only the pointer rows (the reference does)
    unavailable_reason(device) -> str|None  why it cannot run on tensors of that device (None: it can)
    adamw_step(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles,
               grad_mult=None, found_inf=None) -> None

The contract of ``adamw_step`` (everything on ``table.device``):

* ``table`` is a :class:`~mlr_kernels.segments.SegmentTable`: per segment, a row of ``hyper``
  (float64 hyperparameters, ACTIVE flag), its entry of ``steps`` (float64 step count, this step
  included) and a row of ``pointers`` (where its parameter and
  gradient are, in ``table.dtype``: float32, bfloat16 or float16, dense, the gradient's elements
  in the parameter's memory order, and where its state starts). The caller guarantees that every
  pointer row describes live memory of that size.
* ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (only when some segment uses amsgrad) and
  ``master`` (the float32 copy of bfloat16/float16 parameters; required then, ``None`` for float32)
  are contiguous 1-D float32 buffers of ``table.length`` elements.
* ``tiles``: int64 ``[T, 3]`` rows ``(segment, start, end)`` in state coordinates (from
  ``table.tiles``). Segments with ACTIVE == 0, and elements outside every tile, are not touched.
* ``grad_mult`` (float32, one element, or ``None``) multiplies every gradient: the inverse grad
  scale of a GradScaler. ``found_inf`` (float32, one element, or ``None``): when nonzero the kernel
  writes nothing. Both are read on the device, so no host sync is needed.

Per element, in float32, with scalars from the segment's row (bias corrections in float64), as
``torch.optim.AdamW``'s single-tensor path computes it::

    g  = grad * grad_mult;  g = -g if maximize
    p  = master if master is not None else param
    p  = param if master is not None and float(round_to_nearest_even(master)) != float(param)
         (user code wrote the low-precision weight since the last step: start from it)
    p *= 1 - lr * weight_decay
    m  = m + (1 - beta1) * (g - m)
    v  = beta2 * v + (1 - beta2) * g * g
    vmax = max(vmax, v) if amsgrad
    p -= lr / (1 - beta1**step) * m / (sqrt(vmax if amsgrad else v) / sqrt(1 - beta2**step) + eps)
    write m, v (, vmax), p, and param = round_to_nearest_even(p) when param is low precision
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

BACKENDS = ("cpu", "triton", "cuda", "reference")


def load_backend(name: str) -> ModuleType:
    """Import a backend module by name (``cpu``, ``triton``, ``cuda`` or ``reference``)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    return importlib.import_module(f"mlr_kernels.backends.{name}")


def try_load_backend(name: str) -> ModuleType | None:
    """The backend module, or None when it cannot be imported."""
    try:
        return load_backend(name)
    except ImportError:
        return None


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why backend ``name`` cannot run on tensors of ``device``; None when it can."""
    module = try_load_backend(name)
    if module is None:
        return f"the {name} backend could not be imported"
    return module.unavailable_reason(torch.device(device))


def resolve_backend(name: str, device: torch.device | str) -> ModuleType:
    """The backend module to use for tensors on ``device``.

    ``auto`` picks the fastest available (CUDA then Triton on a GPU, the C++ kernel on the CPU) and
    falls back, with a warning, to the slow ``reference``. A named backend that cannot run on
    ``device`` raises ``RuntimeError`` saying why."""
    device = torch.device(device)
    if name != "auto":
        load_backend(name)  # ValueError for an unknown name
        reason = unavailable_reason(name, device)
        if reason is not None:
            raise RuntimeError(f"backend {name!r} cannot run on {device}: {reason}")
        return load_backend(name)
    candidates = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    reasons = []
    for candidate in candidates:
        reason = unavailable_reason(candidate, device)
        if reason is None:
            return load_backend(candidate)
        reasons.append(f"{candidate}: {reason}")
    warnings.warn(f"no compiled MLRAdamW kernel for {device} ({'; '.join(reasons)}); using the "
                  "slow reference backend", stacklevel=3)
    return load_backend("reference")
