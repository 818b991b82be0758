"""``mlr train`` (``mlr.tuning.train.train``) with ``distributed="ddp"`` and ``"fsdp2"`` on 2 CPU ranks
saves the model one process trains on the same global batches, and a SIGKILLed torchrun resumed
with ``--resume`` ends at the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlr.tuning.checkpoint import latest_checkpoint
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


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                               str(Path(__file__).parents[1] / "python"),
                                               os.environ.get("PYTHONPATH", "")])}


def _train_args(strategy: str, out: Path, settings: dict) -> list[str]:
    return ["train", "--distributed", strategy, "--out", str(out),
            *[part for name in ("steps", "batch_size", "max_length", "lr", "save_every")
              if name in settings for part in (f"--{name.replace('_', '-')}", str(settings[name]))]]


@pytest.mark.slow
def test_mlr_train_distributed_under_torchrun(tmp_path, single_run):
    out = tmp_path / "torchrun-ddp"
    done = subprocess.run([*TORCHRUN, "-m", "mlr.cli", *_train_args("ddp", out, SETTINGS)],
                          env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1  # rank 0 alone reports
    _assert_same_run(out, single_run)


RESUMED = dict(SETTINGS, steps=8, save_every=2)
# `mlr train` with every logged step slowed down, so that the test can kill it between checkpoints.
SLOW_TRAIN = textwrap.dedent("""
    import sys, time
    from mlr import cli
    from mlr.tuning.metrics_log import MetricsLog
    append = MetricsLog.append
    MetricsLog.append = lambda self, record: (append(self, record), time.sleep(0.2))
    sys.exit(cli.main(sys.argv[1:]))
""")


def _train_each_strategy_uninterrupted(ctx: DistributedContext, out: str) -> None:
    for strategy in ("ddp", "fsdp2"):
        train(TrainConfig(out=f"{out}/{strategy}", distributed=strategy, **RESUMED))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_ranks(_train_each_strategy_uninterrupted, 2, str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_killed_torchrun_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, uninterrupted,
                                                                           strategy):
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_TRAIN)
    out = tmp_path / "killed"
    args = _train_args(strategy, out, RESUMED)
    process = subprocess.Popen([*TORCHRUN, str(script), *args], env=TORCHRUN_ENV,
                               start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while latest_checkpoint(out / "checkpoints") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, at once
    process.wait()
    assert latest_checkpoint(out / "checkpoints") is not None
    assert not (out / "model").exists()  # killed before the end

    done = subprocess.run([*TORCHRUN, "-m", "mlr.cli", *args, "--resume"], env=TORCHRUN_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, RESUMED["steps"] + 1))
    resumed = load_file(out / "model" / "model.safetensors")
    reference = load_file(uninterrupted / strategy / "model" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
