"""``mlr_optimizers`` in a Hugging Face ``Trainer``: a few steps on a tiny Llama equal the same
Trainer run with torch AdamW at lr × multiplier per group, under Trainer's warm-up + cosine
schedule, gradient clipping and ``model.zero_grad()``; and examples/hf_trainer_mlr.py as a user
runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from chat_models import tiny_chat_model_dir
from mlr.integrations.hf_trainer import mlr_optimizers
from mlr.tuning.ml_lr import module_lr_multipliers, param_groups
from transformers import Trainer, TrainingArguments, default_data_collator, get_scheduler

from tests.optim_cases import assert_same_params, torch_adamw_for
from tests.tiny_models import VOCAB, tiny_llama

ROBUST = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
STEPS = 4


def _token_dataset(examples: int = 16, length: int = 12) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (examples, length), generator=gen)
    return [{"input_ids": row, "labels": row} for row in ids]


def _args(output_dir) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=1e-2, weight_decay=0.1, lr_scheduler_type="cosine", warmup_steps=1,
        max_grad_norm=0.5, seed=0, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )


def _torch_optimizers(model, args: TrainingArguments, multipliers: dict[str, float]):
    """torch AdamW equivalent to mlr_optimizers, with the same schedule."""
    optimizer = torch_adamw_for(param_groups(model, multipliers, args.weight_decay), args.learning_rate,
                                betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.get_warmup_steps(STEPS), num_training_steps=STEPS)
    return optimizer, scheduler


def test_trainer_with_mlr_optimizers_matches_torch_adamw(tmp_path):
    ours, ref = tiny_llama(layers=2), tiny_llama(layers=2)
    multipliers = module_lr_multipliers(ours, ROBUST, ratio=0.1)
    args = _args(tmp_path)
    runs = [(ours, mlr_optimizers(ours, args, multipliers, backend="reference")),
            (ref, _torch_optimizers(ref, args, multipliers))]
    for model, optimizers in runs:
        Trainer(model=model, args=args, train_dataset=_token_dataset(),
                data_collator=default_data_collator, optimizers=optimizers).train()
    assert_same_params(ours, ref)
    before = tiny_llama(layers=2)
    assert not torch.equal(ours.model.layers[0].self_attn.q_proj.weight,
                           before.model.layers[0].self_attn.q_proj.weight)


def test_trainer_with_bfloat16_optimizer_state(tmp_path):
    """bfloat16 moments through Trainer: the same run as torch AdamW, to bfloat16 rounding of the
    moments (a step of at most lr moves by at most 2**-4 lr more), and the state in bfloat16."""
    ours, ref = tiny_llama(layers=2), tiny_llama(layers=2)
    multipliers = module_lr_multipliers(ours, ROBUST, ratio=0.1)
    args = _args(tmp_path)
    optimizer, scheduler = mlr_optimizers(ours, args, multipliers, backend="cpu", state_dtype=torch.bfloat16)
    runs = ((ours, (optimizer, scheduler)), (ref, _torch_optimizers(ref, args, multipliers)))
    for model, optimizers in runs:
        Trainer(model=model, args=args, train_dataset=_token_dataset(),
                data_collator=default_data_collator, optimizers=optimizers).train()
    assert_same_params(ours, ref, rtol=0, atol=STEPS * 2.0**-4 * args.learning_rate)
    assert {state["exp_avg"].dtype for state in optimizer.state.values()} == {torch.bfloat16}


def test_multiplier_zero_freezes_the_parameter(tmp_path):
    model = tiny_llama(layers=2)
    multipliers = module_lr_multipliers(model, ROBUST, ratio=0.0)
    optimizer, _ = mlr_optimizers(model, _args(tmp_path), multipliers, backend="reference")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    stepped = {name for group in optimizer.param_groups for name in group["param_names"]}
    assert trainable == stepped == {name for name, mult in multipliers.items() if mult > 0}
    assert {name.rsplit(".", 1)[0] for name in stepped} == set(ROBUST)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_mlr.py"


def _example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(EXAMPLE.parents[1] / p)
                                                       for p in ("python", "."))}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_example_with_a_model_and_no_data_trains_on_random_tokens(tmp_path):
    # run from a folder holding a file that is not JSON: it must not be read as the data
    (tmp_path / "notes.txt").write_text("not json")
    done = _example("--model", str(tiny_chat_model_dir()), "--steps", "1", "--batch-size", "2",
                    "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_example_refuses_data_without_a_model_in_one_line(tmp_path):
    done = _example("--data", "train.jsonl", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("--data needs --model (whose tokenizer "
                                                         "reads it)")
