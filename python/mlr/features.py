"""Prompts → padded batches → last-token hidden states at chosen layers, in one early-stopped forward
per batch (the fused capture hook of ``mlr_kernels.capture``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlr.models import format_chat
from mlr.modules import decoder_layers
from mlr.progress import progress
from mlr_kernels.capture import LastTokenCapture


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids of some prompts; ``rows`` are their indices in the full prompt list."""

    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def tokenize_chat(tokenizer, prompt: str, response: str | None = None) -> list[int]:
    """Token ids of a user turn (and the reply, if given) as ``mlr.models.format_chat`` lays them
    out; special tokens are added only without a chat template (a template supplies its own)."""
    add_special = not getattr(tokenizer, "chat_template", None)
    text = format_chat(tokenizer, prompt, response)
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    return [tokenize_chat(tokenizer, prompt) for prompt in prompts]


def pad_right(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """int64 ``[len(sequences), longest]``, each sequence followed by ``value``."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out


def padding_mask(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """The attention mask matching ``pad_right(sequences, ...)``."""
    return pad_right([[1] * len(s) for s in sequences], 0)


def make_batches(token_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                 device: str | torch.device = "cpu") -> list[Batch]:
    """Group sequences of similar length (sorted, so little padding) into right-padded batches.

    Right padding keeps every real token at its unpadded position, so a prompt's hidden states do
    not depend on which batch it lands in (absolute position embeddings included).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        sequences = [token_ids[i] for i in rows]
        batches.append(Batch(torch.tensor(rows), pad_right(sequences, pad_id).to(device),
                             padding_mask(sequences).to(device)))
    return batches


def forward(model: nn.Module, batch: Batch) -> None:
    """One forward of ``model`` on ``batch`` for its hooks' sake (no KV cache)."""
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)


def capture_features(model: nn.Module, batches: Sequence[Batch], layer_indices: Sequence[int],
                     desc: str = "capture") -> torch.Tensor:
    """Last-token hidden states at ``layer_indices``: float32 ``[len(layer_indices), rows, hidden]``
    on the CPU, rows in the original prompt order."""
    layers = decoder_layers(model)
    rows = sum(len(b.rows) for b in batches)
    features: torch.Tensor | None = None
    with torch.inference_mode():
        for batch in progress(batches, desc=desc):
            with LastTokenCapture(layers, layer_indices, attention_mask=batch.attention_mask) as cap:
                forward(model, batch)
            if features is None:
                features = torch.empty((len(layer_indices), rows, cap.buffer.shape[-1]))
            features[:, batch.rows] = cap.buffer.float().cpu()
    if features is None:
        raise ValueError("no batches to capture")
    return features
