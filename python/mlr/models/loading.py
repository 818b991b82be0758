"""Loading a causal LM and its tokenizer from a local directory (never from a hub)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mlr.errors import MlrInputError
from mlr.models.default_model import default_model_dir

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise MlrInputError(f"unknown device {device!r}: {_one_line(error)}") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise MlrInputError(f"device {device!r} asked for, but no CUDA GPU is available")
    return parsed


def load_model(path: str | os.PathLike | None = None, dtype: str = "float32",
               device: str = "cpu", padding_side: str = "left") -> tuple[Any, Any]:
    """(model, tokenizer) from the local directory ``path``; ``None`` is the embedded default.

    The tokenizer always has a pad token (EOS when it had none). ``padding_side`` is left by
    default, which suits last-token probes and batched generation; trainers may pass "right".
    The model is returned in eval mode.
    """
    if dtype not in DTYPES:
        raise MlrInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if padding_side not in ("left", "right"):
        raise MlrInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    target = _check_device(device)
    directory = default_model_dir() if path is None else Path(path).expanduser()
    if not directory.exists():
        raise MlrInputError(f"model directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise MlrInputError(f"not a model directory (no config.json): {directory}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype],
                                                     local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MlrInputError(f"cannot load a causal LM from {directory}: {_one_line(error)}") \
            from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(target).eval(), tokenizer
