"""The Mods_Robust search: order, tau on the continuous proxy, budget, curve, stop reason."""

from __future__ import annotations

import pytest
from mlr.analysis.robustness import ModuleScore
from mlr.analysis.search import grow_robust_set, rank_modules


def module(name: str, score: float | None, change: float = 0.0, params: int = 10,
           layer: int = 0) -> ModuleScore:
    measured = score is not None
    return ModuleScore(name, "q", layer, params, measured, score, 0.0 if measured else None,
                       change if measured else None, 1.0 if measured else None,
                       1.0 if measured else None, [score] if measured else [],
                       [1.0] if measured else [])


def losses_per_module(losses: dict[str, float], clean_accuracy: float = 1.0):
    """A fake evaluator: each selected module adds its log-loss increase (nats) and costs a tenth
    of it in accuracy, additively; returns (likelihood retained, accuracy)."""
    import math
    calls = []

    def evaluate(names: list[str]) -> tuple[float, float]:
        calls.append(list(names))
        total = sum(losses[n] for n in names)
        return math.exp(-total), clean_accuracy - total / 10

    return evaluate, calls


def test_rank_puts_most_robust_first_breaks_ties_by_smaller_change_and_skips_unmeasured():
    scores = [module("a", 0.9), module("b", 1.0, 0.5), module("c", None), module("d", 1.0, 0.2),
              module("e", 1.0, 0.2)]
    assert [m.name for m in rank_modules(scores)] == ["d", "e", "b", "a"]


def test_stops_at_the_first_module_that_breaks_tau_on_the_likelihood_retained():
    ranked = [module(n, s) for n, s in [("a", 1.0), ("b", 0.99), ("c", 0.98), ("d", 0.97)]]
    evaluate, calls = losses_per_module({"a": 0.02, "b": 0.03, "c": 0.06, "d": 0.0})
    result = grow_robust_set(ranked, evaluate, clean_accuracy=1.0, total_params=100, tau=0.9)
    assert result.modules == ["a", "b"]  # exp(-0.05) = 0.951 >= 0.9 > exp(-0.11) = 0.896
    assert result.stop_reason == "tau" and "below tau 0.9" in result.stop_detail
    assert calls == [["a"], ["a", "b"], ["a", "b", "c"]]  # all selected perturbed together
    assert [p.accepted for p in result.curve] == [True, True, True, False]
    assert result.curve[0].added is None and result.curve[0].score == 1.0
    assert result.curve[-1].score == pytest.approx(0.8958, abs=1e-4)
    assert result.curve[-1].accuracy == pytest.approx(0.989)  # accuracy barely moved
    assert result.param_fraction == pytest.approx(0.2)
    assert "2 modules" in result.summary and "20.0%" in result.summary


def test_tau_sets_the_size():
    ranked = [module(n, 1.0) for n in "abcdefgh"]
    evaluate, _ = losses_per_module(dict.fromkeys("abcdefgh", 0.02))
    sizes = [len(grow_robust_set(ranked, evaluate, 1.0, total_params=80, tau=tau).modules)
             for tau in (0.99, 0.95, 0.9, 0.85)]
    assert sizes == [0, 2, 5, 8]


def test_respects_the_parameter_budget():
    ranked = [module("a", 1.0, params=30), module("b", 1.0, 0.1, params=30),
              module("c", 1.0, 0.2, params=30)]
    evaluate, calls = losses_per_module({"a": 0, "b": 0, "c": 0})
    result = grow_robust_set(ranked, evaluate, 1.0, total_params=100, tau=0.9, budget=0.65)
    assert result.modules == ["a", "b"] and result.stop_reason == "budget"
    assert "over the budget of 65.0%" in result.stop_detail
    assert result.param_fraction == pytest.approx(0.6) and len(calls) == 2
    everything = grow_robust_set(ranked, evaluate, 1.0, total_params=100)
    assert everything.modules == ["a", "b", "c"] and everything.stop_reason == "exhausted"


def test_one_module_is_counted_in_the_singular():
    evaluate, _ = losses_per_module({"a": 0.0})
    result = grow_robust_set([module("a", 1.0)], evaluate, 1.0, total_params=10)
    assert result.summary.startswith("Mods_Robust: 1 module, ")
    assert result.stop_detail == "every measured module was added (1)"
