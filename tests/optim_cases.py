"""Shared builders for optimizer tests: small random models, random param groups, and a runner
that trains two optimizers on identical data so trajectories can be compared."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

from mlr_kernels.backends import BACKENDS, unavailable_reason


def available_backends() -> list:
    """One pytest param per backend, skipped when it cannot run on CPU tensors here."""
    params = []
    for name in BACKENDS:
        reason = unavailable_reason(name, "cpu")
        params.append(pytest.param(name, marks=pytest.mark.skipif(reason is not None,
                                                                  reason=f"{name}: {reason}")))
    return params


def make_model(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A small MLP with odd sizes (segments not multiples of 16) and an unused-on-demand branch."""
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({
        "inp": torch.nn.Linear(7, 19),
        "mid": torch.nn.Linear(19, 33),
        "norm": torch.nn.LayerNorm(33),
        "out": torch.nn.Linear(33, 5),
        "side": torch.nn.Linear(7, 5),  # used only when forward(use_side=True)
    })
    return model.to(dtype)


def forward(model: torch.nn.Module, x: torch.Tensor, use_side: bool = True) -> torch.Tensor:
    h = model["norm"](torch.tanh(model["mid"](torch.relu(model["inp"](x)))))
    y = model["out"](h)
    return y + model["side"](x) if use_side else y


def random_groups(model: torch.nn.Module, rng: random.Random, base_lr: float = 1e-2):
    """Random param groups for MLRAdamW (with lr_mult) and the equivalent torch.optim.AdamW groups
    (lr multiplied in). Returns (mlr_groups, torch_groups) as lists of (names, options)."""
    names = [n for n, _ in model.named_parameters()]
    rng.shuffle(names)
    cut = sorted(rng.sample(range(1, len(names)), k=min(len(names) - 1, rng.randint(1, 4))))
    spans = [names[a:b] for a, b in zip([0, *cut], [*cut, len(names)])]
    groups = []
    for span in spans:
        opts = dict(lr=base_lr * rng.choice([1.0, 0.3, 2.0]), weight_decay=rng.choice([0.0, 1e-2, 0.1]),
                    betas=(rng.choice([0.9, 0.8]), rng.choice([0.999, 0.99])), eps=rng.choice([1e-8, 1e-6]))
        groups.append((span, opts, rng.choice([1.0, 0.5, 0.1, 0.0, 3.0])))
    return groups


def build_pair(groups, m_ours, m_ref, backend: str, **extra):
    """MLRAdamW with lr_mult groups on ``m_ours`` and torch AdamW with lr*lr_mult on ``m_ref``."""
    from mlr_kernels import MLRAdamW

    p_ours, p_ref = dict(m_ours.named_parameters()), dict(m_ref.named_parameters())
    ours = MLRAdamW([{"params": [p_ours[n] for n in names], "lr_mult": mult, **opts}
                     for names, opts, mult in groups], backend=backend, **extra)
    ref = torch.optim.AdamW([{"params": [p_ref[n] for n in names], **{**opts, "lr": opts["lr"] * mult}}
                             for names, opts, mult in groups], **extra)
    return ours, ref


def train_both(pairs, steps: int, seed: int, step_fn: Callable | None = None, use_side=lambda s: True):
    """Run identical batches through each (model, optimizer) pair."""
    gen = torch.Generator().manual_seed(seed)
    for s in range(steps):
        x = torch.randn(6, 7, generator=gen)
        for model, opt in pairs:
            opt.zero_grad()
            dtype = next(model.parameters()).dtype
            forward(model, x.to(dtype), use_side(s)).float().pow(2).mean().backward()
            (step_fn or (lambda o: o.step()))(opt)


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module, rtol=1e-5, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def torch_adamw_for(groups: list[dict], lr: float, **extra) -> torch.optim.AdamW:
    """torch AdamW equivalent to MLRAdamW over ``groups`` (dicts with ``lr_mult``): each group's
    multiplier folded into its learning rate."""
    return torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"],
                               "lr": lr * g["lr_mult"]} for g in groups], **extra)


def move_state(opt: torch.optim.Optimizer, how: str, device: str = "cpu") -> None:
    """What RL trainers do to take the optimizer state off the GPU between steps, and back:
    verl's ``offload_fsdp_optimizer``/``load_fsdp_optimizer`` replace every state tensor
    (``state[k] = v.to(device)``); ms-swift's DeepSpeed path copies it into a buffer kept in the
    entry and swaps ``.data``. On this CPU-only machine the move is a copy (``copy=True``), which
    is what a move to another device is to the optimizer."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor) or key.endswith("_buffer"):
                    continue
                if how == "replace":
                    state[key] = value.to(device, copy=True)
                else:
                    buffer = state.setdefault(f"{key}_offload_buffer", torch.empty_like(value))
                    buffer.copy_(value)
                    value.data = buffer.to(device, copy=True)
