"""Proxy-guided search for Mods_Robust.

Candidates are the measured modules ranked by robustness (score, then margin, both descending;
equal pairs keep map order: layer, then q k v o gate up down). Starting from the most robust, the
next candidate is added while the probe's accuracy with *all* selected modules perturbed together
stays at or above ``tau × clean accuracy``. The search stops at the first candidate that would
break that, or push the selected parameters above ``budget`` (a fraction of the parameters of all
candidate-type modules, measured or not), or when candidates run out; ``stop_reason`` says which.

The curve starts at the clean model (step 0, no module) and has one point per evaluated candidate;
the rejected one, if any, is the last point with ``accepted: false``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from mlr.analysis.robustness import ModuleScore
from mlr.progress import progress

DEFAULT_TAU = 0.9


@dataclass(frozen=True)
class CurvePoint:
    step: int
    added: str | None
    type: str | None
    layer: int | None
    accuracy: float
    param_fraction: float
    accepted: bool


@dataclass(frozen=True)
class SearchResult:
    modules: list[str]
    param_fraction: float  # params / total_params
    curve: list[CurvePoint]
    params: int
    total_params: int
    clean_accuracy: float
    tau: float
    budget: float | None
    stop_reason: str  # "tau", "budget" or "exhausted"

    def to_json(self, config: dict) -> dict:
        return {**asdict(self), "config": config}


def rank_modules(scores: Sequence[ModuleScore]) -> list[ModuleScore]:
    """Measured modules, most robust first."""
    measured = [s for s in scores if s.measured]
    return sorted(measured, key=lambda s: (s.score, s.margin), reverse=True)


def grow_robust_set(ranked: Sequence[ModuleScore], evaluate: Callable[[list[str]], float],
                    clean_accuracy: float, total_params: int, tau: float = DEFAULT_TAU,
                    budget: float | None = None) -> SearchResult:
    """Grow Mods_Robust along ``ranked``; ``evaluate(names)`` is the probe accuracy with those
    modules perturbed together, ``total_params`` the denominator of ``budget``."""
    threshold = tau * clean_accuracy
    selected: list[str] = []
    params = 0
    curve = [CurvePoint(0, None, None, None, clean_accuracy, 0.0, True)]
    stop_reason = "exhausted"
    for candidate in progress(ranked, desc="search"):
        fraction = (params + candidate.params) / total_params
        if budget is not None and fraction > budget:
            stop_reason = "budget"
            break
        accuracy = evaluate([*selected, candidate.name])
        accepted = accuracy >= threshold
        curve.append(CurvePoint(len(curve), candidate.name, candidate.type, candidate.layer,
                                accuracy, fraction, accepted))
        if not accepted:
            stop_reason = "tau"
            break
        selected.append(candidate.name)
        params += candidate.params
    return SearchResult(selected, params / total_params, curve, params, total_params,
                        clean_accuracy, tau, budget, stop_reason)
