"""AdamW kernel backends over flat buffers.

Every backend module exposes the same three names:

    TILE_SIZE: int               tile length (elements) the backend wants from ``make_tiles``
    is_available(device) -> bool whether it can run on tensors of that device
    adamw_step(param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq,
               hyper, tiles, grad_mult=None, found_inf=None) -> None

The contract of ``adamw_step`` (all tensors 1-D, contiguous, on one device):

* ``param``: float32, bfloat16 or float16, the weights the model sees; ``grad`` has its dtype and
  length. ``master`` is the float32 copy the optimizer keeps when ``param`` is low precision
  (required then, ``None`` for float32). ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` (only
  when some segment uses amsgrad) are float32.
* ``hyper`` is the float64 ``[S, 9]`` table of :mod:`mlr_kernels.segments`; ``tiles`` the int64
  ``[T, 3]`` tile list. Segments with ACTIVE == 0 and elements outside every tile are not touched.
* ``grad_mult`` (float32, one element, or ``None``) multiplies every gradient: the inverse grad
  scale times the clipping coefficient. ``found_inf`` (float32, one element, or ``None``): when
  nonzero the kernel writes nothing. Both are read on the device, so no host sync is needed.

Per element, in float32, with scalars from the segment's row (bias corrections in float64)::

    g  = grad * grad_mult;  g = -g if maximize
    p  = master if master is not None else param
    p *= 1 - lr * weight_decay
    m  = m + (1 - beta1) * (g - m)
    v  = beta2 * v + (1 - beta2) * g * g
    vmax = max(vmax, v) if amsgrad
    p -= lr / (1 - beta1**step) * m / (sqrt(vmax if amsgrad else v) / sqrt(1 - beta2**step) + eps)
    write m, v (, vmax), p, and param = round_to_nearest_even(p) when param is low precision
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

BACKENDS = ("cpu", "triton", "cuda", "reference")
_MODULES = {
    "cpu": "mlr_kernels.backends.cpu",
    "triton": "mlr_kernels.backends.triton",
    "cuda": "mlr_kernels.backends.cuda",
    "reference": "mlr_kernels.backends.reference",
}


def load_backend(name: str) -> ModuleType:
    """Import a backend module by name (``cpu``, ``triton``, ``cuda`` or ``reference``)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    return importlib.import_module(_MODULES[name])


def resolve_backend(name: str, device: torch.device) -> ModuleType:
    """The backend module to use for tensors on ``device``; ``auto`` picks the fastest available:
    CUDA then Triton on a GPU, the C++ kernel on the CPU."""
    candidates = (("cuda", "triton") if device.type == "cuda" else ("cpu",)) if name == "auto" else (name,)
    for candidate in candidates:
        module = _try_load(candidate)
        if module is not None and module.is_available(device):
            return module
    if name == "auto":
        return load_backend("reference")
    raise RuntimeError(f"backend {name!r} cannot run on {device}: {unavailable_reason(name, device)}")


def _try_load(name: str) -> ModuleType | None:
    try:
        return load_backend(name)
    except ImportError:
        return None


def unavailable_reason(name: str, device: torch.device) -> str:
    module = _try_load(name)
    if module is None:
        return f"the {name} backend could not be imported"
    return getattr(module, "UNAVAILABLE_REASON", None) or f"it does not support {device.type} tensors"
