"""Loading a causal LM and its tokenizer from local files (never from a hub).

What ``--model`` may name: a Hugging Face model directory, a GGUF file (converted once into a
cached directory, ``mlr.models.gguf``), or a preset name such as ``smollm2-135m-instruct``
(``mlr.models.presets``); nothing (``None``) is the embedded default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mlr.errors import MlrInputError, first_line
from mlr.models.default_model import default_model_dir
from mlr.models.gguf import gguf_model_dir
from mlr.models.presets import PRESETS, preset_file

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def _check_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise MlrInputError(f"unknown device {device!r}: {first_line(error)}") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise MlrInputError(f"device {device!r} asked for, but no CUDA GPU is available")
    return parsed


def model_dir(model: str | os.PathLike | None) -> Path:
    """The Hugging Face directory that ``model`` (as ``--model`` takes it) stands for.

    ``None`` is the embedded default (built on first use); a preset name resolves to the file its
    package ships; a GGUF file, named by path, is converted on first use. A path that exists wins
    over a preset of the same name. Raises ``MlrInputError`` (one line) for a missing path, a file
    that is not GGUF, a directory without ``config.json`` or a missing optional package.
    """
    if model is None:
        return default_model_dir()
    path = Path(model).expanduser()
    if not path.exists() and str(model) in PRESETS:
        path = preset_file(str(model))
    if path.is_file() or (not path.exists() and path.suffix.lower() == ".gguf"):
        return gguf_model_dir(path)
    if not path.exists():
        raise MlrInputError(f"model directory not found: {path} (a model is a Hugging Face "
                            f"directory, a .gguf file or one of: {', '.join(PRESETS)})")
    if not (path / "config.json").is_file():
        raise MlrInputError(f"not a model directory (no config.json): {path}")
    return path


def load_model(path: str | os.PathLike | None = None, dtype: str = "float32",
               device: str = "cpu", padding_side: str = "left") -> tuple[Any, Any]:
    """(model, tokenizer) from ``path``: a local model directory, a GGUF file or a preset name
    (see ``model_dir``); ``None`` is the embedded default.

    The tokenizer always has a pad token (EOS when it had none). ``padding_side`` is left by
    default, which suits last-token probes and batched generation; trainers may pass "right".
    The model is returned in eval mode.
    """
    if dtype not in DTYPES:
        raise MlrInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if padding_side not in ("left", "right"):
        raise MlrInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    target = _check_device(device)
    directory = model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype],
                                                     local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MlrInputError(f"cannot load a causal LM from {directory}: {first_line(error)}") \
            from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(target).eval(), tokenizer
