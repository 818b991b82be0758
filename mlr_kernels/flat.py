"""Flat buffers: every parameter of one device and dtype packed into one contiguous tensor.

A :class:`FlatBucket` owns the parameter, gradient, master-weight and moment buffers of its
parameters and re-points each ``param.data`` and ``param.grad`` at views of them, so backward
accumulates straight into the flat gradient buffer and one kernel launch updates everything. A
bucket of DTensor parameters (FSDP2) holds each rank's local shards: see :mod:`mlr_kernels.dtensor`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mlr_kernels.dtensor import dtensor_like, local_tensor, sharding_key
from mlr_kernels.segments import ACTIVE, NUM_HYPER_COLUMNS, STEP, make_tiles, segment_offsets

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_grad_of = operator.attrgetter("grad")


class FlatBucket:
    """Flat storage for the parameters of one (device, dtype).

    ``param`` and ``grad`` have the parameters' dtype; ``master`` (float32 copy of low-precision
    parameters), ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` are float32. ``hyper`` is the
    per-segment table of :mod:`mlr_kernels.segments`, one row per parameter, in ``params`` order.
    ``live[i]`` says whether parameter ``i`` has a gradient in the sense of ``torch.optim``: a
    ``.grad`` that is not None. After :meth:`zero_grads` the gradient views stay in place (so the
    next backward accumulates into them) but count as None until backward writes to them.

    All parameters of a bucket share their ``sharding`` (:func:`~mlr_kernels.dtensor.sharding_key`).
    Segments of DTensor parameters are their local shards; their ``.grad`` and state are DTensors
    over views of the flat buffers, and :meth:`pull_params` / :meth:`push_params` keep the shards
    FSDP2 owns in step with the flat parameter buffer.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        states: Sequence[Mapping[str, Any]],
        amsgrad: bool,
    ) -> None:
        first = local_tensor(params[0])
        self.device, self.dtype = first.device, first.dtype
        self.sharding = sharding_key(params[0])
        self.params = list(params)
        self.shapes = [local_tensor(p).shape for p in params]
        self.numels = [shape.numel() for shape in self.shapes]
        self.offsets, length = segment_offsets(self.numels)
        float32 = dict(dtype=torch.float32, device=self.device)

        # Zero padding between segments: kernels never touch it, reductions may read it.
        self.param = torch.zeros(length, dtype=self.dtype, device=self.device)
        self.grad = torch.zeros(length, dtype=self.dtype, device=self.device)
        self.master = None if self.dtype == torch.float32 else torch.zeros(length, **float32)
        self.exp_avg = torch.zeros(length, **float32)
        self.exp_avg_sq = torch.zeros(length, **float32)
        self.max_exp_avg_sq = torch.zeros(length, **float32) if amsgrad else None
        self.hyper = torch.zeros(len(params), NUM_HYPER_COLUMNS, dtype=torch.float64, device=self.device)
        self.live = [False] * len(params)
        self._tiles: dict[int, torch.Tensor] = {}
        self._uploaded_active: list[bool] | None = None
        # DTensor segments: the local shard last copied to or from the flat buffer, and its version.
        self._synced_shards: dict[int, tuple[torch.Tensor, int]] = {}

        self.param_views = self._views(self.param)
        self.grad_views = [self._like_param(i, view) for i, view in enumerate(self._views(self.grad))]
        for i, (p, state) in enumerate(zip(self.params, states)):
            self._adopt(i, p, state)

    def _views(self, flat: torch.Tensor | None) -> list[torch.Tensor]:
        if flat is None:
            return []
        return [flat[o : o + n].view(s) for s, o, n in zip(self.shapes, self.offsets, self.numels)]

    def _like_param(self, i: int, view: torch.Tensor) -> torch.Tensor:
        """A view of a flat buffer as parameter ``i`` sees it: a DTensor for a DTensor parameter."""
        return view if self.sharding is None else dtensor_like(self.params[i], view)

    def _adopt(self, i: int, p: torch.Tensor, state: Mapping[str, Any]) -> None:
        """Copy parameter ``i``'s data, gradient and optimizer state into the flat buffers."""
        local = local_tensor(p).detach()
        self.param_views[i].copy_(local)
        master = self.master_view(i)
        if master is not None:
            master.copy_(local_tensor(state["master_param"]) if "master_param" in state else local)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            view = self.state_view(key, i)
            if view is not None and key in state:
                view.copy_(local_tensor(state[key]).reshape(view.shape))
        if "step" in state:
            self.hyper[i, STEP] = float(state["step"])
        if self.sharding is None:
            p.data = self.param_views[i]
        else:
            self._synced_shards[i] = (local_tensor(p), local_tensor(p)._version)
        if p.grad is not None:
            check_dense(p.grad)
            local_tensor(self.grad_views[i]).copy_(local_tensor(p.grad))
            self.live[i] = True
        p.grad = self.grad_views[i]

    def state_view(self, key: str, i: int) -> torch.Tensor | None:
        flat = getattr(self, key)
        if flat is None:
            return None
        o, n = self.offsets[i], self.numels[i]
        return flat[o : o + n].view(self.shapes[i])

    def master_view(self, i: int) -> torch.Tensor | None:
        return self.state_view("master", i)

    def optimizer_state(self, i: int) -> dict[str, torch.Tensor]:
        """Parameter ``i``'s state as ``torch.optim.AdamW`` names it, as views of the flat buffers
        (DTensors for a DTensor parameter, as torch's AdamW keeps them under FSDP2)."""
        like = self._like_param
        state = {"step": self.hyper[i, STEP], "exp_avg": like(i, self.state_view("exp_avg", i)),
                 "exp_avg_sq": like(i, self.state_view("exp_avg_sq", i))}
        if self.max_exp_avg_sq is not None:
            state["max_exp_avg_sq"] = like(i, self.state_view("max_exp_avg_sq", i))
        if self.master is not None:
            state["master_param"] = like(i, self.master_view(i))
        return state

    def tiles(self, tile_size: int) -> torch.Tensor:
        """The tile list for a backend's tile size, built once and kept on the bucket's device."""
        if tile_size not in self._tiles:
            tiles = make_tiles(self.offsets, self.numels, tile_size)
            self._tiles[tile_size] = tiles.to(self.device)
        return self._tiles[tile_size]

    def sync_grads(self) -> None:
        """Bring every ``.grad`` back into the flat buffer before a step or a norm.

        User code may have replaced a gradient (``model.zero_grad()`` sets it to None and the next
        backward allocates a new one, ``create_graph`` accumulates out of place): copy such a
        gradient into its view and re-point ``.grad``; a None gradient zeroes its view and marks
        the parameter as having no gradient this step.
        """
        if all(map(operator.is_, map(_grad_of, self.params), self.grad_views)):
            return  # the usual case, checked in C loops: thousands of parameters cost microseconds
        for i, (p, view) in enumerate(zip(self.params, self.grad_views)):
            grad = p.grad
            if grad is view:
                continue
            if grad is None:
                local_tensor(view).zero_()
                self.live[i] = False
            else:
                check_dense(grad)
                local_tensor(view).copy_(local_tensor(grad))
                self.live[i] = True
            p.grad = view

    def pull_params(self) -> None:
        """Copy into the flat buffer every DTensor shard written or replaced since the last step
        (``load_state_dict`` on the model, FSDP2 re-padding its storage); a no-op otherwise."""
        for i, (synced, version) in self._synced_shards.items():
            local = local_tensor(self.params[i])
            if local is synced and local._version == version:
                continue
            self.param_views[i].copy_(local)
            master = self.master_view(i)
            if master is not None:
                master.copy_(local)
            self._synced_shards[i] = (local, local._version)

    def push_params(self) -> None:
        """Write the stepped flat buffer back into the DTensor shards that FSDP2 all-gathers from."""
        for i in self._synced_shards:
            local = local_tensor(self.params[i])
            local.copy_(self.param_views[i])
            self._synced_shards[i] = (local, local._version)

    def upload_active(self) -> None:
        """Write the ACTIVE column from ``live``, only when it changed since the last step."""
        if self.live != self._uploaded_active:
            flags = torch.tensor(self.live, dtype=torch.float64)
            self.hyper[:, ACTIVE].copy_(flags, non_blocking=True)
            self._uploaded_active = list(self.live)

    def zero_grads(self) -> None:
        """Zero the gradient buffer in one pass and re-point every ``.grad`` at its view."""
        self.grad.zero_()
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not view:
                p.grad = view


def check_dense(grad: torch.Tensor) -> None:
    if grad.is_sparse:
        raise RuntimeError("MLRAdamW does not support sparse gradients; use torch.optim.SparseAdam")
