"""What the analysis commands share: options, the loaded model, reusable outputs, summary tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mlr.errors import MlrInputError
from mlr.features import Batch, encode_prompts, make_batches
from mlr.models import load_model
from mlr.modules import ModuleRef, decoder_layers, decoder_modules

DTYPES = ("float32", "bfloat16", "float16")


def add_device_arguments(parser: argparse.ArgumentParser,
                         dtype_help: str = "dtype of the model's weights") -> None:
    """--dtype and --device, as every command that loads a model takes them."""
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help=dtype_help)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR",
                        help="local Hugging Face model directory (default: the embedded tiny Llama)")
    add_device_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N")
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits and perturbations")
    parser.add_argument("--out", metavar="DIR", default="mlr_out", help="output directory")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--harmful", metavar="FILE",
                        help="harmful prompts: CSV (goal column), JSON/JSONL (prompt or instruction "
                             "field) or text, one a line (default: the embedded set)")
    parser.add_argument("--benign", metavar="FILE", help="benign prompts, same formats")
    parser.add_argument("--layer", type=int, metavar="L",
                        help="probe layer, 0-based (default: the best held-out accuracy)")


def _number(text: str, kind: type, ok, wanted: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a non-negative number")


def unit_fraction(text: str) -> float:
    """A number in (0, 1]."""
    return _number(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


@dataclass
class Session:
    """A loaded model with its tokenizer, decoder layers and candidate modules."""

    model: nn.Module
    tokenizer: object
    refs: list[ModuleRef]
    num_layers: int
    batch_size: int
    device: str

    @property
    def pad_id(self) -> int:
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        return 0

    def batches(self, prompts: Sequence[str]) -> list[Batch]:
        return make_batches(encode_prompts(self.tokenizer, prompts), self.batch_size, self.pad_id,
                            self.device)

    def check_layer(self, layer: int | None) -> None:
        if layer is not None and not 0 <= layer < self.num_layers:
            raise MlrInputError(f"--layer {layer} is out of range: the model has "
                                f"{self.num_layers} decoder layers (0..{self.num_layers - 1})")


def load_session(args: argparse.Namespace) -> Session:
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    model.eval()
    refs = decoder_modules(model)
    return Session(model, tokenizer, refs, len(decoder_layers(model)), args.batch_size,
                   args.device)


def reusable(path: Path, config: dict) -> dict | None:
    """The JSON at ``path`` if it exists and was made with ``config``, else ``None`` (with a note
    on stderr when a file is there but was made differently)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        data = None
    if isinstance(data, dict) and data.get("config") == config:
        return data
    print(f"mlr: {path} was made with other options; recomputing it", file=sys.stderr)
    return None


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain left-aligned text table on stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
