"""Flat optimizer state, and the check that makes the kernels read what user code sees.

The flat-buffer contract of :class:`~mlr_kernels.MLRAdamW` (docs/optimizer_contract.md), and how
this module keeps it:

* **Parameters and gradients stay where user code and autograd put them.** ``p.data`` and
  ``p.grad`` are never re-pointed; the kernel reaches each through its segment's row of
  :attr:`SegmentTable.pointers <mlr_kernels.segments.SegmentTable>`, written from the tensors
  ``p`` and ``p.grad`` hold *at step time*.
* **What the optimizer owns is flat**: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` and the
  float32 master weights of bfloat16/float16 parameters live in one float32 buffer each per
  (device, dtype); ``optimizer.state[p]`` holds views of them. Only parameters that have had a
  gradient are packed, as torch creates state lazily (the optimizer re-packs when another one
  gets its first gradient).
* **A low-precision weight written by user code is where its step starts.** The kernels compare
  each bf16/fp16 weight with its master rounded and start from the weight where they differ, so
  no write can be missed (``p.data``, a collective, another optimizer, a load), at the cost of
  reading the weight once more (2 bytes per element).
* **One check per step** (:meth:`FlatBucket.sync`), in C loops over the parameters: the gradient
  objects (None or not) and their addresses, the parameters' addresses, and, when the
  optimizer's ``state`` changed, its entries. What changed is handled for that segment only:

  ==========================================  ===============================================
  user action since the last step             what sync does (cost)
  ==========================================  ===============================================
  backward / ``p.grad = g`` / ``zero_grad``   new gradient addresses, checked for dtype,
                                              device and size; None = inactive (the pointer
                                              table is rewritten: every step under torch's
                                              default ``zero_grad(set_to_none=True)``)
  gradient not contiguous                     a contiguous copy for this step (one copy)
  ``p.data = t``, ``load_state_dict(assign)``  new address (the kernel re-reads a bf16 master)
  parameter not contiguous                    stepped through a contiguous copy (two copies)
  ``optimizer.state`` entry replaced/cleared  moments zeroed or read from the new entry
  ``model.to(device or dtype)``               :class:`Repack`: the optimizer re-packs
  ==========================================  ===============================================

  bench/compare_optimizers.py measures the check's host time (bench/RESULTS.md).

A DTensor parameter (FSDP2) is a segment of its rank's local shard; its gradient's local shard is
read the same way, and its state is DTensors over views of the flat buffers (see
:mod:`mlr_kernels.dtensor`), as ``torch.optim.AdamW`` keeps it under FSDP2.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import compress, repeat
from typing import Any

import torch

from mlr_kernels.dtensor import dtensor_like, local_tensor, sharding_key
from mlr_kernels.segments import (
    ACTIVE,
    AMSGRAD,
    BETA1,
    BETA2,
    EPS,
    LR,
    MAXIMIZE,
    STEP,
    WEIGHT_DECAY,
    SegmentTable,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

# Types of hyperparameter values read as plain numbers; anything else (a tensor) is read by value.
PLAIN_NUMBERS = frozenset({float, int, bool})
_grad_of = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel
_dtype_and_device = operator.attrgetter("dtype", "device")


class Repack(Exception):
    """A parameter now lives on another device or in another dtype than its bucket: the
    optimizer must re-pack its buckets (raised by :meth:`FlatBucket.sync`)."""


class FlatBucket:
    """Flat optimizer state for the parameters of one (device, dtype, sharding).

    Args:
        params: the parameters (``torch.nn.Parameter`` or tensors), all of one device and dtype.
            Their state starts at zero: the optimizer then adopts each one's ``optimizer.state``
            entry with :meth:`adopt_state`.
        amsgrad: allocate ``max_exp_avg_sq``.
        group_index: index into ``optimizer.param_groups`` of each parameter's group.

    Attributes:
        table: the :class:`~mlr_kernels.segments.SegmentTable` the kernels read.
        master: float32 master weights (bfloat16/float16 parameters only, else None).
        exp_avg, exp_avg_sq, max_exp_avg_sq: float32 moments (``max_exp_avg_sq`` only with amsgrad).
        backend: the kernel module that steps this bucket (set by the optimizer).
    """

    def __init__(self, params: Sequence[torch.Tensor], amsgrad: bool, group_index: Sequence[int]) -> None:
        first = local_tensor(params[0])
        self.device, self.dtype = first.device, first.dtype
        self.sharding = sharding_key(params[0])
        self.params = list(params)
        self.group_index = list(group_index)
        self.shapes = [local_tensor(p).shape for p in params]
        self.table = SegmentTable([shape.numel() for shape in self.shapes], self.dtype, self.device)
        length = self.table.length
        float32 = dict(dtype=torch.float32, device=self.device)
        # Zero padding between segments: kernels never touch it.
        self.master = None if self.dtype == torch.float32 else torch.zeros(length, **float32)
        self.exp_avg = torch.zeros(length, **float32)
        self.exp_avg_sq = torch.zeros(length, **float32)
        self.max_exp_avg_sq = torch.zeros(length, **float32) if amsgrad else None
        self.backend: Any = None

        count = len(self.params)
        # What the last sync saw, per segment.
        self._data_ptrs: list[int] = [-1] * count
        self._grad_ptrs: list[int] = []
        self._states: list[dict[str, Any] | None] = [None] * count
        # Segments stepped through a contiguous copy, and the launch order for tied storage.
        self._staged: dict[int, torch.Tensor] = {}
        self._passes: list[list[int]] | None = None
        # The group values the hyper table was last written from.
        self._hyper_signature: Any = None
        self._lr_signature: Any = None
        self._group_index_device = torch.tensor(self.group_index, dtype=torch.long, device=self.device)
        self._lr_mults = torch.ones(count, dtype=torch.float64, device=self.device)
        local = self._local_params()
        self._adopt_params(local, list(map(_data_ptr, local)))

    # ------------------------------------------------------------------------------ state
    def state_view(self, key: str, i: int) -> torch.Tensor | None:
        """Segment ``i`` of flat buffer ``key`` (``master``, ``exp_avg``, ...) in its parameter's
        (local) shape, or None when the bucket has no such buffer."""
        flat = getattr(self, key)
        if flat is None:
            return None
        o, n = self.table.offsets[i], self.table.numels[i]
        return flat[o : o + n].view(self.shapes[i])

    def optimizer_state(self, i: int) -> dict[str, Any]:
        """Parameter ``i``'s state as ``torch.optim.AdamW`` names it, as views of the flat buffers
        (DTensors for a DTensor parameter, as torch's AdamW keeps them under FSDP2)."""
        def like(view: torch.Tensor) -> torch.Tensor:
            return view if self.sharding is None else dtensor_like(self.params[i], view)

        state: dict[str, Any] = {"step": self.table.hyper[i, STEP],
                                 "exp_avg": like(self.state_view("exp_avg", i)),
                                 "exp_avg_sq": like(self.state_view("exp_avg_sq", i))}
        if self.max_exp_avg_sq is not None:
            state["max_exp_avg_sq"] = like(self.state_view("max_exp_avg_sq", i))
        if self.master is not None:
            state["master_param"] = like(self.state_view("master", i))
        return state

    def adopt_state(self, i: int, found: Mapping[str, Any] | None,
                    extra: Mapping[str, Any]) -> dict[str, Any]:
        """Read segment ``i``'s state from ``found`` (an ``optimizer.state`` entry: tensors there
        are copied in, missing ones start at zero, as torch starts a fresh parameter) and return
        the entry that replaces it: views of the flat buffers, plus ``extra`` keys."""
        found = found or {}
        for key in STATE_KEYS:
            view = self.state_view(key, i)
            if view is None:
                continue
            value = found.get(key)
            if isinstance(value, torch.Tensor):
                view.copy_(local_tensor(value).reshape(view.shape))
            else:
                view.zero_()
        master = self.state_view("master", i)
        if master is not None:
            value = found.get("master_param")
            source = value if isinstance(value, torch.Tensor) else self.params[i]
            master.copy_(local_tensor(source).detach().reshape(master.shape))
        step = found.get("step")
        self.table.hyper[i, STEP] = float(step) if isinstance(step, (torch.Tensor, int, float)) else 0.0
        entry = {**{k: v for k, v in found.items() if k not in (*STATE_KEYS, "master_param", "step")},
                 **self.optimizer_state(i), **extra}
        self._states[i] = entry
        return entry

    # ------------------------------------------------------------------------------- sync
    def sync(self, state: dict[Any, Any] | None, extra_state: Callable[[int], Mapping[str, Any]]) -> None:
        """Point the segment table at what user code holds now (see the module docstring).

        ``state`` is the optimizer's ``state`` mapping, or None when the caller knows it is as this
        bucket left it; an entry that is not the one this bucket last wrote (replaced, cleared, or
        a whole new mapping) is adopted with :meth:`adopt_state`, ``extra_state(i)`` giving the
        keys to keep beside the buffers.

        Raises:
            Repack: a parameter moved to another device or dtype.
            ValueError: a parameter changed its number of elements.
            RuntimeError: a sparse gradient (as ``torch.optim.AdamW``).
        """
        params = self.params
        local = self._local_params()
        if state is not None:
            entries = list(map(state.get, params))
            if not all(map(operator.is_, entries, self._states)):
                for i, (entry, ours) in enumerate(zip(entries, self._states)):
                    if entry is not ours:
                        state[params[i]] = self.adopt_state(i, entry, extra_state(i))

        data_ptrs = list(map(_data_ptr, local))
        if data_ptrs != self._data_ptrs:
            self._adopt_params(local, data_ptrs)
        grads = list(map(_grad_of, params))
        if self.sharding is not None:
            grads = [None if g is None else local_tensor(g) for g in grads]
        live = list(map(operator.is_not, grads, repeat(None)))
        everywhere = all(live)
        present = grads if everywhere else list(compress(grads, live))
        try:
            contiguous = all(map(_is_contiguous, present))
        except RuntimeError:  # a sparse tensor has no strides
            contiguous = False
        if not contiguous:
            grads = list(map(_dense_contiguous, grads))
        grad_ptrs = (list(map(_data_ptr, grads)) if everywhere
                     else [0 if g is None else g.data_ptr() for g in grads])
        if grad_ptrs != self._grad_ptrs:  # new gradients: the kernel will trust their size and dtype
            self._check_grads(present if contiguous else list(compress(grads, live)), live)
            self._grad_ptrs = grad_ptrs
        if self._staged:
            local = list(local)
            for i in self._staged:
                self._staged[i] = local[i] = local[i].detach().contiguous()
            data_ptrs = list(map(_data_ptr, local))
        self.table.point_at(local, grads, data_ptrs, grad_ptrs)
        self.table.set_active(live)

    def _check_grads(self, present: list[torch.Tensor], live: list[bool]) -> None:
        """Raise ``RuntimeError`` unless every gradient has its parameter's dtype, device and
        number of elements (torch checks ``p.grad = g``, but not ``p.grad.data = g``)."""
        kinds = set(map(_dtype_and_device, present))
        if kinds and kinds != {(self.dtype, self.device)}:
            bad = next(k for k in kinds if k != (self.dtype, self.device))
            raise RuntimeError(f"a gradient is {bad[0]} on {bad[1]} but its parameter is {self.dtype} "
                               f"on {self.device}")
        if list(map(_numel, present)) != list(compress(self.table.numels, live)):
            raise RuntimeError("a gradient does not have its parameter's number of elements")

    def _local_params(self) -> list[torch.Tensor]:
        """The tensors the segments are: the parameters, or their local shards (DTensors)."""
        return self.params if self.sharding is None else list(map(local_tensor, self.params))

    def _adopt_params(self, local: Sequence[torch.Tensor], data_ptrs: list[int]) -> None:
        """Check the parameters whose storage changed (``p.data = t``, a load with ``assign``,
        FSDP2 re-sharding, or all of them when the bucket is new)."""
        for i, (p, now, seen) in enumerate(zip(local, data_ptrs, self._data_ptrs)):
            if now == seen:
                continue
            if p.device != self.device or p.dtype != self.dtype:
                raise Repack(f"parameter {i} moved from {self.device}/{self.dtype} to {p.device}/{p.dtype}")
            if p.shape.numel() != self.table.numels[i]:
                raise ValueError(f"a parameter of shape {tuple(self.shapes[i])} now has shape "
                                 f"{tuple(p.shape)}; MLRAdamW cannot step it with its old state: "
                                 "build a new optimizer after reshaping parameters")
            if p.is_contiguous():
                self._staged.pop(i, None)
            else:
                self._staged[i] = p
        self._data_ptrs = data_ptrs
        # Empty parameters own no memory (and may all sit at address 0): they tie nothing.
        owned = [ptr if n else -1 - i for i, (ptr, n) in enumerate(zip(data_ptrs, self.table.numels))]
        self._passes = _launch_passes(owned)

    # ------------------------------------------------------------------------------ step
    def write_hyperparameters(self, groups: Sequence[Mapping[str, Any]], signature: Any,
                              lrs: list[Any], lr_mults: Callable[[FlatBucket], Sequence[float]]) -> None:
        """Write the columns of ``table.hyper`` that changed since the last step.

        ``signature`` changes whenever a group value other than ``lr`` (or a per-parameter
        multiplier, ``lr_mults(self)``) does; ``lrs`` are the groups' learning rates (floats or
        one-element tensors). Tensor learning rates are combined on the device, so a CUDA-graph
        capture of the step stays valid."""
        hyper = self.table.hyper
        if self._hyper_signature != signature:
            rows = []
            for g in (groups[k] for k in self.group_index):
                beta1, beta2 = (float(b) for b in g["betas"])
                rows.append((float(g["weight_decay"]) * float(g.get("wd_mult", 1.0)), beta1, beta2,
                             float(g["eps"]), float(g["maximize"]), float(g["amsgrad"])))
            table = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 6)
            hyper[:, [WEIGHT_DECAY, BETA1, BETA2, EPS, MAXIMIZE, AMSGRAD]] = table.to(self.device)
            self._lr_mults = torch.tensor(list(lr_mults(self)), dtype=torch.float64, device=self.device)
            self._hyper_signature = signature
            self._lr_signature = None
        # The set of types is the fast test for plain numbers (a scheduler's numpy float takes
        # the exact isinstance test).
        if not set(map(type, lrs)) <= PLAIN_NUMBERS and any(isinstance(lr, torch.Tensor) for lr in lrs):
            group_lr = torch.stack([torch.as_tensor(lr, device=self.device) for lr in lrs])
            hyper[:, LR] = group_lr.to(torch.float64)[self._group_index_device] * self._lr_mults
        elif self._lr_signature != lrs:
            group_lr = torch.tensor(lrs, dtype=torch.float64, device=self.device)
            hyper[:, LR] = group_lr[self._group_index_device] * self._lr_mults
            self._lr_signature = lrs

    def step(self, grad_mult: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
        """Count the step and launch the kernel over every active segment (after :meth:`sync`)."""
        hyper = self.table.hyper
        active = hyper[:, ACTIVE]
        hyper[:, STEP] += active if found_inf is None else active * (1 - found_inf)
        state = (self.master, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq)
        tile_size = self.backend.TILE_SIZE
        if self._passes is None:
            self.backend.adamw_step(self.table, *state, self.table.tiles(tile_size), grad_mult, found_inf)
        else:
            for segments in self._passes:  # a tie's master re-reads what the last pass wrote
                self.backend.adamw_step(self.table, *state, self.table.tiles(tile_size, segments),
                                        grad_mult, found_inf)
        local = self._local_params()
        for i, staged in self._staged.items():
            local[i].detach().copy_(staged.view(self.shapes[i]))
            self._staged[i] = local[i]
        self.table.release()


def _launch_passes(data_ptrs: Sequence[int]) -> list[list[int]] | None:
    """None when every segment has its own storage; else the launches that keep torch's order
    for tied ones (``b.data = a.data``): a segment goes one launch after the last segment before
    it at the same address, so no launch writes one address twice."""
    if len(set(data_ptrs)) == len(data_ptrs):
        return None
    seen: dict[int, int] = {}
    passes: list[list[int]] = []
    for i, ptr in enumerate(data_ptrs):
        k = seen[ptr] = seen.get(ptr, -1) + 1
        if k == len(passes):
            passes.append([])
        passes[k].append(i)
    return passes


def _dense_contiguous(grad: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient the kernel can read: contiguous and dense (or None)."""
    if grad is None:
        return None
    if grad.layout != torch.strided:
        raise RuntimeError("MLRAdamW does not support sparse gradients; use torch.optim.SparseAdam")
    return grad.contiguous()
