"""Instruction examples → token ids → right-padded batches → the loss on the response tokens: the
twin of ``mlr.features`` (prompts → batches → features), shared by the trainer, the held-out loss
of the evaluation and the instruction-gradient perturbation, so all three see identical tokens.

Examples (``mlr.data.instructions.InstructionExample``) are formatted with the chat template; the
loss covers the response tokens only (the usual supervised fine-tuning loss), or the whole text for
an example without a response.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr.data.instructions import InstructionExample
from mlr.errors import MlrInputError
from mlr.features import pad_right, padding_mask, tokenize_chat

IGNORE_INDEX = -100
Encoded = tuple[list[int], list[int]]  # (input ids, labels with IGNORE_INDEX on the prompt)


@dataclass(frozen=True)
class LossBatch:
    """int64 ``[batch, longest]`` each: right-padded ids, their attention mask, and the labels
    (``IGNORE_INDEX`` on prompt tokens and padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def encode_example(tokenizer: Any, example: InstructionExample) -> Encoded:
    """Token ids and labels (prompt tokens masked when there is a response and the formatted
    prompt is a token prefix of the formatted exchange; else the whole text is the target)."""
    full = tokenize_chat(tokenizer, example.prompt, example.response)
    if example.response is None:
        return full, list(full)
    prompt = tokenize_chat(tokenizer, example.prompt)
    masked = len(prompt) if full[:len(prompt)] == prompt else 0
    return full, [IGNORE_INDEX] * masked + full[masked:]


def encode_examples(tokenizer: Any, examples: Sequence[InstructionExample],
                    max_length: int) -> list[Encoded]:
    """Encode and truncate to ``max_length`` tokens; examples left without a response token are
    dropped. Raises ``MlrInputError`` when none is left."""
    encoded = []
    for example in examples:
        ids, labels = encode_example(tokenizer, example)
        ids, labels = ids[:max_length], labels[:max_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            encoded.append((ids, labels))
    if not encoded:
        raise MlrInputError(f"no example keeps a response token within --max-length {max_length}")
    return encoded


def make_batch(encoded: Sequence[Encoded], indices: Sequence[int], pad_id: int,
               device: str | torch.device = "cpu") -> LossBatch:
    """The examples at ``indices``, right-padded; padding is ignored by the loss."""
    ids = [encoded[i][0] for i in indices]
    labels = pad_right([encoded[i][1] for i in indices], IGNORE_INDEX)
    return LossBatch(pad_right(ids, pad_id).to(device), padding_mask(ids).to(device),
                     labels.to(device))


def batches_in_order(encoded: Sequence[Encoded], batch_size: int, pad_id: int,
                     device: str | torch.device = "cpu") -> Iterator[LossBatch]:
    """Every example once, in order, ``batch_size`` at a time (for evaluation)."""
    for start in range(0, len(encoded), batch_size):
        yield make_batch(encoded, range(start, min(start + batch_size, len(encoded))), pad_id,
                         device)


def target_tokens(batch: LossBatch) -> int:
    """How many tokens of ``batch`` the loss covers (labels shifted by one, as the loss sees them)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def response_loss_sum(model: nn.Module, batch: LossBatch) -> torch.Tensor:
    """Next-token cross-entropy summed over the response tokens of ``batch`` (float32 scalar).

    Summed, not averaged, so that a caller dividing by the token count of a whole accumulation
    window gets the same gradient as one big batch."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")
