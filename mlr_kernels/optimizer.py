"""MLRAdamW: AdamW over flat buffers with per-module learning-rate multipliers, one launch per step.

It behaves like ``torch.optim.AdamW`` (same arguments, param groups, state_dict, schedulers,
closures, GradScaler) and adds the group key ``lr_mult`` and :meth:`MLRAdamW.set_lr_mult`. A
parameter's learning rate is ``group["lr"] * multiplier`` where the multiplier is the one set for
that parameter by ``set_lr_mult``, else its group's ``lr_mult`` (default 1.0); ``wd_mult`` scales
the group's weight decay the same way.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from mlr_kernels.backends import resolve_backend
from mlr_kernels.dtensor import all_reduce_norm, sharding_key
from mlr_kernels.flat import SUPPORTED_DTYPES, FlatBucket, check_dense
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
)

# Group keys torch.optim.AdamW keeps; we keep them too so a state_dict loads either way.
_TORCH_ADAMW_FLAGS = dict(foreach=None, capturable=False, differentiable=False, fused=None,
                          decoupled_weight_decay=True)
# Group values that go into the per-segment table (lr is handled apart: it changes every step).
_static_values = operator.itemgetter("weight_decay", "wd_mult", "betas", "eps", "maximize",
                                     "amsgrad", "lr_mult")
_lr_value = operator.itemgetter("lr")
_PLAIN_NUMBERS = {float, int}


class MLRAdamW(Optimizer):
    """AdamW whose every step is one fused pass over flat buffers, whatever the number of groups.

    Args:
        params: what ``torch.optim.AdamW`` accepts: tensors, ``(name, tensor)`` pairs or group
            dicts. Group dicts may carry ``lr_mult`` and ``wd_mult`` (default 1.0).
        lr, betas, eps, weight_decay, amsgrad, maximize: as in ``torch.optim.AdamW``. ``lr`` may
            be a tensor (keep it on the parameters' device to capture ``step()`` in a CUDA graph).
        lr_mult, wd_mult: default multipliers for groups that do not set their own.
        backend: ``"auto"`` (CUDA, else Triton, on a GPU; the C++ kernel on the CPU), ``"cpu"``,
            ``"triton"``, ``"cuda"`` or ``"reference"`` (plain torch, the test oracle).
        foreach, capturable, fused: accepted for drop-in compatibility; the step is always fused.

    The parameters' ``.data`` and ``.grad`` become views of flat buffers. ``zero_grad()`` zeroes
    the gradient buffer in one pass and keeps the views (``.grad`` reads as zeros, not None), but a
    parameter that backward does not reach before the next ``step()`` is left alone exactly as
    ``torch.optim.AdamW`` leaves a parameter whose grad is None. Low-precision (bf16/fp16)
    parameters get float32 master weights, kept in the state under ``"master_param"``.

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
        lr_mult: float = 1.0,
        wd_mult: float = 1.0,
        backend: str = "auto",
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if differentiable:
            raise ValueError("MLRAdamW does not support differentiable=True")
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, lr_mult=lr_mult, wd_mult=wd_mult, **_TORCH_ADAMW_FLAGS)
        defaults.update(foreach=foreach, capturable=capturable, fused=fused)
        self.backend_name = backend
        self._buckets: list[FlatBucket] = []
        self._hooks: list[Any] = []
        self._clip_coef: dict[torch.device, torch.Tensor] = {}
        super().__init__(params, defaults)
        self._build()

    # ----------------------------------------------------------------------------- structure
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, with validation; rebuilds the buckets."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        seen: set[int] = set()
        for p in group["params"]:
            _check_parameter(p)
            if id(p) in seen:
                raise ValueError("a parameter is listed twice in one param group")
            seen.add(id(p))
        if getattr(self, "_buckets", None):  # after __init__: fold the new group in
            self._build()

    def _build(self) -> None:
        """(Re)pack every parameter into flat buckets, carrying over data, grads and state."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        by_key: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        amsgrad: dict[tuple[Any, ...], bool] = {}
        for group in self.param_groups:
            for p in group["params"]:
                key = (p.device, p.dtype, sharding_key(p))
                by_key.setdefault(key, []).append(p)
                amsgrad[key] = amsgrad.get(key, False) or bool(group["amsgrad"])
        self._buckets = []
        self._slot: dict[int, tuple[FlatBucket, int]] = {}
        for key, params in by_key.items():
            bucket = FlatBucket(params, [self.state.get(p, {}) for p in params], amsgrad[key])
            bucket.backend = resolve_backend(self.backend_name, bucket.device)
            if self.backend_name == "auto" and bucket.backend.__name__.endswith("reference"):
                warnings.warn(f"no compiled MLRAdamW kernel for {bucket.device}; using the slow "
                              "reference backend (was the package built?)", stacklevel=3)
            bucket.static_signature = None
            bucket.lr_signature = None
            for i, p in enumerate(params):
                self._slot[id(p)] = (bucket, i)
                self.state[p] = {**self.state.get(p, {}), **bucket.optimizer_state(i)}
                self._hooks.append(p.register_post_accumulate_grad_hook(_mark_live(bucket, i)))
            self._buckets.append(bucket)
        self._group_of = {id(p): g for g in self.param_groups for p in g["params"]}

    # ---------------------------------------------------------------------------- multipliers
    def set_lr_mult(self, mapping: Mapping[torch.Tensor | str, float]) -> None:
        """Set learning-rate multipliers of single parameters, by parameter or by name (names
        exist when the optimizer was built from ``named_parameters()``). Takes effect at the
        next step; nothing is rebuilt."""
        names = {name: p for g in self.param_groups
                 for name, p in zip(g.get("param_names", ()), g["params"])}
        for key, mult in mapping.items():
            if isinstance(key, str):
                if key not in names:
                    raise KeyError(f"no parameter named {key!r} in this optimizer"
                                   + ("" if names else " (build it from named_parameters())"))
                key = names[key]
            if id(key) not in self._slot:
                raise KeyError("set_lr_mult got a tensor that is not a parameter of this optimizer")
            if not float(mult) >= 0.0:
                raise ValueError(f"lr multiplier must be >= 0, got {mult}")
            self.state[key]["lr_mult"] = float(mult)
        for bucket in self._buckets:
            bucket.static_signature = None

    def lr_mult_of(self, p: torch.Tensor) -> float:
        """The learning-rate multiplier in force for parameter ``p``."""
        return self.state[p].get("lr_mult", self._group_of[id(p)]["lr_mult"])

    # ----------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # Read in C loops (operator.itemgetter): with thousands of groups this is most of the
        # step's host time.
        static = tuple(map(_static_values, self.param_groups))
        lrs = list(map(_lr_value, self.param_groups))
        for bucket in self._buckets:
            bucket.sync_grads()
            bucket.pull_params()
            bucket.upload_active()
            self._refresh_table(bucket, static, lrs)
            dev = bucket.device
            skip = None if found_inf is None else found_inf.to(dev, torch.float32).reshape(1)
            active = bucket.hyper[:, ACTIVE]
            bucket.hyper[:, STEP] += active if skip is None else active * (1 - skip)
            bucket.backend.adamw_step(
                bucket.param, bucket.grad, bucket.master, bucket.exp_avg, bucket.exp_avg_sq,
                bucket.max_exp_avg_sq, bucket.hyper, bucket.tiles(bucket.backend.TILE_SIZE),
                self._grad_mult(dev, grad_scale), skip,
            )
            bucket.push_params()
        self._clip_coef = {}
        return loss

    def _grad_mult(self, device: torch.device, grad_scale: torch.Tensor | None) -> torch.Tensor | None:
        """What the kernel multiplies gradients by: 1 / GradScaler's scale times the clip factor."""
        mult = self._clip_coef.get(device)
        if grad_scale is not None:
            inv = grad_scale.to(device, torch.float32).reshape(1).reciprocal()
            mult = inv if mult is None else mult * inv
        return mult

    def _refresh_table(self, bucket: FlatBucket, static: tuple, lrs: list) -> None:
        """Write the per-segment columns that changed since the last step (device ops only when
        the learning rate is a tensor, so a CUDA-graph capture stays valid). ``static`` and
        ``lrs`` are every group's static values and learning rate, read once per step."""
        if bucket.static_signature != static:
            groups = [self._group_of[id(p)] for p in bucket.params]
            rows = []
            for g in groups:
                beta1, beta2 = (float(b) for b in g["betas"])
                rows.append((float(g["weight_decay"]) * float(g["wd_mult"]), beta1, beta2,
                             float(g["eps"]), float(g["maximize"]), float(g["amsgrad"])))
            table = torch.tensor(rows, dtype=torch.float64)
            cols = [WEIGHT_DECAY, BETA1, BETA2, EPS, MAXIMIZE, AMSGRAD]
            bucket.hyper[:, cols] = table.to(bucket.device)
            index = {id(g): k for k, g in enumerate(self.param_groups)}
            bucket.group_index = torch.tensor([index[id(g)] for g in groups], device=bucket.device)
            bucket.lr_mults = torch.tensor([self.lr_mult_of(p) for p in bucket.params],
                                           dtype=torch.float64, device=bucket.device)
            bucket.static_signature = static
            bucket.lr_signature = None
        # The set of types is the fast check for plain numbers; anything else (a tensor, or a
        # numpy float a scheduler computed) gets the exact isinstance test.
        if not set(map(type, lrs)) <= _PLAIN_NUMBERS and any(
                isinstance(lr, torch.Tensor) for lr in lrs):
            group_lr = torch.stack([torch.as_tensor(lr, device=bucket.device) for lr in lrs])
            bucket.hyper[:, LR] = group_lr.to(torch.float64)[bucket.group_index] * bucket.lr_mults
        elif bucket.lr_signature != lrs:
            group_lr = torch.tensor(lrs, dtype=torch.float64, device=bucket.device)
            bucket.hyper[:, LR] = group_lr[bucket.group_index] * bucket.lr_mults
            bucket.lr_signature = lrs

    # ------------------------------------------------------------------------------- gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient buffer in one pass per bucket. With ``set_to_none`` (the default,
        as in torch) every parameter counts as having no gradient until backward reaches it."""
        for bucket in self._buckets:
            bucket.zero_grads()
            if set_to_none:
                bucket.live = [False] * len(bucket.params)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over all of this optimizer's gradients, one norm pass
        per flat buffer. The gradients are not rescaled in place: the clip factor is handed to the
        next ``step()`` on the device, with no host sync. Returns the total norm (a tensor)."""
        norms = []
        for bucket in self._buckets:
            bucket.sync_grads()
            local = torch.linalg.vector_norm(bucket.grad, norm_type, dtype=torch.float32)
            norms.append(all_reduce_norm(local, norm_type, bucket.sharding))
        if not norms:
            return torch.tensor(0.0)
        home = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(home) for n in norms]), norm_type)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        self._clip_coef = {b.device: coef.to(b.device).reshape(1) for b in self._buckets}
        return total

    # ------------------------------------------------------------------------------ state_dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an ``MLRAdamW`` or ``torch.optim.AdamW`` state_dict.

        torch casts moment tensors to each parameter's dtype on load; for low-precision parameters
        we keep float32 moments, so they are re-read from ``state_dict`` before that cast.
        """
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        ours = [p for g in self.param_groups for p in g["params"]]
        originals = {id(p): state_dict["state"].get(i, {}) for i, p in zip(saved_ids, ours)}
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for p in ours:
            state = self.state[p]
            for key, value in originals[id(p)].items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(p.device)
        self._build()


def _mark_live(bucket: FlatBucket, index: int) -> Callable[[torch.Tensor], None]:
    def hook(_: torch.Tensor) -> None:
        bucket.live[index] = True

    return hook


def _check_parameter(p: Any) -> None:
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"MLRAdamW params must be tensors, got {type(p).__name__}")
    if p.is_complex():
        raise ValueError("MLRAdamW does not support complex parameters; view them as real "
                         "(torch.view_as_real) first")
    if p.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"MLRAdamW supports float32, bfloat16 and float16 parameters, got {p.dtype}")
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError("MLRAdamW needs dense (strided) parameters")
    if p.grad is not None:
        check_dense(p.grad)


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
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
