"""The first-order robustness map: every module's expected proxy change from one gradient.

Under relative noise ``ΔW = α · rms(W) · ε`` (``ε ~ N(0, 1)``, ``mlr.analysis.perturb``), the
held-out log-loss ``L`` of the frozen probe changes to first order by ``⟨∇_W L, ΔW⟩``, whose
expected square is ``α² · rms(W)² · ‖∇_W L‖²``. One forward to the probe layer and one backward
per batch give ``∇_W L`` for every module at once, so the whole map costs about three
forwards of the held-out set instead of one replay per module and seed.

The map predicts ``change = α · rms(W) · ‖∇_W L‖`` (nats, the RMS change that
``ModuleScore.change`` measures) and scores a module ``exp(-change)``, on the scale of the exact
map's likelihood retained. It is blind to the second-order (curvature) term, which is what a
zero-mean perturbation's *average* effect consists of; ``compare_maps`` says how well the two
maps agree (Spearman's rank correlation). Only noise has this closed form: for ``ift-grad`` the
step is one fixed direction, and the exact map is the one to run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mlr.analysis.probe import LinearProbe, log_loss
from mlr.analysis.robustness import ModuleScore, unmeasured
from mlr.features import Batch
from mlr.modules import ModuleRef, decoder_layers, module_gradients
from mlr.progress import progress
from mlr.rank_correlation import spearman
from mlr_kernels.capture import last_token_index


class _ReachedProbeLayer(Exception):
    """Raised by the probe layer's hook to skip the layers above it and the LM head."""


def _probe_layer_output(model: nn.Module, batch: Batch, probe_layer: int) -> torch.Tensor:
    """The probe layer's hidden states ``[batch, seq, hidden]`` with autograd history."""
    kept: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output) -> None:
        kept.append(output[0] if isinstance(output, tuple) else output)
        raise _ReachedProbeLayer

    handle = decoder_layers(model)[probe_layer].register_forward_hook(hook)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _ReachedProbeLayer:
        pass
    finally:
        handle.remove()
    return kept[0]


def loss_gradients(model: nn.Module, batches: Sequence[Batch], probe: LinearProbe,
                   labels: torch.Tensor, probe_layer: int,
                   refs: Sequence[ModuleRef]) -> dict[str, torch.Tensor]:
    """``∇_W L`` (float32, keyed by module name) for each of ``refs``, where ``L`` is the probe's
    mean held-out log-loss over all rows of ``batches`` (``labels``: int64 ``[rows]``). Parameters'
    ``requires_grad`` and ``grad`` are restored afterwards."""
    rows = sum(len(b.rows) for b in batches)

    def backward() -> None:
        for batch in progress(batches, desc="first-order map"):
            hidden = _probe_layer_output(model, batch, probe_layer)
            last = last_token_index(batch.attention_mask).to(hidden.device)
            features = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            logits = probe.logits(features.cpu())
            (log_loss(logits, labels[batch.rows]).sum() / rows).backward()

    return module_gradients(model, refs, backward)


def first_order_scores(model: nn.Module, batches: Sequence[Batch], probe: LinearProbe,
                       labels: torch.Tensor, probe_layer: int, refs: Sequence[ModuleRef],
                       alpha: float) -> list[ModuleScore]:
    """Every module's predicted RMS change and score, in the order of ``refs``; modules above
    ``probe_layer`` are not measured."""
    measured = [ref for ref in refs if ref.layer <= probe_layer]
    gradients = loss_gradients(model, batches, probe, labels, probe_layer, measured)
    scores = []
    for ref in refs:
        if ref.layer > probe_layer:
            scores.append(unmeasured(ref))
            continue
        weight = ref.weight().detach().float()
        change = alpha * weight.square().mean().sqrt().item() * gradients[ref.name].norm().item()
        scores.append(ModuleScore(ref.name, ref.type, ref.layer, ref.numel, True,
                                  math.exp(-change), None, change, None, None, [], []))
    return scores


def compare_maps(exact: Sequence[ModuleScore], first: Sequence[ModuleScore]) -> dict:
    """Spearman of the two maps over the modules both measured: on the score (the ranking the
    search uses) and on the RMS change (the quantity the first-order map predicts)."""
    by_name = {m.name: m for m in first if m.measured}
    pairs = [(m, by_name[m.name]) for m in exact if m.measured and m.name in by_name]
    return {"modules": len(pairs),
            "spearman_score": spearman([e.score for e, _ in pairs], [f.score for _, f in pairs]),
            "spearman_change": spearman([e.change for e, _ in pairs],
                                        [f.change for _, f in pairs])}
