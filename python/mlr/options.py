"""Command-line options declared once, on the config dataclasses the library takes.

An ``Option`` is one declaration: help text, default, metavar, choices, the range a number must
lie in. A config field is made from it with ``Option.field`` (``option(...)`` for an option one
config alone takes); an option several configs take is declared once (``mlr.shared_options``, or
by the config of the stage that owns it, which ``mlr run``'s config then takes with
``same_option``), and a config may change only its default. ``add_options`` turns the fields into
argparse arguments (``batch_size`` → ``--batch-size``, its type from the annotation, its default in
the help, an old spelling as a hidden alias) and ``from_options`` builds the dataclass back from
the parsed namespace, so its ``__post_init__`` (``check_options`` first, then the checks that
relate fields) validates what the user typed exactly as it validates what a Python caller passes.

Why not ``transformers.HfArgumentParser``: it builds a whole parser per dataclass, where the ``mlr``
subcommands need arguments added to an existing subparser (one dataclass shared by three commands,
each taking a subset); it also registers ``--batch_size`` aliases and ``--no_x`` flags that we would
then document around. A hundred lines of our own read more plainly than that configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from mlr.errors import MlrInputError

C = TypeVar("C")
_UNCHANGED: Any = object()  # Option.field's default: the declaration's own default / none


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric option must lie in: ``[low, high]``, or ``(low, high]`` with
    ``low_open``; no ``high``: unbounded above."""

    low: float
    high: float | None = None
    low_open: bool = False

    def interval(self) -> str:
        """``[0, 1]``, ``(0, 1]``: how the help text and the error show a two-sided range."""
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range (``must be in [0, 1]``), or None when it is in it."""
        too_low = value <= self.low if self.low_open else value < self.low
        if not too_low and (self.high is None or value <= self.high):
            return None
        if self.high is not None:
            return f"must be in {self.interval()}"
        if self.low_open:
            return "must be positive" if self.low == 0 else f"must be above {self.low:g}"
        return f"must be at least {self.low:g}"


def at_least(minimum: float) -> Bounds:
    """``minimum`` or more (``--steps must be at least 1``)."""
    return Bounds(low=minimum)


POSITIVE = Bounds(low=0, low_open=True)


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option, declared once.

    ``help``: what the option does (without its default, which is appended). ``none``: what a
    ``None`` default means, shown as the default ("the best layer"). ``negative_flag``: for a
    boolean that defaults to True, the flag that turns it off (``--no-control``). ``bounds``: the
    range ``check_options`` holds a number to, as it holds a value to ``choices`` (``None``
    always passes: "not given").
    """

    default: Any
    help: str
    metavar: str | None = None
    choices: Sequence[str] | None = None
    none: str | None = None
    negative_flag: str | None = None
    bounds: Bounds | None = None

    def field(self, default: Any = _UNCHANGED, *, none: str | None = _UNCHANGED,
              aliases: Sequence[str] = ()) -> Any:
        """A dataclass field that takes this option: with the declaration's default unless one is
        given (and then what its ``None`` means), and ``aliases``, earlier spellings that still
        parse but are hidden from ``--help``."""
        metadata = {"option": self, "none": self.none if none is _UNCHANGED else none,
                    "aliases": tuple(aliases)}
        return dataclasses.field(default=self.default if default is _UNCHANGED else default,
                                 metadata=metadata)


def option(default: Any, help: str, *, metavar: str | None = None,
           choices: Sequence[str] | None = None, none: str | None = None,
           negative_flag: str | None = None, bounds: Bounds | None = None,
           aliases: Sequence[str] = ()) -> Any:
    """A field with an option of its own: one that this config alone takes."""
    return Option(default, help, metavar, choices, none, negative_flag, bounds).field(
        aliases=aliases)


def declaration(config: type, name: str) -> Option:
    """The ``Option`` of the field ``name`` of the dataclass ``config``."""
    return next(f for f in dataclasses.fields(config) if f.name == name).metadata["option"]


def same_option(config: type, name: str, default: Any = _UNCHANGED, *,
                none: str | None = _UNCHANGED) -> Any:
    """A field that takes the option ``config`` declares as ``name``: same spelling, help text,
    and range; only its default (and what a ``None`` default means) may differ."""
    return declaration(config, name).field(default, none=none)


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
    """The option's help text with its default and, for a two-sided range, the range."""
    declared = field.metadata["option"]
    if field.default is None:
        shown = field.metadata["none"]
    elif isinstance(field.default, bool):
        shown = None
    else:
        shown = str(field.default)
    if shown and declared.bounds is not None and declared.bounds.high is not None:
        shown += f"; range {declared.bounds.interval()}"
    return (f"{declared.help} (default: {shown})" if shown else declared.help).replace("%", "%%")


def _arguments(config: type, field: dataclasses.Field, kind: type) -> tuple[str, dict[str, Any]]:
    """The spelling and ``add_argument`` keywords of the option that ``field`` takes."""
    declared = field.metadata["option"]
    if kind is not bool:
        return flag(field.name), {"dest": field.name, "type": kind, "default": field.default,
                                  "choices": declared.choices, "metavar": declared.metavar}
    if not field.default:
        return flag(field.name), {"dest": field.name, "action": "store_true"}
    if declared.negative_flag is None:
        raise TypeError(f"{config.__name__}.{field.name} defaults to True: give it a "
                        "negative_flag")
    return declared.negative_flag, {"dest": field.name, "action": "store_false"}


def add_options(parser: argparse.ArgumentParser, config: type, *,
                only: Collection[str] | None = None) -> None:
    """Add an argument to ``parser`` for every option field of the dataclass ``config`` (or
    for those named in ``only``, in declaration order), and its hidden aliases."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if "option" not in field.metadata or (only is not None and field.name not in only):
            continue
        spelling, keywords = _arguments(config, field, _base_type(hints[field.name]))
        parser.add_argument(spelling, help=_help(field), **keywords)
        for alias in field.metadata["aliases"]:  # SUPPRESS: leave the namespace to the spelling
            parser.add_argument(alias, **{**keywords, "default": argparse.SUPPRESS},
                                help=argparse.SUPPRESS)


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


def check_options(config: Any) -> None:
    """Hold every option field of ``config`` that has a value to its declared choices and
    ``Bounds``: the first check of each config's ``__post_init__``, so that each is checked in one
    place whichever config takes the option (argparse checks the choices too, but a Python caller
    passes values straight)."""
    for field in dataclasses.fields(config):
        declared = field.metadata.get("option")
        value = getattr(config, field.name)
        if declared is None or value is None:
            continue
        if declared.choices is not None:
            require(value in declared.choices, f"{flag(field.name)} must be one of "
                    f"{', '.join(declared.choices)}, got {value}")
        if declared.bounds is not None:
            problem = declared.bounds.problem(value)
            require(problem is None, f"{flag(field.name)} {problem}, got {value}")
