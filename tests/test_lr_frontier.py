"""experiments/lr_frontier.py --reuse-arms: an ``mlr run``'s arms stand as frontier points only
when they were made with the frontier's settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mlr.analysis.robustness import ModuleScore, RobustnessMap
from mlr.run.config import RunConfig
from mlr.run.pipeline import resolve_defaults

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "lr_frontier.py"


def load_script():
    spec = importlib.util.spec_from_file_location("lr_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(run_dir: Path, config: RunConfig, seeds: int) -> None:
    """A report.json with ``config``'s settings and eval.json and answers.jsonl files for four
    arms, and no model weights: ``mlr run`` deletes them once evaluated, and --reuse-arms needs
    none."""
    setup = {name: getattr(config, name) for name in load_script().SAME_SETTINGS}
    setup.update(model="embedded default (aligned)", seeds=seeds, ratio=0.6)
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps({"setup": setup}))
    for arm in ("vanilla", "uniform_lr", "ml_lr", "frozen", "sppft", "safeinstr"):
        for seed in range(seeds):
            folder = run_dir / "arms" / arm / f"seed-{seed}"
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"metrics": {"arm": arm, "seed": seed}}))
            answers = [{"kind": "harmful", "verdict": "complied"},
                       {"kind": "harmful", "verdict": "refused"},
                       {"kind": "benign", "verdict": "refused"}]
            (folder / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def test_the_runs_arms_are_reused_under_their_frontier_names(tmp_path):
    frontier = load_script()
    config = resolve_defaults(RunConfig(out=str(tmp_path / "f"), seeds=2))
    fake_run(tmp_path / "run", config, seeds=3)
    found = frontier.reused_arms(tmp_path / "run", config)
    assert set(found) == {"uniform-1", "uniform-0.6", "ml_lr-0.6", "sppft", "safeinstr"}
    outcomes = {"harmful_complied": [1, 0], "harmful_refused": [0, 1], "benign_refused": [1],
                "alarming_refused": []}
    assert found["uniform-0.6"] == [{"arm": "uniform_lr", "seed": 0, **outcomes},
                                    {"arm": "uniform_lr", "seed": 1, **outcomes}]


@pytest.mark.parametrize("change", [{"steps": 7}, {"lr": 5e-4}, {"seeds": 4}])
def test_a_run_made_otherwise_is_refused_in_one_line(tmp_path, change):
    frontier = load_script()
    config = resolve_defaults(RunConfig(out=str(tmp_path / "f"), seeds=3))
    fake_run(tmp_path / "run", config, seeds=3)
    asked = resolve_defaults(RunConfig(out=str(tmp_path / "f"), **{"seeds": 3, **change}))
    with pytest.raises(SystemExit, match="--reuse-arms: .* other settings"):
        frontier.reused_arms(tmp_path / "run", asked)


def test_the_gap_to_the_uniform_curve_is_taken_seed_by_seed():
    frontier = load_script()

    def arm(asr, loss):
        return {"seeds": [0, 1], "asr_per_seed": asr, "heldout_loss_per_seed": loss}

    arms = {"uniform-1": arm([0.6, 0.5], [1.0, 1.1]), "uniform-0.5": arm([0.2, 0.1], [2.0, 2.1]),
            "ml_lr-0.5": arm([0.3, 0.2], [1.5, 1.6]), "far-0.1": arm([0.0, 0.0], [3.0, 1.5])}
    gap = frontier.gap_to_uniform_curve(arms, "ml_lr-0.5")
    assert gap["mean"] == pytest.approx(-0.1)  # the curve is at 0.4 and 0.3 at those losses
    assert not gap["inside_noise"]
    assert frontier.gap_to_uniform_curve(arms, "far-0.1") is None  # seed 0 beyond the curve


def test_top_share_takes_the_most_robust_modules_up_to_the_share():
    frontier = load_script()
    modules = [ModuleScore(name, "q", layer, params, measured, score, 0.0, 0.0, 1.0, 1.0, [], [])
               for name, layer, params, measured, score in (
                   ("a", 0, 10, True, 0.90), ("b", 0, 30, True, 0.99), ("c", 1, 20, True, 0.95),
                   ("d", 1, 40, False, None))]
    rmap = RobustnessMap(modules, probe_layer=1, num_layers=2, perturb="noise", alpha=0.5,
                         seeds=[0], clean_accuracy=0.9, clean_margin=1.0, clean_log_loss=0.1,
                         heldout_rows=64, method="exact", cost={}, config={})
    assert frontier.top_share(rmap, 0.5) == ["b", "c"]  # 50 of 100 parameters
    assert frontier.top_share(rmap, 0.49) == ["b"]


def test_the_gap_counts_the_noise_of_the_prompts():
    # Both seeds judge the 4 prompts alike, so the seeds alone would call any gap certain.
    frontier = load_script()

    def arm(asr_outcome, loss):
        return {"seeds": [0, 1], "asr_per_seed": [sum(asr_outcome) / 4] * 2,
                "heldout_loss_per_seed": [loss, loss], "asr_outcomes": [asr_outcome] * 2}

    arms = {"uniform-1": arm([1, 1, 1, 0], 1.0), "uniform-0.5": arm([1, 0, 0, 0], 2.0),
            "ml_lr-0.5": arm([1, 1, 0, 0], 1.5)}
    gap = frontier.gap_to_uniform_curve(arms, "ml_lr-0.5")
    assert gap["mean"] == pytest.approx(0.0)  # the curve's 0.5 at loss 1.5
    assert gap["low"] < -0.1 and gap["high"] > 0.1  # per prompt: 0, +0.5, -0.5, 0 about the curve
