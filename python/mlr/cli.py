"""The ``mlr`` command line.

Each subcommand is one module of ``mlr.commands`` (see its docstring for the contract); adding a
command is adding its module name to ``COMMANDS``. Bad input (``MlrInputError``) becomes one line
``mlr: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from mlr import __version__
from mlr.errors import MlrInputError

COMMANDS = ("probe", "analyze", "search", "train", "eval", "run")


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as input errors (exit code 2, as argparse's)."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "" for mlr itself, "search" for "mlr search"
        self.exit(2, f"mlr: error: {f'{command}: ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlr",
        description="ML-LR secure fine-tuning: security probe, module robustness, Mods_Robust "
                    "search, ML-LR training, evaluation.")
    parser.add_argument("--version", action="version",
                        version=f"mlr {__version__} (torch {torch.__version__})")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"mlr.commands.{name}")
        subparser = subcommands.add_parser(command.NAME, help=command.HELP,
                                           description=command.__doc__)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MlrInputError as error:
        print(f"mlr: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
