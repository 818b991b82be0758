"""The fine-tuning recipe: response-only loss, ML-LR multipliers, schedule, resume (bit-identical,
also after a SIGKILL), LoRA, logs, and `mlr train` errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from chat_models import (  # noqa: F401 (one_thread: an autouse fixture)
    one_thread,
    tiny_chat_model_dir,
    write_instruction_file,
)
from mlr import cli
from mlr.data.instructions import InstructionExample, load_instructions
from mlr.instruction_loss import IGNORE_INDEX, encode_examples
from mlr.models import load_model
from mlr.tuning.checkpoint import latest_checkpoint, read_checkpoint_meta
from mlr.tuning.metrics_log import MetricsLog
from mlr.tuning.ml_lr import module_lr_multipliers, param_groups
from mlr.tuning.phases import swat_phases
from mlr.tuning.sampler import EpochSampler
from mlr.tuning.schedule import warmup_cosine
from mlr.tuning.train import TrainConfig, expected_fingerprint, train
from safetensors.torch import load_file
from tiny_models import tiny_gpt2, tiny_llama
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from mlr_kernels import MLRAdamW

ROBUST = ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


def config(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    settings = dict(out=str(tmp_path / name), model=str(tiny_chat_model_dir()),
                    ift=str(write_instruction_file(tmp_path / "ift.json")), steps=8,
                    batch_size=4, lr=3e-3, progress=False)
    return TrainConfig(**{**settings, **overrides})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def write_mods(path: Path, modules: list[str]) -> Path:
    path.write_text(json.dumps({"modules": modules, "param_fraction": 0.1, "curve": []}))
    return path


def test_loss_covers_response_tokens_only():
    _, tokenizer = load_model(tiny_chat_model_dir())
    [(ids, labels)] = encode_examples(tokenizer, [InstructionExample("Add 2 and 3.", "5")], 512)
    kept = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(kept).strip() == "5<|end|>"
    assert labels[:len(ids) - len(kept)] == [IGNORE_INDEX] * (len(ids) - len(kept))


def test_training_data_reads_alpaca_and_chat(tmp_path):
    examples = load_instructions(str(write_instruction_file(tmp_path / "ift.json")))
    assert examples[0] == InstructionExample("Add the two numbers.\n\n0 + 0", "0")
    assert examples[-1] == InstructionExample("Reverse the letters.\n\nc a t", "t a c")


def test_sampler_resumes_its_order():
    whole = EpochSampler(10, seed=3)
    first = [whole.next_batch(4) for _ in range(5)]
    part = EpochSampler(10, seed=3)
    part.next_batch(4), part.next_batch(4)
    resumed = EpochSampler(10, seed=3)
    resumed.load_state_dict(part.state_dict())
    assert [resumed.next_batch(4) for _ in range(3)] == first[2:]
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))  # an epoch visits all


def test_warmup_then_cosine_to_the_floor():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, min_ratio=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.5, 1.0, 1.0]
    assert lrs[3] > lrs[4] > lrs[5] > 0.1


def test_multipliers_follow_mods_robust_and_decay_skips_norms():
    model = tiny_llama(layers=2)
    multipliers = module_lr_multipliers(model, ROBUST, ratio=0.25)
    assert multipliers["model.layers.1.self_attn.q_proj.weight"] == 1.0
    assert multipliers["model.layers.0.self_attn.q_proj.weight"] == 0.25
    assert multipliers["model.embed_tokens.weight"] == 0.25
    groups = param_groups(model, multipliers, weight_decay=0.1)
    decay_of = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    assert decay_of["model.layers.0.input_layernorm.weight"] == 0.0
    assert decay_of["model.layers.0.mlp.up_proj.weight"] == 0.1


def test_a_fused_gpt2_weight_is_robust_only_when_all_its_slices_are():
    model = tiny_gpt2(layers=1)
    name = "transformer.h.0.attn.c_attn"
    some = module_lr_multipliers(model, [f"{name}[q]", f"{name}[k]"], ratio=0.5)
    every = module_lr_multipliers(model, [f"{name}[q]", f"{name}[k]", f"{name}[v]"], ratio=0.5)
    assert some[f"{name}.weight"] == 0.5 and every[f"{name}.weight"] == 1.0


def test_ratio_zero_trains_only_mods_robust(tmp_path):
    mods = write_mods(tmp_path / "mods.json", ROBUST)
    result = train(config(tmp_path, mods_robust=str(mods), ratio=0.0, steps=3))
    before = load_file(Path(tiny_chat_model_dir()) / "model.safetensors")
    after = weights(result.model_dir.parent)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"{m}.weight" for m in ROBUST}


def test_the_expected_fingerprint_is_the_one_train_records_with_its_kernels(tmp_path):
    settings = config(tmp_path, steps=2)
    expected = expected_fingerprint(settings)  # from the tokenizer alone, before any training
    train(settings)
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["fingerprint"] == expected
    assert expected_fingerprint(replace(settings, lr=1e-3)) != expected
    fewer = load_instructions(settings.ift)[:-1]
    assert expected_fingerprint(settings, fewer) != expected  # other data, same settings
    assert list(summary["backends"]) == ["cpu/torch.float32"]  # MLRAdamW.backends of the run


def test_swat_warmup_trains_mods_robust_alone_then_everything(tmp_path):
    """A warm-up as long as the run is ratio 0; no warm-up is vanilla; in between, the rest
    starts moving at the boundary (and only then)."""
    mods = str(write_mods(tmp_path / "mods.json", ROBUST))
    swat = functools.partial(config, tmp_path, mods_robust=mods, schedule="swat", steps=4)
    assert_bit_identical(weights(train(swat("swat-all", swat_warmup_steps=4)).model_dir.parent),
                         weights(train(config(tmp_path, "frozen", mods_robust=mods, ratio=0.0,
                                              steps=4)).model_dir.parent))
    assert_bit_identical(weights(train(swat("swat-none", swat_warmup_steps=0)).model_dir.parent),
                         weights(train(config(tmp_path, "vanilla", steps=4)).model_dir.parent))
    before = load_file(Path(tiny_chat_model_dir()) / "model.safetensors")
    after = weights(train(swat("swat-half", swat_warmup_steps=2)).model_dir.parent)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert {f"{m}.weight" for m in ROBUST} < changed
    assert "model.layers.0.self_attn.q_proj.weight" in changed


def test_swat_with_lora_warms_up_the_robust_adapters_alone(tmp_path):
    mods = str(write_mods(tmp_path / "mods.json", ROBUST))
    result = train(config(tmp_path, mods_robust=mods, schedule="swat", swat_warmup_steps=3,
                          steps=3, lora_rank=4))
    before = load_file(Path(tiny_chat_model_dir()) / "model.safetensors")
    after = weights(result.model_dir.parent)
    assert {name for name in before if not torch.equal(before[name], after[name])} == \
        {f"{m}.weight" for m in ROBUST}


def test_swat_phase_sets_lr_mult_and_freezing():
    model = tiny_llama(layers=2)
    phases = swat_phases(model, ROBUST, warmup_steps=3)
    optimizer = MLRAdamW(phases.param_groups(model, weight_decay=0.0), lr=1e-3)
    robust = {f"{m}.weight" for m in ROBUST}
    for step, rest in ((0, 0.0), (2, 0.0), (3, 1.0), (7, 1.0)):
        phases.enter(optimizer, step)
        for group in optimizer.param_groups:
            expected = 1.0 if set(group["param_names"]) <= robust else rest
            assert group["lr_mult"] == expected
            assert all(p.requires_grad == (expected > 0) for p in group["params"])


@pytest.mark.parametrize("save_every, crash_after", [(2, 3), (3, 4), (2, 5)],
                         ids=["in-warmup", "at-boundary", "after-boundary"])
def test_swat_resume_across_the_phase_boundary_is_bit_identical(tmp_path, monkeypatch,
                                                                save_every, crash_after):
    """Warm-up of 3 steps; the run is killed after ``crash_after`` steps and resumed from the
    checkpoint before it (step 2: warm-up; 3: saved at the boundary; 4: full fine-tuning)."""
    mods = str(write_mods(tmp_path / "mods.json", ROBUST))
    swat = functools.partial(config, tmp_path, mods_robust=mods, schedule="swat", steps=6,
                             swat_warmup_steps=3)
    reference = train(swat("whole"))
    append = MetricsLog.append

    def crash(self, record):
        append(self, record)
        if record["step"] == crash_after:
            raise Interrupted

    monkeypatch.setattr(MetricsLog, "append", crash)
    with pytest.raises(Interrupted):
        train(swat("parts", save_every=save_every))
    monkeypatch.setattr(MetricsLog, "append", append)
    resumed = train(swat("parts", save_every=save_every, resume=True))
    assert_bit_identical(weights(reference.model_dir.parent), weights(resumed.model_dir.parent))


def test_metrics_log_and_summary(tmp_path):
    result = train(config(tmp_path, steps=4))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records)
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["result"]["steps"] == 4 and result.final_loss == records[-1]["loss"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big = train(config(tmp_path, "big", batch_size=8, steps=3))
    accumulated = train(config(tmp_path, "accumulated", batch_size=4, grad_accum=2, steps=3))
    a, b = weights(big.model_dir.parent), weights(accumulated.model_dir.parent)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("optimizer", [
    pytest.param({}, id="fp32"),
    pytest.param(dict(dtype="bfloat16", optimizer_state="bf16", master_weights=False),
                 id="bf16-state-no-master")])
def test_resume_reaches_bit_identical_weights(tmp_path, monkeypatch, optimizer):
    """Also with bfloat16 moments and no masters: the checkpoint restores the step counts, and
    with them the random bits of the stochastic rounding."""
    reference = train(config(tmp_path, "whole", **optimizer))
    append = MetricsLog.append

    def crash_after_step_5(self, record):
        append(self, record)
        if record["step"] == 5:
            raise Interrupted

    monkeypatch.setattr(MetricsLog, "append", crash_after_step_5)
    with pytest.raises(Interrupted):
        train(config(tmp_path, "parts", save_every=2, **optimizer))
    monkeypatch.setattr(MetricsLog, "append", append)
    resumed = train(config(tmp_path, "parts", save_every=2, resume=True, **optimizer))
    assert_bit_identical(weights(reference.model_dir.parent), weights(resumed.model_dir.parent))
    steps = [json.loads(line)["step"] for line in (tmp_path / "parts" / "metrics.jsonl").open()]
    assert steps == list(range(1, 9))


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL a training process once it has checkpointed; the resumed run ends bit-identical
    (given the same number of CPU threads: it changes how float sums are split)."""
    killed = config(tmp_path, "killed", steps=30, save_every=3)
    child = textwrap.dedent(f"""
        import json, time, torch
        from mlr.tuning.metrics_log import MetricsLog
        from mlr.tuning.train import TrainConfig, expected_fingerprint, train
        torch.set_num_threads(1)
        append = MetricsLog.append
        MetricsLog.append = lambda self, record: (append(self, record), time.sleep(0.1))
        train(TrainConfig(**json.loads({json.dumps(asdict(killed))!r})))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", child], env=env)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 60
    while latest_checkpoint(checkpoints) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model").exists()
    resumed = train(replace(killed, resume=True))
    reference = train(config(tmp_path, "reference", steps=30))
    assert_bit_identical(weights(reference.model_dir.parent), weights(resumed.model_dir.parent))


def test_lora_trains_adapters_and_saves_a_merged_model(tmp_path):
    mods = write_mods(tmp_path / "mods.json", ROBUST)
    result = train(config(tmp_path, lora_rank=4, mods_robust=str(mods), ratio=0.5, steps=3))
    merged = weights(result.model_dir.parent)
    assert not any("lora" in name for name in merged)
    before = load_file(Path(tiny_chat_model_dir()) / "model.safetensors")
    assert not torch.equal(before["model.layers.1.self_attn.q_proj.weight"],
                           merged["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])


def run_cli(*args: str) -> int:
    try:
        return cli.main(["train", *args])
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("problem", ["missing data", "bad mods", "unknown module", "bad ratio",
                                     "nothing to train", "other run in out", "swat without mods",
                                     "swat with a ratio", "swat warm-up without swat",
                                     "swat warm-up too long"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, problem):
    base = ["--model", str(tiny_chat_model_dir()), "--out", str(tmp_path / "out"), "--steps", "2",
            "--ift", str(write_instruction_file(tmp_path / "ift.json"))]
    extra = {
        "missing data": ["--ift", str(tmp_path / "missing.json")],
        "bad mods": ["--mods-robust", str(write_mods(tmp_path / "m.json", []).with_suffix(".x"))],
        "unknown module": ["--mods-robust", str(write_mods(tmp_path / "m.json", ["model.nope"]))],
        "bad ratio": ["--ratio", "-1"],
        "nothing to train": ["--ratio", "0"],
        "other run in out": ["--save-every", "1"],
        "swat without mods": ["--schedule", "swat"],
        "swat with a ratio": ["--schedule", "swat", "--ratio", "0.5"],
        "swat warm-up without swat": ["--swat-warmup-steps", "1"],
        "swat warm-up too long": ["--schedule", "swat", "--swat-warmup-steps", "3"],
    }[problem]
    if problem == "other run in out":
        assert run_cli(*base, *extra) == 0
        capsys.readouterr()
        extra = ["--save-every", "1", "--lr", "0.5"]
    assert run_cli(*base, *extra) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("mlr: error:")] == \
        [err.strip().splitlines()[-1]] and "Traceback" not in err
    assert not (tmp_path / "out" / "model").exists() or problem == "other run in out"


def test_a_nan_gradient_stops_training_with_one_line_and_keeps_the_checkpoints(tmp_path, capsys,
                                                                              monkeypatch):
    import mlr.tuning.train

    calls = []
    loss_sum = mlr.tuning.train.response_loss_sum

    def nan_at_step_3(model, batch):
        calls.append(None)
        loss = loss_sum(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(mlr.tuning.train, "response_loss_sum", nan_at_step_3)
    out = tmp_path / "out"
    assert run_cli("--model", str(tiny_chat_model_dir()), "--out", str(out), "--steps", "4",
                   "--ift", str(write_instruction_file(tmp_path / "ift.json")),
                   "--save-every", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlr: error: step 3: the gradient norm is nan")
    assert not (out / "model").exists()
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert read_checkpoint_meta(checkpoint)["step"] == 2 and checkpoint.name == "step-00000002"
    dcp_to_torch_save(checkpoint, tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=False)["model"]
    assert saved and all(torch.isfinite(t).all() for t in saved.values())


def test_an_old_format_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    checkpoints = tmp_path / "out" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"step": 4}, checkpoints / "step-00000004.pt")
    assert run_cli("--model", str(tiny_chat_model_dir()), "--out", str(tmp_path / "out"),
                   "--steps", "8", "--resume") == 2
    assert capsys.readouterr().err == (
        f"mlr: error: {checkpoints / 'step-00000004.pt'} is a checkpoint of the old single-file "
        "format, which this version cannot resume; start the run again in another --out\n")
