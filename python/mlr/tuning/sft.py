"""Supervised fine-tuning data and loss: examples → chat-template token ids with the loss on the
response tokens only → right-padded batches → the summed response-token cross-entropy.

Examples are single-turn (prompt, response) pairs, ``mlr.data.ift.InstructionExample``; the encoding is
``mlr.data.ift.encode_example`` (the same one the ``ift-grad`` perturbation uses), so the analysis and the
trainer see identical tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr.data.embedded_data import fine_tuning_examples
from mlr.data.ift import IGNORE_INDEX, InstructionExample, LossBatch, encode_example, example_from_record
from mlr.data.prompts import load_instruction_data
from mlr.errors import MlrInputError
from mlr.features import pad_right, padding_mask

Encoded = tuple[list[int], list[int]]  # (input ids, labels with IGNORE_INDEX on the prompt)


def load_training_examples(path: str | None) -> list[InstructionExample]:
    """Examples from an alpaca / chat JSON(L) file, or the embedded benign fine-tuning set's
    training split when ``path`` is ``None`` (``mlr.data.embedded_data``)."""
    if path is None:
        return fine_tuning_examples("train")
    records = load_instruction_data(path)
    return [example_from_record(record, f"{path} example {index}")
            for index, record in enumerate(records, start=1)]


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
