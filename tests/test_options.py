"""Each option declared and spelled once: one ``Option`` per name over every config, every spelling
the commands took before still parsing to the same value (a renamed one as a hidden alias), and a
value out of its declared range refused in one line with exit code 2 before anything loads."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from mlr import cli
from mlr.analysis.config import AnalysisConfig
from mlr.errors import MlrInputError
from mlr.evaluation.evaluate import EvalConfig
from mlr.options import from_options
from mlr.run.config import RunConfig
from mlr.tuning.train import TrainConfig

CONFIGS = (RunConfig, TrainConfig, EvalConfig, AnalysisConfig)
COMMAND_CONFIGS = {"probe": AnalysisConfig, "analyze": AnalysisConfig, "search": AnalysisConfig,
                   "train": TrainConfig, "eval": EvalConfig, "run": RunConfig}
# Every spelling each command took before the options were declared once (issue 21).
EARLIER_SPELLINGS = {
    "probe": "--model --harmful --benign --layer --layer-tolerance --dtype --device --batch-size "
             "--seed --out",
    "analyze": "--model --harmful --benign --layer --layer-tolerance --dtype --device --batch-size "
               "--seed --out --method --perturb --alpha --seeds --ift --heldout-limit",
    "search": "--model --harmful --benign --layer --layer-tolerance --dtype --device --batch-size "
              "--seed --out --method --perturb --alpha --seeds --ift --heldout-limit --tau "
              "--budget --bootstraps",
    "train": "--model --data --mods-robust --ratio --schedule --swat-warmup-steps --out --steps "
             "--lr --batch-size --grad-accum --warmup-steps --min-lr-ratio --weight-decay "
             "--max-grad-norm --max-length --seed --lora-rank --lora-alpha --lora-dropout "
             "--freeze-layers --safety-mix --save-every --keep-checkpoints --resume --dtype "
             "--optimizer-state --no-master-weights --device --distributed",
    "eval": "--model --harmful --benign --alarming --heldout --probe --judge-model "
            "--max-new-tokens --batch-size --dtype --device --out",
    "run": "--out --model --harmful --benign --ift --heldout --seeds --steps --lr --batch-size "
           "--max-length --ratio --lora-rank --perturb --alpha --tau --budget --layer "
           "--analysis-seeds --max-new-tokens --save-every --no-control --no-swat "
           "--swat-warmup-steps --no-peers --sppft-layers --safety-mix --dtype --optimizer-state "
           "--no-master-weights --device --threads --jobs --quick --keep-models",
}
# (command, earlier spelling, its spelling now, a value)
RENAMED = [("train", "--data", "--ift", "alpaca.json"),
           ("analyze", "--seeds", "--analysis-seeds", "2"),
           ("search", "--seeds", "--analysis-seeds", "2")]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_fields(config: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if "option" in f.metadata]


def test_the_configs_listed_here_are_every_command_s():
    """So that the scan below sees every option a command takes."""
    assert set(COMMAND_CONFIGS) == set(cli.COMMANDS) and set(COMMAND_CONFIGS.values()) <= set(
        CONFIGS)
    for command, parser in subparsers().items():
        names = {f.name for f in option_fields(COMMAND_CONFIGS[command])}
        assert {a.dest for a in parser._actions if a.option_strings != ["-h", "--help"]} <= names


def test_no_option_is_declared_in_two_places():
    declared: dict[str, set[int]] = {}
    for config in CONFIGS:
        for field in option_fields(config):
            declared.setdefault(field.name, set()).add(id(field.metadata["option"]))
    assert {name for name, options in declared.items() if len(options) > 1} == set()


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_earlier_spelling_still_parses(command):
    spellings = set(subparsers()[command]._option_string_actions)
    assert set(EARLIER_SPELLINGS[command].split()) - spellings == set()


@pytest.mark.parametrize("command, earlier, now, value", RENAMED)
def test_an_earlier_spelling_gives_the_same_config_and_is_hidden(command, earlier, now, value,
                                                                 capsys):
    parser = cli.build_parser()
    config = COMMAND_CONFIGS[command]
    old, new = (from_options(config, parser.parse_args([command, spelling, value]))
                for spelling in (earlier, now))
    assert old == new != config()
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    shown = capsys.readouterr().out.split()
    assert now in shown and earlier not in shown


@pytest.mark.parametrize("argv, message", [
    (["train", "--ratio", "1.5"], "--ratio must be in [0, 1], got 1.5"),
    (["run", "--ratio", "-0.1"], "--ratio must be in [0, 1], got -0.1"),
    (["train", "--lr", "0"], "--lr must be positive, got 0.0"),
    (["run", "--lr", "-1"], "--lr must be positive, got -1.0"),
    (["train", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["run", "--safety-mix", "0.6"], "--safety-mix must be in [0, 0.5], got 0.6"),
    (["run", "--safety-mix", "0"], "--safety-mix must be above 0 for the safeinstr arm, got 0.0"),
    (["run", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["search", "--tau", "0"], "--tau must be in (0, 1], got 0.0"),
    (["run", "--budget", "1.5"], "--budget must be in (0, 1], got 1.5"),
    (["analyze", "--seeds", "0"], "--analysis-seeds must be at least 1, got 0"),
    (["probe", "--layer", "-1"], "--layer must be at least 0, got -1"),
    (["eval", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_a_value_out_of_range_is_one_line_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"mlr: error: {message}\n"


def test_a_python_caller_is_held_to_the_declared_choices():
    with pytest.raises(MlrInputError, match="--schedule must be one of ml-lr, swat, got cosine"):
        TrainConfig(schedule="cosine")
