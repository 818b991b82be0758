"""What a reader of ``mlr run``'s report can trust: the figure draws report.md's 95 % intervals
under the tables' names, a --quick report says first that it is a smoke test, and report.json and
report.md record the environment."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
from mlr.environment import environment
from mlr.evaluation.arms_plot import CAPTION, LABELS, arms_figure
from mlr.evaluation.report import SMOKE_TEST_BANNER, summarize_arm, write_report

SEEDS = [0, 1, 2]


def _metrics(asr, loss, refusal=0.1):
    return {"asr": asr, "over_refusal": refusal, "heldout_loss": loss, "task_accuracy": 0.5,
            "refusal_score": 0.9 - asr, "probe": None}


def _arms(seeds=SEEDS):
    def arm(asrs, losses):
        return summarize_arm(seeds, [_metrics(a, loss, a / 3) for a, loss in zip(asrs, losses)])

    return {"aligned": summarize_arm([0], [_metrics(0.05, 7.0)]),
            "vanilla": arm([0.70, 0.62, 0.66], [1.30, 1.35, 1.33]),
            "ml_lr": arm([0.30, 0.22, 0.21], [1.40, 1.41, 1.45]),
            "uniform_lr": arm([0.30, 0.22, 0.21], [1.40, 1.41, 1.45])}  # the same as ml_lr


def _setup(quick):
    return {"model": "m", "steps": 4, "lr": 1e-3, "batch_size": 2, "ratio": 0.6, "quick": quick,
            "perturb": "noise", "alpha": 2.0, "tau": 0.9, "jobs": 1, "threads": 1,
            "stage_seconds": {"align": 1.0},
            "counts": {"harmful": 48, "benign": 48, "instructions": 96}}


MODS_ROBUST = {"modules": ["model.layers.0.self_attn.q_proj"], "param_fraction": 0.02}


def test_the_figure_draws_the_reports_intervals_under_the_tables_names():
    arms = _arms()
    figure = arms_figure(arms)
    for axis, metric in zip(figure.axes[:4], ("asr", "refusal_score", "heldout_loss",
                                               "over_refusal")):
        drawn = {c.get_label(): c for c in axis.containers}
        shown = [a for a in arms if metric != "heldout_loss" or a != "aligned"]
        assert set(drawn) == set(shown)
        for name in shown:
            arm, (_, _, bars) = arms[name], drawn[name].lines
            half = arm[f"{metric}_ci95"]
            if half is None:  # one model: no bar, said in words
                assert not bars
                continue
            (low, _), (high, _) = bars[0].get_segments()[0]
            assert (low, high) == pytest.approx((arm[metric] - half, arm[metric] + half))
            assert half > arm[f"{metric}_std"]  # the interval, not the seeds' std
        labels = [t.get_text() for t in axis.get_yticklabels()]
        assert LABELS["uniform_lr"] == "control (uniform_lr)" and "control (uniform_lr)" in labels
        assert "95 % interval" in axis.get_xlabel()
    assert "one model: no interval" in [t.get_text() for t in figure.axes[0].texts]
    assert CAPTION in [t.get_text() for t in figure.texts] and "95 % interval" in CAPTION
    # ml_lr and the control coincide: their markers differ in shape and size, both hollow.
    scatter = {c.get_label(): c for c in figure.axes[4].collections}
    ml_lr, control = scatter["ML-LR (ml_lr)"], scatter["control (uniform_lr)"]
    assert (ml_lr.get_offsets() == control.get_offsets()).all()
    assert ml_lr.get_sizes()[0] > control.get_sizes()[0]
    assert ml_lr.get_paths()[0] != control.get_paths()[0]
    assert not ml_lr.get_facecolors().any() and not control.get_facecolors().any()
    plt.close(figure)


@pytest.mark.parametrize("quick", [True, False])
def test_the_report_records_the_environment_and_says_when_it_is_a_smoke_test(tmp_path, quick):
    env = environment("cpu", {"cpu/torch.float32": "cpu"})
    report = write_report(tmp_path, _arms(), MODS_ROBUST, _setup(quick), env, 60.0)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["environment"] == env == report["environment"]
    assert saved["smoke_test"] is quick
    markdown = (tmp_path / "report.md").read_text().splitlines()
    assert (markdown[2] == SMOKE_TEST_BANNER) is quick  # right under the title
    assert "smoke test" in SMOKE_TEST_BANNER.lower() and "not a result" in SMOKE_TEST_BANNER
    environment_line = next(line for line in markdown if line.startswith("Environment: "))
    assert env["torch"] in environment_line and env["cpu"] in environment_line
    assert (tmp_path / "arms.png").is_file()
    titled = arms_figure(_arms(), smoke_test=quick)
    assert (titled._suptitle is not None and "SMOKE TEST" in titled._suptitle.get_text()) is quick
    plt.close(titled)
