"""The ``mlr`` command line as a new user meets it: --version, and help for every option."""

from __future__ import annotations

import argparse

import pytest
from mlr import __version__, cli


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"mlr {__version__} (torch ")


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_option_has_help_and_shows_its_default(command):
    parser = subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"mlr {command} {action.option_strings} has no help"
        if action.nargs != 0:  # an option that takes a value says what happens without it
            assert "(default: " in action.help, f"mlr {command} {action.option_strings[0]}"


def test_a_bad_value_is_one_line_exit_2(capsys):
    assert cli.main(["train", "--ratio", "1.5"]) == 2
    assert capsys.readouterr().err == "mlr: error: --ratio must be in [0, 1], got 1.5\n"
