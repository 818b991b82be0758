"""Mods_Robust's stability: the search rerun on bootstrap draws of the held-out prompts. On the
draw of every prompt once it is the search itself; a draw reranks the modules by its own rows and
stops where tau or the budget says; `mlr search` writes the frequencies."""

from __future__ import annotations

import json
import math

import torch
from chat_models import one_thread, tiny_chat_model_dir  # noqa: F401 (autouse fixture)
from mlr import cli
from mlr.analysis.robustness import ModuleScore
from mlr.analysis.search import grow_robust_set, rank_modules
from mlr.analysis.stability import Stability, _draw_search

# Per-prompt loss changes of each module alone (4 prompts); a set's change is their sum.
CHANGES = {"a": [0.01, 0.01, 0.01, 0.01], "b": [0.0, 0.0, 0.0, 0.2], "c": [0.05, 0.05, 0.05, 0.05]}


class AdditiveChanges:
    def of(self, names):
        return torch.tensor([sum(CHANGES[n][i] for n in names) for i in range(4)])


def _module(name):
    change = torch.tensor(CHANGES[name])
    return ModuleScore(name, "q", 0, 10, True, math.exp(-change.mean().item()), 0.0,
                       change.abs().mean().item(), 1.0, 1.0, [], [])


def test_the_draw_of_every_prompt_gives_the_search_itself():
    modules = [_module(n) for n in CHANGES]
    changes = AdditiveChanges()

    def evaluate(names):
        return math.exp(-changes.of(names).mean().item()), 1.0

    for tau in (0.99, 0.95, 0.9):
        search = grow_robust_set(rank_modules(modules), evaluate, 1.0, 30, tau)
        assert _draw_search(changes, modules, torch.arange(4), tau, None, 30) == search.modules


def test_a_draw_reranks_by_its_own_rows_and_respects_tau_and_budget():
    modules = [_module(n) for n in CHANGES]
    changes = AdditiveChanges()
    # Without the last prompt b costs nothing and ranks first; on the last prompt alone it costs
    # 0.2 nats and comes last, where tau stops the search.
    assert _draw_search(changes, modules, torch.tensor([0, 1, 2, 2]), 0.9, None, 30) == ["b", "a", "c"]
    assert _draw_search(changes, modules, torch.tensor([3, 3, 3, 3]), 0.9, None, 30) == ["a", "c"]
    assert _draw_search(changes, modules, torch.arange(4), 0.5, 0.34, 30) == ["a"]  # budget: 1 of 3


def test_the_summary_names_the_frequencies():
    stability = Stability(10, {"a": 1.0, "b": 0.3}, [1] * 7 + [2] * 3, 0.7, 64)
    line = stability.summary(["a"])
    assert "the same set 70% of the time" in line and "a 100%" in line and "b 30%" in line


def test_mlr_search_writes_the_stability(tmp_path):
    out = tmp_path / "out"
    code = cli.main(["search", "--model", str(tiny_chat_model_dir()), "--layer", "1",
                     "--analysis-seeds", "1", "--bootstraps", "4", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "mods_robust.json").read_text())
    stability = saved["stability"]
    assert stability["bootstraps"] == 4 and len(stability["sizes"]) == 4
    assert all(0.0 < share <= 1.0 for share in stability["frequency"].values())
    assert 0.0 <= stability["same_set"] <= 1.0
    assert stability["rows"] == 64 and set(saved["modules"]) <= set(stability["frequency"])
    try:
        code = cli.main(["search", "--bootstraps", "-1", "--out", str(out)])
    except SystemExit as exit:
        code = exit.code
    assert code == 2
