"""experiments/lr_frontier.py --reuse-arms: an ``mlr run``'s arms stand as frontier points only
when they were made with the frontier's settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mlr.run import RunConfig, resolve_defaults

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "lr_frontier.py"


def load_script():
    spec = importlib.util.spec_from_file_location("lr_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(run_dir: Path, config: RunConfig, seeds: int) -> None:
    """A report.json with ``config``'s settings and eval.json files for three arms."""
    setup = {name: getattr(config, name) for name in load_script().SAME_SETTINGS}
    setup.update(model="embedded default (aligned)", seeds=seeds, ratio=0.6)
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps({"setup": setup}))
    for arm in ("vanilla", "uniform_lr", "ml_lr", "frozen"):
        for seed in range(seeds):
            folder = run_dir / "arms" / arm / f"seed-{seed}"
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"metrics": {"arm": arm, "seed": seed}}))


def test_the_runs_arms_are_reused_under_their_frontier_names(tmp_path):
    frontier = load_script()
    config = resolve_defaults(RunConfig(out=str(tmp_path / "f"), seeds=2))
    fake_run(tmp_path / "run", config, seeds=3)
    found = frontier.reused_arms(tmp_path / "run", config)
    assert set(found) == {"uniform-1", "uniform-0.6", "ml_lr-0.6"}
    assert found["uniform-0.6"] == [{"arm": "uniform_lr", "seed": 0}, {"arm": "uniform_lr", "seed": 1}]


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
