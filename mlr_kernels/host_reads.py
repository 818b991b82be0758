"""The per-parameter reads of the optimizer's per-step check, in C++ where the build allows.

At every step :meth:`FlatBucket.sync <mlr_kernels.flat.FlatBucket.sync>` reads, for each parameter,
its address and layout (shape, strides and dtype: ``p.data = p.data.t()`` keeps a square
parameter's address), its ``.grad``, and whether that gradient is a dense tensor in row-major
order and at which address; of a DTensor parameter (FSDP2), of its local shard and its gradient's
local shard. In Python each read is a call into torch of 70-150 ns with warm caches; right
after a CPU step that streamed its state through them, the whole check then takes 1.0-2.2 µs per
parameter (bench/RESULTS.md): most of a step's host time with thousands of small parameters.
``mlr_kernels._host`` (``csrc/host_reads.cpp``) makes the same reads in one C++ loop, and the
whole check takes 0.2-0.6 µs per parameter there (0.4-0.9 µs with every gradient re-allocated).
In the steady state of a training loop (nothing moved since the last check, :class:`KeptReads`)
it only compares addresses and layouts and builds nothing; it also compares the param groups'
values with those read at the last step (:func:`same_group_values`).

It is built against torch's headers, so only where torch is importable at build time (``pip
install --no-build-isolation``, as scripts/install.sh does), and it is used only by the torch
version it was built for. Everywhere else, and for whatever it does not read itself, the reads run
in Python here; both give the same :class:`ParamReads` (tests/test_host_reads.py).

``MLR_HOST_READS=python`` forces the Python reads (to compare the two), ``MLR_HOST_READS=c++``
the C++ ones (an error where they cannot run: scripts/test.sh sets it, so that CI checks the build);
``auto`` (or unset, or empty) uses the C++ reads where they can run.
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from itertools import compress, repeat
from typing import Any, NamedTuple

import numpy as np
import torch

from mlr_kernels.dtensor import dtensor_type, local_grad, local_tensors

_IMPORT_ERROR = ""
try:
    from mlr_kernels import _host
except ImportError as error:  # not built (an isolated build), or built against another torch's libraries
    _host = None
    _IMPORT_ERROR = str(error)

HOST_READS_ENV = "MLR_HOST_READS"
# Types whose .grad and data_ptr() no Python code overrides (through __torch_function__): the C++
# reads take only these, and leave tensors of any other type to the Python reads.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_grad_of = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_shape = operator.attrgetter("shape")
_stride = torch.Tensor.stride
_dtype = operator.attrgetter("dtype")


class ParamReads(NamedTuple):
    """What one step reads of a bucket's parameters (lists in segment order)."""

    # Each parameter's data_ptr(); None from the C++ reads when every parameter is where and as
    # (dtype, shape, strides) the kept reads (KeptReads) had it: the caller's lists of then hold.
    data_ptrs: list[int] | None
    grads: list[torch.Tensor | None]  # each parameter's .grad
    live: list[bool]  # .grad is not None
    # Each gradient's data_ptr() (0 for None), when every gradient there is is dense and
    # contiguous; else None, and the caller reads the addresses of the copies it makes.
    grad_ptrs: list[int] | None
    # The parameters' layouts, as columns with an entry per parameter: (a 64-bit hash of each
    # one's dtype, shape and strides,) from C++, (shapes, strides, dtypes) from Python. A
    # parameter's entries are equal to what the same reads gave before exactly when its dtype,
    # shape and strides are. None with data_ptrs.
    layouts: tuple[list[Any], ...] | None


@functools.cache
def _native_reason() -> str | None:
    """Why the C++ reads cannot be used (None: they can)."""
    if _host is None:
        return ("mlr_kernels._host cannot be imported (not built where torch was not importable at "
                f"build time: {_IMPORT_ERROR})")
    if _host.TORCH_VERSION != torch.__version__:
        return (f"mlr_kernels._host was built for torch {_host.TORCH_VERSION} but torch "
                f"{torch.__version__} is running; the optimizer reads its parameters in Python "
                "(slower per step) until it is rebuilt: pip install --no-build-isolation -e .")
    return None


@functools.cache
def _warn_built_for_another_torch() -> None:
    """Once per process, where ``auto`` falls back from an extension that was built but cannot be
    used (a missing one is the isolated build's expected case: no warning)."""
    if _host is not None:
        warnings.warn(_native_reason(), stacklevel=4)


def host_reads() -> str:
    """Which reads :func:`read_params` makes now: ``"c++"`` or ``"python"``. ``$MLR_HOST_READS``:
    ``auto`` (default, also when empty: C++ where built for this torch, else Python with a
    warning once if the extension was built for another torch), ``c++`` (required) or ``python``.

    Raises:
        ValueError: another value of ``$MLR_HOST_READS``.
        RuntimeError: ``MLR_HOST_READS=c++`` where the C++ reads cannot run (saying why)."""
    choice = os.environ.get(HOST_READS_ENV) or "auto"
    if choice not in ("auto", "c++", "python"):
        raise ValueError(f"{HOST_READS_ENV}={choice!r} is unknown; use auto, c++ or python")
    if choice == "python":
        return "python"
    reason = _native_reason()
    if reason is None:
        return "c++"
    if choice == "c++":
        raise RuntimeError(f"{HOST_READS_ENV}=c++, but {reason}")
    _warn_built_for_another_torch()
    return "python"


# The reads this build can make (for tests and benchmarks to run each).
HOST_READ_PATHS = ("c++", "python") if _native_reason() is None else ("python",)
_KEPT_BYTES = 24  # what the C++ reads keep per parameter (csrc/host_reads.cpp: kWords int64)


class KeptReads:
    """The addresses the C++ reads found at the last completed check of one list of parameters,
    so that the next check can tell in one pass, without building a list, that nothing moved:
    :func:`read_params` then returns None. Whenever it returns reads instead, what was kept is
    dropped (a check that then raises leaves nothing to compare with); the owner calls
    :meth:`keep` once it has acted on them (and :meth:`forget` where it cannot vouch for them)."""

    def __init__(self) -> None:
        # 24 bytes per parameter: its address, its gradient's, and a hash of its layout
        self.seen: bytearray | None = None
        self.pending = bytearray()  # where the C++ reads write those of this check
        self.fresh = False  # pending holds the addresses of the reads just returned

    def pending_for(self, count: int) -> bytearray:
        if len(self.pending) != _KEPT_BYTES * count:
            self.pending = bytearray(_KEPT_BYTES * count)
        return self.pending

    def addresses(self) -> np.ndarray | None:
        """The addresses of the reads just returned, int64 ``[parameters, 2]`` (a parameter's,
        its gradient's or -1 for None), when the C++ reads made them; else None."""
        if not self.fresh:
            return None
        return np.frombuffer(self.pending, dtype=np.int64).reshape(-1, _KEPT_BYTES // 8)[:, :2]

    def returned(self, fresh: bool) -> None:
        """:func:`read_params` returned reads (made in C++ into ``pending`` when ``fresh``):
        nothing is kept until the owner has acted on them."""
        self.seen, self.fresh = None, fresh

    def keep(self) -> None:
        """What the last :func:`read_params` found is where things are (acted on)."""
        if self.fresh:  # the next reads go to a new buffer (24 bytes a parameter, once a step)
            self.seen, self.pending = self.pending, bytearray(len(self.pending))
        else:
            self.seen = None
        self.fresh = False

    def forget(self) -> None:
        self.seen, self.fresh = None, False


def read_params(params: list[torch.Tensor], kept: KeptReads | None = None,
                sharded: bool = False) -> ParamReads | None:
    """The reads of ``params``: plain tensors or, when ``sharded``, DTensors (FSDP2), every one,
    whose local shards and their gradients' local shards are read. In C++ when
    :func:`host_reads` says so, no torch function mode is active (a mode may change what a read
    returns) and every tensor is one the C++ reads take (plain types, or DTensors whose shards
    are; gradients dense and contiguous); else in Python. None when ``kept`` (see
    :class:`KeptReads`) shows that every parameter and gradient is where the last completed check
    found it: nothing moved, nothing to read.

    Raises:
        RuntimeError: with ``sharded``, a gradient that is not sharded like its parameter (see
            :func:`~mlr_kernels.dtensor.local_grad`)."""
    if host_reads() == "c++" and not torch._C._is_torch_function_mode_enabled():
        pending = None if kept is None else kept.pending_for(len(params))
        reads = _host.read(params, _PLAIN_TYPES, None if kept is None else kept.seen, pending,
                           dtensor_type() if sharded else None)
        if reads is True:
            return None
        if reads is not None:
            if kept is not None:
                kept.returned(fresh=True)
            return ParamReads(*reads)
    if kept is not None:
        kept.returned(fresh=False)
    grads = list(map(_grad_of, params))
    if sharded:
        return reads_of(local_tensors(params), list(map(local_grad, params, grads)))
    return reads_of(params, grads)


def same_group_values(groups: list[dict], keys: tuple[str, ...],
                      optional_keys: tuple[tuple[str, object], ...], seen: tuple[list, ...]) -> bool:
    """True when the C++ reads could check that every param group in ``groups`` holds the
    values ``seen`` holds, read in Python at an earlier step as ``(list(map(itemgetter(*keys),
    groups)), *[list(map(dict.get, groups, repeat(key), repeat(default))) for key, default in
    optional_keys])``; False when a value differs, or when they could not check (not built, a
    group not a plain dict): the caller then makes the Python reads. Only for values that cannot
    change in place (no tensors, no lists): they are compared by identity, then by ``==``."""
    return host_reads() == "c++" and _host.same_group_values(groups, keys, optional_keys, seen)


def write_lr_column(lrs: list, group_index: np.ndarray, lr_mults: np.ndarray, rows: np.ndarray,
                    column: int) -> bool | None:
    """Write ``rows[:, column] = lrs[group_index] * lr_mults`` (float64: the learning rate of each
    segment, its group's times its multiplier) in C++ without numpy's per-call overhead; return
    whether a value changed. None, writing nothing, where the C++ reads cannot run or a learning
    rate is not a plain float, int or bool: the caller then writes it with numpy (a numpy
    scalar) or on the device (a tensor)."""
    if host_reads() != "c++":
        return None
    return _host.write_lr_column(lrs, group_index, lr_mults, rows, column)


def reads_of(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> ParamReads:
    """:class:`ParamReads` of ``params`` (plain tensors, or DTensors' local shards) and their
    gradients ``grads`` (read by the caller), in Python."""
    data_ptrs = list(map(_data_ptr, params))
    layouts = (list(map(_shape, params)), list(map(_stride, params)), list(map(_dtype, params)))
    live = list(map(operator.is_not, grads, repeat(None)))
    everywhere = all(live)
    try:
        dense = all(map(_is_contiguous, grads if everywhere else compress(grads, live)))
    except RuntimeError:  # a sparse tensor has no strides
        dense = False
    if not dense:
        return ParamReads(data_ptrs, grads, live, None, layouts)
    grad_ptrs = (list(map(_data_ptr, grads)) if everywhere
                 else [0 if g is None else g.data_ptr() for g in grads])
    return ParamReads(data_ptrs, grads, live, grad_ptrs, layouts)
