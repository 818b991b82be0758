"""The options that several stages take (``mlr.options``), each declared here once.

An option of one stage that ``mlr run`` repeats (``--steps``, ``--tau``, ``--max-new-tokens``) is
declared by that stage's config instead, and ``RunConfig`` takes it with ``same_option``. The ones
here belong to no single stage: the model and where it runs, the prompt and instruction files,
the output directory, the seed and the batch size; and the optimizer's state, whose table the
training code reads too.
"""

from __future__ import annotations

import torch

from mlr.models import DTYPES
from mlr.options import Option, at_least, require

# mlr.models' dtype table: torch's names and their aliases (bf16, fp16, fp32), as load_model takes.
DTYPE_CHOICES = tuple(DTYPES)
# --optimizer-state: the dtype MLRAdamW keeps AdamW's moments in (its ``state_dtype``).
OPTIMIZER_STATES = {"fp32": torch.float32, "bf16": torch.bfloat16}

MODEL = Option(None, "local Hugging Face model directory, GGUF file, or smollm2-135m-instruct",
               metavar="MODEL", none="the embedded tiny Llama as built, not aligned")
DTYPE = Option("float32", "dtype of the model's weights (fine-tuning on a GPU also autocasts to "
               "bfloat16)", choices=DTYPE_CHOICES)
DEVICE = Option("cpu", "torch device, e.g. cpu, cuda or cuda:1")
# Each command has its own default directory; its description lists what it writes there.
OUT = Option("mlr_out", "output directory, created if missing (the command's description lists "
             "what it writes there)", metavar="DIR")
SEED = Option(0, "seed of everything random: the data order or split, LoRA's initialization, "
              "dropout, the first perturbation")
BATCH_SIZE = Option(16, "inputs per forward pass: prompts, or fine-tuning examples per "
                    "micro-batch (global, over all ranks)", metavar="N", bounds=at_least(1))

HARMFUL = Option(None, "harmful prompts: CSV (goal column), JSON/JSONL (prompt or instruction "
                 "field) or text, one a line", metavar="FILE",
                 none="the embedded set; its held-out split when evaluating")
BENIGN = Option(None, "benign prompts (the probe's other class, and over-refusal), in the same "
                "formats as --harmful", metavar="FILE",
                none="the embedded set; its held-out split when evaluating")
IFT = Option(None, "benign instruction data (IFT): alpaca (instruction/input/output) or chat "
             "(messages) JSON/JSONL; what fine-tuning trains on, and whose loss --perturb ift-grad "
             "follows", metavar="FILE",
             none="the embedded fine-tuning tasks' training split")

OPTIMIZER_STATE = Option("fp32", "dtype of AdamW's moments: bf16 halves their memory, written "
                         "back with unbiased stochastic rounding (docs/optimizer_contract.md)",
                         choices=tuple(OPTIMIZER_STATES))
MASTER_WEIGHTS = Option(True, "step bfloat16/float16 weights without float32 master weights, "
                        "through a Kahan compensation in their own dtype (2 bytes a parameter "
                        "instead of 4)", negative_flag="--no-master-weights")


def require_master_weights_fit(master_weights: bool, dtype: str) -> None:
    """Raise ``MlrInputError`` for ``--no-master-weights`` with float32 weights."""
    require(master_weights or DTYPES[dtype] in (torch.bfloat16, torch.float16),
            "--no-master-weights needs --dtype bfloat16 or float16 (float32 weights are their own "
            "master)")
