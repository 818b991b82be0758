"""DTensor parameters (FSDP2's ``fully_shard``): the optimizer works on each rank's local shard.

A DTensor parameter's segment in a flat buffer holds the rank's local shard, never the full
tensor, so stepping needs no communication. FSDP2 owns the shard's storage (it all-gathers from it
and may replace it, e.g. on ``load_state_dict``), so the flat buffer keeps a copy that is written
back after every step; gradients and optimizer state are DTensors whose local tensors are views of
the flat buffers, so FSDP2's reduce-scatter accumulates straight into them and
``torch.distributed.checkpoint`` saves and loads them in place.

``torch.distributed.tensor`` is never imported here: if no one imported it, no DTensor exists.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's local shard of a DTensor (the storage itself, not a copy); other tensors as is."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


@torch.no_grad()
def dtensor_like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``local`` as a DTensor sharded like ``param`` (sharing ``local``'s memory)."""
    from torch.distributed.tensor import DTensor  # already imported: ``param`` is one

    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def sharding_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    """Tensors with equal keys are sharded over the same process groups (None: not a DTensor)."""
    if not is_dtensor(tensor):
        return None
    return tensor.device_mesh, tuple(i for i, p in enumerate(tensor.placements) if p.is_shard())


def all_reduce_norm(norm: torch.Tensor, norm_type: float, key: tuple[Any, ...] | None) -> torch.Tensor:
    """The norm over every rank's shard, from this rank's local ``norm`` of tensors with ``key``."""
    if key is None:
        return norm
    import torch.distributed as dist

    mesh, dims = key
    inf = norm_type == float("inf")
    total = norm.clone() if inf else norm.pow(norm_type)
    for dim in dims:
        dist.all_reduce(total, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM,
                        group=mesh.get_group(dim))
    return total if inf else total.pow(1.0 / norm_type)
