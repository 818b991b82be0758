"""Weight perturbations of single modules, applied in place and undone exactly.

Both kinds move a module's weight ``W`` by a step whose Frobenius norm is about ``alpha × ‖W‖``, so
one ``alpha`` means the same relative size for both:

* ``noise``: ``ΔW = alpha × rms(W) × ε`` with ``ε ~ N(0, 1)`` drawn from a generator seeded by the
  seed and the module's name (the same module and seed always get the same noise).
* ``ift-grad`` (a simulated benign fine-tuning step): ``ΔW = -alpha × ‖W‖ × G / ‖G‖`` where ``G`` is
  this module's block of the gradient of the instruction loss on a benign batch; the seed picks the
  batch. Only the perturbed module moves, even though one backward gives every module's ``G``.

Only weights move, never biases; a LoRA-wrapped module's frozen base weight is the one perturbed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from mlr.instruction_loss import LossBatch
from mlr.modules import ModuleRef, module_gradients

PERTURBATIONS = ("noise", "ift-grad")


class Perturbation(Protocol):
    kind: str
    alpha: float

    def delta(self, ref: ModuleRef, seed: int) -> torch.Tensor:
        """The float32 step for ``ref``'s weight under ``seed``."""
        ...


def _module_seed(seed: int, name: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**63


class NoisePerturbation:
    kind = "noise"

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def delta(self, ref: ModuleRef, seed: int) -> torch.Tensor:
        weight = ref.weight().detach().float()
        generator = torch.Generator().manual_seed(_module_seed(seed, ref.name))
        noise = torch.randn(weight.shape, generator=generator).to(weight.device)
        return self.alpha * weight.square().mean().sqrt() * noise


def instruction_gradients(model: nn.Module, batch: LossBatch,
                          refs: Sequence[ModuleRef]) -> dict[str, torch.Tensor]:
    """Each module's block of the instruction-loss gradient on ``batch`` (float32, keyed by module
    name), from one forward and backward with gradients enabled only on the modules' weights."""
    def backward() -> None:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
              labels=batch.labels, use_cache=False).loss.backward()

    return module_gradients(model, refs, backward)


class GradientPerturbation:
    """``gradients(seed)`` returns every module's instruction-loss gradient block, keyed by module
    name (``instruction_gradients`` on the batch the seed picks); it is called once per seed and
    kept (memory: one set of gradients per seed)."""

    kind = "ift-grad"

    def __init__(self, alpha: float, gradients: Callable[[int], dict[str, torch.Tensor]]) -> None:
        self.alpha = alpha
        self._gradients = gradients
        self._by_seed: dict[int, dict[str, torch.Tensor]] = {}

    def delta(self, ref: ModuleRef, seed: int) -> torch.Tensor:
        if seed not in self._by_seed:
            self._by_seed[seed] = self._gradients(seed)
        gradient = self._by_seed[seed][ref.name].float()
        weight_norm = ref.weight().detach().float().norm()
        return -self.alpha * weight_norm * gradient / gradient.norm().clamp_min(1e-30)


@contextmanager
def perturbed(refs: Sequence[ModuleRef], perturbation: Perturbation, seed: int) -> Iterator[None]:
    """Inside the block, every module in ``refs`` carries its perturbation; on exit the original
    weights are copied back bit for bit."""
    deltas = [perturbation.delta(ref, seed) for ref in refs]  # all from the unperturbed model
    originals = [ref.weight().detach().clone() for ref in refs]
    try:
        with torch.no_grad():
            for ref, delta in zip(refs, deltas):
                weight = ref.weight()
                weight.add_(delta.to(weight.device, weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for ref, original in zip(refs, originals):
                ref.weight().copy_(original)
