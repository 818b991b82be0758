"""How stable is Mods_Robust? The search repeated on bootstrap resamples of the held-out prompts.

Mods_Robust rests on a sample of held-out prompts: another sample could rank the modules
otherwise or stop the search one module earlier or later (a module scoring 0.905 on one machine
and 0.898 on another against τ = 0.9 moved a whole module in or out). ``search_stability`` redraws
the prompts ``bootstraps`` times (rows drawn with replacement, a seeded generator) and reruns the
whole search on each draw: rank the modules by their likelihood retained on the draw, grow the
set while the likelihood retained with all of it perturbed stays ≥ τ (and within the budget).
Each module's **frequency** is the share of draws whose Mods_Robust holds it.

Every per-prompt loss change is computed once, on all held-out prompts: one per module (the map's
perturbations) and one per candidate set any draw asks for (cached by set), so a draw costs only
means over resampled rows. The perturbation seeds are those of the map and search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from mlr.analysis.perturb import Perturbation
from mlr.analysis.robustness import ModuleScore, ProbeEvaluator
from mlr.analysis.search import SearchResult
from mlr.modules import ModuleRef
from mlr.progress import progress

DEFAULT_BOOTSTRAPS = 20


@dataclass(frozen=True)
class Stability:
    """How stable Mods_Robust is: the search rerun on ``bootstraps`` resamplings (with
    replacement) of the held-out prompts, and how often each module came back."""

    bootstraps: int
    frequency: dict[str, float]  # module -> share of draws whose Mods_Robust holds it
    sizes: list[int]  # Mods_Robust's size in each draw
    same_set: float  # share of draws that give exactly the search's Mods_Robust
    rows: int  # held-out prompts resampled

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self, modules: Sequence[str]) -> str:
        """One line: how often the search's modules come back, and what else enters."""
        kept = ", ".join(f"{name} {self.frequency.get(name, 0.0):.0%}" for name in modules)
        others = sorted(((f, n) for n, f in self.frequency.items() if n not in modules),
                        reverse=True)[:3]
        extra = "; others: " + ", ".join(f"{n} {f:.0%}" for f, n in others) if others else ""
        return (f"over {self.bootstraps} bootstrap draws of the {self.rows} held-out prompts, "
                f"the same set {self.same_set:.0%} of the time; {kept or 'no module'}{extra}")


class _Changes:
    """Per-prompt loss changes (mean over seeds) with sets of modules perturbed, cached."""

    def __init__(self, evaluator: ProbeEvaluator, refs: dict[str, ModuleRef],
                 perturbation: Perturbation, seeds: Sequence[int]) -> None:
        self.evaluator, self.refs = evaluator, refs
        self.perturbation, self.seeds = perturbation, list(seeds)
        self._cache: dict[frozenset[str], torch.Tensor] = {}

    def of(self, names: Sequence[str]) -> torch.Tensor:
        key = frozenset(names)
        if key not in self._cache:
            clean = self.evaluator.clean.losses
            refs = [self.refs[name] for name in names]
            self._cache[key] = torch.stack([
                self.evaluator.verdict(refs, self.perturbation, seed).losses - clean
                for seed in self.seeds]).mean(dim=0)
        return self._cache[key]


def _retained(changes: torch.Tensor, rows: torch.Tensor) -> float:
    return math.exp(-changes[rows].mean().item())


def _draw_search(changes: _Changes, candidates: list[ModuleScore], rows: torch.Tensor,
                 tau: float, budget: float | None, total_params: int) -> list[str]:
    """The search on one draw of ``rows``: rank by likelihood retained on the draw, then grow."""
    ranked = sorted(candidates, key=lambda m: (-_retained(changes.of([m.name]), rows), m.change))
    selected: list[str] = []
    params = 0
    for candidate in ranked:
        if budget is not None and (params + candidate.params) / total_params > budget:
            break
        if _retained(changes.of([*selected, candidate.name]), rows) < tau:
            break
        selected.append(candidate.name)
        params += candidate.params
    return selected


def search_stability(evaluator: ProbeEvaluator, refs: Sequence[ModuleRef],
                     modules: Sequence[ModuleScore], perturbation: Perturbation,
                     seeds: Sequence[int], search: SearchResult,
                     bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0) -> Stability:
    """Mods_Robust's membership frequencies over ``bootstraps`` draws of the evaluator's held-out
    prompts (``modules``: the map, whose measured modules are the candidates)."""
    changes = _Changes(evaluator, {ref.name: ref for ref in refs}, perturbation, seeds)
    candidates = [m for m in modules if m.measured]
    rows = evaluator.replay.rows
    generator = torch.Generator().manual_seed(seed)
    counts: dict[str, int] = {}
    sizes, same = [], 0
    for _ in progress(range(bootstraps), desc="stability"):
        draw = torch.randint(rows, (rows,), generator=generator)
        chosen = _draw_search(changes, candidates, draw, search.tau, search.budget,
                              search.total_params)
        for name in chosen:
            counts[name] = counts.get(name, 0) + 1
        sizes.append(len(chosen))
        same += set(chosen) == set(search.modules)
    frequency = {name: count / bootstraps for name, count in
                 sorted(counts.items(), key=lambda item: -item[1])}
    return Stability(bootstraps, frequency, sizes, same / bootstraps, rows)
