"""Instruction examples as token ids and labels, and the gradient of their loss, for the
``ift-grad`` perturbation (``mlr.tuning.sft`` builds the trainer's data on the same encoding).

Examples are (prompt, response) pairs formatted with the chat template; the loss covers the
response tokens only (the usual supervised fine-tuning loss), or the whole text for an example
without a response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlr.data.prompts import instruction_prompt
from mlr.errors import MlrInputError
from mlr.features import tokenize_chat
from mlr.modules import ModuleRef, module_gradients

IGNORE_INDEX = -100


@dataclass(frozen=True)
class InstructionExample:
    prompt: str
    response: str | None = None


@dataclass(frozen=True)
class LossBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def encode_example(tokenizer, example: InstructionExample) -> tuple[list[int], list[int]]:
    """Token ids and labels (prompt tokens masked when there is a response and the formatted
    prompt is a token prefix of the formatted exchange; else the whole text is the target)."""
    full = tokenize_chat(tokenizer, example.prompt, example.response)
    if example.response is None:
        return full, list(full)
    prompt = tokenize_chat(tokenizer, example.prompt)
    masked = len(prompt) if full[:len(prompt)] == prompt else 0
    return full, [IGNORE_INDEX] * masked + full[masked:]


def instruction_gradients(model: nn.Module, batch: LossBatch,
                          refs: Sequence[ModuleRef]) -> dict[str, torch.Tensor]:
    """Each module's block of the loss gradient (float32, keyed by module name), from one
    forward and backward with gradients enabled only on the modules' weights."""
    def backward() -> None:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
              labels=batch.labels, use_cache=False).loss.backward()

    return module_gradients(model, refs, backward)


def example_from_record(record: Mapping[str, Any], where: str) -> InstructionExample:
    """An alpaca dict or a single-turn chat (``{"messages": [user, assistant]}``) as an example."""
    messages = record.get("messages")
    if messages is None:
        return InstructionExample(instruction_prompt(record), record["output"])
    roles = [message["role"] for message in messages]
    if roles != ["user", "assistant"]:
        raise MlrInputError(f"{where}: only single-turn chats (user, assistant) are supported, "
                            f"got roles {roles}")
    return InstructionExample(messages[0]["content"], messages[1]["content"])
