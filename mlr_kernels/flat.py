"""Flat optimizer state, and the check that makes the kernels read what user code sees.

The flat-buffer contract of :class:`~mlr_kernels.MLRAdamW` (docs/optimizer_contract.md), and how
this module keeps it:

* **Parameters and gradients stay where user code and autograd put them.** ``p.data`` and
  ``p.grad`` are never re-pointed; the kernel reaches each through its segment's row of
  :attr:`SegmentTable.pointers <mlr_kernels.segments.SegmentTable>`, written from the tensors
  ``p`` and ``p.grad`` hold *at step time*. AdamW is elementwise, so a segment is stepped in the
  order its elements lie in memory: a parameter that is dense in another order than the
  contiguous one (``channels_last``) is stepped where it is, its gradient read in the same order.
* **What the optimizer owns is flat**: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` and the
  float32 master weights of bfloat16/float16 parameters live in one float32 buffer each per
  (device, dtype); ``optimizer.state[p]`` holds views of them with ``p``'s shape and strides, as
  ``torch.zeros_like(p, memory_format=torch.preserve_format)`` would be. Only parameters that have
  had a gradient are packed, as torch creates state lazily; one that gets its first gradient later
  is appended to its bucket (:meth:`FlatBucket.extend`), whose buffers grow by half at least when
  full, so an optimizer stepped from every parameter's gradient hook packs in linear time.
* **A low-precision weight written by user code is where its step starts.** The kernels compare
  each bf16/fp16 weight with its master rounded and start from the weight where they differ, so
  no write can be missed (``p.data``, a collective, another optimizer, a load), at the cost of
  reading the weight once more (2 bytes per element).
* **One check per step** (:meth:`FlatBucket.sync`), in one C++ loop over the parameters where the
  build has it, else in C loops (:mod:`mlr_kernels.host_reads`): the gradient objects (None or
  not) and their addresses, the parameters' addresses, layouts and dtypes (when all are where and
  as the last check left them, the check ends there), and, when the optimizer's ``state``
  changed, its entries; per bucket, how many tensors use each buffer's memory, which changes when
  user code replaces a state tensor or its ``.data``. What changed is handled for that segment only:

  ==========================================  ===============================================
  user action since the last step             what sync does (cost)
  ==========================================  ===============================================
  backward / ``p.grad = g`` / ``zero_grad``   new gradient addresses, checked for dtype,
                                              device and size; None = inactive (the pointer
                                              table is rewritten: every step under torch's
                                              default ``zero_grad(set_to_none=True)``)
  gradient in another layout than its         a copy in the parameter's layout for this step
  parameter (or not dense)                    (one copy)
  ``p.data = t``, ``load_state_dict(assign)``  new address (the kernel re-reads a bf16 master)
  parameter not dense, or in another layout   stepped through a copy in its state's layout
  than its state (also at the same address:   (two copies; with a tie, each copy is made and
  ``p.data = p.data.t()``)                     written back around its own launch)
  ``optimizer.state`` entry replaced/cleared  moments zeroed or read from the new entry
  ``state[p][k] = t``, ``state[p][k].data =   ``t`` copied in, a view put back in its place
  t`` (offload and reload of the state)       (a buffer none of whose views is left in
                                              ``optimizer.state`` is freed at once, and
                                              allocated again at the next step)
  ``model.to(device or dtype)``               :class:`Repack`: the optimizer re-packs
  ==========================================  ===============================================

  bench/compare_optimizers.py measures the check's host time (bench/RESULTS.md).

A DTensor parameter (FSDP2) is a segment of its rank's local shard; its gradient's local shard is
read the same way, and its state is DTensors over views of the flat buffers (see
:mod:`mlr_kernels.dtensor`), as ``torch.optim.AdamW`` keeps it under FSDP2.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import compress
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from mlr_kernels.dtensor import dtensor_like, local_tensor, local_tensors, sharding_key
from mlr_kernels.host_reads import KeptReads, read_params, write_lr_column
from mlr_kernels.rounding import stream_of
from mlr_kernels.segments import (
    ACTIVE,
    AMSGRAD,
    BETA1,
    BETA2,
    EPS,
    LR,
    MAXIMIZE,
    WEIGHT_DECAY,
    SegmentTable,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Each optimizer.state key kept in a flat buffer, and the FlatBucket attribute of that buffer.
FLAT_STATE = (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"),
              ("max_exp_avg_sq", "max_exp_avg_sq"), ("master_param", "master"),
              ("kahan_comp", "compensation"))
STATE_DTYPES = (torch.float32, torch.bfloat16)
_FLAT_KEYS = frozenset(key for key, _ in FLAT_STATE)

# Types of hyperparameter values read as plain numbers; anything else (a tensor) is read by value.
PLAIN_NUMBERS = frozenset({float, int, bool})
_data_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_numel = torch.Tensor.numel
_dtype_and_device = operator.attrgetter("dtype", "device")
# How many tensors (and storage objects) hold a storage: a view dropped from optimizer.state, or
# whose .data was replaced, lowers it. Private to torch (its CUDA-graph trees use it too).
_use_count = torch._C._storage_Use_Count


class SegmentValues(NamedTuple):
    """One segment's hyperparameters, as its optimizer resolves them from the segment's param
    group and multipliers: what :meth:`FlatBucket.write_rows` writes into its row of the hyper
    table (:mod:`mlr_kernels.segments`). Plain floats, flags as 0.0 or 1.0."""

    lr_mult: float  # the segment's learning rate is its group's (FlatBucket.write_lrs) times this
    weight_decay: float  # decoupled, already scaled: the group's weight_decay times wd_mult
    beta1: float
    beta2: float
    eps: float
    maximize: float
    amsgrad: float


# The hyper-table columns of SegmentValues' fields after lr_mult, in their order.
_ROW_COLUMNS = [WEIGHT_DECAY, BETA1, BETA2, EPS, MAXIMIZE, AMSGRAD]


class Repack(Exception):
    """A parameter now lives on another device or in another dtype than its bucket: the
    optimizer must re-pack its buckets (raised by :meth:`FlatBucket.sync`)."""


def state_shape_error(where: str, key: str, got: Sequence[int], want: Sequence[int]) -> ValueError:
    """The error for a state tensor whose shape is not its parameter's (torch fails at the step)."""
    return ValueError(f"{where}: optimizer state {key!r} has shape {tuple(got)} but the parameter has "
                      f"shape {tuple(want)}; was it saved for another parameter?")


class FlatBucket:
    """Flat optimizer state for the parameters of one (device, dtype, sharding).

    Args:
        params: the parameters (``torch.nn.Parameter`` or tensors), all of one device and dtype.
            Their state starts at zero: the optimizer then adopts each one's ``optimizer.state``
            entry with :meth:`adopt_entries`.
        amsgrad: allocate ``max_exp_avg_sq``.
        positions: ``(group index, index in the group)`` of each parameter in
            ``optimizer.param_groups``; tied parameters are stepped in this order, as torch does.
        describe: names the parameter at a position, for error messages.
        state_dtype: the moments' dtype, float32 or bfloat16 (written back with stochastic
            rounding, :mod:`mlr_kernels.rounding`).
        master_weights: give bfloat16/float16 parameters float32 master weights; else a Kahan
            compensation buffer in their own dtype.
        seed: of the random bits of stochastic rounding (each parameter's stream is a hash of it
            and the parameter's position).

    Attributes:
        table: the :class:`~mlr_kernels.segments.SegmentTable` the kernels read.
        master: float32 master weights (bfloat16/float16 parameters with ``master_weights``, else
            None).
        compensation: what the rounding of each bfloat16/float16 weight dropped, in its dtype
            (without ``master_weights``, else None); ``optimizer.state[p]["kahan_comp"]``.
        exp_avg, exp_avg_sq, max_exp_avg_sq: the moments in ``state_dtype`` (``max_exp_avg_sq``
            only with amsgrad).
            A buffer is None between the moment no view of it is left in ``optimizer.state`` (all
            were replaced: the state was offloaded) and the next :meth:`sync`.
        backend: the kernel module that steps this bucket (set by the optimizer).
    """

    def __init__(self, params: Sequence[torch.Tensor], amsgrad: bool, positions: Sequence[tuple[int, int]],
                 describe: Callable[[tuple[int, int]], str] = str, state_dtype: torch.dtype = torch.float32,
                 master_weights: bool = True, seed: int = 0) -> None:
        first = local_tensor(params[0])
        self.device, self.dtype = first.device, first.dtype
        self.sharding = sharding_key(params[0])
        self.amsgrad = amsgrad
        self.describe = describe
        self.params: list[torch.Tensor] = []
        self.positions: list[tuple[int, int]] = []
        self.group_index: list[int] = []
        self.shapes: list[torch.Size] = []
        # Each segment's layout: the strides of its state views, the order its elements are
        # stepped in; and whether that is the contiguous order.
        self.strides: list[tuple[int, ...]] = []
        self._contiguous: list[bool] = []
        self._add_segments(params, positions)
        self.table = SegmentTable([shape.numel() for shape in self.shapes], self.dtype, self.device)
        self.seed = seed
        self.table.set_streams(0, [stream_of(seed, k, j) for k, j in self.positions])
        low = self.dtype != torch.float32
        self._dtypes = {"exp_avg": state_dtype, "exp_avg_sq": state_dtype, "max_exp_avg_sq": state_dtype,
                        "master": torch.float32, "compensation": self.dtype}
        # Zero padding between segments: kernels never touch it.
        self.master = self._zeros("master") if low and master_weights else None
        self.compensation = self._zeros("compensation") if low and not master_weights else None
        self.exp_avg = self._zeros("exp_avg")
        self.exp_avg_sq = self._zeros("exp_avg_sq")
        self.max_exp_avg_sq = self._zeros("max_exp_avg_sq") if amsgrad else None
        self._keys = [(key, attr) for key, attr in FLAT_STATE if getattr(self, attr) is not None]
        self.backend: Any = None

        count = len(self.params)
        # What the last sync saw, per segment.
        self._data_ptrs: list[int] = [-1] * count
        self._layouts: tuple[list[Any], ...] = ()  # ParamReads.layouts
        self._grad_ptrs: list[int] = []
        self._grad_ids: list[int] = []
        self._states: list[dict[str, Any] | None] = [None] * count
        # Segments stepped through a copy in their state's layout, and the launch order for ties.
        self._staged: dict[int, torch.Tensor] = {}
        self._passes: list[list[int]] | None = None
        # The version of the values the hyper rows were last written from, and for how many
        # segments; the group learning rates the LR column was last written from.
        self._rows_version: Any = None
        self._lr_signature: Any = None
        self._rows_written = 0
        # Host copies of each segment's group index and lr multiplier; their device copies exist
        # while tensor learning rates are in use; the tensor learning rates of the step.
        self._group_index = np.array(self.group_index, dtype=np.int64)
        self._lr_mults = np.ones(0, dtype=np.float64)
        self._group_index_device: torch.Tensor | None = None
        self._lr_mults_device: torch.Tensor | None = None
        self._device_lrs: list[Any] | None = None
        # Per buffer, weak references to the views of it handed out to optimizer.state; and how
        # many tensors used each buffer's (and the hyper table's) memory at the last check.
        self._views: dict[str, set[weakref.ref]] = {attr: set() for _, attr in self._keys}
        self._watch_storages()
        self._users_seen: list[int] | None = None
        # What the C++ reads found at the last sync, for the next one to compare with.
        self._kept_reads = KeptReads()
        # Segments were appended since the last sync; the buffers have room to spare.
        self._appended = False
        self._spare_room = False
        local = self._local_params()
        self._adopt_params(local, list(map(_data_ptr, local)))

    def _add_segments(self, params: Sequence[torch.Tensor], positions: Sequence[tuple[int, int]]) -> None:
        for p, position in zip(params, positions):
            local = local_tensor(p)
            dense = _is_dense(local)
            self.params.append(p)
            self.positions.append(tuple(position))
            self.group_index.append(position[0])
            self.shapes.append(local.shape)
            self.strides.append(local.stride() if dense else _contiguous_strides(local.shape))
            self._contiguous.append(local.is_contiguous() or not dense)
        self._all_contiguous = all(self._contiguous)

    def _zeros(self, attr: str) -> torch.Tensor:
        return torch.zeros(self.table.length, dtype=self._dtypes[attr], device=self.device)

    # ------------------------------------------------------------------------------ state
    def state_view(self, attr: str, i: int) -> torch.Tensor | None:
        """Segment ``i`` of flat buffer ``attr`` (``master``, ``exp_avg``, ...) with its
        parameter's (local) shape and strides, or None when the bucket has no such buffer."""
        flat = getattr(self, attr)
        if flat is None:
            return None
        o, n = self.table.offsets[i], self.table.numels[i]
        return flat[o : o + n].as_strided(self.shapes[i], self.strides[i])

    def optimizer_state(self, i: int) -> dict[str, Any]:
        """Parameter ``i``'s state as ``torch.optim.AdamW`` names it, as views of the flat buffers
        (DTensors for a DTensor parameter, as torch's AdamW keeps them under FSDP2)."""
        state: dict[str, Any] = {"step": self.table.steps[i]}
        for key, attr in self._keys:
            state[key] = self._handed_out_view(attr, i)
        return state

    def _handed_out_view(self, attr: str, i: int) -> torch.Tensor:
        """A view for ``optimizer.state``, watched: when the last one of a buffer is freed (user
        code replaced them all, as an offload does), the buffer is released."""
        view = self.state_view(attr, i)
        if self.sharding is not None:
            view = dtensor_like(self.params[i], view)
        # A DTensor holds a view of the view it was made from: watch the one it holds.
        self._views[attr].add(weakref.ref(local_tensor(view), partial(_view_freed, weakref.ref(self), attr)))
        return view

    def _forget_view(self, attr: str, ref: weakref.ref) -> None:
        views = self._views[attr]
        views.discard(ref)
        if not views:  # the state is elsewhere now (offloaded): free the memory, sync re-allocates
            setattr(self, attr, None)
            self._users_seen = None

    def adopt_state(self, i: int, found: Mapping[str, Any] | None,
                    extra: Mapping[str, Any]) -> dict[str, Any]:
        """Read segment ``i``'s state from ``found`` (an ``optimizer.state`` entry: tensors there
        are copied in, missing ones start at zero, as torch starts a fresh parameter) and return
        the entry that replaces it: views of the flat buffers, plus ``extra`` keys.

        Raises:
            ValueError: a state tensor in ``found`` does not have the parameter's shape."""
        found = found or {}
        self._allocate_released()
        for key, attr in self._keys:
            self._read_state(i, key, attr, found)
        self._read_step(i, found.get("step"))
        entry = {**{k: v for k, v in found.items() if k not in _FLAT_KEYS and k != "step"},
                 **self.optimizer_state(i), **extra}
        self._states[i] = entry
        return entry

    def adopt_entries(self, state: dict[Any, Any], extra_state: Callable[[int], Mapping[str, Any]],
                      indices: Sequence[int]) -> None:
        """:meth:`adopt_state` for the segments at ``indices``, writing their new entries into
        ``state`` (the optimizer's); ``extra_state(i)`` gives the keys kept beside the views."""
        self._adopt(state, extra_state, indices)
        self._users_seen = self._storage_users()

    def _adopt(self, state: dict[Any, Any], extra_state: Callable[[int], Mapping[str, Any]],
               indices: Sequence[int]) -> None:
        for i in indices:
            p = self.params[i]
            state[p] = self.adopt_state(i, state.get(p), extra_state(i))

    def _read_state(self, i: int, key: str, attr: str, found: Mapping[str, Any]) -> None:
        """Copy state tensor ``found[key]`` into segment ``i`` of buffer ``attr`` (cast to its
        dtype: bfloat16 moments round to nearest). Without one, start the moments at zero, the
        master at the parameter plus its compensation, the compensation at what the parameter's
        rounding dropped from its master (a checkpoint of the other kind of weights), else zero."""
        view = self.state_view(attr, i)
        value = found.get(key)
        if isinstance(value, torch.Tensor):
            source = local_tensor(value)
            if source.shape != view.shape:
                raise state_shape_error(self.describe(self.positions[i]), key, source.shape, view.shape)
            view.copy_(source)
            return
        param = local_tensor(self.params[i]).detach()
        other = found.get("kahan_comp" if key == "master_param" else "master_param")
        other = local_tensor(other) if isinstance(other, torch.Tensor) and other.shape == view.shape else None
        if key == "master_param":
            view.copy_(param.float() if other is None else param.float() + other.float())
        elif key == "kahan_comp" and other is not None:
            view.copy_(other.float() - param.float())
        else:
            view.zero_()

    def _read_step(self, i: int, value: Any) -> None:
        """Set segment ``i``'s step count (on the device: a tensor is not read on the host)."""
        if isinstance(value, torch.Tensor):
            self.table.steps[i].copy_(local_tensor(value).detach().reshape(()))
        else:
            self.table.steps[i] = float(value) if isinstance(value, (int, float)) else 0.0

    def _allocate_released(self) -> None:
        released = [attr for _, attr in self._keys if getattr(self, attr) is None]
        for attr in released:
            setattr(self, attr, self._zeros(attr))
        if released:
            self._watch_storages()

    # -------------------------------------------------------------------- following the state
    def _watch_storages(self) -> None:
        """Weak references to the storages of the buffers and of the step counts, whose views
        ``optimizer.state`` holds, to count their users at every sync."""
        tensors = [getattr(self, attr) for _, attr in self._keys] + [self.table.steps]
        self._storages = [StorageWeakRef(t.untyped_storage()) for t in tensors]
        self._storage_cdata = [ref.cdata for ref in self._storages]

    def _storage_users(self) -> list[int]:
        return list(map(_use_count, self._storage_cdata))

    def _follow_state(self, state: dict[Any, Any], entries_changed: bool,
                      extra_state: Callable[[int], Mapping[str, Any]]) -> None:
        """Adopt what user code changed in this bucket's ``optimizer.state`` entries: entries
        replaced or removed (``entries_changed``), and, when a buffer's users changed, state
        tensors replaced or with their ``.data`` replaced."""
        tensors_changed = self._storage_users() != self._users_seen
        if entries_changed:
            entries = list(map(state.get, self.params))
            if not all(map(operator.is_, entries, self._states)):
                changed = compress(range(len(entries)), map(operator.is_not, entries, self._states))
                self._adopt(state, extra_state, list(changed))
        if tensors_changed:
            self._follow_tensors()
        self._users_seen = self._storage_users()

    def _follow_tensors(self) -> None:
        """Every state tensor that is not a view of this bucket's memory any more (``state[p][k]
        = t``, ``state[p][k].data = t``: an offload and reload of the state) is copied in, and a
        view takes its place. Buffer by buffer, so that, after a reload, the memory of one buffer
        is allocated while the tensors user code reloaded are still there, not of all of them."""
        released = [attr for _, attr in self._keys if getattr(self, attr) is None]
        for key, attr in self._keys:
            if attr in released:
                setattr(self, attr, self._zeros(attr))
            buffer = getattr(self, attr)
            for i, entry in enumerate(self._states):
                address = buffer.data_ptr() + buffer.element_size() * self.table.offsets[i]
                if not self._is_segment_view(entry.get(key), buffer, address, i):
                    self._read_state(i, key, attr, entry)
                    entry[key] = self._handed_out_view(attr, i)
        steps = self.table.steps
        for i, entry in enumerate(self._states):
            value = entry.get("step")
            address = steps.data_ptr() + steps.element_size() * i
            if not (isinstance(value, torch.Tensor) and value.data_ptr() == address
                    and value.dtype == steps.dtype and value.device == steps.device):
                self._read_step(i, value)
                entry["step"] = steps[i]
        if released:
            self._watch_storages()

    def _is_segment_view(self, value: Any, buffer: torch.Tensor, address: int, i: int) -> bool:
        """``value`` is a view of ``buffer``'s segment ``i``, which starts at ``address``."""
        if not isinstance(value, torch.Tensor):
            return False
        t = local_tensor(value)
        return ((t.data_ptr() == address or not self.table.numels[i]) and t.device == self.device
                and t.dtype == buffer.dtype and t.shape == self.shapes[i] and t.stride() == self.strides[i])

    # ------------------------------------------------------------------------------ growth
    def extend(self, params: Sequence[torch.Tensor], positions: Sequence[tuple[int, int]],
               state: dict[Any, Any], extra_state: Callable[[int], Mapping[str, Any]]) -> None:
        """Append segments for ``params`` (parameters that just got their first gradient) and
        adopt their ``state`` entries. The others' state stays where it is unless the buffers
        are full; then they grow by half at least and every view is handed out again, so
        parameters appended one at a time copy O(total) state in all."""
        # State tensors user code replaced go into the buffers before they move (a replaced
        # entry is adopted at the next sync, from the entry: it needs nothing from the buffers).
        self._follow_state(state, False, extra_state)
        start = len(self.params)
        self._add_segments(params, positions)
        length, rows = self.table.length, self.table.steps.untyped_storage().data_ptr()
        self.table.append([shape.numel() for shape in self.shapes[start:]])
        self.table.set_streams(start, [stream_of(self.seed, k, j) for k, j in self.positions[start:]])
        if self.table.length != length:
            self._resize_buffers()
        if self.table.length != length or self.table.steps.untyped_storage().data_ptr() != rows:
            self._watch_storages()
            self._hand_out_views_again(range(start))
        added = len(self.params) - start
        self._data_ptrs = self._data_ptrs + [-1] * added  # a new list: the table may hold the old one
        self._states += [None] * added
        self._appended = True
        self._spare_room = self.table.length > self.table.used_length
        self.adopt_entries(state, extra_state, range(start, len(self.params)))

    def _fit(self) -> None:
        """Give back the room appends left in the buffers (once the set of segments settles)."""
        self.table.fit()
        self._resize_buffers()
        self._watch_storages()
        self._hand_out_views_again(range(len(self.params)))
        self._spare_room = False
        self._users_seen = self._storage_users()

    def _resize_buffers(self) -> None:
        """Re-allocate every buffer to ``table.length`` elements, keeping what they hold."""
        for _, attr in self._keys:
            old, new = getattr(self, attr), self._zeros(attr)
            kept = min(old.numel(), new.numel())
            new[:kept].copy_(old[:kept])
            setattr(self, attr, new)

    def _hand_out_views_again(self, indices: Sequence[int]) -> None:
        """Put views of the current buffers and step counts in these segments' entries."""
        for i in indices:
            self._states[i].update(self.optimizer_state(i))

    # ------------------------------------------------------------------------------- sync
    def sync(self, state: dict[Any, Any], entries_changed: bool,
             extra_state: Callable[[int], Mapping[str, Any]]) -> None:
        """Point the segment table at what user code holds now (see the module docstring).

        ``state`` is the optimizer's ``state`` mapping and ``entries_changed`` whether any of its
        entries may have been replaced or removed, or the mapping itself; an entry that is not the
        one this bucket last wrote is adopted with :meth:`adopt_state`, ``extra_state(i)`` giving
        the keys to keep beside the buffers. State tensors replaced inside an entry are adopted
        when the buffers' users changed.

        Raises:
            Repack: a parameter moved to another device or dtype.
            ValueError: a parameter changed its shape, or a state tensor is not of its shape.
            RuntimeError: a sparse gradient (as ``torch.optim.AdamW``), or a gradient of another
                dtype, device or number of elements than its parameter.
        """
        if entries_changed or self._storage_users() != self._users_seen:
            self._follow_state(state, entries_changed, extra_state)
        # The steady state (nothing moved since the last sync: the table points at it all) is
        # told apart when this sync has nothing else to do and the kernel reads only the table.
        kept = (self._kept_reads if not (self._staged or self._spare_room or self._appended
                                         or self.backend.READS_TENSORS) else None)
        if kept is None:  # nothing kept survives a sync that does not end by keeping its reads
            self._kept_reads.forget()
        reads = read_params(self.params, kept, sharded=self.sharding is not None)
        if reads is None:
            return
        data_ptrs, grads, live, grad_ptrs, layouts = reads
        if data_ptrs is None:  # every parameter where and as the last kept check found it
            data_ptrs, layouts = self._data_ptrs, self._layouts
        local = self._local_params()
        if data_ptrs != self._data_ptrs or layouts != self._layouts:
            self._adopt_params(local, data_ptrs, layouts)
        if self._all_contiguous:
            in_layout = grad_ptrs is not None
        else:
            try:
                in_layout = (list(map(_stride, compress(grads, live)))
                             == list(compress(self.strides, live)))
            except RuntimeError:  # a sparse tensor has no strides
                in_layout = False
        seen = grads  # what user code holds; the kernel reads copies of those not in layout
        if not in_layout:
            grads = list(map(self._grad_in_layout, range(len(grads)), grads))
        if not in_layout or grad_ptrs is None:
            grad_ptrs = [0 if g is None else g.data_ptr() for g in grads]
        if grad_ptrs != self._grad_ptrs:  # moved gradients: the kernel will trust their size and dtype
            grad_ids = list(map(id, seen))
            self._check_moved_grads(seen, grad_ids, grad_ptrs)
            self._grad_ptrs, self._grad_ids = grad_ptrs, grad_ids
        if self._staged:
            local = list(local)
            for i in self._staged:
                self._staged[i] = local[i] = self._in_layout(i, local[i].detach())
            data_ptrs = list(map(_data_ptr, local))
        keeps = kept is not None and in_layout and not self._staged  # the table points at the reads
        self.table.point_at(local, grads, data_ptrs, grad_ptrs, kept.addresses() if keeps else None)
        self.table.set_active(live)
        if self._spare_room and not self._appended:
            self._fit()
        self._appended = False
        if keeps:
            kept.keep()
        else:
            self._kept_reads.forget()

    def _fits(self, i: int, t: torch.Tensor) -> bool:
        """``t`` lies in memory in segment ``i``'s order (so the kernel can read it in place)."""
        return t.is_contiguous() if self._contiguous[i] else t.stride() == self.strides[i]

    def _in_layout(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """``t`` (of segment ``i``'s shape) as a dense tensor in the segment's order: itself or
        a copy."""
        if self._fits(i, t):
            return t
        if self._contiguous[i]:
            return t.contiguous()
        return torch.empty_strided(self.shapes[i], self.strides[i], dtype=t.dtype, device=t.device).copy_(t)

    def _grad_in_layout(self, i: int, grad: torch.Tensor | None) -> torch.Tensor | None:
        """A gradient the kernel can read, in its parameter's layout (None stays None). One of
        another shape is read in row-major order, as contiguous gradients always were (one of
        another number of elements is left for :meth:`_check_grads` to refuse)."""
        if grad is None:
            return None
        if grad.layout != torch.strided:
            raise RuntimeError("MLRAdamW does not support sparse gradients; use torch.optim.SparseAdam")
        if grad.shape == self.shapes[i]:
            return self._in_layout(i, grad)
        if not self._contiguous[i]:
            raise RuntimeError(f"a gradient of shape {tuple(grad.shape)} for a parameter of shape "
                               f"{tuple(self.shapes[i])}")
        return grad.contiguous()

    def _check_moved_grads(self, grads: list[torch.Tensor | None], grad_ids: list[int],
                           grad_ptrs: list[int]) -> None:
        """Raise ``RuntimeError`` unless every gradient that may have changed its data since the
        last step has its parameter's dtype, device and number of elements. A gradient object
        new since then needs no check: torch checked it when it was assigned (``p.grad = g``) or
        autograd made it (a DTensor's local shard, which torch does not check, was checked
        against its parameter's by the reads: :func:`~mlr_kernels.dtensor.local_grad`). One seen
        before that moved may have had its ``.data`` replaced, which torch does not check. So in
        steady state (new gradients after ``zero_grad()``, or the same ones) nothing is checked
        here."""
        if len(grad_ids) != len(self._grad_ids):  # a new bucket: every gradient
            suspects = range(len(grads))
        else:
            same_object = list(map(operator.eq, grad_ids, self._grad_ids))
            if not any(same_object):  # every gradient new (torch's default zero_grad)
                return
            moved = map(operator.ne, grad_ptrs, self._grad_ptrs)
            suspects = compress(range(len(grads)), map(operator.and_, same_object, moved))
        for i in suspects:
            g = grads[i]
            if g is None:
                continue
            if g.dtype != self.dtype or g.device != self.device:
                raise RuntimeError(f"a gradient is {g.dtype} on {g.device} but its parameter is "
                                   f"{self.dtype} on {self.device}")
            if g.numel() != self.table.numels[i]:
                raise RuntimeError("a gradient does not have its parameter's number of elements")

    def _local_params(self) -> list[torch.Tensor]:
        """The tensors the segments are: the parameters, or their local shards (DTensors)."""
        return self.params if self.sharding is None else local_tensors(self.params)

    def _adopt_params(self, local: Sequence[torch.Tensor], data_ptrs: list[int],
                      layouts: tuple[list[Any], ...] | None = None) -> None:
        """Check the parameters whose storage or layout changed (``p.data = t``, a load with
        ``assign``, FSDP2 re-sharding, ``p.data = p.data.t()`` at the same address, or all of them
        when the bucket is new); ``layouts`` as :class:`~mlr_kernels.host_reads.ParamReads` has them."""
        relaid = [] if layouts is None else _relaid(layouts, self._layouts)
        fits = {}  # applied once every parameter passed its checks: a refused step changes nothing
        for i, (p, now, seen) in enumerate(zip(local, data_ptrs, self._data_ptrs)):
            if now == seen and not (i < len(relaid) and relaid[i]):
                continue
            if p.device != self.device or p.dtype != self.dtype:
                raise Repack(f"parameter {i} moved from {self.device}/{self.dtype} to {p.device}/{p.dtype}")
            if p.shape != self.shapes[i]:
                raise ValueError(f"a parameter of shape {tuple(self.shapes[i])} now has shape "
                                 f"{tuple(p.shape)}; MLRAdamW cannot step it with its old state: "
                                 "build a new optimizer after reshaping parameters")
            fits[i] = self._fits(i, p)
        for i, fit in fits.items():
            if fit:
                self._staged.pop(i, None)
            else:
                self._staged[i] = local[i]
        self._data_ptrs = data_ptrs
        if layouts is not None:
            self._layouts = layouts
        # Empty parameters own no memory (and may all sit at address 0): they tie nothing.
        owned = [ptr if n else -1 - i for i, (ptr, n) in enumerate(zip(data_ptrs, self.table.numels))]
        self._passes = _launch_passes(owned, self.positions)

    # ------------------------------------------------------------------------------ step
    def stale_rows(self, version: Any) -> int:
        """The first segment whose hyper row was not written from the values of ``version``
        (``len(self.params)`` when every row is current): the owner then hands
        :meth:`write_rows` the values of the segments from there on. ``version`` is any value
        that changes whenever a segment's values (other than the group learning rates of
        :meth:`write_lrs`) may have; rows of segments appended since are stale as well."""
        if self._rows_version != version:
            self._rows_version, self._rows_written = version, 0
        return self._rows_written

    def write_rows(self, start: int, values: Sequence[SegmentValues]) -> None:
        """Write the hyper rows of the segments from ``start`` on (one :class:`SegmentValues`
        each, in segment order) into the host copy of ``table.hyper``; their learning rates
        follow at the next :meth:`write_lrs`.

        Raises:
            ValueError: not one value per segment from ``start`` on."""
        if len(values) != len(self.params) - start:
            raise ValueError(f"{len(values)} rows for {len(self.params) - start} segments")
        rows = np.array(values, dtype=np.float64).reshape(-1, len(SegmentValues._fields))
        self.table.hyper_rows[start:, _ROW_COLUMNS] = rows[:, 1:]
        self._lr_mults = np.concatenate([self._lr_mults[:start], rows[:, 0]])
        self._lr_mults_device = None
        self._group_index = np.array(self.group_index, dtype=np.int64)
        self._rows_written = len(self.params)
        self._lr_signature = None
        self.table.mark_written()

    def write_lrs(self, lrs: list[Any]) -> None:
        """Write the LR column from the param groups' learning rates ``lrs`` (indexed by group,
        as ``positions`` are) times each segment's multiplier, when they changed since the last
        step. Floats are combined with the multipliers on the host; tensors (any of them) on the
        device in :meth:`step`, so that a CUDA-graph capture follows a tensor learning rate filled
        in place between replays."""
        # Plain numbers, the usual case, in C++ (numpy's calls cost more than the arithmetic).
        changed = write_lr_column(lrs, self._group_index, self._lr_mults, self.table.hyper_rows, LR)
        if changed is not None:
            if changed or self._device_lrs is not None:  # else the device holds what the host does
                self.table.mark_written()
            self._device_lrs, self._lr_signature = None, None
        # The set of types is the fast test for plain numbers (a scheduler's numpy float takes
        # the exact isinstance test).
        elif not set(map(type, lrs)) <= PLAIN_NUMBERS and any(isinstance(lr, torch.Tensor) for lr in lrs):
            self._device_lrs, self._lr_signature = lrs, None
        else:  # numpy values, compared by value: a 0-d array may have been written in place
            group_lr = np.array(lrs, dtype=np.float64)
            if self._lr_signature is None or not np.array_equal(group_lr, self._lr_signature):
                self.table.hyper_rows[:, LR] = group_lr[self._group_index] * self._lr_mults
                self.table.mark_written()
                self._device_lrs, self._lr_signature = None, group_lr

    def _write_device_lrs(self) -> None:
        """The LR column from tensor learning rates, on the device: after the upload, which
        copies the host's (stale) column. Float ones among them are filled in by value."""
        if self._lr_mults_device is None:  # after a change of group values: not in steady state
            self._lr_mults_device = torch.from_numpy(self._lr_mults).to(self.device)
            self._group_index_device = torch.from_numpy(self._group_index).to(self.device)
        float64 = dict(dtype=torch.float64, device=self.device)
        group_lr = torch.stack([lr.reshape(()).to(**float64) if isinstance(lr, torch.Tensor)
                                else torch.full((), float(lr), **float64) for lr in self._device_lrs])
        self.table.hyper[:, LR] = group_lr[self._group_index_device] * self._lr_mults_device

    def step(self, grad_mult: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
        """Upload the table, count the step on the device and launch the kernel over every active
        segment (after :meth:`sync`, :meth:`write_rows` and :meth:`write_lrs`). Nothing here
        waits for the device: see :mod:`mlr_kernels.segments` and :mod:`mlr_kernels.staging`."""
        table = self.table
        table.upload()
        if self._device_lrs is not None:
            self._write_device_lrs()
        active = table.hyper[:, ACTIVE]
        table.steps.add_(active if found_inf is None else active * (1 - found_inf))
        state = (self.master, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq)
        tile_size = self.backend.TILE_SIZE
        local = self._local_params()
        # A tie's master re-reads what the last pass wrote.
        for k, segments in enumerate(self._passes or [None]):
            staged = list(self._staged) if segments is None else [i for i in segments if i in self._staged]
            if k:  # a tied segment stepped by an earlier pass may have written this copy's memory
                for i in staged:
                    self._staged[i].copy_(local[i].detach())
            self.backend.adamw_step(table, *state, table.tiles(tile_size, segments), grad_mult, found_inf,
                                    compensation=self.compensation)
            for i in staged:  # written back before a later pass reads the memory
                local[i].detach().copy_(self._staged[i])
                self._staged[i] = local[i]
        table.release()


def _view_freed(bucket: weakref.ref, attr: str, ref: weakref.ref) -> None:
    """Weak-reference callback of a handed-out view (see :meth:`FlatBucket._handed_out_view`)."""
    owner = bucket()
    if owner is not None:
        owner._forget_view(attr, ref)


def _launch_passes(data_ptrs: Sequence[int], positions: Sequence[tuple[int, int]]) -> list[list[int]] | None:
    """None when every segment has its own storage; else the launches that keep torch's order
    for tied ones (``b.data = a.data``): in param-group order, a segment goes one launch after
    the last one before it at the same address, so no launch writes one address twice."""
    if len(set(data_ptrs)) == len(data_ptrs):
        return None
    seen: dict[int, int] = {}
    passes: list[list[int]] = []
    for i in sorted(range(len(data_ptrs)), key=positions.__getitem__):
        ptr = data_ptrs[i]
        k = seen[ptr] = seen.get(ptr, -1) + 1
        if k == len(passes):
            passes.append([])
        passes[k].append(i)
    return passes


def _is_dense(t: torch.Tensor) -> bool:
    """``t``'s elements fill one block of memory, each once: its strides, sorted, are those of a
    contiguous tensor of its sizes so sorted (a ``channels_last`` or transposed tensor is)."""
    expected = 1
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _relaid(now: tuple[list[Any], ...], before: tuple[list[Any], ...]) -> list[bool]:
    """Per parameter, as far as both go (one appended since is checked for its new address),
    whether its layout changed from ``before`` to ``now`` (the layouts of
    :class:`~mlr_kernels.host_reads.ParamReads`); every one, when different reads made them."""
    if len(now) != len(before):
        return [True] * len(now[0])
    changed = list(map(operator.ne, now[0], before[0]))
    for column, old in zip(now[1:], before[1:]):
        changed = list(map(operator.or_, changed, map(operator.ne, column, old)))
    return changed


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
