"""MLRAdamW: AdamW with per-module learning-rate multipliers, one fused launch per step.

It behaves like ``torch.optim.AdamW`` (same arguments, param groups, state_dict, schedulers,
closures, GradScaler; docs/optimizer_contract.md lists what user code may do between steps) and
adds the group key ``lr_mult`` and :meth:`MLRAdamW.set_lr_mult`. A parameter's learning rate is
``group["lr"] * multiplier`` where the multiplier is the one set for that parameter by
``set_lr_mult``, else its group's ``lr_mult`` (default 1.0); ``wd_mult`` scales the group's weight
decay the same way.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, compress, repeat
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer

from mlr_kernels.backends import load_backend, resolve_backend
from mlr_kernels.dtensor import local_tensor, sharding_key
from mlr_kernels.flat import (
    FLAT_STATE,
    STATE_DTYPES,
    SUPPORTED_DTYPES,
    FlatBucket,
    Repack,
    SegmentValues,
    state_shape_error,
)
from mlr_kernels.host_reads import same_group_values

# Group keys torch.optim.AdamW keeps; we keep them too so a state_dict loads either way.
_TORCH_ADAMW_FLAGS = dict(foreach=None, capturable=False, differentiable=False, fused=None,
                          decoupled_weight_decay=True)
# Keys only MLRAdamW knows. They are group keys only where set (in a group dict or as constructor
# arguments), so a state_dict of torch.optim.AdamW, flattened by torch.distributed.checkpoint,
# loads into an optimizer that did not set them.
_MLR_KEYS = ("lr_mult", "wd_mult")
# Group values that go into the hyper table (lr is read apart: it changes every step). Read in C
# loops (operator.itemgetter, methodcaller): with thousands of groups this is much of the host time.
_GROUP_KEYS = ("weight_decay", "eps", "maximize", "amsgrad", "betas")
_group_values = operator.itemgetter(*_GROUP_KEYS)
_AMSGRAD = 3  # its place in _group_values
_OPTIONAL_GROUP_KEYS = tuple((key, 1.0) for key in _MLR_KEYS)  # keys a group may lack, and defaults
_lr_value = operator.itemgetter("lr")
_params_of = operator.itemgetter("params")
_changes_of = operator.attrgetter("changes")
_grad_of = operator.attrgetter("grad")


class MLRAdamW(Optimizer):
    """AdamW whose every step is one fused pass, whatever the number of groups or multipliers.

    Args:
        params: what ``torch.optim.AdamW`` accepts: tensors, ``(name, tensor)`` pairs or group
            dicts. Group dicts may carry ``lr_mult`` and ``wd_mult`` (default 1.0).
        lr, betas, eps, weight_decay, amsgrad, maximize: as in ``torch.optim.AdamW``. ``lr`` may
            be a tensor (keep it on the parameters' device to capture ``step()`` in a CUDA graph).
        lr_mult, wd_mult: multipliers for groups that do not set their own (None: 1.0).
        backend: ``"auto"`` (CUDA, else Triton, on a GPU; the C++ kernel on the CPU), ``"cpu"``,
            ``"triton"``, ``"cuda"`` or ``"reference"`` (plain torch, the test oracle).
        state_dtype: ``torch.float32`` (default) or ``torch.bfloat16``: the dtype ``exp_avg``,
            ``exp_avg_sq`` and ``max_exp_avg_sq`` are kept in (2 bytes a parameter each instead of
            4). The math stays float32 inside the kernel; bfloat16 moments are written back with
            stochastic rounding, unbiased (:mod:`mlr_kernels.rounding`).
        master_weights: True (default): bfloat16/float16 parameters are stepped through float32
            master weights (``state[p]["master_param"]``, 4 bytes a parameter). False: without
            them, through a Kahan compensation buffer in the parameter's dtype
            (``state[p]["kahan_comp"]``, 2 bytes a parameter). Float32 parameters have neither.
        seed: of the random bits of stochastic rounding: with the same seed, and the step counts
            a checkpoint restores, a run and its resume draw the same bits.
        foreach, capturable, fused: accepted for drop-in compatibility; the step is always fused.

    Raises:
        ValueError, TypeError: as ``torch.optim.AdamW`` for bad hyperparameters or parameters, and
            for float64, complex or sparse parameters, which the kernels do not step, or a
            ``state_dtype`` other than float32 and bfloat16.

    Parameters and gradients stay the tensors user code and autograd hold; the optimizer's state
    (moments, and float32 master weights for bfloat16/float16 parameters, under ``"master_param"``)
    lives in flat buffers, read through ``optimizer.state`` as views. Every ``step()`` first checks
    what user code changed since the last one (:mod:`mlr_kernels.flat`), so assigned, in-place
    and accumulated gradients, loaded or re-initialized weights, frozen parameters, state resets,
    state tensors replaced (an offload and reload of the state), ``channels_last`` weights, a
    step from every gradient hook and ``model.to()`` all step as with ``torch.optim.AdamW``.
    ``load_state_dict`` refuses state whose tensors do not have their parameters' shapes.
    ``backends`` says which kernel each (device, dtype) bucket resolved to.

    DTensor parameters (FSDP2's ``fully_shard``) are stepped on each rank's local shard, with no
    communication; their state is DTensors, as torch's AdamW keeps it, so
    ``torch.distributed.checkpoint`` saves and restores it (see :mod:`mlr_kernels.dtensor`).
    """

    _step_supports_amp_scaling = True  # GradScaler hands us grad_scale / found_inf tensors

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        lr_mult: float | None = None,
        wd_mult: float | None = None,
        backend: str = "auto",
        state_dtype: torch.dtype = torch.float32,
        master_weights: bool = True,
        seed: int = 0,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if differentiable:
            raise ValueError("MLRAdamW does not support differentiable=True")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be torch.float32 or torch.bfloat16, got {state_dtype}")
        self.state_dtype, self.master_weights, self.seed = state_dtype, bool(master_weights), int(seed)
        if backend != "auto":
            load_backend(backend)  # ValueError for an unknown name, before anything is built
        _check_hyperparameters(lr, betas, eps, weight_decay, lr_mult, wd_mult)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, **_TORCH_ADAMW_FLAGS)
        defaults.update(foreach=foreach, capturable=capturable, fused=fused)
        for key, value in (("lr_mult", lr_mult), ("wd_mult", wd_mult)):
            if value is not None:
                defaults[key] = value
        self.backend_name = backend
        self._buckets: list[FlatBucket] | None = None
        # Parameters without state yet, and their (group, index) positions.
        self._unpacked: list[torch.Tensor] = []
        self._unpacked_at: list[tuple[int, int]] = []
        self._loading: dict[str, Any] | None = None  # inside load_state_dict: the dict being loaded
        self._layout: tuple[list[int], list[torch.Tensor]] = ([], [])
        self._layout_lists: tuple[list[list[torch.Tensor]], list[int] | None] = ([], None)
        self._forget_group_values()
        self._state_values: list[Any] = []
        self._state_changes_seen: int | None = None
        self._param_lr_mult: dict[torch.Tensor, float] = {}
        self._mult_version = 0
        super().__init__(params, defaults)
        self.state = _TrackedState(dict, self.state)
        self._build()

    # ----------------------------------------------------------------------------- structure
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, with validation; a refused group leaves
        ``param_groups`` as it was. Re-packs the buckets (once all of ``__init__``'s groups are
        in), so ``optimizer.state`` has every parameter's entry at once, as after a step."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                                   group.get("lr_mult"), group.get("wd_mult"))
            seen: set[int] = set()
            for p in group["params"]:
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"MLRAdamW params must be tensors, got {type(p).__name__}")
                if p.requires_grad:  # a frozen one is checked if it ever gets a gradient
                    _check_trainable(p)
                if id(p) in seen:
                    raise ValueError("a parameter is listed twice in one param group")
                seen.add(id(p))
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise
        group["params"] = _TrackedList(group["params"])  # torch made this list: nobody else holds it
        if self._buckets is not None:
            self._build()

    def _build(self) -> None:
        """(Re)pack into buckets by (device, dtype, sharding) every parameter that has state or a
        gradient, carrying its state over from ``self.state``. As ``torch.optim.AdamW`` creates
        state lazily, a parameter that never had a gradient (a frozen base weight under LoRA)
        gets none, and costs nothing."""
        with torch.inference_mode(False):  # an optimizer built under inference mode still trains
            self._pack()

    def _pack(self) -> None:
        by_key: dict[tuple[Any, ...], list[tuple[torch.Tensor, tuple[int, int]]]] = {}
        unpacked, unpacked_at = [], []
        for k, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if not self.state.get(p) and p.grad is None:
                    unpacked.append(p)
                    unpacked_at.append((k, j))
                    continue
                by_key.setdefault(_bucket_key(p), []).append((p, (k, j)))
        self._buckets = [self._new_bucket(members) for members in by_key.values()]
        self._unpacked, self._unpacked_at = unpacked, unpacked_at
        self._layout = self._group_layout()
        self._layout_lists = self._params_lists()
        self._amsgrad_packed = [bool(g["amsgrad"]) for g in self.param_groups]
        self._state_values = list(self.state.values())
        self._state_changes_seen = getattr(self.state, "changes", None)

    def _new_bucket(self, members: list[tuple[torch.Tensor, tuple[int, int]]]) -> FlatBucket:
        """A bucket of ``(parameter, position)`` pairs of one key, their state adopted."""
        params, positions = [p for p, _ in members], [at for _, at in members]
        for p in params:
            _check_trainable(p)
        amsgrad = any(self.param_groups[k]["amsgrad"] for k, _ in positions)
        bucket = FlatBucket(params, amsgrad, positions, self._describe, self.state_dtype,
                            self.master_weights, self.seed)
        bucket.backend = resolve_backend(self.backend_name, bucket.device)
        bucket.adopt_entries(self.state, self._extra_state_of(bucket), range(len(params)))
        return bucket

    def _pack_new(self) -> None:
        """Give state to the parameters that just got their first gradient by appending them to
        their buckets, not by re-packing: an optimizer stepped from every parameter's
        post-accumulate-grad hook meets one new gradient per step in its first backward."""
        with torch.inference_mode(False):
            got = list(map(operator.is_not, map(_grad_of, self._unpacked), repeat(None)))
            by_key: dict[tuple[Any, ...], list[tuple[torch.Tensor, tuple[int, int]]]] = {}
            for p, at in compress(zip(self._unpacked, self._unpacked_at), got):
                _check_trainable(p)  # before anything changes
                by_key.setdefault(_bucket_key(p), []).append((p, at))
            buckets = {(b.device, b.dtype, b.sharding): b for b in self._buckets}
            if any(key in buckets and not buckets[key].amsgrad
                   and any(self.param_groups[k]["amsgrad"] for _, (k, _) in members)
                   for key, members in by_key.items()):
                self._build()  # the bucket needs a max_exp_avg_sq buffer
                return
            kept = list(map(operator.not_, got))
            self._unpacked = list(compress(self._unpacked, kept))
            self._unpacked_at = list(compress(self._unpacked_at, kept))
            for key, members in by_key.items():
                if key not in buckets:
                    self._buckets.append(self._new_bucket(members))
                    continue
                bucket = buckets[key]
                bucket.extend([p for p, _ in members], [at for _, at in members], self.state,
                              self._extra_state_of(bucket))

    def _group_layout(self) -> tuple[list[int], list[torch.Tensor]]:
        """What the buckets were packed from: each group's size and every parameter in group
        order (read in C loops: it is compared at every step)."""
        groups = self.param_groups
        return list(map(len, map(_params_of, groups))), list(chain.from_iterable(map(_params_of, groups)))

    def _params_lists(self) -> tuple[list[list[torch.Tensor]], list[int] | None]:
        """The groups' ``params`` lists and, when every one is a :class:`_TrackedList`, their
        change counts (None when user code assigned a list of its own)."""
        lists = list(map(_params_of, self.param_groups))
        try:
            return lists, list(map(_changes_of, lists))
        except AttributeError:
            return lists, None

    def _layout_changed(self) -> bool:
        """True when the param groups changed shape or order (params added, removed, moved or
        swapped; groups inserted, removed or reordered). One comparison per group when the
        ``params`` lists are the ones this optimizer made and count their changes; else one per
        parameter."""
        lists, changes = self._params_lists()
        seen_lists, seen_changes = self._layout_lists
        if changes is not None and changes == seen_changes and all(map(operator.is_, lists, seen_lists)):
            return False
        sizes, params = self._group_layout()
        seen_sizes, seen_params = self._layout
        if sizes != seen_sizes or not all(map(operator.is_, params, seen_params)):
            return True
        self._layout_lists = lists, changes
        return False

    def _has_new_gradients(self) -> bool:
        """True when a parameter without state got a gradient."""
        return not all(map(operator.is_, map(_grad_of, self._unpacked), repeat(None)))

    @property
    def buckets(self) -> list[FlatBucket]:
        """The flat-state buckets, one per (device, dtype, sharding) of the parameters that have
        state: re-packed when the param groups changed, extended when parameters without state
        got gradients."""
        if self._buckets is None or self._layout_changed():
            self._build()
        elif self._has_new_gradients():
            self._pack_new()
        return self._buckets

    @property
    def backends(self) -> dict[str, str]:
        """Which kernel steps each bucket: ``{"cpu/torch.float32": "cpu", ...}``."""
        return {f"{b.device}/{b.dtype}": b.backend.NAME for b in self.buckets}

    def _describe(self, position: tuple[int, int]) -> str:
        """The parameter at ``(group index, index in the group)``, as error messages name it."""
        k, j = position
        names = self.param_groups[k].get("param_names")
        return f"parameter {names[j]!r}" if names else f"param_groups[{k}]['params'][{j}]"

    def _extra_state(self, p: torch.Tensor) -> dict[str, Any]:
        """State keys kept beside the buffers: the multiplier ``set_lr_mult`` gave ``p``."""
        return {"lr_mult": self._param_lr_mult[p]} if p in self._param_lr_mult else {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(backend_name=self.backend_name, _param_lr_mult=self._param_lr_mult,
                     state_dtype=self.state_dtype, master_weights=self.master_weights, seed=self.seed)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling, ``copy.deepcopy`` and ``load_state_dict`` come here: re-pack the state."""
        loading = getattr(self, "_loading", None)
        if loading:
            self._check_loaded_shapes(state)
            self._restore_uncast(loading["state_dict"], state)
        super().__setstate__(state)
        for name, default in (("state_dtype", torch.float32), ("master_weights", True), ("seed", 0)):
            if not hasattr(self, name):  # pickled by a version without them
                setattr(self, name, default)
        self.state = _TrackedState(dict, self.state)
        self._mult_version = getattr(self, "_mult_version", 0) + 1
        self._forget_group_values()
        self._loading = None
        self._build()

    # ---------------------------------------------------------------------------- multipliers
    def set_lr_mult(self, mapping: Mapping[torch.Tensor | str, float]) -> None:
        """Set learning-rate multipliers of single parameters, by parameter or by name (names
        exist when the optimizer was built from ``named_parameters()``). Takes effect at the
        next step; nothing is rebuilt.

        Raises:
            KeyError: an unknown name or a tensor that is not a parameter of this optimizer.
            ValueError: a negative multiplier."""
        names = {name: p for g in self.param_groups
                 for name, p in zip(g.get("param_names", ()), g["params"])}
        ours = {id(p) for g in self.param_groups for p in g["params"]}
        for key, mult in mapping.items():
            if isinstance(key, str):
                if key not in names:
                    raise KeyError(f"no parameter named {key!r} in this optimizer"
                                   + ("" if names else " (build it from named_parameters())"))
                key = names[key]
            if id(key) not in ours:
                raise KeyError("set_lr_mult got a tensor that is not a parameter of this optimizer")
            if not float(mult) >= 0.0:
                raise ValueError(f"lr multiplier must be >= 0, got {mult}")
            self._param_lr_mult[key] = float(mult)
            if self.state.get(key):  # a parameter without state gets the key when it is packed
                self.state[key]["lr_mult"] = float(mult)
        self._mult_version += 1

    def lr_mult_of(self, p: torch.Tensor) -> float:
        """The learning-rate multiplier in force for parameter ``p``."""
        if p in self._param_lr_mult:
            return self._param_lr_mult[p]
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return float(group.get("lr_mult", 1.0))

    # ----------------------------------------------------------------------------------- step
    # torch.compile of a training step runs this eagerly (a graph break, as at torch's own
    # zero_grad): its host work reads and writes the optimizer's Python state, which Dynamo would
    # trace into guards or fail to functionalize. About 1 µs per call; torch._dynamo is imported
    # at the first call only.
    @torch._disable_dynamo
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdamW step of every parameter whose ``.grad`` is not None, as
        ``torch.optim.AdamW.step``; returns the closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for bucket in self._prepare():
            dev = bucket.device
            skip = None if found_inf is None else found_inf.to(dev, torch.float32).reshape(1)
            inverse_scale = None if grad_scale is None else grad_scale.to(dev, torch.float32).reshape(1)
            bucket.step(None if inverse_scale is None else inverse_scale.reciprocal(), skip)
        return loss

    def _prepare(self) -> list[FlatBucket]:
        """What a step does on the host before its launches: the contract check (:meth:`_sync`)
        and the host copy of the hyper table; returns the buckets to launch. In steady state
        it reads each parameter's gradient and addresses and each group's values in C loops, and
        nothing of the device (bench/compare_optimizers.py times it per parameter)."""
        groups = self.param_groups
        version = (self._groups_version_now(groups), self._mult_version)
        lrs = list(map(_lr_value, groups))
        buckets = self._sync()
        for bucket in buckets:
            start = bucket.stale_rows(version)
            if start < len(bucket.params):  # after a change of values, or appended segments
                bucket.write_rows(start, self._segment_values(bucket, start))
            bucket.write_lrs(lrs)
        return buckets

    def _forget_group_values(self) -> None:
        """Start :meth:`_groups_version_now` afresh: the next step reads every group value."""
        self._groups_seen: Any = None
        self._groups_snapshot: Any = None
        self._groups_mutable = True
        self._groups_version = getattr(self, "_groups_version", 0) + 1
        self._amsgrad_packed: list[bool] = []

    def _groups_version_now(self, groups: list[dict[str, Any]]) -> int:
        """A number that changes exactly when a group value the hyper table holds (other than
        ``lr``) does. Usually one comparison of the values with those read at the last step, in C++
        (:func:`~mlr_kernels.host_reads.same_group_values`) or read in C loops; when a value is
        mutable in place (a ``betas`` list, a tensor), a snapshot of them.
        A switched ``amsgrad`` makes the next step re-pack (the buckets need another buffer)."""
        if not self._groups_mutable and same_group_values(groups, _GROUP_KEYS, _OPTIONAL_GROUP_KEYS,
                                                          self._groups_seen):
            return self._groups_version  # checked in C++, without reading them into new lists
        current = (list(map(_group_values, groups)),  # dict.get through map: 3x a methodcaller
                   *(list(map(dict.get, groups, repeat(key), repeat(default)))
                     for key, default in _OPTIONAL_GROUP_KEYS))
        if not self._groups_mutable and _same_values(current, self._groups_seen):
            return self._groups_version
        snapshot, self._groups_mutable = _snapshot(current)
        if snapshot != self._groups_snapshot:
            self._groups_version += 1
            self._groups_snapshot = snapshot
            if [bool(values[_AMSGRAD]) for values in snapshot[0]] != self._amsgrad_packed:
                self._buckets = None
        self._groups_seen = current
        return self._groups_version

    def _sync(self) -> list[FlatBucket]:
        """Point every bucket's segment table at what user code holds now (the contract check of
        :mod:`mlr_kernels.flat`); re-pack first if a parameter moved to another device or dtype."""
        state = self.state
        tracked = type(state) is _TrackedState and state.changes == self._state_changes_seen
        # Else an entry may have been replaced, removed or added, or the mapping replaced by one
        # that does not count its changes: its entries are compared by identity in C, since
        # looking parameters up (Tensor.__hash__ is Python) would cost more than the rest.
        entries_changed = not tracked and (
            len(state) != len(self._state_values)
            or not all(map(operator.is_, state.values(), self._state_values)))
        try:
            for bucket in self.buckets:
                bucket.sync(state, entries_changed, self._extra_state_of(bucket))
        except Repack:  # model.to(...) after construction
            self._build()
            for bucket in self._buckets:
                bucket.sync(self.state, True, self._extra_state_of(bucket))
        state = self.state
        if not (tracked and state.changes == self._state_changes_seen):
            self._state_values = list(state.values())
            self._state_changes_seen = getattr(state, "changes", None)
        return self._buckets

    def _extra_state_of(self, bucket: FlatBucket) -> Callable[[int], dict[str, Any]]:
        return lambda i: self._extra_state(bucket.params[i])

    def _segment_values(self, bucket: FlatBucket, start: int) -> list[SegmentValues]:
        """The hyperparameters of ``bucket``'s segments from ``start`` on: their groups' values,
        and each one's lr multiplier (``set_lr_mult``'s, else its group's ``lr_mult``)."""
        groups = self.param_groups
        group_mult, rest = {}, {}
        for k in set(bucket.group_index[start:]):
            g = groups[k]
            beta1, beta2 = g["betas"]
            group_mult[k] = float(g.get("lr_mult", 1.0))
            rest[k] = (float(g["weight_decay"]) * float(g.get("wd_mult", 1.0)), float(beta1), float(beta2),
                       float(g["eps"]), float(g["maximize"]), float(g["amsgrad"]))
        mults = self._param_lr_mult
        return [SegmentValues(mults.get(p, group_mult[k]), *rest[k])
                for p, k in zip(bucket.params[start:], bucket.group_index[start:])]

    # ------------------------------------------------------------------------------- gradients
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                        foreach: bool | None = None, *,
                        grad_scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over this optimizer's parameters (same arguments and
        result: the total norm, the gradients scaled in place).

        With ``grad_scaler`` the gradients are taken to be scaled by it (between
        ``scaler.scale(loss).backward()`` and ``scaler.step``): the norm returned is the true,
        unscaled one and the clip factor ``max_norm / norm`` is applied to the scaled gradients,
        which ``scaler.step`` then unscales. This is how to clip float16 parameters, whose
        gradients ``scaler.unscale_`` refuses to unscale in place; fp32 parameters can use
        ``scaler.unscale_(optimizer)`` and then this method (or torch's) without it."""
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grad_scaler is None or not grad_scaler.is_enabled():
            return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
        # In float32: the norm of scaled float16 gradients overflows float16 long before theirs.
        norms = [torch.linalg.vector_norm(p.grad, norm_type, dtype=torch.float32) for p in params]
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type) if norms else torch.tensor(0.0)
        if error_if_nonfinite and not torch.isfinite(total):
            raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite")
        total = total / _scale_of(grad_scaler, total)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
        return total

    # ------------------------------------------------------------------------------ state_dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an ``MLRAdamW`` or ``torch.optim.AdamW`` state_dict, as torch does (its checks,
        errors and load hooks included).

        torch casts state tensors to each parameter's dtype; for bfloat16/float16 parameters we
        keep float32 moments and masters, so they are taken from the state_dict as the pre-hooks
        left it, before that cast (and before the post-hooks run). Keys the saved groups lack
        (``lr_mult``, ``wd_mult`` in a torch state_dict) keep this optimizer's values, as do
        ``set_lr_mult`` multipliers; empty entries (what ``torch.distributed.checkpoint`` gives for
        state a flattened torch state_dict lacks, such as ``master_param``) count as missing."""
        loading: dict[str, Any] = {}

        def capture(_: Optimizer, loaded: dict[str, Any]) -> None:  # runs after the user's pre-hooks
            loading["state_dict"] = loaded

        handle = self.register_load_state_dict_pre_hook(capture)
        self._loading = loading
        try:
            super().load_state_dict(state_dict)  # re-packs through __setstate__
        finally:
            handle.remove()
            self._loading = None

    def _check_loaded_shapes(self, state: dict[str, Any]) -> None:
        """Inside ``load_state_dict``, before anything changes: refuse state whose tensors do not
        have their parameters' shapes (a checkpoint of parameters in another order, or of other
        shapes). torch checks only the number of parameters per group, and fails at the step."""
        for k, group in enumerate(state["param_groups"]):
            for j, p in enumerate(group["params"]):
                entry = state["state"].get(p, {})
                for key, _ in FLAT_STATE:
                    value = entry.get(key)
                    if isinstance(value, torch.Tensor) and value.shape != p.shape:
                        raise state_shape_error(f"load_state_dict: {self._describe((k, j))}", key,
                                                value.shape, p.shape)

    def _restore_uncast(self, loaded: dict[str, Any], state: dict[str, Any]) -> None:
        """Inside ``load_state_dict``: put back into ``state`` (the one torch built) what its
        cast would lose, and the MLRAdamW keys the saved state_dict lacks."""
        for old, new in zip(self.param_groups, state["param_groups"]):
            for key in _MLR_KEYS:
                if key in old and key not in new:
                    new[key] = old[key]
        saved_ids = [i for g in loaded["param_groups"] for i in g["params"]]
        params = [p for g in state["param_groups"] for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            entry = state["state"].get(p)
            if entry is None:
                continue
            saved = loaded["state"].get(saved_id, {})
            for key, value in list(entry.items()):
                if isinstance(value, Mapping) and not value:
                    del entry[key]
                elif key != "step" and isinstance(saved.get(key), torch.Tensor):
                    entry[key] = saved[key].to(local_tensor(p).device)
            if "lr_mult" in entry:
                self._param_lr_mult[p] = float(entry["lr_mult"])


class _TrackedList(list):
    """A param group's ``params`` list that counts the changes made to it, so that a step tells
    that no group gained, lost or reordered parameters by comparing one number per group. A list
    user code assigns to ``group["params"]`` instead is compared element by element."""

    changes = 0  # a class default: unpickling appends the items before it restores attributes

    def _changed(self) -> None:
        self.changes += 1

    def __setitem__(self, index: Any, value: Any) -> None:
        self._changed()
        super().__setitem__(index, value)

    def __delitem__(self, index: Any) -> None:
        self._changed()
        super().__delitem__(index)

    def __iadd__(self, other: Any) -> _TrackedList:
        self._changed()
        return super().__iadd__(other)

    def __imul__(self, n: int) -> _TrackedList:
        self._changed()
        return super().__imul__(n)

    def append(self, value: Any) -> None:
        self._changed()
        super().append(value)

    def extend(self, values: Any) -> None:
        self._changed()
        super().extend(values)

    def insert(self, index: int, value: Any) -> None:
        self._changed()
        super().insert(index, value)

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def remove(self, value: Any) -> None:
        self._changed()
        super().remove(value)

    def clear(self) -> None:
        self._changed()
        super().clear()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        super().sort(*args, **kwargs)

    def reverse(self) -> None:
        self._changed()
        super().reverse()


class _TrackedState(defaultdict):
    """``optimizer.state`` as torch keeps it (a ``defaultdict`` of dicts) that counts the changes
    to its entries (set, deleted, cleared, updated), so that a step tells that none was replaced
    by comparing one number, not every entry. A mapping user code assigns to ``optimizer.state``
    instead is compared entry by entry at every step. Changes inside an entry (a state tensor
    replaced) are followed by :mod:`mlr_kernels.flat`."""

    changes = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.changes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.changes += 1
        super().__delitem__(key)

    def clear(self) -> None:
        self.changes += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self.changes += 1
        return super().pop(*args)

    def popitem(self) -> tuple[Any, Any]:
        self.changes += 1
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.changes += 1
        return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.changes += 1
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> _TrackedState:
        self.update(other)
        return self


def _bucket_key(p: torch.Tensor) -> tuple[Any, ...]:
    """Parameters of one key share a bucket: (device, dtype, sharding) of the local tensor."""
    local = local_tensor(p)
    return local.device, local.dtype, sharding_key(p)


def _same_values(current: Any, seen: Any) -> bool:
    """``current == seen``, False where that has no truth value (a numpy array of two values
    replacing a tuple compares elementwise)."""
    try:
        return bool(current == seen)
    except (ValueError, TypeError):
        return False


def _snapshot(current: tuple[list, list, list]) -> tuple[tuple, bool]:
    """The group values of ``current`` as values a later read cannot change (lists and numpy
    arrays as tuples or numbers, tensors as :class:`_TensorValue`), and whether any was mutable
    in place."""
    mutable = False

    def frozen(value: Any) -> Any:
        nonlocal mutable
        if isinstance(value, (list, tuple)):
            mutable |= not isinstance(value, tuple)
            return tuple(map(frozen, value))
        if isinstance(value, torch.Tensor):
            mutable = True
            return _TensorValue(value)
        if isinstance(value, np.ndarray):  # betas=np.array([0.9, 0.999]), eps=np.array(1e-8)
            mutable = True
            return frozen(value.tolist())
        return value

    return tuple(tuple(map(frozen, part)) for part in current), mutable


class _TensorValue:
    """A tensor hyperparameter in a snapshot: equal to another while it is the same tensor at
    the same version (an in-place write bumps it). Reading its value would make the host wait for
    the device; the hyper table reads it only when the snapshot changed."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.version = tensor, tensor._version

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _TensorValue) and other.tensor is self.tensor
                and other.version == self.version)

    __hash__ = None


def _scale_of(scaler: torch.amp.GradScaler, like: torch.Tensor) -> torch.Tensor:
    """The scaler's current scale on ``like``'s device; its tensor (no host sync) once
    ``scaler.scale`` has run, its initial scale before."""
    scale = getattr(scaler, "_get_scale_async", lambda: None)()
    if scale is None:
        return torch.tensor(scaler.get_scale(), device=like.device, dtype=like.dtype)
    return scale.to(like.device, like.dtype)


def _check_trainable(p: torch.Tensor) -> None:
    """Raise unless the kernels can step ``p``: a dense float32, bfloat16 or float16 tensor."""
    if p.is_complex():
        raise ValueError("MLRAdamW does not support complex parameters; view them as real "
                         "(torch.view_as_real) first")
    if p.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"MLRAdamW supports float32, bfloat16 and float16 parameters, got {p.dtype}")
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError("MLRAdamW needs dense (strided) parameters")


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any,
                           lr_mult: Any = None, wd_mult: Any = None) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("a tensor lr must have one element")
    if not float(lr) >= 0.0:
        raise ValueError(f"invalid learning rate: {lr}")
    if not float(eps) >= 0.0:
        raise ValueError(f"invalid epsilon: {eps}")
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"invalid betas: {betas} (each must be in [0, 1))")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"invalid weight_decay: {weight_decay}")
    for name, value in (("lr_mult", lr_mult), ("wd_mult", wd_mult)):
        if value is not None and not float(value) >= 0.0:
            raise ValueError(f"invalid {name}: {value} (must be >= 0)")
