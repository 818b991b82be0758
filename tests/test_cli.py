"""The ``mlr`` command line as a new user meets it: --version, help for every option, and bad
input (a bad value, an ``--out`` that cannot be written) as one line with exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from mlr import __version__, cli
from mlr.output_dir import check_output_dir


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
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue  # -h, and the hidden aliases of earlier spellings
        assert action.help, f"mlr {command} {action.option_strings} has no help"
        if action.nargs != 0:  # an option that takes a value says what happens without it
            assert "(default: " in action.help, f"mlr {command} {action.option_strings[0]}"


def test_a_bad_value_is_one_line_exit_2(capsys):
    assert cli.main(["train", "--ratio", "1.5"]) == 2
    assert capsys.readouterr().err == "mlr: error: --ratio must be in [0, 1], got 1.5\n"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading, building or aligning any model fails the test: what must happen before is checked
    without the minutes a model costs."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr("mlr.models.loading.model_dir", refuse)
    monkeypatch.setattr("mlr.run.pipeline.align_model", refuse)


def unwritable_outs(tmp_path: Path) -> dict[str, str]:
    existing = tmp_path / "a-file"
    existing.write_text("")
    return {"an existing file": str(existing), "below /dev/null": "/dev/null/sub",
            "under /proc": "/proc/mlr-out", "below a file": str(existing / "sub")}


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", cli.COMMANDS)
def test_an_unwritable_out_is_one_line_exit_2_before_any_model_loads(command, tmp_path, capsys,
                                                                     no_model_loads):
    for what, out in unwritable_outs(tmp_path).items():
        assert cli.main([command, "--out", out]) == 2, what
        lines = capsys.readouterr().err.splitlines()  # warnings about the inputs may come first
        errors = [line for line in lines if not line.startswith("mlr: warning: ")]
        assert errors == [lines[-1]] and errors[0].startswith(f"mlr: error: --out {out}"), \
            (what, lines)


def test_a_writable_out_is_created_and_left_clean(tmp_path):
    out = check_output_dir(tmp_path / "new" / "deeper")
    assert out.is_dir() and not list(out.iterdir())


def test_run_help_names_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--layer-tolerance" not in text and "within 0.05 nats" in text
    assert "--keep-models" in text
