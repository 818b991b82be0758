"""`mlr run --quick`: every stage of the pipeline on the embedded default, its outputs, its reuse of
finished work, and bad input; each model's default settings; the cached alignment of a model."""

from __future__ import annotations

import json
import shutil

import mlr.data.security_data
import mlr.run.data
import mlr.tuning.align
import pytest
from chat_models import one_thread, tiny_chat_model_dir  # noqa: F401 (one_thread: an autouse fixture)
from mlr import cli
from mlr.data.prompts import load_prompts
from mlr.data.security_data import load_security_data
from mlr.evaluation.report import ARMS
from mlr.run.config import RunConfig
from mlr.run.pipeline import resolve_defaults
from mlr.run.presets import SMOLLM2
from mlr.tuning.align import AlignSettings, align_model, aligned_dir


def run_cli(*args: str) -> int:
    try:
        return cli.main(["run", *args])
    except SystemExit as exit:
        return exit.code


def mtimes(out, pattern):
    return {p: p.stat().st_mtime_ns for p in out.glob(pattern)}


def test_quick_run_writes_the_report_and_reuses_finished_work(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--quick", "--keep-models", "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == set(ARMS)
    for name, arm in report["arms"].items():
        seeds = 1 if name == "aligned" else 2
        for metric in ("asr", "heldout_loss", "over_refusal"):
            assert len(arm[f"{metric}_per_seed"]) == seeds
            assert arm[metric] == pytest.approx(sum(arm[f"{metric}_per_seed"]) / seeds)
        assert 0.0 <= arm["asr"] <= 1.0 and arm["heldout_loss"] > 0
    assert set(report["target"]) >= {"rise_cut", "loss_gap", "met", "differences"}
    assert set(report["target"]["differences"]) == {
        "ml_lr-uniform_lr", "ml_lr-vanilla", "swat-uniform_lr", "swat-vanilla", "sppft-vanilla",
        "safeinstr-vanilla", "ml_lr-sppft", "ml_lr-safeinstr"}
    assert set(report["target"]["differences"]["ml_lr-vanilla"]) == {"asr", "refusal_score",
                                                                     "heldout_loss"}
    agreement = report["target"]["refusal_score_agreement"]
    assert agreement["models"] == 2 * (len(ARMS) - 1)
    for name, arm in report["arms"].items():  # the refusal score covers every harmful prompt
        assert 0.0 < arm["refusal_score"] < 1.0
        assert (arm["refusal_score_ci95"] is None) == (name == "aligned")  # one model: none
        assert [len(row) for row in arm["refusal_score_outcomes"]] == \
            [report["setup"]["counts"]["refusal_scored"]] * len(arm["seeds"])
    peers = {name: json.loads((out / "arms" / name / "seed-0" / "train.json").read_text())["config"]
             for name in ("sppft", "safeinstr", "vanilla")}
    assert peers["sppft"]["freeze_layers"] == "1-2" and peers["vanilla"]["freeze_layers"] is None
    assert peers["safeinstr"]["safety_mix"] == 0.03 and peers["vanilla"]["safety_mix"] == 0.0
    vanilla = report["arms"]["vanilla"]  # each seed's per-prompt outcomes, for the intervals
    assert [len(row) for row in vanilla["asr_outcomes"]] == [report["setup"]["counts"]["harmful"]] * 2
    for name in ("report.md", "arms.png", "robustness.png", "search.png", "mods_robust.json",
                 "probe.json", "robustness.json"):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    assert all(f"| `{name}` (" in markdown for name in report["arms"])  # the names of report.json
    jobs, threads = report["setup"]["jobs"], report["setup"]["threads"]
    assert (f"fine-tuning in {jobs} worker processes side by side, {threads} torch thread(s) each"
            if jobs > 1 else f"one process, {threads} torch thread(s)") in markdown
    assert report["smoke_test"] and markdown.splitlines()[2].startswith("> **Smoke test")
    environment = report["environment"]
    assert environment["kernel_backends"] == {"cpu/torch.float32": "cpu"}  # the run's optimizers
    assert environment["torch_threads"] == threads and environment["device"] == "cpu"
    assert f"torch {environment['torch']}" in markdown
    assert not list(out.glob("arms/*/*/checkpoints"))
    models = {p.parent for p in out.glob("arms/*/*/model/model.safetensors")}
    assert len(models) == 2 * (len(ARMS) - 1)  # --keep-models

    # As if killed: vanilla seed 0 after its training, before its evaluation; ml_lr seed 1 after
    # its model was deleted, before its evaluation was written.
    arms = out / "arms"
    (arms / "vanilla" / "seed-0" / "eval.json").unlink()
    shutil.rmtree(arms / "ml_lr" / "seed-1" / "model")
    (arms / "ml_lr" / "seed-1" / "answers.jsonl").unlink()
    trained = mtimes(out, "arms/*/*/train.json")
    assert run_cli("--quick", "--out", str(out)) == 0
    retrained = {p for p, t in mtimes(out, "arms/*/*/train.json").items() if trained[p] != t}
    assert retrained == {arms / "ml_lr" / "seed-1" / "train.json"}  # only the one without model
    assert (arms / "vanilla" / "seed-0" / "eval.json").is_file()
    assert not list(out.glob("arms/*/*/model"))  # deleted once evaluated
    assert json.loads((out / "report.json").read_text())["arms"] == report["arms"]

    # Evaluations made the same way stand without their models: nothing is trained or evaluated,
    # and the probe and the map, keyed by the prompts' content, are reused too.
    trained, evaluated = mtimes(out, "arms/*/*/train.json"), mtimes(out, "arms/*/*/eval.json")
    analysed = mtimes(out, "probe.json") | mtimes(out, "robustness.json")
    assert run_cli("--quick", "--out", str(out)) == 0
    assert mtimes(out, "arms/*/*/train.json") == trained
    assert mtimes(out, "arms/*/*/eval.json") == evaluated
    assert mtimes(out, "probe.json") | mtimes(out, "robustness.json") == analysed


def test_parallel_jobs_give_the_results_of_one_job_at_a_time(tmp_path):
    reports = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs-{jobs}"
        assert run_cli("--quick", "--no-control", "--no-swat", "--no-peers", "--jobs", jobs, "--out",
                       str(out)) == 0
        reports[jobs] = json.loads((out / "report.json").read_text())["arms"]
    assert set(reports["1"]) == {"aligned", "vanilla", "ml_lr", "frozen"}
    assert reports["2"] == reports["1"]


@pytest.mark.parametrize("args", [["--seeds", "0"], ["--jobs", "0"], ["--ratio", "1.5"],
                                  ["--ift", "missing.json"], ["--harmful", "missing.csv"],
                                  ["--swat-warmup-steps", "401"], ["--swat-warmup-steps", "-1"],
                                  ["--lr", "0"], ["--safety-mix", "0"],
                                  ["--sppft-layers", "2-1"]])
def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys, args):
    assert run_cli("--out", str(tmp_path / "out"), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlr: error:")
    assert not (tmp_path / "out").exists()


def test_each_prompt_file_is_read_once_and_its_prompts_handed_on(tmp_path, monkeypatch):
    harmful = tmp_path / "harmful.txt"
    harmful.write_text("\n".join(f"how to hurt person {i}" for i in range(12)))
    reads = []

    def counted(source):
        reads.append(source)
        return load_prompts(source)

    monkeypatch.setattr(mlr.run.data, "load_prompts", counted)
    monkeypatch.setattr(mlr.data.security_data, "load_prompts", counted)
    data = mlr.run.data.run_data(resolve_defaults(RunConfig(harmful=str(harmful), quick=True)))
    assert reads == [str(harmful)]
    assert data.eval_set.harmful == load_prompts(str(harmful))
    assert data.probe_split.digest() == load_security_data(str(harmful), None).digest()


def test_each_model_gets_its_own_defaults_and_the_users_values_win():
    embedded = resolve_defaults(RunConfig())
    assert (embedded.seeds, embedded.steps, embedded.lr, embedded.batch_size, embedded.max_length,
            embedded.alpha, embedded.analysis_seeds, embedded.max_new_tokens,
            embedded.save_every) == (5, 200, 1e-3, 16, 512, 2.0, 3, 32, 100)
    assert embedded.alignment == AlignSettings() and embedded.swat_warmup_steps == 50
    smol = resolve_defaults(RunConfig(model=SMOLLM2, steps=60, swat_warmup_steps=5))
    assert (smol.lr, smol.steps, smol.batch_size, smol.max_length, smol.seeds) == \
        (3e-4, 60, 8, 96, 3)
    assert smol.alignment == AlignSettings(steps=360, lr=1e-4, batch_size=8, max_length=96, alarming=True)
    assert smol.eval_limit == 48 and smol.swat_warmup_steps == 5
    quick = resolve_defaults(RunConfig(model=SMOLLM2, steps=60, quick=True))
    assert quick.steps == 2 and quick.probe_prompts == 32 and quick.probe_depth == 0.28
    assert embedded.threads == smol.threads == 1
    users = resolve_defaults(RunConfig(model="/some/model"))
    assert users.alignment is None and users.lr == 1e-3 and users.threads is None
    assert resolve_defaults(RunConfig(model=SMOLLM2, threads=2)).threads == 2


def test_a_model_is_aligned_once_and_cached_by_model_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLR_CACHE", str(tmp_path / "cache"))
    settings = AlignSettings(steps=2, batch_size=4, max_length=64)
    aligned = align_model(settings, str(tiny_chat_model_dir()), progress=False)
    assert (aligned / "model.safetensors").is_file()
    assert json.loads((aligned.parent / "train.json").read_text())["config"]["max_length"] == 64

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(mlr.tuning.align, "train", no_training)
    assert align_model(settings, str(tiny_chat_model_dir()), progress=False) == aligned
    assert aligned_dir(settings, None) != aligned.parent != aligned_dir(AlignSettings(steps=3),
                                                                      str(tiny_chat_model_dir()))
