"""Module robustness: how much the frozen security probe's verdict degrades when one module moves.

For a module and a seed, the module's weight is perturbed (``mlr.analysis.perturb``), the held-out prompts'
features at the probe layer are recomputed from the module's layer on (``mlr.analysis.replay``), and the
probe is scored on them.

The proxy is the frozen probe's held-out log-loss ``L`` (mean binary cross-entropy, nats), not its
accuracy: accuracy moves in steps of ``1 / rows`` and saturates near 1.0 on a real model, so one
seed and a hundred prompts could not tell modules apart. A module's robustness ``score`` is the
probe's likelihood retained, ``exp(L_clean - L_perturbed)`` with ``L_perturbed`` averaged over
seeds: the geometric-mean probability of the right verdict, perturbed / clean (1.0 = unaffected,
may exceed 1). ``score_se`` is its standard error over prompts (per-prompt loss changes are
paired, so their spread is small; delta method). ``change`` is the root-mean-square change of
``L`` over seeds, the quantity the first-order map predicts (``mlr.analysis.first_order``).
``accuracy`` (accuracy retained, perturbed / clean) and ``margin`` (mean signed margin retained)
are reported beside it.

Modules above the probe layer cannot change the probe's input at all, so they are **not measured**:
their entry has ``"measured": false`` and ``"score": null``, the heatmap greys them out, and the
search never selects them. Scoring them 1.0 would let the search take them "for free", which says
nothing about their effect on the security feature. A deeper probe (``--layer``) measures more.

Cost is counted in layer-forwards over the held-out set: a naive map runs one full forward
(``num_layers`` layer-forwards) per module and seed; this one runs ``probe_layer - j + 1`` for a
module of layer ``j``, plus one recording pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from mlr.analysis.perturb import Perturbation, perturbed
from mlr.analysis.probe import LinearProbe, accuracy, log_loss, signed_margins
from mlr.analysis.replay import LayerReplay
from mlr.errors import MlrInputError
from mlr.modules import ModuleRef
from mlr.progress import progress


@dataclass(frozen=True)
class Verdict:
    """The frozen probe's verdict on the held-out prompts, clean or with modules perturbed:
    accuracy in [0, 1], the mean signed margin (logit times the sign of the label) and each
    prompt's log-loss."""

    accuracy: float
    margin: float  # mean signed margin
    losses: torch.Tensor  # float64 [rows]: each held-out prompt's log-loss, nats

    @property
    def log_loss(self) -> float:
        return self.losses.mean().item()


def likelihood_retained(clean: Verdict, perturbed: Sequence[Verdict]) -> tuple[float, float]:
    """``exp(L_clean - mean_seeds L_perturbed)`` and its standard error over prompts (delta method
    on the mean of the per-prompt loss changes, averaged over seeds)."""
    changes = torch.stack([v.losses - clean.losses for v in perturbed]).mean(dim=0)
    score = math.exp(-changes.mean().item())
    rows = changes.numel()
    se = changes.std().item() / math.sqrt(rows) if rows > 1 else math.inf
    return score, score * se


class ProbeEvaluator:
    """The frozen probe's verdict on the held-out prompts, clean or with modules perturbed."""

    def __init__(self, replay: LayerReplay, probe: LinearProbe, labels: torch.Tensor) -> None:
        self.replay = replay
        self.probe = probe
        self.labels = labels
        self.clean = self._verdict(replay.clean_features)
        if self.clean.margin <= 0:
            raise MlrInputError(f"the layer-{replay.probe_layer} probe is wrong on average on the "
                                f"held-out set (mean margin {self.clean.margin:.3g}); robustness "
                                "relative to it means nothing: pick another --layer or more data")

    def _verdict(self, features: torch.Tensor) -> Verdict:
        logits = self.probe.logits(features)
        return Verdict(accuracy(logits, self.labels),
                       signed_margins(logits, self.labels).mean().item(),
                       log_loss(logits, self.labels))

    def measurable(self, ref: ModuleRef) -> bool:
        return ref.layer <= self.replay.probe_layer

    def verdict(self, refs: Sequence[ModuleRef], perturbation: Perturbation, seed: int) -> Verdict:
        """The verdict with every module of ``refs`` perturbed together (all must be measurable)."""
        if not refs or not all(self.measurable(ref) for ref in refs):
            raise ValueError("refs must be non-empty and at or below the probe layer")
        with perturbed(refs, perturbation, seed):
            features = self.replay.features_from(min(ref.layer for ref in refs))
        return self._verdict(features)

    def retained(self, refs: Sequence[ModuleRef], perturbation: Perturbation,
                 seeds: Sequence[int]) -> tuple[float, float]:
        """Likelihood retained and accuracy retained (both perturbed / clean, over ``seeds``)
        with every module of ``refs`` perturbed together."""
        verdicts = [self.verdict(refs, perturbation, s) for s in seeds]
        score, _ = likelihood_retained(self.clean, verdicts)
        kept = sum(v.accuracy for v in verdicts) / len(verdicts) / self.clean.accuracy
        return score, kept


@dataclass(frozen=True)
class ModuleScore:
    """One module's entry in the robustness map: what perturbing it alone did to the probe's
    verdict (retained shares are perturbed / clean, 1.0 = unaffected), averaged over seeds.
    Modules above the probe layer cannot change its features and are not measured."""

    name: str
    type: str
    layer: int
    params: int
    measured: bool
    score: float | None  # likelihood retained; None (so are the rest) when not measured
    score_se: float | None  # its standard error over prompts
    change: float | None  # RMS change of the held-out log-loss over seeds, nats
    accuracy: float | None  # accuracy retained, mean over seeds
    margin: float | None  # mean signed margin retained, mean over seeds
    seeds: list[float]  # likelihood retained per seed
    seed_accuracies: list[float]  # accuracy retained per seed


def unmeasured(ref: ModuleRef) -> ModuleScore:
    """The entry of a module above the probe layer."""
    return ModuleScore(ref.name, ref.type, ref.layer, ref.numel, False, None, None, None, None,
                       None, [], [])


@dataclass(frozen=True)
class RobustnessMap:
    """The robustness map stage's outcome (``robustness.json``): every candidate module's score,
    the probe layer and the clean verdict they are relative to, how the modules were perturbed
    (``perturb``, ``alpha``, ``seeds``, ``method``), what it cost (``cost``) and the options that
    produced it (``config``)."""

    modules: list[ModuleScore]
    probe_layer: int
    num_layers: int
    perturb: str
    alpha: float
    seeds: list[int]
    clean_accuracy: float
    clean_margin: float
    clean_log_loss: float
    heldout_rows: int
    method: str  # "exact" or "first-order"
    cost: dict
    config: dict
    comparison: dict | None = None  # the other method's map against this one (Spearman), if run

    def to_json(self) -> dict:
        return {**asdict(self), "modules": [asdict(m) for m in self.modules]}

    @classmethod
    def from_json(cls, data: dict) -> RobustnessMap:
        return cls(**{**data, "modules": [ModuleScore(**m) for m in data["modules"]]})


def score_modules(evaluator: ProbeEvaluator, refs: Sequence[ModuleRef],
                  perturbation: Perturbation, seeds: Sequence[int]) -> list[ModuleScore]:
    """Every module's robustness score, one module perturbed at a time, in the order of ``refs``."""
    clean = evaluator.clean
    scores = []
    for ref in progress(refs, desc=f"robustness ({perturbation.kind})"):
        if not evaluator.measurable(ref):
            scores.append(unmeasured(ref))
            continue
        verdicts = [evaluator.verdict([ref], perturbation, seed) for seed in seeds]
        score, score_se = likelihood_retained(clean, verdicts)
        per_seed = [likelihood_retained(clean, [v])[0] for v in verdicts]
        change = math.sqrt(sum((v.log_loss - clean.log_loss) ** 2 for v in verdicts) / len(verdicts))
        kept = [v.accuracy / clean.accuracy for v in verdicts]
        margin = sum(v.margin for v in verdicts) / len(verdicts) / clean.margin
        scores.append(ModuleScore(ref.name, ref.type, ref.layer, ref.numel, True, score, score_se,
                                  change, sum(kept) / len(kept), margin, per_seed, kept))
    return scores
