"""Fine-tune a causal LM with the Hugging Face Trainer and MLRAdamW at ML-LR learning rates.

The modules of a ``mods_robust.json`` (``mlr search``) train at the base learning rate, every other
parameter at base × ``--ratio``; or give glob patterns over module names instead::

    python examples/hf_trainer_mlr.py --model path/to/llama --data train.jsonl \\
        --mods-robust runs/search/mods_robust.json --ratio 0.1 --out runs/trainer
    python examples/hf_trainer_mlr.py --model path/to/llama --data train.jsonl \\
        --patterns '{"model.layers.*.self_attn.*": 1.0}' --ratio 0.1 --lora-rank 16 --out runs/lora
    torchrun --nproc-per-node 2 examples/hf_trainer_mlr.py ...   # DDP: Trainer wraps the model
    python examples/hf_trainer_mlr.py --out /tmp/smoke           # no files: a tiny random Llama

``--data`` is JSON lines with a ``"text"`` field, tokenized with ``--model``'s tokenizer; without
it the model trains on random tokens (a smoke test of the optimizer wiring). Needs
``pip install .`` (or ``PYTHONPATH=python``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from mlr.integrations.hf_trainer import mlr_optimizers
from mlr.integrations.lr_patterns import pattern_lr_multipliers
from mlr.tuning.lora import add_lora
from mlr.tuning.ml_lr import module_lr_multipliers, read_mods_robust
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local model directory (default: a tiny random Llama)")
    parser.add_argument("--data", help="JSON lines with a \"text\" field, tokenized with --model's "
                        "tokenizer (default: random tokens)")
    parser.add_argument("--mods-robust", help="mods_robust.json: these modules train at the base LR")
    parser.add_argument("--patterns", help="JSON {module glob: multiplier}, first match wins")
    parser.add_argument("--ratio", type=float, default=0.1, help="multiplier of every other module")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0: none)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    if args.data and not args.model:
        parser.error("--data needs --model (whose tokenizer reads it)")
    if args.data and not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    return args


def tiny_model() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def random_tokens(vocab_size: int, length: int) -> list[dict[str, torch.Tensor]]:
    """64 sequences of random token ids, each its own label."""
    ids = torch.randint(0, vocab_size, (64, length), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids]


def text_data(args: argparse.Namespace):
    """(dataset, collator): ``--data``'s texts through ``--model``'s tokenizer."""
    from datasets import load_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    data = load_dataset("json", data_files=args.data, split="train")
    data = data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=args.max_length),
                    remove_columns=data.column_names)
    return data, DataCollatorForLanguageModeling(tokenizer, mlm=False)


def main() -> None:
    args = parse_args()
    if args.model:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        model = tiny_model()
    if args.data:
        data, collator = text_data(args)
    else:
        data = random_tokens(model.config.vocab_size, min(32, args.max_length))
        collator = default_data_collator
    if args.lora_rank:
        model = add_lora(model, args.lora_rank, alpha=2.0 * args.lora_rank, dropout=0.05)

    if args.patterns:
        multipliers = pattern_lr_multipliers(model, json.loads(args.patterns), default=args.ratio)
    else:
        robust = read_mods_robust(args.mods_robust) if args.mods_robust else []
        multipliers = module_lr_multipliers(model, robust, args.ratio)

    training = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 10),
        weight_decay=0.01, logging_steps=5, save_strategy="no", report_to=[],
        bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training, train_dataset=data, data_collator=collator,
                      optimizers=mlr_optimizers(model, training, multipliers))
    trainer.train()
    trainer.save_model(args.out)


if __name__ == "__main__":
    main()
