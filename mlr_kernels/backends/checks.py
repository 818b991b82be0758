"""Boundary checks shared by the kernel backends: a kernel trusts its pointers, so every argument is
checked here first, with a message that names it. Nothing here reads tensor values, so no check
forces a host sync or breaks a CUDA-graph capture. The per-segment addresses were checked when the
table was pointed at its tensors (:meth:`mlr_kernels.segments.SegmentTable.point_at`)."""

from __future__ import annotations

import torch

from mlr_kernels.segments import NUM_HYPER_COLUMNS, NUM_POINTER_COLUMNS, STATE_DTYPE_CODES, SegmentTable


def _check_vector(name: str, tensor: torch.Tensor, device: torch.device, numel: int,
                  dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but the segment table is on {device}")
    if tensor.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(map(str, dtypes))}, got {tensor.dtype}")
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
    compensation: torch.Tensor | None = None,
) -> None:
    """Raise ``ValueError`` unless the arguments follow the ``adamw_step`` contract of
    :mod:`mlr_kernels.backends`. Tile bounds and the AMSGRAD column are not checked: that would
    read device memory (the C++ kernel checks tile bounds itself)."""
    if not isinstance(table, SegmentTable):
        raise ValueError(f"table must be a SegmentTable, got {type(table).__name__}")
    device, length = table.device, table.length
    if table.dtype == torch.float32:
        if master is not None or compensation is not None:
            raise ValueError("master and compensation must be None when the parameters are float32 "
                             "(they are the master copy)")
    elif (master is None) == (compensation is None):
        raise ValueError(f"{table.dtype} parameters need a float32 master copy or a compensation "
                         "buffer (master_weights=False), exactly one of them")
    elif master is not None:
        _check_vector("master", master, device, length)
    else:
        _check_vector("compensation", compensation, device, length, (table.dtype,))
    state_dtypes = tuple(STATE_DTYPE_CODES)
    _check_vector("exp_avg", exp_avg, device, length, state_dtypes)
    for name, buffer in (("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", max_exp_avg_sq)):
        if buffer is not None:
            _check_vector(name, buffer, device, length, (exp_avg.dtype,))
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
