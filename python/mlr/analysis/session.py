"""What the analysis stages work on: the probe's data and the loaded model, opened in that order so
that a bad input fails before the model loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from mlr.analysis.config import AnalysisConfig
from mlr.data.instructions import InstructionExample, load_instructions
from mlr.data.security_data import SecurityData, load_security_data
from mlr.errors import MlrInputError
from mlr.features import Batch, encode_prompts, make_batches
from mlr.models import load_model
from mlr.modules import ModuleRef, decoder_layers, decoder_modules
from mlr.output_dir import check_output_dir
from mlr.sample_size import few_prompts_note, warn


@dataclass
class Session:
    """A loaded model (in eval mode) with its tokenizer and candidate modules, and the data the
    stages read: the probe's harmful/benign split and, for ``--perturb ift-grad``, the benign
    instruction examples."""

    config: AnalysisConfig
    model: nn.Module
    tokenizer: Any
    refs: list[ModuleRef]
    num_layers: int
    data: SecurityData
    instructions: list[InstructionExample] | None

    @property
    def pad_id(self) -> int:
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        return 0

    def batches(self, prompts: Sequence[str]) -> list[Batch]:
        return make_batches(encode_prompts(self.tokenizer, prompts), self.config.batch_size,
                            self.pad_id, self.config.device)


def open_session(config: AnalysisConfig, *, needs_instructions: bool = False,
                 prompts: SecurityData | None = None,
                 probe_depth: float | None = None) -> Session:
    """Read and check the data (warning when the held-out split is small) and that ``config.out``
    can be written, then load the model and check ``config.layer`` against it.
    ``needs_instructions``: the stages will build the perturbation (the map and the search), so
    ``--perturb ift-grad`` data is read too. ``prompts``: the probe's data already loaded (``mlr
    run``), in place of reading ``config.harmful`` and ``config.benign``. ``probe_depth``: without
    ``config.layer``, the probe layer at this fraction of the loaded model's depth; the session's
    config names that layer.

    Raises ``MlrInputError`` for a missing, empty or malformed file, too few prompts, an output
    directory that cannot be written, a model directory that is not one, or a layer the model does
    not have.
    """
    data = prompts
    if data is None:
        data = load_security_data(config.harmful, config.benign, config.seed)
    counts = data.heldout_counts()
    warn(few_prompts_note("the probe's held-out accuracy", sum(counts.values()),
                          f"{counts['harmful']} harmful, {counts['benign']} benign"))
    instructions = (load_instructions(config.ift)
                    if needs_instructions and config.perturb == "ift-grad" else None)
    check_output_dir(config.out)
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    model.eval()
    num_layers = len(decoder_layers(model))
    if config.layer is None and probe_depth is not None:
        config = replace(config, layer=round(probe_depth * (num_layers - 1)))
    if config.layer is not None and config.layer >= num_layers:
        raise MlrInputError(f"--layer {config.layer} is out of range: the model has {num_layers} "
                            f"decoder layers (0..{num_layers - 1})")
    return Session(config, model, tokenizer, decoder_modules(model), num_layers, data, instructions)
