"""Boundary checks shared by the kernel backends: a kernel trusts its pointers, so every argument is
checked here first, with a message that names it. Nothing here reads tensor values, so no check
forces a host sync or breaks a CUDA-graph capture."""

from __future__ import annotations

import torch

from mlr_kernels.segments import NUM_HYPER_COLUMNS

PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_vector(name: str, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device,
                  numel: int | None = None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but param is on {device}")
    if tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {tensor.dtype}")
    if tensor.dim() != 1 or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(tensor.shape)}")
    if numel is not None and tensor.numel() != numel:
        raise ValueError(f"{name} has {tensor.numel()} elements but param has {numel}")


def _check_table(name: str, tensor: torch.Tensor, dtype: torch.dtype, columns: int,
                 device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but param is on {device}")
    if tensor.dtype != dtype or tensor.dim() != 2 or tensor.shape[1] != columns:
        raise ValueError(f"{name} must be a {dtype} [N, {columns}] table, "
                         f"got {tensor.dtype} {tuple(tensor.shape)}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_step_args(
    param: torch.Tensor,
    grad: torch.Tensor,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    hyper: torch.Tensor,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` unless the arguments follow the ``adamw_step`` contract of
    :mod:`mlr_kernels.backends`. Tile bounds and the AMSGRAD column are not checked: that would
    read device memory."""
    if param.dtype not in PARAM_DTYPES:
        raise ValueError(f"param must be float32, bfloat16 or float16, got {param.dtype}")
    device, numel = param.device, param.numel()
    _check_vector("param", param, param.dtype, device)
    _check_vector("grad", grad, param.dtype, device, numel)
    if param.dtype == torch.float32:
        if master is not None:
            raise ValueError("master must be None when param is float32 (param is the master copy)")
    elif master is None:
        raise ValueError(f"a float32 master copy is required when param is {param.dtype}")
    else:
        _check_vector("master", master, torch.float32, device, numel)
    _check_vector("exp_avg", exp_avg, torch.float32, device, numel)
    _check_vector("exp_avg_sq", exp_avg_sq, torch.float32, device, numel)
    if max_exp_avg_sq is not None:
        _check_vector("max_exp_avg_sq", max_exp_avg_sq, torch.float32, device, numel)
    _check_table("hyper", hyper, torch.float64, NUM_HYPER_COLUMNS, device)
    _check_table("tiles", tiles, torch.int64, 3, device)
    for name, scalar in (("grad_mult", grad_mult), ("found_inf", found_inf)):
        if scalar is not None:
            _check_vector(name, scalar.reshape(-1), torch.float32, device, 1)

