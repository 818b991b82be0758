"""``mlr train`` (``mlr.tuning.train.train``) with ``distributed="ddp"`` and ``"fsdp2"`` on 2 CPU ranks
saves the model one process trains on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlr.tuning.distributed import DistributedContext
from mlr.tuning.train import TrainConfig, train
from safetensors.torch import load_file

from tests.dist_cases import run_ranks

SETTINGS = dict(steps=2, batch_size=4, max_length=48, lr=1e-3, progress=False)


def _train_each_strategy(ctx: DistributedContext, out: str) -> None:
    for strategy in ("ddp", "fsdp2"):
        train(TrainConfig(out=f"{out}/{strategy}", distributed=strategy, **SETTINGS))


def _losses_and_tokens(out: Path) -> list[tuple[float, int]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(record["loss"], record["tokens"]) for record in map(json.loads, lines)]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    train(TrainConfig(out=str(out), **SETTINGS))
    return out


def _assert_same_run(run: Path, single: Path) -> None:
    single_log = _losses_and_tokens(single)
    logged = _losses_and_tokens(run)
    assert [t for _, t in logged] == [t for _, t in single_log]
    assert [loss for loss, _ in logged] == pytest.approx([loss for loss, _ in single_log], rel=1e-5)
    reference = load_file(single / "model" / "model.safetensors")
    weights = load_file(run / "model" / "model.safetensors")
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=5e-5,
                                   msg=lambda m, where=f"{run.name} {name}": f"{where}: {m}")


@pytest.mark.slow
def test_two_ranks_save_the_model_one_process_trains(tmp_path, single_run):
    run_ranks(_train_each_strategy, 2, str(tmp_path))
    for strategy in ("ddp", "fsdp2"):
        _assert_same_run(tmp_path / strategy, single_run)


@pytest.mark.slow
def test_mlr_train_distributed_under_torchrun(tmp_path, single_run):
    out = tmp_path / "torchrun-ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mlr.cli", "train", "--distributed", "ddp", "--out", str(out),
               "--steps", str(SETTINGS["steps"]), "--batch-size", str(SETTINGS["batch_size"]),
               "--max-length", str(SETTINGS["max_length"]), "--lr", str(SETTINGS["lr"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "python"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1  # rank 0 alone reports
    _assert_same_run(out, single_run)
