"""Proxy-guided search for Mods_Robust.

Candidates are the measured modules ranked by robustness (score descending, then the smaller
RMS change; equal pairs keep map order: layer, then q k v o gate up down). Starting from the most
robust, the next candidate is added while the probe's *likelihood retained* with all selected
modules perturbed together (``mlr.analysis.robustness``: ``exp(L_clean - L_set)``) stays at or
above ``tau``. The search stops at the first candidate that would break that, or push the selected
parameters above ``budget`` (a fraction of the parameters of all candidate-type modules, measured
or not), or when candidates run out; ``stop_reason`` says which and ``stop_detail`` why, in words.

The criterion is the continuous proxy, not accuracy: accuracy on a hundred prompts moves in steps
of 0.01 and, on a real model, falls below ``tau × clean`` as soon as a few modules are perturbed
together, so the size of Mods_Robust was an accident of the noise size. The likelihood retained
falls smoothly as modules join, so ``tau`` (and ``budget``) set the size, and the curve (score,
accuracy and parameter share per step, in ``mods_robust.json`` and ``search.png``) shows what
another ``tau`` or ``budget`` would have given, up to where the search stopped.

The curve starts at the clean model (step 0, no module) and has one point per evaluated candidate;
the rejected one, if any, is the last point with ``accepted: false``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from mlr.analysis.robustness import ModuleScore
from mlr.progress import progress
from mlr.text import plural

DEFAULT_TAU = 0.9


@dataclass(frozen=True)
class CurvePoint:
    """One step of the greedy search: the module tried (None at step 0, the clean probe), the
    probe's verdict with it and every module accepted before perturbed together, the share of
    module parameters they hold, and whether it was kept (score >= tau; a refused one ends it)."""

    step: int
    added: str | None
    type: str | None
    layer: int | None
    score: float  # likelihood retained with every module so far perturbed together
    accuracy: float  # probe accuracy, same perturbation
    param_fraction: float
    accepted: bool


@dataclass(frozen=True)
class SearchResult:
    """The search stage's outcome (``mods_robust.json``): Mods_Robust (module names, most robust
    first), their parameters, the curve of every step, and why the search stopped."""

    modules: list[str]
    param_fraction: float  # params / total_params
    curve: list[CurvePoint]
    params: int
    total_params: int
    clean_accuracy: float
    tau: float
    budget: float | None
    stop_reason: str  # "tau", "budget" or "exhausted"
    stop_detail: str  # the reason in words

    @property
    def summary(self) -> str:
        """Mods_Robust's size and why the search stopped, in one line."""
        return (f"Mods_Robust: {plural(len(self.modules), 'module')}, {self.params:,} parameters = "
                f"{self.param_fraction:.1%} of module parameters; stopped: {self.stop_detail}")

    def to_json(self, config: dict) -> dict:
        return {**asdict(self), "config": config}


def rank_modules(scores: Sequence[ModuleScore]) -> list[ModuleScore]:
    """Measured modules, most robust first."""
    measured = [s for s in scores if s.measured]
    return sorted(measured, key=lambda s: (-s.score, s.change))


def grow_robust_set(ranked: Sequence[ModuleScore],
                    evaluate: Callable[[list[str]], tuple[float, float]],
                    clean_accuracy: float, total_params: int, tau: float = DEFAULT_TAU,
                    budget: float | None = None) -> SearchResult:
    """Grow Mods_Robust along ``ranked``; ``evaluate(names)`` is the probe's (likelihood retained,
    accuracy) with those modules perturbed together, ``total_params`` the denominator of
    ``budget``."""
    selected: list[str] = []
    params = 0
    curve = [CurvePoint(0, None, None, None, 1.0, clean_accuracy, 0.0, True)]
    stop_reason, stop_detail = "exhausted", f"every measured module was added ({len(ranked)})"
    for candidate in progress(ranked, desc="search"):
        fraction = (params + candidate.params) / total_params
        if budget is not None and fraction > budget:
            stop_reason = "budget"
            stop_detail = (f"adding {candidate.name} would hold {fraction:.1%} of module "
                           f"parameters, over the budget of {budget:.1%}")
            break
        score, accuracy = evaluate([*selected, candidate.name])
        accepted = score >= tau
        curve.append(CurvePoint(len(curve), candidate.name, candidate.type, candidate.layer,
                                score, accuracy, fraction, accepted))
        if not accepted:
            stop_reason = "tau"
            stop_detail = (f"adding {candidate.name} would leave the probe {score:.3f} of its "
                           f"held-out likelihood (accuracy {accuracy:.3f}), below tau {tau}")
            break
        selected.append(candidate.name)
        params += candidate.params
    return SearchResult(selected, params / total_params, curve, params, total_params,
                        clean_accuracy, tau, budget, stop_reason, stop_detail)
