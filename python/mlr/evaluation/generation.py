"""Batched greedy generation with left padding.

Texts are sorted by length before batching (little padding), and the answers are returned in the
input order. Greedy decoding makes the answers a function of the model alone, so every arm of a
comparison is judged on what it deterministically says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlr.models import format_chat
from mlr.progress import progress


def generate_texts(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_new_tokens: int,
                   batch_size: int = 32, add_special_tokens: bool = False,
                   desc: str = "generate") -> list[str]:
    """The decoded continuation of each fully formatted input text (special tokens stripped)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            for start in progress(range(0, len(order), batch_size), desc=desc):
                rows = order[start:start + batch_size]
                inputs = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True,
                                   add_special_tokens=add_special_tokens).to(model.device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]
                for row, text in zip(rows, tokenizer.batch_decode(new_tokens,
                                                                  skip_special_tokens=True)):
                    answers[row] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
    return answers


def generate_responses(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                       max_new_tokens: int, batch_size: int = 32,
                       desc: str = "generate") -> list[str]:
    """The model's answer to each prompt as a user turn of its chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    texts = [format_chat(tokenizer, prompt) for prompt in prompts]
    return generate_texts(model, tokenizer, texts, max_new_tokens, batch_size,
                          add_special_tokens=not has_template, desc=desc)
