"""`mlr run --quick`: every stage of the pipeline on the embedded default, its outputs, its reuse of
finished work, and bad input."""

from __future__ import annotations

import json

import pytest
from chat_models import one_thread  # noqa: F401 (an autouse fixture)
from mlr import cli
from mlr.evaluation.report import ARMS


def run_cli(*args: str) -> int:
    try:
        return cli.main(["run", *args])
    except SystemExit as exit:
        return exit.code


def test_quick_run_writes_the_report_and_reuses_finished_work(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--quick", "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == set(ARMS)
    for name, arm in report["arms"].items():
        seeds = 1 if name == "aligned" else 2
        for metric in ("asr", "heldout_loss", "over_refusal"):
            assert len(arm[f"{metric}_per_seed"]) == seeds
            assert arm[metric] == pytest.approx(sum(arm[f"{metric}_per_seed"]) / seeds)
        assert 0.0 <= arm["asr"] <= 1.0 and arm["heldout_loss"] > 0
    assert set(report["target"]) >= {"rise_cut", "loss_gap", "met"}
    for name in ("report.md", "arms.png", "robustness.png", "search.png", "mods_robust.json",
                 "probe.json", "robustness.json"):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    assert all(f"| `{name}` (" in markdown for name in report["arms"])  # the names of report.json
    jobs, threads = report["setup"]["jobs"], report["setup"]["threads"]
    assert (f"fine-tuning in {jobs} worker processes side by side, {threads} torch thread(s) each"
            if jobs > 1 else f"one process, {threads} torch thread(s)") in markdown
    assert not list(out.glob("arms/*/*/checkpoints"))

    trained = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/*/model/model.safetensors")}
    assert len(trained) == 2 * (len(ARMS) - 1)
    assert run_cli("--quick", "--out", str(out)) == 0
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    assert json.loads((out / "report.json").read_text())["arms"] == report["arms"]


def test_parallel_jobs_give_the_results_of_one_job_at_a_time(tmp_path):
    reports = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs-{jobs}"
        assert run_cli("--quick", "--no-control", "--jobs", jobs, "--out", str(out)) == 0
        reports[jobs] = json.loads((out / "report.json").read_text())["arms"]
    assert set(reports["1"]) == {"aligned", "vanilla", "ml_lr", "frozen"}
    assert reports["2"] == reports["1"]


@pytest.mark.parametrize("args", [["--seeds", "0"], ["--jobs", "0"], ["--ratio", "1.5"],
                                  ["--ift", "missing.json"], ["--harmful", "missing.csv"]])
def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys, args):
    assert run_cli("--out", str(tmp_path / "out"), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlr: error:")
    assert not (tmp_path / "out").exists()
