"""Boundary checks shared by the kernel backends: a kernel trusts its pointers, so every argument is
checked here first, with a message that names it. Nothing here reads tensor values, so no check
forces a host sync or breaks a CUDA-graph capture. The per-segment addresses were checked when the
table was pointed at its tensors (:meth:`mlr_kernels.segments.SegmentTable.point_at`)."""

from __future__ import annotations

import torch

from mlr_kernels.segments import NUM_HYPER_COLUMNS, NUM_POINTER_COLUMNS, SegmentTable


def _check_vector(name: str, tensor: torch.Tensor, device: torch.device, numel: int) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but the segment table is on {device}")
    if tensor.dtype != torch.float32:
        raise ValueError(f"{name} must be {torch.float32}, got {tensor.dtype}")
    if tensor.dim() != 1 or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(tensor.shape)}")
    if tensor.numel() != numel:
        raise ValueError(f"{name} has {tensor.numel()} elements but the segment table lays out {numel}")


def _check_table(name: str, tensor: torch.Tensor, dtype: torch.dtype, rows: int | None,
                 columns: int, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but the segment table is on {device}")
    if (tensor.dtype != dtype or tensor.dim() != 2 or tensor.shape[1] != columns
            or (rows is not None and tensor.shape[0] != rows)):
        shape = f"[{'N' if rows is None else rows}, {columns}]"
        raise ValueError(f"{name} must be a {dtype} {shape} table, got {tensor.dtype} {tuple(tensor.shape)}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_step_args(
    table: SegmentTable,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` unless the arguments follow the ``adamw_step`` contract of
    :mod:`mlr_kernels.backends`. Tile bounds and the AMSGRAD column are not checked: that would
    read device memory (the C++ kernel checks tile bounds itself)."""
    if not isinstance(table, SegmentTable):
        raise ValueError(f"table must be a SegmentTable, got {type(table).__name__}")
    device, length = table.device, table.length
    if table.dtype == torch.float32:
        if master is not None:
            raise ValueError("master must be None when the parameters are float32 (they are the master copy)")
    elif master is None:
        raise ValueError(f"a float32 master copy is required when the parameters are {table.dtype}")
    else:
        _check_vector("master", master, device, length)
    _check_vector("exp_avg", exp_avg, device, length)
    _check_vector("exp_avg_sq", exp_avg_sq, device, length)
    if max_exp_avg_sq is not None:
        _check_vector("max_exp_avg_sq", max_exp_avg_sq, device, length)
    _check_table("hyper", table.hyper, torch.float64, len(table), NUM_HYPER_COLUMNS, device)
    _check_table("pointers", table.pointers, torch.int64, len(table), NUM_POINTER_COLUMNS, device)
    steps = table.steps
    if steps.device != device or steps.dtype != torch.float64 or steps.shape != (len(table),):
        raise ValueError(f"steps must be a torch.float64 [{len(table)}] vector on {device}, got "
                         f"{steps.dtype} {tuple(steps.shape)} on {steps.device}")
    if not steps.is_contiguous():
        raise ValueError("steps must be contiguous")
    _check_table("tiles", tiles, torch.int64, None, 3, device)
    for name, scalar in (("grad_mult", grad_mult), ("found_inf", found_inf)):
        if scalar is not None:
            _check_vector(name, scalar.reshape(-1), device, 1)


def check_stream_args(device_type: str, **vectors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every one of ``vectors`` (named as the caller's arguments) is a
    contiguous 1-D float32 tensor on a ``device_type`` device, all of the first one's length (the
    bandwidth-ceiling loops ``stream_4r3w``)."""
    numel = next(iter(vectors.values())).numel()
    for name, tensor in vectors.items():
        if (tensor.device.type != device_type or tensor.dtype != torch.float32 or tensor.dim() != 1
                or not tensor.is_contiguous() or tensor.numel() != numel):
            raise ValueError(f"{name} must be a contiguous 1-D float32 {device_type.upper()} tensor of "
                             f"{numel} elements, got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}")
