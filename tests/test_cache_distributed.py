"""Every cache mlr keeps (the default model, a GGUF conversion, an aligned model) built from an
empty ``$MLR_CACHE`` by 2 ranks under torchrun (gloo): once, whole, and loadable by the single
process that comes next. Under torch.distributed transformers' ``save_pretrained`` writes config
and weights from rank 0 only, so rank 1 used to publish an entry holding only the tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from gguf_files import tiny_llama, write_llama_gguf
from mlr.models import load_model
from mlr.models.cache import entry_problem

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="needs torch.distributed with gloo (torchrun)")]

ROOT = Path(__file__).parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join([str(ROOT), str(ROOT / "python"), str(ROOT / "tests")])
    env = {**os.environ, "MLR_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    done = subprocess.run([*TORCHRUN, *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_built_once_and_whole(cache: Path, stderr: str, patterns: list[str]) -> list[Path]:
    """Each pattern names one entry: built by one rank, complete, no staging folder left."""
    built = [line for line in stderr.splitlines() if line.startswith("mlr: building ")]
    assert len(built) == len(patterns), built
    entries = []
    for pattern in patterns:
        found = [p for p in cache.glob(pattern) if not p.name.startswith(".")]
        assert len(found) == 1, (pattern, found)
        assert entry_problem(found[0]) is None, found[0]
        entries.append(found[0])
    assert not list(cache.rglob(".*.building-*")) and "incomplete" not in stderr
    return entries


def test_mlr_train_under_torchrun_builds_the_default_model_once_and_whole(tmp_path, monkeypatch,
                                                                          capsys):
    """The command of the report: `mlr train --distributed ddp` on an empty cache."""
    cache = tmp_path / "cache"
    done = torchrun(["-m", "mlr.cli", "train", "--distributed", "ddp", "--steps", "2",
                     "--batch-size", "4", "--max-length", "48", "--out", str(tmp_path / "out")],
                    cache)
    assert_built_once_and_whole(cache, done.stderr, ["tiny-llama-*"])
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    monkeypatch.setenv("MLR_CACHE", str(cache))
    model, _ = load_model(None)  # the next command without --model
    assert model.config.model_type == "llama" and "mlr: building" not in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_every_cache_is_built_once_by_the_ranks_and_trains(tmp_path, monkeypatch, capsys,
                                                           strategy):
    cache, gguf_file, out = tmp_path / "cache", tmp_path / "tiny.gguf", tmp_path / "out"
    write_llama_gguf(gguf_file, tiny_llama(tied=True))
    done = torchrun([str(ROOT / "tests" / "cache_ranks.py"), strategy, str(gguf_file), str(out)],
                    cache)
    _, _, aligned = assert_built_once_and_whole(cache, done.stderr,
                                                ["tiny-llama-*", "gguf/tiny-*", "aligned-*"])
    for name in ("aligned", "gguf"):
        assert (out / name / "model" / "model.safetensors").is_file(), name
    monkeypatch.setenv("MLR_CACHE", str(cache))
    for model in (None, gguf_file, aligned / "model"):
        load_model(model)
    assert "mlr: building" not in capsys.readouterr().err
