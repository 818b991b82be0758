"""DTensor parameters (FSDP2's ``fully_shard``): the optimizer works on each rank's local shard.

A DTensor parameter's segment is the rank's local shard, never the full tensor, so stepping needs
no communication: the kernel reads and writes the shard FSDP2 all-gathers from, and the local
shard of the gradient. Optimizer state is DTensors whose local tensors are views of the flat state
buffers, so ``torch.distributed.checkpoint`` saves and loads it in place.

``torch.distributed.tensor`` is never imported here: if no one imported it, no DTensor exists.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def dtensor_type() -> type | None:
    """The DTensor class, or None where ``torch.distributed.tensor`` was never imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's local shard of a DTensor (the storage itself, not a copy); other tensors as is."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


_local_of = operator.attrgetter("_local_tensor")


def local_tensors(dtensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local_tensor` of each of ``dtensors``, every one a DTensor (one attribute read each)."""
    return list(map(_local_of, dtensors))


def local_grad(param: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of DTensor ``param``'s gradient ``grad`` (None stays None).

    torch checks a DTensor gradient against its parameter as DTensors, never their local shards,
    and the kernel steps one shard with the other: they must be sharded alike.

    Raises:
        RuntimeError: ``grad`` is not a DTensor (``torch.optim.AdamW`` refuses the mix too), is
            sharded otherwise (placements or mesh), or its shard is not of the shape, dtype and
            device of the parameter's.
    """
    if grad is None:
        return None
    if not is_dtensor(grad):
        raise RuntimeError("a DTensor parameter has a gradient that is not a DTensor: assign one "
                           "sharded like the parameter")
    spec, param_spec = grad._spec, param._spec
    if spec is not param_spec and (spec.placements != param_spec.placements
                                   or (spec.mesh is not param_spec.mesh and spec.mesh != param_spec.mesh)):
        raise RuntimeError(f"a DTensor parameter's gradient is sharded otherwise ({spec.placements} "
                           f"against the parameter's {param_spec.placements}): MLRAdamW steps each "
                           "shard with the gradient's same shard")
    local, local_param = grad._local_tensor, param._local_tensor
    if (local.dtype != local_param.dtype or local.shape != local_param.shape
            or local.device != local_param.device):
        raise RuntimeError(f"a DTensor gradient's local shard is {local.dtype} {tuple(local.shape)} on "
                           f"{local.device}, its parameter's {local_param.dtype} "
                           f"{tuple(local_param.shape)} on {local_param.device}")
    return local


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
