"""The peer defenses ML-LR is compared with, as training options.

- **SPPFT-style freezing** (``--freeze-layers A-B``): the decoder layers A..B, the "safety
  layers", keep their weights (every parameter of those layers at multiplier 0) while the rest
  fine-tunes at the base rate. The authors freeze layers 5-14 of Llama-2-7B-chat's 32, a
  contiguous middle block; ``scaled_safety_layers`` scales that block to another depth (5-13 of
  30, 1-2 of 4).
- **SafeInstr-style mixing** (``--safety-mix F``): as in Safety-Tuned LLaMAs, refusal examples
  make up a share F of the fine-tuning data: the embedded alignment set's harmful requests with
  their refusals (training split only; the evaluation's held-out requests are never mixed in), a
  fixed selection independent of the seed so every seed and arm sees the same mixture.
"""

from __future__ import annotations

import re

from torch import nn

from mlr.data.corpus import refusal_for, security_pairs
from mlr.data.corpus.splits import hash_order
from mlr.data.instructions import InstructionExample
from mlr.errors import MlrInputError
from mlr.modules import decoder_layers

# Llama-2-7B-chat's safety layers in the SPPFT recipe: 5..14 of 32.
PAPER_BLOCK = (5, 14)
PAPER_DEPTH = 32


def scaled_safety_layers(num_layers: int) -> str:
    """The paper's block scaled to ``num_layers`` layers, as ``"A-B"``."""
    first, last = (round(bound * num_layers / PAPER_DEPTH) for bound in PAPER_BLOCK)
    return f"{min(first, num_layers - 1)}-{min(last, num_layers - 1)}"


def parse_layer_block(text: str) -> tuple[int, int]:
    """``"A-B"`` (or ``"A"``) as (A, B). Raises ``MlrInputError`` for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise MlrInputError(f"--freeze-layers takes a layer block A-B (e.g. 5-13), got {text!r}")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if last < first:
        raise MlrInputError(f"--freeze-layers {text}: the block ends before it starts")
    return first, last


def layer_parameter_names(model: nn.Module, block: tuple[int, int]) -> set[str]:
    """Names (as ``model.named_parameters`` gives them) of every parameter of the decoder layers
    in ``block``. Raises ``MlrInputError`` when the model has fewer layers."""
    layers = decoder_layers(model)
    first, last = block
    if last >= len(layers):
        raise MlrInputError(f"--freeze-layers {first}-{last}: the model has {len(layers)} decoder "
                            f"layers (0..{len(layers) - 1})")
    wanted = {id(p) for layer in layers[first:last + 1] for p in layer.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


def safety_examples(count: int) -> list[InstructionExample]:
    """``count`` harmful requests of the embedded training split with their refusals, in a fixed
    order (a stable hash). Raises ``MlrInputError`` when the split holds fewer."""
    pairs = hash_order("safety-mix", security_pairs("train"))
    if count > len(pairs):
        raise MlrInputError(f"--safety-mix asks for {count} refusal examples; the embedded set "
                            f"holds {len(pairs)}: lower --safety-mix")
    return [InstructionExample(p.harmful, refusal_for(p.harmful)) for p in pairs[:count]]


def mix_safety(examples: list[InstructionExample], share: float) -> list[InstructionExample]:
    """``examples`` with refusal examples added so that they make up ``share`` of the result
    (rounded; none for 0)."""
    count = round(len(examples) * share / (1.0 - share))
    return examples + safety_examples(count) if count else examples
