"""Command-line options declared once, on the config dataclasses the library takes.

A field made with ``option(default, help, ...)`` carries its help text (and metavar, choices, or
the name of a negative flag) in its metadata; ``add_options`` turns the fields into argparse
arguments (``batch_size`` → ``--batch-size``, its type from the annotation, its default in the help)
and ``from_options`` builds the dataclass back from the parsed namespace, so its ``__post_init__``
validates what the user typed exactly as it validates what a Python caller passes.

Why not ``transformers.HfArgumentParser``: it builds a whole parser per dataclass, where the ``mlr``
subcommands need arguments added to an existing subparser (one dataclass shared by three commands,
each taking a subset); it also registers ``--batch_size`` aliases and ``--no_x`` flags that we would
then document around. Fifty lines of our own read more plainly than that configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import torch

from mlr.errors import MlrInputError
from mlr.models import DTYPES

C = TypeVar("C")


def option(default: Any, help: str, *, metavar: str | None = None,
           choices: Sequence[str] | None = None, none: str | None = None,
           negative_flag: str | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    ``help``: what the option does (without its default, which is appended). ``none``: what a
    ``None`` default means, shown as the default ("the best layer"). ``negative_flag``: for a
    boolean that defaults to True, the flag that turns it off (``--no-control``).
    """
    metadata = {"help": help, "metavar": metavar, "choices": choices, "none": none,
                "negative_flag": negative_flag}
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """``batch_size`` → ``--batch-size``: how a field is spelled on the command line."""
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """``int | None`` → ``int``; a plain type stays itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"an option needs one type, got {annotation}")
        return kinds[0]
    return annotation


def _help(field: dataclasses.Field) -> str:
    text = field.metadata["help"]
    if field.default is None:
        shown = field.metadata["none"]
    elif isinstance(field.default, bool):
        shown = None
    else:
        shown = str(field.default)
    return (f"{text} (default: {shown})" if shown else text).replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, config: type, *,
                only: Collection[str] | None = None) -> None:
    """Add an argument to ``parser`` for every ``option`` field of the dataclass ``config`` (or
    for those named in ``only``, in declaration order)."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if "help" not in field.metadata or (only is not None and field.name not in only):
            continue
        kind = _base_type(hints[field.name])
        if kind is bool:
            negative = field.metadata["negative_flag"]
            if field.default:
                if negative is None:
                    raise TypeError(f"{config.__name__}.{field.name} defaults to True: give it a "
                                    "negative_flag")
                parser.add_argument(negative, dest=field.name, action="store_false",
                                    help=_help(field))
            else:
                parser.add_argument(flag(field.name), action="store_true", help=_help(field))
            continue
        parser.add_argument(flag(field.name), dest=field.name, type=kind, default=field.default,
                            choices=field.metadata["choices"], metavar=field.metadata["metavar"],
                            help=_help(field))


def from_options(config: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """The dataclass ``config`` from the parsed ``args`` (fields the parser did not add keep their
    defaults; ``overrides`` win over both). Raises ``MlrInputError`` from its validation."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config)
              if f.init and hasattr(args, f.name)}
    return config(**{**values, **overrides})


def require(condition: bool, message: str) -> None:
    """Validation in a config's ``__post_init__``: raise ``MlrInputError(message)`` unless
    ``condition`` holds (the CLI prints it as one line ``mlr: error: ...``, exit code 2)."""
    if not condition:
        raise MlrInputError(message)


def require_at_least(config: Any, minimum: float, *names: str) -> None:
    """Each named field of ``config`` is at least ``minimum`` (``--steps must be at least 1``)."""
    for name in names:
        value = getattr(config, name)
        require(value >= minimum, f"{flag(name)} must be at least {minimum}, got {value}")


# The canonical names of mlr.models' dtype table (it also takes aliases such as bf16).
DTYPE_CHOICES = tuple(name for name, dtype in DTYPES.items() if dtype is getattr(torch, name, None))


def dtype_option(help: str = "dtype of the model's weights") -> Any:
    """``--dtype``, as every command that loads a model takes it."""
    return option("float32", help, choices=DTYPE_CHOICES)


# --optimizer-state: the dtype MLRAdamW keeps AdamW's moments in (its ``state_dtype``).
OPTIMIZER_STATES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def optimizer_state_option() -> Any:
    """``--optimizer-state``, as every command that fine-tunes takes it."""
    return option("fp32", "dtype of AdamW's moments: bf16 halves their memory, written back with "
                  "unbiased stochastic rounding (docs/optimizer_contract.md)",
                  choices=tuple(OPTIMIZER_STATES))


def master_weights_option() -> Any:
    """``--no-master-weights``, as every command that fine-tunes takes it."""
    return option(True, "step bfloat16/float16 weights without float32 master weights, through a "
                  "Kahan compensation in their own dtype (2 bytes a parameter instead of 4)",
                  negative_flag="--no-master-weights")


def require_master_weights_fit(master_weights: bool, dtype: str) -> None:
    """Raise ``MlrInputError`` for ``--no-master-weights`` with float32 weights."""
    require(master_weights or dtype in ("bfloat16", "float16"),
            "--no-master-weights needs --dtype bfloat16 or float16 (float32 weights are their own "
            "master)")


def device_option() -> Any:
    """``--device``, as every command that loads a model takes it."""
    return option("cpu", "torch device, e.g. cpu, cuda or cuda:1")


def model_option(none: str = "the embedded tiny Llama as built, not aligned") -> Any:
    """``--model``: a local Hugging Face model directory, a GGUF file or a preset name."""
    return option(None, "local Hugging Face model directory, GGUF file, or smollm2-135m-instruct",
                  metavar="MODEL", none=none)
