"""Module robustness: how much the frozen security probe's verdict degrades when one module moves.

For a module and a seed, the module's weight is perturbed (``mlr.analysis.perturb``), the held-out prompts'
features at the probe layer are recomputed from the module's layer on (``mlr.analysis.replay``), and the
probe is scored on them. A module's robustness ``score`` is the probe accuracy retained relative to
the clean model (perturbed / clean; 1.0 = unaffected, may exceed 1), averaged over seeds; ``margin``
is the same ratio for the mean signed margin, a finer signal used to break ties.

Modules above the probe layer cannot change the probe's input at all, so they are **not measured**:
their entry has ``"measured": false`` and ``"score": null``, the heatmap greys them out, and the
search never selects them. Scoring them 1.0 would let the search take them "for free", which says
nothing about their effect on the security feature. A deeper probe (``--layer``) measures more.

Cost is counted in layer-forwards over the held-out set: a naive map runs one full forward
(``num_layers`` layer-forwards) per module and seed; this one runs ``probe_layer - j + 1`` for a
module of layer ``j``, plus one recording pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from mlr.analysis.perturb import Perturbation, perturbed
from mlr.analysis.probe import LinearProbe, accuracy, signed_margins
from mlr.analysis.replay import LayerReplay
from mlr.errors import MlrInputError
from mlr.modules import ModuleRef
from mlr.progress import progress


@dataclass(frozen=True)
class Verdict:
    accuracy: float
    margin: float  # mean signed margin


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
                       signed_margins(logits, self.labels).mean().item())

    def measurable(self, ref: ModuleRef) -> bool:
        return ref.layer <= self.replay.probe_layer

    def verdict(self, refs: Sequence[ModuleRef], perturbation: Perturbation, seed: int) -> Verdict:
        """The verdict with every module of ``refs`` perturbed together (all must be measurable)."""
        if not refs or not all(self.measurable(ref) for ref in refs):
            raise ValueError("refs must be non-empty and at or below the probe layer")
        with perturbed(refs, perturbation, seed):
            features = self.replay.features_from(min(ref.layer for ref in refs))
        return self._verdict(features)

    def mean_accuracy(self, refs: Sequence[ModuleRef], perturbation: Perturbation,
                      seeds: Sequence[int]) -> float:
        return sum(self.verdict(refs, perturbation, s).accuracy for s in seeds) / len(seeds)


@dataclass(frozen=True)
class ModuleScore:
    name: str
    type: str
    layer: int
    params: int
    measured: bool
    score: float | None  # mean accuracy retained; None when not measured
    margin: float | None  # mean margin retained
    seeds: list[float]  # accuracy retained per seed
    seed_margins: list[float]


@dataclass(frozen=True)
class RobustnessMap:
    modules: list[ModuleScore]
    probe_layer: int
    num_layers: int
    perturb: str
    alpha: float
    seeds: list[int]
    clean_accuracy: float
    clean_margin: float
    cost: dict
    config: dict

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
            scores.append(ModuleScore(ref.name, ref.type, ref.layer, ref.numel, False, None, None,
                                      [], []))
            continue
        verdicts = [evaluator.verdict([ref], perturbation, seed) for seed in seeds]
        kept = [v.accuracy / clean.accuracy for v in verdicts]
        margins = [v.margin / clean.margin for v in verdicts]
        scores.append(ModuleScore(ref.name, ref.type, ref.layer, ref.numel, True,
                                  sum(kept) / len(kept), sum(margins) / len(margins),
                                  kept, margins))
    return scores
