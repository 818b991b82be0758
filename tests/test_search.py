"""The Mods_Robust search: order, tau, budget, curve."""

from __future__ import annotations

import pytest
from mlr.analysis.robustness import ModuleScore
from mlr.analysis.search import grow_robust_set, rank_modules


def module(name: str, score: float | None, margin: float | None = 1.0, params: int = 10,
           layer: int = 0) -> ModuleScore:
    measured = score is not None
    return ModuleScore(name, "q", layer, params, measured, score, margin if measured else None,
                       [score] if measured else [], [margin] if measured else [])


def accuracy_drops_per_module(drops: dict[str, float], clean: float = 1.0):
    """A fake evaluator: each selected module costs its drop, additively."""
    calls = []

    def evaluate(names: list[str]) -> float:
        calls.append(list(names))
        return clean - sum(drops[n] for n in names)

    return evaluate, calls


def test_rank_puts_most_robust_first_breaks_ties_by_margin_and_skips_unmeasured():
    scores = [module("a", 0.9), module("b", 1.0, 0.5), module("c", None), module("d", 1.0, 0.8),
              module("e", 1.0, 0.8)]
    assert [m.name for m in rank_modules(scores)] == ["d", "e", "b", "a"]


def test_stops_at_the_first_module_that_breaks_tau():
    ranked = [module(n, s) for n, s in [("a", 1.0), ("b", 0.99), ("c", 0.98), ("d", 0.97)]]
    evaluate, calls = accuracy_drops_per_module({"a": 0.02, "b": 0.03, "c": 0.06, "d": 0.0})
    result = grow_robust_set(ranked, evaluate, clean_accuracy=1.0, total_params=100, tau=0.9)
    assert result.modules == ["a", "b"]
    assert result.stop_reason == "tau"
    assert calls == [["a"], ["a", "b"], ["a", "b", "c"]]  # all selected perturbed together
    assert [p.accepted for p in result.curve] == [True, True, True, False]
    assert result.curve[0].added is None and result.curve[0].accuracy == 1.0
    assert all(p.accuracy >= 0.9 for p in result.curve if p.accepted)
    assert result.curve[-1].accuracy == pytest.approx(0.89)
    assert result.param_fraction == pytest.approx(0.2)


def test_respects_the_parameter_budget():
    ranked = [module("a", 1.0, params=30), module("b", 1.0, 0.9, params=30),
              module("c", 1.0, 0.8, params=30)]
    evaluate, calls = accuracy_drops_per_module({"a": 0, "b": 0, "c": 0})
    result = grow_robust_set(ranked, evaluate, 1.0, total_params=100, tau=0.9, budget=0.65)
    assert result.modules == ["a", "b"] and result.stop_reason == "budget"
    assert result.param_fraction == pytest.approx(0.6) and len(calls) == 2
    everything = grow_robust_set(ranked, evaluate, 1.0, total_params=100)
    assert everything.modules == ["a", "b", "c"] and everything.stop_reason == "exhausted"


def test_threshold_is_relative_to_clean_accuracy():
    ranked = [module("a", 1.0)]
    evaluate, _ = accuracy_drops_per_module({"a": 0.1}, clean=0.8)  # 0.7 < 0.9 * 0.8 = 0.72
    assert grow_robust_set(ranked, evaluate, 0.8, total_params=10).modules == []
    assert grow_robust_set(ranked, evaluate, 0.8, total_params=10, tau=0.85).modules == ["a"]
